//! The device's own name server, on 127.0.0.1:53, for its services that speak DNS themselves
//! (Prosody's resolver reads only the first `nameserver` of `/etc/resolv.conf`, never
//! `/etc/hosts` nor mDNS). It answers `NAME.local` (A) by asking the LAN by mDNS
//! ([`crate::mdns::resolve_v4`]), says a `.local` name has no other records (so a Jabber server
//! finds no SRV record and dials port 5269 at the A record), and passes every other question on
//! to the name servers the DHCP lease gave (the other `nameserver` lines).
//!
//! One question at a time, each bounded: the mDNS wait, the upstream wait, the message size.
//! Answers from the LAN are kept [`CACHE_TTL`] (at most [`CACHE_MAX`] names).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Largest DNS message read or relayed (queries are far smaller; EDNS answers may be bigger).
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// How long the LAN is asked for a name.
pub const MDNS_WAIT: Duration = Duration::from_secs(2);
/// How long one upstream name server is waited for.
pub const UPSTREAM_WAIT: Duration = Duration::from_secs(3);
/// Names from the LAN remembered at once…
pub const CACHE_MAX: usize = 32;
/// … and for how long (also the TTL of the answers).
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most upstream servers asked (musl reads three resolv.conf lines; loopback is one of them).
pub const UPSTREAMS_MAX: usize = 3;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower case, without the final dot.
    pub name: String,
    /// The record type asked for (1: A, 28: AAAA, 33: SRV).
    pub qtype: u16,
    /// Where the question ends in the query.
    end: usize,
}

/// Reads a standard query with one question (no name compression, as RFC 1035 questions are
/// sent).
pub fn parse_query(msg: &[u8]) -> Result<Question> {
    ensure!(msg.len() >= 12, "shorter than a DNS header");
    ensure!(msg[2] & 0xF8 == 0, "not a standard query");
    ensure!(
        u16::from_be_bytes([msg[4], msg[5]]) == 1,
        "not exactly one question"
    );
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *msg.get(at).context("the name runs past the message")? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        ensure!(len <= 63, "a label longer than 63 bytes (or a pointer)");
        let label = msg
            .get(at..at + len)
            .context("the name runs past the message")?;
        ensure!(
            label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'),
            "a label with other than letters, digits, '-' and '_'"
        );
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let name = labels.join(".");
    ensure!(name.len() <= 253, "a name longer than 253 bytes");
    let tail = msg.get(at..at + 4).context("no type and class")?;
    ensure!(
        u16::from_be_bytes([tail[2], tail[3]]) == CLASS_IN,
        "not class IN"
    );
    Ok(Question {
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        end: at + 4,
    })
}

/// The reply to `query` (whose question is `q`) with `rcode` and, if given, one A record.
fn reply(query: &[u8], q: &Question, rcode: u8, a: Option<Ipv4Addr>) -> Vec<u8> {
    let mut r = Vec::with_capacity(q.end + 16);
    r.extend_from_slice(&query[..2]);
    // Response, authoritative (these names are answered here), recursion desired as asked.
    r.push(0x84 | (query[2] & 0x01));
    r.push(rcode);
    r.extend_from_slice(&[0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..q.end]);
    if let Some(a) = a {
        // The question's name (a pointer to offset 12), A, IN, TTL, 4 bytes.
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        r.extend_from_slice(&(CACHE_TTL.as_secs() as u32).to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&a.octets());
    }
    r
}

/// A header-only error reply, or nothing for what is not even a header.
fn failure(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    (query.len() >= 12).then(|| {
        let mut r = vec![0; 12];
        r[..2].copy_from_slice(&query[..2]);
        r[2] = 0x80 | (query[2] & 0x79);
        r[3] = rcode;
        r
    })
}

/// `NAME.local` with one label before `.local`: a device on the LAN.
fn on_the_lan(name: &str) -> Option<&str> {
    name.strip_suffix(".local")
        .filter(|label| !label.is_empty() && !label.contains('.'))
}

/// The upstream name servers in a resolv.conf: every `nameserver` but this device's loopback,
/// at most [`UPSTREAMS_MAX`].
pub fn upstreams(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .take(UPSTREAMS_MAX)
        .collect()
}

/// Asks one upstream server, returns its reply to this query (same id), bounded.
fn ask_upstream(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(local)?;
    s.connect(server)?;
    s.send(query)?;
    let deadline = Instant::now() + UPSTREAM_WAIT;
    let mut buf = vec![0u8; MESSAGE_BYTES_MAX];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{server}: no answer in {UPSTREAM_WAIT:?}");
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                bail!("{server}: no answer in {UPSTREAM_WAIT:?}")
            }
            Err(e) => return Err(e).with_context(|| server.to_string()),
        };
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Answers questions: `.local` ones through `lan` (an mDNS lookup), the others upstream.
pub struct Resolver<L> {
    lan: L,
    cache: Vec<(String, Ipv4Addr, Instant)>,
}

impl<L: FnMut(&str) -> Result<Option<Ipv4Addr>>> Resolver<L> {
    /// `lan` asks the LAN for a `NAME.local`'s IPv4 address (`Ok(None)`: nobody answered).
    pub fn new(lan: L) -> Self {
        Resolver {
            lan,
            cache: Vec::new(),
        }
    }

    /// `NAME.local`'s address, from the cache or the LAN; lines say what the LAN answered.
    fn lookup(&mut self, name: &str) -> Option<Ipv4Addr> {
        self.cache.retain(|(_, _, at)| at.elapsed() < CACHE_TTL);
        if let Some((_, a, _)) = self.cache.iter().find(|(n, _, _)| n == name) {
            return Some(*a);
        }
        match (self.lan)(name) {
            Ok(Some(a)) => {
                if self.cache.len() == CACHE_MAX {
                    self.cache.remove(0);
                }
                self.cache.push((name.to_string(), a, Instant::now()));
                tracing::info!("{name} is at {a} (mDNS)");
                Some(a)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{name}: {e:#}");
                None
            }
        }
    }

    /// The reply to one query; `resolv_conf` is read for upstream servers when one is needed.
    /// Nothing for a message too broken to answer.
    pub fn answer(&mut self, query: &[u8], resolv_conf: &Path) -> Option<Vec<u8>> {
        let q = match parse_query(query) {
            Ok(q) => q,
            Err(_) => return failure(query, FORMERR),
        };
        if q.name == "local" || q.name.ends_with(".local") {
            return Some(match on_the_lan(&q.name) {
                Some(_) if q.qtype == TYPE_A => match self.lookup(&q.name) {
                    Some(a) => reply(query, &q, 0, Some(a)),
                    None => reply(query, &q, NXDOMAIN, None),
                },
                // Devices on the LAN are found by their A record alone: no SRV, no AAAA here.
                _ => reply(query, &q, 0, None),
            });
        }
        let servers = std::fs::read_to_string(resolv_conf)
            .map(|t| upstreams(&t))
            .unwrap_or_default();
        for server in servers {
            match ask_upstream((server, 53).into(), query) {
                Ok(r) => return Some(r),
                Err(e) => tracing::warn!("{}: {e:#}", q.name),
            }
        }
        failure(query, SERVFAIL)
    }
}

/// Serves on `socket` until it fails.
pub fn serve<L: FnMut(&str) -> Result<Option<Ipv4Addr>>>(
    socket: UdpSocket,
    mut resolver: Resolver<L>,
    resolv_conf: &Path,
) -> Result<()> {
    let mut buf = vec![0u8; MESSAGE_BYTES_MAX];
    loop {
        let (n, from) = socket.recv_from(&mut buf).context("receiving")?;
        if let Some(r) = resolver.answer(&buf[..n], resolv_conf) {
            // A client gone before its answer is its own affair.
            let _ = socket.send_to(&r, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 0, 0, 1]);
        let at = q.len() - 4;
        q[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
        q
    }

    fn rcode(r: &[u8]) -> u8 {
        r[3] & 0x0F
    }

    fn answers(r: &[u8]) -> u16 {
        u16::from_be_bytes([r[6], r[7]])
    }

    const NO_CONF: &str = "/nonexistent/resolv.conf";

    #[test]
    fn a_name_on_the_lan_is_asked_once_and_answered_as_an_a_record() {
        let mut asked = Vec::new();
        let mut r = Resolver::new(|n: &str| {
            asked.push(n.to_string());
            Ok((n == "attic.local").then(|| Ipv4Addr::new(169, 254, 3, 4)))
        });
        let q = query(0xBEEF, "Attic.local", TYPE_A);
        let a = r.answer(&q, Path::new(NO_CONF)).unwrap();
        assert_eq!(&a[..2], &[0xBE, 0xEF]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!((rcode(&a), answers(&a)), (0, 1));
        assert_eq!(&a[12..q.len()], &q[12..], "the question, echoed");
        assert_eq!(&a[a.len() - 4..], &[169, 254, 3, 4]);
        // Again: from the cache.
        r.answer(&q, Path::new(NO_CONF)).unwrap();
        let unknown = r
            .answer(&query(2, "cellar.local", TYPE_A), Path::new(NO_CONF))
            .unwrap();
        assert_eq!((rcode(&unknown), answers(&unknown)), (NXDOMAIN, 0));
        drop(r);
        assert_eq!(asked, ["attic.local", "cellar.local"]);
    }

    #[test]
    fn srv_and_aaaa_on_the_lan_are_empty_so_servers_dial_the_a_record() {
        let mut r = Resolver::new(|_: &str| -> Result<Option<Ipv4Addr>> {
            panic!("the LAN is asked for A records only")
        });
        for (name, t) in [("_xmpp-server._tcp.attic.local", 33), ("attic.local", 28)] {
            let a = r.answer(&query(7, name, t), Path::new(NO_CONF)).unwrap();
            assert_eq!((rcode(&a), answers(&a)), (0, 0), "{name}");
        }
    }

    #[test]
    fn other_names_go_upstream_and_without_one_fail_plainly() {
        let mut r = Resolver::new(|_: &str| Ok(None));
        let a = r
            .answer(&query(9, "example.org", TYPE_A), Path::new(NO_CONF))
            .unwrap();
        assert_eq!((rcode(&a), answers(&a)), (SERVFAIL, 0));
        assert_eq!(
            upstreams("# cairn\nnameserver 127.0.0.1\nnameserver 10.0.2.3 # router\nsearch x\nnameserver ::1\nnameserver fd00::1\n"),
            ["10.0.2.3".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]
        );
    }

    #[test]
    fn an_upstream_answer_to_this_query_is_relayed_as_it_came() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = upstream.local_addr().unwrap();
        let q = query(5, "example.org", TYPE_A);
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 512];
            let (n, from) = upstream.recv_from(&mut b).unwrap();
            let mut r = b[..n].to_vec();
            r[2] |= 0x80;
            // Another query's answer first: not taken for this one.
            let mut other = r.clone();
            other[1] ^= 0xFF;
            upstream.send_to(&other, from).unwrap();
            upstream.send_to(&r, from).unwrap();
            r
        });
        let got = ask_upstream(at, &q).unwrap();
        assert_eq!(got, t.join().unwrap());
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = ask_upstream(silent.local_addr().unwrap(), &q).unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }

    #[test]
    fn broken_queries_get_a_format_error_or_nothing() {
        let mut r = Resolver::new(|_: &str| Ok(None));
        assert_eq!(r.answer(&[1, 2, 3], Path::new(NO_CONF)), None);
        let mut q = query(3, "attic.local", TYPE_A);
        q[12] = 0xC0; // a pointer where a label must be
        let a = r.answer(&q, Path::new(NO_CONF)).unwrap();
        assert_eq!(rcode(&a), FORMERR);
        let mut q = query(4, "attic.local", TYPE_A);
        q.truncate(q.len() - 2);
        assert_eq!(rcode(&r.answer(&q, Path::new(NO_CONF)).unwrap()), FORMERR);
        assert!(parse_query(&query(1, &"a".repeat(64), TYPE_A)).is_err());
    }
}
