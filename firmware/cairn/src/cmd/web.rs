//! `cairn web`: the web service role (over the `cairn-web` library): HTTPS on the socket PID 1
//! hands over (`$CAIRN_LISTEN_FDS`, a comma list of descriptor numbers) or on `--listen ADDR`,
//! talking to PID 1 through its control socket.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// The web's state directory on a plug, as `services/web.toml` sets it (its workdir).
pub const DEFAULT_DATA: &str = "/data/web";
/// The owner's vault, in the web's state directory.
pub const VAULT_DIR: &str = "vault";
/// The owner's vault's erasure code, as `cairn vault init`'s defaults: any 4 of 8 shards read a
/// chunk, so up to 4 partners may vanish.
const VAULT_K: usize = 4;
const VAULT_N: usize = 8;
/// The paths snac2 answers: discovery, its NodeInfo document, the Mastodon client API and
/// its OAuth, and the owner's actor (its inbox, outbox, posts and files are below it). The
/// site keeps `/` and the admin `/admin/`.
const SOCIAL_PATHS: [&str; 9] = [
    "/.well-known/webfinger",
    "/.well-known/nodeinfo",
    "/.well-known/host-meta",
    "/nodeinfo_2_0",
    "/api/v1/",
    "/api/v2/",
    "/oauth/",
    "/shared-inbox",
    "/owner",
];

/// The environment variable naming the listening sockets PID 1 passes.
pub const LISTEN_FDS_ENV: &str = "CAIRN_LISTEN_FDS";

/// The web service: the claim with the button, setup, the owner's dashboard, over HTTPS.
#[derive(Parser, Debug)]
pub struct Args {
    /// State directory: settings.toml, tls/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// PID 1's control socket.
    #[arg(long, value_name = "SOCKET", default_value = crate::sys::paths::SOCKET)]
    pub control: PathBuf,
    /// The storage node's control socket (its figures, partners, invitations, the vault).
    #[arg(long, value_name = "SOCKET", default_value = crate::sys::paths::NODE_SOCKET)]
    pub node: PathBuf,
    /// Where to leave the device's certificate and names for the bundled services (Prosody),
    /// readable by the group `web`; on a plug its runtime directory.
    #[arg(long, value_name = "DIR")]
    pub share: Option<PathBuf>,
    /// Jabber's admin socket (Prosody's, group prosody): the Chat page's accounts.
    #[arg(long, value_name = "SOCKET")]
    pub chat: Option<PathBuf>,
    /// Where Prosody serves its HTTP file sharing (XEP-0363) on loopback: passed on at
    /// `/file_share/`, so files travel over this HTTPS.
    #[arg(long, value_name = "ADDR")]
    pub file_share: Option<SocketAddr>,
    /// Where snac2 (the fediverse) listens on loopback: WebFinger, NodeInfo, its actors and
    /// the Mastodon client API are passed on to it.
    #[arg(long, value_name = "ADDR")]
    pub social: Option<SocketAddr>,
    /// snac's data folder (group snac): the owner's fediverse account's first password.
    #[arg(long, value_name = "DIR")]
    pub social_data: Option<PathBuf>,
    /// Root certificates (the system layer's bundle), first in the certificates the bundled
    /// services trust (`ca-certificates.crt` in --share); a file that is not there is skipped.
    #[arg(long, value_name = "FILE")]
    pub roots: Option<PathBuf>,
    /// A folder of a service's data to back up into the services' own vault (repeatable).
    #[arg(long = "backup", value_name = "DIR")]
    pub backups: Vec<PathBuf>,
    /// Hours between backups.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    pub backup_every: u64,
    /// Address to listen on when PID 1 passes no socket ($CAIRN_LISTEN_FDS), e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Runs the web service until it fails.
pub fn run(args: Args) -> Result<()> {
    let listeners = match std::env::var(LISTEN_FDS_ENV) {
        Ok(list) if !list.trim().is_empty() => inherited(&list)?,
        _ => match args.listen {
            Some(addr) => vec![TcpListener::bind(addr)
                .with_context(|| format!("--listen {addr}: cannot listen"))?],
            None => bail!("no socket to listen on: PID 1 passed none (${LISTEN_FDS_ENV}) and --listen is not given"),
        },
    };
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("{}: creating", args.data.display()))?;
    let vault_home = args.data.join(VAULT_DIR);
    let backups = (!args.backups.is_empty()).then(|| {
        super::backup::backups(
            &args.data,
            &args.node,
            args.backups,
            std::time::Duration::from_secs(args.backup_every.max(1) * 3600),
        )
    });
    let mut config = cairn_web::Config::new(args.data, listeners);
    config.addresses = usable(interface_addresses());
    config.vault = Some(cairn_web::owner_vault::OwnerVault {
        home: vault_home,
        place: node_placement(&args.node),
        kdf: cairn_vault::keys::KdfParams::default(),
        open: Arc::default(),
    });
    config.backups = backups;
    config.social = args.social_data;
    config.roots = args.roots;
    config.node = Some(Arc::new(NodeSocket(args.node)));
    config.share = args.share;
    config.chat = args.chat.map(|socket| cairn_web::chat::Prosody { socket });
    config.upstreams = args
        .file_share
        .map(|addr| cairn_web::proxy::Upstream {
            addr,
            prefix: "/file_share/",
            body_bytes_max: super::prosody::FILE_SHARE_BYTES_MAX,
        })
        .into_iter()
        .chain(args.social.into_iter().flat_map(|addr| {
            SOCIAL_PATHS
                .iter()
                .map(move |prefix| cairn_web::proxy::Upstream {
                    addr,
                    prefix,
                    body_bytes_max: super::snac::BODY_BYTES_MAX,
                })
        }))
        .collect();
    let device = Arc::new(cairn_web::ControlSocket(args.control));
    // Held while the web runs; without it the web still serves, by address.
    let _mdns = mdns(device.clone());
    cairn_web::run(config, device, |_| super::notify_ready())
}

/// Shards through the storage node at `node`, 4-of-8: the owner's vault and the services'
/// backups. The node places every shard itself, on partners (or keeps it here until there
/// are).
pub(crate) fn node_placement(node: &std::path::Path) -> cairn_web::owner_vault::Placement {
    cairn_web::owner_vault::Placement {
        targets: vec![cairn_vault::home::Target::Node(node.to_path_buf())],
        nodes: Arc::new(super::vault::NodeSockets),
        k: VAULT_K,
        n: VAULT_N,
    }
}

/// The storage node through its control socket (`cairn-node`'s client), for the web.
struct NodeSocket(PathBuf);

impl cairn_web::storage::Node for NodeSocket {
    fn call(&self, request: serde_json::Value) -> Result<serde_json::Value> {
        let mut c = cairn_node::control::Client::connect(&self.0)?;
        Ok(c.op(request)?)
    }
}

/// Starts answering on the LAN as `cairn.local` and, once PID 1's `board` names the device,
/// `NAME.local`; a failure is one log line.
fn mdns(device: Arc<cairn_web::ControlSocket>) -> Option<cairn_web::mdns::Responder> {
    use cairn_web::Device;
    let name = move || Ok(device.board()?.name);
    match cairn_web::mdns::Responder::start(
        cairn_web::mdns::Options::device(),
        name,
        interface_addresses,
    ) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("web: mdns: {e:#}; not on the LAN by name");
            None
        }
    }
}

/// Takes the listening TCP sockets named by `list` (`3` or `3,4`), checking each is one.
fn inherited(list: &str) -> Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for item in list.split(',').map(str::trim) {
        let fd: RawFd = item
            .parse()
            .with_context(|| format!("${LISTEN_FDS_ENV}: {item:?} is not a descriptor number"))?;
        if listeners
            .iter()
            .any(|l: &TcpListener| std::os::fd::AsRawFd::as_raw_fd(l) == fd)
        {
            bail!("${LISTEN_FDS_ENV}: descriptor {fd} is named twice");
        }
        check_listening_tcp(fd).with_context(|| format!("${LISTEN_FDS_ENV}: descriptor {fd}"))?;
        // SAFETY: PID 1 passed this descriptor for us to listen on; it is open, a listening
        // TCP socket, and taken once (a number named twice is refused above).
        listeners.push(unsafe { TcpListener::from_raw_fd(fd) });
    }
    Ok(listeners)
}

/// Whether `fd` is an open, listening IPv4/IPv6 stream socket.
fn check_listening_tcp(fd: RawFd) -> Result<()> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType};
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    if fd < 3 {
        bail!("is standard input, output or error");
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("is not open");
    }
    // SAFETY: open (checked above) and not closed while borrowed here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if getsockopt(&borrowed, sockopt::SockType).context("is not a socket")? != SockType::Stream {
        bail!("is not a stream socket");
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn).context("is not a socket")? {
        bail!("is not listening");
    }
    let addr: SockaddrStorage = getsockname(fd).context("getsockname")?;
    match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(()),
        _ => bail!("is not an IPv4 or IPv6 socket"),
    }
}

/// The addresses of the device's interfaces (every one, loopback too).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifaddrs
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// The addresses a browser can reach the device at, IPv4 first: not loopback, and no IPv6
/// link-local one (unusable in a URL without the interface).
fn usable(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.retain(|a| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    });
    addrs.sort_by_key(IpAddr::is_ipv6);
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_addresses_leave_out_loopback_and_link_local_v6() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            usable(vec![
                a("fe80::1"),
                a("::1"),
                a("fd00::5"),
                a("127.0.0.1"),
                a("169.254.3.4"),
                a("192.168.1.23"),
                a("192.168.1.23"),
            ]),
            [a("169.254.3.4"), a("192.168.1.23"), a("fd00::5")]
        );
    }

    #[test]
    fn inherited_descriptors_must_be_listening_tcp_sockets() {
        let e = |list: &str| format!("{:#}", inherited(list).err().unwrap());
        assert!(e("x").contains("\"x\" is not a descriptor number"));
        assert!(e("1").contains("descriptor 1: is standard"));
        assert!(e("999").contains("descriptor 999: is not open"));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert!(e(&n.to_string()).contains("is not a socket"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&udp);
        assert!(e(&n.to_string()).contains("not a stream socket"));
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&unix);
        assert!(e(&n.to_string()).contains("not an IPv4 or IPv6"));
        let connected = std::net::TcpStream::connect(
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
        )
        .unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&connected);
        assert!(e(&n.to_string()).contains("is not listening"));
    }

    #[test]
    fn the_manifest_runs_the_role_with_its_defaults_and_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/web.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("\"--data\", \"{DEFAULT_DATA}\"")));
        assert!(text.contains(&format!("\"--control\", \"{}\"", crate::sys::paths::SOCKET)));
        assert!(text.contains(&format!(
            "\"--node\", \"{}\"",
            crate::sys::paths::NODE_SOCKET
        )));
        let m = cairn_supervisor::manifest::parse(&path, &text).unwrap();
        assert_eq!((m.name.as_str(), m.user.as_deref()), ("web", Some("web")));
        assert_eq!(m.limits.memory_bytes, Some(48 << 20));
        assert_eq!(m.listen, [cairn_supervisor::manifest::Listen::Tcp(443)]);
        // In the node's group, to reach its socket in /run/node, and in Prosody's, to reach
        // its admin socket; the certificate for Prosody goes to its own runtime directory.
        assert_eq!(m.groups, ["node", "prosody", "snac"]);
        assert!(text.contains(&format!(
            "\"--social\", \"127.0.0.1:{}\"",
            super::super::snac::HTTP_PORT
        )));
        assert!(SOCIAL_PATHS.contains(&format!("/{}", super::super::snac::OWNER).as_str()));
        assert!(m.runtime_dir);
        assert!(text.contains("\"--share\", \"/run/web\""));
        // The layer's bundle (cairn-image joins it there).
        assert!(text.contains("\"--roots\", \"/usr/share/cairn/ca-certificates.crt\""));
        assert!(text.contains(&format!(
            "\"--file-share\", \"127.0.0.1:{}\"",
            super::super::prosody::HTTP_PORT
        )));
        assert!(text.contains(&format!(
            "\"--chat\", \"/run/prosody/{}\"",
            super::super::prosody::ADMIN_SOCKET
        )));
        for dir in super::super::backup::DEFAULT_SOURCES {
            assert!(text.contains(&format!("\"--backup\", \"{dir}\"")), "{dir}");
        }
        // Every request the web makes of PID 1 is in its list (and nothing the web cannot use).
        for cmd in "status board claim refuse claimed say pair reset restart reboot poweroff \
                    update update-status"
            .split_whitespace()
        {
            assert!(m.control.iter().any(|c| c == cmd), "{cmd}");
        }
    }

    #[test]
    fn an_inherited_listener_is_taken() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
        let taken = inherited(&format!(" {fd} ")).unwrap();
        assert_eq!(taken[0].local_addr().unwrap(), addr);
        // Named twice: refused (and the one taken first closed once, with the error).
        let fd = std::os::fd::IntoRawFd::into_raw_fd(TcpListener::bind("127.0.0.1:0").unwrap());
        let twice = format!("{fd},{fd}");
        assert!(format!("{:#}", inherited(&twice).err().unwrap()).contains("named twice"));
    }
}
