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
//! paired only once the other's reveal came and matches (≤ 10 s; one that came before our own
//!   settling counts): both sides show the same six-digit code,
//!   BLAKE3(tag ‖ ids ‖ nonces, in id order), for the owners to compare
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
    /// Reveals that matched their plug's commitment, kept from before our own settling too
    /// (one per plug in `probed_us`): on a loaded plug the other side may settle first.
    revealed: BTreeMap<PeerId, [u8; 16]>,
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
            revealed: BTreeMap::new(),
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
            let confirmed = self.revealed.contains_key(&peer);
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
        let outcome = match &candidates[..] {
            [] => PairOutcome::NoneFound,
            [peer] if self.revealed.contains_key(peer) => {
                let (peer, theirs) = (*peer, self.revealed[peer]);
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
            [peer] => {
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
            // Only the plug settled on, once settled; before, any plug that probed us (an
            // overlap is still refused at the end: we never reveal to two candidates).
            if s.settled.is_some_and(|(p, _)| p != peer) {
                return err(
                    ErrorCode::BadRequest,
                    format!("{} has settled its pairing with another plug", shared.me),
                );
            }
            let Some(committed) = s.probed_us.get(&peer) else {
                return err(
                    ErrorCode::BadRequest,
                    format!("{peer} did not probe {} in this window", shared.me),
                );
            };
            if *committed != commitment(&peer, &secret) {
                tracing::warn!(
                    "pairing: {peer} revealed a nonce that is not the one it committed to"
                );
                return err(
                    ErrorCode::BadRequest,
                    "the revealed nonce does not match the probe's commitment".into(),
                );
            }
            s.revealed.insert(peer, secret);
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
    use crate::config::Config;
    use crate::state::{PeerMeta, Persisted};
    use std::sync::Arc;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// One plug in a test: its node state (knowing `local` on its network), its open session
    /// and where the session's outcome arrives.
    struct Plug {
        shared: Arc<Shared>,
        session: PairSession,
        outcome: oneshot::Receiver<Result<PairOutcome, String>>,
        _home: tempfile::TempDir,
    }

    impl Plug {
        fn open(me: PeerId, local: &[PeerId]) -> Plug {
            let home = tempfile::tempdir().unwrap();
            let store = cairn_store::Store::open_dir_reserve_later(
                home.path().join("store"),
                cairn_store::Config {
                    memory_budget_bytes: 1 << 20,
                    ..Default::default()
                },
            )
            .unwrap();
            let cfg = Config::new(home.path().to_owned());
            let budget = crate::codec::Budget::new(1 << 20);
            let (shared, _rx) = Shared::new(cfg, me, store, Persisted::default(), budget);
            for p in local {
                shared.state().peers.insert(
                    *p,
                    PeerMeta {
                        local: true,
                        ..Default::default()
                    },
                );
            }
            let (tx, outcome) = oneshot::channel();
            Plug {
                session: PairSession::open(me, Duration::from_secs(120), tx),
                shared,
                outcome,
                _home: home,
            }
        }

        /// `from`'s request `msg` arrives here; our answer.
        fn hears(&mut self, from: PeerId, msg: &Msg) -> Msg {
            let Msg::Pair { mode, secret } = msg else {
                panic!("{msg:?}")
            };
            answer(
                &self.shared,
                Some(&mut self.session),
                from,
                *mode,
                *secret,
                |_| vec![],
            )
        }

        /// Steps at `later` past now; the reveal it sends, if it settles.
        fn step(&mut self, later: Duration) -> Step {
            self.session.step(Instant::now() + later)
        }

        fn finish(mut self) -> Result<PairOutcome, String> {
            let shared = self.shared.clone();
            self.session.finish(&shared, |_| vec![]);
            self.outcome.try_recv().unwrap()
        }
    }

    fn paired_code(o: Result<PairOutcome, String>, with: PeerId) -> String {
        match o {
            Ok(PairOutcome::Paired { peer, code }) if peer == with.to_string() => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reveal_that_comes_before_our_own_settling_is_kept_and_both_plugs_pair() {
        let (ida, idb) = (peer(), peer());
        let (mut a, mut b) = (Plug::open(ida, &[idb]), Plug::open(idb, &[ida]));
        // B's probe reaches A; A's answer to it is slow to reach B (a loaded plug).
        let b_probe = b.session.probe();
        assert_eq!(a.hears(idb, &b_probe), Msg::Paired);
        // A's probe reaches B, and B's answer reaches A: A has its one candidate.
        let a_probe = a.session.probe();
        assert_eq!(b.hears(ida, &a_probe), Msg::Paired);
        assert!(answered(&a.shared, Some(&mut a.session), idb));
        // A settles and reveals while B has no candidate yet: B keeps the reveal.
        let Step::Reveal(to, a_reveal) = a.step(PAIR_SETTLE) else {
            panic!("A settles")
        };
        assert_eq!(to, idb);
        assert_eq!(b.hears(ida, &a_reveal), Msg::Paired);
        // Now B hears A's answer, settles, reveals; both finish paired, on the same code.
        assert!(answered(&b.shared, Some(&mut b.session), ida));
        assert_eq!(b.step(Duration::ZERO), Step::Wait);
        let Step::Reveal(_, b_reveal) = b.step(PAIR_SETTLE) else {
            panic!("B settles")
        };
        assert_eq!(a.hears(idb, &b_reveal), Msg::Paired);
        assert_eq!(a.step(PAIR_SETTLE), Step::Finish);
        assert_eq!(b.step(PAIR_SETTLE), Step::Finish);
        let code_a = paired_code(a.finish(), idb);
        assert_eq!(code_a, paired_code(b.finish(), ida));
    }

    #[test]
    fn a_reveal_is_refused_from_a_stranger_to_the_window_or_against_its_commitment() {
        let (ida, idb, idc) = (peer(), peer(), peer());
        let mut b = Plug::open(idb, &[ida, idc]);
        let reveal = |nonce: [u8; 16]| Msg::Pair {
            mode: PAIR_REVEAL,
            secret: nonce,
        };
        // C never probed B in this window.
        let said = format!("{:?}", b.hears(idc, &reveal([3; 16])));
        assert!(said.contains("did not probe"), "{said}");
        // A probed with the commitment to one nonce and reveals another.
        let probe = Msg::Pair {
            mode: PAIR_WINDOW,
            secret: commitment(&ida, &[1; 16]),
        };
        assert_eq!(b.hears(ida, &probe), Msg::Paired);
        let said = format!("{:?}", b.hears(ida, &reveal([2; 16])));
        assert!(said.contains("does not match"), "{said}");
        // Settled on A, B takes no reveal from C, even one that matches C's probe.
        assert!(answered(&b.shared, Some(&mut b.session), ida));
        assert!(matches!(b.step(PAIR_SETTLE), Step::Reveal(p, _) if p == ida));
        let c_probe = Msg::Pair {
            mode: PAIR_WINDOW,
            secret: commitment(&idc, &[3; 16]),
        };
        let said = format!("{:?}", b.hears(idc, &c_probe));
        assert!(
            said.contains("settled its pairing with another plug"),
            "{said}"
        );
        let said = format!("{:?}", b.hears(idc, &reveal([3; 16])));
        assert!(
            said.contains("settled its pairing with another plug"),
            "{said}"
        );
        // A never revealed the right nonce: B's wait ends unconfirmed.
        assert_eq!(b.step(PAIR_SETTLE + REVEAL_WAIT * 2), Step::Finish);
        match b.finish() {
            Ok(PairOutcome::Unconfirmed { peer }) => assert_eq!(peer, ida.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_plugs_in_pairing_mode_are_refused_even_with_a_reveal_kept() {
        let (ida, idb, idc) = (peer(), peer(), peer());
        let mut b = Plug::open(idb, &[ida, idc]);
        let mut probe_and_answer = |id: PeerId, nonce: [u8; 16]| {
            let probe = Msg::Pair {
                mode: PAIR_WINDOW,
                secret: commitment(&id, &nonce),
            };
            assert_eq!(b.hears(id, &probe), Msg::Paired);
            assert!(answered(&b.shared, Some(&mut b.session), id));
        };
        probe_and_answer(ida, [1; 16]);
        probe_and_answer(idc, [3; 16]);
        let reveal = Msg::Pair {
            mode: PAIR_REVEAL,
            secret: [1; 16],
        };
        assert_eq!(b.hears(ida, &reveal), Msg::Paired);
        assert_eq!(b.step(PAIR_SETTLE), Step::Finish, "no reveal to either");
        let shared = b.shared.clone();
        match b.finish() {
            Ok(PairOutcome::Overlap { candidates }) => assert_eq!(candidates.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(!shared.state().is_partner(&ida));
    }

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
