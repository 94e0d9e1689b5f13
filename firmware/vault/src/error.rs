//! The vault's error type: every variant names what is at fault (file, chunk, shard, key,
//! capability) so the one-line message a user sees tells them where to look.

use std::path::PathBuf;

use crate::sink::ShardError;
use crate::ChunkId;

/// Everything that can go wrong in the vault, each with the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Fewer than k shards of a chunk could be read and verified.
    #[error("chunk {chunk}: {}", not_enough(*found, *k, *missing, *corrupt, detail))]
    NotEnoughShards {
        /// The chunk that cannot be rebuilt.
        chunk: ChunkId,
        /// Valid shards found.
        found: usize,
        /// Shards needed.
        k: usize,
        /// Shards that no target holds.
        missing: usize,
        /// Shards that failed their checksum or could not be read.
        corrupt: usize,
        /// The last read failure, if any (", last failure: …").
        detail: String,
    },
    /// The AEAD tag did not verify: wrong key, or shards forged consistently.
    #[error(
        "chunk {0}: cannot be decrypted with this vault's key (wrong key, or tampered shards)"
    )]
    Decrypt(ChunkId),
    /// A shard target refused a write.
    #[error("{0}")]
    Shard(#[from] ShardError),
    /// A decoder met bytes it does not accept (manifest, root record, shard, key file).
    #[error("{what}: {reason}")]
    Corrupt {
        /// The object at fault (e.g. "manifest of snapshot 3", "key file /x/key").
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A recovery key or capability string does not parse.
    #[error("{0}")]
    BadKey(String),
    /// The passphrase does not open the key file.
    #[error("{0}: wrong passphrase (or the key file is damaged)")]
    WrongPassphrase(PathBuf),
    /// A user request that cannot be met (unknown path, bad parameters, …).
    #[error("{0}")]
    Usage(String),
    /// A restore found no snapshot at all: a wrong key, other targets, or nothing stored yet
    /// (callers that only look for an earlier vault tell this from a failure).
    #[error("{0}")]
    NoSnapshot(String),
}

fn not_enough(found: usize, k: usize, missing: usize, corrupt: usize, detail: &str) -> String {
    if k == 0 {
        format!("no shard is readable ({missing} missing, {corrupt} corrupt or failed){detail}")
    } else {
        format!(
            "only {found} of the {k} shards needed are readable ({missing} missing, {corrupt} \
             corrupt or failed){detail}"
        )
    }
}

/// Result with [`VaultError`].
pub type Result<T, E = VaultError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VaultError {
    let path = path.into();
    move |source| VaultError::Io { path, source }
}

/// Shorthand for a decoder error.
pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> VaultError {
    VaultError::Corrupt {
        what: what.into(),
        reason: reason.into(),
    }
}
