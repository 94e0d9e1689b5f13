//! Shards: Reed–Solomon k-of-n coding of a sealed chunk, and the self-describing shard format.
//!
//! A shard is
//! ```text
//!  0  4  magic "CSH1"
//!  4  1  format version (1)
//!  5  1  AEAD id of the sealed chunk
//!  6  1  k (data shards)      7  1  n (all shards)      8  1  this shard's index (< n)
//!  9  3  reserved, zero
//! 12  4  sealed length (LE): the sealed chunk's length before splitting
//! 16 32  chunk id
//! 48  4  payload length (LE) = ceil(sealed length / k)
//! 52  …  payload
//!  …  4  CRC-32C of all the bytes before it
//! ```
//! so any shard alone says how to rebuild its chunk, and a corrupt one is detected (and then
//! treated as missing) before it can poison a reconstruction. The header reveals nothing of the
//! plaintext: ids are keyed and lengths are padded to size classes.
//!
//! The trade-off of k-of-n: a chunk survives the loss of any n − k shards and costs n / k times
//! its size. The default 4-of-8 suits a circle of about eight friends' plugs: half of them can
//! vanish at once, for twice the bytes (Tahoe-LAFS used 3-of-10: more safety, 3.3×). Larger k at
//! the same ratio survives more losses but needs more peers online to read.

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::error::{Result, VaultError};
use crate::seal::{sealed_len, AeadKind};
use crate::ChunkId;

/// Shard magic.
pub const MAGIC: &[u8; 4] = b"CSH1";
/// Header length.
pub const HEADER_LEN: usize = 52;
/// Trailer (checksum) length.
pub const TRAILER_LEN: usize = 4;
/// Largest sealed chunk (the largest chunk the chunker cuts, padded and sealed).
// sealed_len(chunker::CHUNK_BYTES_MAX), written out for a const; a test keeps them equal.
pub const SEALED_LEN_MAX: usize = 28 + 5 * 1024 * 1024;
/// Largest valid shard (k = 1): sources may refuse anything longer unread.
pub const SHARD_LEN_MAX: usize = HEADER_LEN + SEALED_LEN_MAX + TRAILER_LEN;

/// What a shard header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// AEAD of the sealed chunk.
    pub aead: AeadKind,
    /// Data shards.
    pub k: u8,
    /// All shards.
    pub n: u8,
    /// This shard's index.
    pub index: u8,
    /// Length of the sealed chunk.
    pub sealed_len: u32,
    /// The chunk.
    pub chunk: ChunkId,
}

impl ShardHeader {
    /// Payload length implied by the header.
    pub fn payload_len(&self) -> usize {
        (self.sealed_len as usize).div_ceil(usize::from(self.k))
    }
}

/// Why a shard's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardFormatError {
    /// Shorter than header + trailer, or lengths disagree.
    #[error("truncated or wrong length ({0} bytes)")]
    Length(usize),
    /// Not a shard.
    #[error("bad magic")]
    Magic,
    /// A newer format.
    #[error("unsupported shard version {0}")]
    Version(u8),
    /// CRC mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// Impossible parameters.
    #[error("invalid parameters: {0}")]
    Params(&'static str),
}

/// Checks and parses a shard; returns its header and payload.
pub fn decode_shard(bytes: &[u8]) -> Result<(ShardHeader, &[u8]), ShardFormatError> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN || bytes.len() > SHARD_LEN_MAX {
        return Err(ShardFormatError::Length(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(ShardFormatError::Magic);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    if crc32c::crc32c(body).to_le_bytes() != trailer {
        return Err(ShardFormatError::Checksum);
    }
    if bytes[4] != 1 {
        return Err(ShardFormatError::Version(bytes[4]));
    }
    let aead = AeadKind::from_id(bytes[5]).ok_or(ShardFormatError::Params("unknown AEAD"))?;
    let (k, n, index) = (bytes[6], bytes[7], bytes[8]);
    if k == 0 || n <= k {
        return Err(ShardFormatError::Params("need 1 <= k < n"));
    }
    if index >= n {
        return Err(ShardFormatError::Params("index >= n"));
    }
    if bytes[9..12] != [0, 0, 0] {
        return Err(ShardFormatError::Params("reserved bytes set"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let sealed = u32_at(12);
    if sealed as usize > SEALED_LEN_MAX || (sealed as usize) < crate::seal::SEAL_OVERHEAD {
        return Err(ShardFormatError::Params("sealed length out of range"));
    }
    let chunk = ChunkId(bytes[16..48].try_into().expect("32 bytes"));
    let header = ShardHeader {
        aead,
        k,
        n,
        index,
        sealed_len: sealed,
        chunk,
    };
    let payload_len = u32_at(48) as usize;
    if payload_len != header.payload_len() || HEADER_LEN + payload_len + TRAILER_LEN != bytes.len()
    {
        return Err(ShardFormatError::Length(bytes.len()));
    }
    Ok((header, &body[HEADER_LEN..]))
}

/// Writes a shard (header, payload, checksum) into `out` (cleared first).
pub fn encode_shard(h: &ShardHeader, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(payload.len(), h.payload_len());
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, h.aead.id(), h.k, h.n, h.index, 0, 0, 0]);
    out.extend_from_slice(&h.sealed_len.to_le_bytes());
    out.extend_from_slice(&h.chunk.0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A k-of-n Reed–Solomon codec.
pub struct Codec {
    k: usize,
    n: usize,
    rs: ReedSolomon,
}

impl Codec {
    /// A codec for `k` data shards out of `n`; needs 1 ≤ k < n ≤ 255.
    pub fn new(k: usize, n: usize) -> Result<Self> {
        if k == 0 || n <= k || n > 255 {
            return Err(VaultError::Usage(format!(
                "erasure coding {k}-of-{n} is not possible: need 1 <= k < n <= 255"
            )));
        }
        let rs = ReedSolomon::new(k, n - k)
            .map_err(|e| VaultError::Usage(format!("erasure coding {k}-of-{n}: {e:?}")))?;
        Ok(Self { k, n, rs })
    }

    /// Data shards.
    pub fn k(&self) -> usize {
        self.k
    }

    /// All shards.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Computes the parity of `sealed` and hands each framed shard to `emit` in index order.
    ///
    /// Memory: `sealed` is padded in place to a multiple of k (capacity reserved by the caller
    /// avoids a reallocation), `parity` holds (n − k) payloads and `frame` one framed shard; all
    /// three are the caller's, reused from chunk to chunk.
    pub fn encode(
        &self,
        chunk: &ChunkId,
        aead: AeadKind,
        sealed: &mut Vec<u8>,
        parity: &mut Vec<u8>,
        frame: &mut Vec<u8>,
        mut emit: impl FnMut(u8, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let sealed_len = sealed.len();
        let len = sealed_len.div_ceil(self.k);
        sealed.resize(len * self.k, 0);
        parity.clear();
        parity.resize(len * (self.n - self.k), 0);
        {
            let data: Vec<&[u8]> = sealed.chunks(len).collect();
            let mut par: Vec<&mut [u8]> = parity.chunks_mut(len).collect();
            self.rs
                .encode_sep(&data, &mut par)
                .map_err(|e| VaultError::Usage(format!("erasure coding failed: {e:?}")))?;
        }
        let mut h = ShardHeader {
            aead,
            k: self.k as u8,
            n: self.n as u8,
            index: 0,
            sealed_len: sealed_len as u32,
            chunk: *chunk,
        };
        for i in 0..self.n {
            h.index = i as u8;
            let payload = if i < self.k {
                &sealed[i * len..(i + 1) * len]
            } else {
                &parity[(i - self.k) * len..(i - self.k + 1) * len]
            };
            encode_shard(&h, payload, frame);
            emit(i as u8, frame)?;
        }
        sealed.truncate(sealed_len);
        Ok(())
    }

    /// Rebuilds the sealed chunk from payloads (`None` = missing), at least k present, all of
    /// the length `sealed_len.div_ceil(k)`.
    pub fn decode(&self, mut payloads: Vec<Option<Vec<u8>>>, sealed_len: usize) -> Result<Vec<u8>> {
        debug_assert_eq!(payloads.len(), self.n);
        if payloads[..self.k].iter().any(Option::is_none) {
            self.rs
                .reconstruct_data(&mut payloads)
                .map_err(|e| VaultError::Usage(format!("erasure decoding failed: {e:?}")))?;
        }
        let mut out = Vec::with_capacity(sealed_len.div_ceil(self.k) * self.k);
        for p in payloads.iter().take(self.k) {
            out.extend_from_slice(
                p.as_deref()
                    .expect("data shard present after reconstruction"),
            );
        }
        out.truncate(sealed_len);
        Ok(out)
    }
}

/// The sealed length of the largest chunk (kept in step with [`SEALED_LEN_MAX`] by a test).
pub fn max_sealed_for(max_chunk: usize) -> usize {
    sealed_len(max_chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_sealed_matches_chunker() {
        assert_eq!(
            SEALED_LEN_MAX,
            max_sealed_for(crate::chunker::CHUNK_BYTES_MAX)
        );
    }

    fn frames(codec: &Codec, sealed: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let (mut s, mut p, mut f) = (sealed.to_vec(), Vec::new(), Vec::new());
        codec
            .encode(
                &ChunkId([5; 32]),
                AeadKind::Aes256Gcm,
                &mut s,
                &mut p,
                &mut f,
                |i, b| {
                    assert_eq!(usize::from(i), out.len());
                    out.push(b.to_vec());
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(s, sealed);
        out
    }

    #[test]
    fn any_k_shards_rebuild_the_chunk() {
        let codec = Codec::new(4, 8).unwrap();
        let sealed: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        let shards = frames(&codec, &sealed);
        // Every subset of exactly 4 shards out of 8.
        for mask in 0u32..256 {
            if mask.count_ones() != 4 {
                continue;
            }
            let payloads = shards
                .iter()
                .enumerate()
                .map(|(i, s)| (mask & (1 << i) != 0).then(|| decode_shard(s).unwrap().1.to_vec()))
                .collect();
            assert_eq!(
                codec.decode(payloads, sealed.len()).unwrap(),
                sealed,
                "mask {mask:08b}"
            );
        }
    }

    #[test]
    fn corrupt_or_truncated_shards_are_refused() {
        let codec = Codec::new(2, 3).unwrap();
        let shards = frames(&codec, &[9u8; 5000]);
        let (h, p) = decode_shard(&shards[1]).unwrap();
        assert_eq!((h.k, h.n, h.index, h.sealed_len), (2, 3, 1, 5000));
        assert_eq!(p.len(), 2500);
        for pos in [0, 5, 20, 60, shards[1].len() - 1] {
            let mut bad = shards[1].clone();
            bad[pos] ^= 0x10;
            assert!(decode_shard(&bad).is_err(), "flip at {pos} accepted");
        }
        assert_eq!(
            decode_shard(&shards[1][..40]),
            Err(ShardFormatError::Length(40))
        );
        assert!(decode_shard(&shards[1][..shards[1].len() - 1]).is_err());
    }

    #[test]
    fn impossible_parameters_are_refused() {
        assert!(Codec::new(0, 2).is_err());
        assert!(Codec::new(4, 4).is_err());
        assert!(Codec::new(4, 300).is_err());
    }
}
