//! Replaces a whole small file durably, the one way every Cairn crate does it: the data goes to
//! a temporary file beside the target (`.NAME.tmp`), which is fsynced and renamed over the
//! target, then the directory is fsynced. After a power cut the file is the old one or the new
//! one, whole; once a write returns `Ok`, the new one survives.
//!
//! Not the `atomic-write-file` crate, although it too syncs the file and the directory: it
//! names its temporary files at random through `rand`'s thread RNG, whose first use is a
//! blocking getrandom(2), and PID 1 writes `/etc/passwd` and the factory-reset marker early in
//! boot, when the kernel's pool may not be ready yet; each power cut mid-write would also leave
//! a new stray file, where one fixed name is taken over by the next write. It keeps the old
//! file's mode and owner by default too, and Cairn's callers set the mode they mean.
//!
//! One writer per path at a time: the fixed temporary name needs the callers to serialize
//! their writes of one file (each holds a lock or writes from one thread).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `data`; a new file gets mode 0o666 less the umask, as with
/// [`std::fs::write`].
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    write_mode(path, data, 0o666)
}

/// Replaces `path` with `data` in a file of `mode` (less the umask), whatever mode the old
/// file had.
pub fn write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace(&mut Disk, path, data, mode)
}

/// The steps whose order makes the replacement durable; a trait so that the tests can watch
/// them and make each one fail.
trait Steps {
    fn write(&mut self, f: &mut File, data: &[u8]) -> io::Result<()> {
        f.write_all(data)
    }
    fn sync_file(&mut self, f: &File) -> io::Result<()> {
        f.sync_all()
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The real file system.
struct Disk;

impl Steps for Disk {}

fn replace(steps: &mut impl Steps, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Beside the target: a rename is atomic only within one file system.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary file a power cut left behind would keep its old mode through a truncating
    // open, so it goes first and the new one is created afresh.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut written = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        steps.write(&mut f, data)?;
        steps.sync_file(&f)?;
        steps.rename(&tmp, path)
    };
    if let Err(e) = written() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself survives a power cut only once the directory is synced.
    steps.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Records each step and fails the one named `fail` (a failing write writes half the data
    /// first, as a full disk would).
    #[derive(Default)]
    struct Watch {
        seen: Vec<String>,
        fail: Option<&'static str>,
    }

    impl Watch {
        fn failing(step: &'static str) -> Watch {
            Watch {
                seen: Vec::new(),
                fail: Some(step),
            }
        }

        fn step(&mut self, name: &'static str, what: String) -> io::Result<()> {
            self.seen.push(what);
            if self.fail == Some(name) {
                return Err(io::Error::other(format!("{name} failed")));
            }
            Ok(())
        }
    }

    impl Steps for Watch {
        fn write(&mut self, f: &mut File, data: &[u8]) -> io::Result<()> {
            if self.fail == Some("write") {
                Disk.write(f, &data[..data.len() / 2])?;
            }
            self.step("write", "write".into())?;
            Disk.write(f, data)
        }
        fn sync_file(&mut self, f: &File) -> io::Result<()> {
            self.step("sync_file", "sync file".into())?;
            Disk.sync_file(f)
        }
        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            let what = format!("rename {} to {}", name(from), name(to));
            self.step("rename", what)?;
            Disk.rename(from, to)
        }
        fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
            self.step("sync_dir", format!("sync dir {}", dir.display()))?;
            Disk.sync_dir(dir)
        }
    }

    fn name(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The directory's entries, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_file_gets_the_data_and_the_mode_and_no_temporary_file_stays() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("key");
        write_mode(&p, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(entries(t.path()), ["key"]);
        write(&t.path().join("empty"), b"").unwrap();
        assert_eq!(fs::read(t.path().join("empty")).unwrap(), b"");
    }

    #[test]
    fn the_old_content_and_mode_are_replaced() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config");
        fs::write(&p, b"a long old content").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_mode(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600, "the mode asked for, not the old file's");
    }

    #[test]
    fn a_temporary_file_left_by_a_power_cut_is_taken_over_with_the_new_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("key");
        let stale = t.path().join(".key.tmp");
        fs::write(&stale, b"half of an older write, longer than the new data").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        write_mode(&p, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(entries(t.path()), ["key"]);
    }

    #[test]
    fn the_file_is_synced_before_the_rename_and_the_directory_after_it() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("head");
        let mut w = Watch::default();
        replace(&mut w, &p, b"seq = 1\n", 0o644).unwrap();
        assert_eq!(
            w.seen,
            [
                "write".to_string(),
                "sync file".to_string(),
                "rename .head.tmp to head".to_string(),
                format!("sync dir {}", t.path().display()),
            ]
        );
        assert_eq!(fs::read(&p).unwrap(), b"seq = 1\n");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole_and_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("partners.json");
        fs::write(&p, b"old").unwrap();
        for step in ["write", "sync_file", "rename"] {
            let e = replace(&mut Watch::failing(step), &p, b"new content", 0o644).unwrap_err();
            assert_eq!(e.to_string(), format!("{step} failed"));
            assert_eq!(fs::read(&p).unwrap(), b"old", "after a failed {step}");
            assert_eq!(
                entries(t.path()),
                ["partners.json"],
                "after a failed {step}"
            );
        }
    }

    #[test]
    fn a_failed_directory_sync_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("passwd");
        let e = replace(&mut Watch::failing("sync_dir"), &p, b"root", 0o644).unwrap_err();
        assert_eq!(e.to_string(), "sync_dir failed");
    }

    #[test]
    fn a_path_without_a_file_name_or_directory_is_an_error() {
        let e = write(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let t = tempfile::tempdir().unwrap();
        let e = write(&t.path().join("missing/file"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
