//! The owner's Storage page and the dashboard's storage figures over real TLS on loopback, with
//! a fake storage node behind the `Node` trait: figures, partners with their books and audit
//! scores, pairing from the page (through PID 1), invitation codes both ways, unpairing, and
//! what a browser may not send the node.

use crate::common::Server;

#[tokio::test]
async fn the_dashboard_shows_offered_used_partners_and_redundancy_below_target() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let dash = b.get("/admin/").await;
    assert_eq!(dash.status, 200);
    for text in [
        "Offered to friends: 8.0 GiB",
        "used by their shards: 3.0 MiB",
        "Partners: 2 (1 connected now)",
        "below its redundancy target: 7 of 10 chunks at full redundancy, 2 degraded, 1 only on this plug, 0 unreadable.",
        "3.0 MiB of shards wait on this plug for partners",
        // Amber, as the LED.
        "health-degraded",
    ] {
        assert!(dash.body.contains(text), "{text} in {}", dash.body);
    }
    // All at target: said plainly, in the healthy colour.
    server.node.status.lock().unwrap().as_mut().unwrap()["chunks"] =
        serde_json::json!({"chunks": 4, "full": 4, "degraded": 0, "unreadable": 0});
    let dash = b.get("/admin/").await;
    assert!(
        dash.body.contains("all 4 chunks at full redundancy"),
        "{}",
        dash.body
    );
    // The node down: the dashboard still comes, saying so.
    *server.node.status.lock().unwrap() = None;
    let dash = b.get("/admin/").await;
    assert_eq!(dash.status, 200);
    assert!(
        dash.body.contains("The storage node is not answering")
            && dash.body.contains("connection refused"),
        "{}",
        dash.body
    );
}

#[tokio::test]
async fn partners_show_their_books_and_scores_and_one_can_be_unpaired() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let page = b.get("/admin/storage").await;
    assert_eq!(page.status, 200);
    for text in [
        "12D3KooWfriendA",
        "97 %",
        "7.0 MiB",
        "5.0 MiB",
        "12D3KooWfriendB",
        "unreachable",
        "via invitation",
    ] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
    let csrf = page.csrf();
    let r = b
        .form(
            "/admin/storage/unpair",
            &[("csrf", &csrf), ("peer", "12D3KooWfriendA")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("12D3KooWfriendA is no longer a partner"));
    // The node's refusal is shown as it says it.
    let r = b
        .form(
            "/admin/storage/unpair",
            &[("csrf", &csrf), ("peer", "12D3KooWstranger")],
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("is not a partner"), "{}", r.body);
    // Not a peer id: refused here; the node never hears of it.
    let r = b
        .form(
            "/admin/storage/unpair",
            &[("csrf", &csrf), ("peer", "../../etc")],
        )
        .await;
    assert_eq!(r.status, 400);
    let ops: Vec<String> = server
        .node
        .asked()
        .iter()
        .map(|r| format!("{} {}", r["op"], r["peer"]))
        .collect();
    assert_eq!(
        ops,
        [
            "\"unpair\" \"12D3KooWfriendA\"",
            "\"unpair\" \"12D3KooWstranger\""
        ]
    );
    // Without the CSRF token: refused, nothing asked.
    let r = b
        .form("/admin/storage/unpair", &[("peer", "12D3KooWfriendA")])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(server.node.asked().len(), 2);
}

#[tokio::test]
async fn an_invitation_code_is_shown_escaped_and_a_pasted_one_is_joined() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/storage").await.csrf();
    let r = b.form("/admin/storage/invite", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 200);
    // The code as text (a node's answer is escaped like anything else).
    assert!(r.body.contains("cairn1-abc&lt;def&gt;"), "{}", r.body);
    assert_eq!(server.node.asked()[0]["ttl_secs"], 24 * 3600);
    // Pasted with a line break in it: the code goes to the node whole, without the break.
    let r = b
        .form(
            "/admin/storage/join",
            &[("csrf", &csrf), ("code", " cairn1-\r\nxyz \n")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("12D3KooWjoined are partners now"),
        "{}",
        r.body
    );
    assert_eq!(server.node.asked()[1]["code"], "cairn1-xyz");
    // The node's refusal, as it says it.
    let r = b
        .form(
            "/admin/storage/join",
            &[("csrf", &csrf), ("code", "expired")],
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("has expired"), "{}", r.body);
    // Empty, or not a code at all: a message, and the node is not asked.
    for bad in ["  \n ", "código"] {
        let r = b
            .form("/admin/storage/join", &[("csrf", &csrf), ("code", bad)])
            .await;
        assert_eq!(r.status, 400, "{bad:?}");
    }
    assert_eq!(server.node.asked().len(), 3);
}

#[tokio::test]
async fn pair_opens_the_window_through_pid1_and_the_page_follows_it() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/storage").await.csrf();
    let r = b.form("/admin/storage/pair", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert!(server.device.called("pair"));
    let page = b.get("/admin/storage").await;
    assert!(
        page.body.contains("The pairing window is open for 60 s"),
        "{}",
        page.body
    );
    let api = b.get("/admin/api/storage").await.json();
    assert_eq!(api["window"]["remaining_ms"], 60_000);
    // The dashboard says what the LED shows meanwhile.
    let dash = b.get("/admin/").await;
    assert!(
        dash.body
            .contains("the green LED blinks fast: the pairing window is open."),
        "{}",
        dash.body
    );
    assert_eq!(api["storage"]["partners"].as_array().unwrap().len(), 2);
    // The attempt ends unpaired while the window stays open: the page says so, and how to
    // try again.
    let refused = "refused: 12D3KooWx was in pairing mode but did not confirm; press again";
    server.device.pairing_ended(refused);
    let page = b.get("/admin/storage").await;
    assert!(
        page.body.contains(&format!(
            "Last pairing: {refused}. The window is open for 60 s more: click Pair or press the \
             button to try again."
        )),
        "{}",
        page.body
    );
    assert!(page.body.contains("data-follow=\"1\""), "{}", page.body);
    // A second click while it is open: PID 1's reason.
    let r = b.form("/admin/storage/pair", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("already open"), "{}", r.body);
    // The API is the owner's only.
    let mut stranger = server.browser();
    let r = stranger.get("/admin/api/storage").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["ok"], false);
    assert!(r.json().get("storage").is_none(), "{}", r.body);
}
