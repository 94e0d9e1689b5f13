//! Group commit: every write (put, delete, compaction copy) is queued as a request; one
//! thread at a time becomes the leader, takes everything queued, resolves each op against the
//! index, appends the records as one batch in one `pwrite`, syncs once and only then makes
//! them visible. N concurrent writers thus share one fsync.
//!
//! This is the only code that appends to segments, so the rules of the segment format live
//! here: a batch starts on a page boundary at the end of the active segment and carries a
//! sequence number above every earlier one (recovery treats anything else as stale).

use std::collections::HashMap;

use super::{lock, Store};
use crate::format::{
    self, align8, align_page, decode_record, encode_batch_header, encode_record, DecodedRecord,
    RecordKind, BATCH_HDR, PAGE, REC_HDR,
};
use crate::run::{Entry, KIND_DEL, KIND_PUT};
use crate::{Error, OwnerId, Result, ShardId};

use super::checkpoint::Manifest;

/// How long a batch leader waits for as many requests as the last batch had. Bounded so a
/// writer that went away costs one short delay, after which the target drops.
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_micros(200);

/// State of the writing side, owned by whoever holds the `io` lock.
pub(super) struct IoState {
    pub(super) active_seg: u32,
    /// Where the next batch goes in the active segment (page-aligned).
    pub(super) write_off: u64,
    /// Sequence number of the last batch written.
    pub(super) seq: u64,
    pub(super) next_seg: u32,
    pub(super) next_run: u32,
    pub(super) seed: u64,
    /// The batch buffer, reused; bounded by `max_batch_bytes` plus one shard.
    pub(super) buf: Vec<u8>,
    /// The manifest as last written: index merges rewrite it with only the run list
    /// changed, so its tail mark and byte counts stay those of the last checkpoint.
    pub(super) manifest: Manifest,
}

pub(super) enum Op {
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
    pub(super) fn bytes(&self) -> usize {
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
pub(super) enum Outcome {
    Done,
    Skipped,
}

pub(super) type OpResult = Result<Outcome>;

pub(super) struct Request {
    pub(super) no: u64,
    pub(super) ops: Vec<Op>,
}

/// The group-commit queue.
pub(super) struct Writer {
    /// Requests waiting for the next batch; their bytes are bounded by `max_batch_bytes`.
    pub(super) pending: Vec<Request>,
    pub(super) pending_bytes: usize,
    /// Whether some thread is writing (or gathering) a batch now.
    pub(super) leader: bool,
    /// Requests in the last batch: how many the next leader waits for, briefly.
    pub(super) last_batch_requests: usize,
    pub(super) next_no: u64,
    /// Results for requests whose batch is done, until their threads pick them up (one per
    /// waiting thread).
    pub(super) results: HashMap<u64, Vec<OpResult>>,
}

impl Store {
    pub(super) fn poison_check(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(file) => Err(Error::Poisoned {
                dir: self.dir.clone(),
                file: file.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Queues `ops` as one request and waits until a batch holding them is durable.
    pub(super) fn submit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>> {
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
    pub(super) fn commit_batch(&self, batch: Vec<Request>) -> Vec<(u64, Vec<OpResult>)> {
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
            // Callers pair results with their ops by position.
            assert_eq!(
                rr.len(),
                req.ops.len(),
                "group commit: request {} got {} results for {} ops",
                req.no,
                rr.len(),
                req.ops.len()
            );
            results.push((req.no, rr));
        }
        if records.is_empty() {
            io.buf = buf;
            return results;
        }
        io.seq += 1;
        let seq = io.seq;
        // Batch sequence numbers strictly rise (each batch takes the next one) and stay above
        // the last checkpoint's: recovery replays the tail accepting only batches above the
        // manifest's number, so a batch at or below it would be dropped as stale.
        assert!(
            seq > io.manifest.seq,
            "group commit: batch sequence number {seq} is not above the checkpoint's {}",
            io.manifest.seq
        );
        let (hdr, body) = buf.split_at_mut(BATCH_HDR);
        encode_batch_header(hdr, seq, body, records.len() as u32);
        let padded = align_page(buf.len() as u64);
        buf.resize(padded as usize, 0);
        let (file, name) = {
            let idx = self.read_index();
            let s = &idx.segs[&seg];
            // A batch starts on a page boundary at the end of its segment: no page is
            // written twice and no gap is left for recovery to read as damage.
            assert!(
                base.is_multiple_of(PAGE) && base == s.len,
                "group commit: batch at {base} in segment {seg} whose end is {}",
                s.len
            );
            (s.file.clone(), s.name.clone())
        };
        // Index entries hold 32-bit offsets; the configuration check at open keeps segments
        // below 4 GiB, and this keeps an offset from wrapping silently if it did not.
        assert!(
            base + padded <= u64::from(u32::MAX),
            "group commit: batch end {} in segment {seg} overflows 32-bit record offsets",
            base + padded
        );
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
            return fail_all(&batch, &e);
        }
        let mut idx = self.write_index();
        for (off, rec) in &records {
            idx.apply(seg, *off, rec);
        }
        if let Some(s) = idx.segs.get_mut(&seg) {
            s.len = base + padded;
            // Each put adds its record's length, which lies inside the bytes just written;
            // dead bytes (length less live bytes) are never negative.
            assert!(
                s.live_bytes <= s.len,
                "group commit: segment {seg} counts {} live bytes but holds only {}",
                s.live_bytes,
                s.len
            );
        }
        drop(idx);
        io.write_off = base + padded;
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.batched_records
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        results
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
