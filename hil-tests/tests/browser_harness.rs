//! The browser harness against a real HTTPS server with a self-signed certificate, as the
//! device serves its web UI: Debian's headless Chromium trusts it by the pinned key alone,
//! reads and clicks the page (its script an external file, as the UI's strict
//! Content-Security-Policy demands), keeps each browser's cookies to itself, refuses a key it
//! was not pinned to, and writes screenshots; a script's raw HTTPS request is pinned the same
//! way.

use cairn_hil::browser::{
    fingerprint_of, https_request, pin_from_fingerprint, Browser, Scope, SpkiPin, Viewport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A small HTTPS server on loopback with a fresh self-signed certificate for `localhost`; it
/// records the path of every request it answers.
struct Server {
    port: u16,
    cert: CertificateDer<'static>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = key.cert.der().clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair.serialize_der())),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let (config, r) = (config.clone(), r.clone());
                // One thread per connection: Chromium opens several, some left idle.
                std::thread::spawn(move || {
                    let _ = serve(sock, config, &r);
                });
            }
        });
        Server {
            port,
            cert,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers one request on one connection (`Connection: close`).
fn serve(
    sock: TcpStream,
    config: Arc<rustls::ServerConfig>,
    requests: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(buf.len() < REQUEST_BYTES_MAX, "request head too long");
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "closed before a request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    anyhow::ensure!(length <= REQUEST_BYTES_MAX, "request body too long");
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    requests.lock().unwrap().push(path.to_string());
    let (status, headers, content) = match (method, path) {
        ("GET", "/") => {
            let cookie = header("cookie").unwrap_or_else(|| "no cookie".to_string());
            (
                "200 OK",
                "Content-Type: text/html; charset=utf-8\r\n\
                 Content-Security-Policy: default-src 'self'\r\n"
                    .to_string(),
                PAGE.replace("{cookie}", &escape(&cookie)),
            )
        }
        ("GET", "/app.js") => (
            "200 OK",
            "Content-Type: text/javascript\r\n".to_string(),
            SCRIPT.to_string(),
        ),
        ("POST", "/login") => {
            let form = String::from_utf8_lossy(&body);
            let who = form.strip_prefix("who=").unwrap_or("");
            anyhow::ensure!(
                who.chars().all(|c| c.is_ascii_alphanumeric()),
                "a test name is alphanumeric"
            );
            (
                "303 See Other",
                format!(
                    "Location: /\r\nSet-Cookie: who={who}; Path=/; Secure; HttpOnly; SameSite=Strict\r\n"
                ),
                String::new(),
            )
        }
        _ => ("404 Not Found", String::new(), String::new()),
    };
    write!(
        tls,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{content}",
        content.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// No inline script: the server's policy would block it, as the device's does.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Cairn harness page</title><script src="/app.js" defer></script></head>
<body><h1>Cairn harness page</h1>
<p id="status">waiting</p><button id="press">Press</button>
<form method="post" action="/login"><input id="who" name="who"><button id="login">Log in</button></form>
<p id="cookie">{cookie}</p>
</body></html>
"#;

const SCRIPT: &str = "document.getElementById('press').addEventListener('click', () => {\n\
                      document.getElementById('status').textContent = 'pressed';\n});\n";

/// Width and height from a PNG's header, after checking its signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn a_pinned_browser_loads_reads_and_clicks_the_page_and_screenshots_it() {
    let server = Server::start();
    let fingerprint = fingerprint_of(&server.cert);
    let pin = pin_from_fingerprint("localhost", server.port, &fingerprint).unwrap();
    assert_eq!(pin, SpkiPin::of_certificate(&server.cert).unwrap());
    // The plain-hex form, in either case, names the same certificate.
    let plain = fingerprint.replace(':', "").to_lowercase();
    assert_eq!(
        pin_from_fingerprint("127.0.0.1", server.port, &plain).unwrap(),
        pin
    );

    let mut b = Browser::open(&pin, Viewport::PHONE).unwrap();
    b.goto(&server.url()).unwrap();
    assert_eq!(b.title().unwrap(), "Cairn harness page");
    assert_eq!(b.text_of("h1").unwrap(), "Cairn harness page");
    assert_eq!(b.text_of("#status").unwrap(), "waiting");
    b.click("#press").unwrap();
    let text = b
        .wait_for_text(Scope::Css("#status"), "pressed", WAIT)
        .unwrap();
    assert_eq!(text, "pressed");
    b.wait_for_text(Scope::Page, "Log in", WAIT).unwrap();
    assert!(server.requests().contains(&"/app.js".to_string()));
    assert_eq!(b.count("script").unwrap(), 1);
    assert_eq!(b.count("#nothing-here").unwrap(), 0);
    assert_eq!(b.alert_text().unwrap(), None);
    b.fill("#who", "ali").unwrap();
    b.type_keys("#who", "ce").unwrap();
    assert_eq!(b.value_of("#who").unwrap(), "alice");

    let path = b.screenshot("browser-harness-phone").unwrap();
    // The form's answer is the next page, read at once: no old page's text in between.
    b.click_to_next_page("#login", WAIT).unwrap();
    assert_eq!(b.text_of("#cookie").unwrap(), "who=alice");
    // WebDriver reads the HttpOnly cookie that the page's scripts cannot.
    assert_eq!(b.cookie("who").unwrap().as_deref(), Some("alice"));
    assert_eq!(b.cookie("nobody").unwrap(), None);
    assert!(path.ends_with("screens/browser-harness-phone.png"));
    assert_eq!(
        png_size(&std::fs::read(&path).unwrap()),
        (Viewport::PHONE.width, Viewport::PHONE.height)
    );
}

#[test]
fn a_wrong_fingerprint_is_refused_naming_both() {
    let server = Server::start();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong = fingerprint_of(other.cert.der());
    let err = pin_from_fingerprint("localhost", server.port, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(&fingerprint_of(&server.cert)), "{err}");
    assert!(server.requests().is_empty());

    let err = pin_from_fingerprint("localhost", server.port, "AA:BB")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a SHA-256 fingerprint"), "{err}");
}

#[test]
fn a_raw_request_is_pinned_and_reads_the_whole_answer() {
    let server = Server::start();
    let fingerprint = fingerprint_of(&server.cert);
    let r = https_request(
        "localhost",
        server.port,
        &fingerprint,
        "GET / HTTP/1.1\r\nCookie: who=carol",
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.body.contains("<p id=\"cookie\">who=carol</p>"),
        "{}",
        r.body
    );
    let r = https_request(
        "127.0.0.1",
        server.port,
        &fingerprint,
        "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded",
        "who=dave",
    )
    .unwrap();
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    assert!(r.header("set-cookie").unwrap().starts_with("who=dave;"));

    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong = fingerprint_of(other.cert.der());
    let requests = server.requests().len();
    let err = https_request("localhost", server.port, &wrong, "GET / HTTP/1.1", "")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&wrong) && err.contains(&fingerprint), "{err}");
    assert_eq!(server.requests().len(), requests, "nothing was sent");
}

#[test]
fn a_browser_pinned_to_another_key_cannot_load_the_page() {
    let server = Server::start();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pin = SpkiPin::of_certificate(other.cert.der()).unwrap();
    assert_ne!(pin, SpkiPin::of_certificate(&server.cert).unwrap());

    let mut b = Browser::open(&pin, Viewport::DESKTOP).unwrap();
    let err = format!("{:#}", b.goto(&server.url()).unwrap_err());
    assert!(err.contains("NET::ERR_CERT_AUTHORITY_INVALID"), "{err}");
    // What a person would see instead of the page.
    b.wait_for_text(Scope::Page, "Your connection is not private", WAIT)
        .unwrap();
    // Chromium stopped at the certificate: not one request reached the server.
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert!(b.text_of("#status").is_err());
}

#[test]
fn two_browsers_keep_their_own_cookies() {
    let server = Server::start();
    let pin =
        pin_from_fingerprint("localhost", server.port, &fingerprint_of(&server.cert)).unwrap();
    let mut alice = Browser::open(&pin, Viewport::DESKTOP).unwrap();
    let mut bob = Browser::open(&pin, Viewport::PHONE).unwrap();
    assert_ne!(alice.profile_dir(), bob.profile_dir());

    alice.goto(&server.url()).unwrap();
    assert_eq!(alice.text_of("#cookie").unwrap(), "no cookie");
    alice.fill("#who", "alice").unwrap();
    alice.click("#login").unwrap();
    alice
        .wait_for_text(Scope::Css("#cookie"), "who=alice", WAIT)
        .unwrap();

    bob.goto(&server.url()).unwrap();
    assert_eq!(bob.text_of("#cookie").unwrap(), "no cookie");
    bob.fill("#who", "bob").unwrap();
    bob.click("#login").unwrap();
    bob.wait_for_text(Scope::Css("#cookie"), "who=bob", WAIT)
        .unwrap();

    alice.goto(&server.url()).unwrap();
    assert_eq!(alice.text_of("#cookie").unwrap(), "who=alice");

    let path = alice.screenshot("browser-harness-desktop").unwrap();
    assert_eq!(
        png_size(&std::fs::read(&path).unwrap()),
        (Viewport::DESKTOP.width, Viewport::DESKTOP.height)
    );
}

/// A page's reaction on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);
/// The test server's reads and writes.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The test server's bound on a request's head and body, in bytes.
const REQUEST_BYTES_MAX: usize = 64 * 1024;
