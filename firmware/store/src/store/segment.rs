//! Reading a segment front to back: the batch scanner shared by recovery (replaying the
//! unsealed tail), compaction (copying live records forward) and verify (the scrub).
//!
//! A segment is a run of batches, each on a 4 KiB boundary, with strictly rising sequence
//! numbers. The scanner reads through a bounded window, tells a torn tail (nothing valid
//! after it: the scan ends there) from damage (a valid batch follows: the damaged batch's
//! records are salvaged one by one by their own checksums and the rest is reported), and
//! hands every record and damaged region to a callback.

use crate::format::{
    self, align8, align_page, decode_batch_header, decode_record, DecodedRecord, BATCH_HDR, PAGE,
    REC_HDR,
};
use crate::storage::StorageFile;

/// Bytes read per call when scanning a segment sequentially.
const SCAN_WINDOW: usize = 1 << 20;

/// What a sequential scan of a segment meets.
pub(super) enum ScanEvent<'a> {
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

pub(super) struct ScanEnd {
    /// Page-aligned end of the last good batch (where a torn tail, if any, starts).
    pub(super) end: u64,
    pub(super) last_seq: u64,
    pub(super) bytes_read: u64,
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
pub(super) fn scan_segment(
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
    // Batches start on page boundaries; a scan from anywhere else would read padding or the
    // middle of a batch as a torn tail and cut good data off.
    assert!(
        start.is_multiple_of(PAGE),
        "segment scan must start on a page boundary, not at {start}"
    );
    let mut pos = start;
    let mut last_seq = min_seq;
    loop {
        if pos + BATCH_HDR as u64 > len {
            break;
        }
        if let Some(h) = r.batch_at(pos, last_seq)? {
            // Sequence numbers strictly rise along the scan: that is what tells stale bytes
            // (an older batch's leftovers) from new ones.
            assert!(
                h.seq > last_seq,
                "segment scan accepted batch sequence number {} after {last_seq}",
                h.seq
            );
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
        // The scan ends because every step moves forward.
        assert!(next > pos, "segment scan went back from {pos} to {next}");
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
