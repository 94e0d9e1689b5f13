//! The boot state's and the slots' records' Linux side: raw sectors in the gap before the
//! first partition of the boot disk (`/dev/vda`, `/dev/mmcblk0`), the same ones u-boot's
//! `boot.scr` reads and writes. Each write goes to its own sector, synced and dropped from the
//! page cache before it returns, so a later read (ours or u-boot's after a reset) sees the
//! medium.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bootstate::{
    BootState, SlotName, SlotRecord, BLOCK_BYTES, COPY_SECTORS, RECORD_SECTORS,
};

/// Bytes per sector in the fields above.
const SECTOR: u64 = 512;

/// The boot disk.
pub struct BootDisk {
    path: PathBuf,
}

impl BootDisk {
    /// The disk at `path` (opened at each read or write).
    pub fn new(path: &Path) -> Self {
        BootDisk {
            path: path.to_path_buf(),
        }
    }

    fn err(&self, what: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {what}: {e}", self.path.display()))
    }

    fn read_sector(&self, sector: u64) -> io::Result<[u8; BLOCK_BYTES]> {
        let f = File::open(&self.path).map_err(|e| self.err("opening", e))?;
        // Another writer (u-boot, before this boot) went around the page cache.
        drop_cache(&f);
        let mut block = [0u8; BLOCK_BYTES];
        f.read_exact_at(&mut block, sector * SECTOR)
            .map_err(|e| self.err(&format!("reading sector {sector}"), e))?;
        Ok(block)
    }

    fn write_sector(&self, sector: u64, block: &[u8; BLOCK_BYTES]) -> io::Result<()> {
        let f = File::options()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.err("opening for writing", e))?;
        f.write_all_at(block, sector * SECTOR)
            .and_then(|()| f.sync_data())
            .map_err(|e| self.err(&format!("writing sector {sector}"), e))?;
        drop_cache(&f);
        Ok(())
    }

    /// The newest valid state (`None`: no copy is valid, as on a card never booted).
    pub fn state(&self) -> io::Result<Option<BootState>> {
        let a = self.read_sector(COPY_SECTORS[0])?;
        let b = self.read_sector(COPY_SECTORS[1])?;
        Ok(BootState::newest([&a, &b]))
    }

    /// Writes `state` into its copy (`seq % 2`), leaving the other, older one whole.
    pub fn write_state(&self, state: &BootState) -> io::Result<()> {
        self.write_sector(COPY_SECTORS[state.copy_index()], &state.encode())
    }

    /// What `slot` holds, if recorded.
    pub fn record(&self, slot: SlotName) -> io::Result<Option<SlotRecord>> {
        Ok(SlotRecord::decode(
            &self.read_sector(RECORD_SECTORS[slot.index()])?,
        ))
    }

    /// Records what `slot` holds; `None` clears the record (an install begins).
    pub fn write_record(&self, slot: SlotName, record: Option<&SlotRecord>) -> io::Result<()> {
        let block = match record {
            Some(r) => r
                .encode()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => [0; BLOCK_BYTES],
        };
        self.write_sector(RECORD_SECTORS[slot.index()], &block)
    }
}

/// Drops the file's cached pages: advice, and where it cannot be taken the data is still right
/// for writes already synced.
fn drop_cache(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call's length; fadvise reads nothing of ours.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_alternate_copies_and_records_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let d = BootDisk::new(&path);
        assert_eq!(d.state().unwrap(), None);
        let s = BootState::default();
        d.write_state(&s).unwrap();
        let t = s.try_once(SlotName::B);
        d.write_state(&t).unwrap();
        assert_eq!(d.state().unwrap(), Some(t));
        // Both copies are there: the older one is what a torn write of the next falls back to.
        let raw = std::fs::read(&path).unwrap();
        let at = |n: u64| &raw[(n * SECTOR) as usize..((n + 1) * SECTOR) as usize];
        assert_eq!(BootState::decode(at(COPY_SECTORS[0])).unwrap(), s);
        assert_eq!(BootState::decode(at(COPY_SECTORS[1])).unwrap(), t);
        let r = SlotRecord {
            version: "0.1.0-5".into(),
            build: 5,
        };
        d.write_record(SlotName::B, Some(&r)).unwrap();
        assert_eq!(d.record(SlotName::B).unwrap(), Some(r));
        assert_eq!(d.record(SlotName::A).unwrap(), None);
        d.write_record(SlotName::B, None).unwrap();
        assert_eq!(d.record(SlotName::B).unwrap(), None);
        let e = BootDisk::new(&dir.path().join("none")).state().unwrap_err();
        assert!(e.to_string().contains("none: opening"), "{e}");
    }
}
