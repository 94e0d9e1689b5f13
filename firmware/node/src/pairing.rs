//! Pairing: the button's session (WPS-style: exactly one plug on the local network with its
//! window open) and invitations accepted once. The swarm task owns the session and sends the
//! probes; what counts as a candidate, when the session ends and what a pairing request is
//! answered are decided here.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::control::PairOutcome;
use crate::holder::err;
use crate::state::{now_secs, Shared};
use crate::wire::{ErrorCode, Msg, PAIR_INVITE, PAIR_WINDOW};

/// How long after the first candidate appears the session waits for a second one (WPS-style
/// overlap detection) before pairing.
const PAIR_SETTLE: Duration = Duration::from_millis(2500);

/// The button-pairing session of the swarm task.
pub(crate) struct PairSession {
    deadline: Instant,
    candidates: BTreeSet<PeerId>,
    probed: HashSet<PeerId>,
    first_at: Option<Instant>,
    reply: oneshot::Sender<Result<PairOutcome, String>>,
}

impl PairSession {
    /// A session open for `window`; its outcome goes to `reply`.
    pub(crate) fn open(
        window: Duration,
        reply: oneshot::Sender<Result<PairOutcome, String>>,
    ) -> Self {
        tracing::info!("pairing window open for {} s", window.as_secs());
        PairSession {
            deadline: Instant::now() + window,
            candidates: BTreeSet::new(),
            probed: HashSet::new(),
            first_at: None,
            reply,
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

    /// Whether the session is over: settled after its first candidate, or expired.
    pub(crate) fn due(&self, now: Instant) -> bool {
        let settled = self.first_at.is_some_and(|t| now >= t + PAIR_SETTLE);
        settled || now >= self.deadline
    }

    /// Ends the session: pairs with its only candidate (reached at `addrs_of` it), or reports
    /// none or an overlap.
    pub(crate) fn finish(self, shared: &Shared, addrs_of: impl FnOnce(&PeerId) -> Vec<Multiaddr>) {
        let outcome = match self.candidates.len() {
            0 => PairOutcome::NoneFound,
            1 => {
                let peer = *self.candidates.iter().next().expect("one");
                let addrs = addrs_of(&peer);
                match shared.add_partner(peer, addrs, "button") {
                    Ok(()) => PairOutcome::Paired {
                        peer: peer.to_string(),
                    },
                    Err(e) => {
                        let _ = self
                            .reply
                            .send(Err(format!("recording partner {peer}: {e:#}")));
                        return;
                    }
                }
            }
            _ => {
                tracing::warn!(
                    "pairing refused: {} plugs are in pairing mode",
                    self.candidates.len()
                );
                PairOutcome::Overlap {
                    candidates: self.candidates.iter().map(|p| p.to_string()).collect(),
                }
            }
        };
        let _ = self.reply.send(Ok(outcome));
    }
}

/// The probe sent to plugs on the local network while our window is open.
pub(crate) fn probe() -> Msg {
    Msg::Pair {
        mode: PAIR_WINDOW,
        secret: [0; 16],
    }
}

/// Counts `peer` (whose window is open too) as a candidate if a session is open and the peer
/// is on the local network.
pub(crate) fn candidate(shared: &Shared, session: Option<&mut PairSession>, peer: PeerId) -> bool {
    let local = shared.state().peers.get(&peer).is_some_and(|m| m.local);
    match session {
        Some(s) if local => {
            s.candidates.insert(peer);
            s.first_at.get_or_insert_with(Instant::now);
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
            let open = session.is_some();
            if candidate(shared, session, peer) {
                Msg::Paired
            } else if open {
                err(
                    ErrorCode::BadRequest,
                    "pairing by button works only between plugs on the same network".into(),
                )
            } else {
                err(
                    ErrorCode::BadRequest,
                    format!("the pairing window of {} is not open", shared.me),
                )
            }
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
