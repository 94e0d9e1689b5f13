//! Deterministic churn simulation of a friends' storage network: many nodes in one process, an
//! in-memory message network, seeded.
//!
//! Nodes come and go in sessions (exponential on and off times; each node's long-run availability
//! is drawn from a configured range whose floor defaults to 17 %, Wuala's minimum), some leave for
//! good (exponential lifetimes) while newcomers join at the matching rate, and a few cheat, each
//! following a [`Strategy`]: acknowledge shards and drop them (then guess at challenges), keep
//! them but serve forged bytes, or drop them and try to answer challenges by fetching the shard
//! from its other holders (who serve an owner's shards only to that owner). Owners store chunks as `k`-of-`n` shards and run
//! the same logic the real node runs — [`placement::place`] to choose holders, [`PeerTracker`] to
//! judge peers from pings and audits, [`repair::plan`] to decide what to rebuild — over messages
//! that go through a bounded queue with latency and are lost when their target is offline.
//!
//! The outcome ([`SimReport`]) is measured against the ground truth: a chunk is lost when fewer
//! than `k` of the shards its owner knows of still exist on nodes that have not left. Everything
//! is drawn from one seeded generator and visited in a fixed order, so a seed replays a run
//! exactly.
//!
//! Time moves in ticks (an hour by default). Each tick, every online owner pings its partners
//! (the pong carries free space) and challenges each holder of its shards on one of them; a
//! minute later it writes due chunks and plans repairs within its budget; fetches, rebuilds and
//! puts then run over the network within the tick. Nodes go on- and offline at any millisecond,
//! so a repair can lose a source or a target midway, as in life.
//!
//! Audits work as the real node's (`owner::audit`): the owner prepares one challenge per holding
//! while it has the shard (a nonce; the proof is keyed by it over the shard's bytes), spends it on
//! the next audit, and audits a holding without one by fetching the shard whole and checking it
//! against the hash it recorded, preparing a new challenge if it passes. A wrong proof, wrong
//! bytes or "not found" halve the holder's score and mark the holding bad: the owner drops it from
//! its books and repair places the shard anew; a repair source serving wrong bytes is treated the
//! same. Silence (offline) is only retried.
//!
//! Simplifications, on purpose: shards are not stored, only their contents' tags (a 64-bit value
//! per shard key, what a hash of its bytes would be) and proofs are a keyed mix of nonce and tag;
//! a shard the
//! owner dropped from its books is deleted by a message sent when the holder is next seen (the
//! real node also has leases for that).
//!
//! Memory: per node a set of shard keys it holds; per owner a tracker entry and a known-free
//! figure per partner, its chunks' holdings, and bounded pending work; the message queue holds at
//! most [`SimConfig::queue_capacity`] messages (more are dropped and counted, like a full send
//! buffer); the churn queue holds one event per node plus one arrival.

use crate::placement::{self, Candidate, PlacementError};
use crate::repair::{self, ChunkState, Holding, PeerHealth, PeerTracker, Policy, RepairError};
use crate::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// Milliseconds in a second, an hour, a week.
const SEC_MS: u64 = 1000;
const HOUR_MS: u64 = 3600 * SEC_MS;
const WEEK_MS: u64 = 7 * 24 * HOUR_MS;
/// When, after the start of a tick, owners write and plan repairs: after the pongs of the
/// tick's pings are in, and well within the tracker's live window.
const PLAN_AT_MS: u64 = 60 * SEC_MS;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Nodes at the start (owners included).
    pub nodes: usize,
    /// Nodes that store chunks (the first ones; honest, they never leave for good).
    pub owners: usize,
    /// Chunks written in all, spread evenly over owners and over the first `ingest_hours`.
    pub chunks: usize,
    /// Hours over which the chunks are written.
    pub ingest_hours: u64,
    /// Shards needed to rebuild a chunk.
    pub k: u8,
    /// Shards made of a chunk.
    pub n: u8,
    /// Size of a shard (placement weighs free bytes).
    pub shard_bytes: u64,
    /// Each node's offered capacity in shards, drawn uniformly from this range.
    pub capacity_shards: (u64, u64),
    /// Simulated duration.
    pub weeks: u32,
    /// Length of one owner round (ping, audit, write, repair).
    pub tick_ms: u64,
    /// Long-run fraction of time each node is online, drawn uniformly from this range.
    pub availability: (f64, f64),
    /// The same for owners: the repair loop runs on the owner's plug, so an owner that is
    /// rarely online repairs rarely (plugs are always-on appliances).
    pub owner_availability: (f64, f64),
    /// Mean length of an online session.
    pub mean_session_hours: f64,
    /// Mean time before a node (not an owner) leaves for good; newcomers arrive at the rate
    /// that keeps the population steady. `f64::INFINITY` for no departures.
    pub mean_lifetime_weeks: f64,
    /// Nodes at the start that cheat (never owners), following the cheating [`Strategy`]s in
    /// turn ([`Strategy::CHEATS`]).
    pub dishonest: usize,
    /// Pairs of nodes at the start that share one public address (one household).
    pub shared_ip_pairs: usize,
    /// Whether owners repair at all (off: a baseline to show what repair is worth).
    pub repair: bool,
    /// When to repair, how long a silent peer keeps its shards, the minimum audit score.
    pub policy: Policy,
    /// Shards an owner may transfer for repairs per tick (fetches plus uploads): its bandwidth
    /// (240 shards of 1 MiB an hour is about 0.56 Mbit/s).
    pub repair_budget_shards: usize,
    /// Audit each holder once every this many ticks.
    pub audit_every_ticks: u64,
    /// A partner unseen this long and holding nothing of ours is forgotten (not pinged anymore).
    pub forget_after_hours: u64,
    /// One-way message latency in milliseconds, drawn uniformly from this range.
    pub latency_ms: (u64, u64),
    /// Most messages in flight; further sends are dropped and counted.
    pub queue_capacity: usize,
}

impl SimConfig {
    /// A small network that runs in about a second in release builds: 40 nodes (6 owners,
    /// 3 cheaters, one of each strategy), 4 weeks, 300 chunks of 4-of-8, nodes online 17–100 % of the time, a mean
    /// lifetime of 6 weeks (about half the nodes leave within the run).
    pub fn quick(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 40,
            owners: 6,
            chunks: 300,
            ingest_hours: 24,
            k: 4,
            n: 8,
            shard_bytes: 1 << 20,
            capacity_shards: (150, 600),
            weeks: 4,
            tick_ms: HOUR_MS,
            availability: (0.17, 1.0),
            owner_availability: (0.9, 1.0),
            mean_session_hours: 8.0,
            mean_lifetime_weeks: 6.0,
            dishonest: 3,
            shared_ip_pairs: 3,
            repair: true,
            policy: Policy::for_code(4, 8),
            repair_budget_shards: 240,
            audit_every_ticks: 1,
            forget_after_hours: 7 * 24,
            latency_ms: (5, 400),
            queue_capacity: 1 << 16,
        }
    }

    /// The long run of the benchmark: 200 nodes (20 owners, 6 cheaters), 26 weeks, 5000 chunks
    /// written over the first week, a mean lifetime of 26 weeks, audits every two hours (half
    /// the messages of hourly ones; about a minute in release builds).
    pub fn long(seed: u64) -> Self {
        SimConfig {
            nodes: 200,
            owners: 20,
            chunks: 5000,
            ingest_hours: 7 * 24,
            capacity_shards: (200, 1000),
            weeks: 26,
            mean_lifetime_weeks: 26.0,
            dishonest: 6,
            shared_ip_pairs: 10,
            repair_budget_shards: 400,
            audit_every_ticks: 2,
            ..Self::quick(seed)
        }
    }

    /// Checks the configuration makes sense; says what is wrong if not.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |why: String| Err(SimError::Config(why));
        if self.k == 0 || self.k > self.n {
            return bad(format!("{}-of-{} is not a code", self.k, self.n));
        }
        if self.owners == 0 || self.owners > self.nodes {
            return bad(format!("{} owners among {} nodes", self.owners, self.nodes));
        }
        if self.owners + self.dishonest > self.nodes {
            return bad(format!(
                "{} owners and {} dishonest nodes among {} nodes",
                self.owners, self.dishonest, self.nodes
            ));
        }
        if 2 * self.shared_ip_pairs > self.nodes {
            return bad(format!(
                "{} address-sharing pairs among {} nodes",
                self.shared_ip_pairs, self.nodes
            ));
        }
        let (lo, hi) = self.availability;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return bad(format!(
                "availability range {lo}..{hi} is not within (0, 1]"
            ));
        }
        if !(self.mean_session_hours > 0.0 && self.mean_session_hours.is_finite()) {
            return bad(format!("mean session of {} hours", self.mean_session_hours));
        }
        if self.mean_lifetime_weeks.is_nan() || self.mean_lifetime_weeks <= 0.0 {
            return bad(format!(
                "mean lifetime of {} weeks",
                self.mean_lifetime_weeks
            ));
        }
        if self.capacity_shards.0 > self.capacity_shards.1 {
            return bad(format!("capacity range {:?}", self.capacity_shards));
        }
        if self.latency_ms.0 > self.latency_ms.1 || self.latency_ms.1 >= PLAN_AT_MS {
            return bad(format!(
                "latency range {:?} ms (must stay under a minute)",
                self.latency_ms
            ));
        }
        if self.tick_ms < 4 * PLAN_AT_MS {
            return bad(format!("a tick of {} ms is too short", self.tick_ms));
        }
        if self.audit_every_ticks == 0 || self.queue_capacity == 0 || self.shard_bytes == 0 {
            return bad("audit period, queue capacity and shard size must be positive".into());
        }
        if self.chunks > u32::MAX as usize {
            return bad(format!("{} chunks", self.chunks));
        }
        Ok(())
    }
}

/// A configuration the simulation cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    /// Names what is wrong.
    #[error("churn simulation: {0}")]
    Config(String),
}

/// How a simulated holder behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Strategy {
    /// Keeps what it acknowledges, serves it to its owner, proves it.
    Honest,
    /// Acknowledges shards and drops them; answers challenges with a guess (it has no bytes).
    DropsShards,
    /// Keeps the shards (so it passes challenges) but serves forged bytes when asked for one.
    ForgesOnGet,
    /// Drops shards; answers a challenge by fetching the shard from another of its holders,
    /// which serves an owner's shards only to that owner, then guesses.
    FetchesFromOthers,
}

impl Strategy {
    /// The cheating strategies, in the order cheaters are given them.
    pub const CHEATS: [Strategy; 3] = [
        Strategy::DropsShards,
        Strategy::ForgesOnGet,
        Strategy::FetchesFromOthers,
    ];

    /// Whether it keeps the bytes of what it acknowledges.
    fn stores(self) -> bool {
        matches!(self, Strategy::Honest | Strategy::ForgesOnGet)
    }
}

/// What the owners' audits found of the holders following one strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StrategyReport {
    /// Nodes following it (at the start or joined).
    pub nodes: usize,
    /// Audits (challenges and whole fetches) and repair fetches they passed.
    pub passed: u64,
    /// Those they failed.
    pub failed: u64,
    /// Nodes that failed at least one.
    pub caught: usize,
    /// The lowest score an owner that judged one of them gives it at the end (1.0: none judged).
    pub score_min: f64,
    /// The highest score an owner that caught one of them gives it at the end (0.0: none
    /// caught): what cheating costs it.
    pub score_max_caught: f64,
    /// Shards on them by the owners' books at the end.
    pub shards_end: usize,
}

/// What a run measured. Identical for identical configurations.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Simulated weeks.
    pub sim_weeks: u32,
    /// Nodes at the start.
    pub nodes: usize,
    /// Newcomers that joined.
    pub nodes_joined: usize,
    /// Nodes that left for good.
    pub nodes_left: usize,
    /// Chunks asked to be written.
    pub chunks: usize,
    /// Chunks whose write completed (all `n` shards acknowledged).
    pub chunks_stored: usize,
    /// Stored chunks that lost more than `n - k` shards: gone for good.
    pub chunks_lost: usize,
    /// Fraction of stored chunks still recoverable at the end.
    pub durability: f64,
    /// Repairs done (k shards fetched, new shards sent out).
    pub repairs: u64,
    /// Repairs given up midway (a source failed or went away, or the owner did); planned again
    /// next tick.
    pub repairs_abandoned: u64,
    /// Rebuilt shards stored on new holders.
    pub shards_moved: u64,
    /// Shards fetched as repair sources.
    pub shards_fetched: u64,
    /// Rebuilt shards whose previous holder still had its copy (it was only away longer than
    /// the grace period): the price of the grace period being short.
    pub shards_replaced_while_held: u64,
    /// Repairs planned but put off to a later tick because the owner's budget was spent.
    pub repairs_deferred: u64,
    /// Fewest shards any stored chunk had left at the end of any tick (ground truth).
    pub min_live_shards: u8,
    /// Audits answered right / wrong.
    pub audits_passed: u64,
    /// Audits answered wrong (or a shard a holder could not return).
    pub audits_failed: u64,
    /// Most shards held by dishonest nodes at once, by the owners' books.
    pub shards_on_dishonest_peak: usize,
    /// Shards held by dishonest nodes at the end, by the owners' books.
    pub shards_on_dishonest_end: usize,
    /// Per strategy (honest holders included), what the audits found.
    pub by_strategy: BTreeMap<String, StrategyReport>,
    /// Shards a placement could not find a holder for at the time.
    pub placement_shortfalls: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost because their target was offline or gone.
    pub messages_undelivered: u64,
    /// Messages dropped because the queue was full.
    pub messages_dropped_full: u64,
    /// Most messages in flight at once.
    pub peak_queue_len: usize,
    /// Mean fraction of time nodes were online (over node-ticks).
    pub mean_online: f64,
}

/// Runs the simulation described by `cfg`.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    cfg.validate()?;
    let mut sim = Sim::new(cfg);
    sim.run();
    Ok(sim.report())
}

/// A shard: chunk number and index.
type ShardKey = (u32, u8);

/// What one node is and holds.
struct Node {
    id: PeerId,
    ip: IpAddr,
    capacity: u64,
    /// Shards it holds (honest nodes); looked up, never iterated, so its order cannot matter.
    store: HashSet<ShardKey>,
    /// Shards it acknowledged (what a node that drops them counts its "use" by).
    accepted: u64,
    online: bool,
    left: bool,
    strategy: Strategy,
    /// Whether an owner's audit caught it.
    caught: bool,
    /// Mean online and offline times; an offline mean of 0 means always online.
    on_mean_ms: f64,
    off_mean_ms: f64,
    /// Index into the owners, if it stores chunks.
    owner: Option<usize>,
}

impl Node {
    fn used(&self) -> u64 {
        if self.strategy.stores() {
            self.store.len() as u64
        } else {
            self.accepted
        }
    }
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used())
    }
    fn holds(&self, key: &ShardKey) -> bool {
        !self.left && self.store.contains(key)
    }
    /// Whether its copy of `key` helps its owner restore (a forger's does not: it serves
    /// forged bytes).
    fn serves(&self, key: &ShardKey) -> bool {
        self.holds(key) && self.strategy != Strategy::ForgesOnGet
    }
}

/// The tag of a shard's bytes (what its hash would be), from the run's seed and its key.
fn tag(seed: u64, key: ShardKey) -> u64 {
    mix(seed ^ (u64::from(key.0) << 8 | u64::from(key.1)))
}

/// The proof of holding bytes tagged `tag` for challenge `nonce`.
fn prove(nonce: u64, tag: u64) -> u64 {
    mix(nonce.rotate_left(17) ^ tag)
}

/// A 64-bit mixer (SplitMix64's finaliser): stands in for a hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What an owner waits for from an audit it sent.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The proof for a prepared challenge.
    Proof(u64),
    /// The whole shard, checked against its recorded tag.
    Bytes,
}

/// A repair between planning and sending out the new shards.
struct Pending {
    rebuild: Vec<u8>,
    keep: Vec<PeerId>,
    fetched: u8,
}

/// What an owner knows and does.
struct Owner {
    node: usize,
    tracker: PeerTracker,
    /// Nodes it pings, places on and audits.
    partners: BTreeSet<usize>,
    /// Free shards each partner reported last.
    free_known: BTreeMap<usize, u64>,
    /// Its chunks, in write order.
    chunks: Vec<u32>,
    /// Repairs in flight this tick (at most one per chunk).
    pending: BTreeMap<u32, Pending>,
    /// Shards dropped from its books, to delete on each holder when next seen (at most one entry
    /// per shard it ever placed).
    deletes: BTreeMap<usize, Vec<ShardKey>>,
    /// When its node went offline, to pause the tracker's clock meanwhile.
    offline_since_ms: Option<u64>,
    /// The prepared challenge (its nonce) of each holding that has one, by holder and shard.
    prepared: BTreeMap<(usize, ShardKey), u64>,
    /// Audits sent and not answered yet (one per holding at most).
    auditing: BTreeMap<(usize, ShardKey), Expect>,
}

/// One chunk, in its owner's books.
struct Chunk {
    state: ChunkState,
    due_tick: u64,
    stored: bool,
    lost: bool,
}

#[derive(Clone, Debug)]
enum Msg {
    /// A node coming online (or joining) announces itself to an owner.
    Hello,
    Ping,
    Pong {
        free: u64,
    },
    Challenge {
        key: ShardKey,
        nonce: u64,
    },
    /// A proof, or `None`: "not found".
    Answer {
        key: ShardKey,
        proof: Option<u64>,
    },
    Put {
        key: ShardKey,
        repair: bool,
    },
    PutAck {
        key: ShardKey,
        repair: bool,
        ok: bool,
    },
    /// A shard asked for as a repair source or, `audit`, to check it whole.
    Get {
        key: ShardKey,
        audit: bool,
    },
    /// Its bytes' tag, or `None`: "not found".
    Shard {
        key: ShardKey,
        audit: bool,
        bytes: Option<u64>,
    },
    Delete(ShardKey),
    /// A cheater asking another holder for a shard to answer `owner`'s challenge with.
    RelayGet {
        key: ShardKey,
        nonce: u64,
        owner: usize,
    },
    /// That holder's answer: the shard's bytes if it served them to the asker.
    RelayShard {
        key: ShardKey,
        nonce: u64,
        owner: usize,
        bytes: Option<u64>,
    },
}

/// A message in flight, ordered by delivery time then send order.
struct Queued {
    at_ms: u64,
    seq: u64,
    from: usize,
    to: usize,
    msg: Msg,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops the largest, we want the earliest.
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChurnEvent {
    Toggle(usize),
    Leave(usize),
    Arrive,
}

/// Counters that end up in the report.
#[derive(Default)]
struct Counters {
    joined: usize,
    left: usize,
    repairs: u64,
    repairs_abandoned: u64,
    shards_moved: u64,
    shards_fetched: u64,
    replaced_while_held: u64,
    repairs_deferred: u64,
    audits_passed: u64,
    audits_failed: u64,
    shards_on_dishonest_peak: usize,
    /// Audits passed and failed, per strategy of the holder.
    judged: BTreeMap<Strategy, (u64, u64)>,
    /// (owner, holder) pairs where the owner judged the holder, and whether it caught it.
    judges: BTreeMap<(usize, usize), bool>,
    placement_shortfalls: u64,
    messages: u64,
    undelivered: u64,
    dropped_full: u64,
    peak_queue: usize,
    online_node_ticks: u64,
    node_ticks: u64,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    rng: StdRng,
    now_ms: u64,
    nodes: Vec<Node>,
    index: HashMap<PeerId, usize>,
    owners: Vec<Owner>,
    chunks: Vec<Chunk>,
    /// Messages in flight; at most `cfg.queue_capacity`.
    net: BinaryHeap<Queued>,
    seq: u64,
    /// One pending toggle and at most one departure per node, plus the next arrival.
    churn: BinaryHeap<Reverse<(u64, u64, ChurnEvent)>>,
    min_live: u8,
    c: Counters,
}

/// An exponential draw with the given mean (infinite mean: never).
fn exp_ms(rng: &mut StdRng, mean_ms: f64) -> u64 {
    if !mean_ms.is_finite() {
        return u64::MAX;
    }
    let u: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    (-mean_ms * u.ln()).min(u64::MAX as f64 / 4.0) as u64
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig) -> Self {
        let mut sim = Sim {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            now_ms: 0,
            nodes: Vec::new(),
            index: HashMap::new(),
            owners: Vec::new(),
            chunks: Vec::new(),
            net: BinaryHeap::new(),
            seq: 0,
            churn: BinaryHeap::new(),
            min_live: cfg.n,
            c: Counters::default(),
        };
        for i in 0..cfg.nodes {
            let owner = (i < cfg.owners).then_some(i);
            let strategy = if i >= cfg.owners && i < cfg.owners + cfg.dishonest {
                Strategy::CHEATS[(i - cfg.owners) % Strategy::CHEATS.len()]
            } else {
                Strategy::Honest
            };
            // Households: the last `shared_ip_pairs` odd nodes share the address of the node
            // before them.
            let ip_slot = if i % 2 == 1 && i >= cfg.nodes - 2 * cfg.shared_ip_pairs {
                i - 1
            } else {
                i
            };
            sim.add_node(owner, strategy, ip_slot, false);
        }
        let ticks_total = cfg.weeks as u64 * WEEK_MS / cfg.tick_ms;
        let ingest_ticks = (cfg.ingest_hours * HOUR_MS / cfg.tick_ms).clamp(1, ticks_total.max(1));
        for o in 0..cfg.owners {
            let mut tracker = PeerTracker::for_policy(&cfg.policy);
            let partners: BTreeSet<usize> = (0..cfg.nodes).filter(|&p| p != o).collect();
            for &p in &partners {
                tracker.seen(&sim.nodes[p].id, 0);
            }
            sim.owners.push(Owner {
                node: o,
                tracker,
                partners,
                free_known: BTreeMap::new(),
                chunks: Vec::new(),
                pending: BTreeMap::new(),
                deletes: BTreeMap::new(),
                offline_since_ms: None,
                prepared: BTreeMap::new(),
                auditing: BTreeMap::new(),
            });
        }
        for c in 0..cfg.chunks {
            let owner = c % cfg.owners;
            sim.owners[owner].chunks.push(c as u32);
            sim.chunks.push(Chunk {
                state: ChunkState {
                    k: cfg.k,
                    n: cfg.n,
                    holdings: Vec::new(),
                },
                due_tick: c as u64 * ingest_ticks / cfg.chunks.max(1) as u64,
                stored: false,
                lost: false,
            });
        }
        for o in 0..cfg.owners {
            let node = sim.owners[o].node;
            if !sim.nodes[node].online {
                sim.owners[o].offline_since_ms = Some(0);
            }
        }
        sim.schedule_arrival();
        sim
    }

    /// Adds a node with drawn capacity and availability, schedules its churn.
    fn add_node(
        &mut self,
        owner: Option<usize>,
        strategy: Strategy,
        ip_slot: usize,
        newcomer: bool,
    ) {
        let cfg = self.cfg;
        let i = self.nodes.len();
        let rng = &mut self.rng;
        let capacity = rng.gen_range(cfg.capacity_shards.0..=cfg.capacity_shards.1);
        let range = if owner.is_some() {
            cfg.owner_availability
        } else {
            cfg.availability
        };
        let a = rng.gen_range(range.0..=range.1);
        let on_mean_ms = cfg.mean_session_hours * HOUR_MS as f64;
        let off_mean_ms = if a >= 0.999 {
            0.0
        } else {
            on_mean_ms * (1.0 - a) / a
        };
        let online = newcomer || rng.gen_bool(a.clamp(0.0, 1.0));
        let slot = ip_slot as u32 + 1;
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | slot));
        let id = PeerId::new(format!("node{i:04}"));
        self.index.insert(id.clone(), i);
        self.nodes.push(Node {
            id,
            ip,
            capacity,
            store: HashSet::new(),
            accepted: 0,
            online,
            left: false,
            strategy,
            caught: false,
            on_mean_ms,
            off_mean_ms,
            owner,
        });
        self.schedule_toggle(i);
        if owner.is_none() {
            let life = exp_ms(&mut self.rng, cfg.mean_lifetime_weeks * WEEK_MS as f64);
            self.push_churn(self.now_ms.saturating_add(life), ChurnEvent::Leave(i));
        }
    }

    fn push_churn(&mut self, at_ms: u64, ev: ChurnEvent) {
        self.seq += 1;
        self.churn.push(Reverse((at_ms, self.seq, ev)));
    }

    fn schedule_toggle(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mean = if node.online {
            node.on_mean_ms
        } else {
            node.off_mean_ms
        };
        if node.online && node.off_mean_ms == 0.0 {
            return; // always online
        }
        let d = exp_ms(&mut self.rng, mean).max(1);
        self.push_churn(self.now_ms.saturating_add(d), ChurnEvent::Toggle(i));
    }

    fn schedule_arrival(&mut self) {
        // Arrivals replace departures: the initial non-owners over a mean lifetime.
        let leavers = (self.cfg.nodes - self.cfg.owners) as f64;
        if leavers == 0.0 || !self.cfg.mean_lifetime_weeks.is_finite() {
            return;
        }
        let mean = self.cfg.mean_lifetime_weeks * WEEK_MS as f64 / leavers;
        let d = exp_ms(&mut self.rng, mean).max(1);
        self.push_churn(self.now_ms.saturating_add(d), ChurnEvent::Arrive);
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.c.messages += 1;
        if self.net.len() >= self.cfg.queue_capacity {
            self.c.dropped_full += 1;
            return;
        }
        let lat = self
            .rng
            .gen_range(self.cfg.latency_ms.0..=self.cfg.latency_ms.1);
        self.seq += 1;
        self.net.push(Queued {
            at_ms: self.now_ms + lat,
            seq: self.seq,
            from,
            to,
            msg,
        });
        self.c.peak_queue = self.c.peak_queue.max(self.net.len());
    }

    fn now_secs(&self) -> u64 {
        self.now_ms / SEC_MS
    }

    /// Processes churn events and deliveries up to and including `t_ms`, in time order.
    fn run_until(&mut self, t_ms: u64) {
        loop {
            let next_net = self.net.peek().map(|q| q.at_ms);
            let next_churn = self.churn.peek().map(|Reverse((at, _, _))| *at);
            match (next_net, next_churn) {
                (Some(n), c) if n <= t_ms && c.is_none_or(|c| n < c) => {
                    let q = self.net.pop().expect("peeked");
                    self.now_ms = q.at_ms;
                    self.deliver(q);
                }
                (_, Some(c)) if c <= t_ms => {
                    let Reverse((at, _, ev)) = self.churn.pop().expect("peeked");
                    self.now_ms = at;
                    self.churn_event(ev);
                }
                _ => break,
            }
        }
        self.now_ms = t_ms;
    }

    fn churn_event(&mut self, ev: ChurnEvent) {
        match ev {
            ChurnEvent::Toggle(i) => {
                if self.nodes[i].left {
                    return;
                }
                let online = !self.nodes[i].online;
                self.set_online(i, online);
                self.schedule_toggle(i);
            }
            ChurnEvent::Leave(i) => {
                if self.nodes[i].left {
                    return;
                }
                self.set_online(i, false);
                let n = &mut self.nodes[i];
                n.left = true;
                n.store = HashSet::new();
                self.c.left += 1;
            }
            ChurnEvent::Arrive => {
                let slot = self.nodes.len();
                self.add_node(None, Strategy::Honest, slot, true);
                self.c.joined += 1;
                let i = self.nodes.len() - 1;
                self.hello(i);
                self.schedule_arrival();
            }
        }
    }

    fn set_online(&mut self, i: usize, online: bool) {
        if self.nodes[i].online == online {
            return;
        }
        self.nodes[i].online = online;
        if let Some(o) = self.nodes[i].owner {
            let now = self.now_ms;
            let owner = &mut self.owners[o];
            if online {
                if let Some(since) = owner.offline_since_ms.take() {
                    owner.tracker.resume((now - since) / SEC_MS);
                }
            } else {
                owner.offline_since_ms = Some(now);
                // Work in flight dies with the process.
                self.c.repairs_abandoned += owner.pending.len() as u64;
                owner.pending.clear();
            }
        }
        if online {
            self.hello(i);
        }
    }

    /// A node that came online tells every owner (they learn newcomers this way, too).
    fn hello(&mut self, i: usize) {
        for o in 0..self.owners.len() {
            let to = self.owners[o].node;
            if to != i {
                self.send(i, to, Msg::Hello);
            }
        }
    }

    /// The owner node of the chunk of `key` (chunks are dealt to owners in turn).
    fn owner_node(&self, key: &ShardKey) -> usize {
        self.owners[key.0 as usize % self.owners.len()].node
    }

    /// The tag of the bytes node `at` serves `from` for `key` (`None`: "not found"). Holders
    /// keep each owner's shards in that owner's space: nobody else is served them.
    fn served(&self, at: usize, from: usize, key: &ShardKey) -> Option<u64> {
        let node = &self.nodes[at];
        if !node.holds(key) || self.owner_node(key) != from {
            return None;
        }
        let t = tag(self.cfg.seed, *key);
        Some(match node.strategy {
            Strategy::ForgesOnGet => t ^ 0x5eed_f00d,
            _ => t,
        })
    }

    fn deliver(&mut self, q: Queued) {
        let (from, to) = (q.from, q.to);
        if !self.nodes[to].online {
            self.c.undelivered += 1;
            return;
        }
        let now_s = self.now_secs();
        match q.msg {
            Msg::Ping => {
                let free = self.nodes[to].free();
                self.send(to, from, Msg::Pong { free });
            }
            Msg::Challenge { key, nonce } => {
                let proof = match self.nodes[to].strategy {
                    // Without the bytes: a guess.
                    Strategy::DropsShards => Some(self.rng.gen()),
                    Strategy::FetchesFromOthers => {
                        let me = self.nodes[to].id.clone();
                        let other = self.chunks[key.0 as usize]
                            .state
                            .holdings
                            .iter()
                            .find(|h| h.index == key.1 && h.peer != me)
                            .map(|h| self.index[&h.peer]);
                        match other {
                            Some(h) => {
                                let owner = from;
                                self.send(to, h, Msg::RelayGet { key, nonce, owner });
                                return;
                            }
                            None => Some(self.rng.gen()),
                        }
                    }
                    // The honest holder's and the forger's: from the bytes they keep.
                    Strategy::Honest | Strategy::ForgesOnGet => {
                        let node = &self.nodes[to];
                        (node.holds(&key) && self.owner_node(&key) == from)
                            .then(|| prove(nonce, tag(self.cfg.seed, key)))
                    }
                };
                self.send(to, from, Msg::Answer { key, proof });
            }
            Msg::RelayGet { key, nonce, owner } => {
                // Asked by a peer that is not the shard's owner: served nothing.
                let bytes = self.served(to, from, &key);
                self.send(
                    to,
                    from,
                    Msg::RelayShard {
                        key,
                        nonce,
                        owner,
                        bytes,
                    },
                );
            }
            Msg::RelayShard {
                key,
                nonce,
                owner,
                bytes,
            } => {
                let proof = match bytes {
                    Some(t) => prove(nonce, t),
                    None => self.rng.gen(),
                };
                self.send(
                    to,
                    owner,
                    Msg::Answer {
                        key,
                        proof: Some(proof),
                    },
                );
            }
            Msg::Put { key, repair } => {
                let node = &mut self.nodes[to];
                let ok = node.free() > 0 || node.store.contains(&key);
                if ok {
                    node.accepted += 1;
                    if node.strategy.stores() {
                        node.store.insert(key);
                    }
                }
                self.send(to, from, Msg::PutAck { key, repair, ok });
            }
            Msg::Get { key, audit } => {
                let bytes = self.served(to, from, &key);
                self.send(to, from, Msg::Shard { key, audit, bytes });
            }
            Msg::Delete(key) => {
                if self.nodes[to].store.remove(&key) {
                    self.nodes[to].accepted = self.nodes[to].accepted.saturating_sub(1);
                }
            }
            // The rest are answers to owners.
            msg => {
                let Some(o) = self.nodes[to].owner else {
                    return;
                };
                let peer = self.nodes[from].id.clone();
                self.owners[o].tracker.seen(&peer, now_s);
                match msg {
                    Msg::Hello => {
                        self.owners[o].partners.insert(from);
                    }
                    Msg::Pong { free } => {
                        let owner = &mut self.owners[o];
                        owner.free_known.insert(from, free);
                        if let Some(keys) = owner.deletes.remove(&from) {
                            for key in keys {
                                self.send(to, from, Msg::Delete(key));
                            }
                        }
                    }
                    Msg::Answer { key, proof } => {
                        let passed = match self.owners[o].auditing.get(&(from, key)) {
                            Some(Expect::Proof(p)) => proof == Some(*p),
                            Some(Expect::Bytes) => false,
                            None => return,
                        };
                        self.audited(o, from, key, passed);
                    }
                    Msg::Shard {
                        key,
                        audit: true,
                        bytes,
                    } => {
                        let passed = match self.owners[o].auditing.get(&(from, key)) {
                            Some(Expect::Bytes) => bytes == Some(tag(self.cfg.seed, key)),
                            Some(Expect::Proof(_)) => false,
                            None => return,
                        };
                        self.audited(o, from, key, passed);
                    }
                    Msg::PutAck { key, repair, ok } => self.put_acked(o, from, key, repair, ok),
                    Msg::Shard {
                        key,
                        audit: false,
                        bytes,
                    } => {
                        let ok = bytes == Some(tag(self.cfg.seed, key));
                        self.shard_fetched(o, from, key, ok);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Owner `o`'s audit of `key` on `from` was answered: scored, and a holding found wanting
    /// dropped from the books (repair places it anew); one that passed a whole check gets a new
    /// prepared challenge, as the real owner prepares one from the bytes it just checked.
    fn audited(&mut self, o: usize, from: usize, key: ShardKey, passed: bool) {
        let Some(expect) = self.owners[o].auditing.remove(&(from, key)) else {
            return;
        };
        let peer = self.nodes[from].id.clone();
        let still_held = self.chunks[key.0 as usize]
            .state
            .holdings
            .iter()
            .any(|h| h.index == key.1 && h.peer == peer);
        if !still_held {
            return;
        }
        self.judged(o, from, passed);
        if !passed {
            self.drop_holding(o, from, key);
        } else if matches!(expect, Expect::Bytes) {
            let nonce = self.rng.gen();
            self.owners[o].prepared.insert((from, key), nonce);
        }
    }

    /// Books an audit result of holder `from` by owner `o`.
    fn judged(&mut self, o: usize, from: usize, passed: bool) {
        let peer = self.nodes[from].id.clone();
        self.owners[o].tracker.audit(&peer, passed);
        *self.c.judges.entry((o, from)).or_default() |= !passed;
        let n = self.c.judged.entry(self.nodes[from].strategy).or_default();
        if passed {
            n.0 += 1;
            self.c.audits_passed += 1;
        } else {
            n.1 += 1;
            self.c.audits_failed += 1;
            self.nodes[from].caught = true;
        }
    }

    /// Owner `o` drops `from`'s holding of `key` from its books (a bad slot): the shard counts
    /// as lost there and is deleted when the holder is next seen.
    fn drop_holding(&mut self, o: usize, from: usize, key: ShardKey) {
        let peer = self.nodes[from].id.clone();
        self.chunks[key.0 as usize]
            .state
            .holdings
            .retain(|h| !(h.index == key.1 && h.peer == peer));
        let owner = &mut self.owners[o];
        owner.prepared.remove(&(from, key));
        let list = owner.deletes.entry(from).or_default();
        if !list.contains(&key) {
            list.push(key);
        }
    }

    fn put_acked(&mut self, o: usize, from: usize, key: ShardKey, repair: bool, ok: bool) {
        if !ok {
            // Full after all: its free figure was stale. Placement will look elsewhere.
            self.owners[o].free_known.insert(from, 0);
            return;
        }
        let (c, index) = key;
        let peer = self.nodes[from].id.clone();
        let chunk = &mut self.chunks[c as usize];
        // The new holder replaces every other holder of this index.
        let mut dropped = Vec::new();
        chunk.state.holdings.retain(|h| {
            let other = h.index == index && h.peer != peer;
            if other {
                dropped.push(h.peer.clone());
            }
            !other
        });
        if !chunk
            .state
            .holdings
            .iter()
            .any(|h| h.index == index && h.peer == peer)
        {
            chunk.state.holdings.push(Holding { index, peer });
        }
        if !chunk.stored {
            let mut idx: Vec<u8> = chunk.state.holdings.iter().map(|h| h.index).collect();
            idx.sort_unstable();
            idx.dedup();
            chunk.stored = idx.len() == self.cfg.n as usize;
        }
        if repair {
            self.c.shards_moved += 1;
        }
        // Prepared while the owner had the bytes, as the real owner does at put time.
        let nonce = self.rng.gen();
        self.owners[o].prepared.insert((from, key), nonce);
        for p in dropped {
            let p = self.index[&p];
            if self.nodes[p].holds(&key) {
                self.c.replaced_while_held += 1;
            }
            self.owners[o].prepared.remove(&(p, key));
            let list = self.owners[o].deletes.entry(p).or_default();
            if !list.contains(&key) {
                list.push(key);
            }
        }
    }

    fn shard_fetched(&mut self, o: usize, from: usize, key: ShardKey, ok: bool) {
        let (c, _) = key;
        if !self.owners[o].pending.contains_key(&c) {
            return; // abandoned meanwhile
        }
        if !ok {
            // A holder that cannot return a shard it acknowledged, or returns other bytes,
            // fails like a wrong audit, and its holding is bad.
            self.judged(o, from, false);
            self.drop_holding(o, from, key);
            self.owners[o].pending.remove(&c);
            self.c.repairs_abandoned += 1;
            return;
        }
        let owner = &mut self.owners[o];
        let Some(p) = owner.pending.get_mut(&c) else {
            return;
        };
        self.c.shards_fetched += 1;
        p.fetched += 1;
        if p.fetched < self.cfg.k {
            return;
        }
        let p = owner.pending.remove(&c).expect("present");
        self.c.repairs += 1;
        self.place_and_put(o, c, &p.rebuild, &p.keep, true);
    }

    /// Live candidates of owner `o` for new shards of chunk `c`, not on `keep` peers or their
    /// addresses.
    fn candidates(&self, o: usize, keep: &[PeerId]) -> Vec<Candidate> {
        let owner = &self.owners[o];
        let now_s = self.now_secs();
        let all: Vec<Candidate> = owner
            .partners
            .iter()
            .filter(|&&p| p != owner.node)
            .filter_map(|&p| {
                let node = &self.nodes[p];
                let free = *owner.free_known.get(&p)?;
                (free > 0 && owner.tracker.health(&node.id, now_s) == PeerHealth::Live).then(|| {
                    Candidate {
                        peer: node.id.clone(),
                        public_ip: Some(node.ip),
                        free_bytes: free.saturating_mul(self.cfg.shard_bytes),
                        trust: owner.tracker.score(&node.id),
                    }
                })
            })
            .collect();
        let filter = repair::RepairPlan {
            rebuild: Vec::new(),
            sources: Vec::new(),
            keep: keep.to_vec(),
        };
        filter.eligible(&all, |p| self.index.get(p).map(|&i| self.nodes[i].ip))
    }

    /// Places shards `indices` of chunk `c` on new holders and sends them out.
    fn place_and_put(&mut self, o: usize, c: u32, indices: &[u8], keep: &[PeerId], repair: bool) {
        let cands = self.candidates(o, keep);
        let seed = self.rng.gen();
        let r = indices.len();
        let chosen = match placement::place(&cands, r, self.cfg.shard_bytes, seed) {
            Ok(v) => v,
            Err(PlacementError::NotEnoughPeers { eligible, .. }) if eligible > 0 => {
                placement::place(&cands, eligible, self.cfg.shard_bytes, seed).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        self.c.placement_shortfalls += (r - chosen.len()) as u64;
        let me = self.owners[o].node;
        for (&index, peer) in indices.iter().zip(chosen) {
            let p = self.index[&peer];
            let owner = &mut self.owners[o];
            if let Some(f) = owner.free_known.get_mut(&p) {
                *f = f.saturating_sub(1);
            }
            // A delete still waiting for this holder must not remove the shard sent now.
            if let Some(list) = owner.deletes.get_mut(&p) {
                list.retain(|k| *k != (c, index));
            }
            self.send(
                me,
                p,
                Msg::Put {
                    key: (c, index),
                    repair,
                },
            );
        }
    }

    fn run(&mut self) {
        let cfg = self.cfg;
        let ticks = cfg.weeks as u64 * WEEK_MS / cfg.tick_ms;
        for t in 0..ticks {
            let start = t * cfg.tick_ms;
            self.run_until(start);
            for o in 0..self.owners.len() {
                if self.nodes[self.owners[o].node].online {
                    self.probe(o, t);
                }
            }
            self.run_until(start + PLAN_AT_MS);
            for o in 0..self.owners.len() {
                if self.nodes[self.owners[o].node].online {
                    self.write(o, t);
                    if cfg.repair {
                        self.repair(o);
                    }
                }
            }
            self.run_until(start + cfg.tick_ms - 1);
            for owner in &mut self.owners {
                self.c.repairs_abandoned += owner.pending.len() as u64;
                owner.pending.clear();
            }
            self.check();
        }
    }

    /// Pings every partner, audits every holder on one of its shards, forgets long-gone
    /// partners that hold nothing.
    fn probe(&mut self, o: usize, t: u64) {
        let me = self.owners[o].node;
        let partners: Vec<usize> = self.owners[o].partners.iter().copied().collect();
        for &p in &partners {
            self.send(me, p, Msg::Ping);
        }
        let mut held: BTreeMap<usize, Vec<ShardKey>> = BTreeMap::new();
        for &c in &self.owners[o].chunks {
            for h in &self.chunks[c as usize].state.holdings {
                held.entry(self.index[&h.peer])
                    .or_default()
                    .push((c, h.index));
            }
        }
        if t.is_multiple_of(self.cfg.audit_every_ticks) {
            // Answers come within the tick (latency is under a minute): older ones are moot.
            self.owners[o].auditing.clear();
            for (&p, keys) in &held {
                let key = keys[self.rng.gen_range(0..keys.len())];
                // The prepared challenge if there is one, else the whole shard, checked.
                let owner = &mut self.owners[o];
                let msg = match owner.prepared.remove(&(p, key)) {
                    Some(nonce) => {
                        let proof = prove(nonce, tag(self.cfg.seed, key));
                        owner.auditing.insert((p, key), Expect::Proof(proof));
                        Msg::Challenge { key, nonce }
                    }
                    None => {
                        owner.auditing.insert((p, key), Expect::Bytes);
                        Msg::Get { key, audit: true }
                    }
                };
                self.send(me, p, msg);
            }
        }
        let now_s = self.now_secs();
        let forget_s = self.cfg.forget_after_hours * 3600;
        let owner = &mut self.owners[o];
        for p in partners {
            let id = &self.nodes[p].id;
            let silent = owner
                .tracker
                .last_seen(id)
                .is_none_or(|s| now_s.saturating_sub(s) > forget_s);
            if silent && !held.contains_key(&p) {
                owner.partners.remove(&p);
                owner.free_known.remove(&p);
                owner.deletes.remove(&p);
                owner.tracker.forget(id);
            }
        }
    }

    /// Writes (or completes the write of) chunks due by tick `t`.
    fn write(&mut self, o: usize, t: u64) {
        let me = self.owners[o].node;
        let due: Vec<u32> = self.owners[o]
            .chunks
            .iter()
            .copied()
            .filter(|&c| {
                let ch = &self.chunks[c as usize];
                ch.due_tick <= t && !ch.stored
            })
            .collect();
        for c in due {
            let ch = &self.chunks[c as usize];
            let missing: Vec<u8> = (0..self.cfg.n)
                .filter(|i| !ch.state.holdings.iter().any(|h| h.index == *i))
                .collect();
            let mut keep: Vec<PeerId> = ch.state.holdings.iter().map(|h| h.peer.clone()).collect();
            keep.push(self.nodes[me].id.clone());
            self.place_and_put(o, c, &missing, &keep, false);
        }
    }

    /// Plans repairs for the owner's stored chunks, most urgent first, within its budget.
    fn repair(&mut self, o: usize) {
        let now_s = self.now_secs();
        let owner = &self.owners[o];
        let mut plans = Vec::new();
        for &c in &owner.chunks {
            let ch = &self.chunks[c as usize];
            if !ch.stored || owner.pending.contains_key(&c) {
                continue;
            }
            match repair::plan(
                &ch.state,
                |p| owner.tracker.health(p, now_s),
                &self.cfg.policy,
            ) {
                Ok(Some(plan)) => plans.push((c, plan)),
                Ok(None) => {}
                // Lost by the owner's view, or sources unreachable now: nothing to do this tick.
                Err(RepairError::Unrecoverable { .. } | RepairError::Unreachable { .. }) => {}
                Err(RepairError::BadCode { .. }) => unreachable!("validated code"),
            }
        }
        plans.sort_by_key(|(c, p)| (Reverse(p.rebuild.len()), *c));
        let me = owner.node;
        let mut budget = self.cfg.repair_budget_shards;
        let planned = plans.len();
        for (done, (c, plan)) in plans.into_iter().enumerate() {
            if budget == 0 {
                // The most urgent came first: the rest wait for the next tick.
                self.c.repairs_deferred += (planned - done) as u64;
                break;
            }
            // A repair is started while budget remains, so one larger than the whole budget
            // still runs (alone) instead of blocking every tick.
            budget = budget.saturating_sub(plan.sources.len() + plan.rebuild.len());
            let mut keep = plan.keep.clone();
            keep.push(self.nodes[me].id.clone());
            self.owners[o].pending.insert(
                c,
                Pending {
                    rebuild: plan.rebuild.clone(),
                    keep,
                    fetched: 0,
                },
            );
            for s in &plan.sources {
                let p = self.index[&s.peer];
                let key = (c, s.index);
                self.send(me, p, Msg::Get { key, audit: false });
            }
        }
    }

    /// Ground truth at the end of a tick: shards that still exist, chunks lost for good.
    fn check(&mut self) {
        let k = self.cfg.k as usize;
        let mut on_dishonest = 0;
        for (c, ch) in self.chunks.iter_mut().enumerate() {
            for h in &ch.state.holdings {
                if self.nodes[self.index[&h.peer]].strategy != Strategy::Honest {
                    on_dishonest += 1;
                }
            }
            if !ch.stored || ch.lost {
                continue;
            }
            let mut present = [false; 256];
            for h in &ch.state.holdings {
                if self.nodes[self.index[&h.peer]].serves(&(c as u32, h.index)) {
                    present[h.index as usize] = true;
                }
            }
            let live = present.iter().filter(|&&b| b).count();
            self.min_live = self.min_live.min(live as u8);
            if live < k {
                ch.lost = true;
            }
        }
        self.c.shards_on_dishonest_peak = self.c.shards_on_dishonest_peak.max(on_dishonest);
        for n in &self.nodes {
            if !n.left {
                self.c.node_ticks += 1;
                self.c.online_node_ticks += n.online as u64;
            }
        }
    }

    fn report(&self) -> SimReport {
        let stored = self.chunks.iter().filter(|c| c.stored).count();
        let lost = self.chunks.iter().filter(|c| c.lost).count();
        let on_dishonest_end = self
            .chunks
            .iter()
            .flat_map(|c| &c.state.holdings)
            .filter(|h| self.nodes[self.index[&h.peer]].strategy != Strategy::Honest)
            .count();
        let mut by_strategy: BTreeMap<Strategy, StrategyReport> = BTreeMap::new();
        for n in &self.nodes {
            let r = by_strategy
                .entry(n.strategy)
                .or_insert_with(|| StrategyReport {
                    score_min: 1.0,
                    ..StrategyReport::default()
                });
            r.nodes += 1;
            r.caught += usize::from(n.caught);
        }
        for (&(o, p), &caught) in &self.c.judges {
            let node = &self.nodes[p];
            let r = by_strategy
                .get_mut(&node.strategy)
                .expect("every node counted");
            let score = self.owners[o].tracker.score(&node.id);
            r.score_min = r.score_min.min(score);
            if caught {
                r.score_max_caught = r.score_max_caught.max(score);
            }
        }
        for (strategy, r) in &mut by_strategy {
            (r.passed, r.failed) = self.c.judged.get(strategy).copied().unwrap_or_default();
        }
        for h in self.chunks.iter().flat_map(|c| &c.state.holdings) {
            let strategy = self.nodes[self.index[&h.peer]].strategy;
            by_strategy.get_mut(&strategy).expect("counted").shards_end += 1;
        }
        SimReport {
            sim_weeks: self.cfg.weeks,
            nodes: self.cfg.nodes,
            nodes_joined: self.c.joined,
            nodes_left: self.c.left,
            chunks: self.cfg.chunks,
            chunks_stored: stored,
            chunks_lost: lost,
            durability: if stored == 0 {
                0.0
            } else {
                (stored - lost) as f64 / stored as f64
            },
            repairs: self.c.repairs,
            repairs_abandoned: self.c.repairs_abandoned,
            shards_moved: self.c.shards_moved,
            shards_fetched: self.c.shards_fetched,
            shards_replaced_while_held: self.c.replaced_while_held,
            repairs_deferred: self.c.repairs_deferred,
            min_live_shards: self.min_live,
            audits_passed: self.c.audits_passed,
            audits_failed: self.c.audits_failed,
            shards_on_dishonest_peak: self.c.shards_on_dishonest_peak,
            shards_on_dishonest_end: on_dishonest_end,
            by_strategy: by_strategy
                .into_iter()
                .map(|(s, r)| (format!("{s:?}"), r))
                .collect(),
            placement_shortfalls: self.c.placement_shortfalls,
            messages: self.c.messages,
            messages_undelivered: self.c.undelivered,
            messages_dropped_full: self.c.dropped_full,
            peak_queue_len: self.c.peak_queue,
            mean_online: if self.c.node_ticks == 0 {
                0.0
            } else {
                self.c.online_node_ticks as f64 / self.c.node_ticks as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let cases: Vec<(SimConfig, &str)> = vec![
            (
                SimConfig {
                    k: 9,
                    ..SimConfig::quick(1)
                },
                "churn simulation: 9-of-8 is not a code",
            ),
            (
                SimConfig {
                    owners: 41,
                    ..SimConfig::quick(1)
                },
                "churn simulation: 41 owners among 40 nodes",
            ),
            (
                SimConfig {
                    dishonest: 35,
                    ..SimConfig::quick(1)
                },
                "churn simulation: 6 owners and 35 dishonest nodes among 40 nodes",
            ),
            (
                SimConfig {
                    availability: (0.0, 1.0),
                    ..SimConfig::quick(1)
                },
                "churn simulation: availability range 0..1 is not within (0, 1]",
            ),
            (
                SimConfig {
                    latency_ms: (10, 60_000),
                    ..SimConfig::quick(1)
                },
                "churn simulation: latency range (10, 60000) ms (must stay under a minute)",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(run(&cfg).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn a_steady_network_without_churn_stores_everything_and_moves_nothing() {
        let cfg = SimConfig {
            nodes: 16,
            owners: 2,
            chunks: 40,
            weeks: 1,
            availability: (1.0, 1.0),
            owner_availability: (1.0, 1.0),
            mean_lifetime_weeks: f64::INFINITY,
            dishonest: 0,
            ..SimConfig::quick(3)
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.chunks_stored, 40);
        assert_eq!(r.chunks_lost, 0);
        assert_eq!(r.repairs, 0);
        assert_eq!(r.shards_moved, 0);
        assert_eq!(r.min_live_shards, 8);
        assert_eq!(r.nodes_joined + r.nodes_left, 0);
        assert_eq!(r.audits_failed, 0);
        assert!(r.audits_passed > 0);
        assert_eq!(r.messages_undelivered, 0);
    }

    #[test]
    fn the_repair_budget_bounds_repairs_per_tick() {
        // Room for one repair (at least 4 fetches + 1 upload) per owner and tick.
        let cfg = SimConfig {
            repair_budget_shards: 5,
            ..SimConfig::quick(5)
        };
        let r = run(&cfg).unwrap();
        let ticks = cfg.weeks as u64 * WEEK_MS / cfg.tick_ms;
        assert!(r.repairs > 0, "{r:#?}");
        assert!(r.repairs <= ticks * cfg.owners as u64, "{r:#?}");
        assert!(r.repairs_deferred > 0, "{r:#?}");
        let roomy = run(&SimConfig::quick(5)).unwrap();
        assert_eq!(roomy.repairs_deferred, 0, "{roomy:#?}");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let cfg = SimConfig {
            queue_capacity: 8,
            weeks: 1,
            ..SimConfig::quick(4)
        };
        let r = run(&cfg).unwrap();
        assert!(r.peak_queue_len <= 8);
        assert!(r.messages_dropped_full > 0);
    }
}
