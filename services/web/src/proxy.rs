//! The reverse proxy to a bundled service listening on loopback (Prosody's HTTP file sharing,
//! XEP-0363, at `/file_share/`; snac2's ActivityPub, WebFinger and Mastodon API paths), so it
//! is reached over Cairn's HTTPS with the device's certificate. Headers go through unchanged
//! but for the hop-by-hop ones (HTTP signatures need Host, Date, Digest and Signature as sent). The request body goes upstream as it arrives, bounded by a size limit; the
//! answer comes back through a bounded channel, a few frames in memory at a time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::files::Streamed;

/// Frames of an answer in memory at once (each at most what the upstream sends in one, a few
/// tens of KiB).
const FRAMES_IN_FLIGHT: usize = 4;
/// Longest the upstream may take to connect or to start its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest between two frames of a body, either way.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// A service behind the proxy.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// The paths routed to it: a prefix ending in `/` (`/file_share/`) takes everything
    /// below; another (`/owner`) takes itself and everything below it (`/owner/inbox`), not
    /// `/owners.html`.
    pub prefix: &'static str,
    /// Largest request body passed on; a bigger one is refused with 413 before it is read.
    pub body_bytes_max: u64,
}

impl Upstream {
    /// Whether `path` is this service's.
    pub fn routes(&self, path: &str) -> bool {
        if self.prefix.ends_with('/') {
            return path.starts_with(self.prefix);
        }
        path.strip_prefix(self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Hop-by-hop headers (RFC 9110, 7.6.1): they concern one connection and are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// Why a request is refused before anything goes upstream: (status, reason).
pub fn precheck(up: &Upstream, req: &Request<Incoming>) -> Option<(StatusCode, String)> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > up.body_bytes_max => Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {} bytes", up.body_bytes_max),
        )),
        _ => None,
    }
}

/// Passes `req` to `up` and streams its answer back.
pub async fn forward(up: &Upstream, req: Request<Incoming>) -> Result<Response<Streamed>> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let stream = tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::TcpStream::connect(up.addr))
        .await
        .map_err(|_| anyhow!("{} did not accept in {ANSWER_TIMEOUT:?}", up.addr))?
        .with_context(|| format!("{} is not answering", up.addr))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await; // ends with the exchange; its errors reach the sender
    });
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(path)
        .body(Limited::new(body, up.body_bytes_max as usize))?;
    *upstream.headers_mut() = end_to_end(&parts.headers);
    // HTTP/2 browsers name the host in the URI only; the service needs it in Host (its URLs,
    // and the signatures other servers check, name it).
    if !upstream.headers().contains_key(header::HOST) {
        if let Some(host) = parts.uri.authority().and_then(|a| a.as_str().parse().ok()) {
            upstream.headers_mut().insert(header::HOST, host);
        }
    }
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(upstream))
        .await
        .map_err(|_| anyhow!("no answer from {} in {ANSWER_TIMEOUT:?}", up.addr))??;
    let (parts, mut body) = answer.into_parts();
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(FRAME_TIMEOUT, body.frame()).await {
                Err(_) => Err(std::io::Error::other("the service stopped sending")),
                Ok(None) => break,
                Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => Ok(d),
                    Err(_) => continue, // trailers: not forwarded
                },
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                break;
            }
        }
    });
    let mut resp = Response::new(Streamed(rx));
    *resp.status_mut() = parts.status;
    *resp.headers_mut() = end_to_end(&parts.headers);
    Ok(resp)
}

/// Bytes as the first and only frame of a body (for errors).
pub fn body_of(text: &str) -> Streamed {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::from(text.to_string())));
    Streamed(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_takes_its_own_paths_only() {
        let up = |prefix| Upstream {
            addr: "127.0.0.1:1".parse().unwrap(),
            prefix,
            body_bytes_max: 1,
        };
        let owner = up("/owner");
        assert!(owner.routes("/owner") && owner.routes("/owner/inbox"));
        assert!(!owner.routes("/owners.html") && !owner.routes("/own"));
        let share = up("/file_share/");
        assert!(share.routes("/file_share/a/b") && !share.routes("/file_share"));
        let wf = up("/.well-known/webfinger");
        assert!(wf.routes("/.well-known/webfinger") && !wf.routes("/.well-known/webfingers"));
    }
}
