//! The System page's update over real TLS on loopback, with the real installer
//! (`cairn_update::install`) behind the fake PID 1 writing slot files: a good bundle is
//! installed and the device restarts into it; a cut or tampered upload is refused with the
//! installer's one line, no restart, and the running slot untouched; nobody without a session
//! (or without the page's token) reaches the installer at all.

use crate::common::{self, FakeSlots, Server};
use cairn_update::bundle::{self, PartSource};
use cairn_update::keys::{SigningKey, TrustedKeys};
use cairn_web::{SlotVersion, Slots, UpdateStatus};

/// Bytes of the running slot: what it holds must be what it held.
const ACTIVE: &[u8] = b"the running system, never written by an update";

struct Device {
    key: SigningKey,
    _dir: tempfile::TempDir,
    active: std::path::PathBuf,
    inactive: std::path::PathBuf,
}

/// A server whose fake PID 1 has two slot files (a running, build 10) and trusts one key.
async fn with_slots() -> (Server, Device, common::Browser) {
    let server = Server::set_up(true);
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let mut keys = TrustedKeys::default();
    keys.add(key.public(), "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (active, inactive) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&active, ACTIVE).unwrap();
    std::fs::File::create(&inactive)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    server.device.set_slots(FakeSlots {
        keys,
        inactive: inactive.clone(),
        running_build: 10,
        status: UpdateStatus {
            running: "a".into(),
            active: "a".into(),
            trying: None,
            tries_left: 0,
            last: "none".into(),
            slots: Slots {
                a: Some(SlotVersion {
                    version: "0.1.0".into(),
                    build: 10,
                }),
                b: None,
            },
        },
    });
    let b = server.logged_in().await;
    let d = Device {
        key,
        _dir: dir,
        active,
        inactive,
    };
    (server, d, b)
}

/// A bundle for the device's board signed with `key`, its parts large enough to take many of
/// the upload's frames: a refusal at the manifest comes while the client is still sending.
fn bundle_of(key: &SigningKey, build: u64) -> Vec<u8> {
    let boot: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let system: &[u8] = b"a squashfs";
    let boot: &[u8] = &boot;
    let parts: [(&str, &dyn PartSource); 2] = [("boot", &boot), ("system", &system)];
    let mut out = Vec::new();
    bundle::write(&mut out, key, "qemu-virt", "0.2.0", build, &parts).unwrap();
    out
}

async fn put(b: &mut common::Browser, csrf: &str, body: Vec<u8>) -> common::Reply {
    b.send("PUT", "/admin/update", &[("x-csrf-token", csrf)], body)
        .await
}

#[tokio::test]
async fn a_good_bundle_is_installed_and_the_device_restarts_into_it() {
    let (server, d, mut b) = with_slots().await;
    let page = b.get("/admin/system").await;
    assert_eq!(page.status, 200);
    for text in [
        "System update",
        "0.1.0 (build 10)",
        "running, good",
        "nothing recorded",
        "Last update: none",
        "id=\"pick-update\"",
    ] {
        assert!(page.body.contains(text), "{text}: {}", page.body);
    }
    let csrf = page.csrf();
    let bundle = bundle_of(&d.key, 11);
    let r = put(&mut b, &csrf, bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["ok"], true);
    assert_eq!(a["restarting"], true);
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .starts_with("Installed; restarting into version 0.2.0 (build 11)."),
        "{a}"
    );
    // Installed, then the restart: in that order.
    let calls = server.device.calls();
    let at = |c: &str| calls.iter().position(|x| x == c).expect(c);
    assert!(at("update") < at("reboot"), "{calls:?}");
    assert_eq!(std::fs::read(&d.active).unwrap(), ACTIVE);
    let written = std::fs::read(&d.inactive).unwrap();
    assert_eq!(written[1], 7, "slot b holds the bundle's boot part");
    let page = b.get("/admin/system").await;
    assert!(
        page.body.contains("0.2.0 (build 11)") && page.body.contains("on trial, 3 tries left"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn a_cut_or_tampered_upload_is_refused_in_one_line_and_nothing_restarts() {
    let (server, d, mut b) = with_slots().await;
    let csrf = b.get("/admin/system").await.csrf();
    let good = bundle_of(&d.key, 11);
    let stranger = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x20;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "cut",
            good[..good.len() / 2].to_vec(),
            "update refused: truncated bundle: it ends inside part boot",
        ),
        (
            "flipped",
            flipped,
            "update refused: corrupt bundle: part system: its SHA-256 does not match the signed manifest",
        ),
        (
            "stranger",
            bundle_of(&stranger, 11),
            "update refused: signed by an unknown key",
        ),
        (
            "older",
            bundle_of(&d.key, 10),
            "update refused: build 10 is not newer",
        ),
    ];
    for (what, body, reason) in cases {
        let r = put(&mut b, &csrf, body).await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        let a = r.json();
        assert_eq!(a["ok"], false, "{what}");
        let error = a["error"].as_str().unwrap();
        assert!(error.starts_with(reason), "{what}: {error}");
        assert!(!error.contains('\n'), "{what}: one line: {error}");
        assert_eq!(std::fs::read(&d.active).unwrap(), ACTIVE, "{what}");
    }
    assert!(
        !server.device.called("reboot"),
        "{:?}",
        server.device.calls()
    );
    let page = b.get("/admin/system").await;
    assert!(!page.body.contains("on trial"), "{}", page.body);
}

#[tokio::test]
async fn nobody_without_a_session_or_the_pages_token_reaches_the_installer() {
    let (server, d, mut owner) = with_slots().await;
    let csrf = owner.get("/admin/system").await.csrf();
    // Refused before the body is read: a short one, so that this client hears the answer
    // (a browser does with a whole bundle too).
    let small = bundle_of(&d.key, 11)[..4096].to_vec();
    let mut stranger = server.browser();
    let r = put(&mut stranger, &csrf, small.clone()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["ok"], false);
    let r = stranger.get("/admin/system").await;
    assert_eq!(r.status, 303, "{}", r.body);
    // The owner's session without the page's token: refused too.
    let r = put(&mut owner, "not-the-token", small).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        !server.device.called("update"),
        "{:?}",
        server.device.calls()
    );
    assert!(std::fs::read(&d.inactive).unwrap().iter().all(|&b| b == 0));
}
