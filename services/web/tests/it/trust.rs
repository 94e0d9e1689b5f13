//! The servers the owner trusts for the bundled services' deliveries, through the Social page:
//! setup certifies the device's key for its new name at once and puts that certificate in the
//! services' bundle; a server is looked at (its fingerprint and names shown), trusted only if
//! it shows the same certificate again, listed, and forgotten; every refusal is one line and
//! leaves the bundle as it was.

use crate::common;

use std::sync::Arc;

use crate::common::{set_up, Browser, Server};
use cairn_web::trust::{Address, BUNDLE_FILE};

/// The certificates (DER) in the services' bundle.
fn bundle(share: &std::path::Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(share.join(BUNDLE_FILE)).unwrap();
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

/// Another server on loopback with a certificate of its own for `name`; its address and
/// certificate. Each connection gets the certificate `current` holds then.
async fn other_server(current: Arc<std::sync::Mutex<rcgen::CertifiedKey>>) -> (String, Vec<u8>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let first = current.lock().unwrap().cert.der().to_vec();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (cert, key) = {
                let c = current.lock().unwrap();
                (c.cert.der().clone(), c.key_pair.serialize_der())
            };
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(cairn_web::tls::PROTOCOL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key).into(),
            )
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (format!("127.0.0.1:{port}"), first)
}

fn self_signed(name: &str) -> rcgen::CertifiedKey {
    rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap()
}

/// Posts `address` (and `fingerprint`) to a Social page action; the page that comes back.
async fn post(b: &mut Browser, action: &str, address: &str, fingerprint: &str) -> common::Reply {
    let csrf = b.get("/admin/social").await.csrf();
    b.form(
        &format!("/admin/social/{action}"),
        &[
            ("csrf", &csrf),
            ("address", address),
            ("fingerprint", fingerprint),
        ],
    )
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn the_owner_trusts_a_server_by_the_fingerprint_it_shows() {
    let (server, share) = Server::unclaimed_sharing();
    let myself = Address::parse(&format!("127.0.0.1:{}", server.addr.port())).unwrap();
    let before = cairn_web::trust::fetch(&myself).await.unwrap();
    assert_eq!(before.names, ["cairn.local"]);
    assert_eq!(bundle(&share), std::slice::from_ref(&before.der));

    // Setup names the plug: its certificate names it from the next connection on (same key),
    // the console is told the new fingerprint, and the bundle holds the new certificate.
    let (mut b, r) = set_up(&server).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let after = cairn_web::trust::fetch(&myself).await.unwrap();
    assert_eq!(after.names, ["cairn.local", "attic.local"]);
    assert_ne!(after.fingerprint, before.fingerprint);
    assert_eq!(bundle(&share), std::slice::from_ref(&after.der));
    assert!(
        server.device.called(&format!(
            "say https://127.0.0.1:{}/ (attic.local) certificate SHA-256 {}",
            server.addr.port(),
            after.fingerprint
        )),
        "{:?}",
        server.device.calls()
    );
    let page = b.get("/admin/social").await;
    assert!(page.body.contains(&after.fingerprint), "{}", page.body);

    // Another server: looked at, its fingerprint and names shown, nothing stored yet.
    let cert = Arc::new(std::sync::Mutex::new(self_signed("cellar.local")));
    let (cellar, der) = other_server(cert.clone()).await;
    let fp = cairn_web::tls::fingerprint(&der);
    let r = post(&mut b, "look", &cellar, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&fp) && r.body.contains("for cellar.local"),
        "{}",
        r.body
    );
    assert_eq!(bundle(&share).len(), 1);

    // Its certificate changes before the owner trusts it: refused, nothing stored.
    *cert.lock().unwrap() = self_signed("cellar.local");
    let r = post(&mut b, "trust", &cellar, &fp).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("now shows another certificate"),
        "{}",
        r.body
    );
    assert!(r.body.contains("nothing was stored"), "{}", r.body);
    assert_eq!(bundle(&share).len(), 1);

    // Looked at again and trusted: listed, and in the bundle.
    let now = cert.lock().unwrap().cert.der().to_vec();
    let fp = cairn_web::tls::fingerprint(&now);
    let r = post(&mut b, "trust", &cellar, &fp.to_lowercase()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&format!("{cellar} is trusted")),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!("data-address=\"{cellar}\"")),
        "{}",
        r.body
    );
    assert_eq!(bundle(&share), [after.der.clone(), now]);

    // Bad input: one line each, the bundle as it was.
    for (address, said) in [
        (
            "owner@cellar.local",
            "Server: &quot;owner@cellar.local&quot; is not a server's name",
        ),
        ("127.0.0.1:1", "127.0.0.1:1 (127.0.0.1): "),
        ("nowhere.invalid", "nowhere.invalid: no such server here"),
    ] {
        let r = post(&mut b, "look", address, "").await;
        assert_eq!(r.status, 400, "{address}: {}", r.body);
        assert!(r.body.contains(said), "{address}: {}", r.body);
    }
    let r = post(&mut b, "forget", "elsewhere.local", "").await;
    assert!(
        r.body.contains("elsewhere.local is not trusted"),
        "{}",
        r.body
    );
    assert_eq!(bundle(&share).len(), 2);

    // Forgotten: gone from the page and the bundle.
    let r = post(&mut b, "forget", &cellar, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&format!("{cellar} is no longer trusted")),
        "{}",
        r.body
    );
    assert!(!r.body.contains("data-address="), "{}", r.body);
    assert_eq!(bundle(&share), [after.der]);
}

/// Another plug's snac delivers with libcurl, which loads its whole CA bundle between this
/// server's ServerHello and its own Finished: a slow plug takes seconds there. Its request is
/// still answered (cut off at a 10 s bound, curl saw its TLS 1.3 handshake done, then error 55
/// on its first write, and the delivery waited minutes for snac's retry).
#[test]
fn a_client_slow_to_finish_its_handshake_is_still_answered() {
    use std::io::{Read, Write};
    // Longer than the 10 s that cut deliveries off, well within the server's bound (60 s).
    const PAUSE: std::time::Duration = std::time::Duration::from_secs(12);
    let server = Server::set_up(true);
    let name = rustls::pki_types::ServerName::try_from("plug.local").unwrap();
    let mut tls = rustls::ClientConnection::new(server.tls.clone(), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut tcp).unwrap();
    }
    // The server's whole flight read, the client's Finished ready: where curl loads its bundle.
    while !tls.wants_write() {
        assert!(tls.read_tls(&mut tcp).unwrap() > 0, "the server closed");
        tls.process_new_packets().unwrap();
    }
    std::thread::sleep(PAUSE);
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream
        .write_all(b"GET /admin/login HTTP/1.1\r\nHost: plug.local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before an answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
