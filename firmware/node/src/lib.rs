//! Cairn's storage node: plugs hold each other's encrypted shards over libp2p.
//!
//! - [`wire`]: the shard protocol's bounded binary codec; [`codec`]: on a libp2p stream.
//! - [`net`]: transports and behaviours; [`node`]: opening and running the node;
//!   [`config`]: its settings; [`state`]: the state its parts share; [`swarm`]: the swarm
//!   task (event loop); [`holder`]: the holder's side (partners' requests); [`pairing`]:
//!   button sessions and invitations; [`owner`]: placing, fetching, auditing and repairing
//!   our own shards.
//! - [`control`] / [`server`]: the local control socket (vault, CLI, PID 1's pairing window).
//! - [`ledger`]: give-to-get accounting per partner; [`placement`]: distinct peers per chunk;
//!   [`audit`]: possession challenges and scores; [`repair`]: what to rebuild; [`records`]:
//!   shard keys and placement records; [`invite`]: invitation codes; [`identity`]: the key.
//! - [`sim`]: a seeded churn simulation of the same placement/repair logic.
//! - The command line, `cairn node …`, lives in the `cairn` binary.

pub mod audit;
pub mod codec;
pub mod config;
pub mod control;
#[cfg(feature = "test-fixtures")]
pub mod fixtures;
pub mod gate;
pub mod holder;
pub mod identity;
pub mod invite;
pub mod leases;
pub mod ledger;
pub mod mux;
pub mod net;
pub mod node;
pub mod owner;
pub mod pairing;
pub mod placement;
pub mod records;
pub mod repair;
pub mod scrub;
pub mod server;
pub mod sim;
pub mod state;
pub mod swarm;
pub mod testnet;
pub mod wire;

use serde::{Deserialize, Serialize};

/// A peer's id in text form: the default peer type of the pure logic ([`ledger`], [`audit`],
/// [`placement`], [`repair`], [`sim`]), which is generic over it; the running node uses
/// `libp2p::PeerId` and keeps this form only where ids are stored as text (audit scores in
/// `partners.json`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl PeerId {
    /// Wraps a peer id string.
    pub fn new(s: impl Into<String>) -> Self {
        PeerId(s.into())
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
