//! Recovery: `open` rebuilds the in-RAM state from the medium after a clean stop or a crash.
//!
//! It reads the manifest (runs, sealed segments with their live counts, owner table, tail
//! mark), opens the runs' summaries, removes leftovers of interrupted checkpoints, merges and
//! compactions (files the manifest does not list), and replays only the segment(s) after the
//! tail mark, cutting off a torn tail. So open time does not grow with the store. It lives
//! apart from the API because it is the one place that trusts nothing in RAM and derives the
//! writer's state (`IoState`) from what is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::checkpoint::{write_manifest_file, Manifest, MANIFEST, MANIFEST_TMP};
use super::commit::{IoState, Writer};
use super::segment::{scan_segment, ScanEvent};
use super::{lock, parse_name, seg_name, Index, SegInfo, Store, MEM_ENTRY_RAM, RESERVE_TMP};
use crate::format::PAGE;
use crate::run::{Run, KIND_PUT};
use crate::storage::Storage;
use crate::{Config, Error, Result};

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
    /// Opens the store on `storage`: the body of [`Store::open_reserve_later`]. Each step is
    /// a function below; the invariants the writer relies on are asserted once all ran.
    pub(super) fn recover(storage: Arc<dyn Storage>, cfg: Config) -> Result<Store> {
        check_config(&cfg)?;
        let dir = storage.describe("");
        let mem_limit = (cfg.memory_budget_bytes / 4 / MEM_ENTRY_RAM).max(64);
        let names = storage.list().map_err(|e| Error::io(&dir, e))?;
        let manifest = read_or_create_manifest(&*storage, &names)?;
        let runs = open_runs(&*storage, &manifest)?;
        let files = sweep_files(&*storage, &manifest, &names)?;
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
        open_segments(&*storage, &manifest, &files.tail_segs, &mut index)?;
        let tail = replay_tail(&manifest, &files.tail_segs, &mut index)?;
        let io = IoState {
            active_seg: tail.active_seg,
            write_off: tail.write_off,
            seq: tail.seq,
            next_seg: files.max_seg + 1,
            next_run: files.max_run + 1,
            seed: manifest.seed,
            buf: Vec::new(),
            manifest,
        };
        assert_recovered(&io, &index, &files.tail_segs);

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
            io: Mutex::new(io),
            index: RwLock::new(index),
            poisoned: Mutex::new(None),
            maint: Mutex::new(()),
            merging: Mutex::new(()),
            reserve: Mutex::new(()),
            damaged_at_open: tail.damaged,
            truncated_at_open: tail.truncated,
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
}

/// Refuses configurations the on-disk format cannot hold (record offsets are 32-bit).
fn check_config(cfg: &Config) -> Result<()> {
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
    Ok(())
}

/// Reads the manifest, or writes the first one of an empty directory. A directory with
/// store files but no manifest is refused rather than started over.
fn read_or_create_manifest(storage: &dyn Storage, names: &[String]) -> Result<Manifest> {
    let ioerr = |name: &str, e| Error::io(storage.describe(name), e);
    if names.iter().any(|n| n == MANIFEST) {
        let f = storage.open(MANIFEST).map_err(|e| ioerr(MANIFEST, e))?;
        let len = f.len().map_err(|e| ioerr(MANIFEST, e))?;
        let mut b = vec![0u8; len as usize];
        f.read_at(&mut b, 0).map_err(|e| ioerr(MANIFEST, e))?;
        return Manifest::decode(&b).ok_or_else(|| Error::Format {
            file: storage.describe(MANIFEST),
            detail: "store manifest is damaged (checksum or layout mismatch)".into(),
        });
    }
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
    write_manifest_file(storage, &m)?;
    Ok(m)
}

/// Opens the summaries (filter, fences) of the index runs the manifest lists, oldest first.
fn open_runs(storage: &dyn Storage, manifest: &Manifest) -> Result<Vec<Arc<Run>>> {
    let mut runs = Vec::new();
    for &r in &manifest.runs {
        let name = Run::file_name(r);
        let f = storage
            .open(&name)
            .map_err(|e| Error::io(storage.describe(&name), e))?;
        runs.push(Arc::new(Run::open(
            r,
            storage.describe(&name),
            f,
            manifest.seed,
        )?));
    }
    Ok(runs)
}

/// What the directory listing says beyond the manifest.
struct Files {
    /// Segments at or after the tail mark's segment, ascending: the unsealed tail to replay.
    tail_segs: Vec<u32>,
    /// Highest segment and run numbers named anywhere (manifest or directory), so new files
    /// never reuse a name.
    max_seg: u32,
    max_run: u32,
}

/// Sorts the directory: finds the tail segments and removes leftovers of interrupted work
/// (runs the manifest does not list, segments compacted away whose removal was not yet
/// durable, temporary files). Creates the tail segment if the manifest named it but it was
/// never written.
fn sweep_files(storage: &dyn Storage, manifest: &Manifest, names: &[String]) -> Result<Files> {
    let ioerr = |name: &str, e| Error::io(storage.describe(name), e);
    let mut max_seg = manifest.next_seg.saturating_sub(1);
    let mut max_run = manifest.next_run.saturating_sub(1);
    let mut tail_segs = Vec::new();
    let listed: BTreeSet<u32> = manifest.segs.iter().map(|&(id, _, _)| id).collect();
    for n in names {
        if let Some(r) = parse_name(n, "idx-", ".run") {
            max_run = max_run.max(r);
            if !manifest.runs.contains(&r) {
                // Written by an interrupted checkpoint or merge.
                let _ = storage.remove(n);
            }
        } else if let Some(s) = parse_name(n, "seg-", ".log") {
            max_seg = max_seg.max(s);
            if s >= manifest.tail_seg {
                tail_segs.push(s);
            } else if !listed.contains(&s) {
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
    Ok(Files {
        tail_segs,
        max_seg,
        max_run,
    })
}

/// Opens every segment: the sealed ones the manifest lists, with its live counts, and the
/// tail ones (counts from the manifest for the tail mark's segment, zero for newer ones;
/// replay adds the rest).
fn open_segments(
    storage: &dyn Storage,
    manifest: &Manifest,
    tail_segs: &[u32],
    index: &mut Index,
) -> Result<()> {
    let ioerr = |name: &str, e| Error::io(storage.describe(name), e);
    for &(id, lb, lc) in &manifest.segs {
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
    for &s in tail_segs {
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
    Ok(())
}

/// Where replay left the writer.
struct Tail {
    active_seg: u32,
    /// Page-aligned end of the last good batch of the active segment.
    write_off: u64,
    /// Highest batch sequence number seen (or the manifest's).
    seq: u64,
    damaged: u64,
    truncated: u64,
}

/// Replays the unsealed tail into the memtable and the live counts, and cuts each tail
/// segment back to the end of its last good batch (a torn write).
fn replay_tail(manifest: &Manifest, tail_segs: &[u32], index: &mut Index) -> Result<Tail> {
    let mut seq = manifest.seq;
    let mut damaged = 0u64;
    let mut truncated = 0u64;
    let mut write_off = 0;
    let active_seg = *tail_segs.last().expect("tail segment exists");
    for &s in tail_segs {
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
        // Sequence numbers rise across segments too: the scan of the next segment only
        // accepts batches above the highest seen so far.
        assert!(
            end.last_seq >= seq,
            "recovery: scan of {name} ended at sequence number {} below the {seq} it started from",
            end.last_seq
        );
        seq = end.last_seq;
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
    Ok(Tail {
        active_seg,
        write_off,
        seq,
        damaged,
        truncated,
    })
}

/// The invariants the writer relies on after recovery. Each holds for any segment bytes,
/// damaged or not, given a manifest the store wrote; they cost O(segments + runs + unsealed
/// entries), all of which recovery has just built.
fn assert_recovered(io: &IoState, index: &Index, tail_segs: &[u32]) {
    // Batches go on 4 KiB boundaries, at the end of the active segment: otherwise the next
    // batch would rewrite a page or leave a gap the next recovery reads as damage.
    assert!(
        io.write_off.is_multiple_of(PAGE),
        "recovery: write offset {} of segment {} is not page-aligned",
        io.write_off,
        io.active_seg
    );
    let active_len = index.segs.get(&io.active_seg).map(|s| s.len);
    assert_eq!(
        active_len,
        Some(io.write_off),
        "recovery: write offset disagrees with the active segment {}'s length",
        io.active_seg
    );
    // The writer appends to the newest segment, and new files never reuse a name.
    let last_seg = index.segs.keys().next_back().copied();
    assert_eq!(
        last_seg,
        Some(io.active_seg),
        "recovery: the active segment is not the newest one"
    );
    assert!(
        io.next_seg > io.active_seg,
        "recovery: next segment number {} would reuse segment {}'s name",
        io.next_seg,
        io.active_seg
    );
    assert!(
        index.runs.iter().all(|r| r.id < io.next_run),
        "recovery: next run number {} would reuse a listed run's name",
        io.next_run
    );
    // Batches written from now on must rank above the checkpoint's sequence number, or the
    // next recovery would skip them as stale bytes.
    assert!(
        io.seq >= io.manifest.seq,
        "recovery: sequence number {} fell below the manifest's {}",
        io.seq,
        io.manifest.seq
    );
    // The memtable holds exactly the replayed records: each lies inside its segment as
    // recovery cut it, and names an owner the owner table has.
    for (id, e) in &index.mem {
        let seg_len = index.segs.get(&e.seg).map_or(0, |s| s.len);
        assert!(
            u64::from(e.off) + u64::from(e.len) <= seg_len,
            "recovery: unsealed entry {id} at {}+{} lies past the end {seg_len} of segment {}",
            e.off,
            e.len,
            e.seg
        );
        assert!(
            e.kind != KIND_PUT || (e.owner as usize) < index.owners.len(),
            "recovery: unsealed entry {id} names owner number {} of {}",
            e.owner,
            index.owners.len()
        );
    }
    // Live bytes of a replayed segment come from records inside it (manifest counts cover
    // the part before the tail mark, replay the rest), so they never exceed its length:
    // dead bytes are never negative.
    for s in tail_segs {
        let si = &index.segs[s];
        assert!(
            si.live_bytes <= si.len,
            "recovery: segment {s} counts {} live bytes but holds only {}",
            si.live_bytes,
            si.len
        );
    }
}
