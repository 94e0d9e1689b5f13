//! The Cairn vault: files in, shards out — and back, with one key.
//!
//! ```text
//! file ─► chunker (FastCDC, ~1 MiB, keyed gear) ─► id = keyed BLAKE3 ─► dedup
//!      ─► pad to a size class ─► AEAD (per-chunk key, derived nonce) ─► Reed–Solomon k-of-n
//!      ─► n self-describing, checksummed shards ─► ShardSink (local directories, later peers)
//! tree (names, sizes, modes, mtimes, chunk lists) ─► serialized ─► chunks, stored the same way
//! root record of snapshot N (manifest chunk list) ─► stored under an id derived from the key
//! ```
//! With the owner secret (the recovery key) and the shards, a new device finds the latest
//! snapshot's root record, its manifest and every file: see [`Vault::restore`].
//!
//! Modules: [`keys`] (secret, derivation, recovery key, capability, key file), [`chunker`],
//! [`seal`], [`shard`] (erasure coding and shard format), [`sink`] (the shard traits and the
//! directory backend), [`manifest`], [`store`] (chunk write and read paths), [`vault`] (put, get,
//! snapshots, restore; [`vault::NodeConnector`]: how `node:` targets reach a storage node, given
//! by the program), [`stream`] (files in from readers as one batch, out as readers: no files on
//! disk), [`home`] (state on disk), [`progress`]. The command line, `cairn vault …`,
//! lives in the `cairn` binary.

pub mod chunker;
pub mod error;
pub mod home;
pub mod keys;
pub mod manifest;
pub mod progress;
pub mod seal;
pub mod shard;
pub mod sink;
pub mod store;
pub mod stream;
pub mod vault;

use std::fmt;

pub use error::{Result, VaultError};
pub use keys::{KdfParams, OwnerKey, OwnerSecret, RootCapability};
pub use seal::AeadKind;
pub use sink::{DirStore, ShardError, ShardId, ShardSink, ShardSource};
pub use stream::{Batch, FileReadError, FileReader};
pub use vault::{GetReport, NoNode, NodeConnector, PutReport, Vault};

/// A chunk's id: keyed BLAKE3 of its content (or, for root records, of the snapshot number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Fuzz entry point for the manifest decoders (tree and root record): must never panic, and
/// whatever decodes must re-encode to the same bytes.
pub fn fuzz_manifest(data: &[u8]) {
    if let Ok(t) = manifest::Tree::decode(data, "fuzz") {
        assert_eq!(t.encode(), data, "tree decode/encode not canonical");
    }
    if let Ok(r) = manifest::RootRecord::decode(data, "fuzz") {
        assert_eq!(r.encode(), data, "root record decode/encode not canonical");
    }
}

/// Fuzz entry point for the shard decoder: must never panic; an accepted shard re-encodes to the
/// same bytes and a set of accepted shards never decodes to a wrong length.
pub fn fuzz_shard(data: &[u8]) {
    if let Ok((h, payload)) = shard::decode_shard(data) {
        let auth = shard::shard_auth(data).expect("a decoded shard has its digests");
        let mut out = Vec::new();
        shard::encode_shard(&h, payload, &auth, &mut out);
        assert_eq!(out, data, "shard decode/encode not canonical");
        if let Ok(codec) = shard::Codec::new(usize::from(h.k), usize::from(h.n)) {
            let mut payloads = vec![None; usize::from(h.n)];
            payloads[usize::from(h.index)] = Some(payload.to_vec());
            if h.k == 1 {
                let sealed = codec
                    .decode(payloads, h.sealed_len as usize)
                    .expect("k = 1");
                assert_eq!(sealed.len(), h.sealed_len as usize);
            }
        }
    }
}
