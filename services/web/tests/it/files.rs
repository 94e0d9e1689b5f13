//! The Files page over real TLS on loopback, with a real vault over directories: uploads stored
//! as they arrive (one snapshot each; a folder's files one snapshot together), listed by folder
//! and snapshot, downloaded whole (a folder as a zip another reader checks); an upload cut
//! halfway, or a folder with anything wrong, stores nothing; names a browser may not use; the vault locked once nobody
//! is logged in.

use crate::common;

use crate::common::{set_up_with_vault, Server};
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
    let mut tls = tokio_rustls::TlsConnector::from(server.tls.clone())
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
    // The page's script with the ended session: told so in JSON, not sent to the login page.
    let r = put(&mut b, &csrf, "late.txt", "too late").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "your session has ended: log in again; nothing was stored"
    );
    // Logged in again: opened with the passphrase, the file is there.
    let mut again = server.logged_in().await;
    let got = again.get("/admin/files/get?path=a.txt").await;
    assert_eq!((got.status, got.body.as_str()), (200, "kept"));
}

/// A many-file upload's body: each file's header line, then its bytes.
fn folder_body(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (path, bytes) in files {
        let header =
            serde_json::json!({"path": path, "size": bytes.len(), "mtime": 1700000000000u64});
        body.extend_from_slice(format!("{header}\n").as_bytes());
        body.extend_from_slice(bytes);
    }
    body
}

async fn put_folder(
    b: &mut common::Browser,
    csrf: &str,
    dir: &str,
    body: Vec<u8>,
) -> common::Reply {
    b.send(
        "PUT",
        &format!("/admin/files/folder?dir={dir}"),
        &[
            ("x-csrf-token", csrf),
            ("content-type", "application/x-cairn-files"),
        ],
        body,
    )
    .await
}

/// The entries of a zip, read by the zip crate (another implementation than the writer's), as
/// (name, bytes) in the archive's order.
fn unzip(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(raw)).expect("a readable zip");
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).expect("the entry's CRC checks");
            (f.name().to_string(), bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_folder_upload_is_one_snapshot_and_comes_back_as_a_zip() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    let big = text(5 << 20, 11);
    let body = folder_body(&[
        ("trip/day 1.txt", b"rain"),
        ("trip/photos/sea.txt", big.as_bytes()),
        ("trip/empty.txt", b""),
    ]);
    let r = put_folder(&mut b, &csrf, "docs", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["snapshot"], 1, "one snapshot for the whole folder");
    assert_eq!(r.json()["files"], 3);
    let listed = b.get("/admin/files?dir=docs%2Ftrip").await;
    for name in ["day 1.txt", "photos/", "empty.txt"] {
        assert!(listed.body.contains(name), "{name}: {}", listed.body);
    }
    assert!(
        listed.body.contains("/admin/files/zip?dir=docs%2Ftrip"),
        "{}",
        listed.body
    );

    let got = b.get("/admin/files/zip?dir=docs%2Ftrip").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.header("content-type"), Some("application/zip"));
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename*=UTF-8''trip.zip")
    );
    let mut entries = unzip(&got.raw);
    entries.sort();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["day 1.txt", "empty.txt", "photos/", "photos/sea.txt"]
    );
    assert_eq!(entries[0].1, b"rain");
    assert!(entries[1].1.is_empty());
    assert!(entries[3].1 == big.as_bytes(), "the big file differs");
    // The whole snapshot, named after the device; its folders as entries too.
    let all = b.get("/admin/files/zip?dir=&snap=1").await;
    assert_eq!(all.status, 200);
    let names: Vec<String> = unzip(&all.raw).into_iter().map(|(n, _)| n).collect();
    for name in [
        "docs/",
        "docs/trip/",
        "docs/trip/day 1.txt",
        "docs/trip/photos/sea.txt",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let missing = b.get("/admin/files/zip?dir=nowhere").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("nowhere: no such folder"),
        "{}",
        missing.body
    );
    let bad = b.get("/admin/files/zip?dir=..%2F..").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_folder_upload_with_anything_wrong_stores_none_of_it() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    let good: &[u8] = b"fine";
    let mut cut = folder_body(&[("a.txt", good), ("b.txt", &[7u8; 1000])]);
    cut.truncate(cut.len() - 10);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a file shorter than its header",
            cut,
            "b.txt: the upload was cut after 990 of its 1000 bytes",
        ),
        (
            "a path out of the folder",
            folder_body(&[("a.txt", good), ("../../etc/passwd", good)]),
            "no empty, `.` or `..` parts",
        ),
        (
            "a malformed header",
            [folder_body(&[("a.txt", good)]), b"{\"path\": 3}\n".to_vec()].concat(),
            "file 2: a malformed header",
        ),
        (
            "a header line without its end",
            [folder_body(&[("a.txt", good)]), vec![b'x'; 5000]].concat(),
            "file 2: its header line is cut or longer than",
        ),
        ("nothing", Vec::new(), "the upload held no file"),
    ];
    for (what, body, says) in cases {
        let r = put_folder(&mut b, &csrf, "", body).await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains(says) && error.ends_with("nothing was stored"),
            "{what}: {error}"
        );
    }
    let r = b
        .send(
            "PUT",
            "/admin/files/folder?dir=",
            &[("x-csrf-token", &csrf)],
            folder_body(&[("a.txt", good)]),
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(b
        .get("/admin/files")
        .await
        .body
        .contains("Nothing stored yet"));
    // And a good one after all that goes through as snapshot 1.
    let r = put_folder(&mut b, &csrf, "", folder_body(&[("a.txt", good)])).await;
    assert_eq!(r.json()["snapshot"], 1, "{}", r.body);
}

/// Shards into directories, until a budget of bytes runs out: then every put fails as a full
/// disk does (the node's store says the same through its socket on a plug).
struct Card {
    dirs: cairn_vault::sink::DirStore,
    left: std::sync::atomic::AtomicU64,
}

impl cairn_vault::sink::ShardSink for Card {
    fn put_shard(
        &self,
        id: &cairn_vault::sink::ShardId,
        shard: &[u8],
    ) -> Result<(), cairn_vault::sink::ShardError> {
        use std::sync::atomic::Ordering;
        let n = shard.len() as u64;
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .is_err()
        {
            return Err(cairn_vault::sink::ShardError::Failed {
                id: *id,
                place: "the card".into(),
                reason: "No space left on device (os error 28)".into(),
            });
        }
        self.dirs.put_shard(id, shard)
    }

    fn flush(&self) -> Result<(), cairn_vault::sink::ShardError> {
        self.dirs.flush()
    }
}

#[tokio::test]
async fn a_full_disk_stores_nothing_and_says_so() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let dirs: Vec<_> = (0..3)
        .map(|i| data.path().join(format!("shards{i}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let card = std::sync::Arc::new(Card {
        dirs: cairn_vault::sink::DirStore::new(dirs.clone()),
        left: std::sync::atomic::AtomicU64::new(u64::MAX),
    });
    let source = std::sync::Arc::new(cairn_vault::sink::DirStore::new(dirs));
    let c = card.clone();
    let mut vault = common::test_vault(data.path());
    vault.place.targets = vec![cairn_vault::home::Target::Node("card".into())];
    vault.place.nodes = std::sync::Arc::new(
        move |_: &std::path::Path, _: &cairn_vault::keys::OwnerKey| {
            let sink: std::sync::Arc<dyn cairn_vault::sink::ShardSink> = c.clone();
            let source: std::sync::Arc<dyn cairn_vault::sink::ShardSource> = source.clone();
            Ok((sink, source))
        },
    );
    let server = Server::start_with(data, common::FakeDevice::new(false), Some(vault));
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    // 1 MiB left on the card, a 5 MiB file and a folder: refused, saying why, nothing listed.
    card.left
        .store(1 << 20, std::sync::atomic::Ordering::SeqCst);
    let big = text(5 << 20, 5);
    let r = put(&mut b, &csrf, "big.txt", &big).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("big.txt: nothing was stored: ")
            && error.contains("No space left on device"),
        "{error}"
    );
    let r = put_folder(
        &mut b,
        &csrf,
        "",
        folder_body(&[("a/big.txt", big.as_bytes())]),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("No space left on device"), "{}", r.body);
    assert!(b
        .get("/admin/files")
        .await
        .body
        .contains("Nothing stored yet"));
    // Room again: the same upload goes through as the first snapshot, whole.
    card.left
        .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let r = put(&mut b, &csrf, "big.txt", &big).await;
    assert_eq!(r.json()["snapshot"], 1, "{}", r.body);
    assert!(b.get("/admin/files/get?path=big.txt").await.body == big);
}
