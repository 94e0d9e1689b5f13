//! The owner's side over real TLS on loopback: login and its rate limits, sessions, CSRF and
//! cross-site refusals, the dashboard and its buttons, the passphrase change, what every
//! response carries, bounded bodies, `/api/health`, and the TLS versions the server speaks.
//!
//! Each test starts its own server, already set up as `plug` (a fake PID 1 behind `Device`, a
//! cheap passphrase hash); the file runs in a few seconds.

use crate::common;

use crate::common::{Server, PASSPHRASE};
use std::io::{Read, Write};

#[tokio::test]
async fn the_dashboard_shows_the_device_and_its_buttons_reach_pid1() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let dash = b.get("/admin/").await;
    assert_eq!(dash.status, 200);
    for text in [
        "plug",
        "healthy",
        "the green LED is on.",
        "node",
        "30 MiB",
        "web",
        "9.0 MiB",
        "32 MiB in use of 246 MiB",
        "Storage: ",
    ] {
        assert!(dash.body.contains(text), "{text} in {}", dash.body);
    }
    let csrf = dash.csrf();
    let r = b
        .form("/admin/restart", &[("csrf", &csrf), ("service", "node")])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("node is restarting"));
    assert_eq!(
        b.form("/admin/reboot", &[("csrf", &csrf)]).await.status,
        200
    );
    assert_eq!(
        b.form("/admin/poweroff", &[("csrf", &csrf)]).await.status,
        200
    );
    let calls: Vec<String> = server
        .device
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("say "))
        .collect();
    assert_eq!(calls, ["restart node", "reboot", "poweroff"]);
    // The CSRF token may also come as a header, as a script's fetch sends it.
    let r = b
        .send(
            "POST",
            "/admin/restart",
            &[
                ("x-csrf-token", &csrf),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"service=web".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(server.device.called("restart web"));
}

#[tokio::test]
async fn without_a_session_the_admin_pages_send_to_login() {
    let server = Server::set_up(true);
    let mut b = server.browser();
    for path in ["/admin/", "/admin/passphrase"] {
        let r = b.get(path).await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/admin/login")),
            "{path}"
        );
    }
    let r = b.form("/admin/reboot", &[("csrf", "x")]).await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/admin/login"))
    );
    assert_eq!(b.get("/admin").await.header("location"), Some("/admin/"));
    let login = b.get("/admin/login").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("type=\"password\""));
    assert!(!server.device.called("reboot"));
}

#[tokio::test]
async fn a_post_without_the_csrf_token_or_from_another_site_is_refused() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/").await.csrf();
    assert_eq!(b.form("/admin/reboot", &[]).await.status, 403);
    assert_eq!(
        b.form("/admin/reboot", &[("csrf", "0000")]).await.status,
        403
    );
    // The right token, but the browser says the request comes from another site.
    let body = format!("csrf={csrf}").into_bytes();
    let form = ("content-type", "application/x-www-form-urlencoded");
    let r = b
        .send(
            "POST",
            "/admin/reboot",
            &[form, ("origin", "https://evil.example")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b
        .send(
            "POST",
            "/admin/reboot",
            &[form, ("sec-fetch-site", "cross-site")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    // Login is cross-site checked too (no session yet, so no token).
    let login = format!("passphrase={PASSPHRASE}").into_bytes();
    let r = b
        .send(
            "POST",
            "/admin/login",
            &[form, ("origin", "null"), ("sec-fetch-site", "cross-site")],
            login.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b
        .send(
            "POST",
            "/admin/login",
            &[form, ("origin", "https://evil.example")],
            login,
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(!server.device.called("reboot"));
    // The same request from this site's page goes through, also as Chromium sends a form under
    // `Referrer-Policy: no-referrer`: `Origin: null`, `Sec-Fetch-Site: same-origin`.
    assert_eq!(
        b.form("/admin/reboot", &[("csrf", &csrf)]).await.status,
        200
    );
    let r = b
        .send(
            "POST",
            "/admin/reboot",
            &[form, ("origin", "null"), ("sec-fetch-site", "same-origin")],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let reboots = server
        .device
        .calls()
        .iter()
        .filter(|c| *c == "reboot")
        .count();
    assert_eq!(reboots, 2);
}

#[tokio::test]
async fn wrong_passphrases_are_limited_with_429() {
    let server = Server::set_up(true);
    let mut b = server.browser();
    for _ in 0..5 {
        let r = b
            .form("/admin/login", &[("passphrase", "wrong passphrase")])
            .await;
        assert_eq!(r.status, 401);
        assert!(r.body.contains("Wrong passphrase."));
    }
    let r = b
        .form("/admin/login", &[("passphrase", "wrong passphrase")])
        .await;
    assert_eq!(r.status, 429);
    assert!(
        r.body
            .contains("too many wrong passphrases from your address"),
        "{}",
        r.body
    );
    // Even the right one waits now.
    let r = b.form("/admin/login", &[("passphrase", PASSPHRASE)]).await;
    assert_eq!(r.status, 429);
    assert!(!b.cookies.contains_key("cairn_session"));
}

#[tokio::test]
async fn wrong_passphrases_from_the_owners_address_do_not_lock_the_owners_browser_out() {
    let server = Server::set_up(true);
    // The owner logged in once: the browser is known from then on.
    let mut owner = server.browser();
    let r = owner
        .form("/admin/login", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(r.status, 303);
    let known = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("cairn_known="))
        .expect("a known-browser cookie")
        .to_string();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=",
    ] {
        assert!(known.contains(attr), "{attr} in {known}");
    }
    // Someone else at the same address (every client here is 127.0.0.1) guesses until refused.
    let mut stranger = server.browser();
    for _ in 0..5 {
        let r = stranger
            .form("/admin/login", &[("passphrase", "wrong passphrase")])
            .await;
        assert_eq!(r.status, 401);
    }
    let r = stranger
        .form("/admin/login", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(r.status, 429);
    // A made-up known-browser cookie is no way around it.
    stranger.cookies.insert(
        "cairn_known".into(),
        format!("{}.{}", "0".repeat(16), "ab".repeat(32)),
    );
    let r = stranger
        .form("/admin/login", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("from your address"), "{}", r.body);
    // The owner logs out and in again.
    let csrf = owner.get("/admin/").await.csrf();
    owner.form("/admin/logout", &[("csrf", &csrf)]).await;
    let r = owner
        .form("/admin/login", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(owner.get("/admin/").await.status, 200);
    // A known browser that guesses wrong is limited too, on its own.
    owner.cookies.remove("cairn_session");
    for _ in 0..5 {
        let r = owner
            .form("/admin/login", &[("passphrase", "wrong passphrase")])
            .await;
        assert_eq!(r.status, 401);
    }
    let r = owner
        .form("/admin/login", &[("passphrase", PASSPHRASE)])
        .await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("from this browser"), "{}", r.body);
}

#[tokio::test]
async fn the_reboot_page_arrives_though_pid1_stops_the_web_as_it_says_yes() {
    let server = Server::set_up(true);
    server.device.stops_on_reboot();
    let mut b = server.logged_in().await;
    let csrf = b.get("/admin/").await.csrf();
    let r = b.form("/admin/reboot", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("The device is rebooting"), "{}", r.body);
    // Then it stops of itself, well within PID 1's grace, and takes no new connection.
    let ended = tokio::task::spawn_blocking(move || {
        let r = server
            .stopped
            .recv_timeout(std::time::Duration::from_secs(5));
        (r, server)
    })
    .await
    .unwrap();
    assert_eq!(ended.0, Ok(Ok(())));
    assert!(std::net::TcpStream::connect(ended.1.addr).is_err());
}

#[tokio::test]
async fn logout_ends_the_session() {
    let server = Server::set_up(true);
    let mut b = server.logged_in().await;
    let stolen = b.cookies.clone();
    let csrf = b.get("/admin/").await.csrf();
    let r = b.form("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/admin/login"))
    );
    assert!(!b.cookies.contains_key("cairn_session"));
    // The old cookie, kept by someone, is no longer a session.
    b.cookies = stolen;
    assert_eq!(
        b.get("/admin/").await.header("location"),
        Some("/admin/login")
    );
}

#[tokio::test]
async fn a_passphrase_change_ends_every_session() {
    let server = Server::set_up(true);
    let mut a = server.logged_in().await;
    let mut other = server.logged_in().await;
    let csrf = a.get("/admin/passphrase").await.csrf();
    // Wrong current passphrase, mismatched new ones: each said beside its field, nothing changed.
    let r = a
        .form(
            "/admin/passphrase",
            &[
                ("csrf", &csrf),
                ("old", "not it at all"),
                ("new", "new passphrase!"),
                ("new2", "other passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Wrong passphrase.") && r.body.contains("the two passphrases differ"));
    assert_eq!(other.get("/admin/").await.status, 200);
    let r = a
        .form(
            "/admin/passphrase",
            &[
                ("csrf", &csrf),
                ("old", PASSPHRASE),
                ("new", "new passphrase!"),
                ("new2", "new passphrase!"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Every session has ended"));
    for b in [&mut a, &mut other] {
        assert_eq!(
            b.get("/admin/").await.header("location"),
            Some("/admin/login")
        );
    }
    let mut b = server.browser();
    assert_eq!(
        b.form("/admin/login", &[("passphrase", PASSPHRASE)])
            .await
            .status,
        401
    );
    assert_eq!(
        b.form("/admin/login", &[("passphrase", "new passphrase!")])
            .await
            .status,
        303
    );
    let stored = cairn_web::Settings::load(server.data.path())
        .unwrap()
        .unwrap();
    assert!(
        cairn_web::settings::verify_passphrase(&stored.passphrase_hash, "new passphrase!").unwrap()
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let server = Server::set_up(true);
    let mut b = server.browser();
    let mut replies = Vec::new();
    for path in [
        "/",
        "/admin/login",
        "/admin/",
        "/static/style.css",
        "/static/setup.js",
        "/api/health",
        "/nothing",
        "/setup",
    ] {
        replies.push((path, b.get(path).await));
    }
    replies.push((
        "POST /admin/login",
        b.form("/admin/login", &[("passphrase", "x")]).await,
    ));
    for (path, r) in &replies {
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
            "{path}"
        );
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        // Pages never stay in a cache (the spec asks it of /admin and /setup); assets may.
        let cache = if path.starts_with("/static/") {
            "max-age=3600"
        } else {
            "no-store"
        };
        assert_eq!(r.header("cache-control"), Some(cache), "{path}");
    }
    let css = &replies[3].1;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(replies[6].1.status, 404);
}

#[tokio::test]
async fn health_is_json_without_login() {
    let server = Server::set_up(true);
    let r = server.browser().get("/api/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({
            "health": "healthy",
            "services": [{"name": "node", "state": "ready"}, {"name": "web", "state": "ready"}]
        })
    );
    // Before setup too.
    let r = Server::unclaimed().browser().get("/api/health").await;
    assert_eq!(r.json()["health"], "setup-needed");
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let server = Server::set_up(true);
    let mut b = server.browser();
    let big = format!("passphrase={}", "x".repeat(17 * 1024));
    let r = b.form("/admin/login", &[("passphrase", &big)]).await;
    assert_eq!(r.status, 413);
    // Without a declared length (chunked) as well.
    let r = b
        .send(
            "POST",
            "/admin/login",
            &[
                ("transfer-encoding", "chunked"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            big.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413);
    // A form just under the bound is read.
    let fine = "x".repeat(15 * 1024);
    assert_eq!(
        b.form("/admin/login", &[("passphrase", &fine)])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_spoken_and_1_1_is_refused() {
    let server = Server::set_up(true);
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let mut b = common::Browser::new(
            server.addr,
            &server.fingerprint,
            common::tls_config(&server.fingerprint, versions),
        );
        assert_eq!(b.get("/").await.status, 200);
    }
    // A TLS 1.1 ClientHello, by hand (no modern client offers it): the answer is a
    // fatal alert (rustls says handshake_failure), no ServerHello.
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(&tls11_client_hello()).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.len() >= 7, "{answer:?}");
    assert_eq!(
        answer[0], 0x15,
        "an alert record, not a handshake: {answer:?}"
    );
    assert_eq!(answer[5], 2, "fatal: {answer:?}");
    assert!(
        [40, 70].contains(&answer[6]),
        "handshake_failure or protocol_version: {answer:?}"
    );
}

/// A ClientHello offering at most TLS 1.1 with its usual cipher suites.
fn tls11_client_hello() -> Vec<u8> {
    let suites: [u16; 6] = [0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035];
    let mut hello = vec![0x03, 0x02];
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]);
    let mut handshake = vec![1, 0];
    handshake.extend((hello.len() as u16).to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}
