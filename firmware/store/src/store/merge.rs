//! Index-run merges: adjacent runs are merged like a binary counter (merge two neighbours
//! while the newer is at least half the older), so there are O(log n) runs and each entry is
//! rewritten O(log n) times; `compact` folds them all into one. A merge writes its new run
//! without the write lock and installs it with one manifest rewrite that changes only the run
//! list, so puts and gets go on meanwhile.

use std::sync::Arc;

use super::{lock, Store};
use crate::run::{Run, RunCursor, RunWriter, KIND_DEL, KIND_PUT, PER_PAGE};
use crate::{Error, Result, ShardId};

use super::checkpoint::write_manifest_file;

/// Filter bits per shard when the budget allows: about 0.3 % false positives.
const BLOOM_BITS_MAX: u32 = 12;

impl Store {
    /// Bloom bits per key that keep all filters and fences within the budget at `total`
    /// index entries.
    pub(super) fn bloom_bits(&self, total: u64) -> u32 {
        let avail = (self.cfg.memory_budget_bytes as u64 * 3 / 4)
            .saturating_sub(total * 8 / PER_PAGE as u64);
        ((avail * 8) / total.max(1)).min(u64::from(BLOOM_BITS_MAX)) as u32
    }

    /// Whether the run policy asks for a merge now.
    pub(super) fn merge_due(&self) -> bool {
        let idx = self.read_index();
        idx.runs.windows(2).any(|w| w[1].count * 2 >= w[0].count)
    }

    /// Merges adjacent runs while a newer one is at least half the size of the one before
    /// it (a binary counter: O(log n) runs, each entry rewritten O(log n) times); with
    /// `all`, merges everything into one run. Runs without the I/O lock, so puts go on
    /// meanwhile; only installing the result takes it. One merger at a time: without `all`,
    /// a caller finding a merge under way returns at once.
    pub(super) fn merge_runs(&self, all: bool) -> Result<()> {
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
            // The merge keeps one entry per distinct id (the newer one) and drops only
            // tombstones at the bottom: never more entries than the inputs, and, above the
            // bottom, never fewer than the larger input.
            assert!(
                run.count <= a.count + b.count && (bottom || run.count >= a.count.max(b.count)),
                "merge: run {} has {} entries from runs of {} and {} (bottom: {bottom})",
                run.id,
                run.count,
                a.count,
                b.count
            );
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
                let mut idx = self.write_index();
                // The two runs are still neighbours, oldest-first, with nothing older than
                // them if tombstones were dropped: checkpoints only append runs and only the
                // merger (one at a time) replaces them. Merging runs that are not adjacent
                // would let an older entry shadow a newer one.
                let pos = idx
                    .runs
                    .iter()
                    .position(|r| r.id == a.id)
                    .expect("only the merger removes runs");
                assert!(
                    idx.runs.get(pos + 1).is_some_and(|r| r.id == b.id) && bottom == (pos == 0),
                    "merge: runs {} and {} are no longer adjacent at the expected place",
                    a.id,
                    b.id
                );
                io.manifest.assert_runs_match(&idx.runs, "merge");
                io.manifest = m;
                idx.runs[pos] = run;
                idx.runs.remove(pos + 1);
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
        // The last id taken from each input: the two-way merge is only right on inputs
        // sorted by strictly increasing id (the writer checks the output the same way).
        let (mut last_a, mut last_b): (Option<ShardId>, Option<ShardId>) = (None, None);
        loop {
            let (x, y) = (a.peek()?, b.peek()?);
            for (run, next, last) in [(older, x, &mut last_a), (newer, y, &mut last_b)] {
                if let Some((next, _)) = next {
                    if *last != Some(next) {
                        assert!(
                            last.is_none_or(|l| l < next),
                            "merge: index run {} yields ids out of order",
                            run.name
                        );
                        *last = Some(next);
                    }
                }
            }
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
}
