//! The device on the LAN by name (mDNS, over the `mdns-sd` crate): an `_https._tcp` service on
//! port 443 whose host is `cairn.local.`, and once the device has a name, a second one, instance
//! NAME on host `NAME.local.`, both with the device's addresses (A and AAAA records).
//!
//! A [`Responder`] runs on a thread of its own beside the web's runtime. It asks for the
//! device's name (PID 1's `board` answer, given as a closure) and the interfaces' addresses, and
//! registers again when either changed: a name given at setup, a DHCP lease that came after the
//! web started. Nothing is published while the device has no address. It looks when the kernel
//! says something changed — an address came or went (rtnetlink), the host name was set (PID 1
//! names the device at setup: `/proc/sys/kernel/hostname` wakes poll(2)) — and at the latest
//! every [`POLL`]; an idle plug's responder sleeps. Where the kernel cannot tell it (no
//! rtnetlink), it looks every [`POLL_UNWATCHED`].
//!
//! UDP port 5353 is shared with the storage node's libp2p mDNS on the same plug (another user):
//! both set `SO_REUSEADDR` and `SO_REUSEPORT`; Linux lets sockets of different users share a UDP
//! port when every one of them has `SO_REUSEADDR` (`SO_REUSEPORT` alone needs the same user),
//! and gives each of them every multicast datagram. Replies to libp2p's queries go to its own
//! ephemeral port, so no unicast reply is taken by the wrong socket.
//!
//! mDNS failing never stops the web: errors are logged (`web: mdns: …`, each distinct one once,
//! at most [`ERRORS_LOGGED_MAX`]) and the responder goes on.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use mdns_sd::{DaemonEvent, HostnameResolutionEvent, IfKind, ServiceDaemon, ServiceInfo};

/// The service type published (browsers and `avahi-browse` list it).
pub const SERVICE_TYPE: &str = "_https._tcp.local.";
/// The device's host name before it has one of its own: `cairn.local`.
pub const UNNAMED: &str = "cairn";
/// Longest between two looks at the name and the addresses (changes wake the responder first).
pub const POLL: Duration = Duration::from_secs(600);
/// Between two looks where the kernel cannot say that addresses changed.
pub const POLL_UNWATCHED: Duration = Duration::from_secs(5);
/// Bytes read from rtnetlink at a time: its messages are only a wake-up here, never parsed.
const NETLINK_READ_BYTES: usize = 8192;
/// Most addresses published (an interface may carry many IPv6 addresses).
pub const ADDRESSES_MAX: usize = 16;
/// Most distinct error lines logged over the responder's life.
pub const ERRORS_LOGGED_MAX: usize = 8;
/// The responder thread's stack: it only polls and hands commands to mdns-sd's thread.
const STACK_BYTES: usize = 256 * 1024;
/// Longest wait for mdns-sd to confirm a goodbye or its shutdown.
const CONFIRM_MAX: Duration = Duration::from_secs(1);

/// Where the device answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface but loopback (the device: nobody else is on its loopback).
    Lan,
    /// IPv4 loopback only: multicast that never leaves the machine (tests).
    LoopbackV4,
}

impl Interfaces {
    /// Whether an address of this machine is one to publish here.
    fn publishes(self, a: &IpAddr) -> bool {
        if a.is_unspecified() || a.is_multicast() {
            return false;
        }
        match self {
            Interfaces::Lan => !a.is_loopback(),
            Interfaces::LoopbackV4 => a.is_ipv4() && a.is_loopback(),
        }
    }

    /// Restricts `daemon` to these interfaces.
    fn apply(self, daemon: &ServiceDaemon) -> Result<()> {
        match self {
            Interfaces::Lan => {
                daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            }
            Interfaces::LoopbackV4 => daemon
                .disable_interface(IfKind::All)
                .and_then(|()| daemon.enable_interface(IfKind::LoopbackV4)),
        }
        .map_err(|e| anyhow!("choosing interfaces: {e}"))
    }
}

/// How the responder runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The HTTPS port announced.
    pub https_port: u16,
    /// Longest between two looks at the name and the addresses.
    pub poll: Duration,
    /// Where it answers.
    pub interfaces: Interfaces,
}

impl Options {
    /// The device's: port 443, looking on changes and every [`POLL`], on the LAN.
    pub fn device() -> Options {
        Options {
            https_port: 443,
            poll: POLL,
            interfaces: Interfaces::Lan,
        }
    }
}

/// The host labels published for a device named `name`: `cairn`, then the name (once).
pub fn hosts(name: Option<&str>) -> Vec<String> {
    let mut hosts = vec![UNNAMED.to_string()];
    if let Some(n) = name.map(str::trim).filter(|n| !n.is_empty()) {
        if !n.eq_ignore_ascii_case(UNNAMED) {
            hosts.push(n.to_ascii_lowercase());
        }
    }
    hosts
}

/// The addresses to publish out of the machine's: those `interfaces` carries, IPv4 first, each
/// once, at most [`ADDRESSES_MAX`].
pub fn publishable(interfaces: Interfaces, mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.retain(|a| interfaces.publishes(a));
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    addrs.truncate(ADDRESSES_MAX);
    addrs
}

/// The service instance for host label `host`: instance `host` on `host.local.`.
fn service(host: &str, addrs: &[IpAddr], port: u16) -> Result<ServiceInfo> {
    ServiceInfo::new(
        SERVICE_TYPE,
        host,
        &format!("{host}.local."),
        addrs,
        port,
        &[("path", "/")][..],
    )
    .map_err(|e| anyhow!("{host}.local: {e}"))
}

/// The full name mdns-sd keys a registration by.
fn fullname(host: &str) -> String {
    format!("{host}.{SERVICE_TYPE}")
}

/// The mDNS responder; dropping it says goodbye on the LAN and stops it.
pub struct Responder {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Starts answering. `name` gives the device's name (`Ok(None)`: not named yet; an error
    /// keeps the name known before); `addresses` the machine's addresses (filtered here).
    pub fn start(
        options: Options,
        mut name: impl FnMut() -> Result<Option<String>> + Send + 'static,
        mut addresses: impl FnMut() -> Vec<IpAddr> + Send + 'static,
    ) -> Result<Responder> {
        let daemon = ServiceDaemon::new().map_err(|e| anyhow!("starting mdns-sd: {e}"))?;
        let mut publisher = Publisher::new(daemon, &options)?;
        // Dropping the write end (the Responder's) wakes the thread to say goodbye.
        let (stopped, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .context("a pipe for the mDNS thread")?;
        let changes = Changes::watch(&mut publisher.log);
        let thread = std::thread::Builder::new()
            .name("web-mdns".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let mut known: Option<String> = None;
                loop {
                    match name() {
                        Ok(n) => known = n.filter(|n| !n.is_empty()),
                        Err(e) => publisher.log.error(&format!("the device's name: {e:#}")),
                    }
                    let addrs = publishable(options.interfaces, addresses());
                    publisher.update(known.as_deref(), addrs);
                    publisher.drain_events();
                    if changes.wait(&stopped, options.poll) == Woken::Stop {
                        break;
                    }
                }
                publisher.close();
            })
            .context("starting the mDNS thread")?;
        Ok(Responder {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What is registered with mdns-sd, and how to change it.
struct Publisher {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<DaemonEvent>,
    port: u16,
    /// Host labels registered, and the addresses they were registered with.
    registered: Vec<String>,
    addrs: Vec<IpAddr>,
    log: ErrorLog,
}

impl Publisher {
    fn new(daemon: ServiceDaemon, options: &Options) -> Result<Publisher> {
        options.interfaces.apply(&daemon)?;
        let events = daemon
            .monitor()
            .map_err(|e| anyhow!("watching mdns-sd: {e}"))?;
        Ok(Publisher {
            daemon,
            events,
            port: options.https_port,
            registered: Vec::new(),
            addrs: Vec::new(),
            log: ErrorLog::default(),
        })
    }

    /// Publishes `name`'s hosts at `addrs` (nothing without an address), registering again what
    /// changed and saying goodbye for what went.
    fn update(&mut self, name: Option<&str>, addrs: Vec<IpAddr>) {
        let wanted = if addrs.is_empty() {
            Vec::new()
        } else {
            hosts(name)
        };
        let moved = addrs != self.addrs;
        if wanted == self.registered && !moved {
            return;
        }
        for gone in self
            .registered
            .iter()
            .filter(|h| !wanted.contains(h))
            .cloned()
            .collect::<Vec<_>>()
        {
            match self.daemon.unregister(&fullname(&gone)) {
                Ok(done) => {
                    // Its goodbye goes out before anything else is sent.
                    let _ = done.recv_timeout(CONFIRM_MAX);
                    self.registered.retain(|h| *h != gone);
                }
                Err(e) => self.log.error(&format!("withdrawing {gone}.local: {e}")),
            }
        }
        for host in &wanted {
            if self.registered.contains(host) && !moved {
                continue;
            }
            match service(host, &addrs, self.port).and_then(|s| {
                self.daemon
                    .register(s)
                    .map_err(|e| anyhow!("{host}.local: {e}"))
            }) {
                Ok(()) if !self.registered.contains(host) => self.registered.push(host.clone()),
                Ok(()) => {}
                // Not recorded as registered: the next poll tries again.
                Err(e) => self.log.error(&format!("{e:#}")),
            }
        }
        self.addrs = addrs;
        if self.registered.is_empty() {
            tracing::info!("mdns: no address on the LAN; nothing published");
        } else {
            let names: Vec<String> = self
                .registered
                .iter()
                .map(|h| format!("{h}.local"))
                .collect();
            let at: Vec<String> = self.addrs.iter().map(IpAddr::to_string).collect();
            tracing::info!(
                "mdns: {} ({SERVICE_TYPE} port {}) at {}",
                names.join(" and "),
                self.port,
                at.join(" ")
            );
        }
    }

    /// Logs what mdns-sd reported since the last look: errors, and names it had to change
    /// because another device on the LAN holds them.
    fn drain_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                DaemonEvent::Error(e) => self.log.error(&e.to_string()),
                DaemonEvent::NameChange(c) => self.log.error(&format!(
                    "{} is taken on this network; answering as {} instead",
                    c.original.trim_end_matches('.'),
                    c.new_name.trim_end_matches('.')
                )),
                _ => {}
            }
        }
    }

    /// Goodbye for everything registered, then mdns-sd stops.
    fn close(mut self) {
        for host in std::mem::take(&mut self.registered) {
            if let Ok(done) = self.daemon.unregister(&fullname(&host)) {
                let _ = done.recv_timeout(CONFIRM_MAX);
            }
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(CONFIRM_MAX);
        }
    }
}

/// What woke the responder.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    /// The responder was dropped: say goodbye.
    Stop,
    /// Something may have changed, or it is time to look anyway.
    Look,
}

/// The kernel's word that the name or the addresses may have changed.
struct Changes {
    /// rtnetlink, subscribed to IPv4 and IPv6 address changes; `None`: look every
    /// [`POLL_UNWATCHED`].
    netlink: Option<OwnedFd>,
    /// `/proc/sys/kernel/hostname`: poll(2) reports POLLPRI once it was set.
    hostname: Option<File>,
}

impl Changes {
    fn watch(log: &mut ErrorLog) -> Changes {
        let netlink = address_changes()
            .map_err(|e| {
                log.error(&format!(
                    "watching address changes: {e:#}; looking every {} s",
                    POLL_UNWATCHED.as_secs()
                ))
            })
            .ok();
        Changes {
            netlink,
            hostname: File::open("/proc/sys/kernel/hostname").ok(),
        }
    }

    /// Sleeps until a change, the stop pipe `stopped` closes, or `poll` passes.
    fn wait(&self, stopped: &OwnedFd, poll: Duration) -> Woken {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let poll = match self.netlink {
            Some(_) => poll,
            None => poll.min(POLL_UNWATCHED),
        };
        let mut fds = vec![PollFd::new(stopped.as_fd(), PollFlags::POLLIN)];
        if let Some(n) = &self.netlink {
            fds.push(PollFd::new(n.as_fd(), PollFlags::POLLIN));
        }
        if let Some(h) = &self.hostname {
            // Only POLLPRI: a sysctl file always reads as ready.
            fds.push(PollFd::new(h.as_fd(), PollFlags::POLLPRI));
        }
        let timeout = PollTimeout::try_from(poll).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) if fds[0].revents().is_some_and(|r| !r.is_empty()) => return Woken::Stop,
            Ok(_) => {}
            // EINTR, or a failure poll(2) would repeat: look, then wait again (not a busy loop
            // either way: a look takes a name request and an address listing).
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        drop(fds);
        if let Some(n) = &self.netlink {
            // Drained: a burst of messages (an interface going down) is one look.
            let mut buf = vec![0u8; NETLINK_READ_BYTES];
            while let Ok(1..) = nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(n),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {}
        }
        Woken::Look
    }
}

/// A rtnetlink socket that receives a message whenever an IPv4 or IPv6 address is added or
/// removed on this machine.
fn address_changes() -> Result<OwnedFd> {
    use nix::sys::socket::SockType;
    use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol};
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (nix::libc::RTMGRP_IPV4_IFADDR | nix::libc::RTMGRP_IPV6_IFADDR) as u32;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, groups),
    )?;
    Ok(fd)
}

/// Error lines, each distinct one once, at most [`ERRORS_LOGGED_MAX`] in all: a LAN or a daemon
/// that fails every poll must not fill the log.
#[derive(Default)]
struct ErrorLog {
    seen: Vec<String>,
    silenced: bool,
}

impl ErrorLog {
    fn error(&mut self, text: &str) {
        if self.silenced || self.seen.iter().any(|s| s == text) {
            return;
        }
        if self.seen.len() == ERRORS_LOGGED_MAX {
            tracing::warn!("mdns: more errors; not logged");
            self.silenced = true;
            return;
        }
        tracing::warn!("mdns: {text}");
        self.seen.push(text.to_string());
    }
}

/// Asks the LAN (on `interfaces`) for `name`'s IPv4 address, `NAME.local`'s A record, waiting
/// at most `timeout`; `None` when nobody answered. `name` may end in `.local` or `.local.`.
pub fn resolve_v4(
    name: &str,
    interfaces: Interfaces,
    timeout: Duration,
) -> Result<Option<Ipv4Addr>> {
    let label = name.trim_end_matches('.').trim_end_matches(".local");
    anyhow::ensure!(
        !label.is_empty() && !label.contains('.'),
        "{name:?} is not a name on the LAN (NAME or NAME.local)"
    );
    let host = format!("{label}.local.");
    let daemon = ServiceDaemon::new().map_err(|e| anyhow!("starting mdns-sd: {e}"))?;
    let answer = (|| {
        interfaces.apply(&daemon)?;
        let wait_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let events = daemon
            .resolve_hostname(&host, Some(wait_ms))
            .map_err(|e| anyhow!("asking for {host}: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(HostnameResolutionEvent::AddressesFound(_, found)) => {
                    let v4 = found.iter().find_map(|a| match a.to_ip_addr() {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    });
                    if v4.is_some() {
                        return Ok(v4);
                    }
                }
                Ok(HostnameResolutionEvent::SearchTimeout(_)) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })();
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(CONFIRM_MAX);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cairn_first_then_the_name_once() {
        assert_eq!(hosts(None), ["cairn"]);
        assert_eq!(hosts(Some("")), ["cairn"]);
        assert_eq!(hosts(Some("attic")), ["cairn", "attic"]);
        assert_eq!(hosts(Some("Attic")), ["cairn", "attic"]);
        assert_eq!(hosts(Some("cairn")), ["cairn"]);
    }

    #[test]
    fn the_lan_gets_every_address_but_loopback_ipv4_first_and_bounded() {
        let mine = vec![
            a("fe80::1"),
            a("::1"),
            a("127.0.0.1"),
            a("0.0.0.0"),
            a("192.168.1.23"),
            a("169.254.3.4"),
            a("192.168.1.23"),
            a("fd00::5"),
        ];
        assert_eq!(
            publishable(Interfaces::Lan, mine.clone()),
            [
                a("169.254.3.4"),
                a("192.168.1.23"),
                a("fd00::5"),
                a("fe80::1")
            ]
        );
        assert_eq!(publishable(Interfaces::LoopbackV4, mine), [a("127.0.0.1")]);
        let many: Vec<IpAddr> = (0..40u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)))
            .collect();
        assert_eq!(publishable(Interfaces::Lan, many).len(), ADDRESSES_MAX);
    }

    #[test]
    fn an_instance_is_its_host_on_the_https_port() {
        let s = service("attic", &[a("169.254.3.4"), a("fe80::1")], 443).unwrap();
        assert_eq!(s.get_fullname(), "attic._https._tcp.local.");
        assert_eq!(s.get_fullname(), fullname("attic"));
        assert_eq!(s.get_hostname(), "attic.local.");
        assert_eq!(s.get_port(), 443);
        assert_eq!(s.get_addresses().len(), 2);
    }

    #[test]
    fn errors_are_logged_once_each_and_then_not_at_all() {
        let mut log = ErrorLog::default();
        for _ in 0..3 {
            log.error("same");
        }
        assert_eq!(log.seen, ["same"]);
        for i in 0..100 {
            log.error(&i.to_string());
        }
        assert_eq!(log.seen.len(), ERRORS_LOGGED_MAX);
        assert!(log.silenced);
    }

    #[test]
    fn only_names_on_the_lan_are_resolved() {
        for bad in ["", ".local", "a.b", "a.b.local."] {
            let e = resolve_v4(bad, Interfaces::LoopbackV4, Duration::ZERO).unwrap_err();
            assert!(
                e.to_string().contains("not a name on the LAN"),
                "{bad}: {e}"
            );
        }
    }
}
