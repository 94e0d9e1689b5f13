//! On-disk formats of segment files: batches of records, each checksummed.
//!
//! A segment is a sequence of batches. Every batch starts on a 4 KiB boundary with a 32-byte
//! header (sequence number, body length, body checksum) and is zero-padded to the next
//! boundary, so the medium never sees a page written twice. The body is a run of records,
//! each 8-byte aligned:
//!
//! ```text
//! batch header: magic u32 | header crc u32 | seq u64 | body_len u32 | body crc u32 | records u32 | 0 u32
//! record:       magic u32 | header crc u32 | payload_len u32 | payload crc u32 | id [32] | owner [32]
//!               | expiry u32 | 0 u32 | aux_seg u32 | aux_len u32 | payload | zero pad to 8
//! ```
//!
//! All integers little-endian; checksums are CRC-32C. `aux` names the record this one makes
//! dead (an overwritten or deleted shard) so replay keeps live/dead byte counts exact.

use crate::{OwnerId, ShardId};

/// Alignment of batches: the page size of the medium's flash translation layer.
pub const PAGE: u64 = 4096;
/// Size of a batch header.
pub const BATCH_HDR: usize = 32;
/// Size of a record header.
pub const REC_HDR: usize = 96;

const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"CBT1");
const PUT_MAGIC: u32 = u32::from_le_bytes(*b"CRP1");
const DEL_MAGIC: u32 = u32::from_le_bytes(*b"CRD1");

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Stores a shard.
    Put,
    /// Deletes a shard (tombstone).
    Delete,
}

/// A decoded record header plus whether its payload checks out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Put or delete.
    pub kind: RecordKind,
    /// The shard.
    pub id: ShardId,
    /// Its owner (zero for deletes).
    pub owner: OwnerId,
    /// Expiry word (`u32::MAX` = never).
    pub expiry: u32,
    /// Segment of the record this one makes dead (0 = none).
    pub aux_seg: u32,
    /// Length of the record this one makes dead.
    pub aux_len: u32,
    /// Payload length.
    pub payload_len: u32,
    /// Payload checksum stored in the header.
    pub payload_crc: u32,
    /// Whether the payload that followed matched its checksum.
    pub payload_ok: bool,
    /// Bytes the record occupies, padding included.
    pub padded_len: usize,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Rounds `n` up to a multiple of 8.
pub fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Rounds `n` up to a multiple of [`PAGE`].
pub fn align_page(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Unpadded record length for a payload of `len` bytes (what an index entry stores).
pub fn record_len(payload_len: usize) -> usize {
    REC_HDR + payload_len
}

/// Appends one record to `out`.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per header field, in the order they are written"
)]
pub fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    id: &ShardId,
    owner: &OwnerId,
    expiry: u32,
    aux: (u32, u32),
    payload: &[u8],
    payload_crc: Option<u32>,
) {
    let start = out.len();
    let magic = match kind {
        RecordKind::Put => PUT_MAGIC,
        RecordKind::Delete => DEL_MAGIC,
    };
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    // A copied record keeps its original payload checksum, so damage stays detectable.
    let pcrc = payload_crc.unwrap_or_else(|| crc32c::crc32c(payload));
    out.extend_from_slice(&pcrc.to_le_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&owner.0);
    out.extend_from_slice(&expiry.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&aux.0.to_le_bytes());
    out.extend_from_slice(&aux.1.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start + 8..start + REC_HDR]);
    out[start + 4..start + 8].copy_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + align8(REC_HDR + payload.len()), 0);
}

/// Decodes the record at the start of `buf`, which should hold the whole record.
///
/// Returns `None` when the header is not a valid record header (wrong magic, checksum or a
/// length past `buf`); a valid header with a damaged payload comes back with
/// `payload_ok == false`.
pub fn decode_record(buf: &[u8]) -> Option<DecodedRecord> {
    if buf.len() < REC_HDR {
        return None;
    }
    let kind = match u32_at(buf, 0) {
        PUT_MAGIC => RecordKind::Put,
        DEL_MAGIC => RecordKind::Delete,
        _ => return None,
    };
    if crc32c::crc32c(&buf[8..REC_HDR]) != u32_at(buf, 4) {
        return None;
    }
    let payload_len = u32_at(buf, 8);
    let total = REC_HDR.checked_add(payload_len as usize)?;
    if total > buf.len() {
        return None;
    }
    let payload_crc = u32_at(buf, 12);
    let payload_ok = crc32c::crc32c(&buf[REC_HDR..total]) == payload_crc;
    Some(DecodedRecord {
        kind,
        id: ShardId(buf[16..48].try_into().expect("32 bytes")),
        owner: OwnerId(buf[48..80].try_into().expect("32 bytes")),
        expiry: u32_at(buf, 80),
        aux_seg: u32_at(buf, 88),
        aux_len: u32_at(buf, 92),
        payload_len,
        payload_crc,
        payload_ok,
        padded_len: align8(total).min(buf.len().max(total)),
    })
}

/// A decoded batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Sequence number, increasing through the whole store.
    pub seq: u64,
    /// Bytes of records after the header.
    pub body_len: u32,
    /// CRC-32C of those bytes.
    pub body_crc: u32,
    /// Records in the body.
    pub records: u32,
}

/// Writes a batch header for `body` into `out[..BATCH_HDR]`.
pub fn encode_batch_header(out: &mut [u8], seq: u64, body: &[u8], records: u32) {
    out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out[24..28].copy_from_slice(&records.to_le_bytes());
    out[28..32].copy_from_slice(&[0; 4]);
    let c = crc32c::crc32c(&out[8..BATCH_HDR]);
    out[4..8].copy_from_slice(&c.to_le_bytes());
}

/// Decodes a batch header from the start of `buf`; `None` if it is not one.
pub fn decode_batch_header(buf: &[u8]) -> Option<BatchHeader> {
    if buf.len() < BATCH_HDR || u32_at(buf, 0) != BATCH_MAGIC {
        return None;
    }
    if crc32c::crc32c(&buf[8..BATCH_HDR]) != u32_at(buf, 4) {
        return None;
    }
    Some(BatchHeader {
        seq: u64_at(buf, 8),
        body_len: u32_at(buf, 16),
        body_crc: u32_at(buf, 20),
        records: u32_at(buf, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_every_single_bit_flip() {
        let mut buf = Vec::new();
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        encode_record(
            &mut buf,
            RecordKind::Put,
            &ShardId([3; 32]),
            &OwnerId([4; 32]),
            77,
            (5, 6),
            &payload,
            None,
        );
        assert_eq!(buf.len() % 8, 0);
        let r = decode_record(&buf).expect("valid record");
        assert_eq!(r.kind, RecordKind::Put);
        assert_eq!(r.id, ShardId([3; 32]));
        assert_eq!(r.owner, OwnerId([4; 32]));
        assert_eq!((r.expiry, r.aux_seg, r.aux_len), (77, 5, 6));
        assert!(r.payload_ok);
        for bit in 0..(REC_HDR + payload.len()) * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match decode_record(&b) {
                None => {}
                Some(r) => assert!(!r.payload_ok, "flip of bit {bit} went unnoticed"),
            }
        }
    }

    #[test]
    fn batch_header_round_trips() {
        let mut h = [0u8; BATCH_HDR];
        encode_batch_header(&mut h, 42, b"body", 1);
        let d = decode_batch_header(&h).expect("valid");
        assert_eq!(d.seq, 42);
        assert_eq!(d.body_len, 4);
        assert_eq!(d.body_crc, crc32c::crc32c(b"body"));
        h[9] ^= 1;
        assert!(decode_batch_header(&h).is_none());
    }
}
