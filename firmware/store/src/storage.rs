//! The medium under the store: a directory of named files with positional reads and writes.
//!
//! The engine talks only to [`Storage`] and [`StorageFile`], so tests run it on
//! [`crate::sim::SimStorage`] (seeded torn and lost writes, bit flips, ENOSPC) and the
//! benchmark counts reads through [`CountingStorage`]. [`FileStorage`] is the real backend.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A flat directory of files. Names are plain file names (no `/`).
///
/// Durability contract (the POSIX one): data written to a file is durable after
/// [`StorageFile::sync`]; creating, renaming or removing a file is durable after
/// [`Storage::sync_dir`].
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a file (emptying it if it exists) for reading and writing.
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file. Open handles stay readable.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file atomically, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Lists the names of all files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals so far durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// A human-readable location of `name`, for error messages.
    fn describe(&self, name: &str) -> String;
}

/// One open file.
pub trait StorageFile: Send + Sync {
    /// Fills `buf` from `offset`; an `UnexpectedEof` error if the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The real backend: a directory on a mounted filesystem.
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    /// Uses directory `root`, creating it if missing.
    pub fn new(root: impl AsRef<Path>) -> io::Result<FileStorage> {
        fs::create_dir_all(root.as_ref())?;
        Ok(FileStorage {
            root: root.as_ref().to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

struct RealFile(File);

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for FileStorage {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.root.join(name))?;
        Ok(Arc::new(RealFile(f)))
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.root.join(name))?;
        Ok(Arc::new(RealFile(f)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.root.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.root.join(from), self.root.join(to))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
    fn describe(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

/// Operation counts seen by a [`CountingStorage`].
#[derive(Debug, Default)]
pub struct IoCounters {
    /// `read_at` calls.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// `write_at` calls.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// `sync` and `sync_dir` calls.
    pub syncs: AtomicU64,
}

/// A [`Storage`] that counts the operations passed to the one it wraps.
#[derive(Debug, Clone)]
pub struct CountingStorage {
    inner: Arc<dyn Storage>,
    counters: Arc<IoCounters>,
}

impl CountingStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> CountingStorage {
        CountingStorage {
            inner,
            counters: Arc::default(),
        }
    }
    /// The shared counters.
    pub fn counters(&self) -> Arc<IoCounters> {
        self.counters.clone()
    }
}

struct CountingFile {
    inner: Arc<dyn StorageFile>,
    counters: Arc<IoCounters>,
}

impl StorageFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .write_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for CountingStorage {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open(name)?,
            counters: self.counters.clone(),
        }))
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.create(name)?,
            counters: self.counters.clone(),
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_dir()
    }
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}
