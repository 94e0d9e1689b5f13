//! The owner's System page and each service's log over real TLS on loopback: the services with
//! their logs and buttons, a log shown as text whatever it holds, and the names a browser may
//! put in a log's address (only one `status` lists reaches PID 1, anything else is refused before
//! PID 1 is asked).
//!
//! Each test starts its own server, already set up as `plug` (a fake PID 1 behind `Device`, a
//! cheap passphrase hash).

use crate::common::{Server, PASSPHRASE};

#[tokio::test]
async fn the_system_page_lists_the_services_with_their_logs_and_buttons() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let dash = b.get("/admin/").await;
    assert!(
        dash.body.contains("<a href=\"/admin/system\">System</a>"),
        "{}",
        dash.body
    );
    let r = b.get("/admin/system").await;
    assert_eq!(r.status, 200);
    for text in [
        "<h1>System</h1>",
        "<a href=\"/admin/system\" aria-current=\"page\">System</a>",
        "node",
        "web",
        "ready",
        "5 s",
        "<a href=\"/admin/logs/node\">Log</a>",
        "<a href=\"/admin/logs/web\">Log</a>",
        "action=\"/admin/restart\"",
        "action=\"/admin/reboot\"",
        "action=\"/admin/poweroff\"",
        "href=\"/admin/passphrase\"",
    ] {
        assert!(r.body.contains(text), "{text} in {}", r.body);
    }
    // Its buttons are the dashboard's routes, and lead back to System.
    let csrf = r.csrf();
    let restarted = b
        .form(
            "/admin/restart",
            &[("csrf", &csrf), ("service", "web"), ("back", "system")],
        )
        .await;
    assert_eq!(restarted.status, 200);
    assert!(restarted.body.contains("web is restarting."));
    assert!(restarted
        .body
        .contains("<a href=\"/admin/system\">Back to System</a>"));
    // Any other `back` is the dashboard: a form never names the address.
    let r = b
        .form(
            "/admin/reboot",
            &[("csrf", &csrf), ("back", "https://evil.example/")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .contains("<a href=\"/admin/\">Back to the dashboard</a>"));
    assert!(!r.body.contains("evil"));
    assert!(server.device.called("restart web") && server.device.called("reboot"));
}

#[tokio::test]
async fn a_log_is_shown_as_text_the_newest_at_the_bottom() {
    let server = Server::set_up(true);
    server.device.set_log(
        "node",
        "node: started\nnode: <script>alert(1)</script> & <b>bold</b>\n\u{1b}[31mnode: last line\n",
    );
    let mut b = server.logged_in().await;
    let r = b.get("/admin/logs/node").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("<script>alert"), "{}", r.body);
    assert!(!r.body.contains("<b>bold"));
    let shown = "node: &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;";
    let (first, middle, last) = (
        r.body.find("node: started").expect("the first line"),
        r.body.find(shown).expect("the script line, as text"),
        r.body.find("␛[31mnode: last line").expect("the last line"),
    );
    assert!(first < middle && middle < last);
    for text in [
        "<h1>Log: node</h1>",
        "<pre class=\"log\">",
        "State: <strong>ready</strong>",
        "href=\"#newest\"",
        "<a href=\"/admin/logs/node\">Reload</a>",
    ] {
        assert!(r.body.contains(text), "{text} in {}", r.body);
    }
    assert!(server.device.called("logs node"));
    let empty = b.get("/admin/logs/web").await;
    assert_eq!(empty.status, 200);
    assert!(empty.body.contains("Nothing logged yet."));
}

#[tokio::test]
async fn a_service_status_does_not_list_is_404() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let r = b.get("/admin/logs/nosuch").await;
    assert_eq!(r.status, 404);
    assert!(
        r.body
            .contains("There is no service named nosuch on this device."),
        "{}",
        r.body
    );
    // The longest name PID 1 allows is asked about, and is not there either.
    let r = b.get(&format!("/admin/logs/{}", "x".repeat(32))).await;
    assert_eq!(r.status, 404);
    // Judged by `status`: `logs` was never asked.
    assert!(!server.device.called("logs"));
    for path in ["/admin/logs", "/admin/logs/"] {
        let r = b.get(path).await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/admin/system"))
        );
    }
}

#[tokio::test]
async fn a_hostile_name_is_refused_before_pid1_is_asked() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/system").await.csrf();
    let long = format!("/admin/logs/{}", "x".repeat(33));
    let huge = format!("/admin/logs/{}", "x".repeat(8 * 1024));
    let before = server.device.asked();
    for path in [
        "/admin/logs/../x",
        "/admin/logs/..",
        "/admin/logs/a/b",
        "/admin/logs/node/",
        "/admin/logs/%2e%2e%2fx",
        "/admin/logs/node%00",
        "/admin/logs/%3Cscript%3E",
        "/admin/logs/node.log",
        long.as_str(),
        huge.as_str(),
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(
            r.body
                .contains("A service's name is letters, digits, '-' and '_', at most 32 of them."),
            "{path}: {}",
            r.body
        );
        // The name is not repeated back.
        assert!(!r.body.contains("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") && !r.body.contains("%3C"));
    }
    // A restart by hand with such a name is refused the same way.
    for name in ["../x", "a b", &"x".repeat(33)] {
        let r = b
            .form("/admin/restart", &[("csrf", &csrf), ("service", name)])
            .await;
        assert_eq!(r.status, 400, "{name}");
    }
    assert_eq!(server.device.asked(), before, "{:?}", server.device.calls());
}

#[tokio::test]
async fn without_a_session_system_and_logs_send_to_login() {
    let server = Server::set_up(true);
    server.device.set_log("node", "secret line\n");
    let mut b = server.browser();
    let before = server.device.asked();
    for path in ["/admin/system", "/admin/logs/node", "/admin/logs/../x"] {
        let r = b.get(path).await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/admin/login")),
            "{path}"
        );
        assert!(!r.body.contains("secret line"));
    }
    assert_eq!(server.device.asked(), before);
}

#[tokio::test]
async fn a_factory_reset_needs_the_passphrase_before_pid1_waits_for_the_press() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let page = b.get("/admin/system").await;
    assert!(page.body.contains("Factory reset"), "{}", page.body);
    let csrf = page.csrf();
    // A session alone is not enough: the wrong passphrase does nothing.
    let r = b
        .form(
            "/admin/reset",
            &[("csrf", &csrf), ("passphrase", "not the passphrase")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("nothing was done"), "{}", r.body);
    assert!(!server.device.called("reset"));
    // Without the form's token: refused.
    let r = b.form("/admin/reset", &[("passphrase", PASSPHRASE)]).await;
    assert_eq!(r.status, 403);
    assert!(!server.device.called("reset"));
    let r = b
        .form(
            "/admin/reset",
            &[("csrf", &csrf), ("passphrase", PASSPHRASE)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Press the button now"), "{}", r.body);
    assert!(server.device.called("reset"));
}
