//! Cairn's storage node: the parts that do not depend on the network transport.
//!
//! - [`wire`]: the shard protocol's bounded binary codec.
//! - [`ledger`]: give-to-get accounting per partner.
//! - [`placement`]: choosing distinct peers for a chunk's shards.
//! - [`audit`]: possession challenges and per-peer scores.

pub mod audit;
pub mod ledger;
pub mod placement;
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
