//! Repair: decide when a chunk's redundancy must be rebuilt, from which shards, and where not to
//! put the new ones.
//!
//! The owner of a chunk knows which peer holds which of its `n` shards ([`ChunkState`]) and how
//! healthy each peer is ([`PeerHealth`], told by a [`PeerTracker`]). A peer that has not been seen
//! for a short while is [`PeerHealth::Suspect`]: a plug rebooting or a home line dropping for an
//! hour must not cost a rebuild, so its shards still count. Past the grace period, or once its
//! audit score falls below the policy's minimum, the peer is [`PeerHealth::Gone`] and its shards
//! are lost. When fewer than the threshold's shards remain, [`plan`] names the shards to rebuild
//! (all the lost ones: repair restores full redundancy, it does not stop at the threshold), exactly
//! `k` reachable shards to rebuild them from (data shards first: decoding from them is a copy), and
//! the peers that must not receive a new shard because they already hold one.
//!
//! Pure logic: no clock, no network. The node and the churn simulation ([`crate::sim`]) run the
//! same code.

use crate::audit::Scores;
use crate::placement::Candidate;
use crate::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One shard of a chunk and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding<P = PeerId> {
    /// The shard's index in the code: `0..k` data shards, `k..n` parity.
    pub index: u8,
    /// The peer holding it.
    pub peer: P,
}

/// What the owner knows of one chunk's shards.
///
/// Tolerated oddities, with defined meaning (see [`plan`]): an index held by several peers (a
/// repair in progress) counts once, by its healthiest holder; an index `>= n` is ignored; a peer
/// holding several indices counts for one of them only (its lowest), so the others are rebuilt
/// elsewhere: one peer going away must never cost two shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState<P = PeerId> {
    /// Shards needed to rebuild the chunk.
    pub k: u8,
    /// Shards made of it.
    pub n: u8,
    /// Who holds which shard.
    pub holdings: Vec<Holding<P>>,
}

/// How a peer stands, as far as repair is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerHealth {
    /// Its shards are lost: unseen past the grace period, failing audits, or unknown.
    Gone,
    /// Unreachable but within the grace period: counts as live for the threshold, but is not used
    /// as a repair source.
    Suspect,
    /// Seen recently and trusted.
    Live,
}

/// When to repair.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Repair when fewer than this many shards are live (Live or Suspect). Values above `n` act
    /// as `n`; values at or below `k` only ever detect a loss once it is too late.
    pub threshold: u8,
    /// How long an unreachable peer keeps its shards counted.
    pub grace_secs: u64,
    /// Audit score below which a peer counts as gone.
    pub min_score: f64,
}

/// Grace period of [`Policy::for_code`]: a day covers an overnight power cut or a router reboot
/// while bounding how long a chunk runs with reduced redundancy.
pub const DEFAULT_GRACE_SECS: u64 = 24 * 3600;
/// Minimum score of [`Policy::for_code`]: a new peer (score 0.5) drops below it after two failed
/// audits in a row, a long-trusted one (≈1.0) after three.
pub const DEFAULT_MIN_SCORE: f64 = 0.2;

impl Policy {
    /// Sensible defaults for a `k`-of-`n` code: repair as soon as one shard is lost for good
    /// (threshold `n`), a day of grace, minimum score 0.2.
    pub fn for_code(_k: u8, n: u8) -> Self {
        Policy {
            threshold: n,
            grace_secs: DEFAULT_GRACE_SECS,
            min_score: DEFAULT_MIN_SCORE,
        }
    }
}

/// What to do for one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan<P = PeerId> {
    /// Shard indices to rebuild and place on new peers, ascending.
    pub rebuild: Vec<u8>,
    /// Exactly `k` holdings on live peers to fetch, data shards (index `< k`) first.
    pub sources: Vec<Holding<P>>,
    /// Peers still holding a live or suspect shard of this chunk: new shards must not go there.
    pub keep: Vec<P>,
}

impl<P: Ord + Clone> RepairPlan<P> {
    /// The candidates that may receive this plan's new shards: not a peer in [`Self::keep`], nor
    /// on a public address of one (`ip_of` tells a kept peer's address, where known), so one
    /// household going offline still costs at most one shard.
    pub fn eligible(
        &self,
        candidates: &[Candidate<P>],
        ip_of: impl Fn(&P) -> Option<IpAddr>,
    ) -> Vec<Candidate<P>> {
        let kept_ips: Vec<IpAddr> = self.keep.iter().filter_map(&ip_of).collect();
        candidates
            .iter()
            .filter(|c| !self.keep.contains(&c.peer))
            .filter(|c| c.public_ip.is_none_or(|ip| !kept_ips.contains(&ip)))
            .cloned()
            .collect()
    }
}

/// Why a chunk cannot be repaired now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepairError {
    /// Fewer than `k` shards survive anywhere: the chunk is lost.
    #[error("chunk has only {live} live shards of the {k} needed: it cannot be rebuilt")]
    Unrecoverable {
        /// Shards that survive anywhere.
        live: usize,
        /// Shards needed to rebuild the chunk.
        k: u8,
    },
    /// Enough shards survive, but too few of their holders are reachable now to fetch `k`; repair
    /// must wait for a suspect peer to come back (or to be declared gone).
    #[error("chunk has only {reachable} reachable shards of the {k} needed (and {suspect} on unreachable peers): repair must wait")]
    Unreachable {
        /// Surviving shards on reachable holders.
        reachable: usize,
        /// Surviving shards on suspect (unreachable) holders.
        suspect: usize,
        /// Shards needed to rebuild the chunk.
        k: u8,
    },
    /// The code itself is impossible: `k` must be in `1..=n`.
    #[error("chunk has an impossible {k}-of-{n} code: k must be between 1 and n")]
    BadCode {
        /// Shards needed to rebuild a chunk.
        k: u8,
        /// Shards a chunk is coded into.
        n: u8,
    },
}

/// Decides whether `chunk` needs repair under `policy`, given each holder's `health`.
///
/// `Ok(None)` when nothing needs doing. Works in `O(holdings)` with a few words per holding.
pub fn plan<P: Ord + Clone>(
    chunk: &ChunkState<P>,
    health: impl Fn(&P) -> PeerHealth,
    policy: &Policy,
) -> Result<Option<RepairPlan<P>>, RepairError> {
    let (k, n) = (chunk.k, chunk.n);
    if k == 0 || k > n {
        return Err(RepairError::BadCode { k, n });
    }

    // Holdings on peers not gone, in index order (stable: among equal holders the listed order
    // decides), with out-of-code indices dropped.
    let mut held: Vec<(&Holding<P>, PeerHealth)> = chunk
        .holdings
        .iter()
        .filter(|h| h.index < n)
        .map(|h| (h, health(&h.peer)))
        .filter(|(_, hh)| *hh != PeerHealth::Gone)
        .collect();
    held.sort_by_key(|(h, _)| h.index);

    let mut keep: Vec<P> = Vec::new();
    for (h, _) in &held {
        if !keep.contains(&h.peer) {
            keep.push(h.peer.clone());
        }
    }

    // Greedily, index by index: its healthiest holder not already counted for a lower index, so
    // each peer counts for one shard only.
    let mut best: BTreeMap<u8, (&Holding<P>, PeerHealth)> = BTreeMap::new();
    let mut counted: Vec<&P> = Vec::new();
    for group in held.chunk_by(|a, b| a.0.index == b.0.index) {
        let pick = group
            .iter()
            .filter(|(h, _)| !counted.contains(&&h.peer))
            .fold(
                None,
                |acc: Option<&(&Holding<P>, PeerHealth)>, cur| match acc {
                    Some(a) if a.1 >= cur.1 => Some(a),
                    _ => Some(cur),
                },
            );
        if let Some(&(h, hh)) = pick {
            counted.push(&h.peer);
            best.insert(h.index, (h, hh));
        }
    }

    let live = best.len();
    let threshold = policy.threshold.min(n) as usize;
    if live >= threshold {
        return Ok(None);
    }
    if live < k as usize {
        return Err(RepairError::Unrecoverable { live, k });
    }
    let reachable: Vec<&Holding<P>> = best
        .values()
        .filter(|(_, hh)| *hh == PeerHealth::Live)
        .map(|(h, _)| *h)
        .collect();
    if reachable.len() < k as usize {
        return Err(RepairError::Unreachable {
            reachable: reachable.len(),
            suspect: live - reachable.len(),
            k,
        });
    }
    // `best` is ordered by index, so data shards (index < k) come first.
    let sources = reachable.into_iter().take(k as usize).cloned().collect();
    let rebuild = (0..n).filter(|i| !best.contains_key(i)).collect();
    Ok(Some(RepairPlan {
        rebuild,
        sources,
        keep,
    }))
}

/// How long after its last sign of life a peer stays [`PeerHealth::Live`] by default: a few
/// missed pings (libp2p's ping runs every 15 s) must not stop it being a repair source, but a
/// peer gone for minutes should not be asked for shards.
pub const DEFAULT_LIVE_WINDOW_SECS: u64 = 120;

/// Tracks when each peer was last seen and its audit score, and tells its health.
///
/// Memory: one map entry per known peer (its id, a timestamp, an audit record).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de> + Ord"))]
pub struct PeerTracker<P = PeerId> {
    /// Past this many seconds unseen, a peer is gone.
    grace_secs: u64,
    /// Below this audit score, a peer is gone.
    min_score: f64,
    /// Within this many seconds of being seen, a peer is live (else suspect).
    live_window_secs: u64,
    /// Last sign of life per peer, in the caller's seconds.
    last_seen: BTreeMap<P, u64>,
    /// Audit outcomes per peer.
    scores: Scores<P>,
}

impl<P: Ord + Clone> PeerTracker<P> {
    /// A tracker with the given grace period and minimum score, and the default live window
    /// ([`DEFAULT_LIVE_WINDOW_SECS`], capped at the grace period).
    pub fn new(grace_secs: u64, min_score: f64) -> Self {
        PeerTracker {
            grace_secs,
            min_score,
            live_window_secs: DEFAULT_LIVE_WINDOW_SECS.min(grace_secs),
            last_seen: BTreeMap::new(),
            scores: Scores::new(),
        }
    }

    /// A tracker with `policy`'s grace period and minimum score.
    pub fn for_policy(policy: &Policy) -> Self {
        Self::new(policy.grace_secs, policy.min_score)
    }

    /// Sets how long after being seen a peer counts as live (capped at the grace period), for
    /// callers that see peers at a coarser rhythm than pings.
    pub fn with_live_window(mut self, secs: u64) -> Self {
        self.live_window_secs = secs.min(self.grace_secs);
        self
    }

    /// Uses `scores` (e.g. persisted with the ledger) as the audit record.
    pub fn with_scores(mut self, scores: Scores<P>) -> Self {
        self.scores = scores;
        self
    }

    /// Records a sign of life from `peer` at `now_secs` (an earlier time than already known is
    /// ignored, so late reports cannot make a peer look older).
    pub fn seen(&mut self, peer: &P, now_secs: u64) {
        let t = self.last_seen.entry(peer.clone()).or_insert(now_secs);
        *t = (*t).max(now_secs);
    }

    /// Records an audit outcome for `peer`.
    pub fn audit(&mut self, peer: &P, passed: bool) {
        self.scores.record(peer, passed);
    }

    /// `peer`'s health at `now_secs`: gone if never seen, unseen for longer than the grace
    /// period, or scored below the minimum; live if seen within the live window; else suspect.
    pub fn health(&self, peer: &P, now_secs: u64) -> PeerHealth {
        let Some(&seen) = self.last_seen.get(peer) else {
            return PeerHealth::Gone;
        };
        if self.score(peer) < self.min_score {
            return PeerHealth::Gone;
        }
        let unseen = now_secs.saturating_sub(seen);
        if unseen <= self.live_window_secs {
            PeerHealth::Live
        } else if unseen <= self.grace_secs {
            PeerHealth::Suspect
        } else {
            PeerHealth::Gone
        }
    }

    /// `peer`'s audit score (the initial score if never audited).
    pub fn score(&self, peer: &P) -> f64 {
        self.scores.score(peer)
    }

    /// When `peer` was last seen, if ever.
    pub fn last_seen(&self, peer: &P) -> Option<u64> {
        self.last_seen.get(peer).copied()
    }

    /// The audit record of every peer.
    pub fn scores(&self) -> &Scores<P> {
        &self.scores
    }

    /// Tells the tracker its owner was not watching for `down_secs` (the node was off or
    /// restarting): nobody ages during that time, so an owner's own outage does not make every
    /// partner gone at once and trigger needless repairs.
    pub fn resume(&mut self, down_secs: u64) {
        for t in self.last_seen.values_mut() {
            *t = t.saturating_add(down_secs);
        }
    }

    /// Peers known to the tracker (seen at least once and not forgotten), in id order.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.last_seen.keys()
    }

    /// Drops everything known about `peer` (it is no longer a partner); it is then gone.
    pub fn forget(&mut self, peer: &P) {
        self.last_seen.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn p(name: &str) -> PeerId {
        PeerId::new(name)
    }

    /// A 4-of-8 chunk with shard i on peer "p{i}".
    fn chunk48() -> ChunkState {
        ChunkState {
            k: 4,
            n: 8,
            holdings: (0..8)
                .map(|i| Holding {
                    index: i,
                    peer: p(&format!("p{i}")),
                })
                .collect(),
        }
    }

    fn health_of(map: &[(&str, PeerHealth)]) -> impl Fn(&PeerId) -> PeerHealth {
        let m: HashMap<PeerId, PeerHealth> = map.iter().map(|(n, h)| (p(n), *h)).collect();
        move |peer| m.get(peer).copied().unwrap_or(PeerHealth::Live)
    }

    fn policy() -> Policy {
        Policy::for_code(4, 8)
    }

    #[test]
    fn nothing_to_do_when_all_shards_are_live_or_suspect() {
        assert_eq!(plan(&chunk48(), health_of(&[]), &policy()), Ok(None));
        let suspects = health_of(&[("p0", PeerHealth::Suspect), ("p5", PeerHealth::Suspect)]);
        assert_eq!(plan(&chunk48(), suspects, &policy()), Ok(None));
    }

    #[test]
    fn one_loss_rebuilds_that_shard_from_data_shards() {
        let h = health_of(&[("p6", PeerHealth::Gone)]);
        let got = plan(&chunk48(), h, &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![6]);
        let idx: Vec<u8> = got.sources.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        assert_eq!(got.sources[2].peer, p("p2"));
        let keep: Vec<_> = [0, 1, 2, 3, 4, 5, 7]
            .iter()
            .map(|i| p(&format!("p{i}")))
            .collect();
        assert_eq!(got.keep, keep);
    }

    #[test]
    fn lost_data_shards_are_replaced_by_parity_sources() {
        let h = health_of(&[("p1", PeerHealth::Gone), ("p3", PeerHealth::Gone)]);
        let got = plan(&chunk48(), h, &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![1, 3]);
        let idx: Vec<u8> = got.sources.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![0, 2, 4, 5]);
    }

    #[test]
    fn a_lower_threshold_tolerates_losses_then_restores_full_redundancy() {
        let pol = Policy {
            threshold: 6,
            ..policy()
        };
        let one = health_of(&[("p7", PeerHealth::Gone)]);
        assert_eq!(plan(&chunk48(), one, &pol), Ok(None));
        let two = health_of(&[("p7", PeerHealth::Gone), ("p6", PeerHealth::Gone)]);
        assert_eq!(plan(&chunk48(), two, &pol), Ok(None));
        let three = health_of(&[
            ("p7", PeerHealth::Gone),
            ("p6", PeerHealth::Gone),
            ("p0", PeerHealth::Gone),
        ]);
        let got = plan(&chunk48(), three, &pol).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![0, 6, 7]);
        // A threshold above n acts as n.
        let high = Policy {
            threshold: 200,
            ..policy()
        };
        assert_eq!(plan(&chunk48(), health_of(&[]), &high), Ok(None));
    }

    #[test]
    fn n_minus_k_losses_still_rebuild_from_the_last_k() {
        let gone: Vec<(&str, PeerHealth)> = ["p0", "p2", "p4", "p6"]
            .iter()
            .map(|n| (*n, PeerHealth::Gone))
            .collect();
        let got = plan(&chunk48(), health_of(&gone), &policy())
            .unwrap()
            .unwrap();
        assert_eq!(got.rebuild, vec![0, 2, 4, 6]);
        let idx: Vec<u8> = got.sources.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![1, 3, 5, 7]);
        assert_eq!(got.keep, vec![p("p1"), p("p3"), p("p5"), p("p7")]);
    }

    #[test]
    fn one_loss_beyond_n_minus_k_is_unrecoverable() {
        let gone: Vec<(&str, PeerHealth)> = ["p0", "p2", "p4", "p6", "p7"]
            .iter()
            .map(|n| (*n, PeerHealth::Gone))
            .collect();
        let err = plan(&chunk48(), health_of(&gone), &policy()).unwrap_err();
        assert_eq!(err, RepairError::Unrecoverable { live: 3, k: 4 });
        assert_eq!(
            err.to_string(),
            "chunk has only 3 live shards of the 4 needed: it cannot be rebuilt"
        );
        // Missing holdings count the same as gone peers.
        let mut c = chunk48();
        c.holdings.truncate(2);
        assert_eq!(
            plan(&c, health_of(&[]), &policy()),
            Err(RepairError::Unrecoverable { live: 2, k: 4 })
        );
    }

    #[test]
    fn suspect_peers_are_never_sources() {
        let h = health_of(&[
            ("p7", PeerHealth::Gone),
            ("p0", PeerHealth::Suspect),
            ("p2", PeerHealth::Suspect),
        ]);
        let got = plan(&chunk48(), h, &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![7], "suspect shards are not rebuilt");
        let idx: Vec<u8> = got.sources.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![1, 3, 4, 5]);
        assert!(got.keep.contains(&p("p0")) && got.keep.contains(&p("p2")));
        assert!(!got.keep.contains(&p("p7")));

        // Too few reachable sources: wait, do not declare the chunk lost.
        let h = health_of(&[
            ("p7", PeerHealth::Gone),
            ("p6", PeerHealth::Gone),
            ("p0", PeerHealth::Suspect),
            ("p1", PeerHealth::Suspect),
            ("p2", PeerHealth::Suspect),
        ]);
        let err = plan(&chunk48(), h, &policy()).unwrap_err();
        assert_eq!(
            err,
            RepairError::Unreachable {
                reachable: 3,
                suspect: 3,
                k: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "chunk has only 3 reachable shards of the 4 needed (and 3 on unreachable peers): repair must wait"
        );
    }

    #[test]
    fn a_low_score_peer_counts_as_gone() {
        let mut t = PeerTracker::for_policy(&policy());
        for i in 0..8 {
            t.seen(&p(&format!("p{i}")), 1000);
        }
        let cheat = p("p3");
        t.audit(&cheat, false);
        assert_eq!(
            t.health(&cheat, 1000),
            PeerHealth::Live,
            "one failure: 0.25"
        );
        t.audit(&cheat, false);
        assert!(t.score(&cheat) < DEFAULT_MIN_SCORE);
        assert_eq!(t.health(&cheat, 1000), PeerHealth::Gone);
        let got = plan(&chunk48(), |peer| t.health(peer, 1000), &policy())
            .unwrap()
            .unwrap();
        assert_eq!(got.rebuild, vec![3]);
        assert!(!got.keep.contains(&cheat));
        assert!(got.sources.iter().all(|s| s.peer != cheat));
    }

    #[test]
    fn duplicate_holdings_count_once_by_their_healthiest_holder() {
        // Index 2 also on "q" (a repair in progress), its first holder gone: still complete.
        let mut c = chunk48();
        c.holdings.push(Holding {
            index: 2,
            peer: p("q"),
        });
        let h = health_of(&[("p2", PeerHealth::Gone)]);
        assert_eq!(plan(&c, &h, &policy()), Ok(None));
        // Both holders of index 2 gone: index 2 is rebuilt once.
        let h = health_of(&[("p2", PeerHealth::Gone), ("q", PeerHealth::Gone)]);
        let got = plan(&c, h, &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![2]);
        // A suspect first holder and a live second one: the live one is the source.
        let h = health_of(&[("p2", PeerHealth::Suspect), ("p0", PeerHealth::Gone)]);
        let got = plan(&c, h, &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![0]);
        assert!(got.sources.contains(&Holding {
            index: 2,
            peer: p("q")
        }));
        assert!(got.keep.contains(&p("p2")) && got.keep.contains(&p("q")));
    }

    #[test]
    fn a_peer_holding_two_shards_counts_for_one() {
        let mut c = chunk48();
        c.holdings[5].peer = p("p1");
        let got = plan(&c, health_of(&[]), &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![5], "the second shard moves elsewhere");
        assert_eq!(got.keep.iter().filter(|k| **k == p("p1")).count(), 1);
        assert!(got.keep.contains(&p("p1")));
    }

    #[test]
    fn out_of_code_indices_are_ignored_and_impossible_codes_refused() {
        let mut c = chunk48();
        c.holdings[7].index = 9;
        let got = plan(&c, health_of(&[]), &policy()).unwrap().unwrap();
        assert_eq!(got.rebuild, vec![7]);
        assert!(!got.keep.contains(&p("p7")));

        for (k, n) in [(0, 8), (9, 8), (1, 0)] {
            let c = ChunkState {
                k,
                n,
                holdings: vec![],
            };
            assert_eq!(
                plan(&c, health_of(&[]), &policy()),
                Err(RepairError::BadCode { k, n })
            );
        }
        assert_eq!(
            RepairError::BadCode { k: 9, n: 8 }.to_string(),
            "chunk has an impossible 9-of-8 code: k must be between 1 and n"
        );
    }

    #[test]
    fn new_shards_avoid_kept_peers_and_their_addresses() {
        let h = health_of(&[("p6", PeerHealth::Gone), ("p7", PeerHealth::Suspect)]);
        let got = plan(&chunk48(), h, &policy()).unwrap().unwrap();
        let cand = |name: &str, ip: Option<[u8; 4]>| Candidate {
            peer: p(name),
            public_ip: ip.map(IpAddr::from),
            free_bytes: 1 << 30,
            trust: 1.0,
        };
        let cands = vec![
            cand("p1", Some([1, 0, 0, 1])),
            cand("p7", None),
            cand("housemate-of-p2", Some([1, 0, 0, 2])),
            cand("fresh", Some([1, 0, 0, 9])),
            cand("unknown-ip", None),
        ];
        let ip_of = |peer: &PeerId| match peer.0.as_str() {
            "p1" => Some(IpAddr::from([1, 0, 0, 1])),
            "p2" => Some(IpAddr::from([1, 0, 0, 2])),
            _ => None,
        };
        let names: Vec<String> = got
            .eligible(&cands, ip_of)
            .into_iter()
            .map(|c| c.peer.0)
            .collect();
        assert_eq!(names, vec!["fresh", "unknown-ip"]);
    }

    #[test]
    fn tracker_moves_from_live_to_suspect_to_gone() {
        let mut t = PeerTracker::new(3600, 0.2);
        let a = p("a");
        assert_eq!(t.health(&a, 0), PeerHealth::Gone, "unknown peer");
        t.seen(&a, 100);
        assert_eq!(t.health(&a, 100), PeerHealth::Live);
        assert_eq!(
            t.health(&a, 100 + DEFAULT_LIVE_WINDOW_SECS),
            PeerHealth::Live
        );
        assert_eq!(
            t.health(&a, 101 + DEFAULT_LIVE_WINDOW_SECS),
            PeerHealth::Suspect
        );
        assert_eq!(t.health(&a, 3700), PeerHealth::Suspect);
        assert_eq!(t.health(&a, 3701), PeerHealth::Gone);
        // A late report of an older sighting does not age the peer.
        t.seen(&a, 3000);
        t.seen(&a, 50);
        assert_eq!(t.last_seen(&a), Some(3000));
        assert_eq!(t.health(&a, 3000), PeerHealth::Live);
        // A clock that runs backwards does not make a peer gone.
        assert_eq!(t.health(&a, 10), PeerHealth::Live);
        // The owner itself was off for 2000 s of that time: the peer does not age meanwhile.
        assert_eq!(t.health(&a, 3000 + 3700), PeerHealth::Gone);
        t.resume(2000);
        assert_eq!(t.health(&a, 3000 + 3700), PeerHealth::Suspect);
        assert_eq!(t.peers().collect::<Vec<_>>(), vec![&a]);
        t.forget(&a);
        assert_eq!(t.health(&a, 3000), PeerHealth::Gone);
        assert_eq!(t.peers().count(), 0);

        let t = PeerTracker::new(3600, 0.2).with_live_window(7200);
        let mut t = t;
        t.seen(&a, 0);
        assert_eq!(
            t.health(&a, 3600),
            PeerHealth::Live,
            "window capped at grace"
        );
        assert_eq!(t.health(&a, 3601), PeerHealth::Gone);
    }

    #[test]
    fn tracker_scores_follow_audits_and_survive_persistence() {
        let mut t = PeerTracker::new(3600, 0.2);
        let a = p("a");
        assert_eq!(t.score(&a), crate::audit::INITIAL_SCORE);
        for _ in 0..10 {
            t.audit(&a, true);
        }
        assert!(t.score(&a) > crate::audit::INITIAL_SCORE);
        t.seen(&a, 5);
        let back: PeerTracker = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.last_seen(&a), Some(5));
        assert_eq!(back.scores().get(&a).map(|s| s.passed), Some(10));
        let seeded = PeerTracker::new(3600, 0.9).with_scores(t.scores().clone());
        let mut seeded = seeded;
        seeded.seen(&a, 0);
        assert_eq!(seeded.health(&a, 0), PeerHealth::Gone, "score below 0.9");
    }

    fn health_from(code: u8) -> PeerHealth {
        match code % 3 {
            0 => PeerHealth::Gone,
            1 => PeerHealth::Suspect,
            _ => PeerHealth::Live,
        }
    }

    proptest::proptest! {
        /// Whatever the books and the peers' health, a plan is consistent: it rebuilds only
        /// indices no counted peer holds, fetches exactly k distinct indices from live peers,
        /// and keeps exactly the peers not gone.
        #[test]
        fn plans_are_consistent(
            k in 1u8..6, extra in 0u8..6,
            holdings in proptest::collection::vec((0u8..14, 0u8..10), 0..20),
            healths in proptest::collection::vec(0u8..3, 10),
            threshold in 0u8..14,
        ) {
            let n = k + extra;
            let c = ChunkState {
                k,
                n,
                holdings: holdings
                    .iter()
                    .map(|&(index, peer)| Holding { index, peer: p(&format!("p{peer}")) })
                    .collect(),
            };
            let health = |peer: &PeerId| {
                let i: usize = peer.0[1..].parse().unwrap();
                health_from(healths[i])
            };
            let pol = Policy { threshold, ..Policy::for_code(k, n) };
            let not_gone: Vec<&Holding> = c
                .holdings
                .iter()
                .filter(|h| h.index < n && health(&h.peer) != PeerHealth::Gone)
                .collect();
            match plan(&c, health, &pol) {
                Ok(None) => {}
                Ok(Some(got)) => {
                    proptest::prop_assert_eq!(got.sources.len(), k as usize);
                    let mut idx: Vec<u8> = got.sources.iter().map(|s| s.index).collect();
                    idx.dedup();
                    proptest::prop_assert_eq!(idx.len(), k as usize, "distinct, ascending");
                    for s in &got.sources {
                        proptest::prop_assert_eq!(health(&s.peer), PeerHealth::Live);
                        proptest::prop_assert!(c.holdings.contains(s));
                        proptest::prop_assert!(!got.rebuild.contains(&s.index));
                    }
                    let mut peers: Vec<&PeerId> = got.sources.iter().map(|s| &s.peer).collect();
                    peers.sort();
                    peers.dedup();
                    proptest::prop_assert_eq!(peers.len(), k as usize, "one source per peer");
                    proptest::prop_assert!(!got.rebuild.is_empty());
                    proptest::prop_assert!(got.rebuild.iter().all(|&i| i < n));
                    proptest::prop_assert!(n as usize - got.rebuild.len() < pol.threshold.min(n) as usize);
                    for h in &not_gone {
                        proptest::prop_assert!(got.keep.contains(&h.peer));
                    }
                    proptest::prop_assert_eq!(got.keep.len(), {
                        let mut v: Vec<&PeerId> = not_gone.iter().map(|h| &h.peer).collect();
                        v.sort();
                        v.dedup();
                        v.len()
                    });
                }
                Err(RepairError::Unrecoverable { live, k: kk }) => {
                    proptest::prop_assert_eq!(kk, k);
                    proptest::prop_assert!(live < k as usize);
                }
                Err(RepairError::Unreachable { reachable, suspect, k: kk }) => {
                    proptest::prop_assert_eq!(kk, k);
                    proptest::prop_assert!(reachable < k as usize);
                    proptest::prop_assert!(reachable + suspect >= k as usize);
                }
                Err(e @ RepairError::BadCode { .. }) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }
}
