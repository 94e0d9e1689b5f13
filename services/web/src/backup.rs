//! The device's own backups: its services' data (Prosody's accounts, rosters and archives) put
//! into a vault of its own on a schedule, encrypted and erasure-coded onto partners like the
//! owner's files, while nobody is logged in.
//!
//! The owner's vault locks when the last session ends, so its key cannot serve a schedule. The
//! backups have their own secret instead, derived one-way from the owner's
//! ([`OwnerSecret::services`]) when the owner's vault is open (setup, a login) and kept in
//! `DIR/secret` (0600). It opens only these backups, which hold what already lies unencrypted
//! on the same disk; the recovery key brings it, and with it the backups, back on a new plug
//! ([`restore`]).
//!
//! A backup reads each source folder whole and stores it under its name (`prosody/`) as one
//! snapshot; when no file's size, time or mode changed since the last one, none is made. A file
//! a service replaces while it is read is stored as it was or as it is (services write by
//! rename), and an archive being appended to ends at a record boundary or within the last one.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use cairn_vault::progress::NoProgress;
use cairn_vault::{OwnerSecret, Vault};

use crate::owner_vault::Placement;

/// The backups' secret in [`Backups::dir`].
pub const SECRET_FILE: &str = "secret";
/// The backups' vault home in [`Backups::dir`].
pub const VAULT_DIR: &str = "vault";
/// What the last backup read (a hash of every file's name, size, time and mode).
const LAST_FILE: &str = "last";
/// Files in one backup, at most: a household's Prosody holds a few hundred.
const FILES_MAX: u64 = 100_000;
/// After a start, the first backup waits this long (the services settle first).
pub const FIRST_DELAY: Duration = Duration::from_secs(120);

/// Where the backups live, what they read, and where their shards go.
#[derive(Clone)]
pub struct Backups {
    /// `secret` and the vault's home: on a plug `/data/web/backup`.
    pub dir: PathBuf,
    /// The folders backed up, each stored under its last component (`/data/prosody` →
    /// `prosody/`).
    pub sources: Vec<PathBuf>,
    /// Where their shards go.
    pub place: Placement,
    /// Time between backups.
    pub every: Duration,
    /// The last backup's outcome, for the dashboard.
    pub status: Arc<Mutex<Option<Outcome>>>,
}

/// What one backup did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// A new snapshot.
    Stored {
        /// Its number.
        snapshot: u64,
        /// Files read.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// Nothing changed since the last one.
    Unchanged,
}

/// The last backup, as the dashboard shows it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it ended.
    pub at: SystemTime,
    /// What it did, or why it failed.
    pub result: std::result::Result<Done, String>,
}

impl Backups {
    fn secret_path(&self) -> PathBuf {
        self.dir.join(SECRET_FILE)
    }

    fn home(&self) -> PathBuf {
        self.dir.join(VAULT_DIR)
    }

    /// Whether backups can run (the owner's vault has handed over their secret).
    pub fn ready(&self) -> bool {
        self.secret_path().exists() && cairn_vault::home::Home::new(self.home()).exists()
    }

    /// Makes the backups' secret and vault from the owner's secret, unless they are there.
    /// Returns whether anything was made.
    pub fn prepare(&self, owner: &OwnerSecret) -> Result<bool> {
        if self.ready() {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}", self.dir.display()))?;
        let secret = owner.services();
        cairn_durable::write_mode(&self.secret_path(), secret.as_bytes(), 0o600)
            .with_context(|| format!("{}: writing", self.secret_path().display()))?;
        if !cairn_vault::home::Home::new(self.home()).exists() {
            Vault::init_held(
                &self.home(),
                self.place.config(),
                secret,
                &*self.place.nodes,
            )
            .context("making the backups' vault")?;
        }
        Ok(true)
    }

    fn secret(&self) -> Result<OwnerSecret> {
        let path = self.secret_path();
        let bytes = fs::read(&path).with_context(|| {
            format!(
                "{}: no backup secret yet (it is made when the owner logs in)",
                path.display()
            )
        })?;
        let b: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!("{}: {} bytes, not 32", path.display(), b.len())
        })?;
        Ok(OwnerSecret::from_bytes(b))
    }

    /// One backup now: every source folder as it is, in one snapshot, unless nothing changed.
    /// Blocking (runs on the blocking pool).
    pub fn run_once(&self) -> Result<Done> {
        let secret = self.secret()?;
        // A service this image does not carry has no folder: nothing of it to keep.
        let present: Vec<&PathBuf> = self.sources.iter().filter(|d| d.is_dir()).collect();
        if present.is_empty() {
            return Ok(Done::Unchanged);
        }
        let mark = fingerprint(&present)?;
        let last = self.dir.join(LAST_FILE);
        if fs::read_to_string(&last).ok().as_deref() == Some(mark.as_str()) {
            return Ok(Done::Unchanged);
        }
        let mut v = Vault::open_held(&self.home(), secret, &*self.place.nodes)
            .context("opening the backups' vault")?;
        // One worker: the web's memory budget (see owner_vault.rs).
        v.set_workers(1);
        let report = v
            .put(&present, &mut NoProgress)
            .context("storing the backup")?;
        cairn_durable::write(&last, mark.as_bytes())
            .with_context(|| format!("{}: writing", last.display()))?;
        Ok(Done::Stored {
            snapshot: report.seq,
            files: report.files,
            bytes: report.bytes,
        })
    }

    /// [`Backups::run_once`], its outcome kept for the dashboard and logged.
    pub fn run_and_record(&self) -> std::result::Result<Done, String> {
        let result = self.run_once().map_err(|e| format!("{e:#}"));
        match &result {
            Ok(Done::Stored {
                snapshot,
                files,
                bytes,
            }) => tracing::info!("backup: snapshot {snapshot}, {files} files, {bytes} bytes"),
            Ok(Done::Unchanged) => tracing::info!("backup: nothing changed"),
            Err(e) => tracing::warn!("backup failed: {e}"),
        }
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(Outcome {
            at: SystemTime::now(),
            result: result.clone(),
        });
        result
    }

    /// How long until the next backup is due: [`FIRST_DELAY`] at the earliest after a start,
    /// `every` after the last one (the `last` file's time).
    pub fn next_due(&self, since_start: Duration) -> Duration {
        let since_last = fs::metadata(self.dir.join(LAST_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        let wait = match since_last {
            Some(age) => self.every.saturating_sub(age),
            None => Duration::ZERO,
        };
        wait.max(FIRST_DELAY.saturating_sub(since_start))
    }
}

/// What a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The snapshot restored.
    pub snapshot: u64,
    /// The folders written, each with its file count.
    pub folders: Vec<(PathBuf, u64)>,
}

/// Brings the backups back on a new plug from the owner's secret (the recovery key): finds
/// the latest snapshot on `backups.place`'s targets, makes the backups' vault and secret in
/// `backups.dir`, and writes each source folder back. A source folder that holds anything is
/// refused before anything is written (stop its service and move it away first), so nothing
/// is lost; a folder missing from the snapshot is skipped. Run as root, files take the owner
/// of their (empty) folder, or, where it was moved away, the user of the folder's name
/// (`/data/prosody` → `prosody`, as the services' accounts are named), so the service can use
/// them.
pub fn restore(backups: &Backups, owner: &OwnerSecret) -> Result<Restored> {
    for dir in &backups.sources {
        if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{}: holds data already; stop its service and move it away first",
                dir.display()
            );
        }
    }
    if cairn_vault::home::Home::new(backups.home()).exists() {
        bail!(
            "{}: backups are set up here already",
            backups.home().display()
        );
    }
    fs::create_dir_all(&backups.dir).with_context(|| format!("{}", backups.dir.display()))?;
    fs::set_permissions(&backups.dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("{}", backups.dir.display()))?;
    let secret = owner.services();
    let v = Vault::restore_held(
        &backups.home(),
        secret.clone(),
        backups.place.targets.clone(),
        &*backups.place.nodes,
    )
    .context("finding the backups")?;
    cairn_durable::write_mode(&backups.secret_path(), secret.as_bytes(), 0o600)
        .with_context(|| format!("{}: writing", backups.secret_path().display()))?;
    let snapshot = v.head()?;
    let tree = v.tree(None)?;
    let mut folders = Vec::new();
    for dir in &backups.sources {
        let name = folder_name(dir)?;
        if tree.find(name.as_bytes()).is_none() {
            continue;
        }
        let owner_of = match fs::metadata(dir) {
            Ok(m) => Some((m.uid(), m.gid())),
            Err(_) => nix::unistd::User::from_name(&name)
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
        };
        fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        v.get(None, &name, dir, &mut NoProgress)
            .with_context(|| format!("restoring {name}/ into {}", dir.display()))?;
        let chown = owner_of.filter(|_| nix::unistd::geteuid().is_root());
        let mut files = 0;
        walk(dir, &mut |path, meta| {
            if meta.is_file() {
                files += 1;
            }
            if let Some((uid, gid)) = chown {
                nix::unistd::chown(
                    path,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .with_context(|| format!("{}: chown", path.display()))?;
            }
            Ok(())
        })?;
        folders.push((dir.clone(), files));
    }
    Ok(Restored { snapshot, folders })
}

fn folder_name(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: a folder to back up needs a name", dir.display()))
}

/// Calls `f` on `dir` and everything below it (links are not followed).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>) -> Result<()> {
    let meta = fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    f(dir, &meta)?;
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}", dir.display()))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            walk(&e.path(), f)?;
        }
    }
    Ok(())
}

/// A hash of every name, size, modification time and mode under the sources: equal when
/// nothing a backup would store changed.
fn fingerprint(sources: &[&PathBuf]) -> Result<String> {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut files = 0u64;
    for dir in sources {
        folder_name(dir)?;
        walk(dir, &mut |path, m| {
            files += 1;
            if files > FILES_MAX {
                bail!("over {FILES_MAX} files under the backed-up folders");
            }
            h.update(path.as_os_str().as_bytes());
            h.update(
                format!(
                    "\0{} {} {} {}\n",
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.mode()
                )
                .as_bytes(),
            );
            Ok(())
        })?;
    }
    Ok(format!("{} {files}", hex::encode(h.finish())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_vault::home::Target;
    use cairn_vault::NoNode;

    fn backups(root: &Path) -> Backups {
        Backups {
            dir: root.join("web/backup"),
            sources: vec![root.join("prosody")],
            place: Placement {
                targets: (0..3)
                    .map(|i| Target::Dir(root.join(format!("partner{i}"))))
                    .collect(),
                nodes: Arc::new(NoNode),
                k: 2,
                n: 3,
            },
            every: Duration::from_secs(86_400),
            status: Arc::default(),
        }
    }

    fn prosody_data(dir: &Path) {
        fs::create_dir_all(dir.join("cairn%2elocal/accounts")).unwrap();
        fs::write(dir.join("cairn%2elocal/accounts/ada.dat"), "return {};").unwrap();
        fs::write(dir.join("cairn%2elocal/archive.list"), vec![7u8; 300_000]).unwrap();
    }

    #[test]
    fn a_backup_needs_the_owner_first_then_stores_only_what_changed() {
        let t = tempfile::tempdir().unwrap();
        let b = backups(t.path());
        prosody_data(&b.sources[0]);
        let e = b.run_once().unwrap_err().to_string();
        assert!(e.contains("no backup secret yet"), "{e}");
        let owner = OwnerSecret::generate().unwrap();
        assert!(b.prepare(&owner).unwrap());
        // A service not in this image: nothing to back up, and no snapshot for it.
        let absent = Backups {
            sources: vec![t.path().join("snac")],
            ..b.clone()
        };
        assert_eq!(absent.run_once().unwrap(), Done::Unchanged);
        assert!(!b.prepare(&owner).unwrap(), "made twice");
        let mode = fs::metadata(b.dir.join(SECRET_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            b.run_once().unwrap(),
            Done::Stored {
                snapshot: 1,
                files: 2,
                bytes: 300_010
            }
        );
        assert_eq!(b.run_once().unwrap(), Done::Unchanged);
        fs::write(b.sources[0].join("cairn%2elocal/accounts/bo.dat"), "x").unwrap();
        assert!(matches!(
            b.run_and_record(),
            Ok(Done::Stored {
                snapshot: 2,
                files: 3,
                ..
            })
        ));
        assert!(b.status.lock().unwrap().as_ref().unwrap().result.is_ok());
    }

    #[test]
    fn the_recovery_key_brings_the_backups_back_and_a_folder_in_use_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let b = backups(t.path());
        prosody_data(&b.sources[0]);
        let owner = OwnerSecret::generate().unwrap();
        b.prepare(&owner).unwrap();
        b.run_once().unwrap();
        let before = fs::read(b.sources[0].join("cairn%2elocal/archive.list")).unwrap();

        // A new plug: its Prosody already started and made a file of its own.
        fs::remove_dir_all(&b.dir).unwrap();
        fs::remove_dir_all(&b.sources[0]).unwrap();
        fs::create_dir_all(&b.sources[0]).unwrap();
        fs::write(b.sources[0].join("new.dat"), "mine").unwrap();
        let again = OwnerSecret::from_recovery_key(&owner.recovery_key()).unwrap();
        let e = restore(&b, &again).unwrap_err().to_string();
        assert!(e.contains("holds data already"), "{e}");
        assert_eq!(
            fs::read_to_string(b.sources[0].join("new.dat")).unwrap(),
            "mine"
        );
        assert!(
            !b.dir.exists(),
            "a refused restore left {}",
            b.dir.display()
        );

        fs::remove_file(b.sources[0].join("new.dat")).unwrap();
        let r = restore(&b, &again).unwrap();
        assert_eq!(r.snapshot, 1);
        assert_eq!(r.folders, vec![(b.sources[0].clone(), 2)]);
        let after = fs::read(b.sources[0].join("cairn%2elocal/archive.list")).unwrap();
        assert_eq!(after, before);
        // Backups go on from there, with the same secret.
        assert!(b.ready());
        fs::write(b.sources[0].join("cairn%2elocal/accounts/cy.dat"), "y").unwrap();
        assert!(matches!(b.run_once(), Ok(Done::Stored { snapshot: 2, .. })));
    }

    #[test]
    fn a_wrong_or_damaged_secret_is_named() {
        let t = tempfile::tempdir().unwrap();
        let b = backups(t.path());
        prosody_data(&b.sources[0]);
        b.prepare(&OwnerSecret::generate().unwrap()).unwrap();
        fs::write(b.dir.join(SECRET_FILE), b"short").unwrap();
        let e = b.run_once().unwrap_err().to_string();
        assert!(e.contains("5 bytes, not 32"), "{e}");
        // Another owner's recovery key finds nothing to restore.
        fs::remove_dir_all(&b.dir).unwrap();
        fs::remove_dir_all(&b.sources[0]).unwrap();
        let e = format!(
            "{:#}",
            restore(&b, &OwnerSecret::generate().unwrap()).unwrap_err()
        );
        assert!(e.contains("no snapshot"), "{e}");
    }

    #[test]
    fn the_first_backup_waits_for_the_services_then_every_period() {
        let t = tempfile::tempdir().unwrap();
        let b = backups(t.path());
        assert_eq!(b.next_due(Duration::ZERO), FIRST_DELAY);
        assert_eq!(b.next_due(FIRST_DELAY * 2), Duration::ZERO);
        fs::create_dir_all(&b.dir).unwrap();
        fs::write(b.dir.join(LAST_FILE), "x").unwrap();
        let due = b.next_due(FIRST_DELAY * 2);
        assert!(
            due > b.every - Duration::from_secs(60) && due <= b.every,
            "{due:?}"
        );
    }
}
