//! The engine: the [`Store`] type, its public API and the index lookups reads go through.
//! The work behind the API lives in one file per job:
//!
//! - `commit.rs`: group commit, the queue of puts and the one batch writer;
//! - `checkpoint.rs`: the manifest, and checkpoints that seal the memtable into an index run;
//! - `merge.rs`: merging index runs (the binary-counter policy);
//! - `compact.rs`: lease expiry and segment compaction;
//! - `verify.rs`: the scrub that checks every checksum;
//! - `recovery.rs`: `open`, which rebuilds the in-RAM state after a crash;
//! - `segment.rs`: the sequential batch scanner recovery, compaction and verify share.
//!
//! Locks, always taken in this order when nested: `writer` (the queue of puts waiting for the
//! next batch) → `io` (held by the one thread writing a batch, or by maintenance) → `index`
//! (read by lookups, written briefly when a batch is applied). Disk reads of `get` happen
//! with no lock held.

mod checkpoint;
mod commit;
mod compact;
mod merge;
mod recovery;
mod segment;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{self, decode_record, DecodedRecord, RecordKind, REC_HDR};
use crate::run::{Entry, Run, RunCursor, KIND_DEL, KIND_PUT};
use crate::storage::{FileStorage, Storage, StorageFile};
use crate::{Config, Error, Lease, OwnerId, Result, ShardId};

use commit::{IoState, Op, OpResult, Writer};
pub use compact::{CompactOptions, CompactReport};
pub use verify::{Damage, VerifyReport};

/// Space held back so deletes and compaction can still write when the disk is full.
const RESERVE: &str = "RESERVE";
const RESERVE_TMP: &str = "RESERVE.tmp";
/// RAM one memtable entry costs in a `BTreeMap` (key, value and node overhead), measured
/// roughly; used to turn the memory budget into an entry limit.
const MEM_ENTRY_RAM: usize = 96;

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
        Store::recover(storage, cfg)
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

    /// Every owner the store has known (some may hold nothing any more), in the order first
    /// seen: what a sweep over all owners' shards walks.
    pub fn owners(&self) -> Vec<OwnerId> {
        self.read_index().owners.clone()
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
}
