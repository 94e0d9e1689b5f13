//! Where an install writes: a [`Slot`] is a span of bytes with a capacity (a partition's
//! block device on a plug, a file in tests), written at offsets, synced, read back.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A system slot's storage.
pub trait Slot {
    /// Bytes it holds.
    fn capacity(&mut self) -> io::Result<u64>;
    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `offset`, from the medium (not a cache) once [`Slot::sync`] returned.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes what was written durable, and drops it from any cache so that reads go to the
    /// medium.
    fn sync(&mut self) -> io::Result<()>;
    /// What to call it in messages (`/dev/vda3`).
    fn describe(&self) -> String;
}

/// A slot that is a block device (a partition) or a regular file, opened without creating or
/// truncating it: its size is its capacity.
pub struct FileSlot {
    file: File,
    path: PathBuf,
}

impl FileSlot {
    /// Opens `path` for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(FileSlot {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Slot for FileSlot {
    fn capacity(&mut self) -> io::Result<u64> {
        // A block device's metadata says 0 bytes; its end is its size.
        self.file.seek(SeekFrom::End(0))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.file.sync_all()?;
        // SAFETY: the descriptor is open for the call's length; fadvise reads nothing of ours.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        // Advice: where it cannot be taken the read-back still checks what the kernel holds.
        let _ = rc;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
