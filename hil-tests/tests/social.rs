//! The owner's fediverse account on the plug, as a person uses it: the product image runs
//! Debian's snac2 from its system layer behind Cairn's HTTPS, setup makes `@owner@NAME.local`,
//! the Social page shows its first password, and a Mastodon client library nobody here wrote
//! (Mastodon.py) finds the account by WebFinger, logs in through the plug's OAuth page, posts a
//! status with a picture, reads it back from the home timeline and favourites it; inbox
//! deliveries a hostile server would send (unsigned, badly signed, oversized) are refused.

use cairn_bsp::panel::PanelLink;
use cairn_hil::browser::set_up_through_forward;
use cairn_hil::{free_port, image, run_client, Config, Qemu, BOOT_TIMEOUT};
use std::time::{Duration, Instant};

/// The owner's passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// After setup snac restarts for the device's new name and makes the owner's key.
const OWNER_ACCOUNT: Duration = Duration::from_secs(150);
/// The client's whole session (each request bounded by 60 s inside).
const CLIENT: Duration = Duration::from_secs(300);

#[test]
fn the_owner_posts_to_the_fediverse_from_a_mastodon_client() {
    let mut cfg = Config::new(image("cairn-qemu-virt.img").unwrap());
    let https = free_port();
    cfg.https_port = Some(https);
    let q = Qemu::boot(&cfg).unwrap();
    let panel: PanelLink = q.panel().unwrap();
    let web = q.wait_line("cairn: web: https://", BOOT_TIMEOUT).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();

    // 1. The owner sets the plug up as "hearth" in a browser.
    let url = |p: &str| format!("https://localhost:{https}{p}");
    let mut b = set_up_through_forward(&web, https, &panel, "hearth", PASSPHRASE).unwrap();

    // 2. The Social page shows the owner's handle and, once snac made it, its first password.
    let start = Instant::now();
    let password = loop {
        b.goto(&url("/admin/social")).unwrap();
        let handle = b.text_of("#social-handle").unwrap();
        assert_eq!(handle, "@owner@hearth.local");
        let said = b.text_of("#social-password").unwrap();
        if !said.contains("being made") {
            break said;
        }
        assert!(
            start.elapsed() < OWNER_ACCOUNT,
            "no owner account on the Social page: {said}"
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(password.len() >= 8, "{password}");
    let path = b.screenshot("social-1-owner").unwrap();
    eprintln!("screenshot: {}", path.display());

    // 3. A Mastodon client, through the plug's HTTPS.
    let base = format!("https://127.0.0.1:{https}");
    let seen = run_client(
        "mastodon_owner.py",
        &[&base, "hearth.local", "owner", &password],
        CLIENT,
    );
    // WebFinger names the actor; the actor and its key are well-formed.
    assert_eq!(seen["webfinger_status"], 200, "{seen:#}");
    assert_eq!(seen["actor_url"], "https://hearth.local/owner", "{seen:#}");
    assert_eq!(seen["actor_type"], "Person", "{seen:#}");
    assert_eq!(
        seen["actor_inbox"], "https://hearth.local/owner/inbox",
        "{seen:#}"
    );
    assert_eq!(
        seen["actor_key_owner"], "https://hearth.local/owner",
        "{seen:#}"
    );
    assert_eq!(seen["actor_key_pem"], true, "{seen:#}");
    // The owner's session from the app, a post with a picture, the timeline, a favourite.
    assert_eq!(seen["logged_in"], "owner", "{seen:#}");
    assert_eq!(seen["posted_media"], 1, "{seen:#}");
    assert_eq!(seen["home_has_post"], true, "{seen:#}");
    assert_eq!(seen["favourited"], true, "{seen:#}");
    assert_eq!(seen["picture_same"], true, "{seen:#}");

    // Hostile deliveries: the oversized one is refused by the proxy from its header; snac
    // queues the others (202) and drops them when their signatures fail: the forged mention
    // of the owner shows nowhere, and snac goes on answering.
    eprintln!(
        "inbox answers: unsigned {}, badly signed {}",
        seen["unsigned_inbox"], seen["badly_signed_inbox"]
    );
    assert_eq!(seen["oversized_inbox"], 413, "{seen:#}");
    assert_eq!(seen["forged_in_timeline"], false, "{seen:#}");
    assert_eq!(seen["forged_notified"], false, "{seen:#}");
    assert_eq!(seen["still_answers"], 200, "{seen:#}");

    // 4. snac's log is the owner's to read, like every service's.
    b.goto(&url("/admin/logs/snac")).unwrap();
    let log = b.text_of("pre.log").unwrap();
    assert!(log.contains("the fediverse for hearth.local"), "{log}");
}
