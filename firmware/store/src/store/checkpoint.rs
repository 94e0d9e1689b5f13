//! Checkpoints and the manifest: the durable statement of what the store is.
//!
//! The manifest lists the index runs, the segments with their live byte counts, the owner
//! table and the tail mark (everything before it is in a run). It is replaced atomically
//! (write temp, fsync, rename, fsync dir). A checkpoint writes the memtable as a new index
//! run, optionally starts a new segment and drops compacted ones, and moves the tail mark, all
//! in one manifest rewrite; an index merge rewrites it with only the run list changed.

use std::sync::Arc;

use super::commit::IoState;
use super::{seg_name, SegInfo, Store};
use crate::format::PAGE;
use crate::run::{Run, RunWriter};
use crate::storage::Storage;
use crate::{Error, OwnerId, Result};

pub(super) const MANIFEST: &str = "MANIFEST";
pub(super) const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MANIFEST_MAGIC: &[u8; 8] = b"CAIRNMF1";

#[derive(Clone)]
pub(super) struct Manifest {
    pub(super) seed: u64,
    pub(super) seq: u64,
    pub(super) tail_seg: u32,
    pub(super) tail_off: u64,
    pub(super) next_seg: u32,
    pub(super) next_run: u32,
    pub(super) owners: Vec<OwnerId>,
    pub(super) segs: Vec<(u32, u64, u64)>,
    pub(super) runs: Vec<u32>,
}

impl Manifest {
    pub(super) fn encode(&self) -> Vec<u8> {
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

    /// Checks that this manifest lists exactly the runs of the in-memory index, in order.
    pub(super) fn assert_runs_match(&self, runs: &[Arc<Run>], at: &str) {
        // The manifest on disk lists exactly the runs lookups use (both change together,
        // under the I/O lock): a new manifest is built from the in-RAM list.
        assert!(
            self.runs.iter().copied().eq(runs.iter().map(|r| r.id)),
            "{at}: manifest run list {:?} differs from the index's",
            self.runs
        );
    }

    /// Checks what every manifest the store writes must satisfy; called before each write
    /// (checkpoints, merges, the first manifest). Costs O(segments + runs), as does encoding.
    pub(super) fn assert_consistent(&self) {
        // Segment ids strictly ascending and below `next_seg`: a new segment never reuses
        // the name of a listed one.
        assert!(
            self.segs.windows(2).all(|w| w[0].0 < w[1].0),
            "manifest: segment list is not strictly ascending"
        );
        assert!(
            self.segs.last().is_none_or(|s| s.0 < self.next_seg),
            "manifest: next segment number {} does not exceed every listed segment",
            self.next_seg
        );
        // The tail mark points into a listed segment at a batch boundary: recovery replays
        // from there, and a mark inside a batch would cut good data off as a torn tail.
        assert!(
            self.segs
                .binary_search_by_key(&self.tail_seg, |s| s.0)
                .is_ok(),
            "manifest: tail mark's segment {} is not listed",
            self.tail_seg
        );
        assert!(
            self.tail_off.is_multiple_of(PAGE),
            "manifest: tail mark {} is not on a page boundary",
            self.tail_off
        );
        // Run ids distinct and below `next_run`.
        let mut runs = self.runs.clone();
        runs.sort_unstable();
        assert!(
            runs.windows(2).all(|w| w[0] < w[1]),
            "manifest: an index run is listed twice"
        );
        assert!(
            runs.last().is_none_or(|&r| r < self.next_run),
            "manifest: next run number {} does not exceed every listed run",
            self.next_run
        );
    }

    pub(super) fn decode(b: &[u8]) -> Option<Manifest> {
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

impl Store {
    /// Writes the memtable as an index run and records a new tail mark (optionally starting
    /// a new segment and dropping segments `remove`), then merges runs as the policy asks.
    pub(super) fn checkpoint(
        &self,
        io: &mut IoState,
        new_segment: bool,
        remove: &[u32],
    ) -> Result<()> {
        let run_id = io.next_run;
        let mem_len = {
            let idx = self.read_index();
            io.manifest.assert_runs_match(&idx.runs, "checkpoint");
            idx.mem.len()
        };
        // New batches go to the active segment: compaction never drops it.
        assert!(
            !remove.contains(&io.active_seg),
            "checkpoint: asked to remove the active segment {}",
            io.active_seg
        );
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
        // The tail mark only moves forward: everything before the old mark is already in a
        // run, and the new mark is where the writer is now.
        assert!(
            (m.tail_seg, m.tail_off) >= (io.manifest.tail_seg, io.manifest.tail_off),
            "checkpoint: tail mark moved back from {}:{} to {}:{}",
            io.manifest.tail_seg,
            io.manifest.tail_off,
            m.tail_seg,
            m.tail_off
        );
        // Index entries store owner numbers into this table: it may only grow at the end.
        assert!(
            m.owners.starts_with(&io.manifest.owners),
            "checkpoint: owner table lost or renumbered owners"
        );
        if let Some(r) = &new_run {
            // The run holds exactly the memtable (it only changes under the I/O lock, which
            // is held): the tail mark may move past those records.
            assert_eq!(
                r.count, mem_len as u64,
                "checkpoint: run {} holds {} entries but the memtable had {mem_len}",
                r.id, r.count
            );
        }
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
            // The manifest just written names only segments that exist (and so still have
            // their files): a listed segment missing at the next open fails it.
            assert!(
                io.manifest
                    .segs
                    .iter()
                    .all(|(id, _, _)| idx.segs.contains_key(id)),
                "checkpoint: manifest lists a segment the store does not have"
            );
        }
        for r in remove {
            let _ = self.storage.remove(&seg_name(*r));
        }
        Ok(())
    }
}

/// Replaces the manifest atomically: write a temporary file, sync it, rename it over the
/// old one, sync the directory (so the rename itself survives power loss).
pub(super) fn write_manifest_file(storage: &dyn Storage, m: &Manifest) -> Result<()> {
    m.assert_consistent();
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
