//! The Files page over real TLS on loopback, with a real vault over directories: uploads stored
//! as they arrive (one snapshot each), listed by folder and snapshot, downloaded whole; an
//! upload cut halfway stores nothing; names a browser may not use; the vault locked once nobody
//! is logged in.

mod common;

use common::{set_up_with_vault, Server};
use tokio::io::AsyncWriteExt;

/// `n` bytes of text that do not repeat in any short period (so chunks differ).
fn text(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

async fn put(b: &mut common::Browser, csrf: &str, path: &str, body: &str) -> common::Reply {
    b.send(
        "PUT",
        &format!("/admin/files/put?path={path}&mtime=1700000000000"),
        &[("x-csrf-token", csrf)],
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn uploads_are_listed_by_folder_and_snapshot_and_come_back_whole() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let page = b.get("/admin/files").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Nothing stored yet"), "{}", page.body);
    // The upload's script reads the session's token from the page.
    let csrf = b.get("/admin/").await.csrf();
    assert!(page.body.contains(&format!("data-csrf=\"{csrf}\"")));
    // Several chunks' worth, and a small one in a folder.
    let big = text(5 << 20, 7);
    let r = put(&mut b, &csrf, "notes.txt", &big).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["snapshot"], 1);
    assert_eq!(r.json()["bytes"], 5 << 20);
    let r = put(&mut b, &csrf, "photos%2Fsummer%2Fday%201.txt", "sunny").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["snapshot"], 2);

    let top = b.get("/admin/files").await;
    assert!(
        top.body.contains("notes.txt") && top.body.contains("photos/"),
        "{}",
        top.body
    );
    assert!(top.body.contains("5.0 MiB"), "{}", top.body);
    assert!(
        top.body.contains("2023-11-14 22:13:20"),
        "the browser's time: {}",
        top.body
    );
    let folder = b.get("/admin/files?dir=photos%2Fsummer&snap=2").await;
    assert!(folder.body.contains("day 1.txt"), "{}", folder.body);
    // Snapshot 1 had no photos yet.
    let old = b.get("/admin/files?dir=photos&snap=1").await;
    assert_eq!(old.status, 400);
    assert!(
        old.body.contains("no such folder in snapshot 1"),
        "{}",
        old.body
    );

    let got = b.get("/admin/files/get?path=notes.txt").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("5242880"));
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename*=UTF-8''notes.txt")
    );
    assert!(got.body == big, "the download differs from the upload");
    let got = b
        .get("/admin/files/get?path=photos%2Fsummer%2Fday%201.txt&snap=2")
        .await;
    assert_eq!(got.body, "sunny");
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename*=UTF-8''day%201.txt")
    );
    let missing = b.get("/admin/files/get?path=nothing.txt").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn an_upload_cut_halfway_stores_nothing() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    // The browser promises 4 MiB, sends 1 MiB, and goes away.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(common::tls_config(&server.fingerprint, common::ALL))
            .connect(
                rustls::pki_types::ServerName::try_from("cairn.local").unwrap(),
                tcp,
            )
            .await
            .unwrap();
    let head = format!(
        "PUT /admin/files/put?path=cut.txt HTTP/1.1\r\nHost: {}\r\nCookie: cairn_session={}\r\n\
         X-CSRF-Token: {csrf}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        b.cookies["cairn_session"],
        4 << 20
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(text(1 << 20, 3).as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    drop(tls);
    // The vault is free again once the server has given up on that upload: a later one goes
    // through, and the cut file is nowhere.
    let r = put(&mut b, &csrf, "whole.txt", "all of it").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["snapshot"], 1, "no snapshot for the cut upload");
    let top = b.get("/admin/files").await;
    assert!(top.body.contains("whole.txt"), "{}", top.body);
    assert!(!top.body.contains("cut.txt"), "{}", top.body);
}

#[tokio::test]
async fn names_a_browser_may_not_use_are_refused_and_nothing_is_stored() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    for bad in [
        "..%2Fetc%2Fpasswd",
        "a%2F..%2F..%2Fb",
        "a%5Cb",
        "",
        "a%2F%2Fb",
        "x%0Ay",
    ] {
        let r = put(&mut b, &csrf, bad, "x").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["ok"], false);
    }
    let r = b.get("/admin/files/get?path=..%2Fsettings.toml").await;
    assert_eq!(r.status, 400);
    let r = b.get("/admin/files?dir=..").await;
    assert_eq!(r.status, 400);
    // Without the CSRF header: refused.
    let r = b
        .send("PUT", "/admin/files/put?path=a.txt", &[], b"x".to_vec())
        .await;
    assert_eq!(r.status, 403);
    assert!(b
        .get("/admin/files")
        .await
        .body
        .contains("Nothing stored yet"));
}

#[tokio::test]
async fn the_vault_locks_when_the_last_session_ends_and_opens_at_login() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    assert_eq!(put(&mut b, &csrf, "a.txt", "kept").await.status, 200);
    b.form("/admin/logout", &[("csrf", &csrf)]).await;
    assert!(server.data.path().join("vault").exists());
    // Logged in again: opened with the passphrase, the file is there.
    let mut again = server.logged_in().await;
    let got = again.get("/admin/files/get?path=a.txt").await;
    assert_eq!((got.status, got.body.as_str()), (200, "kept"));
}
