//! Setup makes the owner's vault and ends with its recovery key: shown once, confirmed by its
//! last group, and only then is PID 1 told that setup is done (the LED leaves "setup needed").
//! Over real TLS on loopback, with a fake PID 1 and a real vault over directories.

use crate::common;

use crate::common::{key_on, set_up, Server, PASSPHRASE};

#[tokio::test]
async fn the_recovery_key_is_shown_once_and_setup_ends_when_its_last_group_is_typed() {
    let server = Server::unclaimed_with_vault();
    let (mut b, r) = set_up(&server).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = key_on(&r.body);
    let last = key.rsplit('-').next().unwrap().to_string();
    assert_eq!(last.len(), 4, "{key}");
    // The vault is made; nothing of the key is on the disk in the clear.
    assert!(server.data.path().join("vault/key").exists());
    for entry in walk(server.data.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key[17..]),
            "{}",
            entry.display()
        );
    }
    // The node offers friends what the owner chose (0 GiB here).
    assert_eq!(*server.node.offered.lock().unwrap(), Some(0));
    // PID 1 has not been told yet: the LED still says "setup needed".
    assert!(!server.device.called("claimed"));
    // Every other admin page leads back to the key until it is confirmed.
    let dash = b.get("/admin/").await;
    assert_eq!(
        (dash.status, dash.header("location")),
        (303, Some("/admin/recovery"))
    );
    let page = b.get("/admin/recovery").await;
    assert_eq!(key_on(&page.body), key);
    let csrf = page.csrf();
    // A wrong group: a message, the key again, nothing done.
    let r = b
        .form(
            "/admin/recovery/confirm",
            &[("csrf", &csrf), ("last", "ZZZZ")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("not the key&#39;s last group")
            || r.body.contains("not the key's last group"),
        "{}",
        r.body
    );
    assert_eq!(key_on(&r.body), key);
    assert!(!server.device.called("claimed"));
    // The right one (as typed: lowercase, spaces): done; PID 1 is told; the dashboard opens.
    let typed = format!(" {} ", last.to_lowercase());
    let r = b
        .form(
            "/admin/recovery/confirm",
            &[("csrf", &csrf), ("last", &typed)],
        )
        .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/admin/")));
    assert!(server.device.called("claimed attic"));
    assert_eq!(b.get("/admin/").await.status, 200);
    // Never shown again.
    let again = b.get("/admin/recovery").await;
    assert_eq!(again.header("location"), Some("/admin/"));
    let settings = std::fs::read_to_string(server.data.path().join("settings.toml")).unwrap();
    assert!(settings.contains("recovery_confirmed = true"), "{settings}");
}

#[tokio::test]
async fn a_session_that_was_not_shown_the_key_needs_the_passphrase_to_see_it() {
    let server = Server::unclaimed_with_vault();
    let (_, r) = set_up(&server).await;
    let key = key_on(&r.body);
    // Another browser, logged in (the owner's second device, or after a restart).
    let mut other = server.logged_in().await;
    let page = other.get("/admin/recovery").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("cairn-recovery-1 "), "{}", page.body);
    let csrf = page.csrf();
    // Confirming without having seen it: the passphrase page again.
    let r = other
        .form(
            "/admin/recovery/confirm",
            &[("csrf", &csrf), ("last", "ABCD")],
        )
        .await;
    assert!(r.body.contains("Enter your passphrase"), "{}", r.body);
    let r = other
        .form(
            "/admin/recovery/show",
            &[("csrf", &csrf), ("passphrase", "not it at all")],
        )
        .await;
    assert_eq!(r.status, 401);
    let r = other
        .form(
            "/admin/recovery/show",
            &[("csrf", &csrf), ("passphrase", PASSPHRASE)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key_on(&r.body), key);
    let last = key.rsplit('-').next().unwrap();
    let r = other
        .form(
            "/admin/recovery/confirm",
            &[("csrf", &csrf), ("last", last)],
        )
        .await;
    assert_eq!(r.header("location"), Some("/admin/"));
    assert!(server.device.called("claimed attic"));
}

#[tokio::test]
async fn a_passphrase_change_rekeys_the_vault() {
    let server = Server::unclaimed_with_vault();
    let (mut b, r) = set_up(&server).await;
    let key = key_on(&r.body);
    let csrf = b.get("/admin/recovery").await.csrf();
    let last = key.rsplit('-').next().unwrap();
    b.form(
        "/admin/recovery/confirm",
        &[("csrf", &csrf), ("last", last)],
    )
    .await;
    let csrf = b.get("/admin/passphrase").await.csrf();
    let new = "another good passphrase";
    let r = b
        .form(
            "/admin/passphrase",
            &[
                ("csrf", &csrf),
                ("old", PASSPHRASE),
                ("new", new),
                ("new2", new),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Read as a new start of the service would, once this one has let go of its open vault.
    server.stop();
    let vault = common::test_vault(server.data.path());
    let e = format!("{:#}", vault.recovery_key(PASSPHRASE).unwrap_err());
    assert!(
        !e.contains("using this vault"),
        "refused for the wrong reason: {e}"
    );
    assert_eq!(vault.recovery_key(new).unwrap(), key);
}

#[tokio::test]
async fn a_vault_that_cannot_be_made_leaves_the_device_unset_up() {
    let server = Server::unclaimed_with_vault();
    // Where the vault goes, a file: it cannot be made.
    std::fs::write(server.data.path().join("vault"), b"in the way").unwrap();
    let (_, r) = set_up(&server).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("nothing was changed"), "{}", r.body);
    assert!(!server.data.path().join("settings.toml").exists());
    assert!(!server.device.called("claimed"));
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
