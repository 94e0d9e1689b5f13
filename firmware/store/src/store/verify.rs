//! Verify: the scrub. Reads every segment and index page sequentially, checks every
//! checksum and reports each live shard whose bytes are damaged and each damaged index page,
//! without changing anything. Kept apart because it is the one reader that looks at every
//! byte, where `get` looks at one record.

use std::collections::HashMap;
use std::sync::Arc;

use super::segment::{scan_segment, ScanEvent};
use super::{lock, seg_name, Store};
use crate::run::Run;
use crate::storage::StorageFile;
use crate::{Error, Result, ShardId};

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

impl Store {
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
