//! `cairn names`: the device's own name server on 127.0.0.1:53 (over `cairn_web::names`), so
//! Prosody finds other plugs as `NAME.local` by mDNS and everything else through the lease's
//! name servers. PID 1 binds the port and hands the socket over (`$CAIRN_LISTEN_FDS`).

use std::net::UdpSocket;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_web::mdns::{resolve_v4, Interfaces};
use cairn_web::names::{serve, Resolver, MDNS_WAIT};
use clap::Parser;

/// The device's name server for its own services.
#[derive(Parser, Debug)]
pub struct Args {
    /// Where the lease's name servers are (the ones asked for names not on the LAN).
    #[arg(long, value_name = "FILE", default_value = crate::init::net::RESOLV_CONF)]
    pub resolv_conf: PathBuf,
    /// Address to serve on when PID 1 passes no socket, e.g. 127.0.0.1:5353.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// Serves until it fails.
pub fn run(args: Args) -> Result<()> {
    let socket = match std::env::var(super::web::LISTEN_FDS_ENV) {
        Ok(list) if !list.trim().is_empty() => inherited(list.trim())?,
        _ => match args.listen {
            Some(a) => UdpSocket::bind(a).with_context(|| format!("--listen {a}"))?,
            None => bail!(
                "no socket: PID 1 passed none (${}) and --listen is not given",
                super::web::LISTEN_FDS_ENV
            ),
        },
    };
    let at = socket.local_addr()?;
    eprintln!("cairn-names: answering on {at}: NAME.local by mDNS, the rest upstream");
    super::notify_ready();
    let lan = |name: &str| resolve_v4(name, Interfaces::Lan, MDNS_WAIT);
    serve(socket, Resolver::new(lan), &args.resolv_conf)
}

/// The one UDP socket PID 1 passed.
fn inherited(item: &str) -> Result<UdpSocket> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    let fd: RawFd = item.parse().with_context(|| {
        format!(
            "${}: {item:?} is not one descriptor number",
            super::web::LISTEN_FDS_ENV
        )
    })?;
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("descriptor {fd} is not an open socket of ours");
    }
    // SAFETY: open (checked above) and not closed while borrowed here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if getsockopt(&borrowed, sockopt::SockType).context("not a socket")? != SockType::Datagram {
        bail!("descriptor {fd} is not a UDP socket");
    }
    // SAFETY: PID 1 passed this descriptor for us alone; it is open and a datagram socket.
    Ok(unsafe { UdpSocket::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_hands_it_loopback_port_53_and_it_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/names.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = cairn_supervisor::manifest::parse(&path, &text).unwrap();
        let args = Args::try_parse_from(m.exec.iter().skip(1)).unwrap();
        assert_eq!(args.resolv_conf, std::path::Path::new("/etc/resolv.conf"));
        assert_eq!(
            m.listen,
            [cairn_supervisor::manifest::Listen::LoopbackUdp(53)]
        );
        assert_eq!(m.user.as_deref(), Some("names"));
    }

    #[test]
    fn a_descriptor_that_is_not_a_udp_socket_is_refused() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&tcp).to_string();
        assert!(inherited(&n).unwrap_err().to_string().contains("not a UDP"));
        assert!(inherited("3,4").is_err());
        assert!(inherited("1").is_err());
    }
}
