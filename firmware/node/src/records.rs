//! How shards are named on the network and what the owner remembers of each chunk.
//!
//! A shard travels under a key derived from its chunk id and index, so a new plug restoring
//! from the recovery key alone can ask partners for shards it has no record of. The holder
//! checks that the bytes are a well-formed vault shard of exactly that chunk and index; the
//! owner also records each shard's content hash, so a partner that returns other bytes (even
//! well-formed ones) is caught and scored down.
//!
//! A holder keeps each owner's shards apart: a shard is stored under [`held_id`] of the owner
//! the request was made for and its key, so one owner's request can neither read nor block
//! another owner's shard of the same key (a partner that learned a chunk id cannot squat the
//! keys of its other shards: its puts land in its own scope).
//!
//! Placement records (one per chunk: who holds which index, the content hashes, one prepared
//! audit per shard) live in the node's own chunk store under [`OWN_RECORDS`]; RAM holds only
//! chunks whose shards are still being placed. No request of a partner reaches them: partners'
//! requests address [`held_id`]s only. A plug restored from the recovery key has none; it
//! rebuilds them from what partners hold for its owner (see `owner`).

use cairn_store::{OwnerId, ShardId as StoreId};
use cairn_vault::shard::{decode_shard, ShardHeader};
use serde::{Deserialize, Serialize};

use crate::audit::{Challenge, Expected};
use crate::wire::ShardId;

/// The network key of shard `index` of `chunk`.
pub fn shard_key(chunk: &[u8; 32], index: u8) -> ShardId {
    let mut m = [0u8; 33];
    m[..32].copy_from_slice(chunk);
    m[32] = index;
    ShardId(blake3::derive_key("cairn shard key v1", &m))
}

/// Checks that `data` is a well-formed vault shard stored under `key`; returns its header.
pub fn check_vault_shard(key: &ShardId, data: &[u8]) -> Result<ShardHeader, String> {
    let (h, _) = decode_shard(data).map_err(|e| format!("shard {key}: not a valid shard: {e}"))?;
    if shard_key(&h.chunk.0, h.index) != *key {
        return Err(format!(
            "shard {key}: bytes belong to shard {}.{}, not to this id",
            h.chunk, h.index
        ));
    }
    Ok(h)
}

/// The chunk-store id under which a holder keeps the shard `key` of `owner` (an owner key).
pub fn held_id(owner: &[u8; 32], key: &ShardId) -> StoreId {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(owner);
    m[32..].copy_from_slice(&key.0);
    StoreId(blake3::derive_key("cairn held shard v2", &m))
}

/// The chunk-store owner id of the shards a partner put (whose books they count in).
pub fn owner_of(peer: &libp2p::PeerId) -> OwnerId {
    OwnerId(blake3::derive_key("cairn shard owner v1", &peer.to_bytes()))
}

/// The chunk-store owner of this node's own placement records.
pub const OWN_RECORDS: OwnerId = OwnerId([0xfe; 32]);

/// The holder a slot names when this plug keeps the shard in its own chunk store: no partner
/// could take it (a new plug, or fewer partners than the code's n). Not a peer id, so nothing
/// that asks a peer for a shard can mistake it for one; the repair round moves such shards out.
pub const HERE: &str = "here";

/// The chunk-store owner of this plug's own shards kept here (see [`HERE`]).
pub const OWN_SHARDS: OwnerId = OwnerId([0xfd; 32]);

/// The chunk-store id of shard `index` of `chunk` kept here. Not its network key: a partner may
/// store a copy of that very shard with us under the network key (it holds a valid one), and
/// the two must neither collide nor be reachable by a partner's request.
pub fn local_id(chunk: &[u8; 32], index: u8) -> StoreId {
    let mut m = [0u8; 33];
    m[..32].copy_from_slice(chunk);
    m[32] = index;
    StoreId(blake3::derive_key("cairn local shard v1", &m))
}

/// The chunk-store id of `chunk`'s placement record.
pub fn record_id(chunk: &[u8; 32]) -> StoreId {
    StoreId(blake3::derive_key("cairn placement record v1", chunk))
}

/// Lowercase hex (a slice, so callers' arrays and vectors need no conversion).
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Parses 64 hex digits.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A prepared audit: a challenge and the only proof that passes (hex fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRec {
    nonce: String,
    offset: u64,
    len: u32,
    proof: String,
}

impl AuditRec {
    /// Prepares one from the shard's bytes (while the owner still has them).
    pub fn prepare(key: ShardId, bytes: &[u8]) -> Option<Self> {
        let e = Challenge::prepare(key, bytes, &mut rand::thread_rng()).ok()?;
        Some(AuditRec {
            nonce: hex(&e.challenge.nonce),
            offset: e.challenge.offset,
            len: e.challenge.len,
            proof: hex(&e.proof),
        })
    }

    /// Back to the challenge for `key`.
    pub fn expected(&self, key: ShardId) -> Option<Expected> {
        Some(Expected {
            challenge: Challenge {
                shard: key,
                nonce: unhex32(&self.nonce)?,
                offset: self.offset,
                len: self.len,
            },
            proof: unhex32(&self.proof)?,
        })
    }
}

/// Where one shard of a chunk is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The holder's peer id, or [`HERE`].
    pub peer: String,
    /// BLAKE3 of the shard's bytes (hex).
    pub hash: String,
    /// Shard length in bytes.
    pub len: u32,
    /// One unused prepared audit, if any.
    pub audit: Option<AuditRec>,
    /// The holder failed an audit of it (wrong proof, wrong bytes) or said it no longer has
    /// it (its store found the copy damaged): it counts as lost and the next repair round
    /// places it anew.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bad: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Slot {
    /// Whether this plug keeps the shard itself (see [`HERE`]).
    pub fn is_here(&self) -> bool {
        self.peer == HERE
    }
}

/// What the owner remembers of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The owner key (hex) the shards are held for.
    pub owner: String,
    /// The chunk id (hex).
    pub chunk: String,
    /// Data shards.
    pub k: u8,
    /// All shards.
    pub n: u8,
    /// Unix seconds until which holders keep the shards (renewed by audits).
    pub lease_until: u64,
    /// Slot per index (`None`: not placed, or lost and not yet repaired).
    pub slots: Vec<Option<Slot>>,
}

impl ChunkRecord {
    /// An empty record of `owner`'s k-of-n chunk.
    pub fn new(owner: &[u8; 32], chunk: &[u8; 32], k: u8, n: u8, lease_until: u64) -> Self {
        ChunkRecord {
            owner: hex(owner),
            chunk: hex(chunk),
            k,
            n,
            lease_until,
            slots: vec![None; usize::from(n)],
        }
    }

    /// The chunk id.
    pub fn chunk_id(&self) -> Option<[u8; 32]> {
        unhex32(&self.chunk)
    }

    /// The owner key.
    pub fn owner_key(&self) -> Option<[u8; 32]> {
        unhex32(&self.owner)
    }

    /// Serialized form for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }

    /// Parses a stored record; a damaged one is an error naming the chunk store id.
    pub fn decode(bytes: &[u8], id: &StoreId) -> Result<Self, String> {
        let r: ChunkRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("placement record {id}: {e}"))?;
        if r.slots.len() != usize::from(r.n)
            || r.k == 0
            || r.k >= r.n
            || r.chunk_id().is_none()
            || r.owner_key().is_none()
        {
            return Err(format!("placement record {id}: inconsistent k/n/slots"));
        }
        Ok(r)
    }
}

/// A well-formed vault shard for unit tests: shard `index` of 2-of-`n` chunk `chunk`, its body
/// 32 bytes of `fill`.
#[cfg(test)]
pub(crate) fn test_shard(chunk: [u8; 32], index: u8, n: u8, fill: u8) -> Vec<u8> {
    use cairn_vault::seal::AeadKind;
    use cairn_vault::shard::{encode_shard, ShardAuth};
    let h = ShardHeader {
        aead: AeadKind::ChaCha20Poly1305,
        k: 2,
        n,
        index,
        sealed_len: 64,
        chunk: cairn_vault::ChunkId(chunk),
    };
    let auth = ShardAuth::new(&[0; 32], &h.chunk, vec![[0; 32]; usize::from(h.n)]);
    let mut out = Vec::new();
    encode_shard(&h, &[fill; 32], &auth, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(chunk: [u8; 32], index: u8) -> Vec<u8> {
        test_shard(chunk, index, 4, 5)
    }

    #[test]
    fn holders_accept_only_the_shard_the_key_names() {
        let s = shard([1; 32], 2);
        let key = shard_key(&[1; 32], 2);
        assert_eq!(check_vault_shard(&key, &s).unwrap().index, 2);
        let e = check_vault_shard(&shard_key(&[1; 32], 3), &s).unwrap_err();
        assert!(e.contains("belong to shard"), "{e}");
        let mut bad = s.clone();
        bad[60] ^= 1;
        let e = check_vault_shard(&key, &bad).unwrap_err();
        assert!(e.contains("not a valid shard"), "{e}");
        assert!(check_vault_shard(&key, b"").is_err());
    }

    #[test]
    fn holders_keep_each_owners_shards_apart_and_records_out_of_reach() {
        let key = shard_key(&[1; 32], 0);
        assert_ne!(held_id(&[1; 32], &key), held_id(&[2; 32], &key));
        assert_ne!(held_id(&[1; 32], &key), record_id(&[1; 32]));
        assert_ne!(held_id(&[1; 32], &key).0, key.0);
    }

    #[test]
    fn records_round_trip_and_damage_is_reported() {
        let mut r = ChunkRecord::new(&[9; 32], &[3; 32], 4, 8, 99);
        let s = shard([3; 32], 0);
        r.slots[0] = Some(Slot {
            peer: "12D3KooW".into(),
            hash: hex(blake3::hash(&s).as_bytes()),
            len: s.len() as u32,
            audit: AuditRec::prepare(shard_key(&[3; 32], 0), &s),
            bad: false,
        });
        let id = record_id(&[3; 32]);
        assert_eq!(ChunkRecord::decode(&r.encode(), &id).unwrap(), r);
        let a = r.slots[0].as_ref().unwrap().audit.as_ref().unwrap();
        let e = a.expected(shard_key(&[3; 32], 0)).unwrap();
        assert!(e.check(&e.challenge.prove(&s).unwrap()));
        assert!(ChunkRecord::decode(b"{", &id)
            .unwrap_err()
            .contains("placement record"));
        let mut bad = r.clone();
        bad.slots.pop();
        assert!(ChunkRecord::decode(&bad.encode(), &id).is_err());
    }
}
