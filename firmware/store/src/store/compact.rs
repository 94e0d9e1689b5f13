//! Compaction: turns expired leases into tombstones, then rewrites the segments with the
//! highest dead fraction within a read budget (live records are copied forward through the
//! normal commit path, keeping their payload checksums), drops them in one checkpoint and
//! folds the index into one run. Wholly dead segments are removed without reading them.

use super::commit::{Op, OpResult, Outcome};
use super::segment::{scan_segment, ScanEvent};
use super::{lock, Store};
use crate::format::RecordKind;
use crate::run::KIND_PUT;
use crate::{Error, Result};

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

/// What [`Store::copy_live`] did to one segment.
#[derive(Default)]
pub(super) struct Copied {
    /// Bytes of records submitted for copying.
    bytes: u64,
    /// Copies the commit skipped because the shard changed or expired meanwhile.
    skipped: u64,
}

impl Store {
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
                // Every live record of the segment was copied forward (its copy moved the
                // count to the active segment) or skipped; a skipped copy was overwritten or
                // deleted meanwhile (which moved the count too) or expired meanwhile (which
                // leaves one). More live shards left over means the live counts and the
                // index disagree, and removing the segment would lose those shards. The
                // segment is sealed, so nothing adds to its counts meanwhile.
                if let Some(s) = self.read_index().segs.get(&seg) {
                    assert!(
                        s.live_count <= copied.skipped,
                        "compaction: segment {seg} still counts {} live shards after copying \
                         its live records forward ({} copies skipped)",
                        s.live_count,
                        copied.skipped
                    );
                }
                rep.bytes_copied += copied.bytes;
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
    pub(super) fn copy_live(&self, seg: u32, now: u64) -> Result<Option<Copied>> {
        let Some((file, name)) = self
            .read_index()
            .segs
            .get(&seg)
            .map(|s| (s.file.clone(), s.name.clone()))
        else {
            return Ok(Some(Copied::default()));
        };
        let mut ops = Vec::new();
        let mut ops_bytes = 0usize;
        let mut copied = 0u64;
        let mut skipped = 0u64;
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
                                            match r {
                                                Ok(Outcome::Skipped) => skipped += 1,
                                                Ok(Outcome::Done) => {}
                                                Err(e) => err = Some(e),
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
                if r? == Outcome::Skipped {
                    skipped += 1;
                }
            }
            copied += ops_bytes as u64;
        }
        Ok(if damaged {
            None
        } else {
            Some(Copied {
                bytes: copied,
                skipped,
            })
        })
    }

    /// Submits compaction copies, drawing on the reserve if the disk is full.
    pub(super) fn submit_copies(&self, ops: Vec<Op>) -> Result<Vec<OpResult>> {
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
}
