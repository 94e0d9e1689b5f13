//! Cairn's storage node: plugs hold each other's encrypted shards over libp2p.
//!
//! - [`wire`]: the shard protocol's bounded binary codec; [`codec`]: on a libp2p stream.
//! - [`net`]: transports and behaviours; [`node`]: the running node and the holder's side;
//!   [`owner`]: placing, fetching, auditing and repairing our own shards.
//! - [`control`] / [`server`]: the local control socket (vault, CLI, PID 1's pairing window).
//! - [`ledger`]: give-to-get accounting per partner; [`placement`]: distinct peers per chunk;
//!   [`audit`]: possession challenges and scores; [`repair`]: what to rebuild; [`records`]:
//!   shard keys and placement records; [`invite`]: invitation codes; [`identity`]: the key.
//! - [`sim`]: a seeded churn simulation of the same placement/repair logic.
//! - [`cli`]: `cairn node …`.

pub mod audit;
pub mod cli;
pub mod codec;
pub mod control;
pub mod identity;
pub mod invite;
pub mod ledger;
pub mod net;
pub mod node;
pub mod owner;
pub mod placement;
pub mod records;
pub mod repair;
pub mod server;
pub mod sim;
pub mod testnet;
pub mod wire;

use serde::{Deserialize, Serialize};

/// A partner's identity as the network names it (its peer id in text form).
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
