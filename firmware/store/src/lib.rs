//! `cairn-store`: the chunk-storage engine of a Cairn plug.
//!
//! A plug keeps other people's encrypted shards (typically 64 KiB–1 MiB, immutable, addressed
//! by a 32-byte hash) on an SD card or USB disk, with little RAM, and may lose power at any
//! instant. This crate stores them in append-only segment files with checksummed records,
//! indexes sealed data in sorted on-disk index runs, and keeps only compact summaries (Bloom
//! filters and fence pointers) in RAM. `DESIGN.md` beside this crate derives the layout from
//! the media's properties.
//!
//! The API is blocking and thread-safe: share one [`Store`] (e.g. in an `Arc`) between
//! threads; concurrent [`Store::put`]s share one fsync (group commit). An async caller wraps
//! the calls in `spawn_blocking`.
//!
//! ```no_run
//! use cairn_store::{Config, Lease, OwnerId, ShardId, Store};
//! let store = Store::open_dir("/data/store", Config::default())?;
//! let id = ShardId([7; 32]);
//! store.put(id, b"shard bytes", OwnerId([1; 32]), Lease::Forever)?;
//! assert_eq!(store.get(id)?, b"shard bytes");
//! # Ok::<(), cairn_store::Error>(())
//! ```

mod format;
pub mod fuzzing;
mod run;
pub mod sim;
pub mod storage;
mod store;

use std::fmt;
use std::io;
use std::sync::Arc;

pub use storage::{CountingStorage, FileStorage, IoCounters, Storage, StorageFile};
pub use store::{CompactOptions, CompactReport, Damage, ShardInfo, Stats, Store, VerifyReport};

/// Record-format helpers exposed for fuzzing and tests: decode arbitrary bytes as a record or
/// a batch, never panicking.
pub mod decode {
    pub use crate::format::{decode_batch_header, decode_record, DecodedRecord, RecordKind};
}

/// The 32-byte address of a shard (a hash chosen by its owner; the store treats it as opaque).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub [u8; 32]);

/// Who a shard is stored for: a fixed 32-byte opaque id.
///
/// Fixed length keeps index entries small and equal-sized; a caller with a variable-length
/// identity (a libp2p `PeerId` is a 38-byte multihash for Ed25519 keys) maps it to 32 bytes,
/// e.g. with BLAKE3 or SHA-256 of its byte form, and keeps that mapping stable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OwnerId(pub [u8; 32]);

fn hex(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    f.write_str(&hex::encode(b))
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}
impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId(")?;
        hex(f, &self.0[..8])?;
        write!(f, "..)")
    }
}
impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}
impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId(")?;
        hex(f, &self.0[..8])?;
        write!(f, "..)")
    }
}

/// How long the store keeps a shard unless it is deleted first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Kept until deleted.
    Forever,
    /// Kept until this time (Unix seconds); after it the shard reads as absent and compaction
    /// reclaims its space. Stored with second precision up to the year 2106.
    Until(u64),
}

impl Lease {
    /// The on-disk expiry word: `u32::MAX` means never; times are clamped below it.
    pub(crate) fn to_expiry(self) -> u32 {
        match self {
            Lease::Forever => u32::MAX,
            Lease::Until(t) => t.min(u64::from(u32::MAX - 1)) as u32,
        }
    }
    pub(crate) fn from_expiry(e: u32) -> Lease {
        if e == u32::MAX {
            Lease::Forever
        } else {
            Lease::Until(u64::from(e))
        }
    }
}

/// The time source for leases: returns the current Unix time in seconds. Tests pass a fake.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// How a store is opened.
#[derive(Clone)]
pub struct Config {
    /// RAM for index summaries: the unsealed index (memtable), Bloom filters and fence
    /// pointers. Filters get fewer bits per shard when the store outgrows it, so RAM stays
    /// bounded and gets cost more index reads instead.
    pub memory_budget_bytes: usize,
    /// Size at which a segment file is sealed and a new one started. A multiple of the
    /// medium's erase block (4–16 MiB) keeps whole erase blocks owned by one file.
    pub segment_bytes: u64,
    /// Largest accepted shard payload.
    pub max_shard_bytes: u32,
    /// Largest group-commit batch (also the bound on queued, not yet written put bytes).
    pub max_batch_bytes: usize,
    /// Disk space held in a `RESERVE` file and given up when the disk is full, so deletes
    /// and compaction can still write their records and free space. Made at open
    /// ([`Store::open`]; [`Store::open_reserve_later`] leaves it to [`Store::ensure_reserve`])
    /// and recreated after a compaction when there is room. 0 disables it.
    pub reserve_bytes: u64,
    /// Source of the current time for leases.
    pub clock: Clock,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            memory_budget_bytes: 16 << 20,
            segment_bytes: 64 << 20,
            max_shard_bytes: 4 << 20,
            max_batch_bytes: 4 << 20,
            reserve_bytes: 8 << 20,
            clock: system_clock(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_shard_bytes", &self.max_shard_bytes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("reserve_bytes", &self.reserve_bytes)
            .finish_non_exhaustive()
    }
}

/// Everything that can go wrong; each message names the shard or file at fault.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// No live shard with this id (never stored, deleted, or its lease expired).
    #[error("shard {id} not found")]
    NotFound {
        /// The shard asked for.
        id: ShardId,
    },
    /// The shard's bytes on the medium fail their checksum: the store returns no bytes.
    #[error("shard {id} is damaged on disk ({detail}) in {file} at offset {offset}")]
    Corrupt {
        /// The damaged shard.
        id: ShardId,
        /// The file holding it.
        file: String,
        /// Byte offset of its record.
        offset: u64,
        /// What failed.
        detail: String,
    },
    /// The medium is full. Nothing was half-written: the store stays readable and writes
    /// succeed again once space is freed.
    #[error("{file}: no space left on device; the store stays readable and writes resume once space is freed")]
    NoSpace {
        /// The file being written.
        file: String,
    },
    /// An I/O error on a file of the store.
    #[error("{file}: {source}")]
    Io {
        /// The file at fault.
        file: String,
        /// The system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A metadata file of the store (manifest or index run) is malformed or damaged.
    #[error("{file}: {detail}")]
    Format {
        /// The file at fault.
        file: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The payload is larger than [`Config::max_shard_bytes`].
    #[error("shard {id}: {len} bytes exceeds the maximum shard size of {max} bytes")]
    TooLarge {
        /// The shard offered.
        id: ShardId,
        /// Its length.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// A write failed in a way that leaves the in-memory state unsure; reopen the store.
    #[error("store in {dir} stopped after a failed write to {file}; reopen it to recover")]
    Poisoned {
        /// The store's directory.
        dir: String,
        /// The file whose write failed.
        file: String,
    },
    /// The configuration cannot work.
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(file: impl Into<String>, e: io::Error) -> Error {
        let file = file.into();
        if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
            Error::NoSpace { file }
        } else {
            Error::Io {
                file,
                source: Arc::new(e),
            }
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
