//! The owner's sessions and the login's rate limits. Sessions live in memory only (a restart of
//! the service logs everyone out), at most [`SESSIONS_MAX`], each with its own CSRF token; an
//! idle session ends after [`SESSION_IDLE`], any session after [`SESSION_LIFETIME`]. Login
//! attempts are limited per client address (an IPv6 client by its /64, which one home holds)
//! and for the whole device; a browser that logged in before ([`KnownBrowsers`]) is limited on
//! its own, so that whoever shares the owner's address cannot lock the owner out.
//!
//! Time is passed in, so the tables are tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The kernel's random source failing leaves nothing safe to do.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    hex::encode(bytes)
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// The logged-in browsers.
#[derive(Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// A new session; returns its id and CSRF token. The least recently used one makes room
    /// when the table is full.
    pub fn create(&mut self, now: Instant) -> (String, String) {
        self.expire(now);
        if self.by_id.len() >= SESSIONS_MAX {
            if let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
            {
                self.by_id.remove(&oldest);
            }
        }
        let (id, csrf) = (random_token(), random_token());
        self.by_id.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The session's CSRF token if `id` is a live session (and marks it used).
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<String> {
        self.expire(now);
        let s = self.by_id.get_mut(id)?;
        s.last_used = now;
        Some(s.csrf.clone())
    }

    /// Ends one session.
    pub fn end(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    /// Ends every session (the passphrase changed).
    pub fn end_all(&mut self) {
        self.by_id.clear();
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.by_id.retain(|_, s| {
            now.duration_since(s.last_used) < SESSION_IDLE
                && now.duration_since(s.created) < SESSION_LIFETIME
        });
    }
}

/// Who a login attempt counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// A browser that logged in before, by the id of its known-browser token.
    Known(String),
    /// Any other, by its address (an IPv6 one by its /64).
    Address(IpAddr),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        Client::Address(key(ip))
    }
}

/// Browsers that logged in: each is given a token (its id and the device's signature of it)
/// that its later logins present. Their failures then count against that token, not their
/// address: a NAT or a home's IPv6 /64 puts the owner and anyone else there at one address,
/// and five wrong guesses from any of them would otherwise lock the owner out too.
///
/// The signing key is the stored passphrase hash, a secret only the device holds: nothing more
/// to store, and a new passphrase forgets every known browser as it ends every session.
pub struct KnownBrowsers {
    key: ring::hmac::Key,
}

impl KnownBrowsers {
    /// Tokens signed with `secret` (the passphrase hash).
    pub fn new(secret: &str) -> KnownBrowsers {
        KnownBrowsers {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// A new browser's token: `ID.SIGNATURE`, hex.
    pub fn issue(&self) -> String {
        let id = &random_token()[..KNOWN_ID_CHARS];
        let tag = ring::hmac::sign(&self.key, &Self::message(id));
        format!("{id}.{}", hex::encode(tag.as_ref()))
    }

    /// The browser a token names, if the device signed it (with the current secret).
    pub fn check(&self, token: &str) -> Option<Client> {
        let (id, tag) = token.split_once('.')?;
        if id.len() != KNOWN_ID_CHARS {
            return None;
        }
        let tag = hex::decode(tag).ok()?;
        ring::hmac::verify(&self.key, &Self::message(id), &tag).ok()?;
        Some(Client::Known(id.to_string()))
    }

    /// What is signed: the id, marked as a known browser's (the key signs nothing else).
    fn message(id: &str) -> Vec<u8> {
        [b"cairn-web known browser ".as_slice(), id.as_bytes()].concat()
    }
}

/// Why a login attempt is not even tried.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// This address failed too often lately; it may try again after the duration.
    Client(Duration),
    /// This known browser failed too often lately.
    Browser(Duration),
    /// Too many attempts on the device lately, from anyone.
    Everyone(Duration),
}

impl Limited {
    /// What the person reads.
    pub fn message(&self) -> String {
        match self {
            Limited::Client(d) => format!(
                "too many wrong passphrases from your address: try again in {}",
                minutes(*d)
            ),
            Limited::Browser(d) => format!(
                "too many wrong passphrases from this browser: try again in {}",
                minutes(*d)
            ),
            Limited::Everyone(d) => format!(
                "too many login attempts on this device: try again in {}",
                minutes(*d)
            ),
        }
    }
}

fn minutes(d: Duration) -> String {
    match d.as_secs().div_ceil(60) {
        0 | 1 => "a minute".to_string(),
        m => format!("{m} minutes"),
    }
}

/// Recent login failures per client and attempts overall.
#[derive(Default)]
pub struct LoginLimiter {
    failures: HashMap<Client, VecDeque<Instant>>,
    attempts: VecDeque<Instant>,
}

impl LoginLimiter {
    /// Whether `client` may try now; if so, the attempt is counted.
    pub fn attempt(&mut self, client: impl Into<Client>, now: Instant) -> Result<(), Limited> {
        self.forget(now);
        let client = client.into();
        if let Some(f) = self.failures.get(&client) {
            if f.len() >= CLIENT_FAILURES_MAX {
                let wait = CLIENT_WINDOW - now.duration_since(f[0]);
                return Err(match client {
                    Client::Known(_) => Limited::Browser(wait),
                    Client::Address(_) => Limited::Client(wait),
                });
            }
        }
        if self.attempts.len() >= ATTEMPTS_MAX {
            return Err(Limited::Everyone(
                ATTEMPTS_WINDOW - now.duration_since(self.attempts[0]),
            ));
        }
        self.attempts.push_back(now);
        Ok(())
    }

    /// The attempt from `client` failed.
    pub fn failed(&mut self, client: impl Into<Client>, now: Instant) {
        self.forget(now);
        let k = client.into();
        if !self.failures.contains_key(&k) && self.failures.len() >= CLIENTS_MAX {
            // Full of clients: forget the one whose last failure is oldest.
            if let Some(oldest) = self
                .failures
                .iter()
                .min_by_key(|(_, f)| f.back().copied())
                .map(|(k, _)| k.clone())
            {
                self.failures.remove(&oldest);
            }
        }
        let f = self.failures.entry(k).or_default();
        f.push_back(now);
        while f.len() > CLIENT_FAILURES_MAX {
            f.pop_front();
        }
    }

    /// The attempt from `client` succeeded: its failures are forgiven.
    pub fn succeeded(&mut self, client: impl Into<Client>) {
        self.failures.remove(&client.into());
    }

    fn forget(&mut self, now: Instant) {
        while self
            .attempts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= ATTEMPTS_WINDOW)
        {
            self.attempts.pop_front();
        }
        self.failures.retain(|_, f| {
            while f
                .front()
                .is_some_and(|t| now.duration_since(*t) >= CLIENT_WINDOW)
            {
                f.pop_front();
            }
            !f.is_empty()
        });
    }
}

/// An IPv4 client by its address, an IPv6 client by its /64 (an IPv4-mapped one as IPv4).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Most live sessions.
pub const SESSIONS_MAX: usize = 32;
/// An unused session ends after this.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Any session ends after this.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed logins one client may have within [`CLIENT_WINDOW`] before it must wait.
pub const CLIENT_FAILURES_MAX: usize = 5;
/// How long a failed login counts against its client.
pub const CLIENT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Login attempts on the device within [`ATTEMPTS_WINDOW`].
pub const ATTEMPTS_MAX: usize = 30;
/// How long a login attempt counts against the device's [`ATTEMPTS_MAX`].
pub const ATTEMPTS_WINDOW: Duration = Duration::from_secs(60);
/// Hex digits of a known browser's id (64 random bits: ids are told apart, not guessed).
pub const KNOWN_ID_CHARS: usize = 16;
/// Most clients whose failures are remembered.
pub const CLIENTS_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (id, csrf) = s.create(t0);
        assert_eq!(id.len(), 64);
        assert_eq!(s.touch(&id, t0 + Duration::from_secs(60)), Some(csrf));
        assert_eq!(
            s.touch(&id, t0 + Duration::from_secs(60) + SESSION_IDLE),
            None
        );
        assert!(s.is_empty());

        let first = s.create(t0).0;
        for i in 0..SESSIONS_MAX {
            s.create(t0 + Duration::from_millis(1 + i as u64));
        }
        assert_eq!(s.len(), SESSIONS_MAX);
        assert_eq!(
            s.touch(&first, t0 + Duration::from_secs(1)),
            None,
            "oldest evicted"
        );
        s.end_all();
        assert!(s.is_empty());
    }

    #[test]
    fn sessions_end_after_their_lifetime_even_when_used() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (id, _) = s.create(t0);
        let mut t = t0;
        while t + Duration::from_secs(600) < t0 + SESSION_LIFETIME {
            t += Duration::from_secs(600);
            assert!(s.touch(&id, t).is_some());
        }
        assert!(s.touch(&id, t0 + SESSION_LIFETIME).is_none());
    }

    #[test]
    fn a_client_is_limited_after_five_failures_for_fifteen_minutes() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        let ip: IpAddr = "192.168.1.9".parse().unwrap();
        let other: IpAddr = "192.168.1.10".parse().unwrap();
        for i in 0..CLIENT_FAILURES_MAX {
            let t = t0 + Duration::from_secs(i as u64);
            assert_eq!(l.attempt(ip, t), Ok(()));
            l.failed(ip, t);
        }
        let limited = l.attempt(ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert!(matches!(limited, Limited::Client(_)));
        assert!(
            limited.message().contains("15 minutes"),
            "{}",
            limited.message()
        );
        assert_eq!(l.attempt(other, t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            l.attempt(ip, t0 + CLIENT_WINDOW + Duration::from_secs(1)),
            Ok(())
        );
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..CLIENT_FAILURES_MAX {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            l.attempt(ip, t0).unwrap();
            l.failed(ip, t0);
        }
        let fresh: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(l.attempt(fresh, t0).is_err());
        assert!(l
            .attempt("2001:db8:1:3::1".parse::<IpAddr>().unwrap(), t0)
            .is_ok());
    }

    #[test]
    fn the_device_takes_thirty_attempts_a_minute() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..ATTEMPTS_MAX {
            let ip = IpAddr::from([10, 0, (i / 200) as u8, (i % 200) as u8]);
            assert_eq!(l.attempt(ip, t0), Ok(()));
        }
        let e = l
            .attempt("10.9.9.9".parse::<IpAddr>().unwrap(), t0)
            .unwrap_err();
        assert!(matches!(e, Limited::Everyone(_)));
        assert!(e.message().contains("a minute"));
        assert!(l
            .attempt("10.9.9.9".parse::<IpAddr>().unwrap(), t0 + ATTEMPTS_WINDOW)
            .is_ok());
    }

    #[test]
    fn success_forgives_and_the_client_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        let ip: IpAddr = "192.168.1.9".parse().unwrap();
        for _ in 0..4 {
            l.failed(ip, t0);
        }
        l.succeeded(ip);
        for _ in 0..4 {
            l.failed(ip, t0);
        }
        assert!(l.attempt(ip, t0).is_ok());
        for i in 0..(CLIENTS_MAX as u32 + 10) {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.failures.len() <= CLIENTS_MAX);
    }

    #[test]
    fn a_known_browser_is_limited_apart_from_its_address() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        let known = KnownBrowsers::new("$argon2id$the stored hash");
        let token = known.issue();
        let owner = known.check(&token).expect("a token the device signed");
        let nat: IpAddr = "10.0.2.2".parse().unwrap();
        for _ in 0..CLIENT_FAILURES_MAX {
            l.attempt(nat, t0).unwrap();
            l.failed(nat, t0);
        }
        assert!(matches!(l.attempt(nat, t0), Err(Limited::Client(_))));
        // The owner's browser, behind the same address, still may try.
        assert_eq!(l.attempt(owner.clone(), t0), Ok(()));
        for _ in 0..CLIENT_FAILURES_MAX {
            l.failed(owner.clone(), t0);
        }
        let e = l.attempt(owner, t0).unwrap_err();
        assert!(matches!(e, Limited::Browser(_)));
        assert!(e.message().contains("from this browser"), "{}", e.message());
    }

    #[test]
    fn only_tokens_the_device_signed_with_the_current_secret_are_known() {
        let known = KnownBrowsers::new("$argon2id$the stored hash");
        let token = known.issue();
        let (id, tag) = token.split_once('.').unwrap();
        assert_eq!(id.len(), KNOWN_ID_CHARS);
        assert_eq!(known.check(&token), Some(Client::Known(id.to_string())));
        assert_ne!(known.issue(), token);
        // Another id with this signature, a made-up one, garbage: unknown.
        let forged = format!("{}.{tag}", "0".repeat(KNOWN_ID_CHARS));
        for t in [
            forged.as_str(),
            "",
            ".",
            "abc",
            &format!("{id}.zz"),
            &format!("{id}."),
        ] {
            assert_eq!(known.check(t), None, "{t:?}");
        }
        // A new passphrase: every earlier token is forgotten.
        assert_eq!(
            KnownBrowsers::new("$argon2id$another hash").check(&token),
            None
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert_ne!(random_token(), random_token());
    }
}
