//! Where shards go: the [`ShardSink`] / [`ShardSource`] traits and the local-directory backend.
//!
//! The vault only ever asks "store these bytes as shard (chunk, index)" and "give me the bytes of
//! shard (chunk, index)". Placement is the backend's business: the directory backend puts shard
//! `i` on target `i mod T`; the network backend maps indices to distinct peers. The methods are
//! blocking and take `&self`, so a backend may be shared by the vault's worker threads; an async
//! backend wraps them (e.g. `tokio::task::spawn_blocking`, or a channel to its runtime).

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::SHARD_LEN_MAX;
use crate::ChunkId;

/// Names one shard: a chunk and the shard's index in its k-of-n code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    /// The chunk (a keyed hash: reveals nothing about its content).
    pub chunk: ChunkId,
    /// Index in 0..n; indices below k carry the sealed chunk itself, the others parity.
    pub index: u8,
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.chunk, self.index)
    }
}

/// Why a shard could not be stored or fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The place that should hold the shard does not have it (never stored, or lost).
    #[error("shard {id} is missing from {place}")]
    Missing {
        /// The shard.
        id: ShardId,
        /// Where it was looked for (a directory, a peer).
        place: String,
    },
    /// The place could not be reached or answered with an error (I/O error, peer offline,
    /// timeout, refused, oversized answer). Retrying later may succeed.
    #[error("shard {id} on {place}: {reason}")]
    Failed {
        /// The shard.
        id: ShardId,
        /// Where (a directory, a peer).
        place: String,
        /// What went wrong.
        reason: String,
    },
}

/// Stores shards. Implementations must be usable from several threads at once.
///
/// Contract:
/// - `put_shard` stores `shard` (at most [`SHARD_LEN_MAX`] bytes, already checksummed and
///   self-describing) under `id`; putting the same id again with the same bytes is harmless.
///   Root records are the one case where an id may be put again with different bytes (a put
///   that crashed before it completed is retried): the last write wins.
/// - Shards of one chunk with different indices should go to different places: losing a place
///   must cost at most one shard per chunk.
/// - `flush` returns once every shard put before it is durable; the vault calls it before it
///   records a snapshot as done, so a crash never leaves a snapshot pointing at lost shards.
pub trait ShardSink: Send + Sync {
    /// Stores one shard.
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError>;

    /// Makes every shard stored so far durable.
    fn flush(&self) -> Result<(), ShardError> {
        Ok(())
    }
}

/// Fetches shards. Implementations must be usable from several threads at once.
///
/// Contract: `get_shard` returns the bytes stored under `id` (the vault checks them: a corrupt
/// shard is detected by its checksum and treated as missing), [`ShardError::Missing`] when the
/// place answers that it does not hold it, [`ShardError::Failed`] when it cannot tell.
/// Answers longer than [`SHARD_LEN_MAX`] should be refused as `Failed` without reading them.
pub trait ShardSource: Send + Sync {
    /// Fetches one shard.
    fn get_shard(&self, id: &ShardId) -> Result<Vec<u8>, ShardError>;

    /// Fetches one shard from any place but those in `avoid` (places whose bytes for it failed
    /// the vault's check), saying where it came from when the source knows (a partner). The
    /// default knows one place only: nothing else to offer once it is avoided.
    fn get_shard_avoiding(&self, id: &ShardId, avoid: &[String]) -> Result<Served, ShardError> {
        if !avoid.is_empty() {
            return Err(ShardError::Missing {
                id: *id,
                place: format!("any place but {}", avoid.join(", ")),
            });
        }
        self.get_shard(id)
            .map(|bytes| Served { bytes, place: None })
    }
}

/// A shard's bytes and, where the source knows it, the place (a partner) that served them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Who served them.
    pub place: Option<String>,
}

/// The local-directory backend: n directories (say n USB sticks) as one redundant store.
///
/// The directories must exist (the vault creates them at `init`); their `cairn-shards`
/// subdirectories are made as needed.
///
/// Layout: `DIR/cairn-shards/<first two hex digits>/<chunk hex>.<index>`. Shard `i` goes to
/// directory `i mod T`; reads look there first and then in the other directories, so targets
/// may be given in another order on a new device.
pub struct DirStore {
    dirs: Vec<PathBuf>,
    /// Makes temporary names unique across threads.
    tmp_seq: AtomicU64,
}

impl DirStore {
    /// A store over `dirs` (created on first write if missing).
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        assert!(
            !dirs.is_empty(),
            "a directory store needs at least one directory"
        );
        Self {
            dirs,
            tmp_seq: AtomicU64::new(0),
        }
    }

    /// The directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn path_in(dir: &Path, id: &ShardId) -> PathBuf {
        let hex = id.chunk.to_string();
        dir.join("cairn-shards")
            .join(&hex[..2])
            .join(format!("{hex}.{}", id.index))
    }

    /// The file shard `id` is written to (tests use it to damage shards).
    pub fn shard_path(&self, id: &ShardId) -> PathBuf {
        Self::path_in(&self.dirs[usize::from(id.index) % self.dirs.len()], id)
    }

    fn failed(id: &ShardId, place: &Path, e: impl fmt::Display) -> ShardError {
        ShardError::Failed {
            id: *id,
            place: place.display().to_string(),
            reason: e.to_string(),
        }
    }
}

impl ShardSink for DirStore {
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        let dir = &self.dirs[usize::from(id.index) % self.dirs.len()];
        let path = Self::path_in(dir, id);
        let parent = path.parent().expect("shard path has a parent");
        let fail = |e: std::io::Error| Self::failed(id, dir, e);
        // Write aside and rename, so a reader (or a crash) sees the old shard or the new one,
        // never a torn one; durability comes with `flush` (one syncfs per target instead of an
        // fsync per shard, which would cost an SD card dearly).
        let tmp = parent.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = File::create(tmp)?;
            f.write_all(shard)?;
            fs::rename(tmp, &path)
        };
        match write(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The target itself must exist: an unmounted stick must not turn into a
                // directory on the root filesystem.
                if !dir.is_dir() {
                    return Err(Self::failed(
                        id,
                        dir,
                        "target directory is missing (not mounted?)",
                    ));
                }
                fs::create_dir_all(parent).map_err(fail)?;
                write(&tmp).map_err(fail)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(fail(e))
            }
        }
    }

    fn flush(&self) -> Result<(), ShardError> {
        for dir in &self.dirs {
            let f = File::open(dir).map_err(|e| Self::failed(&FLUSH_ID, dir, e))?;
            sync_filesystem(&f).map_err(|e| Self::failed(&FLUSH_ID, dir, e))?;
        }
        Ok(())
    }
}

/// Placeholder id for errors of `flush`, which concerns no one shard.
const FLUSH_ID: ShardId = ShardId {
    chunk: ChunkId([0; 32]),
    index: 0,
};

#[cfg(target_os = "linux")]
fn sync_filesystem(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_f: &File) -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

impl ShardSource for DirStore {
    fn get_shard(&self, id: &ShardId) -> Result<Vec<u8>, ShardError> {
        let home = usize::from(id.index) % self.dirs.len();
        let order = std::iter::once(home).chain((0..self.dirs.len()).filter(|&i| i != home));
        let mut failure = None;
        for i in order {
            let dir = &self.dirs[i];
            let path = Self::path_in(dir, id);
            match File::open(&path) {
                Ok(f) => {
                    let read = || -> std::io::Result<Vec<u8>> {
                        let len = f.metadata()?.len();
                        if len > SHARD_LEN_MAX as u64 {
                            return Err(std::io::Error::other(format!(
                                "{len} bytes is larger than any shard"
                            )));
                        }
                        let mut buf = Vec::with_capacity(len as usize);
                        (&f).take(SHARD_LEN_MAX as u64 + 1).read_to_end(&mut buf)?;
                        Ok(buf)
                    };
                    match read() {
                        Ok(b) => return Ok(b),
                        Err(e) => failure = Some(Self::failed(id, &path, e)),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failure = failure.or(Some(Self::failed(id, &path, e))),
            }
        }
        Err(failure.unwrap_or_else(|| ShardError::Missing {
            id: *id,
            place: self.dirs[home].display().to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_store_puts_by_index_and_finds_shards_in_any_directory() {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("d{i}"))).collect();
        let store = DirStore::new(dirs.clone());
        let id0 = ShardId {
            chunk: ChunkId([1; 32]),
            index: 0,
        };
        let e = store.put_shard(&id0, b"x").unwrap_err().to_string();
        assert!(e.contains("d0") && e.contains("missing"), "{e}");
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        let store = DirStore::new(dirs.clone());
        let id = ShardId {
            chunk: ChunkId([0xab; 32]),
            index: 4,
        };
        store.put_shard(&id, b"hello").unwrap();
        store.flush().unwrap();
        assert!(store.shard_path(&id).starts_with(&dirs[1]));
        assert_eq!(store.get_shard(&id).unwrap(), b"hello");
        // Targets listed in another order on a new device.
        let reordered = DirStore::new(vec![dirs[2].clone(), dirs[1].clone(), dirs[0].clone()]);
        assert_eq!(reordered.get_shard(&id).unwrap(), b"hello");
        let other = ShardId { index: 5, ..id };
        match store.get_shard(&other) {
            Err(ShardError::Missing { id, .. }) => assert_eq!(id, other),
            r => panic!("expected Missing, got {r:?}"),
        }
    }

    #[test]
    fn unwritable_target_is_a_failure_naming_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let store = DirStore::new(vec![file.clone()]);
        let id = ShardId {
            chunk: ChunkId([1; 32]),
            index: 0,
        };
        let e = store.put_shard(&id, b"x").unwrap_err();
        assert!(matches!(e, ShardError::Failed { .. }));
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    /// The traits stay object-safe: the network backend is used as `dyn`.
    #[test]
    fn traits_are_object_safe() {
        let t = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(DirStore::new(vec![t.path().to_path_buf()]));
        let sink: std::sync::Arc<dyn ShardSink> = store.clone();
        let source: std::sync::Arc<dyn ShardSource> = store;
        let id = ShardId {
            chunk: ChunkId([2; 32]),
            index: 1,
        };
        sink.put_shard(&id, b"abc").unwrap();
        assert_eq!(source.get_shard(&id).unwrap(), b"abc");
    }
}
