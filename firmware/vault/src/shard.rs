//! Shards: Reed–Solomon k-of-n coding of a sealed chunk, and the self-describing shard format.
//!
//! A shard is
//! ```text
//!  0  4  magic "CSH1"
//!  4  1  format version (2)
//!  5  1  AEAD id of the sealed chunk
//!  6  1  k (data shards)      7  1  n (all shards)      8  1  this shard's index (< n)
//!  9  3  reserved, zero
//! 12  4  sealed length (LE): the sealed chunk's length before splitting
//! 16 32  chunk id
//! 48  4  payload length (LE) = ceil(sealed length / k)
//! 52  …  payload
//!  … 32n digests: BLAKE3 of each of the chunk's n shards' header ‖ payload, in index order
//!  … 32  tag: BLAKE3 keyed by the owner's shard key over the chunk id and the digests
//!  …  4  CRC-32C of all the bytes before it
//! ```
//! so any shard alone says how to rebuild its chunk, and a corrupt one is detected (and then
//! treated as missing) before it can poison a reconstruction. The tag makes forgeries fail
//! before decoding too: only the owner can make digests a vault accepts, and a shard whose
//! header and payload do not hash to its own digest is refused ([`verify_shard`]). All the shards
//! of a chunk carry the same digests and tag, so a node that rebuilds a lost shard (it has no
//! key) copies them from the shards it rebuilt it from, and they vouch for it. The header reveals
//! nothing of the plaintext: ids are keyed and lengths are padded to size classes.
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
/// Length of one digest, and of the tag.
pub const DIGEST_LEN: usize = 32;
/// Largest valid shard (k = 1, n = 255): sources may refuse anything longer unread.
pub const SHARD_LEN_MAX: usize = HEADER_LEN + SEALED_LEN_MAX + 256 * DIGEST_LEN + TRAILER_LEN;
/// The format version written and read.
pub const VERSION: u8 = 2;

/// What vouches for a chunk's shards: the digest of each shard's header and payload, and the
/// owner's tag over them (the same in every shard of the chunk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardAuth {
    /// BLAKE3 of each shard's header ‖ payload, in index order (n of them).
    pub digests: Vec<[u8; 32]>,
    /// BLAKE3 keyed by the owner's shard key over the chunk id and the digests.
    pub tag: [u8; 32],
}

impl ShardAuth {
    /// Tags `digests` of `chunk`'s shards with the owner's `key`.
    pub fn new(key: &[u8; 32], chunk: &ChunkId, digests: Vec<[u8; 32]>) -> Self {
        let tag = auth_tag(key, chunk, &digests);
        ShardAuth { digests, tag }
    }
}

fn auth_tag(key: &[u8; 32], chunk: &ChunkId, digests: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"cairn shard tag v2");
    h.update(&chunk.0);
    for d in digests {
        h.update(d);
    }
    *h.finalize().as_bytes()
}

/// The digest of one shard: its header (as encoded) and payload.
pub fn shard_digest(h: &ShardHeader, payload: &[u8]) -> [u8; 32] {
    let mut b = blake3::Hasher::new();
    b.update(&header_bytes(h, payload.len()));
    b.update(payload);
    *b.finalize().as_bytes()
}

fn header_bytes(h: &ShardHeader, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..12].copy_from_slice(&[VERSION, h.aead.id(), h.k, h.n, h.index, 0, 0, 0]);
    out[12..16].copy_from_slice(&h.sealed_len.to_le_bytes());
    out[16..48].copy_from_slice(&h.chunk.0);
    out[48..52].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out
}

/// Why a well-formed shard is not the owner's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardAuthError {
    /// Its tag was not made with the owner's key: digests made up by someone else.
    #[error("its tag is not the owner's (forged)")]
    Tag,
    /// Its header and payload do not hash to its own digest.
    #[error("its bytes do not match the chunk's digest of this shard (forged or altered)")]
    Digest,
}

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

/// Checks and parses a shard's format (not whose it is: see [`verify_shard`]); returns its
/// header and payload.
pub fn decode_shard(bytes: &[u8]) -> Result<(ShardHeader, &[u8]), ShardFormatError> {
    decode_parts(bytes).map(|(h, payload, _)| (h, payload))
}

/// The digests and tag a well-formed shard carries.
pub fn shard_auth(bytes: &[u8]) -> Result<ShardAuth, ShardFormatError> {
    let (_, _, auth) = decode_parts(bytes)?;
    let (digests, tag) = auth.split_at(auth.len() - DIGEST_LEN);
    Ok(ShardAuth {
        digests: digests
            .chunks_exact(DIGEST_LEN)
            .map(|d| d.try_into().expect("32 bytes"))
            .collect(),
        tag: tag.try_into().expect("32 bytes"),
    })
}

/// Checks that a well-formed shard is the owner's (tag made with `key`) and is the very shard
/// the digests name; returns its header and payload.
pub fn verify_shard<'a>(
    bytes: &'a [u8],
    key: &[u8; 32],
) -> Result<Result<(ShardHeader, &'a [u8]), ShardAuthError>, ShardFormatError> {
    let (h, payload, _) = decode_parts(bytes)?;
    let auth = shard_auth(bytes)?;
    if auth_tag(key, &h.chunk, &auth.digests) != auth.tag {
        return Ok(Err(ShardAuthError::Tag));
    }
    if auth.digests[usize::from(h.index)] != shard_digest(&h, payload) {
        return Ok(Err(ShardAuthError::Digest));
    }
    Ok(Ok((h, payload)))
}

/// Header, payload and the authentication section (digests ‖ tag) of a well-formed shard.
fn decode_parts(bytes: &[u8]) -> Result<(ShardHeader, &[u8], &[u8]), ShardFormatError> {
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
    if bytes[4] != VERSION {
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
    let auth_len = (usize::from(n) + 1) * DIGEST_LEN;
    if payload_len != header.payload_len()
        || HEADER_LEN + payload_len + auth_len + TRAILER_LEN != bytes.len()
    {
        return Err(ShardFormatError::Length(bytes.len()));
    }
    let (payload, auth) = body[HEADER_LEN..].split_at(payload_len);
    Ok((header, payload, auth))
}

/// Writes a shard (header, payload, the chunk's digests and tag, checksum) into `out` (cleared
/// first).
pub fn encode_shard(h: &ShardHeader, payload: &[u8], auth: &ShardAuth, out: &mut Vec<u8>) {
    debug_assert_eq!(payload.len(), h.payload_len());
    debug_assert_eq!(auth.digests.len(), usize::from(h.n));
    out.clear();
    out.extend_from_slice(&header_bytes(h, payload.len()));
    out.extend_from_slice(payload);
    for d in &auth.digests {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(&auth.tag);
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// How [`Codec::encode`] authenticates the shards it makes.
pub enum Authority<'a> {
    /// The owner: digests computed and tagged with its shard key.
    Owner(&'a [u8; 32]),
    /// A node rebuilding lost shards (it has no key): the digests and tag of the shards it
    /// rebuilt them from; a rebuilt shard that does not match its digest is an error.
    Copied(&'a ShardAuth),
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

    /// Computes the parity of `sealed` and hands each framed shard to `emit` in index order,
    /// authenticated by `authority`.
    ///
    /// Memory: `sealed` is padded in place to a multiple of k (capacity reserved by the caller
    /// avoids a reallocation), `parity` holds (n − k) payloads and `frame` one framed shard; all
    /// three are the caller's, reused from chunk to chunk.
    #[expect(
        clippy::too_many_arguments,
        reason = "the caller's buffers are reused from chunk to chunk, so they are arguments"
    )]
    pub fn encode(
        &self,
        chunk: &ChunkId,
        aead: AeadKind,
        sealed: &mut Vec<u8>,
        parity: &mut Vec<u8>,
        frame: &mut Vec<u8>,
        authority: Authority<'_>,
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
        let payload = |i: usize| {
            if i < self.k {
                &sealed[i * len..(i + 1) * len]
            } else {
                &parity[(i - self.k) * len..(i - self.k + 1) * len]
            }
        };
        let digests: Vec<[u8; 32]> = (0..self.n)
            .map(|i| {
                shard_digest(
                    &ShardHeader {
                        index: i as u8,
                        ..h
                    },
                    payload(i),
                )
            })
            .collect();
        let owned;
        let auth = match authority {
            Authority::Owner(key) => {
                owned = ShardAuth::new(key, chunk, digests);
                &owned
            }
            Authority::Copied(auth) => {
                if auth.digests != digests {
                    return Err(VaultError::Usage(format!(
                        "chunk {chunk}: the rebuilt shards do not match the chunk's digests"
                    )));
                }
                auth
            }
        };
        for i in 0..self.n {
            h.index = i as u8;
            encode_shard(&h, payload(i), auth, frame);
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

    const KEY: [u8; 32] = [7; 32];

    fn frames(codec: &Codec, sealed: &[u8]) -> Vec<Vec<u8>> {
        frames_by(codec, sealed, Authority::Owner(&KEY))
    }

    fn frames_by(codec: &Codec, sealed: &[u8], authority: Authority<'_>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let (mut s, mut p, mut f) = (sealed.to_vec(), Vec::new(), Vec::new());
        codec
            .encode(
                &ChunkId([5; 32]),
                AeadKind::Aes256Gcm,
                &mut s,
                &mut p,
                &mut f,
                authority,
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
    fn only_the_owners_shards_verify_and_a_rebuild_copies_their_tag() {
        let codec = Codec::new(2, 4).unwrap();
        let sealed = [3u8; 3000];
        let shards = frames(&codec, &sealed);
        for s in &shards {
            assert!(verify_shard(s, &KEY).unwrap().is_ok());
            assert_eq!(verify_shard(s, &[8; 32]).unwrap(), Err(ShardAuthError::Tag));
        }
        // A partner's forgery: the right header, its own payload, the chunk's digests and tag
        // copied from a real shard, a valid checksum.
        let (h, p) = decode_shard(&shards[0]).unwrap();
        let auth = shard_auth(&shards[1]).unwrap();
        let forged_payload: Vec<u8> = p.iter().map(|b| b ^ 0xa5).collect();
        let mut forged = Vec::new();
        encode_shard(&h, &forged_payload, &auth, &mut forged);
        assert!(decode_shard(&forged).is_ok(), "well-formed");
        assert_eq!(
            verify_shard(&forged, &KEY).unwrap(),
            Err(ShardAuthError::Digest)
        );
        // Its own digests, tagged without the key.
        let mut digests = auth.digests.clone();
        digests[0] = shard_digest(&h, &forged_payload);
        let made_up = ShardAuth {
            digests,
            tag: [0; 32],
        };
        encode_shard(&h, &forged_payload, &made_up, &mut forged);
        assert_eq!(
            verify_shard(&forged, &KEY).unwrap(),
            Err(ShardAuthError::Tag)
        );
        // A node rebuilding without the key copies digests and tag: same bytes, still valid.
        assert_eq!(frames_by(&codec, &sealed, Authority::Copied(&auth)), shards);
        let (mut other, mut p, mut f) = (vec![4u8; 3000], Vec::new(), Vec::new());
        let e = codec
            .encode(
                &ChunkId([5; 32]),
                AeadKind::Aes256Gcm,
                &mut other,
                &mut p,
                &mut f,
                Authority::Copied(&auth),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("do not match the chunk's digests"),
            "{e}"
        );
    }

    #[test]
    fn impossible_parameters_are_refused() {
        assert!(Codec::new(0, 2).is_err());
        assert!(Codec::new(4, 4).is_err());
        assert!(Codec::new(4, 300).is_err());
    }
}
