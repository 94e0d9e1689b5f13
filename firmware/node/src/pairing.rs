//! Pairing: the button's session (WPS-style: exactly one plug on the local network with its
//! window open) and invitations accepted once. The swarm task owns the session and sends the
//! probes; what counts as a candidate, when the session ends and what a pairing request is
//! answered are decided here.
//!
//! A button session, on each of the two plugs:
//!
//! ```text
//! window opens: nonce n (16 random bytes), commitment c = BLAKE3(tag ‖ own id ‖ n)[..16]
//! probe every plug on the LAN:      Pair{WINDOW, c}  ──►  counted if ITS window is open: Paired
//! a candidate is a plug that both probed us (with its c) and answered our probe, each while
//!   our window was open: evidence of both windows, bound to this session by the commitments
//! 2.5 s after the first candidate: none → none found; two or more → overlap, refused;
//!   one → reveal:                   Pair{REVEAL, n}  ──►  checked against the c it probed with
//! paired only once the other's reveal came and matches (≤ 10 s): both sides show the same
//!   six-digit code, BLAKE3(tag ‖ ids ‖ nonces, in id order), for the owners to compare
//! ```
//!
//! A host on the LAN can still answer every probe and so block button pairing (the overlap
//! rule refuses, as WPS does): invitation codes remain. To be taken for the friend's plug it
//! must probe and reveal like one, within the window; the code the owners compare then differs
//! from the one the friend's plug shows (which shows none).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::control::PairOutcome;
use crate::holder::err;
use crate::state::{now_secs, Shared};
use crate::wire::{ErrorCode, Msg, PAIR_INVITE, PAIR_REVEAL, PAIR_WINDOW};

/// How long after the first candidate appears the session waits for a second one (WPS-style
/// overlap detection) before pairing.
const PAIR_SETTLE: Duration = Duration::from_millis(2500);
/// How long after settling on one candidate its reveal may take (its own settling happens
/// within a few ticks of ours; a plug that saw an overlap never reveals).
const REVEAL_WAIT: Duration = Duration::from_secs(10);
/// Domain separation of the session's hashes.
const COMMIT_TAG: &[u8] = b"cairn pair commit v1";
const CODE_TAG: &[u8] = b"cairn pair code v1";

/// The commitment to `nonce` of the plug `peer`.
fn commitment(peer: &PeerId, nonce: &[u8; 16]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(COMMIT_TAG);
    h.update(&peer.to_bytes());
    h.update(nonce);
    let mut c = [0u8; 16];
    c.copy_from_slice(&h.finalize().as_bytes()[..16]);
    c
}

/// The six digits both plugs of a pairing show (`123 456`), from both ids and both nonces.
pub fn confirmation_code(a: (&PeerId, &[u8; 16]), b: (&PeerId, &[u8; 16])) -> String {
    let (first, second) = if a.0.to_bytes() <= b.0.to_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut h = blake3::Hasher::new();
    h.update(CODE_TAG);
    for (id, nonce) in [first, second] {
        let id = id.to_bytes();
        h.update(&(id.len() as u16).to_be_bytes());
        h.update(&id);
        h.update(nonce);
    }
    let n =
        u32::from_be_bytes(h.finalize().as_bytes()[..4].try_into().expect("4 bytes")) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

/// What the swarm task does next for the session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing yet.
    Wait,
    /// Send our reveal to the one candidate.
    Reveal(PeerId, Msg),
    /// The session is over: [`PairSession::finish`].
    Finish,
}

/// The button-pairing session of the swarm task.
pub(crate) struct PairSession {
    deadline: Instant,
    me: PeerId,
    nonce: [u8; 16],
    /// Plugs that probed us while our window was open, with their commitments.
    probed_us: BTreeMap<PeerId, [u8; 16]>,
    /// Plugs that answered our probe (their window was open while ours was).
    answered: BTreeSet<PeerId>,
    probed: HashSet<PeerId>,
    first_at: Option<Instant>,
    /// The one candidate settled on, and until when its reveal may come.
    settled: Option<(PeerId, Instant)>,
    /// A candidate's reveal, checked against its commitment.
    revealed: Option<(PeerId, [u8; 16])>,
    reply: oneshot::Sender<Result<PairOutcome, String>>,
}

impl PairSession {
    /// A session of plug `me` open for `window`; its outcome goes to `reply`.
    pub(crate) fn open(
        me: PeerId,
        window: Duration,
        reply: oneshot::Sender<Result<PairOutcome, String>>,
    ) -> Self {
        tracing::info!("pairing window open for {} s", window.as_secs());
        PairSession {
            deadline: Instant::now() + window,
            me,
            nonce: rand::random(),
            probed_us: BTreeMap::new(),
            answered: BTreeSet::new(),
            probed: HashSet::new(),
            first_at: None,
            settled: None,
            revealed: None,
            reply,
        }
    }

    /// The probe sent to plugs on the local network while our window is open.
    pub(crate) fn probe(&self) -> Msg {
        Msg::Pair {
            mode: PAIR_WINDOW,
            secret: commitment(&self.me, &self.nonce),
        }
    }

    /// Plugs on the local network not asked yet (from now on counted as asked).
    pub(crate) fn unprobed(&mut self, shared: &Shared) -> Vec<PeerId> {
        let local: Vec<PeerId> = {
            let st = shared.state();
            st.peers
                .iter()
                .filter(|(_, m)| m.local)
                .map(|(p, _)| *p)
                .collect()
        };
        local
            .into_iter()
            .filter(|p| self.probed.insert(*p))
            .collect()
    }

    /// The candidates: plugs whose window and ours were seen open by both.
    fn candidates(&self) -> Vec<PeerId> {
        self.answered
            .iter()
            .filter(|p| self.probed_us.contains_key(p))
            .copied()
            .collect()
    }

    /// Notes a candidate's appearance (the overlap wait starts with the first).
    fn touch(&mut self) {
        if !self.candidates().is_empty() {
            self.first_at.get_or_insert_with(Instant::now);
        }
    }

    /// What to do at `now`: wait, reveal to the one candidate, or finish.
    pub(crate) fn step(&mut self, now: Instant) -> Step {
        if let Some((peer, by)) = self.settled {
            let confirmed = self.revealed.is_some_and(|(p, _)| p == peer);
            return if confirmed || now >= by {
                Step::Finish
            } else {
                Step::Wait
            };
        }
        let settled = self.first_at.is_some_and(|t| now >= t + PAIR_SETTLE);
        if !settled && now < self.deadline {
            return Step::Wait;
        }
        match self.candidates()[..] {
            [peer] => {
                self.settled = Some((peer, now + REVEAL_WAIT));
                Step::Reveal(
                    peer,
                    Msg::Pair {
                        mode: PAIR_REVEAL,
                        secret: self.nonce,
                    },
                )
            }
            _ => Step::Finish,
        }
    }

    /// Ends the session: pairs with its only candidate once its reveal matched (reached at
    /// `addrs_of` it), or reports none, an overlap, or a candidate that did not confirm.
    pub(crate) fn finish(self, shared: &Shared, addrs_of: impl FnOnce(&PeerId) -> Vec<Multiaddr>) {
        let candidates = self.candidates();
        let outcome = match (&candidates[..], self.revealed) {
            ([], _) => PairOutcome::NoneFound,
            ([peer], Some((p, theirs))) if *peer == p => {
                let peer = *peer;
                let code = confirmation_code((&self.me, &self.nonce), (&peer, &theirs));
                let addrs = addrs_of(&peer);
                match shared.add_partner(peer, addrs, "button") {
                    Ok(()) => PairOutcome::Paired {
                        peer: peer.to_string(),
                        code,
                    },
                    Err(e) => {
                        let _ = self
                            .reply
                            .send(Err(format!("recording partner {peer}: {e:#}")));
                        return;
                    }
                }
            }
            ([peer], _) => {
                tracing::warn!("pairing refused: {peer} did not confirm");
                PairOutcome::Unconfirmed {
                    peer: peer.to_string(),
                }
            }
            _ => {
                tracing::warn!(
                    "pairing refused: {} plugs are in pairing mode",
                    candidates.len()
                );
                PairOutcome::Overlap {
                    candidates: candidates.iter().map(|p| p.to_string()).collect(),
                }
            }
        };
        let _ = self.reply.send(Ok(outcome));
    }
}

/// Counts that `peer` answered our probe (its window is open too) if a session is open and
/// the peer is on the local network.
pub(crate) fn answered(shared: &Shared, session: Option<&mut PairSession>, peer: PeerId) -> bool {
    let local = shared.state().peers.get(&peer).is_some_and(|m| m.local);
    match session {
        Some(s) if local && s.settled.is_none() => {
            s.answered.insert(peer);
            s.touch();
            true
        }
        _ => false,
    }
}

/// Answers a pairing request of `peer` (the only request a non-partner may make);
/// `addrs_of` gives the addresses to record for it.
pub(crate) fn answer(
    shared: &Shared,
    session: Option<&mut PairSession>,
    peer: PeerId,
    mode: u8,
    secret: [u8; 16],
    addrs_of: impl FnOnce(&PeerId) -> Vec<Multiaddr>,
) -> Msg {
    match mode {
        PAIR_WINDOW => {
            let local = shared.state().peers.get(&peer).is_some_and(|m| m.local);
            match session {
                Some(s) if local && s.settled.is_none() => {
                    // A second probe of the same session keeps its first commitment.
                    s.probed_us.entry(peer).or_insert(secret);
                    s.touch();
                    // Its window is open now: our probe, refused if it came before, goes again.
                    if !s.answered.contains(&peer) {
                        s.probed.remove(&peer);
                    }
                    Msg::Paired
                }
                Some(s) if s.settled.is_some() => err(
                    ErrorCode::BadRequest,
                    format!("{} has settled its pairing with another plug", shared.me),
                ),
                Some(_) => err(
                    ErrorCode::BadRequest,
                    "pairing by button works only between plugs on the same network".into(),
                ),
                None => err(
                    ErrorCode::BadRequest,
                    format!("the pairing window of {} is not open", shared.me),
                ),
            }
        }
        PAIR_REVEAL => {
            let Some(s) = session else {
                return err(
                    ErrorCode::BadRequest,
                    format!("the pairing window of {} is not open", shared.me),
                );
            };
            let candidates = s.candidates();
            if candidates != [peer] || s.settled.is_some_and(|(p, _)| p != peer) {
                return err(
                    ErrorCode::BadRequest,
                    format!(
                        "{} is not pairing with {peer} alone ({} candidates)",
                        shared.me,
                        candidates.len()
                    ),
                );
            }
            if s.probed_us.get(&peer) != Some(&commitment(&peer, &secret)) {
                tracing::warn!(
                    "pairing: {peer} revealed a nonce that is not the one it committed to"
                );
                return err(
                    ErrorCode::BadRequest,
                    "the revealed nonce does not match the probe's commitment".into(),
                );
            }
            s.revealed = Some((peer, secret));
            Msg::Paired
        }
        PAIR_INVITE => {
            let h = crate::invite::secret_hash(&secret);
            let expiry = shared.state().saved.invites.remove(&h);
            match expiry {
                None => err(
                    ErrorCode::BadRequest,
                    "unknown or already used invitation".into(),
                ),
                Some(t) if t < now_secs() => {
                    let _ = shared.persist();
                    err(ErrorCode::BadRequest, "the invitation has expired".into())
                }
                Some(_) => {
                    let addrs = addrs_of(&peer);
                    match shared.add_partner(peer, addrs, "invitation") {
                        Ok(()) => Msg::Paired,
                        Err(e) => err(ErrorCode::Internal, format!("recording partner: {e:#}")),
                    }
                }
            }
        }
        other => err(
            ErrorCode::BadRequest,
            format!("unknown pairing mode {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_plugs_compute_the_same_code_and_another_nonce_changes_it() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (na, nb) = ([1u8; 16], [2u8; 16]);
        let code = confirmation_code((&a, &na), (&b, &nb));
        assert_eq!(code, confirmation_code((&b, &nb), (&a, &na)));
        assert_eq!(code.len(), 7);
        assert_ne!(code, confirmation_code((&a, &na), (&b, &[3u8; 16])));
        // A commitment binds the nonce and the plug.
        assert_ne!(commitment(&a, &na), commitment(&b, &na));
        assert_ne!(commitment(&a, &na), commitment(&a, &nb));
    }
}
