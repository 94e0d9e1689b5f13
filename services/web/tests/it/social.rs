//! The Social page's household accounts over real TLS on loopback: one is added, then removed
//! with the page's form; what the browser sends that cannot be removed (the owner's account, a
//! name nobody has, a name no account may have, a form without its token) is refused with the
//! reason and changes nothing. A removal reaches snac as `cairn snac` reads it: the name leaves
//! `site.json`'s accounts for its removed ones, and snac (only) is restarted to delete it.
//!
//! snac itself is not here: its data folder is a temporary one, where the test leaves the first
//! password snac would.

use crate::common;

use crate::common::{FakeDevice, Server};
use std::sync::Arc;

#[tokio::test(flavor = "current_thread")]
async fn a_household_account_is_removed_and_only_that() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    common::write_settings(data.path(), "hearth");
    let (share, snac) = (data.path().join("share"), data.path().join("snac"));
    std::fs::create_dir_all(&share).unwrap();
    let server = Server::start_configured(
        data.clone(),
        FakeDevice::new(true),
        None,
        Some(share.clone()),
        |c| c.social = Some(snac.clone()),
    );
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/social").await.csrf();

    // alex is added; snac would leave its first password.
    let r = b
        .form("/admin/social/add", &[("csrf", &csrf), ("name", "alex")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let file = cairn_web::social::first_password_file(&snac, "alex");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "alex-first-pw\n").unwrap();
    let page = b.get("/admin/social").await;
    assert!(page.body.contains("alex-first-pw"), "{}", page.body);
    // The owner's row has no removal; alex's has one.
    assert_eq!(
        page.body.matches("action=\"/admin/social/remove\"").count(),
        1,
        "{}",
        page.body
    );

    let site = || cairn_web::share::read_site(&share).unwrap();
    let restarts = |d: &FakeDevice, s: &str| d.calls().iter().filter(|c| *c == s).count();
    let before = restarts(&server.device, "restart snac");
    // Refused, each with its reason; nothing changes.
    for (name, why) in [
        ("owner", "the owner's account stays"),
        (" Owner ", "the owner's account stays"),
        (
            "sam",
            "there is no household account named sam: nothing was removed.",
        ),
        ("al ex", "Account name: letters a–z, digits and '_' only."),
        ("<b>x</b>", "Account name: "),
        ("", "Account name: a name, like alex."),
    ] {
        let r = b
            .form("/admin/social/remove", &[("csrf", &csrf), ("name", name)])
            .await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.body);
        assert!(r.body.contains(why), "{name:?}: {}", r.body);
        assert!(!r.body.contains("<b>x</b>"), "{name:?} shown raw");
        assert_eq!(site().social_accounts, ["alex"], "{name:?}");
    }
    let r = b
        .form(
            "/admin/social/remove",
            &[("csrf", "forged"), ("name", "alex")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(site().social_accounts, ["alex"]);
    assert_eq!(restarts(&server.device, "restart snac"), before);

    // Removed: gone from the page and from what snac reads, named for deletion, snac restarted
    // to delete it (Jabber left alone).
    let r = b
        .form("/admin/social/remove", &[("csrf", &csrf), ("name", "alex")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("@alex@hearth.local is removed: snac deletes it, with its posts"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("data-name=\"alex\""), "{}", r.body);
    assert!(r.body.contains("data-name=\"owner\""), "{}", r.body);
    let s = site();
    assert!(s.social_accounts.is_empty(), "{s:?}");
    assert_eq!(s.social_removed, ["alex"]);
    assert_eq!(restarts(&server.device, "restart snac"), before + 1);
    assert!(!server.device.called("restart prosody"));
    let kept = cairn_web::Settings::load(data.path()).unwrap().unwrap();
    assert_eq!(kept.social_removed, ["alex"]);
    // Twice is a name nobody has now.
    let r = b
        .form("/admin/social/remove", &[("csrf", &csrf), ("name", "alex")])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Added again, it is a new account: snac must not delete it.
    let r = b
        .form("/admin/social/add", &[("csrf", &csrf), ("name", "alex")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = site();
    assert_eq!(s.social_accounts, ["alex"]);
    assert!(s.social_removed.is_empty(), "{s:?}");

    // This fake PID 1 runs no snac: the dashboard says so.
    let dash = b.get("/admin/").await;
    assert!(
        dash.body.contains("Social: not in this image"),
        "{}",
        dash.body
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_snac_nothing_is_removed() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/social").await.csrf();
    let r = b
        .form("/admin/social/remove", &[("csrf", &csrf), ("name", "alex")])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("This device has no fediverse service."),
        "{}",
        r.body
    );
}
