//! Two owners pair their plugs from the Storage page, in a real browser each: two qemu-virt
//! boards and the host on one LAN of the test's own (a bridge in a private network namespace; no
//! DHCP server, so link-local addresses), each plug set up through its page as its owner would.
//!
//! First by the button: Pair on A's page opens A's window (the page follows it live), a press
//! on B's front panel; each page lists the other plug by the id the other's page shows, and
//! both show the same six-digit code.
//! Both unpair from their pages. Then by invitation code: B's page makes one, A's page takes it
//! pasted, and they are partners again. Last, A is reset to factory state from its page: B
//! hears that A's identity is gone and forgets it.

use cairn_hil::browser::{Browser, LanPlug as Plug, Scope};
use cairn_hil::PrivateLan;
use std::time::Duration;

/// Both owners' passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// A page's reaction to a click or a press on a loaded 2-core machine.
const REACT: Duration = Duration::from_secs(20);
/// A form whose answer hashes the passphrase (Argon2id, 19 MiB, on an emulated CPU) and makes
/// the owner's vault.
const HASHING: Duration = Duration::from_secs(90);
/// From Pair on one page to both nodes agreeing: the window, the other press, libp2p's mDNS
/// finding the peer, the pairing exchange.
const PAIRING: Duration = Duration::from_secs(90);

/// The plug's id, as its Storage page shows it.
fn own_id(b: &mut Browser, plug: &Plug) -> String {
    b.goto(&plug.url("/admin/storage")).unwrap();
    let id = b.text_of("#this-plug code").unwrap();
    assert!(id.starts_with("12D3KooW"), "{id}");
    id
}

/// Waits (reloading the Storage page, at most `timeout`) until its partner list shows `peer`.
fn wait_partner(b: &mut Browser, plug: &Plug, peer: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        b.goto(&plug.url("/admin/storage")).unwrap();
        let partners = b.text_of("#partners").unwrap();
        if partners.contains(peer) {
            return partners;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{peer} not among the partners within {timeout:?}: {partners}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What the plugs' consoles said of pairing (for a failure's message).
fn said_of(plugs: &[&Plug]) -> String {
    let mut out = String::new();
    for (i, p) in plugs.iter().enumerate() {
        for line in p.q.console() {
            if line.contains("pairing") || line.contains("button:") {
                out.push_str(&format!("plug {i}: {line}\n"));
            }
        }
    }
    out
}

/// Unpairs `peer` from the Storage page; the page lists no partner after.
fn unpair(b: &mut Browser, plug: &Plug, peer: &str) {
    b.goto(&plug.url("/admin/storage")).unwrap();
    b.click("#partners details summary").unwrap();
    b.click_to_next_page("form[action='/admin/storage/unpair'] button", REACT)
        .unwrap();
    assert_eq!(b.text_of("h1").unwrap(), "Unpaired");
    assert!(b.text_of("body").unwrap().contains(peer));
    b.goto(&plug.url("/admin/storage")).unwrap();
    assert!(b
        .text_of("#partners")
        .unwrap()
        .starts_with("No partners yet."));
}

#[test]
fn two_owners_pair_their_plugs_from_the_page_by_button_then_by_code() {
    let lan = PrivateLan::new(2).unwrap();
    let a = Plug::boot(&lan.taps[0], "52:54:00:00:00:2a").unwrap();
    let b = Plug::boot(&lan.taps[1], "52:54:00:00:00:2b").unwrap();
    assert_ne!(a.origin, b.origin);
    let mut ba = a.set_up("attic", PASSPHRASE).unwrap();
    let mut bb = b.set_up("cellar", PASSPHRASE).unwrap();
    let (id_a, id_b) = (own_id(&mut ba, &a), own_id(&mut bb, &b));
    assert_ne!(id_a, id_b);
    // Each claim's press opened a window for the claim alone: no plug tried to pair, so the
    // two claims, a minute apart, did not pair the plugs behind their owners' backs.
    for l in [&a, &b] {
        let console = l.q.console();
        assert!(
            console
                .iter()
                .any(|line| line
                    == "cairn: pairing: not before the device is claimed; this window is for the claim"),
            "{}",
            said_of(&[l])
        );
        assert!(
            !console.iter().any(|line| line.contains("paired with")),
            "{}",
            said_of(&[l])
        );
    }

    // 1. By the button: Pair on A's page, and the page says the window is open and for how
    // long; B's owner presses B's button; both pages list the other plug.
    ba.click_to_next_page("#pair", REACT).unwrap();
    let said = ba
        .wait_for_text(
            Scope::Css("#pairing"),
            "The pairing window is open for",
            REACT,
        )
        .unwrap();
    assert!(
        said.ends_with("press the button on the other plug now."),
        "{said}"
    );
    ba.screenshot("web-pair-1-window-open").unwrap();
    b.press();
    // The page follows the window by itself and shows how it ended.
    let ended = ba
        .wait_for_text(Scope::Css("#pairing"), "Last pairing: ", PAIRING)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", said_of(&[&a, &b])));
    assert!(
        ended.contains(&format!("paired with {id_b}, code ")),
        "{ended}"
    );
    // The six digits B's page shows are A's: the owners compare them.
    let code_of = |said: &str| said.split(", code ").nth(1).unwrap()[..7].to_string();
    // Each plug settles its own side: B's may end a moment after A's, and its page follows.
    bb.goto(&b.url("/admin/storage")).unwrap();
    let b_said = bb
        .wait_for_text(Scope::Css("#pairing"), "Last pairing: ", REACT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", said_of(&[&a, &b])));
    assert!(
        b_said.contains(&format!("paired with {id_a}, code ")),
        "{b_said}"
    );
    assert_eq!(code_of(&ended), code_of(&b_said));
    let partners = wait_partner(&mut ba, &a, &id_b, REACT);
    assert!(partners.contains("connected"), "{partners}");
    ba.screenshot("web-pair-2-partners").unwrap();
    wait_partner(&mut bb, &b, &id_a, REACT);
    for l in [&a, &b] {
        assert!(l
            .q
            .console()
            .iter()
            .any(|line| line.starts_with("cairn: pairing: paired with ")));
    }

    // 2. Both unpair from their pages.
    unpair(&mut ba, &a, &id_b);
    unpair(&mut bb, &b, &id_a);

    // 3. By invitation code: B's page makes one, A's owner pastes it; partners again, both.
    bb.goto(&b.url("/admin/storage")).unwrap();
    bb.click_to_next_page("form[action='/admin/storage/invite'] button", REACT)
        .unwrap();
    let code = bb.value_of("#invitation").unwrap();
    assert!(code.starts_with("cairn1-"), "{code}");
    ba.goto(&a.url("/admin/storage")).unwrap();
    ba.fill("#code", &code).unwrap();
    ba.click_to_next_page("form[action='/admin/storage/join'] button", PAIRING)
        .unwrap();
    assert_eq!(ba.text_of("h1").unwrap(), "Paired");
    assert!(
        ba.text_of("body").unwrap().contains(&id_b),
        "the page names the new partner"
    );
    ba.screenshot("web-pair-3-joined-by-code").unwrap();
    wait_partner(&mut ba, &a, &id_b, REACT);
    wait_partner(&mut bb, &b, &id_a, PAIRING);
    // The code worked once: pasted again, it is refused with the node's reason.
    ba.goto(&a.url("/admin/storage")).unwrap();
    ba.fill("#code", &code).unwrap();
    ba.click_to_next_page("form[action='/admin/storage/join'] button", PAIRING)
        .unwrap();
    assert_eq!(ba.text_of("h1").unwrap(), "Invitation");

    // 4. A's owner resets A to factory state (the passphrase, then a press): before its key
    // is destroyed, A tells B its identity is gone, and B's page no longer lists it.
    ba.goto(&a.url("/admin/system")).unwrap();
    ba.click("details:last-of-type summary").unwrap();
    ba.fill("#reset-passphrase", PASSPHRASE).unwrap();
    let lines = a.q.line_count();
    ba.click_to_next_page("form[action='/admin/reset'] button", HASHING)
        .unwrap();
    a.q.wait_line_from(
        lines,
        "cairn: factory reset: asked from the owner's page",
        REACT,
    )
    .unwrap();
    a.press();
    a.q.wait_line_from(
        lines,
        "cairn: factory reset: 1 of 1 partners told this plug's identity is gone",
        REACT,
    )
    .unwrap();
    a.q.wait_line_from(lines, "cairn: factory reset: data wiped; rebooting", REACT)
        .unwrap();
    bb.goto(&b.url("/admin/storage")).unwrap();
    assert!(bb
        .text_of("#partners")
        .unwrap()
        .starts_with("No partners yet."));
}
