//! The claim with the button and the setup form, over real TLS on loopback: a press hands the
//! setup to the one browser waiting, never to two, never to one that came after the press, and
//! never without a press; the setup form refuses bad fields without storing anything, and once
//! the device is set up its setup pages are gone.
//!
//! Each test starts its own server (a fake PID 1 behind `Device`); a browser's first poll
//! registers it and is answered at once (so a press right after it is the browser's: `claim`
//! presses without a pause), later polls last [`common::POLL`], the board is looked at every
//! 250 ms, so each test takes a second or two.

use crate::common;

use crate::common::{claim, wait_for_outcome, Server};
use std::time::Duration;

#[tokio::test]
async fn without_a_press_nobody_is_granted() {
    let server = Server::unclaimed();
    let mut b = server.browser();
    let page = b.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Press the button on your Cairn"));
    assert!(page.body.contains("<script src=\"/static/setup.js\">"));
    // Any path but the API and the assets shows the same page.
    assert!(b
        .get("/admin/")
        .await
        .body
        .contains("Press the button on your Cairn"));
    for _ in 0..3 {
        assert_eq!(b.wait().await["state"], "waiting");
    }
    assert!(b.cookies.contains_key("cairn_claim"));
    assert!(!b.cookies.contains_key("cairn_setup"));
    let setup = b.get("/setup").await;
    assert_eq!((setup.status, setup.header("location")), (303, Some("/")));
    let post = b.form("/setup", &[("name", "plug")]).await;
    assert_eq!(post.status, 403);
    assert!(!server.device.called("claim"));
    assert!(!server.data.path().join("settings.toml").exists());
}

#[tokio::test]
async fn one_waiter_and_a_press_is_granted_and_the_token_opens_setup() {
    let server = Server::unclaimed();
    let mut b = claim(&server).await;
    assert_eq!(
        server
            .device
            .calls()
            .iter()
            .filter(|c| c.starts_with("claim"))
            .count(),
        1
    );
    assert!(b.cookies.contains_key("cairn_setup"));
    let form = b.get("/setup").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("Device name") && form.body.contains("type=\"range\""));
    assert_eq!(form.header("cache-control"), Some("no-store"));
    // Another browser, without the token, still gets nothing.
    let mut other = server.browser();
    assert_eq!(other.get("/setup").await.status, 303);
}

#[tokio::test]
async fn two_waiters_and_a_press_are_both_refused() {
    let server = Server::unclaimed();
    let (mut a, mut b) = (server.browser(), server.browser());
    let (ra, rb) = tokio::join!(a.wait(), b.wait());
    assert_eq!(
        (ra["state"].as_str(), rb["state"].as_str()),
        (Some("waiting"), Some("waiting"))
    );
    let first = server.device.press();
    let (ra, rb) = tokio::join!(wait_for_outcome(&mut a, 5), wait_for_outcome(&mut b, 5));
    for r in [ra, rb] {
        assert_eq!(r["state"], "refused", "{r}");
        assert_eq!(
            r["message"],
            "more than one browser is trying to set up this device: close the others and press again"
        );
    }
    assert!(!server.device.called("claim"));
    assert_eq!(a.get("/setup").await.status, 303);
    // The refused window is closed: the press asked for next opens a new one.
    assert!(server.device.called(&format!("refuse {first}")));
    // The refused browser tries again, alone, and the next press is its.
    assert_eq!(a.wait().await["state"], "waiting");
    let window = server.device.press();
    assert_ne!(window, first);
    assert_eq!(wait_for_outcome(&mut a, 5).await["state"], "granted");
    assert!(server.device.called(&format!("claim {window}")));
}

#[tokio::test]
async fn a_browser_that_comes_after_the_press_is_not_granted_by_it() {
    let server = Server::unclaimed();
    let first = server.device.press();
    let mut late = server.browser();
    assert_eq!(wait_for_outcome(&mut late, 3).await["state"], "waiting");
    assert!(!server.device.called("claim"));
    // Its own press, once the first window has closed, is.
    server.device.expire();
    let second = server.device.press();
    assert_eq!(wait_for_outcome(&mut late, 5).await["state"], "granted");
    assert!(!server.device.called(&format!("claim {first}")));
    assert!(server.device.called(&format!("claim {second}")));
}

#[tokio::test]
async fn a_browser_that_stopped_polling_is_not_granted() {
    let server = Server::unclaimed();
    let mut gone = server.browser();
    assert_eq!(gone.wait().await["state"], "waiting");
    // Longer than the grace after its last poll.
    tokio::time::sleep(cairn_web::claim::WAITER_GRACE + Duration::from_millis(300)).await;
    server.device.press();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!server.device.called("claim"));
}

#[tokio::test]
async fn invalid_fields_come_back_with_their_errors_and_nothing_is_stored() {
    let server = Server::unclaimed();
    let mut b = claim(&server).await;
    let csrf = b.get("/setup").await.csrf();
    let r = b
        .form(
            "/setup",
            &[
                ("csrf", &csrf),
                ("name", "<script>alert(1)</script>"),
                ("passphrase", "short"),
                ("passphrase2", "short"),
                ("offer", "999999"),
                ("domain", "not a domain"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("only lowercase letters"), "{}", r.body);
    assert!(r.body.contains("at least 10 characters"));
    assert!(r.body.contains("choose between 0 and"));
    assert!(r.body.contains("`not a domain`") || r.body.contains("not a domain"));
    // The values are kept, escaped.
    assert!(r
        .body
        .contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
    assert!(!r.body.contains("<script>alert"));
    assert!(!server.data.path().join("settings.toml").exists());
    assert!(!server.device.called("claimed"));

    // One bad field among good ones: only it has a message; the others keep their values.
    let r = b
        .form(
            "/setup",
            &[
                ("csrf", &csrf),
                ("name", "my-plug"),
                ("passphrase", "a good long passphrase"),
                ("passphrase2", "a different passphrase"),
                ("offer", "0"),
                ("domain", "example.org"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("the two passphrases differ"));
    assert!(r.body.contains("value=\"my-plug\"") && r.body.contains("value=\"example.org\""));
    assert!(!r.body.contains("only lowercase"));
    assert!(!server.data.path().join("settings.toml").exists());

    // Without the form's CSRF token: refused.
    let r = b.form("/setup", &[("name", "my-plug")]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn setup_stores_the_settings_tells_pid1_logs_in_and_then_is_gone() {
    let server = Server::unclaimed();
    let mut b = claim(&server).await;
    let csrf = b.get("/setup").await.csrf();
    let r = b
        .form(
            "/setup",
            &[
                ("csrf", &csrf),
                ("name", "my-plug"),
                ("passphrase", "a good long passphrase"),
                ("passphrase2", "a good long passphrase"),
                ("offer", "0"),
                ("domain", "Example.ORG"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/admin/")),
        "{}",
        r.body
    );
    assert!(b.cookies.contains_key("cairn_session"));
    // The browser that set the device up is the owner's: its logins count on their own.
    assert!(b.cookies.contains_key("cairn_known"));
    assert!(
        !b.cookies.contains_key("cairn_setup"),
        "the setup token is spent"
    );
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("cairn_session="))
        .unwrap()
        .to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let settings = cairn_web::Settings::load(server.data.path())
        .unwrap()
        .unwrap();
    assert_eq!(settings.name, "my-plug");
    assert_eq!(settings.domain.as_deref(), Some("example.org"));
    assert_eq!(settings.offer_bytes, 0);
    assert!(settings.passphrase_hash.starts_with("$argon2id$"));
    assert!(server.device.called("claimed my-plug"));

    let dash = b.get("/admin/").await;
    assert_eq!(dash.status, 200);
    assert!(dash.body.contains("my-plug"));

    // The setup pages are gone, for this browser and any other.
    assert_eq!(
        b.get("/setup").await.header("location"),
        Some("/admin/login")
    );
    let mut other = server.browser();
    assert_eq!(
        other.get("/setup").await.header("location"),
        Some("/admin/login")
    );
    let r = other
        .send(
            "POST",
            "/setup/api/wait",
            &[("content-type", "application/json")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 404);
    let home = other.get("/").await;
    assert!(
        home.body.contains("my-plug — a Cairn plug"),
        "{}",
        home.body
    );
    // A press now claims nothing.
    server.device.press();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        server
            .device
            .calls()
            .iter()
            .filter(|c| c.starts_with("claim "))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_console_is_told_the_address_and_fingerprint() {
    let server = Server::unclaimed();
    let says: Vec<String> = server
        .device
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("say "))
        .collect();
    assert_eq!(says.len(), 1, "{says:?}");
    assert_eq!(
        says[0],
        format!(
            "say https://127.0.0.1:{}/ (cairn.local) certificate SHA-256 {}",
            server.addr.port(),
            server.fingerprint
        )
    );
}

#[tokio::test]
async fn the_certificate_is_kept_across_starts_and_made_anew_for_the_name() {
    let server = Server::unclaimed();
    let again = Server::start(server.data.clone(), common::FakeDevice::new(false));
    assert_eq!(server.fingerprint, again.fingerprint);
    common::write_settings(server.data.path(), "named");
    let named = Server::start(server.data.clone(), common::FakeDevice::new(true));
    assert_ne!(named.fingerprint, server.fingerprint);
    assert!(named.device.called(&format!(
        "say https://127.0.0.1:{}/ (named.local) certificate",
        named.addr.port()
    )));
}

#[tokio::test]
async fn a_claimed_that_did_not_reach_pid1_is_sent_at_the_next_start() {
    let server = Server::set_up(false);
    for _ in 0..50 {
        if server.device.called("claimed plug") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.device.called("claimed plug"));
    let known = Server::set_up(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!known.device.called("claimed"));
}
