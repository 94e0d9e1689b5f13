//! `cairn node …`: run a storage node, pair it, and look at it (over the `cairn-node` library:
//! the node itself and its control client).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use serde_json::{json, Value};

use cairn_node::control::{Client, PairOutcome};
use cairn_node::node::Config;

/// The control socket the commands use unless `--node` or `$CAIRN_NODE` says otherwise: the
/// `node` service's on a plug.
pub const DEFAULT_SOCKET: &str = crate::sys::paths::NODE_SOCKET;

/// The storage node: hold friends' shards, place yours on theirs.
#[derive(Parser, Debug)]
pub struct Args {
    /// The running node's control socket (default: $CAIRN_NODE, else /run/node/node.sock).
    #[arg(long, global = true, value_name = "SOCKET")]
    pub node: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The node's commands.
/// Test builds only (feature `test-fixtures`): a holder that misbehaves on purpose.
#[cfg(feature = "test-fixtures")]
#[derive(clap::Args, Debug)]
pub struct HostileArgs {
    /// Misbehave as a holder, for tests of audits and restores (`wrong-bytes`, `forge`).
    #[arg(long, hide = true)]
    hostile: Option<String>,
}

/// The product has no fault switch: nothing to parse.
#[cfg(not(feature = "test-fixtures"))]
#[derive(clap::Args, Debug)]
pub struct HostileArgs {}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (on a plug, the `node` service does this).
    Run {
        /// State directory: identity key, partner list, chunk store.
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// Address to listen on, e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1.
        #[arg(long, value_name = "MULTIADDR", required = true)]
        listen: Vec<Multiaddr>,
        /// A peer to contact at start (…/p2p/PEERID), e.g. a friend's home server.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
        /// A relay to be reachable through when behind a NAT (…/p2p/PEERID).
        #[arg(long, value_name = "MULTIADDR")]
        relay: Vec<Multiaddr>,
        /// Space offered to partners, all together (e.g. 200G).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        capacity: u64,
        /// Space a partner may use here beyond what it stores for us.
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        allowance: u64,
        /// The control socket (default: HOME/node.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Do not look for plugs on the LAN by mDNS.
        #[arg(long)]
        no_mdns: bool,
        /// Seconds between audit rounds.
        #[arg(long, default_value_t = 3600)]
        audit_every: u64,
        /// Seconds between repair rounds.
        #[arg(long, default_value_t = 600)]
        repair_every: u64,
        /// Seconds a partner may stay unreachable before its shards are rebuilt elsewhere.
        #[arg(long, default_value_t = 24 * 3600)]
        grace: u64,
        /// Lease on each stored shard, in days (audits renew it).
        #[arg(long, default_value_t = 90)]
        lease_days: u64,
        /// Seconds from the start of one scrub pass over partners' shards to the next.
        #[arg(long, default_value_t = 24 * 3600)]
        scrub_every: u64,
        /// Bytes per second the scrub reads (K, M, G suffixes).
        #[arg(long, default_value = "128K", value_parser = parse_size)]
        scrub_rate: u64,
        /// RAM for frames in flight (the largest part of the node's memory).
        #[arg(long, default_value = "24M", value_parser = parse_size)]
        frame_budget: u64,
        #[command(flatten)]
        hostile: HostileArgs,
    },
    /// Show the node's peer id, partners, books and redundancy.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Open the pairing window (as the button does) and pair with the one other plug on the
    /// network whose window is open too.
    Pair {
        /// Seconds the window stays open.
        #[arg(long, default_value_t = 120)]
        window: u64,
    },
    /// Make a one-time invitation code for a friend's plug elsewhere.
    Invite {
        /// Seconds until the code expires.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
    },
    /// Pair with the plug that made this invitation code.
    Join {
        /// The code (`cairn1-…`).
        code: String,
    },
    /// After a restore onto a new plug: count the plug at this address as a partner again. It
    /// accepts this plug once the vault has registered the owner key whose shards it holds.
    Rejoin {
        /// Its address, ending in /p2p/PEERID (e.g. /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW…).
        addr: String,
    },
    /// Forget a partner: nothing more is placed on it and the next repair round places the
    /// shards it holds for this plug elsewhere.
    Unpair {
        /// Its peer id (`12D3KooW…`).
        peer: String,
    },
    /// Challenge every holder of this plug's shards now.
    Audit,
    /// Rebuild and re-place shards of chunks below full redundancy now.
    Repair,
}

/// Parses `123`, `64K`, `512M`, `2G`, `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit (K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 512M or 2G"))
}

fn socket(args: &Args) -> PathBuf {
    args.node
        .clone()
        .or_else(|| std::env::var_os("CAIRN_NODE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Runs a node command.
pub fn run(args: Args) -> Result<()> {
    let out = &mut std::io::stdout().lock();
    match args.command {
        Command::Run {
            home,
            listen,
            bootstrap,
            relay,
            capacity,
            allowance,
            control,
            no_mdns,
            audit_every,
            repair_every,
            grace,
            lease_days,
            scrub_every,
            scrub_rate,
            frame_budget,
            hostile,
        } => {
            let mut cfg = Config::new(home.clone());
            cfg.listen = listen;
            cfg.bootstrap = bootstrap;
            cfg.relays = relay;
            cfg.capacity = capacity;
            cfg.allowance = allowance;
            cfg.control = control.unwrap_or_else(|| home.join(cairn_node::config::SOCKET_FILE));
            cfg.mdns = !no_mdns;
            cfg.audit_every = Duration::from_secs(audit_every.max(1));
            cfg.repair_every = Duration::from_secs(repair_every.max(1));
            cfg.grace = Duration::from_secs(grace);
            cfg.lease = Duration::from_secs(lease_days.max(1) * 24 * 3600);
            cfg.scrub_every = Duration::from_secs(scrub_every.max(1));
            cfg.scrub_rate = scrub_rate.max(1);
            cfg.limits.frame_budget = usize::try_from(frame_budget).unwrap_or(usize::MAX);
            #[cfg(feature = "test-fixtures")]
            {
                cfg.hostile = hostile
                    .hostile
                    .map(|h| h.parse().map_err(|e| anyhow::anyhow!("--hostile: {e}")))
                    .transpose()?;
            }
            #[cfg(not(feature = "test-fixtures"))]
            let HostileArgs {} = hostile;
            cairn_node::node::run(cfg, super::notify_ready)
        }
        Command::Status { json } => {
            let v = Client::connect(&socket(&args))?.op(json!({"op": "status"}))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                print_status(out, &v)?;
            }
            Ok(())
        }
        Command::Pair { window } => {
            let outcome = Client::connect(&socket(&args))?.pair(Duration::from_secs(window))?;
            match outcome {
                PairOutcome::Paired { peer, code } => writeln!(
                    out,
                    "paired with {peer}, code {code} (the other plug shows the same)"
                )?,
                PairOutcome::Unconfirmed { peer } => bail!(
                    "refused: {peer} was in pairing mode but did not confirm; press both \
                     buttons again"
                ),
                PairOutcome::Overlap { candidates } => bail!(
                    "refused: {} plugs are in pairing mode ({}); press the buttons again with \
                     only two plugs",
                    candidates.len(),
                    candidates.join(", ")
                ),
                PairOutcome::NoneFound => {
                    bail!("no other plug on this network opened its pairing window in time")
                }
            }
            Ok(())
        }
        Command::Invite { ttl } => {
            let v =
                Client::connect(&socket(&args))?.op(json!({"op": "invite", "ttl_secs": ttl}))?;
            writeln!(out, "{}", v["code"].as_str().context("no code in answer")?)?;
            Ok(())
        }
        Command::Join { ref code } => {
            let v = Client::connect(&socket(&args))?.op(json!({"op": "join", "code": code}))?;
            writeln!(out, "paired with {}", v["peer"].as_str().unwrap_or("?"))?;
            Ok(())
        }
        Command::Rejoin { ref addr } => {
            let v = Client::connect(&socket(&args))?.op(json!({"op": "rejoin", "addr": addr}))?;
            writeln!(out, "partner again: {}", v["peer"].as_str().unwrap_or("?"))?;
            Ok(())
        }
        Command::Unpair { ref peer } => {
            let v = Client::connect(&socket(&args))?.unpair(peer)?;
            writeln!(out, "unpaired from {}", v["peer"].as_str().unwrap_or(peer))?;
            Ok(())
        }
        Command::Audit => {
            let v = Client::connect(&socket(&args))?.op(json!({"op": "audit"}))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            Ok(())
        }
        Command::Repair => {
            let v = Client::connect(&socket(&args))?.op(json!({"op": "repair"}))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            Ok(())
        }
    }
}

fn print_status(out: &mut dyn Write, v: &Value) -> Result<()> {
    writeln!(out, "peer id   {}", v["peer"].as_str().unwrap_or("?"))?;
    for a in v["listen"].as_array().into_iter().flatten() {
        writeln!(out, "listening {}", a.as_str().unwrap_or("?"))?;
    }
    writeln!(
        out,
        "offered   {} bytes, {} in use for partners",
        v["capacity"], v["used"]
    )?;
    let c = &v["chunks"];
    writeln!(
        out,
        "own data  {} chunks: {} fully redundant, {} degraded, {} unreadable",
        c["chunks"], c["full"], c["degraded"], c["unreadable"]
    )?;
    for p in v["partners"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "partner   {} {} score {:.2} holds {} for us, we hold {} for it",
            p["peer"].as_str().unwrap_or("?"),
            p["health"].as_str().unwrap_or("?"),
            p["score"].as_f64().unwrap_or(0.0),
            p["held_for_us"],
            p["held_for_them"]
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12X").unwrap_err().contains("unit"));
        assert!(parse_size("x5").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T").is_err());
    }
}
