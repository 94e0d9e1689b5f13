//! A running node: the swarm task, the holder's side of the shard protocol, partners and
//! pairing. The owner's side (placing, fetching, auditing and repairing its own shards) is in
//! [`crate::owner`]; the control socket in [`crate::server`].
//!
//! Threads: one tokio runtime with two workers runs the swarm task and the control
//! connections (at start, two short-lived threads store a new key and open the chunk store
//! while the runtime and libp2p are set up); chunk-store calls (blocking I/O) run on tokio's
//! blocking pool, at most `inflight_per_peer` per peer and bounded in bytes by the frame budget.
//!
//! Memory (the node's RSS budget is 64 MiB): frames in flight ≤ `frame_budget` (24 MiB), the
//! chunk store's index ≤ `store_memory` (8 MiB), partners and peers a few hundred bytes each,
//! chunks being placed ≤ [`crate::owner::MAX_PENDING`] records, libp2p connections ≤
//! `max_connections` (strangers ≤ `max_stranger_connections`) with at most `max_streams`
//! streams each.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cairn_store::{Lease, Store};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::audit::Challenge;
use crate::codec::{Budget, Held};
use crate::ledger::Ledger;
use crate::net::{self, Behaviour, BehaviourEvent, Limits};
use crate::records::{check_vault_shard, owner_of};
use crate::repair::{PeerHealth, PeerTracker};
use crate::wire::{ErrorCode, Msg, PAIR_INVITE, PAIR_WINDOW};

/// How a node is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// State directory: identity key, partners, chunk store.
    pub home: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to contact first (Kademlia bootstrap, and anyone to connect to at start).
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a slot on (for plugs behind NATs).
    pub relays: Vec<Multiaddr>,
    /// Bytes this plug offers to partners, all together (the one place capacity is set).
    pub capacity: u64,
    /// Bytes a partner may store here beyond what it stores for us.
    pub allowance: u64,
    /// The control socket.
    pub control: PathBuf,
    /// Discover plugs on the LAN by mDNS.
    pub mdns: bool,
    /// Time between audit rounds.
    pub audit_every: Duration,
    /// Time between repair rounds.
    pub repair_every: Duration,
    /// How long a partner may be unreachable before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// Audit score below which a partner's shards are rebuilt elsewhere.
    pub min_score: f64,
    /// Lease given with each put (renewed by audits).
    pub lease: Duration,
    /// Resource limits.
    pub limits: Limits,
    /// RAM for the chunk store's index.
    pub store_memory: usize,
    /// Test fixture only: misbehave as a holder (`wrong-bytes`).
    pub hostile: Option<String>,
}

impl Config {
    /// Defaults for a node at `home`.
    pub fn new(home: PathBuf) -> Self {
        Config {
            control: home.join("node.sock"),
            home,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            capacity: 1 << 30,
            allowance: 256 << 20,
            mdns: true,
            audit_every: Duration::from_secs(3600),
            repair_every: Duration::from_secs(600),
            grace: Duration::from_secs(24 * 3600),
            min_score: 0.2,
            lease: Duration::from_secs(90 * 24 * 3600),
            limits: Limits::default(),
            store_memory: 8 << 20,
            hostile: None,
        }
    }
}

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
    /// How: "button" or "invitation".
    pub via: String,
}

/// The persisted part of the node's state (`partners.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Partners by peer id.
    pub partners: BTreeMap<String, Partner>,
    /// Open invitations: secret hash → expiry (Unix seconds).
    pub invites: BTreeMap<String, u64>,
    /// Partners' audit records (a liar stays scored down across restarts).
    #[serde(default)]
    pub scores: crate::audit::Scores,
}

/// Runtime knowledge of a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerMeta {
    /// Open connections.
    pub connections: u32,
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
    pub ledger: Ledger,
    /// Bytes held for all partners together.
    pub used: u64,
    /// Peers seen at runtime.
    pub peers: HashMap<PeerId, PeerMeta>,
    /// Liveness and audit scores of partners.
    pub tracker: PeerTracker,
    /// Requests being served per peer.
    pub inflight: HashMap<PeerId, usize>,
    /// Chunks whose shards are being placed.
    pub pending: HashMap<[u8; 32], crate::records::ChunkRecord>,
    /// Our listen addresses (for invitations).
    pub listen: Vec<Multiaddr>,
    /// (chunk, partner) pairs with a put on the way: never two shards of a chunk to one peer.
    pub reserving: HashSet<([u8; 32], String)>,
    /// Chunks with shards being placed right now, and how many.
    pub busy: HashMap<[u8; 32], u32>,
    /// Placement records read lately, newest last (at most [`crate::owner::RECENT_RECORDS`]).
    pub recent: std::collections::VecDeque<([u8; 32], crate::records::ChunkRecord)>,
    /// Where the next partial audit round starts (the last record id audited).
    pub audit_after: Option<cairn_store::ShardId>,
    /// Partners' ids both ways: base58 conversions are costly on the per-shard paths.
    names: HashMap<PeerId, String>,
    ids: HashMap<String, PeerId>,
}

impl State {
    /// Whether `peer` is a partner.
    pub fn is_partner(&self, peer: &PeerId) -> bool {
        self.names.contains_key(peer)
    }

    /// Partners' peer ids.
    pub fn partner_ids(&self) -> Vec<PeerId> {
        self.names.keys().copied().collect()
    }

    /// A peer's id in text form (cached for partners).
    pub fn name(&self, peer: &PeerId) -> crate::PeerId {
        crate::PeerId(
            self.names
                .get(peer)
                .cloned()
                .unwrap_or_else(|| peer.to_string()),
        )
    }

    /// A peer id from its text form (cached for partners).
    pub fn id(&self, text: &str) -> Option<PeerId> {
        self.ids.get(text).copied().or_else(|| text.parse().ok())
    }

    /// Rebuilds the id caches from the partner list.
    fn reindex(&mut self) {
        self.names.clear();
        self.ids.clear();
        for p in self.saved.partners.keys() {
            if let Ok(id) = p.parse::<PeerId>() {
                self.names.insert(id, p.clone());
                self.ids.insert(p.clone(), id);
            }
        }
    }
}

/// A request for the swarm task.
pub enum Cmd {
    /// Send a shard-protocol request to a peer.
    Request {
        /// To whom.
        peer: PeerId,
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

impl Shared {
    /// Locks the shared state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("node state lock")
    }

    fn partners_path(&self) -> PathBuf {
        self.cfg.home.join("partners.json")
    }

    /// Held while a shard key is checked and written, so two puts (or a put and a delete) of
    /// one key cannot both pass the owner check; striped so other keys go on in parallel.
    fn key_lock(&self, shard: &crate::wire::ShardId) -> MutexGuard<'_, ()> {
        self.key_locks[usize::from(shard.0[0]) % self.key_locks.len()]
            .lock()
            .expect("key lock")
    }

    /// Writes partners and invitations (aside, then renamed; fsynced).
    pub fn persist(&self) -> Result<()> {
        let _g = self.persist_lock.lock().expect("persist lock");
        let bytes = {
            let mut st = self.state();
            st.saved.scores = st.tracker.scores().clone();
            serde_json::to_vec_pretty(&st.saved)?
        };
        write_atomic(&self.partners_path(), &bytes)
    }

    /// Records `peer` as a partner reached at `addrs`.
    pub fn add_partner(&self, peer: PeerId, addrs: Vec<Multiaddr>, via: &str) -> Result<()> {
        {
            let mut st = self.state();
            let key = peer.to_string();
            let entry = st.saved.partners.entry(key).or_insert_with(|| Partner {
                addrs: Vec::new(),
                since: now_secs(),
                via: via.to_owned(),
            });
            for a in addrs {
                let s = a.to_string();
                if !entry.addrs.contains(&s) && entry.addrs.len() < 8 {
                    entry.addrs.push(s);
                }
            }
            st.reindex();
            st.ledger.add_partner(crate::PeerId(peer.to_string()));
            st.tracker
                .seen(&crate::PeerId(peer.to_string()), now_secs());
        }
        eprintln!("cairn-node: paired with {peer} ({via})");
        self.persist()
    }

    /// A partner's health for repair.
    pub fn health(&self, peer: &str) -> PeerHealth {
        let now = now_secs();
        let id = crate::PeerId(peer.to_owned());
        let mut st = self.state();
        let meta = st.id(peer).and_then(|p| st.peers.get(&p).cloned());
        if meta.as_ref().is_some_and(|m| m.connections > 0) {
            st.tracker.seen(&id, now);
        }
        match st.tracker.health(&id, now) {
            PeerHealth::Live if meta.is_some_and(|m| m.unreachable()) => PeerHealth::Suspect,
            h => h,
        }
    }

    /// Sends a request to `peer` and waits for the answer (bounded by the request timeout).
    pub async fn request(&self, peer: PeerId, msg: Msg) -> Result<Msg, String> {
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
        let name = st.name(&peer);
        st.tracker.seen(&name, now_secs());
        Ok(msg)
    }
}

/// Writes `data` to `path` aside and renames it into place, fsyncing both.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn load_persisted(path: &Path) -> Result<Persisted> {
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

/// The button-pairing session of the swarm task.
struct PairSession {
    deadline: Instant,
    candidates: BTreeSet<PeerId>,
    probed: HashSet<PeerId>,
    first_at: Option<Instant>,
    reply: oneshot::Sender<Result<crate::control::PairOutcome, String>>,
}

/// How long after the first candidate appears the session waits for a second one (WPS-style
/// overlap detection) before pairing.
const PAIR_SETTLE: Duration = Duration::from_millis(2500);

/// Opens the node: key, store (its space reserve held), partners; rebuilds the ledger from
/// the store.
pub fn open(cfg: Config) -> Result<(Arc<Shared>, mpsc::Receiver<Cmd>, libp2p::identity::Keypair)> {
    make_home(&cfg)?;
    let key = crate::identity::load_or_create(&cfg.home.join("identity.key"))?;
    let budget = Budget::new(cfg.limits.frame_budget);
    let (shared, rx) = open_state(cfg, key.public().to_peer_id(), budget, true)?;
    Ok((shared, rx, key))
}

fn make_home(cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.home)
        .with_context(|| format!("{}: creating the node's home", cfg.home.display()))
}

/// The node's state around its chunk store; with `reserve_now` false a missing space reserve
/// is left for [`make_reserve`].
fn open_state(
    cfg: Config,
    me: PeerId,
    budget: Budget,
    reserve_now: bool,
) -> Result<(Arc<Shared>, mpsc::Receiver<Cmd>)> {
    let store_cfg = cairn_store::Config {
        memory_budget_bytes: cfg.store_memory,
        max_shard_bytes: crate::wire::MAX_SHARD as u32,
        max_batch_bytes: 8 << 20,
        ..Default::default()
    };
    let dir = cfg.home.join("store");
    let store = if reserve_now {
        Store::open_dir(&dir, store_cfg)
    } else {
        Store::open_dir_reserve_later(&dir, store_cfg)
    }
    .with_context(|| format!("{}: opening the chunk store", dir.display()))?;
    let saved = load_persisted(&cfg.home.join("partners.json"))?;
    let mut ledger = Ledger::new(cfg.allowance);
    let mut tracker =
        PeerTracker::new(cfg.grace.as_secs(), cfg.min_score).with_scores(saved.scores.clone());
    let start = now_secs();
    for p in saved.partners.keys() {
        let id = crate::PeerId(p.clone());
        ledger.add_partner(id.clone());
        // Partners count as seen at start: the grace period runs from now.
        tracker.seen(&id, start);
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
            names: HashMap::new(),
            ids: HashMap::new(),
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
    shared.state().reindex();
    // Books rebuilt from what the store and the records really hold (authoritative after a
    // crash).
    recount_held(&shared)?;
    crate::owner::rebuild_books(&shared)?;
    Ok((shared, rx))
}

/// Makes the chunk store's space reserve if it is missing (on a first start: `reserve_bytes`
/// of zeros, synced — long on an SD card), after the node is ready; see
/// [`Store::open_reserve_later`].
fn make_reserve(shared: &Arc<Shared>) {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        if !s.store.ensure_reserve() {
            eprintln!(
                "cairn-node: chunk store: no room for its space reserve (deletes on a full disk \
                 may fail until compaction frees space)"
            );
        }
    });
}

/// Recomputes what we hold for each partner from the store (at start, after leases ran out).
pub fn recount_held(shared: &Shared) -> Result<()> {
    let partners = shared.state().partner_ids();
    let mut total = 0;
    let mut held = Vec::with_capacity(partners.len());
    for p in partners {
        let h = held_for(&shared.store, &p)?;
        total += h;
        held.push((p, h));
    }
    let mut st = shared.state();
    for (p, h) in held {
        st.ledger
            .set_held_for_them(&crate::PeerId(p.to_string()), h);
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

/// Runs `f` on a thread of its own; its result comes through the receiver (an error if the
/// thread could not start or panicked).
fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> oneshot::Receiver<Result<T>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(anyhow::anyhow!("starting a thread: {e}")));
        return rx;
    }
    rx
}

/// Runs the node until SIGTERM/SIGINT. `ready` is called once it listens and serves control.
pub fn run(cfg: Config, ready: impl FnOnce() + Send + 'static) -> Result<()> {
    run_until(cfg, ready, None)
}

/// Runs the node until SIGTERM/SIGINT or until `stop` fires (for tests that run a node in
/// their own process).
pub fn run_until(
    cfg: Config,
    ready: impl FnOnce() + Send + 'static,
    stop: Option<oneshot::Receiver<()>>,
) -> Result<()> {
    make_home(&cfg)?;
    let key_path = cfg.home.join("identity.key");
    let (key, new_key) = crate::identity::load_or_generate(&key_path)?;
    let me = key.public().to_peer_id();
    let budget = Budget::new(cfg.limits.frame_budget);
    let (limits, mdns) = (cfg.limits.clone(), cfg.mdns);
    // The disk work (a new key's file; the chunk store) runs on threads of its own while the
    // runtime and the libp2p stack are set up, so the waits for the medium overlap that CPU
    // work (and two syncs may share one journal commit). Both are done before anything
    // listens or the peer id is shown.
    let key_saved = new_key.then(|| {
        let (key, path) = (key.clone(), key_path.clone());
        on_thread("node-key", move || crate::identity::store(&path, &key))
    });
    let opened = {
        let budget = budget.clone();
        on_thread("node-store", move || open_state(cfg, me, budget, false))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let swarm = net::build(key, &limits, budget, mdns)?;
        if let Some(saved) = key_saved {
            saved.await.context("storing the node key")??;
        }
        let (shared, rx) = opened.await.context("opening the node")??;
        let listener = crate::server::bind(&shared.cfg.control)?;
        let mut task = SwarmTask::new(shared.clone(), swarm, rx);
        task.start()?;
        let server = tokio::spawn(crate::server::serve(shared.clone(), listener));
        let background = tokio::spawn(crate::owner::background(shared.clone()));
        eprintln!(
            "cairn-node: {} starting, control {}",
            shared.me,
            shared.cfg.control.display()
        );
        let mut ready = Some(ready);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let stop = async move {
            match stop {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = &mut stop => break,
                () = task.step() => {
                    if task.listening && ready.is_some() {
                        (ready.take().expect("once"))();
                        // What can follow readiness does.
                        make_reserve(&shared);
                    }
                }
            }
        }
        eprintln!("cairn-node: stopping");
        server.abort();
        background.abort();
        crate::owner::flush(&shared).await.ok();
        shared.persist()?;
        let _ = std::fs::remove_file(&shared.cfg.control);
        Ok(())
    })
}

/// The swarm and everything only it touches.
pub struct SwarmTask {
    shared: Arc<Shared>,
    /// The libp2p swarm.
    pub swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Cmd>,
    done_tx: mpsc::Sender<(ResponseChannel<Held>, Msg, PeerId)>,
    done_rx: mpsc::Receiver<(ResponseChannel<Held>, Msg, PeerId)>,
    outstanding: HashMap<OutboundRequestId, Outstanding>,
    pairing: Option<PairSession>,
    tick: tokio::time::Interval,
    redial: Instant,
    /// True once at least one listener is up.
    pub listening: bool,
    /// Strangers' connections closed at once for being over their limit (not counted).
    uncounted: HashSet<libp2p::swarm::ConnectionId>,
}

enum Outstanding {
    Reply(oneshot::Sender<Result<Held, String>>),
    PairProbe(PeerId),
}

impl SwarmTask {
    fn new(shared: Arc<Shared>, swarm: Swarm<Behaviour>, rx: mpsc::Receiver<Cmd>) -> Self {
        // One answer per request served; bounded by the requests in flight.
        let (done_tx, done_rx) = mpsc::channel(256);
        SwarmTask {
            shared,
            swarm,
            rx,
            done_tx,
            done_rx,
            outstanding: HashMap::new(),
            pairing: None,
            tick: tokio::time::interval(Duration::from_millis(250)),
            redial: Instant::now(),
            listening: false,
            uncounted: HashSet::new(),
        }
    }

    fn start(&mut self) -> Result<()> {
        let cfg = self.shared.cfg.clone();
        for a in &cfg.listen {
            self.swarm
                .listen_on(a.clone())
                .with_context(|| format!("listening on {a}"))?;
        }
        for r in &cfg.relays {
            let a = r.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
            if let Err(e) = self.swarm.listen_on(a.clone()) {
                eprintln!("cairn-node: relay {r}: {e}");
            }
        }
        for b in &cfg.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = b.iter().last() {
                self.swarm.behaviour_mut().kad.add_address(&peer, b.clone());
            }
            if let Err(e) = self.swarm.dial(b.clone()) {
                eprintln!("cairn-node: bootstrap {b}: {e}");
            }
        }
        if !cfg.bootstrap.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        self.redial_partners();
        Ok(())
    }

    fn redial_partners(&mut self) {
        let partners: Vec<(PeerId, Vec<Multiaddr>)> = {
            let st = self.shared.state();
            st.saved
                .partners
                .iter()
                .filter_map(|(p, info)| {
                    let peer: PeerId = p.parse().ok()?;
                    let addrs = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    Some((peer, addrs))
                })
                .collect()
        };
        for (peer, addrs) in partners {
            self.dial_known(peer, addrs);
        }
    }

    /// Remembers `peer`'s addresses and connects to it unless it is connected already.
    fn dial_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        for a in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        if !self.swarm.is_connected(&peer) && !addrs.is_empty() {
            let _ = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addrs).build());
        }
    }

    /// Handles one event of any source.
    pub async fn step(&mut self) {
        tokio::select! {
            ev = self.swarm.select_next_some() => self.on_swarm(ev),
            Some(cmd) = self.rx.recv() => self.on_cmd(cmd),
            Some((chan, msg, peer)) = self.done_rx.recv() => {
                if let Some(n) = self.shared.state().inflight.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
                let _ = self.swarm.behaviour_mut().shard.send_response(chan, Held::new(msg));
            }
            _ = self.tick.tick() => self.on_tick(),
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { peer, msg, reply } => {
                let unreachable = self
                    .shared
                    .state()
                    .peers
                    .get(&peer)
                    .is_some_and(PeerMeta::unreachable);
                if unreachable {
                    let _ = reply.send(Err(format!("partner {peer} is unreachable")));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .shard
                    .send_request(&peer, Held::new(msg));
                self.outstanding.insert(id, Outstanding::Reply(reply));
            }
            Cmd::Pair { window, reply } => {
                if self.pairing.is_some() {
                    let _ = reply.send(Err("a pairing window is already open".into()));
                    return;
                }
                eprintln!("cairn-node: pairing window open for {} s", window.as_secs());
                self.pairing = Some(PairSession {
                    deadline: Instant::now() + window,
                    candidates: BTreeSet::new(),
                    probed: HashSet::new(),
                    first_at: None,
                    reply,
                });
            }
            Cmd::Dial { peer, addrs } => {
                self.dial_known(peer, addrs);
            }
        }
    }

    fn on_tick(&mut self) {
        if self.redial.elapsed() > Duration::from_secs(15) {
            self.redial = Instant::now();
            self.redial_partners();
        }
        let Some(s) = self.pairing.as_mut() else {
            return;
        };
        // Probe every plug on the local network we have not asked yet.
        let local: Vec<PeerId> = {
            let st = self.shared.state();
            st.peers
                .iter()
                .filter(|(_, m)| m.local)
                .map(|(p, _)| *p)
                .collect()
        };
        for p in local {
            if s.probed.insert(p) {
                let id = self.swarm.behaviour_mut().shard.send_request(
                    &p,
                    Held::new(Msg::Pair {
                        mode: PAIR_WINDOW,
                        secret: [0; 16],
                    }),
                );
                self.outstanding.insert(id, Outstanding::PairProbe(p));
            }
        }
        let now = Instant::now();
        let settled = s.first_at.is_some_and(|t| now >= t + PAIR_SETTLE);
        if !settled && now < s.deadline {
            return;
        }
        let s = self.pairing.take().expect("session");
        let outcome = match s.candidates.len() {
            0 => crate::control::PairOutcome::NoneFound,
            1 => {
                let peer = *s.candidates.iter().next().expect("one");
                let addrs = self.addrs_of(&peer);
                match self.shared.add_partner(peer, addrs, "button") {
                    Ok(()) => crate::control::PairOutcome::Paired {
                        peer: peer.to_string(),
                    },
                    Err(e) => {
                        let _ = s
                            .reply
                            .send(Err(format!("recording partner {peer}: {e:#}")));
                        return;
                    }
                }
            }
            _ => {
                eprintln!(
                    "cairn-node: pairing refused: {} plugs are in pairing mode",
                    s.candidates.len()
                );
                crate::control::PairOutcome::Overlap {
                    candidates: s.candidates.iter().map(|p| p.to_string()).collect(),
                }
            }
        };
        let _ = s.reply.send(Ok(outcome));
    }

    fn addrs_of(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                if e.node.key.preimage() == peer {
                    out.extend(e.node.value.iter().cloned());
                }
            }
        }
        out.truncate(8);
        out
    }

    fn pair_candidate(&mut self, peer: PeerId) -> bool {
        let local = self
            .shared
            .state()
            .peers
            .get(&peer)
            .is_some_and(|m| m.local);
        match self.pairing.as_mut() {
            Some(s) if local => {
                s.candidates.insert(peer);
                s.first_at.get_or_insert_with(Instant::now);
                true
            }
            _ => false,
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                eprintln!("cairn-node: listening on {address}");
                self.listening = true;
                self.shared.state().listen.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                {
                    let st = self.shared.state();
                    if !st.is_partner(&peer_id) {
                        let strangers: u32 = st
                            .peers
                            .iter()
                            .filter(|(p, _)| !st.is_partner(p))
                            .map(|(_, m)| m.connections)
                            .sum();
                        if strangers >= self.shared.cfg.limits.max_stranger_connections {
                            drop(st);
                            // Not counted: the close event finds no connection to take off.
                            self.uncounted.insert(connection_id);
                            self.swarm.close_connection(connection_id);
                            return;
                        }
                    }
                }
                let mut st = self.shared.state();
                let m = st.peers.entry(peer_id).or_default();
                m.connections += 1;
                m.dial_failed_at = None;
                if net::is_local(&addr) {
                    m.local = true;
                }
                if let Some(ip) = net::public_ip(&addr) {
                    m.public_ip = Some(ip);
                }
                st.tracker
                    .seen(&crate::PeerId(peer_id.to_string()), now_secs());
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => {
                let mut st = self.shared.state();
                let m = st.peers.entry(peer).or_default();
                if m.connections == 0 {
                    m.dial_failed_at = Some(Instant::now());
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if self.uncounted.remove(&connection_id) {
                    return;
                }
                let mut st = self.shared.state();
                if let Some(m) = st.peers.get_mut(&peer_id) {
                    m.connections = m.connections.saturating_sub(1);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Shard(ev)) => self.on_shard(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.shared.state().peers.entry(peer).or_default().local = true;
                    self.dial_known(peer, vec![addr]);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let partner = self.shared.state().is_partner(&peer_id);
                for a in info.listen_addrs.iter().take(8) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                if partner {
                    let mut st = self.shared.state();
                    let mut changed = false;
                    if let Some(p) = st.saved.partners.get_mut(&peer_id.to_string()) {
                        for a in info.listen_addrs.iter().take(8) {
                            let s = a.to_string();
                            if !p.addrs.contains(&s) && p.addrs.len() < 8 {
                                p.addrs.push(s);
                                changed = true;
                            }
                        }
                    }
                    drop(st);
                    if changed {
                        let _ = self.shared.persist();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => {
                let mut st = self.shared.state();
                let name = st.name(&peer);
                st.tracker.seen(&name, now_secs());
            }
            _ => {}
        }
    }

    fn on_shard(&mut self, ev: request_response::Event<Held, Held>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(peer, request, channel),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.outstanding.remove(&request_id) {
                Some(Outstanding::Reply(tx)) => {
                    let _ = tx.send(Ok(response));
                }
                Some(Outstanding::PairProbe(p)) => {
                    if matches!(response.msg, Msg::Paired) {
                        self.pair_candidate(p);
                    }
                }
                None => {}
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(Outstanding::Reply(tx)) = self.outstanding.remove(&request_id) {
                    let _ = tx.send(Err(format!("peer {peer}: {error}")));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                eprintln!("cairn-node: request from {peer} failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Held, channel: ResponseChannel<Held>) {
        let reply = |sw: &mut Swarm<Behaviour>, channel, msg: Msg| {
            let _ = sw
                .behaviour_mut()
                .shard
                .send_response(channel, Held::new(msg));
        };
        // Pairing requests are the only ones a non-partner may make.
        if let Msg::Pair { mode, secret } = request.msg {
            let answer = self.on_pair(peer, mode, secret);
            reply(&mut self.swarm, channel, answer);
            return;
        }
        {
            let mut st = self.shared.state();
            if !st.is_partner(&peer) {
                drop(st);
                reply(
                    &mut self.swarm,
                    channel,
                    err(
                        ErrorCode::BadRequest,
                        format!(
                            "peer {peer} is not a partner of {}: pair first",
                            self.shared.me
                        ),
                    ),
                );
                return;
            }
            let limit = self.shared.cfg.limits.inflight_per_peer;
            let n = st.inflight.entry(peer).or_default();
            if *n >= limit {
                drop(st);
                reply(
                    &mut self.swarm,
                    channel,
                    err(
                        ErrorCode::Busy,
                        format!(
                            "too many requests in flight from {peer} (limit {limit}); retry later"
                        ),
                    ),
                );
                return;
            }
            *n += 1;
        }
        let shared = self.shared.clone();
        let done = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let msg = serve(&shared, peer, request);
            let _ = done.blocking_send((channel, msg, peer));
        });
    }

    fn on_pair(&mut self, peer: PeerId, mode: u8, secret: [u8; 16]) -> Msg {
        match mode {
            PAIR_WINDOW => {
                if self.pair_candidate(peer) {
                    Msg::Paired
                } else if self.pairing.is_some() {
                    err(
                        ErrorCode::BadRequest,
                        "pairing by button works only between plugs on the same network".into(),
                    )
                } else {
                    err(
                        ErrorCode::BadRequest,
                        format!("the pairing window of {} is not open", self.shared.me),
                    )
                }
            }
            PAIR_INVITE => {
                let h = crate::invite::secret_hash(&secret);
                let expiry = self.shared.state().saved.invites.remove(&h);
                match expiry {
                    None => err(
                        ErrorCode::BadRequest,
                        "unknown or already used invitation".into(),
                    ),
                    Some(t) if t < now_secs() => {
                        let _ = self.shared.persist();
                        err(ErrorCode::BadRequest, "the invitation has expired".into())
                    }
                    Some(_) => {
                        let addrs = self.addrs_of(&peer);
                        match self.shared.add_partner(peer, addrs, "invitation") {
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
}

/// An error reply (reason cut to the wire's bound).
pub fn err(code: ErrorCode, mut reason: String) -> Msg {
    if reason.len() > crate::wire::MAX_REASON {
        let mut cut = crate::wire::MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Msg::Error { code, reason }
}

fn flip_for_hostile(shared: &Shared, bytes: &mut [u8]) {
    // A holder that kept something else than it was given: one byte in every 512 differs.
    if shared.cfg.hostile.as_deref() == Some("wrong-bytes") {
        for b in bytes.iter_mut().step_by(512) {
            *b ^= 0x5a;
        }
    }
}

fn store_err(e: cairn_store::Error) -> Msg {
    err(ErrorCode::Internal, format!("chunk store: {e}"))
}

fn not_here(shard: &crate::wire::ShardId) -> Msg {
    err(ErrorCode::NotFound, format!("no shard {shard} here"))
}

/// The shard's bytes as this holder has them; the error reply otherwise.
fn held(shared: &Shared, shard: &crate::wire::ShardId) -> Result<Vec<u8>, Msg> {
    match shared.store.get(cairn_store::ShardId(shard.0)) {
        Ok(mut data) => {
            flip_for_hostile(shared, &mut data);
            Ok(data)
        }
        Err(cairn_store::Error::NotFound { .. }) => Err(not_here(shard)),
        Err(e) => Err(store_err(e)),
    }
}

/// The shard's entry if `owner` may change it (or it is absent); a refusal if another owner's.
fn owned(
    shared: &Shared,
    shard: &crate::wire::ShardId,
    owner: cairn_store::OwnerId,
) -> Result<Option<cairn_store::ShardInfo>, Msg> {
    match shared.store.info(cairn_store::ShardId(shard.0)) {
        Ok(Some(i)) if i.owner != owner => Err(err(
            ErrorCode::BadRequest,
            format!("shard {shard} is held for another owner"),
        )),
        Ok(i) => Ok(i),
        Err(e) => Err(store_err(e)),
    }
}

/// Books `bytes` no longer held for `partner`.
fn release(shared: &Shared, partner: &crate::PeerId, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let mut st = shared.state();
    let _ = st.ledger.released_for_them(partner, bytes);
    st.used = st.used.saturating_sub(bytes);
}

/// Serves one shard request of partner `peer` (blocking: runs on the blocking pool).
fn serve(shared: &Shared, peer: PeerId, request: Held) -> Msg {
    let owner = owner_of(&peer);
    let partner = shared.state().name(&peer);
    match request.msg {
        Msg::Put {
            shard,
            lease_secs,
            data,
        } => {
            if let Err(e) = check_vault_shard(&shard, &data) {
                return err(ErrorCode::HashMismatch, e);
            }
            let _key = shared.key_lock(&shard);
            let old = match owned(shared, &shard, owner) {
                Ok(i) => i.map_or(0, |i| u64::from(i.len)),
                Err(m) => return m,
            };
            let len = data.len() as u64;
            let extra = len.saturating_sub(old);
            {
                let mut st = shared.state();
                if st.used + extra > shared.cfg.capacity {
                    return err(
                        ErrorCode::TooLarge,
                        format!(
                            "{} offers {} bytes to partners and {} are in use",
                            shared.me, shared.cfg.capacity, st.used
                        ),
                    );
                }
                if let Err(e) = st.ledger.accept(&partner, extra) {
                    return err(ErrorCode::QuotaExceeded, e.to_string());
                }
                st.used += extra;
            }
            let lease = Lease::Until(now_secs() + u64::from(lease_secs));
            match shared
                .store
                .put(cairn_store::ShardId(shard.0), &data, owner, lease)
            {
                Ok(()) => {
                    // A smaller replacement frees the difference.
                    release(shared, &partner, old.saturating_sub(len));
                    Msg::Stored { shard }
                }
                Err(e) => {
                    release(shared, &partner, extra);
                    err(ErrorCode::TooLarge, format!("chunk store: {e}"))
                }
            }
        }
        Msg::Get { shard } => match held(shared, &shard) {
            Ok(data) => Msg::ShardData { shard, data },
            Err(m) => m,
        },
        Msg::Delete { shard } => {
            let _key = shared.key_lock(&shard);
            match owned(shared, &shard, owner) {
                Ok(Some(i)) => match shared.store.delete(cairn_store::ShardId(shard.0)) {
                    Ok(()) => {
                        release(shared, &partner, u64::from(i.len));
                        Msg::Deleted { shard }
                    }
                    Err(e) => store_err(e),
                },
                Ok(None) => not_here(&shard),
                Err(m) => m,
            }
        }
        Msg::RenewLease { shard, lease_secs } => {
            let _key = shared.key_lock(&shard);
            let id = cairn_store::ShardId(shard.0);
            match owned(shared, &shard, owner) {
                Ok(Some(_)) => {
                    let until = Lease::Until(now_secs() + u64::from(lease_secs));
                    let r = shared
                        .store
                        .get(id)
                        .and_then(|data| shared.store.put(id, &data, owner, until));
                    match r {
                        Ok(()) => Msg::LeaseRenewed { shard, lease_secs },
                        Err(e) => store_err(e),
                    }
                }
                Ok(None) => not_here(&shard),
                Err(m) => m,
            }
        }
        Msg::AuditChallenge {
            shard,
            nonce,
            offset,
            len,
        } => match held(shared, &shard) {
            Ok(data) => {
                let c = Challenge {
                    shard,
                    nonce,
                    offset,
                    len,
                };
                match c.prove(&data) {
                    Ok(proof) => Msg::AuditResponse { shard, proof },
                    Err(e) => err(ErrorCode::BadRequest, e.to_string()),
                }
            }
            Err(m) => m,
        },
        Msg::FreeSpaceQuery => {
            let st = shared.state();
            let free = shared.cfg.capacity.saturating_sub(st.used);
            let a = st.ledger.account(&partner).unwrap_or_default();
            let quota = (a.held_for_us + st.ledger.allowance).saturating_sub(a.held_for_them);
            Msg::FreeSpace {
                free: free.min(quota),
                offered: shared.cfg.capacity,
            }
        }
        other => err(
            ErrorCode::BadRequest,
            format!("{} is not a request", kind_name(&other)),
        ),
    }
}

fn kind_name(m: &Msg) -> &'static str {
    match m {
        Msg::Stored { .. } => "stored",
        Msg::ShardData { .. } => "shard-data",
        Msg::Deleted { .. } => "deleted",
        Msg::LeaseRenewed { .. } => "lease-renewed",
        Msg::AuditResponse { .. } => "audit-response",
        Msg::FreeSpace { .. } => "free-space",
        Msg::Error { .. } => "error",
        Msg::Paired => "paired",
        _ => "this message",
    }
}
