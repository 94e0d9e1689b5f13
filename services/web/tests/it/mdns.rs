//! mDNS over real multicast: the responder publishes `cairn.local`, then the name it is given,
//! and follows the addresses it is given; a separate mdns-sd querier (another daemon with its own
//! sockets on port 5353, as another machine would have) resolves and browses them.
//!
//! The test runs in a network namespace of its own (its thread, and the threads it starts,
//! only), on that namespace's loopback: the multicast never reaches the machine's own network,
//! and no other responder answers. Without the privilege to make one (not root), it runs on the
//! machine's loopback instead, still restricted to it (`Interfaces::LoopbackV4`).

use cairn_web::mdns::{resolve_v4, Interfaces, Options, Responder, SERVICE_TYPE};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bound for a change to be seen on the LAN (a probe takes ~750 ms; polls every 200 ms here).
const SEEN_MAX: Duration = Duration::from_secs(20);
/// One question's wait.
const ASK: Duration = Duration::from_secs(3);
/// The test's HTTPS port, to tell its announcement from any other.
const PORT: u16 = 8443;

/// A responder for an unnamed device at `addr`, looking every 200 ms.
fn unnamed_at(addr: Ipv4Addr) -> Responder {
    let options = Options {
        https_port: PORT,
        poll: Duration::from_millis(200),
        interfaces: Interfaces::LoopbackV4,
    };
    Responder::start(options, || Ok(None), move || vec![IpAddr::V4(addr)]).unwrap()
}

/// Held by a test on the machine's loopback: there, the tests would hear each other.
static SHARED_LOOPBACK: Mutex<()> = Mutex::new(());

/// Moves this thread (and the threads it starts) into a new network namespace with its loopback
/// up; without the privilege, stays on the machine's loopback and holds [`SHARED_LOOPBACK`].
fn private_network() -> Option<MutexGuard<'static, ()>> {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        eprintln!("mdns test on this machine's loopback (no privilege for a network namespace)");
        return Some(SHARED_LOOPBACK.lock().unwrap_or_else(|e| e.into_inner()));
    }
    with_loopback(|fd, req| {
        use nix::libc;
        // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write `req`, which outlives the calls;
        // ifru_flags is the union member these requests use.
        unsafe {
            assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut *req), 0);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &*req), 0);
        }
    });
    None
}

/// Asks for `name` until it resolves to `want`, at most [`SEEN_MAX`].
fn resolves_to(name: &str, want: Ipv4Addr) {
    let deadline = Instant::now() + SEEN_MAX;
    let mut last = None;
    while Instant::now() < deadline {
        last = resolve_v4(name, Interfaces::LoopbackV4, ASK).unwrap();
        if last == Some(want) {
            return;
        }
    }
    panic!("{name}.local resolved to {last:?}, not {want}, within {SEEN_MAX:?}");
}

/// A querier on the loopback browsing the `_https._tcp` services.
fn browser() -> (ServiceDaemon, mdns_sd::Receiver<ServiceEvent>) {
    let d = ServiceDaemon::new().unwrap();
    d.disable_interface(IfKind::All).unwrap();
    d.enable_interface(IfKind::LoopbackV4).unwrap();
    let events = d.browse(SERVICE_TYPE).unwrap();
    (d, events)
}

/// Waits for a browse event that `wanted` picks, at most [`SEEN_MAX`].
fn wait_event<T>(
    events: &mdns_sd::Receiver<ServiceEvent>,
    what: &str,
    mut wanted: impl FnMut(ServiceEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + SEEN_MAX;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                if let Some(t) = wanted(e) {
                    return t;
                }
            }
            Err(_) => panic!("no {what} within {SEEN_MAX:?}"),
        }
    }
}

#[test]
fn the_device_answers_as_cairn_local_then_by_its_name_and_follows_its_addresses() {
    let _shared = private_network();
    let name: Arc<Mutex<Option<String>>> = Arc::default();
    let addrs = Arc::new(Mutex::new(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]));
    let options = Options {
        https_port: PORT,
        poll: Duration::from_millis(200),
        interfaces: Interfaces::LoopbackV4,
    };
    let (n, a) = (name.clone(), addrs.clone());
    let responder = Responder::start(
        options,
        move || Ok(n.lock().unwrap().clone()),
        move || a.lock().unwrap().clone(),
    )
    .unwrap();
    let (querier, events) = browser();

    // Unnamed: cairn.local, and its service on the HTTPS port.
    resolves_to("cairn", Ipv4Addr::LOCALHOST);
    let cairn = wait_event(&events, "cairn's service", |e| match e {
        ServiceEvent::ServiceResolved(s) if s.get_port() == PORT => Some(s),
        _ => None,
    });
    assert_eq!(cairn.get_fullname(), "cairn._https._tcp.local.");
    assert_eq!(cairn.get_hostname(), "cairn.local.");

    // Named at setup: NAME.local too, instance NAME.
    *name.lock().unwrap() = Some("mdnstestplug".into());
    resolves_to("mdnstestplug", Ipv4Addr::LOCALHOST);
    let named = wait_event(&events, "the named service", |e| match e {
        ServiceEvent::ServiceResolved(s) if s.get_fullname().starts_with("mdnstestplug.") => {
            Some(s)
        }
        _ => None,
    });
    assert_eq!(named.get_hostname(), "mdnstestplug.local.");
    assert_eq!(named.get_port(), PORT);
    resolves_to("cairn", Ipv4Addr::LOCALHOST);

    // Renamed: the old instance says goodbye, the new name answers.
    *name.lock().unwrap() = Some("mdnsrenamed".into());
    wait_event(&events, "the old name's goodbye", |e| match e {
        ServiceEvent::ServiceRemoved(_, full) if full.starts_with("mdnstestplug.") => Some(()),
        _ => None,
    });
    resolves_to("mdnsrenamed", Ipv4Addr::LOCALHOST);

    // A new address (a DHCP lease after the start): registered again, answered with it.
    let moved = Ipv4Addr::new(127, 0, 0, 2);
    *addrs.lock().unwrap() = vec![IpAddr::V4(moved)];
    resolves_to("mdnsrenamed", moved);
    resolves_to("cairn", moved);

    // No address at all: nothing is published (each name says goodbye).
    addrs.lock().unwrap().clear();
    wait_event(&events, "a goodbye without addresses", |e| match e {
        ServiceEvent::ServiceRemoved(_, full) if full.starts_with("mdnsrenamed.") => Some(()),
        _ => None,
    });
    drop(responder);
    let _ = querier.shutdown();
}

/// `lo`'s IPv4 address, or (given `set`) sets it: SIOCGIFADDR / SIOCSIFADDR.
fn loopback_v4(set: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    with_loopback(|fd, req| {
        use nix::libc;
        // SAFETY: SIOCGIFADDR and SIOCSIFADDR read or write `req`, which outlives the calls, as
        // a sockaddr_in in its ifru_addr member (AF_INET); all zeroes is a valid sockaddr_in.
        unsafe {
            let sin = &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in;
            let rc = match set {
                Some(a) => {
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_addr.s_addr = u32::from(a).to_be();
                    libc::ioctl(fd, libc::SIOCSIFADDR, &*req)
                }
                None => libc::ioctl(fd, libc::SIOCGIFADDR, &mut *req),
            };
            let got = Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr));
            (rc == 0).then_some(got)
        }
    })
}

/// Runs `f` with a datagram socket for interface ioctls and an `ifreq` naming `lo`.
fn with_loopback<T>(f: impl FnOnce(i32, &mut nix::libc::ifreq) -> T) -> T {
    use nix::libc;
    // SAFETY: a datagram socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    let out = f(fd, &mut req);
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    out
}

#[test]
fn a_new_address_is_published_when_the_kernel_reports_it_not_at_the_next_poll() {
    // Changing an address needs a network namespace of the test's own (root).
    assert!(
        private_network().is_none(),
        "this test changes loopback's address: it needs a network namespace (run it as root)"
    );
    let options = Options {
        https_port: PORT,
        // Longer than the test: only the kernel's word can make it look again.
        poll: Duration::from_secs(3600),
        interfaces: Interfaces::LoopbackV4,
    };
    let responder = Responder::start(
        options,
        || Ok(None),
        || loopback_v4(None).map(IpAddr::V4).into_iter().collect(),
    )
    .unwrap();
    resolves_to("cairn", Ipv4Addr::LOCALHOST);
    // Loopback's address replaced, as a new DHCP lease replaces eth0's.
    let moved = Ipv4Addr::new(127, 0, 0, 6);
    assert_eq!(
        loopback_v4(Some(moved)),
        Some(moved),
        "setting lo's address"
    );
    resolves_to("cairn", moved);
    drop(responder);
}

#[test]
fn a_name_given_at_setup_is_published_when_the_host_name_is_set_not_at_the_next_poll() {
    // PID 1 sets the host name when the device is named; the test sets its own, in a UTS
    // namespace of its own (root), as the wake-up.
    assert!(
        private_network().is_none()
            && nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).is_ok(),
        "this test sets the host name: it needs namespaces of its own (run it as root)"
    );
    let options = Options {
        https_port: PORT,
        // Longer than the test: only the kernel's word can make it look again.
        poll: Duration::from_secs(3600),
        interfaces: Interfaces::LoopbackV4,
    };
    let name: Arc<Mutex<Option<String>>> = Arc::default();
    let n = name.clone();
    let responder = Responder::start(
        options,
        move || Ok(n.lock().unwrap().clone()),
        || vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .unwrap();
    resolves_to("cairn", Ipv4Addr::LOCALHOST);
    *name.lock().unwrap() = Some("hostnamedplug".into());
    nix::unistd::sethostname("hostnamedplug").unwrap();
    resolves_to("hostnamedplug", Ipv4Addr::LOCALHOST);
    drop(responder);
}

#[test]
fn a_device_that_comes_later_finds_cairn_local_taken_and_answers_as_cairn_2_local() {
    let _shared = private_network();
    let first = unnamed_at(Ipv4Addr::LOCALHOST);
    resolves_to("cairn", Ipv4Addr::LOCALHOST);
    let later = Ipv4Addr::new(127, 0, 0, 3);
    let second = unnamed_at(later);
    resolves_to("cairn-2", later);
    // The first keeps its name.
    resolves_to("cairn", Ipv4Addr::LOCALHOST);
    drop((first, second));
}
