//! The engine: group commit into append-only segments, the index (memtable plus on-disk
//! runs), recovery, compaction and scrubbing.
//!
//! Locks, always taken in this order when nested: `writer` (the queue of puts waiting for the
//! next batch) → `io` (held by the one thread writing a batch, or by maintenance) → `index`
//! (read by lookups, written briefly when a batch is applied). Disk reads of `get` happen
//! with no lock held.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{
    self, align8, align_page, decode_batch_header, decode_record, encode_batch_header,
    encode_record, DecodedRecord, RecordKind, BATCH_HDR, PAGE, REC_HDR,
};
use crate::run::{Entry, Run, RunCursor, RunWriter, KIND_DEL, KIND_PUT, PER_PAGE};
use crate::storage::{FileStorage, Storage, StorageFile};
use crate::{Config, Error, Lease, OwnerId, Result, ShardId};

const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
/// Space held back so deletes and compaction can still write when the disk is full.
const RESERVE: &str = "RESERVE";
const RESERVE_TMP: &str = "RESERVE.tmp";
const MANIFEST_MAGIC: &[u8; 8] = b"CAIRNMF1";
/// RAM one memtable entry costs in a `BTreeMap` (key, value and node overhead), measured
/// roughly; used to turn the memory budget into an entry limit.
const MEM_ENTRY_RAM: usize = 96;
/// Filter bits per shard when the budget allows: about 0.3 % false positives.
const MAX_BLOOM_BITS: u32 = 12;
/// How long a batch leader waits for as many requests as the last batch had. Bounded so a
/// writer that went away costs one short delay, after which the target drops.
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_micros(200);
/// Bytes read per call when scanning a segment sequentially.
const SCAN_WINDOW: usize = 1 << 20;

fn seg_name(id: u32) -> String {
    format!("seg-{id:08x}.log")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Information about one stored shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard.
    pub id: ShardId,
    /// Whose it is.
    pub owner: OwnerId,
    /// Until when it is kept.
    pub lease: Lease,
    /// Payload length in bytes.
    pub len: u32,
}

/// Counters describing a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live shards (expired ones count until compaction sweeps them).
    pub shards: u64,
    /// Bytes of live records on disk.
    pub live_bytes: u64,
    /// Bytes of segments not holding live records (deleted, overwritten, tombstones,
    /// padding): what compaction can reclaim.
    pub dead_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Index run files.
    pub index_runs: u64,
    /// Entries in index runs (including tombstones and superseded ones).
    pub index_entries: u64,
    /// Entries in the unsealed in-RAM index.
    pub unsealed_entries: u64,
    /// RAM held by index summaries and the unsealed index, estimated.
    pub index_ram_bytes: u64,
    /// The configured memory budget.
    pub memory_budget_bytes: u64,
    /// Damaged regions skipped while recovering at open.
    pub damaged_regions_at_open: u64,
    /// Bytes of torn writes cut off at open.
    pub truncated_bytes_at_open: u64,
    /// Batches written (one fsync each) since open.
    pub batches: u64,
    /// Records written in those batches: `records / batches` is the group-commit factor.
    pub batched_records: u64,
}

/// Limits for one [`Store::compact`] call.
#[derive(Clone, Copy, Debug)]
pub struct CompactOptions {
    /// Segments with at least this fraction of dead bytes are rewritten.
    pub min_dead_ratio: f64,
    /// Stop after reading this many bytes of segments (bounds the I/O of one call).
    pub max_read_bytes: u64,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            min_dead_ratio: 0.5,
            max_read_bytes: 256 << 20,
        }
    }
}

/// What a [`Store::compact`] call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Shards whose lease had run out, now deleted.
    pub expired: u64,
    /// Segment files removed.
    pub segments_removed: u64,
    /// Live bytes copied forward.
    pub bytes_copied: u64,
    /// Disk bytes given back.
    pub bytes_reclaimed: u64,
}

/// One damaged thing found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// A live shard whose record fails its checks: `get` reports it as corrupt.
    Shard {
        /// The shard.
        id: ShardId,
        /// File holding it.
        file: String,
        /// Record offset.
        offset: u64,
        /// What failed.
        detail: String,
    },
    /// A damaged index page (lookups of ids in it fail with an error naming the file).
    IndexPage {
        /// The run file.
        file: String,
        /// Page number.
        page: u32,
    },
}

/// The result of [`Store::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read and checked.
    pub records_checked: u64,
    /// Segment bytes read.
    pub bytes_checked: u64,
    /// Everything found damaged.
    pub damaged: Vec<Damage>,
}

/// A segment's number, open file and name, for scans done without the index lock.
type SegHandle = (u32, Arc<dyn StorageFile>, String);

struct SegInfo {
    file: Arc<dyn StorageFile>,
    name: String,
    /// File length (page-aligned end of the last batch).
    len: u64,
    live_bytes: u64,
    live_count: u64,
}

/// The index: what lookups read.
struct Index {
    /// Entries of records after the tail mark: not yet in a run. Bounded by `mem_limit`.
    mem: BTreeMap<ShardId, Entry>,
    /// Index runs, oldest first.
    runs: Vec<Arc<Run>>,
    segs: BTreeMap<u32, SegInfo>,
    /// Owner table: number → id; grows with the number of distinct owners (peers).
    owners: Vec<OwnerId>,
    owner_ix: HashMap<OwnerId, u32>,
}

impl Index {
    fn intern(&mut self, o: &OwnerId) -> u32 {
        if let Some(&n) = self.owner_ix.get(o) {
            return n;
        }
        let n = self.owners.len() as u32;
        self.owners.push(*o);
        self.owner_ix.insert(*o, n);
        n
    }

    /// Applies a record written at (seg, off) to the memtable and the byte accounts.
    fn apply(&mut self, seg: u32, off: u64, rec: &DecodedRecord) {
        let len = format::record_len(rec.payload_len as usize) as u32;
        let owner = match rec.kind {
            RecordKind::Put => self.intern(&rec.owner),
            RecordKind::Delete => 0,
        };
        let kind = match rec.kind {
            RecordKind::Put => KIND_PUT,
            RecordKind::Delete => KIND_DEL,
        };
        self.mem.insert(
            rec.id,
            Entry {
                seg,
                off: off as u32,
                len,
                owner,
                expiry: rec.expiry,
                kind,
            },
        );
        if kind == KIND_PUT {
            if let Some(s) = self.segs.get_mut(&seg) {
                s.live_bytes += u64::from(len);
                s.live_count += 1;
            }
        }
        if rec.aux_len > 0 {
            if let Some(s) = self.segs.get_mut(&rec.aux_seg) {
                s.live_bytes = s.live_bytes.saturating_sub(u64::from(rec.aux_len));
                s.live_count = s.live_count.saturating_sub(1);
            }
        }
    }
}

/// State of the writing side, owned by whoever holds the `io` lock.
struct IoState {
    active_seg: u32,
    /// Where the next batch goes in the active segment (page-aligned).
    write_off: u64,
    /// Sequence number of the last batch written.
    seq: u64,
    next_seg: u32,
    next_run: u32,
    seed: u64,
    /// The batch buffer, reused; bounded by `max_batch_bytes` plus one shard.
    buf: Vec<u8>,
    /// The manifest as last written: index merges rewrite it with only the run list
    /// changed, so its tail mark and byte counts stay those of the last checkpoint.
    manifest: Manifest,
}

enum Op {
    Put {
        id: ShardId,
        owner: OwnerId,
        expiry: u32,
        payload: Vec<u8>,
    },
    Delete {
        id: ShardId,
        /// Sweep mode: delete only if the lease has run out.
        expired_only: bool,
    },
    /// Compaction: rewrite the record now at `from`, unless it changed meanwhile.
    Copy {
        id: ShardId,
        from: (u32, u32),
        owner: OwnerId,
        expiry: u32,
        payload: Vec<u8>,
        payload_crc: u32,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        align8(
            REC_HDR
                + match self {
                    Op::Put { payload, .. } | Op::Copy { payload, .. } => payload.len(),
                    Op::Delete { .. } => 0,
                },
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Skipped,
}

type OpResult = Result<Outcome>;

struct Request {
    no: u64,
    ops: Vec<Op>,
}

/// The group-commit queue.
struct Writer {
    /// Requests waiting for the next batch; their bytes are bounded by `max_batch_bytes`.
    pending: Vec<Request>,
    pending_bytes: usize,
    /// Whether some thread is writing (or gathering) a batch now.
    leader: bool,
    /// Requests in the last batch: how many the next leader waits for, briefly.
    last_batch_requests: usize,
    next_no: u64,
    /// Results for requests whose batch is done, until their threads pick them up (one per
    /// waiting thread).
    results: HashMap<u64, Vec<OpResult>>,
}

/// A chunk store in one directory. Share it between threads; every method takes `&self`.
pub struct Store {
    storage: Arc<dyn Storage>,
    cfg: Config,
    dir: String,
    mem_limit: usize,
    writer: Mutex<Writer>,
    cv: Condvar,
    io: Mutex<IoState>,
    index: RwLock<Index>,
    /// Set when a failed write could not be undone: writes stop until reopen.
    poisoned: Mutex<Option<String>>,
    /// One compaction or verification at a time.
    maint: Mutex<()>,
    /// One index-run merge at a time.
    merging: Mutex<()>,
    /// One change of the reserve file at a time (`ensure_reserve` may run on its own thread).
    reserve: Mutex<()>,
    damaged_at_open: u64,
    truncated_at_open: u64,
    batches: std::sync::atomic::AtomicU64,
    batched_records: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// What a sequential scan of a segment meets.
enum ScanEvent<'a> {
    Record {
        off: u64,
        rec: DecodedRecord,
        payload: &'a [u8],
    },
    Damaged {
        from: u64,
        to: u64,
    },
}

struct ScanEnd {
    /// Page-aligned end of the last good batch (where a torn tail, if any, starts).
    end: u64,
    last_seq: u64,
    bytes_read: u64,
}

/// Reads a segment through a bounded window.
struct SegReader<'f> {
    file: &'f dyn StorageFile,
    len: u64,
    buf: Vec<u8>,
    at: u64,
    bytes_read: u64,
}

impl<'f> SegReader<'f> {
    fn get(&mut self, off: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        if off + n as u64 > self.len {
            return Ok(None);
        }
        if off < self.at || off + n as u64 > self.at + self.buf.len() as u64 {
            let want = (n.max(SCAN_WINDOW) as u64).min(self.len - off) as usize;
            self.buf.resize(want, 0);
            self.file.read_at(&mut self.buf, off)?;
            self.bytes_read += want as u64;
            self.at = off;
        }
        let s = (off - self.at) as usize;
        Ok(Some(&self.buf[s..s + n]))
    }

    /// A valid batch (header and body) at `off` with a sequence number above `min_seq`.
    fn batch_at(&mut self, off: u64, min_seq: u64) -> std::io::Result<Option<format::BatchHeader>> {
        let Some(h) = self.get(off, BATCH_HDR)?.and_then(decode_batch_header) else {
            return Ok(None);
        };
        if h.seq <= min_seq {
            return Ok(None);
        }
        match self.get(off + BATCH_HDR as u64, h.body_len as usize)? {
            Some(body) if crc32c::crc32c(body) == h.body_crc => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    fn next_batch(&mut self, from: u64, min_seq: u64) -> std::io::Result<Option<u64>> {
        let mut p = align_page(from);
        while p + BATCH_HDR as u64 <= self.len {
            if self.batch_at(p, min_seq)?.is_some() {
                return Ok(Some(p));
            }
            p += PAGE;
        }
        Ok(None)
    }
}

/// Scans a segment from `start`, calling `f` for every record and damaged region. Torn
/// tails (nothing valid after them) end the scan at `ScanEnd::end`.
fn scan_segment(
    file: &dyn StorageFile,
    start: u64,
    min_seq: u64,
    mut f: impl FnMut(ScanEvent<'_>),
) -> std::io::Result<ScanEnd> {
    let len = file.len()?;
    let mut r = SegReader {
        file,
        len,
        buf: Vec::new(),
        at: 0,
        bytes_read: 0,
    };
    let mut pos = start;
    let mut last_seq = min_seq;
    loop {
        if pos + BATCH_HDR as u64 > len {
            break;
        }
        if let Some(h) = r.batch_at(pos, last_seq)? {
            let body_at = pos + BATCH_HDR as u64;
            let body = r
                .get(body_at, h.body_len as usize)?
                .expect("checked by batch_at")
                .to_vec();
            walk_records(&body, body_at, &mut f);
            last_seq = h.seq;
            pos = align_page(body_at + u64::from(h.body_len));
            continue;
        }
        // Not a whole batch here: torn tail, or damage if a valid batch follows.
        let Some(next) = r.next_batch(pos + 1, last_seq)? else {
            break;
        };
        // Salvage what the damaged batch still proves: its records carry their own
        // checksums, so even with a damaged batch header they can be read one by one.
        let hdr = r
            .get(pos, BATCH_HDR)?
            .and_then(decode_batch_header)
            .filter(|h| h.seq > last_seq);
        let body_at = pos + BATCH_HDR as u64;
        let room = next.saturating_sub(body_at);
        let body_len = hdr.map_or(room, |h| u64::from(h.body_len).min(room)) as usize;
        if hdr.is_none() {
            f(ScanEvent::Damaged {
                from: pos,
                to: body_at,
            });
        }
        if let Some(body) = r.get(body_at, body_len)? {
            let body = body.to_vec();
            let walked = walk_records(&body, body_at, &mut f);
            if walked < body.len() {
                f(ScanEvent::Damaged {
                    from: body_at + walked as u64,
                    to: body_at + body.len() as u64,
                });
            }
        }
        if let Some(h) = hdr {
            last_seq = h.seq;
        }
        pos = next;
    }
    Ok(ScanEnd {
        // May pass the file's length when a torn write left a valid batch without all of
        // its padding: the next batch must still start on a page boundary.
        end: pos,
        last_seq,
        bytes_read: r.bytes_read,
    })
}

/// Emits the records of a batch body; returns how many bytes decoded cleanly (stops at the
/// first unreadable record header).
fn walk_records(body: &[u8], body_at: u64, f: &mut impl FnMut(ScanEvent<'_>)) -> usize {
    let mut o = 0;
    while o + REC_HDR <= body.len() {
        let Some(rec) = decode_record(&body[o..]) else {
            // An unreadable header: look for the next readable one so one damaged record
            // costs only itself.
            let mut p = o + 8;
            while p + REC_HDR <= body.len() && decode_record(&body[p..]).is_none() {
                p += 8;
            }
            if p + REC_HDR > body.len() {
                break;
            }
            f(ScanEvent::Damaged {
                from: body_at + o as u64,
                to: body_at + p as u64,
            });
            o = p;
            continue;
        };
        let plen = rec.payload_len as usize;
        let payload = &body[o + REC_HDR..o + REC_HDR + plen];
        let next = o + align8(REC_HDR + plen);
        f(ScanEvent::Record {
            off: body_at + o as u64,
            rec,
            payload,
        });
        o = next.min(body.len());
    }
    o
}

#[derive(Clone)]
struct Manifest {
    seed: u64,
    seq: u64,
    tail_seg: u32,
    tail_off: u64,
    next_seg: u32,
    next_run: u32,
    owners: Vec<OwnerId>,
    segs: Vec<(u32, u64, u64)>,
    runs: Vec<u32>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MANIFEST_MAGIC);
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.tail_seg.to_le_bytes());
        b.extend_from_slice(&self.tail_off.to_le_bytes());
        b.extend_from_slice(&self.next_seg.to_le_bytes());
        b.extend_from_slice(&self.next_run.to_le_bytes());
        b.extend_from_slice(&(self.owners.len() as u32).to_le_bytes());
        for o in &self.owners {
            b.extend_from_slice(&o.0);
        }
        b.extend_from_slice(&(self.segs.len() as u32).to_le_bytes());
        for (id, lb, lc) in &self.segs {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&lb.to_le_bytes());
            b.extend_from_slice(&lc.to_le_bytes());
        }
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        let c = crc32c::crc32c(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Manifest> {
        if b.len() < 12 || &b[..8] != MANIFEST_MAGIC {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut p = 8;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(p..p + n)?;
            p += n;
            Some(s)
        };
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4"));
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8"));
        let seed = u64_(take(8)?);
        let seq = u64_(take(8)?);
        let tail_seg = u32_(take(4)?);
        let tail_off = u64_(take(8)?);
        let next_seg = u32_(take(4)?);
        let next_run = u32_(take(4)?);
        let n = u32_(take(4)?) as usize;
        let mut owners = Vec::new();
        for _ in 0..n {
            owners.push(OwnerId(take(32)?.try_into().ok()?));
        }
        let n = u32_(take(4)?) as usize;
        let mut segs = Vec::new();
        for _ in 0..n {
            segs.push((u32_(take(4)?), u64_(take(8)?), u64_(take(8)?)));
        }
        let n = u32_(take(4)?) as usize;
        let mut runs = Vec::new();
        for _ in 0..n {
            runs.push(u32_(take(4)?));
        }
        Some(Manifest {
            seed,
            seq,
            tail_seg,
            tail_off,
            next_seg,
            next_run,
            owners,
            segs,
            runs,
        })
    }
}

fn new_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let mut r = crate::sim::SimRng::new(t ^ addr.rotate_left(32) ^ u64::from(std::process::id()));
    r.next_u64()
}

impl Store {
    /// Opens (or creates) the store in directory `path` on the local filesystem.
    pub fn open_dir(path: impl AsRef<Path>, cfg: Config) -> Result<Store> {
        let p = path.as_ref();
        let fs = FileStorage::new(p).map_err(|e| Error::io(p.display().to_string(), e))?;
        Store::open(Arc::new(fs), cfg)
    }

    /// Opens (or creates) a store on `storage`. After a crash this reads only the manifest,
    /// the index runs' summaries and the unsealed tail (at most one segment), cutting off
    /// torn writes. The space reserve ([`Config::reserve_bytes`]) is held when this returns
    /// (made now if it is missing and the disk has room).
    pub fn open(storage: Arc<dyn Storage>, cfg: Config) -> Result<Store> {
        let store = Store::open_reserve_later(storage, cfg)?;
        store.ensure_reserve();
        Ok(store)
    }

    /// [`Store::open_dir`] without making a missing reserve file: see
    /// [`Store::open_reserve_later`].
    pub fn open_dir_reserve_later(path: impl AsRef<Path>, cfg: Config) -> Result<Store> {
        let p = path.as_ref();
        let fs = FileStorage::new(p).map_err(|e| Error::io(p.display().to_string(), e))?;
        Store::open_reserve_later(Arc::new(fs), cfg)
    }

    /// [`Store::open`], except that a missing reserve file is not made: the caller makes it
    /// with [`Store::ensure_reserve`], for instance on a thread of its own once it serves. On
    /// a store's first open that file is most of the open's writing (`reserve_bytes` of zeros,
    /// synced), which a service that must be up quickly need not wait for. Until then a full
    /// disk has no reserve to draw on for deletes and compaction, exactly as when the reserve
    /// could not be made for want of room.
    pub fn open_reserve_later(storage: Arc<dyn Storage>, cfg: Config) -> Result<Store> {
        if cfg.segment_bytes < 64 * 1024
            || cfg.segment_bytes + cfg.max_batch_bytes as u64 + u64::from(cfg.max_shard_bytes)
                >= u64::from(u32::MAX)
        {
            return Err(Error::Config(format!(
                "segment_bytes {} must be between 64 KiB and about 4 GiB less the batch and shard limits",
                cfg.segment_bytes
            )));
        }
        if cfg.max_shard_bytes == 0 || cfg.max_batch_bytes == 0 {
            return Err(Error::Config(
                "max_shard_bytes and max_batch_bytes must be positive".into(),
            ));
        }
        if cfg.memory_budget_bytes < 256 * 1024 {
            return Err(Error::Config(format!(
                "memory_budget_bytes {} is below the 256 KiB minimum",
                cfg.memory_budget_bytes
            )));
        }
        let dir = storage.describe("");
        let mem_limit = (cfg.memory_budget_bytes / 4 / MEM_ENTRY_RAM).max(64);
        let names = storage.list().map_err(|e| Error::io(&dir, e))?;
        let ioerr = |name: &str, e| Error::io(storage.describe(name), e);

        let manifest = if names.iter().any(|n| n == MANIFEST) {
            let f = storage.open(MANIFEST).map_err(|e| ioerr(MANIFEST, e))?;
            let len = f.len().map_err(|e| ioerr(MANIFEST, e))?;
            let mut b = vec![0u8; len as usize];
            f.read_at(&mut b, 0).map_err(|e| ioerr(MANIFEST, e))?;
            Manifest::decode(&b).ok_or_else(|| Error::Format {
                file: storage.describe(MANIFEST),
                detail: "store manifest is damaged (checksum or layout mismatch)".into(),
            })?
        } else {
            if let Some(n) = names
                .iter()
                .find(|n| n.starts_with("seg-") || n.starts_with("idx-"))
            {
                return Err(Error::Format {
                    file: storage.describe(MANIFEST),
                    detail: format!(
                        "manifest missing although store file {n} exists; refusing to start an empty store over it"
                    ),
                });
            }
            let m = Manifest {
                seed: new_seed(),
                seq: 0,
                tail_seg: 1,
                tail_off: 0,
                next_seg: 2,
                next_run: 1,
                owners: Vec::new(),
                segs: vec![(1, 0, 0)],
                runs: Vec::new(),
            };
            write_manifest_file(&*storage, &m)?;
            m
        };

        // Index runs listed in the manifest; others are leftovers of an interrupted flush.
        let mut runs = Vec::new();
        for &r in &manifest.runs {
            let name = Run::file_name(r);
            let f = storage.open(&name).map_err(|e| ioerr(&name, e))?;
            runs.push(Arc::new(Run::open(
                r,
                storage.describe(&name),
                f,
                manifest.seed,
            )?));
        }
        let mut max_seg = manifest.next_seg.saturating_sub(1);
        let mut max_run = manifest.next_run.saturating_sub(1);
        let mut tail_segs = Vec::new();
        let listed: BTreeMap<u32, (u64, u64)> =
            manifest.segs.iter().map(|&(i, b, c)| (i, (b, c))).collect();
        for n in &names {
            if let Some(r) = parse_name(n, "idx-", ".run") {
                max_run = max_run.max(r);
                if !manifest.runs.contains(&r) {
                    let _ = storage.remove(n);
                }
            } else if let Some(s) = parse_name(n, "seg-", ".log") {
                max_seg = max_seg.max(s);
                if s >= manifest.tail_seg {
                    tail_segs.push(s);
                } else if !listed.contains_key(&s) {
                    // Compacted away, but the removal was not yet durable.
                    let _ = storage.remove(n);
                }
            } else if n == MANIFEST_TMP || n == RESERVE_TMP {
                let _ = storage.remove(n);
            }
        }
        if !tail_segs.contains(&manifest.tail_seg) {
            // Created with the manifest but never written.
            let name = seg_name(manifest.tail_seg);
            storage.create(&name).map_err(|e| ioerr(&name, e))?;
            storage.sync_dir().map_err(|e| ioerr("", e))?;
            tail_segs.push(manifest.tail_seg);
        }
        tail_segs.sort_unstable();

        let mut index = Index {
            mem: BTreeMap::new(),
            runs,
            segs: BTreeMap::new(),
            owners: manifest.owners.clone(),
            owner_ix: manifest
                .owners
                .iter()
                .enumerate()
                .map(|(i, o)| (*o, i as u32))
                .collect(),
        };
        for (&id, &(lb, lc)) in &listed {
            if id >= manifest.tail_seg && !tail_segs.contains(&id) {
                continue;
            }
            let name = seg_name(id);
            let file = storage.open(&name).map_err(|e| ioerr(&name, e))?;
            let len = file.len().map_err(|e| ioerr(&name, e))?;
            index.segs.insert(
                id,
                SegInfo {
                    file,
                    name: storage.describe(&name),
                    len,
                    live_bytes: lb,
                    live_count: lc,
                },
            );
        }
        for &s in &tail_segs {
            if let std::collections::btree_map::Entry::Vacant(v) = index.segs.entry(s) {
                let name = seg_name(s);
                let file = storage.open(&name).map_err(|e| ioerr(&name, e))?;
                v.insert(SegInfo {
                    file,
                    name: storage.describe(&name),
                    len: 0,
                    live_bytes: 0,
                    live_count: 0,
                });
            }
        }

        // Replay the unsealed tail.
        let mut seq = manifest.seq;
        let mut damaged = 0u64;
        let mut truncated = 0u64;
        let mut write_off = 0;
        let active_seg = *tail_segs.last().expect("tail segment exists");
        for &s in &tail_segs {
            let (file, name) = {
                let si = &index.segs[&s];
                (si.file.clone(), si.name.clone())
            };
            let start = if s == manifest.tail_seg {
                manifest.tail_off
            } else {
                0
            };
            let mut events = Vec::new();
            let end = scan_segment(&*file, start, seq, |ev| match ev {
                ScanEvent::Record { off, rec, .. } => events.push((off, rec)),
                ScanEvent::Damaged { .. } => damaged += 1,
            })
            .map_err(|e| Error::io(&name, e))?;
            for (off, rec) in &events {
                index.apply(s, *off, rec);
            }
            seq = seq.max(end.last_seq);
            let len = file.len().map_err(|e| Error::io(&name, e))?;
            if len != end.end {
                truncated += len.saturating_sub(end.end);
                file.set_len(end.end).map_err(|e| Error::io(&name, e))?;
                file.sync().map_err(|e| Error::io(&name, e))?;
            }
            index.segs.get_mut(&s).expect("present").len = end.end;
            if s == active_seg {
                write_off = end.end;
            }
        }

        let store = Store {
            storage,
            dir,
            mem_limit,
            writer: Mutex::new(Writer {
                pending: Vec::new(),
                pending_bytes: 0,
                leader: false,
                last_batch_requests: 1,
                next_no: 0,
                results: HashMap::new(),
            }),
            cv: Condvar::new(),
            io: Mutex::new(IoState {
                active_seg,
                write_off,
                seq,
                next_seg: max_seg + 1,
                next_run: max_run + 1,
                seed: manifest.seed,
                buf: Vec::new(),
                manifest: manifest.clone(),
            }),
            index: RwLock::new(index),
            poisoned: Mutex::new(None),
            maint: Mutex::new(()),
            merging: Mutex::new(()),
            reserve: Mutex::new(()),
            damaged_at_open: damaged,
            truncated_at_open: truncated,
            batches: Default::default(),
            batched_records: Default::default(),
            cfg,
        };
        if store.read_index().mem.len() > store.mem_limit {
            let mut io = lock(&store.io);
            store.checkpoint(&mut io, false, &[])?;
        }
        Ok(store)
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    fn now(&self) -> u64 {
        (self.cfg.clock)()
    }

    /// Stores `bytes` as shard `id` for `owner`, replacing any shard with that id (whoever
    /// owned it: a caller serving several peers checks [`Store::info`] first). Putting the
    /// same shard again with a later lease renews it. Returns once the shard is durable on
    /// the medium; concurrent puts share one fsync.
    pub fn put(&self, id: ShardId, bytes: &[u8], owner: OwnerId, lease: Lease) -> Result<()> {
        if bytes.len() > self.cfg.max_shard_bytes as usize {
            return Err(Error::TooLarge {
                id,
                len: bytes.len(),
                max: self.cfg.max_shard_bytes,
            });
        }
        let op = Op::Put {
            id,
            owner,
            expiry: lease.to_expiry(),
            payload: bytes.to_vec(),
        };
        self.submit(vec![op])?
            .pop()
            .expect("one result per op")
            .map(|_| ())
    }

    /// Stores several shards; one durable batch per `max_batch_bytes` of them, so bulk
    /// loads pay one fsync per batch rather than per shard. Returns one result per item.
    pub fn put_many(&self, items: &[(ShardId, &[u8], OwnerId, Lease)]) -> Result<Vec<Result<()>>> {
        let mut out: Vec<Result<()>> = Vec::with_capacity(items.len());
        let mut ops = Vec::new();
        let mut slots = Vec::new();
        let mut bytes = 0;
        let flush = |ops: &mut Vec<Op>, slots: &mut Vec<usize>, out: &mut Vec<Result<()>>| {
            if ops.is_empty() {
                return Ok(());
            }
            let rs = self.submit(std::mem::take(ops))?;
            for (slot, r) in slots.drain(..).zip(rs) {
                out[slot] = r.map(|_| ());
            }
            Ok::<(), Error>(())
        };
        for (i, (id, bytes_in, owner, lease)) in items.iter().enumerate() {
            if bytes_in.len() > self.cfg.max_shard_bytes as usize {
                out.push(Err(Error::TooLarge {
                    id: *id,
                    len: bytes_in.len(),
                    max: self.cfg.max_shard_bytes,
                }));
                continue;
            }
            out.push(Ok(()));
            let op = Op::Put {
                id: *id,
                owner: *owner,
                expiry: lease.to_expiry(),
                payload: bytes_in.to_vec(),
            };
            bytes += op.bytes();
            ops.push(op);
            slots.push(i);
            if bytes >= self.cfg.max_batch_bytes {
                flush(&mut ops, &mut slots, &mut out)?;
                bytes = 0;
            }
        }
        flush(&mut ops, &mut slots, &mut out)?;
        Ok(out)
    }

    /// Deletes shard `id` durably; `NotFound` if there is no live shard with that id.
    ///
    /// Each call writes one 4 KiB page; [`Store::delete_many`] packs many deletes into one.
    /// On a full disk, deletes draw on the space reserve (see [`Config::reserve_bytes`]).
    pub fn delete(&self, id: ShardId) -> Result<()> {
        self.delete_many(&[id])?.pop().expect("one result per id")
    }

    /// Deletes several shards in one durable batch (up to the batch limit per batch);
    /// returns one result per id, `NotFound` for ids with no live shard.
    pub fn delete_many(&self, ids: &[ShardId]) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(ids.len());
        let per_batch = (self.cfg.max_batch_bytes / REC_HDR).max(1);
        for chunk in ids.chunks(per_batch) {
            let ops = || {
                chunk
                    .iter()
                    .map(|&id| Op::Delete {
                        id,
                        expired_only: false,
                    })
                    .collect()
            };
            let rs = self.submit_with_reserve(ops)?;
            out.extend(rs.into_iter().map(|r| r.map(|_| ())));
        }
        Ok(out)
    }

    /// Submits ops that free space; if the disk is full, gives up the reserve file and tries
    /// once more.
    fn submit_with_reserve(&self, ops: impl Fn() -> Vec<Op>) -> Result<Vec<OpResult>> {
        let rs = self.submit(ops())?;
        if rs.iter().any(|r| matches!(r, Err(Error::NoSpace { .. }))) && self.release_reserve() {
            return self.submit(ops());
        }
        Ok(rs)
    }

    /// Creates the reserve file ([`Config::reserve_bytes`]) if it is missing and the disk has
    /// room (best effort); true if the reserve is held when it returns (or none is configured).
    /// [`Store::open`] and [`Store::compact`] call it; after [`Store::open_reserve_later`] the
    /// caller does. Safe to call while other threads use the store.
    pub fn ensure_reserve(&self) -> bool {
        let want = self.cfg.reserve_bytes;
        if want == 0 {
            return true;
        }
        let _r = lock(&self.reserve);
        if let Ok(f) = self.storage.open(RESERVE) {
            if f.len().is_ok_and(|l| l >= want) {
                return true;
            }
        }
        let made = (|| -> std::io::Result<()> {
            let f = self.storage.create(RESERVE_TMP)?;
            // Written, not just sized: a sparse file would hold no space.
            let zeros = vec![0u8; 64 << 10];
            let mut at = 0;
            while at < want {
                let n = (want - at).min(zeros.len() as u64) as usize;
                f.write_at(&zeros[..n], at)?;
                at += n as u64;
            }
            f.sync()?;
            self.storage.rename(RESERVE_TMP, RESERVE)?;
            self.storage.sync_dir()
        })();
        if made.is_err() {
            let _ = self.storage.remove(RESERVE_TMP);
        }
        made.is_ok()
    }

    /// Removes the reserve file; true if there was one.
    fn release_reserve(&self) -> bool {
        let _r = lock(&self.reserve);
        let released = self.storage.remove(RESERVE).is_ok();
        if released {
            let _ = self.storage.sync_dir();
        }
        released
    }

    /// Reads shard `id`. Costs one index-page read (none if the shard is unsealed) plus one
    /// read of the record; checks every checksum and never returns damaged bytes.
    pub fn get(&self, id: ShardId) -> Result<Vec<u8>> {
        for _ in 0..4 {
            let e = match self.lookup(&id)? {
                Some(e) if e.is_live(self.now()) => e,
                _ => return Err(Error::NotFound { id }),
            };
            let seg = self
                .read_index()
                .segs
                .get(&e.seg)
                .map(|s| (s.file.clone(), s.name.clone()));
            // A compaction moved it between the lookup and now: look again.
            let Some((file, name)) = seg else { continue };
            let corrupt = |detail: &str| Error::Corrupt {
                id,
                file: name.clone(),
                offset: u64::from(e.off),
                detail: detail.into(),
            };
            let mut buf = vec![0u8; e.len as usize];
            match file.read_at(&mut buf, u64::from(e.off)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(corrupt("record cut short"))
                }
                Err(err) => return Err(Error::io(&name, err)),
            }
            return match decode_record(&buf) {
                None => Err(corrupt("record header checksum mismatch")),
                Some(r) if r.id != id || r.kind != RecordKind::Put => {
                    Err(corrupt("record belongs to another shard"))
                }
                Some(r) if !r.payload_ok => Err(corrupt("payload checksum mismatch")),
                Some(_) => {
                    buf.drain(..REC_HDR);
                    Ok(buf)
                }
            };
        }
        Err(Error::NotFound { id })
    }

    /// Metadata of live shard `id`, without reading its payload (`None` if absent).
    pub fn info(&self, id: ShardId) -> Result<Option<ShardInfo>> {
        match self.lookup(&id)? {
            Some(e) if e.is_live(self.now()) => Ok(Some(self.info_of(id, &e))),
            _ => Ok(None),
        }
    }

    fn info_of(&self, id: ShardId, e: &Entry) -> ShardInfo {
        let owner = self
            .read_index()
            .owners
            .get(e.owner as usize)
            .copied()
            .unwrap_or_default();
        ShardInfo {
            id,
            owner,
            lease: Lease::from_expiry(e.expiry),
            len: e.len.saturating_sub(REC_HDR as u32),
        }
    }

    /// The newest index entry for `id` (put or tombstone, live or expired).
    fn lookup(&self, id: &ShardId) -> Result<Option<Entry>> {
        let runs = {
            let idx = self.read_index();
            if let Some(e) = idx.mem.get(id) {
                return Ok(Some(*e));
            }
            idx.runs.clone()
        };
        for r in runs.iter().rev() {
            if let Some(e) = r.get(id)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Up to `limit` live shards of `owner` with ids above `after`, in id order. Page
    /// through all of them by passing the last id returned; each page reads the index
    /// sequentially from `after` on.
    pub fn shards_of(
        &self,
        owner: OwnerId,
        after: Option<ShardId>,
        limit: usize,
    ) -> Result<Vec<ShardInfo>> {
        let Some(&num) = self.read_index().owner_ix.get(&owner) else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan(after, |id, e| {
            if e.is_live(now) && e.owner == num {
                out.push(ShardInfo {
                    id,
                    owner,
                    lease: Lease::from_expiry(e.expiry),
                    len: e.len.saturating_sub(REC_HDR as u32),
                });
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Walks the newest entry of every id above `after` in id order until `f` says stop.
    /// Holds a copy of the unsealed index (at most a quarter of the memory budget) and one
    /// page per index run.
    fn scan(
        &self,
        after: Option<ShardId>,
        mut f: impl FnMut(ShardId, Entry) -> Result<bool>,
    ) -> Result<()> {
        use std::ops::Bound;
        let (mem, runs): (Vec<(ShardId, Entry)>, Vec<Arc<Run>>) = {
            let idx = self.read_index();
            let lo = match after {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            (
                idx.mem
                    .range((lo, Bound::Unbounded))
                    .map(|(k, v)| (*k, *v))
                    .collect(),
                idx.runs.clone(),
            )
        };
        let mut mem = mem.into_iter().peekable();
        // Newest run first, so the first cursor holding an id wins.
        let mut cursors = runs
            .iter()
            .rev()
            .map(|r| RunCursor::new(r.clone(), after.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        loop {
            let mut best: Option<(ShardId, Entry)> = mem.peek().copied();
            for c in cursors.iter_mut() {
                if let Some((id, e)) = c.peek()? {
                    if best.is_none_or(|(b, _)| id < b) {
                        best = Some((id, e));
                    }
                }
            }
            let Some((id, e)) = best else { break };
            if mem.peek().is_some_and(|(m, _)| *m == id) {
                mem.next();
            }
            for c in cursors.iter_mut() {
                if c.peek()?.is_some_and(|(k, _)| k == id) {
                    c.advance();
                }
            }
            if !f(id, e)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the unsealed index to disk as an index run, so the next open reads no tail.
    /// Optional (a crash loses nothing without it); call it before a planned shutdown.
    pub fn flush_index(&self) -> Result<()> {
        self.poison_check()?;
        let mut io = lock(&self.io);
        if self.read_index().mem.is_empty() {
            return Ok(());
        }
        self.checkpoint(&mut io, false, &[])?;
        drop(io);
        self.merge_runs(false)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let idx = self.read_index();
        let mut s = Stats {
            memory_budget_bytes: self.cfg.memory_budget_bytes as u64,
            damaged_regions_at_open: self.damaged_at_open,
            truncated_bytes_at_open: self.truncated_at_open,
            batches: self.batches.load(std::sync::atomic::Ordering::Relaxed),
            batched_records: self
                .batched_records
                .load(std::sync::atomic::Ordering::Relaxed),
            segments: idx.segs.len() as u64,
            index_runs: idx.runs.len() as u64,
            unsealed_entries: idx.mem.len() as u64,
            ..Stats::default()
        };
        for seg in idx.segs.values() {
            s.shards += seg.live_count;
            s.live_bytes += seg.live_bytes;
            s.dead_bytes += seg.len.saturating_sub(seg.live_bytes);
        }
        let mut ram = idx.mem.len() * MEM_ENTRY_RAM + idx.owners.len() * 80;
        for r in &idx.runs {
            s.index_entries += r.count;
            ram += r.ram_bytes();
        }
        s.index_ram_bytes = ram as u64;
        s
    }

    fn poison_check(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(file) => Err(Error::Poisoned {
                dir: self.dir.clone(),
                file: file.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Queues `ops` as one request and waits until a batch holding them is durable.
    fn submit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>> {
        self.poison_check()?;
        let bytes: usize = ops.iter().map(Op::bytes).sum();
        let mut w = lock(&self.writer);
        while !w.pending.is_empty() && w.pending_bytes + bytes > self.cfg.max_batch_bytes {
            w = self.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        let no = w.next_no;
        w.next_no += 1;
        w.pending.push(Request { no, ops });
        w.pending_bytes += bytes;
        if w.leader {
            // A leader may be gathering a batch.
            self.cv.notify_all();
        }
        loop {
            if let Some(r) = w.results.remove(&no) {
                return Ok(r);
            }
            if !w.leader {
                w.leader = true;
                // Writers just released by the previous batch are still on their way back:
                // give them a moment to join, so N writers keep sharing one fsync.
                let target = w.last_batch_requests;
                let deadline = std::time::Instant::now() + GATHER_WAIT;
                while w.pending.len() < target && w.pending_bytes < self.cfg.max_batch_bytes {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    w = self
                        .cv
                        .wait_timeout(w, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                w.last_batch_requests = w.pending.len();
                let batch = std::mem::take(&mut w.pending);
                w.pending_bytes = 0;
                self.cv.notify_all();
                drop(w);
                let mut guard = LeaderGuard {
                    store: self,
                    nos: batch.iter().map(|r| (r.no, r.ops.len())).collect(),
                    done: false,
                };
                let results = self.commit_batch(batch);
                guard.done = true;
                drop(guard);
                w = lock(&self.writer);
                for (n, r) in results {
                    w.results.insert(n, r);
                }
                w.leader = false;
                self.cv.notify_all();
                if self.merge_due() {
                    // Index upkeep on this caller's time, after its batch is out and with
                    // no lock held, so other writers are not held up by it. A failure
                    // (e.g. a full disk) leaves the runs as they were, to retry later.
                    drop(w);
                    let _ = self.merge_runs(false);
                    w = lock(&self.writer);
                }
                continue;
            }
            w = self.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Writes one batch: resolves every op against the index, appends the records in one
    /// write, syncs once, then makes them visible.
    fn commit_batch(&self, batch: Vec<Request>) -> Vec<(u64, Vec<OpResult>)> {
        let mut io = lock(&self.io);
        let fail_all = |batch: &[Request], e: &Error| {
            batch
                .iter()
                .map(|r| (r.no, r.ops.iter().map(|_| Err(e.clone())).collect()))
                .collect::<Vec<_>>()
        };
        if let Err(e) = self.poison_check() {
            return fail_all(&batch, &e);
        }
        let nops: usize = batch.iter().map(|r| r.ops.len()).sum();
        let bound: usize = batch
            .iter()
            .flat_map(|r| r.ops.iter())
            .map(Op::bytes)
            .sum::<usize>()
            + BATCH_HDR;
        // Seal first if the batch would overrun the segment or the memtable.
        let full_seg = io.write_off > 0 && io.write_off + bound as u64 > self.cfg.segment_bytes;
        let full_mem = {
            let n = self.read_index().mem.len();
            n > 0 && n + nops > self.mem_limit
        };
        if full_seg || full_mem {
            if let Err(e) = self.checkpoint(&mut io, full_seg, &[]) {
                return fail_all(&batch, &e);
            }
        }
        let seg = io.active_seg;
        let base = io.write_off;
        let now = self.now();
        let mut buf = std::mem::take(&mut io.buf);
        buf.clear();
        buf.resize(BATCH_HDR, 0);
        let mut overlay: HashMap<ShardId, Option<Entry>> = HashMap::new();
        let mut records: Vec<(u64, DecodedRecord)> = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        for req in &batch {
            let mut rr = Vec::with_capacity(req.ops.len());
            for op in &req.ops {
                let id = match op {
                    Op::Put { id, .. } | Op::Delete { id, .. } | Op::Copy { id, .. } => *id,
                };
                let cur = match overlay.get(&id) {
                    Some(e) => *e,
                    None => match self.lookup(&id) {
                        Ok(e) => e,
                        Err(e) => {
                            rr.push(Err(e));
                            continue;
                        }
                    },
                };
                let cur_put = cur.filter(|e| e.kind == KIND_PUT);
                let aux = cur_put.map_or((0, 0), |e| (e.seg, e.len));
                let (kind, owner, expiry, payload, pcrc) = match op {
                    Op::Put {
                        owner,
                        expiry,
                        payload,
                        ..
                    } => (RecordKind::Put, *owner, *expiry, &payload[..], None),
                    Op::Delete { expired_only, .. } => {
                        let ok = match cur_put {
                            Some(e) if *expired_only => !e.is_live(now),
                            Some(e) => e.is_live(now),
                            None => false,
                        };
                        if !ok {
                            rr.push(if *expired_only {
                                Ok(Outcome::Skipped)
                            } else {
                                Err(Error::NotFound { id })
                            });
                            continue;
                        }
                        (RecordKind::Delete, OwnerId::default(), 0, &[][..], None)
                    }
                    Op::Copy {
                        from,
                        owner,
                        expiry,
                        payload,
                        payload_crc,
                        ..
                    } => {
                        if cur_put.is_none_or(|e| (e.seg, e.off) != *from || !e.is_live(now)) {
                            rr.push(Ok(Outcome::Skipped));
                            continue;
                        }
                        (
                            RecordKind::Put,
                            *owner,
                            *expiry,
                            &payload[..],
                            Some(*payload_crc),
                        )
                    }
                };
                let at = buf.len();
                encode_record(&mut buf, kind, &id, &owner, expiry, aux, payload, pcrc);
                let rec = decode_record(&buf[at..]).expect("just encoded");
                let off = base + at as u64;
                overlay.insert(
                    id,
                    Some(Entry {
                        seg,
                        off: off as u32,
                        len: format::record_len(payload.len()) as u32,
                        owner: 0,
                        expiry,
                        kind: if kind == RecordKind::Put {
                            KIND_PUT
                        } else {
                            KIND_DEL
                        },
                    }),
                );
                records.push((off, rec));
                rr.push(Ok(Outcome::Done));
            }
            results.push((req.no, rr));
        }
        if records.is_empty() {
            io.buf = buf;
            return results;
        }
        let body_len = buf.len() - BATCH_HDR;
        io.seq += 1;
        let seq = io.seq;
        let (hdr, body) = buf.split_at_mut(BATCH_HDR);
        encode_batch_header(hdr, seq, body, records.len() as u32);
        let padded = align_page(buf.len() as u64);
        buf.resize(padded as usize, 0);
        let (file, name) = {
            let idx = self.read_index();
            let s = &idx.segs[&seg];
            (s.file.clone(), s.name.clone())
        };
        let written = file
            .write_at(&buf, base)
            .and_then(|()| file.sync())
            .map_err(|e| Error::io(&name, e));
        io.buf = buf;
        if io.buf.capacity() > 2 * self.cfg.max_batch_bytes {
            io.buf = Vec::new();
        }
        if let Err(e) = written {
            // Undo: cut the file back so nothing half-written stays behind.
            let undone = file.set_len(base).and_then(|()| file.sync());
            if undone.is_err() {
                *lock(&self.poisoned) = Some(name);
            }
            let _ = body_len;
            return fail_all(&batch, &e);
        }
        let mut idx = self.write_index();
        for (off, rec) in &records {
            idx.apply(seg, *off, rec);
        }
        if let Some(s) = idx.segs.get_mut(&seg) {
            s.len = base + padded;
        }
        drop(idx);
        io.write_off = base + padded;
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.batched_records
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        results
    }

    /// Writes the memtable as an index run and records a new tail mark (optionally starting
    /// a new segment and dropping segments `remove`), then merges runs as the policy asks.
    fn checkpoint(&self, io: &mut IoState, new_segment: bool, remove: &[u32]) -> Result<()> {
        let run_id = io.next_run;
        let mem_len = self.read_index().mem.len();
        let new_run = if mem_len > 0 {
            let name = Run::file_name(run_id);
            let built = (|| {
                let file = self
                    .storage
                    .create(&name)
                    .map_err(|e| Error::io(self.storage.describe(&name), e))?;
                let idx = self.read_index();
                let total: u64 = idx.runs.iter().map(|r| r.count).sum::<u64>() + mem_len as u64;
                let mut w = RunWriter::new(
                    file,
                    self.storage.describe(&name),
                    mem_len as u64,
                    self.bloom_bits(total),
                    io.seed,
                );
                for (id, e) in &idx.mem {
                    w.add(id, e)?;
                }
                w.finish(run_id)
            })();
            match built {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    let _ = self.storage.remove(&name);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let (seg_id, new_file) = if new_segment {
            let id = io.next_seg;
            let name = seg_name(id);
            match self.storage.create(&name) {
                Ok(f) => (id, Some((f, name))),
                Err(e) => {
                    let _ = self.storage.remove(&Run::file_name(run_id));
                    return Err(Error::io(self.storage.describe(&name), e));
                }
            }
        } else {
            (io.active_seg, None)
        };
        let (tail_seg, tail_off) = if new_segment {
            (seg_id, 0)
        } else {
            (io.active_seg, io.write_off)
        };
        let m = {
            let idx = self.read_index();
            let mut segs: Vec<(u32, u64, u64)> = idx
                .segs
                .iter()
                .filter(|(id, _)| !remove.contains(id))
                .map(|(id, s)| (*id, s.live_bytes, s.live_count))
                .collect();
            if new_segment {
                segs.push((seg_id, 0, 0));
            }
            let mut runs: Vec<u32> = idx.runs.iter().map(|r| r.id).collect();
            runs.extend(new_run.as_ref().map(|r| r.id));
            Manifest {
                seed: io.seed,
                seq: io.seq,
                tail_seg,
                tail_off,
                next_seg: io.next_seg + u32::from(new_segment),
                next_run: io.next_run + u32::from(new_run.is_some()),
                owners: idx.owners.clone(),
                segs,
                runs,
            }
        };
        if let Err(e) = write_manifest_file(&*self.storage, &m) {
            let _ = self.storage.remove(&Run::file_name(run_id));
            if let Some((_, n)) = &new_file {
                let _ = self.storage.remove(n);
            }
            return Err(e);
        }
        io.manifest = m;
        {
            let mut idx = self.write_index();
            if let Some(r) = new_run {
                idx.runs.push(r);
                idx.mem.clear();
                io.next_run += 1;
            }
            if let Some((f, name)) = new_file {
                idx.segs.insert(
                    seg_id,
                    SegInfo {
                        file: f,
                        name: self.storage.describe(&name),
                        len: 0,
                        live_bytes: 0,
                        live_count: 0,
                    },
                );
                io.next_seg += 1;
                io.active_seg = seg_id;
                io.write_off = 0;
            }
            for r in remove {
                idx.segs.remove(r);
            }
        }
        for r in remove {
            let _ = self.storage.remove(&seg_name(*r));
        }
        Ok(())
    }

    /// Bloom bits per key that keep all filters and fences within the budget at `total`
    /// index entries.
    fn bloom_bits(&self, total: u64) -> u32 {
        let avail = (self.cfg.memory_budget_bytes as u64 * 3 / 4)
            .saturating_sub(total * 8 / PER_PAGE as u64);
        ((avail * 8) / total.max(1)).min(u64::from(MAX_BLOOM_BITS)) as u32
    }

    /// Whether the run policy asks for a merge now.
    fn merge_due(&self) -> bool {
        let idx = self.read_index();
        idx.runs.windows(2).any(|w| w[1].count * 2 >= w[0].count)
    }

    /// Merges adjacent runs while a newer one is at least half the size of the one before
    /// it (a binary counter: O(log n) runs, each entry rewritten O(log n) times); with
    /// `all`, merges everything into one run. Runs without the I/O lock, so puts go on
    /// meanwhile; only installing the result takes it. One merger at a time: without `all`,
    /// a caller finding a merge under way returns at once.
    fn merge_runs(&self, all: bool) -> Result<()> {
        let _merging = if all {
            lock(&self.merging)
        } else {
            match self.merging.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            }
        };
        loop {
            let (a, b, bottom) = {
                let idx = self.read_index();
                let n = idx.runs.len();
                if n < 2 {
                    return Ok(());
                }
                let i = if all {
                    n - 2
                } else {
                    match (0..n - 1)
                        .rev()
                        .find(|&i| idx.runs[i + 1].count * 2 >= idx.runs[i].count)
                    {
                        Some(i) => i,
                        None => return Ok(()),
                    }
                };
                (idx.runs[i].clone(), idx.runs[i + 1].clone(), i == 0)
            };
            let (id, seed) = {
                let mut io = lock(&self.io);
                io.next_run += 1;
                (io.next_run - 1, io.seed)
            };
            let name = Run::file_name(id);
            let run = match self.merge_two(seed, &a, &b, bottom, id, &name) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    let _ = self.storage.remove(&name);
                    return Err(e);
                }
            };
            {
                let mut io = lock(&self.io);
                let mut m = io.manifest.clone();
                m.runs = m
                    .runs
                    .iter()
                    .filter(|&&r| r != b.id)
                    .map(|&r| if r == a.id { id } else { r })
                    .collect();
                m.next_run = m.next_run.max(io.next_run);
                if let Err(e) = write_manifest_file(&*self.storage, &m) {
                    let _ = self.storage.remove(&name);
                    return Err(e);
                }
                io.manifest = m;
                let mut idx = self.write_index();
                idx.runs.retain(|r| r.id != b.id);
                let pos = idx
                    .runs
                    .iter()
                    .position(|r| r.id == a.id)
                    .expect("only the merger removes runs");
                idx.runs[pos] = run;
            }
            let _ = self.storage.remove(&Run::file_name(a.id));
            let _ = self.storage.remove(&Run::file_name(b.id));
        }
    }

    fn merge_two(
        &self,
        seed: u64,
        older: &Arc<Run>,
        newer: &Arc<Run>,
        bottom: bool,
        id: u32,
        name: &str,
    ) -> Result<Run> {
        let file = self
            .storage
            .create(name)
            .map_err(|e| Error::io(self.storage.describe(name), e))?;
        let (total, live_segs): (u64, Vec<u32>) = {
            let idx = self.read_index();
            (
                idx.runs.iter().map(|r| r.count).sum(),
                idx.segs.keys().copied().collect(),
            )
        };
        let mut w = RunWriter::new(
            file,
            self.storage.describe(name),
            older.count + newer.count,
            self.bloom_bits(total),
            seed,
        );
        let mut a = RunCursor::new(older.clone(), None)?;
        let mut b = RunCursor::new(newer.clone(), None)?;
        loop {
            let (x, y) = (a.peek()?, b.peek()?);
            let (id, mut e) = match (x, y) {
                (None, None) => break,
                (Some(x), None) => {
                    a.advance();
                    x
                }
                (None, Some(y)) => {
                    b.advance();
                    y
                }
                (Some(x), Some(y)) => {
                    if x.0 < y.0 {
                        a.advance();
                        x
                    } else if y.0 < x.0 {
                        b.advance();
                        y
                    } else {
                        a.advance();
                        b.advance();
                        y
                    }
                }
            };
            // A put whose segment was compacted away is dead (a live one was copied to a
            // newer place); it still shadows older entries, so it becomes a tombstone.
            if e.kind == KIND_PUT && live_segs.binary_search(&e.seg).is_err() {
                e.kind = KIND_DEL;
            }
            if bottom && e.kind == KIND_DEL {
                continue;
            }
            w.add(&id, &e)?;
        }
        w.finish(id)
    }

    /// Reclaims space: deletes shards whose lease ran out, then rewrites the segments with
    /// the most dead bytes (copying live shards forward) and removes them, within the I/O
    /// bound of `opts`. Safe to run while other threads put and get.
    pub fn compact(&self, opts: CompactOptions) -> Result<CompactReport> {
        let _m = lock(&self.maint);
        self.poison_check()?;
        let mut rep = CompactReport::default();
        let now = self.now();
        // 1. Lease expiry: tombstones for expired shards, in bounded chunks.
        let mut after = None;
        loop {
            let mut ids = Vec::new();
            let mut last = None;
            let mut reached_end = true;
            self.scan(after, |id, e| {
                last = Some(id);
                if e.kind == KIND_PUT && !e.is_live(now) {
                    ids.push(id);
                    if ids.len() >= 1024 {
                        reached_end = false;
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if !ids.is_empty() {
                let ops = ids
                    .iter()
                    .map(|&id| Op::Delete {
                        id,
                        expired_only: true,
                    })
                    .collect();
                for r in self.submit(ops)? {
                    if r? == Outcome::Done {
                        rep.expired += 1;
                    }
                }
            }
            if reached_end {
                break;
            }
            after = last;
        }
        // 2. Pick victims.
        let active = lock(&self.io).active_seg;
        let mut victims: Vec<(u32, u64, u64)> = {
            let idx = self.read_index();
            idx.segs
                .iter()
                .filter(|(id, s)| {
                    **id != active
                        && s.len > 0
                        && (s.live_count == 0
                            || (s.len - s.live_bytes.min(s.len)) as f64
                                >= opts.min_dead_ratio * s.len as f64)
                })
                .map(|(id, s)| (*id, s.len, s.live_bytes))
                .collect()
        };
        // Wholly dead segments first (they cost no copying), then the deadest.
        victims.sort_by_key(|&(_, len, live)| (live > 0, std::cmp::Reverse(len - live.min(len))));
        let mut budget = opts.max_read_bytes;
        let mut done = Vec::new();
        for (seg, len, live) in victims {
            if live > 0 {
                if budget < len {
                    continue;
                }
                budget -= len;
                let copied = match self.copy_live(seg, now) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    // The disk is full: keep what is reclaimed so far.
                    Err(Error::NoSpace { .. }) => break,
                    Err(e) => return Err(e),
                };
                rep.bytes_copied += copied;
            }
            rep.bytes_reclaimed += len;
            done.push(seg);
        }
        {
            let mut io = lock(&self.io);
            // Empty sealed segments go too; the active one (maybe new since) always stays.
            {
                let idx = self.read_index();
                for (id, s) in &idx.segs {
                    if s.len == 0 && !done.contains(id) {
                        done.push(*id);
                    }
                }
            }
            done.retain(|&s| s != io.active_seg);
            if !done.is_empty() {
                self.checkpoint(&mut io, false, &done)?;
                rep.segments_removed = done.len() as u64;
            }
        }
        // 3. Fold the index into one run: one page read per get afterwards.
        {
            let mut io = lock(&self.io);
            if self.read_index().runs.len() > 1 {
                self.checkpoint(&mut io, false, &[])?;
                drop(io);
                self.merge_runs(true)?;
            }
        }
        let _ = self.ensure_reserve();
        Ok(rep)
    }

    /// Copies the live records of segment `seg` forward. `None` if the segment has damaged
    /// regions (it is then kept, so `verify` and `get` still name the damaged shards).
    fn copy_live(&self, seg: u32, now: u64) -> Result<Option<u64>> {
        let Some((file, name)) = self
            .read_index()
            .segs
            .get(&seg)
            .map(|s| (s.file.clone(), s.name.clone()))
        else {
            return Ok(Some(0));
        };
        let mut ops = Vec::new();
        let mut ops_bytes = 0usize;
        let mut copied = 0u64;
        let mut damaged = false;
        let mut err = None;
        scan_segment(&*file, 0, 0, |ev| {
            if err.is_some() {
                return;
            }
            match ev {
                ScanEvent::Damaged { .. } => damaged = true,
                ScanEvent::Record { off, rec, payload } => {
                    if rec.kind != RecordKind::Put {
                        return;
                    }
                    match self.lookup(&rec.id) {
                        Ok(Some(e))
                            if e.seg == seg && u64::from(e.off) == off && e.is_live(now) =>
                        {
                            let op = Op::Copy {
                                id: rec.id,
                                from: (seg, off as u32),
                                owner: rec.owner,
                                expiry: rec.expiry,
                                payload: payload.to_vec(),
                                payload_crc: rec.payload_crc,
                            };
                            ops_bytes += op.bytes();
                            ops.push(op);
                            if ops_bytes >= self.cfg.max_batch_bytes {
                                let batch = std::mem::take(&mut ops);
                                match self.submit_copies(batch) {
                                    Ok(rs) => {
                                        for r in rs {
                                            if let Err(e) = r {
                                                err = Some(e);
                                            }
                                        }
                                    }
                                    Err(e) => err = Some(e),
                                }
                                copied += ops_bytes as u64;
                                ops_bytes = 0;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => err = Some(e),
                    }
                }
            }
        })
        .map_err(|e| Error::io(&name, e))?;
        if let Some(e) = err {
            return Err(e);
        }
        if !ops.is_empty() {
            for r in self.submit_copies(ops)? {
                r?;
            }
            copied += ops_bytes as u64;
        }
        Ok(if damaged { None } else { Some(copied) })
    }

    /// Submits compaction copies, drawing on the reserve if the disk is full.
    fn submit_copies(&self, ops: Vec<Op>) -> Result<Vec<OpResult>> {
        let clone_ops = |v: &Vec<Op>| -> Vec<Op> {
            v.iter()
                .map(|o| match o {
                    Op::Copy {
                        id,
                        from,
                        owner,
                        expiry,
                        payload,
                        payload_crc,
                    } => Op::Copy {
                        id: *id,
                        from: *from,
                        owner: *owner,
                        expiry: *expiry,
                        payload: payload.clone(),
                        payload_crc: *payload_crc,
                    },
                    _ => unreachable!("only copies here"),
                })
                .collect()
        };
        // A second copy for the retry: at most one batch more of RAM, during compaction only.
        let again = clone_ops(&ops);
        let rs = self.submit(ops)?;
        if rs.iter().any(|r| matches!(r, Err(Error::NoSpace { .. }))) && self.release_reserve() {
            return self.submit(again);
        }
        Ok(rs)
    }

    /// Reads every segment and index page and checks every checksum; reports each live
    /// shard whose bytes are damaged and each damaged index page. Reads the whole store
    /// sequentially; RAM stays bounded by one scan window plus the list of damage found.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _m = lock(&self.maint);
        let mut rep = VerifyReport::default();
        let (runs, segs): (Vec<Arc<Run>>, Vec<SegHandle>) = {
            let idx = self.read_index();
            (
                idx.runs.clone(),
                idx.segs
                    .iter()
                    .map(|(id, s)| (*id, s.file.clone(), s.name.clone()))
                    .collect(),
            )
        };
        let mut index_ok = true;
        for r in &runs {
            for p in 0..r.pages() {
                if r.page(p).is_err() {
                    index_ok = false;
                    rep.damaged.push(Damage::IndexPage {
                        file: r.name.clone(),
                        page: p,
                    });
                }
            }
        }
        // Damaged records by position, and regions whose records cannot be read at all.
        let mut bad: HashMap<(u32, u32), String> = HashMap::new();
        let mut regions: Vec<(u32, u64, u64)> = Vec::new();
        let mut lens: HashMap<u32, u64> = HashMap::new();
        for (seg, file, name) in &segs {
            let end = scan_segment(&**file, 0, 0, |ev| match ev {
                ScanEvent::Record { off, rec, .. } => {
                    rep.records_checked += 1;
                    if !rec.payload_ok {
                        bad.insert((*seg, off as u32), "payload checksum mismatch".into());
                    }
                }
                ScanEvent::Damaged { from, to } => regions.push((*seg, from, to)),
            })
            .map_err(|e| Error::io(name, e))?;
            rep.bytes_checked += end.bytes_read;
            let len = file.len().map_err(|e| Error::io(name, e))?;
            if end.end < len {
                regions.push((*seg, end.end, len));
            }
            lens.insert(*seg, len);
        }
        if !index_ok {
            return Ok(rep);
        }
        let names: HashMap<u32, String> = segs.iter().map(|(i, _, n)| (*i, n.clone())).collect();
        let now = self.now();
        self.scan(None, |id, e| {
            if !e.is_live(now) {
                return Ok(true);
            }
            let off = u64::from(e.off);
            let detail = if let Some(d) = bad.get(&(e.seg, e.off)) {
                Some(d.clone())
            } else if regions
                .iter()
                .any(|&(s, from, to)| s == e.seg && off < to && off + u64::from(e.len) > from)
            {
                Some("record header unreadable".to_string())
            } else if lens.get(&e.seg).is_none_or(|&l| off + u64::from(e.len) > l) {
                Some("record missing from its segment".to_string())
            } else {
                None
            };
            if let Some(detail) = detail {
                rep.damaged.push(Damage::Shard {
                    id,
                    file: names
                        .get(&e.seg)
                        .cloned()
                        .unwrap_or_else(|| seg_name(e.seg)),
                    offset: off,
                    detail,
                });
            }
            Ok(true)
        })?;
        Ok(rep)
    }
}

/// Makes sure a panicking batch writer does not leave the others waiting forever.
struct LeaderGuard<'a> {
    store: &'a Store,
    nos: Vec<(u64, usize)>,
    done: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        *lock(&self.store.poisoned) = Some("(batch writer panicked)".into());
        let mut w = lock(&self.store.writer);
        for (no, n) in &self.nos {
            let e = Error::Poisoned {
                dir: self.store.dir.clone(),
                file: "(batch writer panicked)".into(),
            };
            w.results
                .insert(*no, (0..*n).map(|_| Err(e.clone())).collect());
        }
        w.leader = false;
        self.store.cv.notify_all();
    }
}

/// Replaces the manifest atomically: write a temporary file, sync it, rename it over the
/// old one, sync the directory (so the rename itself survives power loss).
fn write_manifest_file(storage: &dyn Storage, m: &Manifest) -> Result<()> {
    let b = m.encode();
    let err = |n: &str, e| Error::io(storage.describe(n), e);
    let f = storage
        .create(MANIFEST_TMP)
        .map_err(|e| err(MANIFEST_TMP, e))?;
    f.write_at(&b, 0).map_err(|e| err(MANIFEST_TMP, e))?;
    f.sync().map_err(|e| err(MANIFEST_TMP, e))?;
    storage
        .rename(MANIFEST_TMP, MANIFEST)
        .map_err(|e| err(MANIFEST, e))?;
    storage.sync_dir().map_err(|e| err(MANIFEST, e))?;
    Ok(())
}
