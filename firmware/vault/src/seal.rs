//! Sealing: size-class padding and AEAD encryption of one chunk, in place.
//!
//! A sealed object is `ciphertext of padded plaintext ‖ tag (16) ‖ nonce (12)` (the nonce last,
//! so sealing in place needs no move of the chunk). Each (kind, id)
//! has its own key ([`Keys`]), and the nonce is derived from the content (the chunk id for
//! content-addressed chunks, a keyed hash of the plaintext for root records), so a (key, nonce)
//! pair can only ever recur with the same plaintext — which yields the same ciphertext.
//!
//! Padding: `plaintext ‖ 0x80 ‖ 0x00…` up to a size class. Classes are 4 KiB and above it four
//! per power of two (…, 1 MiB, 1.25 MiB, 1.5 MiB, 1.75 MiB, 2 MiB, …), so a shard's size tells a
//! peer the chunk's size only to within 25 % for at most 25 % (on average about 12 %) more bytes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::{Result, VaultError};
use crate::keys::{Keys, Kind};
use crate::ChunkId;

/// The AEADs the vault can seal with (both from `ring`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadKind {
    /// ChaCha20-Poly1305: fast everywhere, and the faster one on ARM cores without the
    /// cryptography extensions (Raspberry Pi 3/4).
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM: faster where the CPU has AES and carry-less multiply instructions.
    Aes256Gcm = 2,
}

impl AeadKind {
    /// The id stored in shard headers.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// From a shard header id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::ChaCha20Poly1305),
            2 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The name used in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Parses [`AeadKind::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::ChaCha20Poly1305, Self::Aes256Gcm]
            .into_iter()
            .find(|a| a.name() == s)
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &aead::AES_256_GCM,
        }
    }

    /// Measures both AEADs on this CPU for about `budget_ms` each and returns the faster: the
    /// choice is made on the device itself, where it matters.
    pub fn fastest_here(budget_ms: u64) -> Self {
        let mut best = (Self::ChaCha20Poly1305, 0.0f64);
        for a in [Self::ChaCha20Poly1305, Self::Aes256Gcm] {
            let rate = a.rate_here(budget_ms);
            if rate > best.1 {
                best = (a, rate);
            }
        }
        best.0
    }

    /// Bytes per second this AEAD seals on this CPU, measured for about `budget_ms`.
    pub fn rate_here(self, budget_ms: u64) -> f64 {
        let mut buf = vec![0u8; 256 * 1024];
        let key = LessSafeKey::new(UnboundKey::new(self.algorithm(), &[7u8; 32]).expect("key"));
        let start = std::time::Instant::now();
        let mut bytes = 0u64;
        while start.elapsed().as_millis() < u128::from(budget_ms) {
            let _ = key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0u8; 12]),
                Aad::empty(),
                &mut buf,
            );
            bytes += buf.len() as u64;
        }
        bytes as f64 / start.elapsed().as_secs_f64()
    }
}

/// Bytes a sealed object adds around its padded plaintext (nonce and tag).
pub const SEAL_OVERHEAD: usize = 12 + 16;
/// Smallest size class.
pub const CLASS_BYTES_MIN: usize = 4096;

/// The padded length for a plaintext of `len` bytes (room for the 0x80 marker included).
pub fn size_class(len: usize) -> usize {
    let x = len + 1;
    if x <= CLASS_BYTES_MIN {
        return CLASS_BYTES_MIN;
    }
    let e = usize::BITS - 1 - (x - 1).leading_zeros(); // floor(log2(x - 1))
    let step = 1usize << (e - 2);
    x.div_ceil(step) * step
}

/// Sealed length of a plaintext of `len` bytes.
pub fn sealed_len(len: usize) -> usize {
    SEAL_OVERHEAD + size_class(len)
}

/// Seals `buf` (the plaintext) in place: afterwards it holds the sealed object. `nonce` is
/// derived by the caller ([`nonce_for`]). Reserve [`sealed_len`] capacity to avoid a reallocation.
pub fn seal_in_place(
    keys: &Keys,
    aead: AeadKind,
    kind: Kind,
    id: &ChunkId,
    nonce: [u8; 12],
    buf: &mut Vec<u8>,
) {
    let plain_len = buf.len();
    let padded = size_class(plain_len);
    buf.reserve(SEAL_OVERHEAD + padded - plain_len);
    buf.push(0x80);
    buf.resize(padded, 0);
    let key = LessSafeKey::new(
        UnboundKey::new(aead.algorithm(), &keys.object_key(kind, id)).expect("32-byte key"),
    );
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(kind, id, aead)),
            buf,
        )
        .expect("sealing cannot fail for lengths below 256 GiB");
    buf.extend_from_slice(tag.as_ref());
    buf.extend_from_slice(&nonce);
}

/// The nonce for an object: the first 12 bytes of a content-addressed id, or a keyed hash of the
/// plaintext for root records (whose id names a slot, not the content).
pub fn nonce_for(keys: &Keys, kind: Kind, id: &ChunkId, plain: &[u8]) -> [u8; 12] {
    match kind {
        Kind::Root => keys.content_nonce(plain),
        _ => id.0[..12].try_into().expect("12 bytes"),
    }
}

/// Opens a sealed object in place; on success `buf` holds the plaintext (padding removed).
pub fn open_in_place(
    keys: &Keys,
    aead: AeadKind,
    kind: Kind,
    id: &ChunkId,
    buf: &mut Vec<u8>,
) -> Result<()> {
    if buf.len() < SEAL_OVERHEAD + 1 {
        return Err(VaultError::Decrypt(*id));
    }
    let nonce: [u8; 12] = buf[buf.len() - 12..].try_into().expect("12 bytes");
    buf.truncate(buf.len() - 12);
    let key = LessSafeKey::new(
        UnboundKey::new(aead.algorithm(), &keys.object_key(kind, id)).expect("32-byte key"),
    );
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(kind, id, aead)),
            buf,
        )
        .map_err(|_| VaultError::Decrypt(*id))?
        .len();
    buf.truncate(plain_len);
    // Strip the padding: trailing zeros, then the 0x80 marker.
    let end = buf
        .iter()
        .rposition(|&b| b != 0)
        .filter(|&i| buf[i] == 0x80)
        .ok_or(VaultError::Decrypt(*id))?;
    buf.truncate(end);
    Ok(())
}

fn aad(kind: Kind, id: &ChunkId, aead: AeadKind) -> [u8; 34] {
    let mut a = [0u8; 34];
    a[0] = kind as u8;
    a[1] = aead.id();
    a[2..].copy_from_slice(&id.0);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::OwnerSecret;

    #[test]
    fn size_classes_are_coarse_and_bounded() {
        assert_eq!(size_class(0), 4096);
        assert_eq!(size_class(4095), 4096);
        assert_eq!(size_class(4096), 5120);
        assert_eq!(size_class(1 << 20), 1_310_720);
        assert_eq!(size_class((1 << 20) - 1), 1 << 20);
        for len in (0..(5 << 20)).step_by(9973) {
            let c = size_class(len);
            assert!(c > len);
            assert!(c <= (len + 1).max(4096) * 5 / 4 + 1, "{len} -> {c}");
        }
        // Few classes: every 1 MiB..2 MiB chunk falls in one of four.
        let mut classes: Vec<usize> = (1 << 20..2 << 20).step_by(4099).map(size_class).collect();
        classes.dedup();
        assert!(classes.len() <= 5, "{classes:?}");
    }

    #[test]
    fn seal_open_round_trip_both_aeads_and_reject_wrong_key_kind_or_tamper() {
        let keys = OwnerSecret::from_bytes([3u8; 32]).keys();
        let other = OwnerSecret::from_bytes([4u8; 32]).keys();
        for aead in [AeadKind::ChaCha20Poly1305, AeadKind::Aes256Gcm] {
            for len in [0usize, 1, 4095, 4096, 100_000] {
                let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
                let id = keys.chunk_id(Kind::Data, &plain);
                let mut buf = plain.clone();
                seal_in_place(
                    &keys,
                    aead,
                    Kind::Data,
                    &id,
                    nonce_for(&keys, Kind::Data, &id, &plain),
                    &mut buf,
                );
                assert_eq!(buf.len(), sealed_len(len));
                let sealed = buf.clone();
                open_in_place(&keys, aead, Kind::Data, &id, &mut buf).unwrap();
                assert_eq!(buf, plain);
                let mut b = sealed.clone();
                assert!(open_in_place(&other, aead, Kind::Data, &id, &mut b).is_err());
                let mut b = sealed.clone();
                assert!(open_in_place(&keys, aead, Kind::Manifest, &id, &mut b).is_err());
                let mut b = sealed.clone();
                b[20] ^= 1;
                let e = open_in_place(&keys, aead, Kind::Data, &id, &mut b).unwrap_err();
                assert!(e.to_string().contains(&id.to_string()));
            }
        }
    }
}
