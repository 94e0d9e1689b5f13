//! Audits: challenges a peer cannot answer without holding a shard's bytes, and per-peer scores.
//!
//! A challenge is a fresh random 32-byte nonce and a random byte range of one shard. The answer is
//! BLAKE3 keyed by the nonce over the range's offset, length and bytes, so it cannot be
//! precomputed or replayed: only a holder of those bytes can answer. The owner does not keep its
//! shards, so it prepares challenges while it still has the bytes (at put time, or after
//! rebuilding a shard from k others) and keeps only [`Expected`] (≈ 80 bytes each). Results feed a
//! [`Scores`] table: a failure halves a peer's score, a pass recovers it slowly, so trust is lost
//! quickly and earned back over many audits.

use crate::wire::ShardId;
use crate::PeerId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Largest range one challenge covers: bounds the prover's hashing work and read.
pub const RANGE_BYTES_MAX: u32 = 64 * 1024;

/// An audit challenge as sent to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The shard challenged.
    pub shard: ShardId,
    /// Fresh randomness; the key of the proof.
    pub nonce: [u8; 32],
    /// Start of the range.
    pub offset: u64,
    /// Length of the range (1..=RANGE_BYTES_MAX).
    pub len: u32,
}

/// Why a challenge cannot be answered from the given bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuditError {
    /// The range lies outside the shard.
    #[error("audit of shard {shard}: range {offset}+{len} is outside its {shard_len} bytes")]
    OutOfRange {
        /// The shard challenged.
        shard: ShardId,
        /// Start of the challenged range.
        offset: u64,
        /// Length of the challenged range.
        len: u32,
        /// Length of the shard as held.
        shard_len: usize,
    },
    /// An empty shard cannot be audited.
    #[error("audit of shard {0}: shard is empty")]
    Empty(ShardId),
}

impl Challenge {
    /// A fresh challenge over a random range of `bytes` (the shard's contents).
    pub fn new<R: Rng + ?Sized>(
        shard: ShardId,
        shard_len: usize,
        rng: &mut R,
    ) -> Result<Self, AuditError> {
        if shard_len == 0 {
            return Err(AuditError::Empty(shard));
        }
        let max = shard_len.min(RANGE_BYTES_MAX as usize);
        let len = rng.gen_range(1..=max);
        let offset = rng.gen_range(0..=shard_len - len) as u64;
        Ok(Challenge {
            shard,
            nonce: rng.gen(),
            offset,
            len: len as u32,
        })
    }

    /// The proof over `bytes`, the full shard as the prover holds it.
    pub fn prove(&self, bytes: &[u8]) -> Result<[u8; 32], AuditError> {
        let out_of_range = || AuditError::OutOfRange {
            shard: self.shard,
            offset: self.offset,
            len: self.len,
            shard_len: bytes.len(),
        };
        let start = usize::try_from(self.offset).map_err(|_| out_of_range())?;
        let end = start
            .checked_add(self.len as usize)
            .ok_or_else(out_of_range)?;
        if self.len == 0 || self.len > RANGE_BYTES_MAX || end > bytes.len() {
            return Err(out_of_range());
        }
        let mut h = blake3::Hasher::new_keyed(&self.nonce);
        h.update(&self.offset.to_le_bytes());
        h.update(&self.len.to_le_bytes());
        h.update(&bytes[start..end]);
        Ok(*h.finalize().as_bytes())
    }

    /// Prepares a challenge and its expected answer while the owner still holds `bytes`.
    pub fn prepare<R: Rng + ?Sized>(
        shard: ShardId,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<Expected, AuditError> {
        let challenge = Self::new(shard, bytes.len(), rng)?;
        let proof = challenge.prove(bytes)?;
        Ok(Expected { challenge, proof })
    }
}

/// A prepared challenge and the only answer that passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// What to send.
    pub challenge: Challenge,
    /// What must come back.
    pub proof: [u8; 32],
}

impl Expected {
    /// Whether `answer` is the right proof (compared in constant time).
    pub fn check(&self, answer: &[u8; 32]) -> bool {
        blake3::Hash::from_bytes(self.proof) == blake3::Hash::from_bytes(*answer)
    }
}

/// One peer's audit record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerScore {
    /// Audits passed.
    pub passed: u64,
    /// Audits failed (wrong proof, or no answer in time).
    pub failed: u64,
    /// Trust in 0.0..=1.0, used by placement.
    pub score: f64,
}

/// Score a newly paired peer starts with: trusted enough to be placed on, not preferred.
pub const INITIAL_SCORE: f64 = 0.5;
/// Fraction of the remaining distance to 1.0 a passed audit recovers.
const PASS_GAIN: f64 = 0.05;
/// Factor a failed audit multiplies the score by.
const FAIL_FACTOR: f64 = 0.5;

impl Default for PeerScore {
    fn default() -> Self {
        PeerScore {
            passed: 0,
            failed: 0,
            score: INITIAL_SCORE,
        }
    }
}

/// Audit scores of all partners; plain data, persisted with the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de> + Ord"))]
pub struct Scores<P = PeerId> {
    peers: BTreeMap<P, PeerScore>,
}

impl<P> Default for Scores<P> {
    fn default() -> Self {
        Scores {
            peers: BTreeMap::new(),
        }
    }
}

impl<P: Ord + Clone> Scores<P> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an audit outcome for `peer` and returns its new score.
    pub fn record(&mut self, peer: &P, passed: bool) -> f64 {
        let s = self.peers.entry(peer.clone()).or_default();
        if passed {
            s.passed += 1;
            s.score += (1.0 - s.score) * PASS_GAIN;
        } else {
            s.failed += 1;
            s.score *= FAIL_FACTOR;
        }
        s.score
    }

    /// Checks `answer` against `expected`, records the outcome for `peer`, returns whether it passed.
    pub fn judge(&mut self, peer: &P, expected: &Expected, answer: Option<&[u8; 32]>) -> bool {
        let ok = answer.is_some_and(|a| expected.check(a));
        self.record(peer, ok);
        ok
    }

    /// The peer's trust score ([`INITIAL_SCORE`] if never audited).
    pub fn score(&self, peer: &P) -> f64 {
        self.peers.get(peer).map_or(INITIAL_SCORE, |s| s.score)
    }

    /// The peer's full record, if audited.
    pub fn get(&self, peer: &P) -> Option<&PeerScore> {
        self.peers.get(peer)
    }

    /// The same records under other names (`f` gives `None` to drop a peer): the node's
    /// `libp2p::PeerId`s to and from the text ids `partners.json` keeps.
    pub fn map_peers<Q: Ord>(&self, mut f: impl FnMut(&P) -> Option<Q>) -> Scores<Q> {
        Scores {
            peers: self
                .peers
                .iter()
                .filter_map(|(p, s)| Some((f(p)?, *s)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn shard(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen()).collect()
    }

    #[test]
    fn holder_passes_and_a_peer_without_the_bytes_fails() {
        let mut rng = StdRng::seed_from_u64(1);
        let bytes = shard(200_000, 7);
        let id = ShardId::of(&bytes);
        for _ in 0..50 {
            let e = Challenge::prepare(id, &bytes, &mut rng).unwrap();
            assert!(e.challenge.len >= 1 && e.challenge.len <= RANGE_BYTES_MAX);
            assert!(e.challenge.offset + e.challenge.len as u64 <= bytes.len() as u64);
            assert!(e.check(&e.challenge.prove(&bytes).unwrap()));
            // A peer that flipped one byte of the challenged range, or holds other bytes, fails.
            let mut bad = bytes.clone();
            bad[e.challenge.offset as usize] ^= 1;
            assert!(!e.check(&e.challenge.prove(&bad).unwrap()));
            assert!(!e.check(&e.challenge.prove(&shard(200_000, 8)).unwrap()));
        }
    }

    #[test]
    fn answers_cannot_be_replayed_across_nonces() {
        let mut rng = StdRng::seed_from_u64(2);
        let bytes = shard(10, 3);
        let id = ShardId::of(&bytes);
        let a = Challenge::prepare(id, &bytes, &mut rng).unwrap();
        let mut other = a.challenge;
        other.nonce = rng.gen();
        assert!(!a.check(&other.prove(&bytes).unwrap()));
    }

    #[test]
    fn a_truncated_shard_cannot_answer_and_says_why() {
        let bytes = shard(100, 4);
        let c = Challenge {
            shard: ShardId::of(&bytes),
            nonce: [0; 32],
            offset: 90,
            len: 10,
        };
        c.prove(&bytes).unwrap();
        let err = c.prove(&bytes[..99]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "audit of shard {}: range 90+10 is outside its 99 bytes",
                c.shard
            )
        );
        let huge = Challenge {
            offset: u64::MAX,
            ..c
        };
        assert!(huge.prove(&bytes).is_err());
        let empty = Challenge::new(c.shard, 0, &mut StdRng::seed_from_u64(0)).unwrap_err();
        assert_eq!(empty, AuditError::Empty(c.shard));
    }

    #[test]
    fn failures_drop_the_score_fast_and_passes_earn_it_back_slowly() {
        let mut s = Scores::new();
        let p = PeerId::new("peer");
        assert_eq!(s.score(&p), INITIAL_SCORE);
        let mut rng = StdRng::seed_from_u64(5);
        let bytes = shard(1000, 5);
        let e = Challenge::prepare(ShardId::of(&bytes), &bytes, &mut rng).unwrap();
        for _ in 0..20 {
            assert!(s.judge(&p, &e, Some(&e.proof)));
        }
        let good = s.score(&p);
        assert!(good > 0.8, "{good}");
        assert!(!s.judge(&p, &e, Some(&[0; 32])));
        assert!(!s.judge(&p, &e, None), "no answer counts as a failure");
        assert!(s.score(&p) < good / 3.0);
        assert_eq!(s.get(&p).map(|r| (r.passed, r.failed)), Some((20, 2)));
        // Text persistence may round the last bit of a float; counts survive exactly.
        let back: Scores = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.get(&p).map(|r| (r.passed, r.failed)), Some((20, 2)));
        assert!((back.score(&p) - s.score(&p)).abs() < 1e-12);
    }
}
