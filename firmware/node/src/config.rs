//! How a node is run: its settings, all in one place.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::net::Limits;

/// How a node is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// State directory: identity key, partners, chunk store.
    pub home: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to contact first (Kademlia bootstrap, and anyone to connect to at start).
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a slot on (for plugs behind NATs).
    pub relays: Vec<Multiaddr>,
    /// Bytes this plug offers to partners, all together (the one place capacity is set).
    pub capacity: u64,
    /// Bytes a partner may store here beyond what it stores for us.
    pub allowance: u64,
    /// The control socket.
    pub control: PathBuf,
    /// Discover plugs on the LAN by mDNS.
    pub mdns: bool,
    /// Time between audit rounds.
    pub audit_every: Duration,
    /// Time between repair rounds.
    pub repair_every: Duration,
    /// How long a partner may be unreachable before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// Audit score below which a partner's shards are rebuilt elsewhere.
    pub min_score: f64,
    /// Lease given with each put (renewed by audits).
    pub lease: Duration,
    /// Time from the start of one scrub pass over partners' shards to the next.
    pub scrub_every: Duration,
    /// Bytes per second the scrub reads (the card's time for partners' requests).
    pub scrub_rate: u64,
    /// Resource limits.
    pub limits: Limits,
    /// RAM for the chunk store's index.
    pub store_memory: usize,
    /// Test builds only: misbehave as a holder.
    #[cfg(feature = "test-fixtures")]
    pub hostile: Option<crate::fixtures::Hostile>,
}

/// The control socket's file name in the node's home, unless configured otherwise.
pub const SOCKET_FILE: &str = "node.sock";

impl Config {
    /// Defaults for a node at `home`.
    pub fn new(home: PathBuf) -> Self {
        Config {
            control: home.join(SOCKET_FILE),
            home,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            capacity: 1 << 30,
            allowance: 256 << 20,
            mdns: true,
            audit_every: Duration::from_secs(3600),
            repair_every: Duration::from_secs(600),
            grace: Duration::from_secs(24 * 3600),
            min_score: 0.2,
            lease: Duration::from_secs(90 * 24 * 3600),
            // A day's pass at 128 KiB/s reads 10 GiB: a plug's share for partners, without
            // keeping an SD card busy.
            scrub_every: Duration::from_secs(24 * 3600),
            scrub_rate: 128 << 10,
            limits: Limits::default(),
            store_memory: 8 << 20,
            #[cfg(feature = "test-fixtures")]
            hostile: None,
        }
    }
}
