//! What the web asks of the storage node, behind the [`Node`] trait: its figures (offered and
//! used storage, partners with their books and audit scores, the redundancy of the owner's
//! data), invitation codes, joining a friend's plug by code, and unpairing. The binary passes
//! the real node (its control socket); the web crate does not depend on the node's crate, so
//! the trait carries the node's JSON requests and answers, and this module gives them types.
//!
//! The calls block (a Unix socket); the server makes them on its blocking pool.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest invitation code accepted from a browser (a real one is a few hundred characters).
pub const INVITATION_CHARS_MAX: usize = 4096;
/// Longest peer id accepted from a browser (a libp2p Ed25519 peer id is 52 characters).
pub const PEER_CHARS_MAX: usize = 128;

/// The storage node: one JSON request (`{"op": …}`), one answer. `Err` carries the node's
/// one-line reason, or why it could not be reached.
pub trait Node: Send + Sync {
    /// Sends `request`, returns the node's answer when it says `ok`.
    fn call(&self, request: Value) -> Result<Value>;
}

/// One partner, as the node's `status` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Partner {
    /// Its peer id.
    pub peer: String,
    /// How it became a partner (`button`, `invitation`, …).
    #[serde(default)]
    pub via: String,
    /// Since when (Unix seconds).
    #[serde(default)]
    pub since: u64,
    /// Whether a connection to it is open now.
    #[serde(default)]
    pub connected: bool,
    /// `live`, `unreachable`, `gone`, … (as the node's audits judge it).
    #[serde(default)]
    pub health: String,
    /// Its audit score, 0 to 1.
    #[serde(default)]
    pub score: f64,
    /// Bytes this plug holds for it.
    #[serde(default)]
    pub held_for_them: u64,
    /// Bytes it holds for this plug.
    #[serde(default)]
    pub held_for_us: u64,
}

/// The owner's chunks by redundancy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunks {
    /// Chunks recorded.
    #[serde(default)]
    pub chunks: u64,
    /// With every shard on a partner.
    #[serde(default)]
    pub full: u64,
    /// Below full redundancy, still readable from partners.
    #[serde(default)]
    pub degraded: u64,
    /// Readable only thanks to shards kept on this plug (too few partners yet).
    #[serde(default)]
    pub unprotected: u64,
    /// Fewer than k shards left, on partners and here together.
    #[serde(default)]
    pub unreadable: u64,
    /// Shards kept on this plug until partners take them.
    #[serde(default)]
    pub held_here: u64,
    /// Their bytes.
    #[serde(default)]
    pub held_here_bytes: u64,
}

impl Chunks {
    /// Whether every chunk is at its target (the LED's green; amber otherwise).
    pub fn at_target(&self) -> bool {
        self.full == self.chunks
    }
}

/// The node's `status`, the parts the web shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This plug's peer id.
    #[serde(default)]
    pub peer: String,
    /// Bytes offered to friends.
    #[serde(default)]
    pub capacity: u64,
    /// Bytes friends' shards take here.
    #[serde(default)]
    pub used: u64,
    /// Partners, in the order the node lists them.
    #[serde(default)]
    pub partners: Vec<Partner>,
    /// The owner's chunks by redundancy (none when the node could not count them).
    #[serde(default)]
    pub chunks: Option<Chunks>,
    /// Why the chunks could not be counted.
    #[serde(default)]
    pub chunks_error: Option<String>,
}

/// An invitation code for a friend's plug.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The code to pass on.
    pub code: String,
    /// When it stops working (Unix seconds).
    pub expires: u64,
}

/// The node's figures.
pub fn status(node: &dyn Node) -> Result<Status> {
    let v = node.call(json!({"op": "status"}))?;
    serde_json::from_value(v).context("the storage node's status is malformed")
}

/// A new invitation code, valid for `ttl_secs`.
pub fn invite(node: &dyn Node, ttl_secs: u64) -> Result<Invitation> {
    let v = node.call(json!({"op": "invite", "ttl_secs": ttl_secs}))?;
    serde_json::from_value(v).context("the storage node's invitation is malformed")
}

/// Pairs with the plug whose invitation `code` is; returns its peer id.
pub fn join(node: &dyn Node, code: &str) -> Result<String> {
    let v = node.call(json!({"op": "join", "code": code}))?;
    v["peer"]
        .as_str()
        .map(str::to_string)
        .context("the storage node's answer names no peer")
}

/// Sets what this plug offers partners (the owner's choice at setup).
pub fn set_capacity(node: &dyn Node, bytes: u64) -> Result<()> {
    node.call(json!({"op": "set_capacity", "bytes": bytes}))
        .map(drop)
}

/// Stops partnering with `peer`.
pub fn unpair(node: &dyn Node, peer: &str) -> Result<()> {
    node.call(json!({"op": "unpair", "peer": peer})).map(drop)
}

/// An invitation code as a browser sent it: whitespace (a pasted line break) removed, and
/// refused when empty, over-long or not printable ASCII, so that nothing else reaches the node.
pub fn clean_code(raw: &str) -> Result<String, &'static str> {
    let code: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if code.is_empty() {
        return Err("Paste the invitation code your friend sent.");
    }
    if code.len() > INVITATION_CHARS_MAX || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("That is not an invitation code: copy it again, whole.");
    }
    Ok(code)
}

/// Whether `peer` can be a peer id (base58 letters, bounded), checked before it goes to the node.
pub fn valid_peer(peer: &str) -> bool {
    !peer.is_empty()
        && peer.len() <= PEER_CHARS_MAX
        && peer.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_status_reads_with_what_it_lacks_left_at_defaults() {
        let v = json!({
            "ok": true, "peer": "12D3KooWme", "capacity": 1000, "used": 10, "allowance": 5,
            "listen": [], "frame_budget_free": 1,
            "partners": [{"peer": "12D3KooWa", "via": "button", "since": 1, "connected": true,
                          "health": "live", "score": 0.5, "held_for_them": 3, "held_for_us": 4}],
            "chunks": {"chunks": 3, "full": 2, "degraded": 1, "unreadable": 0, "unprotected": 0,
                       "held_here": 0, "held_here_bytes": 0},
        });
        let s: Status = serde_json::from_value(v).unwrap();
        assert_eq!(s.partners[0].held_for_us, 4);
        assert!(!s.chunks.as_ref().unwrap().at_target());
        let s: Status = serde_json::from_value(json!({"chunks_error": "x"})).unwrap();
        assert_eq!((s.chunks, s.chunks_error.as_deref()), (None, Some("x")));
    }

    #[test]
    fn codes_and_peers_from_a_browser_are_checked() {
        assert_eq!(clean_code(" ab\ncd \r\n").unwrap(), "abcd");
        assert!(clean_code(" \n").is_err());
        assert!(clean_code("ab<cd>é").is_err());
        assert!(clean_code(&"a".repeat(INVITATION_CHARS_MAX + 1)).is_err());
        assert!(valid_peer("12D3KooWabc"));
        assert!(!valid_peer("../x"));
        assert!(!valid_peer(""));
        assert!(!valid_peer(&"a".repeat(PEER_CHARS_MAX + 1)));
    }
}
