//! The node's state: what the swarm task, the holder's side, the owner's side and the control
//! connections share ([`Shared`]), the one mutex around the mutable part ([`State`]), and
//! `partners.json`, its persisted part.
//!
//! This module imports none of the node's task modules (`node`, `swarm`, `holder`,
//! `pairing`, `owner`, `server`); they all import it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cairn_store::Store;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Budget, Held};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::records::owner_of;
use crate::repair::{PeerHealth, PeerTracker};
use crate::wire::Msg;

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What this node records of a partner (persisted).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Partner {
    /// Addresses it was reached at or announced (at most 8).
    pub addrs: Vec<String>,
    /// Unix seconds when paired.
    pub since: u64,
    /// How: "button", "invitation", "rejoin" (named by this plug's owner after a restore) or
    /// "owner key" (a new plug of an owner a partner acted for).
    pub via: String,
    /// Owner keys (hex) it made requests for: a new plug with a statement of one of them is
    /// the same owner's and is admitted as a partner (at most [`OWNERS_PER_PARTNER`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// Earlier plugs of its owner (peer ids, base58) it took over from: the bytes they put here
    /// are booked to it (at most [`PREDECESSORS_MAX`], newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predecessors: Vec<String>,
    /// Ids (`records::held_id`, hex) of shards it put that our scrub found damaged and dropped,
    /// until it asks (`LostQuery`); at most [`LOST_PER_PARTNER`], the oldest forgotten first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
}

/// Most lost shards remembered per partner (its audits find any beyond).
pub const LOST_PER_PARTNER: usize = crate::wire::LOST_MAX;

/// Most owners one partner may act for here.
pub const OWNERS_PER_PARTNER: usize = 8;

/// Most earlier plugs a partner's books take over (older ones' bytes are booked to nobody).
pub const PREDECESSORS_MAX: usize = 8;

/// Most owners whose current plug a holder remembers.
pub const CURRENT_MAX: usize = 1024;

/// An owner's current plug as this holder knows it: the newest statement it saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// The statement's epoch.
    pub epoch: u64,
    /// The plug it names (base58).
    pub peer: String,
}

/// Statements checked lately, remembered so a signature is verified once per peer, owner and
/// epoch.
const VERIFIED_MAX: usize = 4096;

/// The persisted part of the node's state (`partners.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Partners by peer id (base58 text keys in the file, in text order).
    #[serde(with = "text_keys")]
    pub partners: BTreeMap<PeerId, Partner>,
    /// Open invitations: secret hash → expiry (Unix seconds).
    pub invites: BTreeMap<String, u64>,
    /// Partners' audit records (a liar stays scored down across restarts), by peer id in
    /// text form as the file has them; the running node keeps them in its [`PeerTracker`].
    #[serde(default)]
    pub scores: crate::audit::Scores,
    /// What the owner offers partners (`set_capacity`, from the web's setup), over the
    /// command line's `Config::capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Per owner (hex) whose plugs made requests here, its current plug: only that one is
    /// admitted for it (at most [`CURRENT_MAX`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub current: BTreeMap<String, Current>,
}

/// `partners.json` names partners by their peer ids in text (base58) form, sorted as text;
/// an entry whose key is not a peer id is left out (with a warning) as it always was ignored.
mod text_keys {
    use std::collections::BTreeMap;

    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Partner;

    pub fn serialize<S: Serializer>(
        partners: &BTreeMap<PeerId, Partner>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<String, &Partner> =
            partners.iter().map(|(p, v)| (p.to_base58(), v)).collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<PeerId, Partner>, D::Error> {
        let text = BTreeMap::<String, Partner>::deserialize(d)?;
        Ok(text
            .into_iter()
            .filter_map(|(k, v)| match k.parse::<PeerId>() {
                Ok(p) => Some((p, v)),
                Err(e) => {
                    tracing::warn!("partners.json: ignoring partner {k:?}: {e}");
                    None
                }
            })
            .collect())
    }
}

/// Runtime knowledge of a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerMeta {
    /// Open connections.
    pub connections: u32,
    /// The remote addresses of open connections (the first [`LINKS_SHOWN`]), which `status`
    /// shows a partner's: whether it is reached over TCP, QUIC or a relay.
    pub links: Vec<(libp2p::swarm::ConnectionId, Multiaddr)>,
    /// Its public IP, if it connected from one.
    pub public_ip: Option<std::net::IpAddr>,
    /// Free space it last told us it has for us.
    pub free_for_us: Option<u64>,
    /// Found by mDNS or connected over a local address.
    pub local: bool,
    /// When dialing it last failed (cleared when a connection is established): requests fail
    /// fast for [`UNREACHABLE_FOR`] instead of each waiting for a dial timeout.
    pub dial_failed_at: Option<Instant>,
}

/// How many of a peer's open connections [`PeerMeta::links`] keeps.
pub const LINKS_SHOWN: usize = 4;

/// How long a failed dial marks a peer unreachable for requests (background redials go on).
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

impl PeerMeta {
    /// Not connected, and the last dial failed recently.
    pub fn unreachable(&self) -> bool {
        self.connections == 0
            && self
                .dial_failed_at
                .is_some_and(|t| t.elapsed() < UNREACHABLE_FOR)
    }
}

/// State shared by the swarm task and the control connections (one mutex, held briefly).
pub struct State {
    /// Partners and invitations (persisted).
    pub saved: Persisted,
    /// Give-to-get books (rebuilt from the store at start).
    pub ledger: Ledger<PeerId>,
    /// Bytes held for all partners together.
    pub used: u64,
    /// Peers seen at runtime.
    pub peers: HashMap<PeerId, PeerMeta>,
    /// Liveness and audit scores of partners.
    pub tracker: PeerTracker<PeerId>,
    /// Requests being served per peer.
    pub inflight: HashMap<PeerId, usize>,
    /// Chunks whose shards are being placed.
    pub pending: HashMap<[u8; 32], crate::records::ChunkRecord>,
    /// Our listen addresses (for invitations).
    pub listen: Vec<Multiaddr>,
    /// (chunk, partner) pairs with a put on the way: never two shards of a chunk to one peer.
    pub reserving: HashSet<([u8; 32], PeerId)>,
    /// Chunks with shards being placed right now, and how many.
    pub busy: HashMap<[u8; 32], u32>,
    /// Placement records read lately, newest last (at most [`crate::owner::RECENT_RECORDS`]).
    pub recent: std::collections::VecDeque<([u8; 32], crate::records::ChunkRecord)>,
    /// Where the next partial audit round starts (the last record id audited).
    pub audit_after: Option<cairn_store::ShardId>,
    /// The owners' statements this node acts with (`owners.json`).
    pub owners: Vec<crate::wire::OwnerAuth>,
    /// (peer, owner, epoch) whose statement verified (at most [`VERIFIED_MAX`]).
    pub verified: HashSet<(PeerId, [u8; 32], u64)>,
    /// What the scrub has done since start.
    pub scrub: crate::scrub::ScrubStats,
}

impl State {
    /// Whether `peer` is a partner.
    pub fn is_partner(&self, peer: &PeerId) -> bool {
        self.saved.partners.contains_key(peer)
    }

    /// Partners' peer ids.
    pub fn partner_ids(&self) -> Vec<PeerId> {
        self.saved.partners.keys().copied().collect()
    }
}

/// A request for the swarm task.
pub enum Cmd {
    /// Send a shard-protocol request to a peer.
    Request {
        /// To whom.
        peer: PeerId,
        /// For which owner (every request but `Pair`).
        auth: Option<crate::wire::OwnerAuth>,
        /// What.
        msg: Msg,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Held, String>>,
    },
    /// Open the pairing window.
    Pair {
        /// For how long.
        window: Duration,
        /// The outcome.
        reply: oneshot::Sender<Result<crate::control::PairOutcome, String>>,
    },
    /// Connect to a peer at the given addresses.
    Dial {
        /// The peer.
        peer: PeerId,
        /// Where.
        addrs: Vec<Multiaddr>,
    },
}

/// What the swarm task, the holder and the owner share.
pub struct Shared {
    /// Settings.
    pub cfg: Config,
    /// Our peer id.
    pub me: PeerId,
    /// Partners' shards and our own placement records.
    pub store: Store,
    state: Mutex<State>,
    /// To the swarm task.
    pub cmd: mpsc::Sender<Cmd>,
    /// Frames in memory.
    pub budget: Budget,
    persist_lock: Mutex<()>,
    /// Serialises check-then-write of one shard key (striped: 64 locks).
    key_locks: Vec<Mutex<()>>,
    /// Shards accepted from the vault and still being placed (see [`Placing`]).
    pub placing: Mutex<Placing>,
    /// Wakes `flush` when a placement ends.
    pub placed: tokio::sync::Notify,
    /// Bytes of shards accepted from the vault and not yet placed.
    pub placing_budget: Arc<tokio::sync::Semaphore>,
    /// Requests in flight to each peer, from our side (stays under the holders' limit).
    peer_slots: Mutex<HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
}

/// Bytes of the vault's shards the node accepts ahead of placing them: the vault streams
/// instead of waiting one round trip per shard; errors come back at its `flush`.
pub const PLACING_BYTES: usize = 16 << 20;

/// Requests we keep in flight to one peer.
pub const PER_PEER_REQUESTS: usize = 6;

/// Placements in progress and the errors of those that failed since the last flush.
#[derive(Debug, Default)]
pub struct Placing {
    /// Shards being placed.
    pub inflight: usize,
    /// Failures since the last flush (the first few kept, all counted).
    pub errors: Vec<String>,
    /// All failures since the last flush.
    pub failed: usize,
}

impl State {
    /// Bytes offered to partners: the owner's choice if made, else the command line's.
    pub fn capacity(&self, cfg: &Config) -> u64 {
        self.saved.capacity.unwrap_or(cfg.capacity)
    }
}

impl Shared {
    /// The node's state around an opened chunk store and the persisted partner list; the
    /// receiver takes the commands for the swarm task. The books are not counted yet (see
    /// [`recount_held`] and [`crate::owner::rebuild_books`]).
    pub fn new(
        cfg: Config,
        me: PeerId,
        store: Store,
        saved: Persisted,
        budget: Budget,
    ) -> (Arc<Shared>, mpsc::Receiver<Cmd>) {
        let mut ledger = Ledger::new(cfg.allowance);
        let scores = saved.scores.map_peers(|p| p.0.parse::<PeerId>().ok());
        let mut tracker = PeerTracker::new(cfg.grace.as_secs(), cfg.min_score).with_scores(scores);
        let start = now_secs();
        for p in saved.partners.keys() {
            ledger.add_partner(*p);
            // Partners count as seen at start: the grace period runs from now.
            tracker.seen(p, start);
        }
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            me,
            store,
            state: Mutex::new(State {
                saved,
                ledger,
                used: 0,
                peers: HashMap::new(),
                tracker,
                inflight: HashMap::new(),
                pending: HashMap::new(),
                listen: Vec::new(),
                reserving: HashSet::new(),
                busy: HashMap::new(),
                audit_after: None,
                recent: std::collections::VecDeque::new(),
                owners: Vec::new(),
                verified: HashSet::new(),
                scrub: Default::default(),
            }),
            cmd: tx,
            budget,
            persist_lock: Mutex::new(()),
            key_locks: (0..64).map(|_| Mutex::new(())).collect(),
            placing: Mutex::new(Placing::default()),
            placed: tokio::sync::Notify::new(),
            placing_budget: Arc::new(tokio::sync::Semaphore::new(PLACING_BYTES)),
            peer_slots: Mutex::new(HashMap::new()),
            cfg,
        });
        (shared, rx)
    }

    /// Locks the shared state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("node state lock")
    }

    fn partners_path(&self) -> PathBuf {
        self.cfg.home.join("partners.json")
    }

    /// Held while a shard key is checked and written, so two puts (or a put and a delete) of
    /// one key cannot both pass the owner check; striped so other keys go on in parallel.
    pub(crate) fn key_lock(&self, shard: &crate::wire::ShardId) -> MutexGuard<'_, ()> {
        self.key_locks[usize::from(shard.0[0]) % self.key_locks.len()]
            .lock()
            .expect("key lock")
    }

    /// Writes partners and invitations (aside, then renamed; fsynced).
    pub fn persist(&self) -> Result<()> {
        let _g = self.persist_lock.lock().expect("persist lock");
        let bytes = {
            let mut st = self.state();
            st.saved.scores = st
                .tracker
                .scores()
                .map_peers(|p| Some(crate::PeerId(p.to_base58())));
            serde_json::to_vec_pretty(&st.saved)?
        };
        let path = self.partners_path();
        cairn_durable::write(&path, &bytes).with_context(|| format!("{}", path.display()))
    }

    /// Sets what this plug offers partners, durably (kept across restarts, over the command
    /// line's). Less than is in use already only stops new shards; nothing held is dropped.
    pub fn set_capacity(&self, bytes: u64) -> Result<()> {
        let before = {
            let mut st = self.state();
            st.saved.capacity.replace(bytes)
        };
        if let Err(e) = self.persist() {
            self.state().saved.capacity = before;
            return Err(e);
        }
        Ok(())
    }

    /// Records `peer` as a partner reached at `addrs`.
    pub fn add_partner(&self, peer: PeerId, addrs: Vec<Multiaddr>, via: &str) -> Result<()> {
        {
            let mut st = self.state();
            let entry = st.saved.partners.entry(peer).or_insert_with(|| Partner {
                addrs: Vec::new(),
                since: now_secs(),
                via: via.to_owned(),
                owners: Vec::new(),
                predecessors: Vec::new(),
                lost: Vec::new(),
            });
            for a in addrs {
                let s = a.to_string();
                if !entry.addrs.contains(&s) && entry.addrs.len() < 8 {
                    entry.addrs.push(s);
                }
            }
            st.ledger.add_partner(peer);
            st.tracker.seen(&peer, now_secs());
        }
        tracing::info!("paired with {peer} ({via})");
        self.persist()
    }

    /// Forgets partner `peer` (the `unpair` operation), saved at once; its books as they were,
    /// `None` if it was no partner. Its slots in our records count as lost from now on (its
    /// [`health`](Self::health) is gone) and the repair round places them elsewhere; its
    /// requests are refused as a stranger's, so what we hold for it stays until its lease runs
    /// out unrenewed (and is readable to it again if it is paired again before then).
    pub fn remove_partner(&self, peer: &PeerId) -> Result<Option<crate::ledger::Account>> {
        let (info, account) = {
            let mut st = self.state();
            let Some(info) = st.saved.partners.remove(peer) else {
                return Ok(None);
            };
            let account = st.ledger.remove_partner(peer).unwrap_or_default();
            (info, account)
        };
        if let Err(e) = self.persist() {
            // Not saved: it stays a partner, so what runs and what is on disk agree.
            let mut st = self.state();
            st.saved.partners.insert(*peer, info);
            st.ledger.add_partner(*peer);
            st.ledger.set_held_for_them(peer, account.held_for_them);
            st.ledger.set_held_for_us(peer, account.held_for_us);
            return Err(e);
        }
        tracing::info!("unpaired from {peer}");
        Ok(Some(account))
    }

    /// A partner's health for repair; a peer that is no (longer a) partner is gone.
    pub fn health(&self, peer: &PeerId) -> PeerHealth {
        let now = now_secs();
        let mut st = self.state();
        if !st.is_partner(peer) {
            return PeerHealth::Gone;
        }
        let meta = st.peers.get(peer).cloned();
        if meta.as_ref().is_some_and(|m| m.connections > 0) {
            st.tracker.seen(peer, now);
        }
        match st.tracker.health(peer, now) {
            PeerHealth::Live if meta.is_some_and(|m| m.unreachable()) => PeerHealth::Suspect,
            h => h,
        }
    }

    fn owners_path(&self) -> PathBuf {
        self.cfg.home.join("owners.json")
    }

    /// Loads the owners' statements kept in the home (at start).
    pub fn load_owners(&self) -> Result<()> {
        let owners = crate::identity::load_owners(&self.owners_path())?;
        self.state().owners = owners;
        Ok(())
    }

    /// Acts for the owner of `auth` from now on, kept durably; refused unless it is that
    /// owner's statement for this plug. Returns the owner key.
    pub fn add_owner(&self, auth: crate::wire::OwnerAuth) -> Result<[u8; 32]> {
        if !crate::identity::verify(&auth, &self.me) {
            anyhow::bail!(
                "the statement of owner {} is not signed for this plug ({})",
                hex::encode(auth.owner),
                self.me
            );
        }
        let _g = self.persist_lock.lock().expect("persist lock");
        let list = {
            let st = self.state();
            let mut list = st.owners.clone();
            if let Some(a) = list.iter_mut().find(|a| a.owner == auth.owner) {
                // A new statement (a later epoch) replaces the one kept, on disk too: after a
                // restart the node must not send one its holders saw superseded.
                *a = auth;
            } else if list.len() >= crate::identity::OWNERS_MAX {
                anyhow::bail!(
                    "this node acts for {} owners already (the most it keeps)",
                    st.owners.len()
                );
            } else {
                list.push(auth);
            }
            list
        };
        crate::identity::store_owners(&self.owners_path(), &list)?;
        self.state().owners = list;
        tracing::info!("acting for owner {}", hex::encode(auth.owner));
        Ok(auth.owner)
    }

    /// The statement this node sends for `owner`, if it acts for it.
    pub fn auth_for(&self, owner: &[u8; 32]) -> Option<crate::wire::OwnerAuth> {
        self.state()
            .owners
            .iter()
            .find(|a| a.owner == *owner)
            .copied()
    }

    /// Whether `auth` is its owner's statement for `peer` (verified once, then remembered).
    pub fn verified(&self, peer: &PeerId, auth: &crate::wire::OwnerAuth) -> bool {
        if self
            .state()
            .verified
            .contains(&(*peer, auth.owner, auth.epoch))
        {
            return true;
        }
        if !crate::identity::verify(auth, peer) {
            return false;
        }
        let mut st = self.state();
        if st.verified.len() >= VERIFIED_MAX {
            st.verified.clear();
        }
        st.verified.insert((*peer, auth.owner, auth.epoch));
        true
    }

    /// Checks `auth` (verified) against the owner's current plug here and keeps the newest:
    /// `peer` is admitted if it is the plug the newest statement seen names, or if `auth` is
    /// newer still (it becomes the current plug: the plug it replaces is returned). A statement
    /// an owner's newer one superseded is refused with the reason.
    pub fn current_plug(
        &self,
        peer: &PeerId,
        auth: &crate::wire::OwnerAuth,
    ) -> std::result::Result<Option<PeerId>, String> {
        let owner = crate::records::hex(&auth.owner);
        let me = peer.to_base58();
        let replaced = {
            let mut st = self.state();
            let current = &mut st.saved.current;
            match current.get_mut(&owner) {
                // Its own older statements too: requests signed before its latest are in flight.
                Some(c) if c.peer == me => {
                    if auth.epoch <= c.epoch {
                        return Ok(None);
                    }
                    c.epoch = auth.epoch;
                    None
                }
                Some(c) if auth.epoch > c.epoch => {
                    let old = std::mem::replace(
                        c,
                        Current {
                            epoch: auth.epoch,
                            peer: me,
                        },
                    );
                    old.peer.parse().ok()
                }
                Some(c) => {
                    return Err(format!(
                        "{peer}'s statement of owner {} (epoch {}) is superseded by epoch {} for plug {}",
                        &owner[..16],
                        auth.epoch,
                        c.epoch,
                        c.peer
                    ))
                }
                None => {
                    if current.len() >= CURRENT_MAX {
                        // Owners no partner acts for any more are forgotten first.
                        let acting: HashSet<String> = st
                            .saved
                            .partners
                            .values()
                            .flat_map(|p| p.owners.iter().cloned())
                            .collect();
                        st.saved.current.retain(|o, _| acting.contains(o));
                    }
                    if st.saved.current.len() >= CURRENT_MAX {
                        return Err(format!(
                            "{} knows the plugs of {CURRENT_MAX} owners already (the most it keeps)",
                            self.me
                        ));
                    }
                    st.saved.current.insert(
                        owner,
                        Current {
                            epoch: auth.epoch,
                            peer: me,
                        },
                    );
                    None
                }
            }
        };
        if let Err(e) = self.persist() {
            tracing::error!("saving the current plug of an owner: {e:#}");
        }
        Ok(replaced)
    }

    /// Books what we hold for `old` (and the plugs it took over from) to `new`, a later plug
    /// of the same owner, durably: the new plug renews, reads and deletes those shards, and its
    /// give-to-get account is what they cost. All of `old`'s bytes move: a holder cannot tell
    /// one owner's shards of a plug from another's (an owner has one plug at a time).
    pub fn take_over(&self, old: &PeerId, new: &PeerId) {
        {
            let mut st = self.state();
            let mut earlier = st
                .saved
                .partners
                .get(old)
                .map(|p| p.predecessors.clone())
                .unwrap_or_default();
            earlier.push(old.to_base58());
            let Some(p) = st.saved.partners.get_mut(new) else {
                return;
            };
            for e in earlier {
                if e != new.to_base58() && !p.predecessors.contains(&e) {
                    p.predecessors.push(e);
                }
            }
            let n = p.predecessors.len();
            p.predecessors.drain(..n.saturating_sub(PREDECESSORS_MAX));
            if let Some(o) = st.saved.partners.get_mut(old) {
                o.predecessors.clear();
            }
            let moved = st.ledger.transfer_held_for_them(old, new);
            tracing::info!("{new} took over from {old}: {moved} bytes held here booked to it");
        }
        if let Err(e) = self.persist() {
            tracing::error!("saving partner {new}: {e:#}");
        }
    }

    /// Sends a request for `owner` to `peer` and waits for the answer; refused at once if this
    /// node has no statement of that owner.
    pub async fn request_as(
        &self,
        peer: PeerId,
        owner: &[u8; 32],
        msg: Msg,
    ) -> Result<Msg, String> {
        let auth = self.auth_for(owner).ok_or_else(|| {
            format!(
                "this node does not act for owner {} (the vault registers it)",
                hex::encode(owner)
            )
        })?;
        self.send(peer, Some(auth), msg).await
    }

    /// Sends a request that needs no owner (pairing) to `peer` and waits for the answer.
    pub async fn request(&self, peer: PeerId, msg: Msg) -> Result<Msg, String> {
        self.send(peer, None, msg).await
    }

    /// Sends a request to `peer` and waits for the answer (bounded by the request timeout).
    async fn send(
        &self,
        peer: PeerId,
        auth: Option<crate::wire::OwnerAuth>,
        msg: Msg,
    ) -> Result<Msg, String> {
        let slots = self
            .peer_slots
            .lock()
            .expect("peer slots")
            .entry(peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_PEER_REQUESTS)))
            .clone();
        let _slot = slots
            .acquire_owned()
            .await
            .map_err(|_| "node is shutting down".to_owned())?;
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request {
                peer,
                auth,
                msg,
                reply: tx,
            })
            .await
            .map_err(|_| "node is shutting down".to_owned())?;
        let r = tokio::time::timeout(self.cfg.limits.request_timeout + Duration::from_secs(5), rx)
            .await
            .map_err(|_| format!("peer {peer} did not answer in time"))?
            .map_err(|_| "node is shutting down".to_owned())?;
        let msg = r?.msg;
        let mut st = self.state();
        st.tracker.seen(&peer, now_secs());
        Ok(msg)
    }
}

/// Reads `partners.json` (an empty list if there is none).
pub(crate) fn load_persisted(path: &Path) -> Result<Persisted> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "{}: damaged partner list (left as it is; fix or move it away)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

impl State {
    /// The partner whose books the bytes of store owner `payer` are on: the plug that put them,
    /// or the later plug of its owner that took over from it.
    pub fn booked_to(&self, payer: cairn_store::OwnerId) -> Option<PeerId> {
        let by = |p: &str| p.parse::<PeerId>().is_ok_and(|p| owner_of(&p) == payer);
        let parts = &self.saved.partners;
        parts
            .iter()
            .find(|(_, v)| v.predecessors.iter().any(|p| by(p)))
            .or_else(|| parts.iter().find(|(p, _)| owner_of(p) == payer))
            .map(|(p, _)| *p)
    }
}

/// Recomputes what we hold for each partner from the store (at start, after leases ran out),
/// the bytes of earlier plugs on the books of the partner that took over from them.
pub fn recount_held(shared: &Shared) -> Result<()> {
    let booked: Vec<(PeerId, Vec<PeerId>)> = {
        let st = shared.state();
        let taken: HashSet<&String> = st
            .saved
            .partners
            .values()
            .flat_map(|p| p.predecessors.iter())
            .collect();
        st.saved
            .partners
            .iter()
            .map(|(p, v)| {
                let own = (!taken.contains(&p.to_base58())).then_some(*p);
                let earlier = v.predecessors.iter().filter_map(|e| e.parse().ok());
                (*p, own.into_iter().chain(earlier).collect())
            })
            .collect()
    };
    let mut total = 0;
    let mut held = Vec::with_capacity(booked.len());
    for (p, payers) in booked {
        let mut h = 0;
        for payer in payers {
            h += held_for(&shared.store, &payer)?;
        }
        total += h;
        held.push((p, h));
    }
    let mut st = shared.state();
    for (p, h) in held {
        st.ledger.set_held_for_them(&p, h);
    }
    st.used = total;
    Ok(())
}

/// Bytes the store holds for `peer`.
fn held_for(store: &Store, peer: &PeerId) -> Result<u64> {
    let owner = owner_of(peer);
    let mut after = None;
    let mut total = 0u64;
    loop {
        let page = store.shards_of(owner, after, 1024)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        total += page.iter().map(|s| u64::from(s.len)).sum::<u64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// A `partners.json` as the node wrote it while it kept peer ids as strings.
    fn old_file(a: &str, b: &str) -> String {
        format!(
            r#"{{
  "partners": {{
    "{a}": {{ "addrs": ["/ip4/127.0.0.1/tcp/4001"], "since": 5, "via": "button" }},
    "{b}": {{ "addrs": [], "since": 7, "via": "invitation" }}
  }},
  "invites": {{ "00ff": 99 }},
  "scores": {{ "peers": {{ "{a}": {{ "passed": 1, "failed": 2, "score": 0.25 }} }} }}
}}"#
        )
    }

    #[test]
    fn partner_lists_of_the_string_era_load_and_are_written_the_same() {
        let (a, b) = (peer(), peer());
        let (ta, tb) = (a.to_base58(), b.to_base58());
        let old = old_file(&ta, &tb);
        let p: Persisted = serde_json::from_str(&old).unwrap();
        assert_eq!(p.partners[&a].via, "button");
        assert_eq!(p.partners[&b].since, 7);
        assert_eq!(p.scores.get(&crate::PeerId(ta.clone())).unwrap().failed, 2);
        // Same JSON back, partners in the text order of their ids.
        let text = serde_json::to_string_pretty(&p).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(&old).unwrap());
        assert_eq!(
            text.find(&ta).unwrap() < text.find(&tb).unwrap(),
            ta < tb,
            "{text}"
        );
        // Files from before audit scores were kept load too; a key that is no peer id is
        // left out.
        let older = format!(
            r#"{{"partners": {{"{ta}": {{"addrs": [], "since": 1, "via": "button"}}, "not-a-peer": {{"addrs": [], "since": 1, "via": "button"}}}}, "invites": {{}}}}"#
        );
        let p: Persisted = serde_json::from_str(&older).unwrap();
        assert_eq!(p.partners.keys().collect::<Vec<_>>(), vec![&a]);
    }

    #[test]
    fn a_node_opened_on_an_old_partner_list_knows_its_partners_and_scores() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (peer(), peer());
        let old = old_file(&a.to_base58(), &b.to_base58());
        let path = home.path().join("partners.json");
        std::fs::write(&path, &old).unwrap();
        let store = Store::open_dir_reserve_later(
            home.path().join("store"),
            cairn_store::Config {
                memory_budget_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let saved = load_persisted(&path).unwrap();
        let cfg = Config::new(home.path().to_owned());
        let (shared, _rx) = Shared::new(cfg, peer(), store, saved, Budget::new(1 << 20));
        {
            let st = shared.state();
            assert!(st.is_partner(&a) && st.is_partner(&b));
            assert_eq!(st.tracker.score(&a), 0.25);
            assert!(st.ledger.account(&b).is_some());
            let mut ids = st.partner_ids();
            ids.sort();
            let mut want = vec![a, b];
            want.sort();
            assert_eq!(ids, want);
        }
        shared.persist().unwrap();
        let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written, serde_json::from_str::<Value>(&old).unwrap());
    }
}
