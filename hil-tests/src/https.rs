//! A plain HTTPS client for driving the device's web UI without a browser (benches, and tests
//! that need no rendering): one kept-alive HTTP/1.1 connection that trusts the device only by
//! the certificate SHA-256 its console printed (as [`crate::browser`] does), a cookie jar, and
//! each response's time to first byte.
//!
//! The handshake happens in [`Connection::open`], so a request's times count the request and
//! its answer, never the handshake. Blocking and single-threaded on purpose: a bench measures
//! what the device does, not a client runtime's scheduling.

use anyhow::{bail, Context};
use rustls::{ClientConnection, StreamOwned};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Bodies up to this size go out with the head in one write.
const SMALL_BODY_BYTES: usize = 16 * 1024;

/// One kept-alive HTTPS connection to the device.
pub struct Connection {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// The `Host` header: `HOST:PORT`, what a browser sends for this URL.
    host: String,
    /// Bytes read past the end of the last response (none, as requests are not pipelined).
    rest: Vec<u8>,
}

/// One answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Each header line, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// From the request's first byte written to the answer's first byte read (decrypted).
    pub first_byte: Duration,
    /// From the request's first byte written to the answer's last byte read.
    pub complete: Duration,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Connection {
    /// Connects to `host:port` and finishes the TLS handshake, trusting exactly the certificate
    /// whose SHA-256 is `sha256_fingerprint` (`AA:BB:…` or plain hex).
    pub fn open(host: &str, port: u16, sha256_fingerprint: &str) -> anyhow::Result<Connection> {
        let (conn, sock) = crate::browser::pinned_handshake(host, port, sha256_fingerprint)?;
        let mut c = Connection {
            tls: StreamOwned::new(conn, sock),
            host: format!("{host}:{port}"),
            rest: Vec::new(),
        };
        c.set_timeout(REQUEST_TIMEOUT)?;
        Ok(c)
    }

    /// Bounds each read and write from now on (a long poll needs more than
    /// [`REQUEST_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.tls.sock.set_read_timeout(Some(timeout))?;
        self.tls.sock.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends a request and reads its whole answer. `headers` come after `Host`; a body gets its
    /// `Content-Length`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Response> {
        self.send(method, path, headers, body)
            .with_context(|| format!("sending {method} {path}"))?;
        let started = Instant::now();
        self.tls.flush()?;
        self.read_response(started)
            .with_context(|| format!("reading the answer to {method} {path}"))
    }

    /// Writes the request into the TLS session; the caller's flush puts it on the wire.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            anyhow::ensure!(
                !(k.contains(['\r', '\n']) || v.contains(['\r', '\n'])),
                "header {k:?} has a line break"
            );
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        // One write: the request goes out in one TLS record where it fits.
        let mut bytes = head.into_bytes();
        if body.len() <= SMALL_BODY_BYTES {
            bytes.extend_from_slice(body);
            self.tls.conn.writer().write_all(&bytes)?;
            return Ok(());
        }
        // A large body (an upload) goes through the stream, which sends as it goes: rustls
        // buffers only so much plaintext ahead of the socket.
        self.tls.write_all(&bytes)?;
        self.tls.write_all(body)?;
        Ok(())
    }

    fn read_response(&mut self, started: Instant) -> anyhow::Result<Response> {
        let mut buf = std::mem::take(&mut self.rest);
        let mut first_byte = None;
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(
                buf.len() <= HEAD_BYTES_MAX,
                "answer head over {HEAD_BYTES_MAX} bytes"
            );
            self.fill(&mut buf)?;
            first_byte.get_or_insert_with(|| started.elapsed());
        };
        let first_byte = first_byte.unwrap_or_default();
        let head = std::str::from_utf8(&buf[..head_end]).context("answer head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap_or((l, ""));
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if header("transfer-encoding").is_some() {
            bail!("chunked answers are not read here (the device's all carry a Content-Length)");
        }
        let length: usize = match header("content-length") {
            Some(v) => v.parse().with_context(|| format!("Content-Length {v:?}"))?,
            None => 0,
        };
        anyhow::ensure!(length <= BODY_BYTES_MAX, "answer body of {length} bytes");
        let mut body = buf.split_off(head_end);
        while body.len() < length {
            self.fill(&mut body)?;
        }
        self.rest = body.split_off(length);
        Ok(Response {
            status,
            headers,
            body,
            first_byte,
            complete: started.elapsed(),
        })
    }

    /// Reads what the connection has (at least one byte) onto `buf`.
    fn fill(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tls.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The cookies a browser would hold for the device (name → value; every cookie is sent on
/// every path, which is what the device's paths come to for one browser).
#[derive(Clone, Debug, Default)]
pub struct Cookies(BTreeMap<String, String>);

impl Cookies {
    /// Keeps the cookies `response` sets and forgets the ones it clears (`Max-Age=0` or an
    /// empty value).
    pub fn take(&mut self, response: &Response) {
        for (k, v) in &response.headers {
            if k != "set-cookie" {
                continue;
            }
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let cleared = value.trim().is_empty()
                || parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if cleared {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// One cookie's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The `Cookie` header's value.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The `value` of the first `<input name="NAME" … value="…">` in an HTML page (maud writes
/// attributes in the template's order, `name` before `value`).
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[at..tag_end];
    let v = tag.split_once("value=\"")?.1;
    Some(v[..v.find('"')?].to_string())
}

/// Encodes form fields as `application/x-www-form-urlencoded`.
pub fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Each read and write of a request's answer, unless [`Connection::set_timeout`] says else.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer head read.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest answer body read (the device's pages are tens of KiB).
pub const BODY_BYTES_MAX: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::fingerprint_of;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A TLS server on loopback answering each request of one kept-alive connection with a
    /// numbered body and a cookie; returns its port and certificate fingerprint.
    fn server() -> (u16, String) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = key.cert.der().clone();
        let fingerprint = fingerprint_of(&cert);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair.serialize_der())),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Arc::new(config);
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || {
                    sock.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = StreamOwned::new(conn, sock);
                    let mut buf = Vec::new();
                    for n in 1.. {
                        // Head, then a body of the length it declares.
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match tls.read(&mut chunk) {
                                Ok(k) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                                _ => return,
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + length {
                            let mut chunk = [0u8; 4096];
                            let k = tls.read(&mut chunk).unwrap();
                            buf.extend_from_slice(&chunk[..k]);
                        }
                        let cookie = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Cookie: "))
                            .unwrap_or("none")
                            .to_string();
                        let body = format!("request {n}, cookie {cookie}");
                        buf.drain(..end + length);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nSet-Cookie: n={n}; Secure; HttpOnly\r\n\
                             Set-Cookie: gone=; Max-Age=0\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        tls.write_all(answer.as_bytes()).unwrap();
                        tls.flush().unwrap();
                    }
                });
            }
        });
        (port, fingerprint)
    }

    #[test]
    fn requests_share_one_connection_and_cookies_come_back() {
        let (port, fp) = server();
        let mut c = Connection::open("127.0.0.1", port, &fp).unwrap();
        let mut jar = Cookies::default();
        let r = c.request("GET", "/", &[], b"").unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "request 1, cookie none")
        );
        assert!(r.first_byte <= r.complete);
        jar.take(&r);
        assert_eq!((jar.get("n"), jar.get("gone")), (Some("1"), None));
        let cookie = jar.header();
        let body = form(&[("a b", "c&d")]);
        let r = c
            .request("POST", "/x", &[("Cookie", &cookie)], body.as_bytes())
            .unwrap();
        // The same connection: the server counts a second request.
        assert_eq!(r.text(), "request 2, cookie n=1");
        assert_eq!(r.header("SET-COOKIE"), Some("n=2; Secure; HttpOnly"));
        assert_eq!(body, "a+b=c%26d");
    }

    #[test]
    fn another_certificate_is_refused_by_name() {
        let (port, _) = server();
        let other = ["AB"; 32].join(":");
        let e = format!(
            "{:#}",
            Connection::open("127.0.0.1", port, &other).err().unwrap()
        );
        assert!(e.contains(&format!("not the expected {other}")), "{e}");
    }

    #[test]
    fn a_form_field_is_found_by_name() {
        let html =
            r#"<form><input type="hidden" name="csrf" value="tok3n"><input name="x"></form>"#;
        assert_eq!(input_value(html, "csrf").as_deref(), Some("tok3n"));
        assert_eq!(input_value(html, "x"), None);
        assert_eq!(input_value(html, "y"), None);
    }
}
