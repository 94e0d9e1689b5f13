//! The Chat page's judgement of what a browser sends, over real TLS on loopback: account names
//! that are not what Cairn allows in an address are refused with the reason, shown escaped,
//! before Prosody is asked; and the dashboard's Jabber line on a device without Jabber.
//!
//! The server here has no Prosody (a test host's `Config`): a name that passes gets "This
//! device has no Jabber", which shows it got past the rules.

use crate::common::Server;

#[tokio::test]
async fn odd_account_names_are_refused_with_the_reason_and_shown_escaped() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let page = b.get("/admin/chat").await;
    let csrf = page.csrf();
    let add = |name: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("name", name.to_string()),
            ("password", "long enough password".to_string()),
        ]
    };
    // Spaces, an address's own separators, markup, letters outside a–z, a dot at either end,
    // quotes, too long: each is refused with what a name may be.
    for bad in [
        "al ex",
        "alex@hearth.local",
        "a/b",
        "<b>x</b>",
        "ünï",
        ".alex",
        "alex.",
        "al\"ex",
        "al'ex",
        "",
        "abcdefghijklmnopqrstuvwxyz0123456",
    ] {
        let fields = add(bad);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = b.form("/admin/chat/add", &fields).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert!(r.body.contains("Account name: "), "{bad:?}: {}", r.body);
        assert!(
            !r.body.contains("This device has no Jabber."),
            "{bad:?} reached Prosody's turn"
        );
        assert!(!r.body.contains("<b>x</b>"), "{bad:?} shown raw");
    }
    // What a person types on a phone passes the rules (upper case becomes lower).
    for good in ["Alex", "sam.w-2_x", "0day"] {
        let fields = add(good);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = b.form("/admin/chat/add", &fields).await;
        assert!(
            r.body.contains("This device has no Jabber."),
            "{good:?}: {}",
            r.body
        );
    }
    let dash = b.get("/admin/").await;
    assert!(
        dash.body.contains("Jabber: not in this image"),
        "{}",
        dash.body
    );
}
