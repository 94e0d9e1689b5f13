//! Networking at boot: `lo` comes up at once (the kernel gives it 127.0.0.1/8 and ::1), then the
//! board's Ethernet interface is configured by a small DHCPv4 client on a background thread, so
//! a slow or absent DHCP server never delays `cairn: ready`.
//!
//! The client (RFC 2131, the parts a plug on a home LAN needs): DISCOVER → OFFER → REQUEST → ACK
//! with a bounded number of attempts and a doubling wait; the lease is renewed from T1 with the
//! server that gave it, rebound with any server from T2, and given up when it expires. Without an
//! answer the device takes an IPv4 link-local address (169.254/16, RFC 3927, chosen from its MAC
//! address), so plugs cabled together without a router still find each other by mDNS, and asks
//! again every few minutes; a lease, when one comes, replaces it.
//!
//! Packets are encoded and parsed with `dhcproto`; they go through a UDP socket on port 68 bound
//! to the interface with `SO_BINDTODEVICE` and `SO_BROADCAST` (which works before the interface
//! has an address, the replies being broadcast at our request). Addresses and the default route
//! are set with the classic ioctls (`SIOCSIFADDR`, `SIOCSIFNETMASK`, `SIOCADDRT`); the name
//! servers go to `/etc/resolv.conf` (the initramfs root is a writable tmpfs-like rootfs, rebuilt
//! at every boot, which is where a lease belongs). The hostname was set in stage 1 and is sent
//! to the server (option 12) so the home router lists the plug by name.
//!
//! Memory: one thread with a 64 KiB stack, one 1500-byte receive buffer, one lease.

use crate::sys::log;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the lease's name servers are written.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Largest DHCP packet read: an Ethernet frame's payload. Longer datagrams are cut and then fail
/// to parse, which only drops them.
const PACKET_BYTES_MAX: usize = 1500;
/// How long each DISCOVER (and the REQUEST after its OFFER) waits for an answer: doubling, as
/// RFC 2131 asks, but starting at 2 s so a LAN's server is found within a few seconds, and
/// giving up after 30 s, when a link-local address takes over until a later round.
const ATTEMPT_WAITS_S: [u64; 4] = [2, 4, 8, 16];
/// After a round of attempts without an answer, the next round starts this much later.
const RETRY_PAUSE: Duration = Duration::from_secs(300);
/// Renewal and rebinding retry at half the time left, but not more often than this (RFC 2131
/// §4.4.5).
const RENEW_RETRY_MIN: Duration = Duration::from_secs(60);
/// Most name servers written to resolv.conf (musl's resolver reads three).
const NAME_SERVERS_MAX: usize = 3;
/// Shortest lease accepted as given; shorter ones are treated as this long, so a misconfigured
/// server cannot make the client spin.
const LEASE_S_MIN: u32 = 60;

/// An address lease, as the server's ACK gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub addr: Ipv4Addr,
    /// The subnet's prefix length (from the subnet mask option; classful if absent).
    pub prefix_len: u8,
    /// The default gateway, if the server named one.
    pub router: Option<Ipv4Addr>,
    /// Name servers, at most [`NAME_SERVERS_MAX`].
    pub dns: Vec<Ipv4Addr>,
    /// The DNS search domain, if given.
    pub domain: Option<String>,
    /// The server that granted the lease (renewals go to it).
    pub server: Ipv4Addr,
    /// Lease length.
    pub lease_s: u32,
    /// When to renew (T1), seconds after the ACK.
    pub t1_s: u32,
    /// When to rebind (T2), seconds after the ACK.
    pub t2_s: u32,
}

impl Lease {
    /// The subnet mask for `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }
}

/// A server's answer that concerns us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An OFFER of `addr` from `server`.
    Offer {
        /// The address offered.
        addr: Ipv4Addr,
        /// The offering server's identifier.
        server: Ipv4Addr,
    },
    /// An ACK: the lease is ours.
    Ack(Lease),
    /// A NAK: start over.
    Nak {
        /// Who refused.
        server: Ipv4Addr,
    },
}

/// What the client asks for: mask, router, name servers, domain, lease times.
const WANTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// How a REQUEST is sent (RFC 2131 §4.3.2): after an OFFER it names the server and address;
/// renewing and rebinding carry the address in `ciaddr` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Accepting `server`'s offer of `addr`.
    Selecting {
        /// The address offered.
        addr: Ipv4Addr,
        /// The offering server.
        server: Ipv4Addr,
    },
    /// Extending the lease on `addr` (unicast to its server, or broadcast when rebinding).
    Extending {
        /// Our current address.
        addr: Ipv4Addr,
    },
}

fn base(xid: u32, mac: &[u8; 6], hostname: &str, kind: MessageType) -> v4::Message {
    let mut m = v4::Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    // Client identifier: hardware type 1 (Ethernet) + MAC, as most clients send.
    let mut id = vec![1u8];
    id.extend_from_slice(mac);
    m.opts_mut().insert(DhcpOption::ClientIdentifier(id));
    if !hostname.is_empty() {
        m.opts_mut()
            .insert(DhcpOption::Hostname(hostname.to_string()));
    }
    m.opts_mut()
        .insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    m.opts_mut()
        .insert(DhcpOption::MaxMessageSize(PACKET_BYTES_MAX as u16));
    m
}

fn encode(m: &v4::Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(576);
    // Encoding a message built here cannot fail: every option is well-formed by construction.
    m.encode(&mut Encoder::new(&mut buf))
        .expect("DHCP message encodes");
    buf
}

/// A DISCOVER, asking for broadcast replies (we have no address to receive unicast on).
pub fn discover(xid: u32, mac: &[u8; 6], hostname: &str) -> Vec<u8> {
    let mut m = base(xid, mac, hostname, MessageType::Discover);
    m.set_flags(v4::Flags::default().set_broadcast());
    encode(&m)
}

/// A REQUEST of the given kind.
pub fn request(xid: u32, mac: &[u8; 6], hostname: &str, kind: RequestKind) -> Vec<u8> {
    let mut m = base(xid, mac, hostname, MessageType::Request);
    match kind {
        RequestKind::Selecting { addr, server } => {
            m.set_flags(v4::Flags::default().set_broadcast());
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        }
        RequestKind::Extending { addr } => {
            m.set_ciaddr(addr);
        }
    }
    encode(&m)
}

/// Where a DHCP message's options start: the fixed BOOTP header (236 bytes), then the magic
/// cookie (4).
const OPTIONS_OFFSET: usize = 240;
/// Rapid Commit (RFC 4039), an option that must be empty.
const OPTION_RAPID_COMMIT: u8 = 80;
/// The options whose dhcproto 0.14 decoder trusts a fixed length: (code, fewest bytes, most).
/// It only `debug_assert!`s those lengths, or computes `len - 1` / `len - 3` unchecked (a panic
/// in a debug build: a LAN neighbour's packet must never do that), and otherwise leaves bytes
/// unread, misreading every option after them.
const OPTION_LENGTHS: [(u8, u8, u8); 8] = [
    (OPTION_RAPID_COMMIT, 0, 0),
    (81, 3, u8::MAX),  // Client FQDN: flags, two rcodes, then the name
    (94, 3, 3),        // Client Network Interface
    (151, 1, u8::MAX), // Bulk Lease Query status code: the code, then the message
    (152, 4, 4),       // Bulk Lease Query base time
    (153, 4, 4),       // … start time of state
    (154, 4, 4),       // … query start time
    (155, 4, 4),       // … query end time
];

/// Refuses what dhcproto 0.14 does not: an option of [`OPTION_LENGTHS`] with a length its
/// decoder cannot take.
fn check_options(bytes: &[u8]) -> Result<(), String> {
    let mut at = OPTIONS_OFFSET;
    while let Some(&code) = bytes.get(at) {
        match code {
            0 => at += 1,
            255 => break,
            _ => {
                // A truncated option is dhcproto's to report.
                let Some(&len) = bytes.get(at + 1) else { break };
                if let Some(&(_, min, max)) = OPTION_LENGTHS.iter().find(|o| o.0 == code) {
                    if !(min..=max).contains(&len) {
                        return Err(format!(
                            "not DHCP: option {code} has length {len}, not {min}..={max}"
                        ));
                    }
                }
                at += 2 + usize::from(len);
            }
        }
    }
    Ok(())
}

/// Parses a datagram from port 67. `Ok(None)`: well-formed but not an answer to us (another
/// client's transaction, a request, a message type we do not use). `Err`: not a usable DHCP
/// reply, with the reason.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Result<Option<Reply>, String> {
    check_options(bytes)?;
    let m = v4::Message::decode(&mut Decoder::new(bytes)).map_err(|e| format!("not DHCP: {e}"))?;
    // hlen first: `chaddr()` slices by it and would panic on a hostile value above 16.
    if m.hlen() != 6
        || m.opcode() != v4::Opcode::BootReply
        || m.xid() != xid
        || m.chaddr().get(..6) != Some(mac)
    {
        return Ok(None);
    }
    let opts = m.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    match opts.msg_type() {
        Some(MessageType::Offer) => {
            let server = server.ok_or("OFFER without a server identifier")?;
            usable_addr(m.yiaddr())?;
            Ok(Some(Reply::Offer {
                addr: m.yiaddr(),
                server,
            }))
        }
        Some(MessageType::Ack) => {
            let addr = m.yiaddr();
            usable_addr(addr)?;
            let prefix_len = match opts.get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(mask)) => prefix_of(*mask)?,
                // RFC 2131 leaves it to the client: the address's class is the old rule.
                _ => match addr.octets()[0] {
                    0..=127 => 8,
                    128..=191 => 16,
                    _ => 24,
                },
            };
            let router = match opts.get(OptionCode::Router) {
                Some(DhcpOption::Router(r)) => r.first().copied().filter(|r| !r.is_unspecified()),
                _ => None,
            };
            let dns = match opts.get(OptionCode::DomainNameServer) {
                Some(DhcpOption::DomainNameServer(d)) => {
                    d.iter().copied().take(NAME_SERVERS_MAX).collect()
                }
                _ => Vec::new(),
            };
            let domain = match opts.get(OptionCode::DomainName) {
                Some(DhcpOption::DomainName(d)) if valid_domain(d) => Some(d.clone()),
                _ => None,
            };
            let lease_s = match opts.get(OptionCode::AddressLeaseTime) {
                Some(DhcpOption::AddressLeaseTime(s)) => (*s).max(LEASE_S_MIN),
                _ => return Err("ACK without a lease time".into()),
            };
            let t1_default = lease_s / 2;
            let t2_default = (u64::from(lease_s) * 7 / 8) as u32;
            let t2_s = match opts.get(OptionCode::Rebinding) {
                Some(DhcpOption::Rebinding(t)) if *t < lease_s => *t,
                _ => t2_default,
            };
            let t1_s = match opts.get(OptionCode::Renewal) {
                Some(DhcpOption::Renewal(t)) if *t <= t2_s => *t,
                _ => t1_default.min(t2_s),
            };
            Ok(Some(Reply::Ack(Lease {
                addr,
                prefix_len,
                router,
                dns,
                domain,
                // Renewals are unicast to the server; without an identifier, to the relay or
                // the packet's sender is unknown here, so to the router as the likeliest.
                server: server.or(router).unwrap_or(Ipv4Addr::BROADCAST),
                lease_s,
                t1_s,
                t2_s,
            })))
        }
        Some(MessageType::Nak) => Ok(Some(Reply::Nak {
            server: server.unwrap_or(Ipv4Addr::UNSPECIFIED),
        })),
        _ => Ok(None),
    }
}

fn usable_addr(addr: Ipv4Addr) -> Result<(), String> {
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("unusable address {addr} offered"));
    }
    Ok(())
}

/// The prefix length of a contiguous subnet mask.
fn prefix_of(mask: Ipv4Addr) -> Result<u8, String> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    if m.checked_shl(len).unwrap_or(0) != 0 || !(1..=30).contains(&len) {
        return Err(format!("subnet mask {mask} is not usable"));
    }
    Ok(len as u8)
}

/// A domain name safe to put on a resolv.conf line.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// resolv.conf for a lease: the device's own name server first (`cairn names`, which answers
/// `NAME.local` by mDNS and asks the lease's servers for the rest: Prosody reads only the first
/// line), then the lease's, three lines in all (musl's resolver reads three).
pub fn resolv_conf(lease: &Lease) -> String {
    let mut s = String::from("# Written by cairn init from the DHCP lease\n");
    if let Some(d) = &lease.domain {
        s.push_str(&format!("search {d}\n"));
    }
    s.push_str("nameserver 127.0.0.1\n");
    for ns in lease.dns.iter().take(NAME_SERVERS_MAX - 1) {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    s
}

/// What the client needs from the system; the device's is [`SysLink`], tests use a double.
pub trait Link {
    /// Sends a packet to port 67 of `to` (255.255.255.255 to broadcast).
    fn send(&mut self, to: Ipv4Addr, packet: &[u8]) -> io::Result<()>;
    /// Waits up to `timeout` for a datagram from port 67; `Ok(None)` on timeout.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
    /// Time since the client started (monotonic).
    fn now(&self) -> Duration;
    /// Sleeps.
    fn sleep(&mut self, d: Duration);
    /// Puts the lease on the interface: address, mask, default route, name servers. `old` is
    /// the lease it replaces, if any.
    fn apply(&mut self, lease: &Lease, old: Option<&Lease>) -> io::Result<()>;
    /// Takes the (expired) lease's address off the interface.
    fn remove(&mut self, lease: &Lease) -> io::Result<()>;
    /// Puts an IPv4 link-local address (/16, no router) on the interface.
    fn link_local(&mut self, addr: Ipv4Addr) -> io::Result<()>;
}

/// The IPv4 link-local address of a MAC address: 169.254.1.0–169.254.254.255 (RFC 3927 §2.1),
/// the same at every boot, spread by a hash so neighbours rarely collide.
pub fn link_local_addr(mac: &[u8; 6]) -> Ipv4Addr {
    // FNV-1a: small, and any bit of the MAC moves the result.
    let h = mac.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    Ipv4Addr::new(169, 254, 1 + (h % 254) as u8, (h >> 8) as u8)
}

/// The DHCP client of one interface.
pub struct Client<L: Link> {
    link: L,
    iface: String,
    mac: [u8; 6],
    hostname: String,
    xid: u32,
    /// Bad replies seen since the last good one; only the first of a run is logged.
    bad_logged: bool,
}

impl<L: Link> Client<L> {
    /// A client for `iface` (hardware address `mac`), announcing `hostname`; `xid_seed` starts
    /// the transaction ids (random on the device).
    pub fn new(link: L, iface: &str, mac: [u8; 6], hostname: &str, xid_seed: u32) -> Self {
        Client {
            link,
            iface: iface.to_string(),
            mac,
            hostname: hostname.to_string(),
            xid: xid_seed,
            bad_logged: false,
        }
    }

    /// The link (for tests to inspect).
    #[cfg(test)]
    pub fn link(&self) -> &L {
        &self.link
    }

    fn next_xid(&mut self) -> u32 {
        // Any change of id will do: ids only tell our transactions apart from others'.
        self.xid = self.xid.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.xid
    }

    /// Waits until `deadline` for a reply to `xid` that `want` accepts.
    fn wait_reply(
        &mut self,
        xid: u32,
        deadline: Duration,
        want: impl Fn(&Reply) -> bool,
    ) -> Option<Reply> {
        let mut buf = [0u8; PACKET_BYTES_MAX];
        loop {
            let now = self.link.now();
            if now >= deadline {
                return None;
            }
            let n = match self.link.recv(&mut buf, deadline - now) {
                Ok(Some(n)) => n,
                Ok(None) => return None,
                Err(e) => {
                    log!("net: {}: receiving: {e}", self.iface);
                    self.link.sleep(deadline.saturating_sub(self.link.now()));
                    return None;
                }
            };
            match parse_reply(&buf[..n], xid, &self.mac) {
                Ok(Some(r)) if want(&r) => {
                    self.bad_logged = false;
                    return Some(r);
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.bad_logged {
                        log!("net: {}: ignoring a bad DHCP reply: {e}", self.iface);
                        self.bad_logged = true;
                    }
                }
            }
        }
    }

    fn send(&mut self, to: Ipv4Addr, packet: &[u8]) -> bool {
        match self.link.send(to, packet) {
            Ok(()) => true,
            Err(e) => {
                log!("net: {}: sending to {to}: {e}", self.iface);
                false
            }
        }
    }

    /// DISCOVER → OFFER → REQUEST → ACK, up to [`ATTEMPT_WAITS_S`] attempts.
    pub fn acquire(&mut self) -> Option<Lease> {
        for wait_s in ATTEMPT_WAITS_S {
            let wait = Duration::from_secs(wait_s);
            let xid = self.next_xid();
            let deadline = self.link.now() + wait;
            if !self.send(
                Ipv4Addr::BROADCAST,
                &discover(xid, &self.mac, &self.hostname),
            ) {
                self.link.sleep(wait);
                continue;
            }
            let Some(Reply::Offer { addr, server }) =
                self.wait_reply(xid, deadline, |r| matches!(r, Reply::Offer { .. }))
            else {
                continue;
            };
            let req = request(
                xid,
                &self.mac,
                &self.hostname,
                RequestKind::Selecting { addr, server },
            );
            if !self.send(Ipv4Addr::BROADCAST, &req) {
                continue;
            }
            let deadline = self.link.now() + wait;
            match self.wait_reply(xid, deadline, |r| !matches!(r, Reply::Offer { .. })) {
                Some(Reply::Ack(lease)) => return Some(lease),
                Some(Reply::Nak { server }) => {
                    log!("net: {}: {server} refused the address {addr}", self.iface)
                }
                _ => {}
            }
        }
        None
    }

    /// Keeps `lease` (granted at `granted`) alive: renews from T1 with its server, rebinds from
    /// T2 with any, and returns when it expired or was refused, after taking it off the
    /// interface. `until` bounds the run (for tests; `Duration::MAX` on the device).
    fn keep(&mut self, mut lease: Lease, mut granted: Duration, until: Duration) {
        loop {
            let t1 = granted + Duration::from_secs(lease.t1_s.into());
            let t2 = granted + Duration::from_secs(lease.t2_s.into());
            let end = granted + Duration::from_secs(lease.lease_s.into());
            if !self.sleep_until(t1, until) {
                return;
            }
            let mut renewed = None;
            while renewed.is_none() {
                let now = self.link.now();
                if now >= end || now >= until {
                    break;
                }
                let rebinding = now >= t2;
                let limit = if rebinding { end } else { t2 };
                let wait = ((limit - now) / 2).max(RENEW_RETRY_MIN);
                let deadline = (now + wait).min(limit);
                let xid = self.next_xid();
                let to = if rebinding {
                    Ipv4Addr::BROADCAST
                } else {
                    lease.server
                };
                let req = request(
                    xid,
                    &self.mac,
                    &self.hostname,
                    RequestKind::Extending { addr: lease.addr },
                );
                if self.send(to, &req) {
                    match self.wait_reply(xid, deadline, |r| !matches!(r, Reply::Offer { .. })) {
                        Some(Reply::Ack(new)) => renewed = Some(new),
                        Some(Reply::Nak { server }) => {
                            log!(
                                "net: {}: {server} refused to extend the lease on {}",
                                self.iface,
                                lease.addr
                            );
                            break;
                        }
                        _ => {}
                    }
                }
                if renewed.is_none() {
                    self.sleep_until(deadline, until);
                }
            }
            match renewed {
                Some(new) => {
                    granted = self.link.now();
                    if new != lease {
                        if let Err(e) = self.link.apply(&new, Some(&lease)) {
                            log!("error: net: {}: {e}", self.iface);
                        }
                    }
                    log!(
                        "net: {} {}/{} lease renewed ({} s)",
                        self.iface,
                        new.addr,
                        new.prefix_len,
                        new.lease_s
                    );
                    lease = new;
                }
                None if self.link.now() >= until => return,
                None => {
                    log!(
                        "net: {}: lease on {} ended; asking for a new one",
                        self.iface,
                        lease.addr
                    );
                    if let Err(e) = self.link.remove(&lease) {
                        log!("error: net: {}: {e}", self.iface);
                    }
                    return;
                }
            }
        }
    }

    /// Sleeps until `t`; false if `until` comes first.
    fn sleep_until(&mut self, t: Duration, until: Duration) -> bool {
        let now = self.link.now();
        if t > now {
            self.link.sleep(t.min(until).saturating_sub(now));
        }
        self.link.now() < until
    }

    /// Acquires and keeps a lease, forever on the device; `until` ends it in tests.
    pub fn run(&mut self, until: Duration) {
        let mut failures = 0u32;
        while self.link.now() < until {
            match self.acquire() {
                Some(lease) => {
                    failures = 0;
                    // The lease's address replaces a link-local one (SIOCSIFADDR replaces).
                    let granted = self.link.now();
                    match self.link.apply(&lease, None) {
                        Ok(()) => log!("{}", describe(&self.iface, &lease)),
                        Err(e) => {
                            log!("error: net: {}: {e}", self.iface);
                            self.link.sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                    self.keep(lease, granted, until);
                }
                None => {
                    if failures == 0 {
                        let total: u64 = ATTEMPT_WAITS_S.iter().sum();
                        let addr = link_local_addr(&self.mac);
                        match self.link.link_local(addr) {
                            Ok(()) => log!(
                                "net: {} {addr}/16 link-local: no DHCP server answered in {total} s; asking again every {} s",
                                self.iface,
                                RETRY_PAUSE.as_secs()
                            ),
                            Err(e) => log!(
                                "error: net: {}: no DHCP server answered in {total} s, and link-local {addr}: {e}",
                                self.iface
                            ),
                        }
                    }
                    failures = failures.saturating_add(1);
                    let now = self.link.now();
                    self.sleep_until(now + RETRY_PAUSE, until);
                }
            }
        }
    }
}

/// The console line for a new lease.
pub fn describe(iface: &str, lease: &Lease) -> String {
    let via = lease
        .router
        .map_or_else(|| "no router".to_string(), |r| format!("via {r}"));
    format!(
        "net: {iface} {}/{} {via} (lease {} s)",
        lease.addr, lease.prefix_len, lease.lease_s
    )
}

/// Nice value of the DHCP thread.
const DHCP_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`DHCP_NICE`] (Linux: per thread).
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority(2) on our own thread id; no memory involved.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, DHCP_NICE) };
    if r != 0 {
        log!(
            "net: cannot lower the DHCP thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How long the board's Ethernet may take to appear: a USB NIC (the Raspberry Pi 3's, QEMU's
/// usb-net) enumerates seconds after /init starts.
const INTERFACE_WAIT: Duration = Duration::from_secs(30);

/// Brings `lo` up at once, and the board's Ethernet up and configured on a thread of its own.
pub fn start(network: &cairn_bsp::board::Network, hostname: &str) {
    match sys::set_up("lo", Duration::ZERO) {
        Ok(()) => {}
        Err(e) => log!("error: net: lo: {e}"),
    }
    let network = network.clone();
    let hostname = hostname.to_string();
    let spawned = super::helpers::spawn("dhcp", 64 * 1024, move || {
        // Below the boot's own work: on a one-core board the exchange (and bringing the
        // interface's queues up) otherwise takes the CPU from stage 1 and the services, while
        // `cairn: ready` does not wait for an address anyway. A few packets a day need no more.
        lower_priority();
        configure(&network, &hostname);
    });
    if let Err(e) = spawned {
        log!("error: net: DHCP thread: {e}");
    }
}

/// Waits for the interface, then brings it up and runs its DHCP client (for good).
fn configure(network: &cairn_bsp::board::Network, hostname: &str) {
    let iface = &network.interface;
    let class = Path::new("/sys/class/net").join(iface);
    // Its attributes, not only its name: the kernel links a new interface into the class
    // before it adds the attribute files (a late USB NIC was caught in between).
    if !super::wait_for(&class.join("address"), INTERFACE_WAIT) {
        log!(
            "net: no interface {iface} on this board after {} s: loopback only",
            INTERFACE_WAIT.as_secs()
        );
        return;
    }
    if !network.dhcp {
        match sys::set_up(iface, INTERFACE_WAIT) {
            Ok(()) => {
                log!("net: {iface} up without DHCP (the board says so): IPv6 link-local only")
            }
            Err(e) => log!("error: net: {iface}: {e}"),
        }
        return;
    }
    let mac = match std::fs::read_to_string(class.join("address"))
        .map_err(|e| e.to_string())
        .and_then(|t| parse_mac(t.trim()))
    {
        Ok(m) => m,
        Err(e) => {
            log!("error: net: {iface}: hardware address: {e}");
            return;
        }
    };
    if let Err(e) = sys::set_up(iface, INTERFACE_WAIT) {
        log!("error: net: {iface}: {e}");
        return;
    }
    let link = match sys::SysLink::open(iface, PathBuf::from(RESOLV_CONF)) {
        Ok(l) => l,
        Err(e) => {
            log!("error: net: {iface}: {e}");
            return;
        }
    };
    Client::new(link, iface, mac, hostname, sys::random_u32(&mac)).run(Duration::MAX);
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("'{s}' is not a MAC address"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("'{s}' is not a MAC address"))?;
    }
    Ok(mac)
}

/// The device's side: sockets and ioctls.
mod sys {
    use super::{resolv_conf, Lease};
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::ffi::OsString;
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// A fresh AF_INET datagram socket: the DHCP socket, and the handle the interface ioctls go
    /// through.
    fn udp_socket() -> io::Result<OwnedFd> {
        Ok(socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?)
    }

    fn ifreq(name: &str) -> io::Result<libc::ifreq> {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= r.ifr_name.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name '{name}'"),
            ));
        }
        for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }

    fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the ioctls
        // take an IPv4 address.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }

    fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        ioctl_raw(fd, req, arg).map_err(|e| context(e, what))
    }

    /// The ioctl, its failure the bare OS error (for the callers that look at the errno).
    fn ioctl_raw<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is the structure `req` expects (ifreq or rtentry), valid for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn context(e: io::Error, what: &str) -> io::Error {
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }

    /// Sets IFF_UP on `name`. A USB adapter's interface (the Pi 3's LAN9514, QEMU's usb-net)
    /// is in sysfs a moment before the kernel finds it by name, and a moment more before its
    /// driver marks it present; until then either ioctl answers ENODEV, which is retried for up
    /// to `present_wait`.
    pub fn set_up(name: &str, present_wait: Duration) -> io::Result<()> {
        let fd = udp_socket()?;
        let deadline = Instant::now() + present_wait;
        loop {
            let mut r = ifreq(name)?;
            let done = ioctl_raw(&fd, libc::SIOCGIFFLAGS, &mut r)
                .map_err(|e| (e, "SIOCGIFFLAGS"))
                .and_then(|()| {
                    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
                    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
                    ioctl_raw(&fd, libc::SIOCSIFFLAGS, &mut r).map_err(|e| (e, "SIOCSIFFLAGS"))
                });
            match done {
                Err((e, _))
                    if e.raw_os_error() == Some(libc::ENODEV) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r.map_err(|(e, what)| context(e, what)),
            }
        }
    }

    fn set_addr(fd: &OwnedFd, name: &str, addr: Ipv4Addr) -> io::Result<()> {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_addr = sockaddr(addr);
        ioctl(fd, libc::SIOCSIFADDR, &mut r, "SIOCSIFADDR")
    }

    fn set_netmask(fd: &OwnedFd, name: &str, mask: Ipv4Addr) -> io::Result<()> {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_netmask = sockaddr(mask);
        ioctl(fd, libc::SIOCSIFNETMASK, &mut r, "SIOCSIFNETMASK")
    }

    fn add_default_route(fd: &OwnedFd, name: &str, gw: Ipv4Addr) -> io::Result<()> {
        let mut dev: Vec<u8> = name.bytes().chain([0]).collect();
        // SAFETY: rtentry is plain old data; all zeroes is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = dev.as_mut_ptr() as *mut libc::c_char;
        match ioctl(fd, libc::SIOCADDRT, &mut rt, "SIOCADDRT") {
            // Already there (a renewal that kept the router).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// The DHCP socket and the interface it configures.
    pub struct SysLink {
        sock: UdpSocket,
        ctl: OwnedFd,
        iface: String,
        resolv: PathBuf,
        start: Instant,
    }

    impl SysLink {
        /// Binds 0.0.0.0:68 on `iface` (SO_BINDTODEVICE), broadcast allowed.
        pub fn open(iface: &str, resolv: PathBuf) -> io::Result<SysLink> {
            let fd = udp_socket()?;
            // A failure names the step, as the console line shows it.
            let named = |r: nix::Result<()>, what: &str| {
                r.map_err(|e| {
                    let e = io::Error::from(e);
                    io::Error::new(e.kind(), format!("{what}: {e}"))
                })
            };
            named(setsockopt(&fd, sockopt::ReuseAddr, &true), "SO_REUSEADDR")?;
            named(setsockopt(&fd, sockopt::Broadcast, &true), "SO_BROADCAST")?;
            named(
                setsockopt(&fd, sockopt::BindToDevice, &OsString::from(iface)),
                "SO_BINDTODEVICE",
            )?;
            let port68 = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
            named(bind(fd.as_raw_fd(), &port68), "binding UDP port 68")?;
            let sock = UdpSocket::from(fd);
            Ok(SysLink {
                sock,
                ctl: udp_socket()?,
                iface: iface.to_string(),
                resolv,
                start: Instant::now(),
            })
        }
    }

    impl super::Link for SysLink {
        fn send(&mut self, to: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
            self.sock
                .send_to(packet, SocketAddrV4::new(to, 67))
                .map(|_| ())
        }

        fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                self.sock.set_read_timeout(Some(left))?;
                match self.sock.recv_from(buf) {
                    Ok((n, from)) if from.port() == 67 => return Ok(Some(n)),
                    // Not from a server's port: not for us.
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut =>
                    {
                        return Ok(None)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }

        fn now(&self) -> Duration {
            self.start.elapsed()
        }

        fn sleep(&mut self, d: Duration) {
            std::thread::sleep(d);
        }

        fn apply(&mut self, lease: &Lease, old: Option<&Lease>) -> io::Result<()> {
            if let Some(old) = old.filter(|o| o.addr != lease.addr) {
                self.remove(old)?;
            }
            set_addr(&self.ctl, &self.iface, lease.addr)?;
            set_netmask(&self.ctl, &self.iface, lease.netmask())?;
            if let Some(gw) = lease.router {
                add_default_route(&self.ctl, &self.iface, gw)?;
            }
            cairn_durable::write(&self.resolv, resolv_conf(lease).as_bytes())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.resolv.display())))
        }

        fn remove(&mut self, _lease: &Lease) -> io::Result<()> {
            // Setting 0.0.0.0 deletes the interface's address; its routes go with it.
            set_addr(&self.ctl, &self.iface, Ipv4Addr::UNSPECIFIED)
        }

        fn link_local(&mut self, addr: Ipv4Addr) -> io::Result<()> {
            set_addr(&self.ctl, &self.iface, addr)?;
            set_netmask(&self.ctl, &self.iface, Ipv4Addr::new(255, 255, 0, 0))
        }
    }

    /// A random transaction id seed (getrandom(2), never blocking; the MAC and the clock if the
    /// kernel's pool is not ready yet — ids need only differ, not be secret).
    pub fn random_u32(mac: &[u8; 6]) -> u32 {
        let mut b = [0u8; 4];
        // SAFETY: b is 4 writable bytes.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, libc::GRND_NONBLOCK) };
        if n == 4 {
            return u32::from_ne_bytes(b);
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// What a test's DHCP server does with one client message: replies, each after a delay.
    type Server = Box<dyn FnMut(Duration, Ipv4Addr, &v4::Message) -> Vec<(Duration, Vec<u8>)>>;

    /// A simulated LAN and clock: `recv` and `sleep` advance time instead of waiting.
    struct FakeLink {
        now: Duration,
        sent: Vec<(Duration, Ipv4Addr, v4::Message)>,
        inbox: VecDeque<(Duration, Vec<u8>)>,
        server: Server,
        applied: Vec<(Duration, Lease)>,
        removed: Vec<(Duration, Ipv4Addr)>,
        link_local: Vec<(Duration, Ipv4Addr)>,
    }

    impl FakeLink {
        fn new(server: Server) -> FakeLink {
            FakeLink {
                now: Duration::ZERO,
                sent: Vec::new(),
                inbox: VecDeque::new(),
                server,
                applied: Vec::new(),
                removed: Vec::new(),
                link_local: Vec::new(),
            }
        }

        fn sent_of(&self, kind: MessageType) -> Vec<(Duration, Ipv4Addr, &v4::Message)> {
            self.sent
                .iter()
                .filter(|(_, _, m)| m.opts().msg_type() == Some(kind))
                .map(|(t, to, m)| (*t, *to, m))
                .collect()
        }
    }

    impl Link for FakeLink {
        fn send(&mut self, to: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
            let m = v4::Message::decode(&mut Decoder::new(packet)).expect("client sends DHCP");
            for (delay, reply) in (self.server)(self.now, to, &m) {
                self.inbox.push_back((self.now + delay, reply));
            }
            self.sent.push((self.now, to, m));
            Ok(())
        }

        fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
            match self.inbox.front() {
                Some((at, _)) if *at <= self.now + timeout => {
                    let (at, p) = self.inbox.pop_front().unwrap();
                    self.now = self.now.max(at);
                    let n = p.len().min(buf.len());
                    buf[..n].copy_from_slice(&p[..n]);
                    Ok(Some(n))
                }
                _ => {
                    self.now += timeout;
                    Ok(None)
                }
            }
        }

        fn now(&self) -> Duration {
            self.now
        }

        fn sleep(&mut self, d: Duration) {
            self.now = self.now.saturating_add(d);
        }

        fn apply(&mut self, lease: &Lease, _old: Option<&Lease>) -> io::Result<()> {
            self.applied.push((self.now, lease.clone()));
            Ok(())
        }

        fn remove(&mut self, lease: &Lease) -> io::Result<()> {
            self.removed.push((self.now, lease.addr));
            Ok(())
        }

        fn link_local(&mut self, addr: Ipv4Addr) -> io::Result<()> {
            self.link_local.push((self.now, addr));
            Ok(())
        }
    }

    /// A server's reply to `to` of type `kind`, with QEMU's user-mode network's options.
    fn reply(to: &v4::Message, kind: MessageType, lease_s: u32) -> Vec<u8> {
        let mut m = v4::Message::new_with_id(
            to.xid(),
            Ipv4Addr::UNSPECIFIED,
            ADDR,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &to.chaddr()[..6],
        );
        m.set_opcode(v4::Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
            o.insert(DhcpOption::AddressLeaseTime(lease_s));
        }
        encode(&m)
    }

    /// A server that answers every DISCOVER and REQUEST at once, leasing for `lease_s`, as
    /// long as `up(now)`.
    fn server(lease_s: u32, up: impl Fn(Duration) -> bool + 'static) -> Server {
        Box::new(move |now, _to, m| {
            if !up(now) {
                return Vec::new();
            }
            let kind = match m.opts().msg_type() {
                Some(MessageType::Discover) => MessageType::Offer,
                Some(MessageType::Request) => MessageType::Ack,
                _ => return Vec::new(),
            };
            vec![(Duration::from_millis(3), reply(m, kind, lease_s))]
        })
    }

    fn client(link: FakeLink) -> Client<FakeLink> {
        Client::new(link, "eth0", MAC, "cairn", 7)
    }

    fn decode(p: &[u8]) -> v4::Message {
        v4::Message::decode(&mut Decoder::new(p)).unwrap()
    }

    #[test]
    fn discover_asks_for_broadcast_replies_and_names_the_plug() {
        let m = decode(&discover(42, &MAC, "cairn"));
        assert_eq!(m.xid(), 42);
        assert_eq!(m.opcode(), v4::Opcode::BootRequest);
        assert!(m.flags().broadcast());
        assert_eq!(&m.chaddr()[..6], &MAC);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            m.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("cairn".into()))
        );
        match m.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => {
                for c in [
                    OptionCode::SubnetMask,
                    OptionCode::Router,
                    OptionCode::DomainNameServer,
                ] {
                    assert!(l.contains(&c), "{c:?} not asked for");
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_name_the_offer_when_selecting_and_carry_the_address_when_extending() {
        let sel = decode(&request(
            1,
            &MAC,
            "cairn",
            RequestKind::Selecting {
                addr: ADDR,
                server: SERVER,
            },
        ));
        assert_eq!(sel.opts().msg_type(), Some(MessageType::Request));
        assert!(sel.flags().broadcast());
        assert_eq!(sel.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            sel.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(
            sel.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        let ext = decode(&request(
            2,
            &MAC,
            "cairn",
            RequestKind::Extending { addr: ADDR },
        ));
        assert_eq!(ext.ciaddr(), ADDR);
        assert!(!ext.flags().broadcast());
        // RFC 2131 §4.3.2: renewing and rebinding MUST NOT name the server or the address.
        assert!(ext.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(ext.opts().get(OptionCode::RequestedIpAddress).is_none());
    }

    #[test]
    fn an_ack_gives_the_lease_and_the_console_line() {
        let req = decode(&discover(9, &MAC, "cairn"));
        let mut ack = decode(&reply(&req, MessageType::Ack, 86400));
        ack.opts_mut().insert(DhcpOption::DomainNameServer(vec![
            Ipv4Addr::new(10, 0, 2, 3),
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(9, 9, 9, 9),
        ]));
        ack.opts_mut()
            .insert(DhcpOption::DomainName("home.arpa".into()));
        let Some(Reply::Ack(lease)) = parse_reply(&encode(&ack), 9, &MAC).unwrap() else {
            panic!("not an ACK");
        };
        assert_eq!(lease.addr, ADDR);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.dns.len(), NAME_SERVERS_MAX, "name servers are capped");
        // Without T1/T2 options: half the lease and seven eighths (RFC 2131 §4.4.5).
        assert_eq!(
            (lease.lease_s, lease.t1_s, lease.t2_s),
            (86400, 43200, 75600)
        );
        assert_eq!(
            describe("eth0", &lease),
            "net: eth0 10.0.2.15/24 via 10.0.2.2 (lease 86400 s)"
        );
        assert_eq!(
            resolv_conf(&lease),
            "# Written by cairn init from the DHCP lease\nsearch home.arpa\n\
             nameserver 127.0.0.1\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn replies_to_others_are_not_ours_and_bad_ones_say_why() {
        let req = decode(&discover(9, &MAC, "cairn"));
        let offer = reply(&req, MessageType::Offer, 600);
        assert!(parse_reply(&offer, 9, &MAC).unwrap().is_some());
        assert_eq!(parse_reply(&offer, 10, &MAC).unwrap(), None, "other xid");
        let other_mac = [2, 0, 0, 0, 0, 1];
        assert_eq!(parse_reply(&offer, 9, &other_mac).unwrap(), None);
        // Our own (or another client's) request seen on the wire is not a reply.
        assert_eq!(parse_reply(&encode(&req), 9, &MAC).unwrap(), None);

        let e = parse_reply(b"\x02\x01garbage", 9, &MAC).unwrap_err();
        assert!(e.starts_with("not DHCP"), "{e}");
        let mut no_lease = decode(&reply(&req, MessageType::Ack, 600));
        no_lease.opts_mut().remove(OptionCode::AddressLeaseTime);
        assert_eq!(
            parse_reply(&encode(&no_lease), 9, &MAC).unwrap_err(),
            "ACK without a lease time"
        );
        let mut holes = decode(&reply(&req, MessageType::Ack, 600));
        holes
            .opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        assert_eq!(
            parse_reply(&encode(&holes), 9, &MAC).unwrap_err(),
            "subnet mask 255.0.255.0 is not usable"
        );
        let mut zero = decode(&offer);
        zero.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            parse_reply(&encode(&zero), 9, &MAC).unwrap_err(),
            "unusable address 0.0.0.0 offered"
        );
        let mut evil = decode(&reply(&req, MessageType::Ack, 600));
        evil.opts_mut()
            .insert(DhcpOption::DomainName("x\nnameserver 6.6.6.6".into()));
        let Some(Reply::Ack(l)) = parse_reply(&encode(&evil), 9, &MAC).unwrap() else {
            panic!()
        };
        assert_eq!(l.domain, None, "a domain that would add resolv.conf lines");
        // A tiny lease is stretched so the client cannot spin.
        let short = reply(&req, MessageType::Ack, 1);
        let Some(Reply::Ack(l)) = parse_reply(&short, 9, &MAC).unwrap() else {
            panic!()
        };
        assert_eq!(l.lease_s, LEASE_S_MIN);
    }

    #[test]
    fn a_rapid_commit_option_with_a_length_is_refused_not_misread() {
        let good = reply(&decode(&discover(9, &MAC, "")), MessageType::Ack, 600);
        assert!(parse_reply(&good, 9, &MAC).unwrap().is_some());
        // Option 80 with one byte of payload, right after the cookie: what a debug build of
        // dhcproto panics on.
        let mut bad = good[..OPTIONS_OFFSET].to_vec();
        bad.extend_from_slice(&[OPTION_RAPID_COMMIT, 1, 0xff]);
        bad.extend_from_slice(&good[OPTIONS_OFFSET..]);
        let e = parse_reply(&bad, 9, &MAC).unwrap_err();
        assert!(e.contains("option 80 has length 1, not 0..=0"), "{e}");
        // Empty, as RFC 4039 has it: fine.
        let mut ok = good[..OPTIONS_OFFSET].to_vec();
        ok.extend_from_slice(&[OPTION_RAPID_COMMIT, 0]);
        ok.extend_from_slice(&good[OPTIONS_OFFSET..]);
        assert!(parse_reply(&ok, 9, &MAC).unwrap().is_some());
    }

    #[test]
    fn seeded_random_bytes_never_panic_the_parser() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let good = reply(&decode(&discover(9, &MAC, "")), MessageType::Ack, 600);
        for round in 0..20_000 {
            let mut p = good.clone();
            for _ in 0..1 + round % 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % p.len();
                p[i] = (x >> 32) as u8;
            }
            p.truncate(p.len() - (x as usize >> 40) % 40);
            let _ = parse_reply(&p, 9, &MAC);
        }
    }

    #[test]
    fn the_client_gets_a_lease_in_one_exchange() {
        let mut c = client(FakeLink::new(server(86400, |_| true)));
        c.run(Duration::from_secs(10));
        let l = c.link();
        assert_eq!(l.applied.len(), 1);
        let (at, lease) = &l.applied[0];
        assert!(*at < Duration::from_millis(10), "{at:?}");
        assert_eq!(lease.addr, ADDR);
        assert_eq!(l.sent_of(MessageType::Discover).len(), 1);
        let req = l.sent_of(MessageType::Request);
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].1, Ipv4Addr::BROADCAST);
        assert!(l.removed.is_empty());
    }

    #[test]
    fn without_a_server_the_client_retries_with_backoff_then_pauses() {
        let mut c = client(FakeLink::new(server(600, |_| false)));
        c.run(Duration::from_secs(400));
        let l = c.link();
        assert!(l.applied.is_empty());
        let times: Vec<u64> = l
            .sent_of(MessageType::Discover)
            .iter()
            .map(|(t, to, _)| {
                assert_eq!(*to, Ipv4Addr::BROADCAST);
                t.as_secs()
            })
            .collect();
        // 2, 4, 8, 16 s of waiting; then a pause of RETRY_PAUSE before the next round.
        assert_eq!(times, vec![0, 2, 6, 14, 330, 332, 336, 344]);
        // After the first round, once: a link-local address.
        let ll = link_local_addr(&MAC);
        assert_eq!(l.link_local, vec![(Duration::from_secs(30), ll)]);
    }

    #[test]
    fn a_late_server_is_found_in_a_later_attempt() {
        let mut c = client(FakeLink::new(server(600, |t| t >= Duration::from_secs(5))));
        c.run(Duration::from_secs(20));
        let l = c.link();
        assert_eq!(l.applied.len(), 1);
        assert_eq!(l.applied[0].0.as_secs(), 6, "the third DISCOVER, at 6 s");
    }

    #[test]
    fn the_lease_is_renewed_at_t1_with_its_server() {
        let mut c = client(FakeLink::new(server(3600, |_| true)));
        c.run(Duration::from_secs(3600 * 3));
        let l = c.link();
        let ext: Vec<_> = l
            .sent_of(MessageType::Request)
            .into_iter()
            .filter(|(_, _, m)| m.ciaddr() == ADDR)
            .map(|(t, to, _)| (t.as_secs(), to))
            .collect();
        // T1 = 1800 s after each ACK, unicast to the server.
        assert_eq!(
            ext,
            vec![
                (1800, SERVER),
                (3600, SERVER),
                (5400, SERVER),
                (7200, SERVER),
                (9000, SERVER)
            ]
        );
        assert_eq!(l.applied.len(), 1, "an unchanged renewal touches nothing");
        assert!(l.removed.is_empty());
        assert_eq!(l.sent_of(MessageType::Discover).len(), 1);
    }

    #[test]
    fn a_vanished_server_means_rebinding_at_t2_and_at_expiry_the_address_goes() {
        let mut c = client(FakeLink::new(server(3600, |t| t < Duration::from_secs(60))));
        c.run(Duration::from_secs(3700));
        let l = c.link();
        let ext: Vec<_> = l
            .sent_of(MessageType::Request)
            .into_iter()
            .filter(|(_, _, m)| m.ciaddr() == ADDR)
            .map(|(t, to, _)| (t.as_secs(), to))
            .collect();
        assert_eq!(ext.first(), Some(&(1800, SERVER)));
        let t2 = 3150;
        assert!(ext
            .iter()
            .all(|&(t, to)| (t < t2) == (to == SERVER) && t < 3600));
        assert!(ext
            .iter()
            .any(|&(t, to)| t >= t2 && to == Ipv4Addr::BROADCAST));
        // Retries at half the time left, at least a minute apart (but rebinding starts at T2).
        assert!(
            ext.windows(2)
                .all(|w| w[1].0 - w[0].0 >= 60 || w[1].0 == t2),
            "{ext:?}"
        );
        // The lease ran from the ACK, 6 ms in.
        assert_eq!(l.removed, vec![(Duration::from_millis(3_600_006), ADDR)]);
        // Then it looks for a server again.
        let again = l.sent_of(MessageType::Discover);
        assert!(again.len() > 1 && again[1].0 >= Duration::from_secs(3600));
    }

    #[test]
    fn a_nak_on_renewal_drops_the_address_and_starts_over() {
        let mut acks = 0;
        let srv: Server = Box::new(move |_, _, m| {
            let kind = match m.opts().msg_type() {
                Some(MessageType::Discover) => MessageType::Offer,
                Some(MessageType::Request) if acks == 0 => {
                    acks += 1;
                    MessageType::Ack
                }
                Some(MessageType::Request) => MessageType::Nak,
                _ => return Vec::new(),
            };
            vec![(Duration::ZERO, reply(m, kind, 600))]
        });
        let mut c = client(FakeLink::new(srv));
        c.run(Duration::from_secs(310));
        let l = c.link();
        assert_eq!(l.removed, vec![(Duration::from_secs(300), ADDR)]);
        assert!(l
            .sent_of(MessageType::Discover)
            .iter()
            .any(|(t, _, _)| t.as_secs() == 300));
    }

    #[test]
    fn garbage_and_foreign_replies_do_not_stop_the_exchange() {
        let srv: Server = Box::new(move |_, _, m| {
            let kind = match m.opts().msg_type() {
                Some(MessageType::Discover) => MessageType::Offer,
                Some(MessageType::Request) => MessageType::Ack,
                _ => return Vec::new(),
            };
            let mut other = decode(&reply(m, kind, 600));
            other.set_xid(m.xid() ^ 1);
            vec![
                (Duration::ZERO, b"\x02garbage".to_vec()),
                (Duration::ZERO, encode(&other)),
                (Duration::from_millis(1), reply(m, kind, 600)),
            ]
        });
        let mut c = client(FakeLink::new(srv));
        c.run(Duration::from_secs(5));
        assert_eq!(c.link().applied.len(), 1);
        assert_eq!(c.link().sent_of(MessageType::Discover).len(), 1);
    }

    #[test]
    fn a_server_that_comes_later_replaces_the_link_local_address() {
        let mut c = client(FakeLink::new(server(600, |t| {
            t >= Duration::from_secs(100)
        })));
        c.run(Duration::from_secs(340));
        let l = c.link();
        assert_eq!(l.link_local.len(), 1);
        assert_eq!(l.applied.len(), 1);
        assert_eq!(
            l.applied[0].0.as_secs(),
            330,
            "the next round, after the pause"
        );
    }

    #[test]
    fn link_local_addresses_stay_in_the_usable_range_and_differ_by_mac() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..=255u8 {
            let a = link_local_addr(&[0x52, 0x54, 0, 0, 0, i]).octets();
            assert_eq!((a[0], a[1]), (169, 254));
            assert!((1..=254).contains(&a[2]), "{a:?}");
            seen.insert(a);
        }
        assert!(seen.len() > 250, "only {} distinct of 256", seen.len());
        // The same address on every boot and after every update: the derivation is pinned.
        assert_eq!(link_local_addr(&MAC), Ipv4Addr::new(169, 254, 214, 59));
    }

    #[test]
    fn mac_addresses_parse_and_bad_ones_are_named() {
        assert_eq!(parse_mac("52:54:00:12:34:56").unwrap(), MAC);
        assert_eq!(
            parse_mac("52:54:00:12:34").unwrap_err(),
            "'52:54:00:12:34' is not a MAC address"
        );
        assert!(parse_mac("52:54:00:12:34:zz").is_err());
    }
}
