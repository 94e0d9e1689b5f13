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
//!
//! The vault stores files, not links, but snac counts a post's hard links to know whether a
//! timeline still holds it: each folder's groups of hard-linked files go beside it in the
//! snapshot (`hard-links/NAME.json`), and a restore links them again.
//!
//! A plug restored from the recovery key finds, when its backups are set up at a login, the
//! earlier plug's backups on the partners: it takes their vault over and makes no backup of
//! its own (which would become the latest) until `cairn backup restore` brought them back, or
//! the owner chose "Back up now".

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
/// In [`Backups::dir`] while an earlier plug's backups wait to be restored: their snapshot.
const WAITING_FILE: &str = "restore-waiting";
/// The folder, in [`Backups::dir`] and in each snapshot, of each source's hard links.
pub const LINKS_DIR: &str = "hard-links";
/// Largest hard-link list read back (100 000 files' names fit well below it).
const LINKS_BYTES_MAX: u64 = 16 << 20;

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
    /// A `fresh` owner (setup) has no backups anywhere yet; otherwise (a login) the partners
    /// are asked first for an earlier plug's, which then wait to be restored
    /// ([`Backups::waiting`]). Returns whether anything was made.
    pub fn prepare(&self, owner: &OwnerSecret, fresh: bool) -> Result<bool> {
        if self.ready() {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}", self.dir.display()))?;
        let secret = owner.services();
        if !cairn_vault::home::Home::new(self.home()).exists() {
            let earlier = if fresh {
                None
            } else {
                match Vault::restore_held(
                    &self.home(),
                    secret.clone(),
                    self.place.targets.clone(),
                    &*self.place.nodes,
                ) {
                    Ok(v) => Some(v.head()?),
                    Err(cairn_vault::VaultError::NoSnapshot(_)) => None,
                    Err(e) => return Err(e).context("looking for earlier backups"),
                }
            };
            match earlier {
                Some(snapshot) => {
                    cairn_durable::write(
                        &self.dir.join(WAITING_FILE),
                        snapshot.to_string().as_bytes(),
                    )
                    .context("writing")?;
                    tracing::info!(
                        "backups: an earlier plug's, snapshot {snapshot}, wait to be restored"
                    );
                }
                None => {
                    Vault::init_held(
                        &self.home(),
                        self.place.config(),
                        secret.clone(),
                        &*self.place.nodes,
                    )
                    .context("making the backups' vault")?;
                }
            }
        }
        // Last: the secret is what makes them ready.
        cairn_durable::write_mode(&self.secret_path(), secret.as_bytes(), 0o600)
            .with_context(|| format!("{}: writing", self.secret_path().display()))?;
        Ok(true)
    }

    /// The snapshot of an earlier plug's backups that waits to be restored, if one does.
    pub fn waiting(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join(WAITING_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
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
        if let Some(snapshot) = self.waiting() {
            bail!(
                "the backups of an earlier plug (snapshot {snapshot}) wait to be restored \
                 (`cairn backup restore`); \"Back up now\" starts this plug's own instead"
            );
        }
        let mark = fingerprint(&present)?;
        let last = self.dir.join(LAST_FILE);
        if fs::read_to_string(&last).ok().as_deref() == Some(mark.as_str()) {
            return Ok(Done::Unchanged);
        }
        let links = self.dir.join(LINKS_DIR);
        write_links(&present, &links)?;
        let mut v = Vault::open_held(&self.home(), secret, &*self.place.nodes)
            .context("opening the backups' vault")?;
        // One worker: the web's memory budget (see owner_vault.rs).
        v.set_workers(1);
        let mut paths = present.clone();
        paths.push(&links);
        let report = v
            .put(&paths, &mut NoProgress)
            .context("storing the backup")?;
        cairn_durable::write(&last, mark.as_bytes())
            .with_context(|| format!("{}: writing", last.display()))?;
        Ok(Done::Stored {
            snapshot: report.seq,
            files: report.files,
            bytes: report.bytes,
        })
    }

    /// The owner's "Back up now": an earlier plug's backups waiting to be restored are left
    /// where they are (older snapshots), and this plug's own begin.
    pub fn start_own(&self) -> Result<()> {
        let waiting = self.dir.join(WAITING_FILE);
        match fs::remove_file(&waiting) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("{}: removing", waiting.display()))
            }
            _ => Ok(()),
        }
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
    let home = cairn_vault::home::Home::new(backups.home());
    if home.exists() {
        let own = home.read_head().unwrap_or(0);
        if own > 0 && backups.waiting().is_none() {
            bail!(
                "{}: this plug has stored backups of its own (snapshot {own}); they are the \
                 latest, so there is nothing earlier to restore",
                backups.home().display()
            );
        }
        // Made at a login with nothing stored yet, or taken over from the earlier plug: found
        // again on the partners below.
        fs::remove_dir_all(backups.home())
            .with_context(|| format!("{}: removing", backups.home().display()))?;
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
        let list = format!("{LINKS_DIR}/{name}.json");
        if tree.find(list.as_bytes()).is_some() {
            let tmp = backups.dir.join(format!("{name}.links"));
            v.get(None, &list, &tmp, &mut NoProgress)
                .with_context(|| format!("restoring {list}"))?;
            let read = read_links(&tmp);
            fs::remove_file(&tmp).with_context(|| format!("{}: removing", tmp.display()))?;
            relink(dir, &read?).with_context(|| {
                format!(
                    "{}: the files are back, but not linked as they were",
                    dir.display()
                )
            })?;
        }
        let mut files = 0;
        walk(dir, &mut |_, meta| {
            files += u64::from(meta.is_file());
            Ok(())
        })?;
        if let Some(ids) = owner_of {
            give(dir, ids)?;
        }
        folders.push((dir.clone(), files));
    }
    backups.start_own()?;
    // `cairn backup restore` runs as root; the web goes on with these backups as its own user.
    if let Some(web) = backups.dir.parent() {
        let m = fs::metadata(web).with_context(|| format!("{}", web.display()))?;
        give(&backups.dir, (m.uid(), m.gid()))?;
    }
    Ok(Restored { snapshot, folders })
}

/// Gives everything under `dir` to `(uid, gid)` when running as root (as a restore does);
/// otherwise what this user wrote is its own already.
fn give(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    walk(dir, &mut |path, _| {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("{}: chown", path.display()))
    })
}

/// Groups of paths (relative to their folder) that are one file.
type Links = Vec<Vec<String>>;

/// The hard-linked files of `dir`: each group of two or more of its paths that are one file.
fn hard_links(dir: &Path) -> Result<Links> {
    let mut by_inode: std::collections::BTreeMap<(u64, u64), Vec<String>> = Default::default();
    walk(dir, &mut |path, m| {
        if m.is_file() && m.nlink() > 1 {
            let rel = path.strip_prefix(dir).expect("walked from dir");
            let rel = rel.to_str().with_context(|| {
                format!("{}: a hard link whose name is not UTF-8", path.display())
            })?;
            by_inode
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.to_owned());
        }
        Ok(())
    })?;
    // A link to a file outside the folder has one name here: nothing to link again.
    Ok(by_inode.into_values().filter(|g| g.len() > 1).collect())
}

/// Writes each source's hard links to `links/NAME.json`, and only those.
fn write_links(sources: &[&PathBuf], links: &Path) -> Result<()> {
    if links.exists() {
        fs::remove_dir_all(links).with_context(|| format!("{}: removing", links.display()))?;
    }
    fs::create_dir_all(links).with_context(|| format!("{}", links.display()))?;
    for dir in sources {
        let name = folder_name(dir)?;
        if name == LINKS_DIR {
            bail!(
                "{}: a folder to back up cannot be named {LINKS_DIR}",
                dir.display()
            );
        }
        let groups = hard_links(dir)?;
        if !groups.is_empty() {
            let file = links.join(format!("{name}.json"));
            let text = serde_json::to_vec(&groups).context("hard links")?;
            fs::write(&file, text).with_context(|| format!("{}: writing", file.display()))?;
        }
    }
    Ok(())
}

fn read_links(file: &Path) -> Result<Links> {
    let size = fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    if size > LINKS_BYTES_MAX {
        bail!("the list of hard links is {size} bytes, over {LINKS_BYTES_MAX}");
    }
    let bytes = fs::read(file).with_context(|| format!("{}", file.display()))?;
    serde_json::from_slice(&bytes).context("the list of hard links is not a list of groups")
}

/// Makes each group one file again: the first path's, linked in place of the others (each by
/// a rename over it, so a cut leaves a copy or the link, never neither).
fn relink(dir: &Path, groups: &Links) -> Result<()> {
    let inside = |rel: &str| -> Result<PathBuf> {
        let p = Path::new(rel);
        let plain = !rel.is_empty()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        let path = dir.join(p);
        if !plain || !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            bail!("{rel:?} is not a file of the folder");
        }
        Ok(path)
    };
    for group in groups {
        let Some((first, others)) = group.split_first() else {
            continue;
        };
        let first = inside(first)?;
        for other in others {
            let other = inside(other)?;
            let tmp = other.with_file_name(".cairn-link");
            let _ = fs::remove_file(&tmp);
            fs::hard_link(&first, &tmp).with_context(|| format!("{}: linking", first.display()))?;
            fs::rename(&tmp, &other).with_context(|| format!("{}: replacing", other.display()))?;
        }
    }
    Ok(())
}

fn folder_name(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: a folder to back up needs a name", dir.display()))
}

/// Calls `f` on `dir` and everything below it (links are not followed). What a service
/// deletes below `dir` while it is walked (snac's queue) is skipped, as the vault's put does.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>) -> Result<()> {
    walk_from(dir, true, f)
}

fn walk_from(
    dir: &Path,
    root: bool,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    let gone = |e: &std::io::Error| !root && e.kind() == std::io::ErrorKind::NotFound;
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if gone(&e) => return Ok(()),
        r => r.with_context(|| format!("{}", dir.display()))?,
    };
    if meta.is_dir() {
        let listed = fs::read_dir(dir).and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
        let mut names = match listed {
            Err(e) if gone(&e) => return Ok(()),
            r => r.with_context(|| format!("{}", dir.display()))?,
        };
        f(dir, &meta)?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            walk_from(&e.path(), false, f)?;
        }
    } else {
        f(dir, &meta)?;
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
        assert!(b.prepare(&owner, true).unwrap());
        // A service not in this image: nothing to back up, and no snapshot for it.
        let absent = Backups {
            sources: vec![t.path().join("snac")],
            ..b.clone()
        };
        assert_eq!(absent.run_once().unwrap(), Done::Unchanged);
        assert!(!b.prepare(&owner, true).unwrap(), "made twice");
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
        b.prepare(&owner, true).unwrap();
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
        // The web's folder belongs to the web's user; the restore runs as root on a plug.
        let web = b.dir.parent().unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            nix::unistd::chown(web, Some(4321.into()), Some(4321.into())).unwrap();
        }
        let r = restore(&b, &again).unwrap();
        assert_eq!(r.snapshot, 1);
        if root {
            for f in [b.dir.join(SECRET_FILE), b.dir.join(VAULT_DIR)] {
                assert_eq!(fs::metadata(&f).unwrap().uid(), 4321, "{}", f.display());
            }
        }
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
        b.prepare(&OwnerSecret::generate().unwrap(), true).unwrap();
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

    /// A snac-like folder: a post kept once and linked from two timelines, a lone file, and a
    /// file also linked from outside the folder.
    fn snac_data(root: &Path, dir: &Path) {
        fs::create_dir_all(dir.join("object/ab")).unwrap();
        fs::create_dir_all(dir.join("user/owner/private")).unwrap();
        fs::create_dir_all(dir.join("user/owner/public")).unwrap();
        fs::write(dir.join("object/ab/abc.json"), r#"{"type":"Note"}"#).unwrap();
        fs::hard_link(
            dir.join("object/ab/abc.json"),
            dir.join("user/owner/private/abc.json"),
        )
        .unwrap();
        fs::hard_link(
            dir.join("object/ab/abc.json"),
            dir.join("user/owner/public/abc.json"),
        )
        .unwrap();
        fs::write(dir.join("user/owner/key.json"), "{}").unwrap();
        fs::write(dir.join("server.json"), "{}").unwrap();
        fs::hard_link(dir.join("server.json"), root.join("elsewhere.json")).unwrap();
    }

    fn inode(p: &Path) -> (u64, u64) {
        let m = fs::metadata(p).unwrap();
        (m.ino(), m.nlink())
    }

    #[test]
    fn hard_links_come_back_as_links() {
        let t = tempfile::tempdir().unwrap();
        let mut b = backups(t.path());
        b.sources.push(t.path().join("snac"));
        prosody_data(&b.sources[0]);
        snac_data(t.path(), &b.sources[1]);
        let owner = OwnerSecret::generate().unwrap();
        b.prepare(&owner, true).unwrap();
        // Two of Prosody's, five of snac's, and the list of snac's links.
        assert!(matches!(b.run_once(), Ok(Done::Stored { files: 8, .. })));

        // A new plug.
        fs::remove_dir_all(&b.dir).unwrap();
        for d in &b.sources {
            fs::remove_dir_all(d).unwrap();
        }
        let r = restore(&b, &owner).unwrap();
        assert_eq!(r.folders[1], (b.sources[1].clone(), 5));
        let snac = &b.sources[1];
        let (ino, links) = inode(&snac.join("object/ab/abc.json"));
        assert_eq!(links, 3);
        assert_eq!(inode(&snac.join("user/owner/private/abc.json")).0, ino);
        assert_eq!(inode(&snac.join("user/owner/public/abc.json")).0, ino);
        assert_eq!(
            fs::read_to_string(snac.join("user/owner/public/abc.json")).unwrap(),
            r#"{"type":"Note"}"#
        );
        // The link from outside was not the folder's to keep; the folder's file is.
        assert_eq!(inode(&snac.join("server.json")).1, 1);
        assert_eq!(inode(&snac.join("user/owner/key.json")).1, 1);
        assert!(!b.sources[0].join(LINKS_DIR).exists());
    }

    #[test]
    fn a_damaged_list_of_links_links_nothing_outside_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("snac");
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(dir.join("a/one"), "1").unwrap();
        fs::write(dir.join("a/two"), "2").unwrap();
        fs::write(t.path().join("outside"), "keep").unwrap();
        for (bad, said) in [
            (vec!["a/one", "../outside"], "\"../outside\" is not a file"),
            (
                vec!["/etc/passwd", "a/two"],
                "\"/etc/passwd\" is not a file",
            ),
            (vec!["a/one", ""], "\"\" is not a file"),
            (vec!["a/one", "a/missing"], "\"a/missing\" is not a file"),
            (vec!["a", "a/one"], "\"a\" is not a file"),
        ] {
            let group = bad.iter().map(|s| s.to_string()).collect();
            let e = relink(&dir, &vec![group]).unwrap_err().to_string();
            assert!(e.contains(said), "{e}");
        }
        assert_eq!(
            fs::read_to_string(t.path().join("outside")).unwrap(),
            "keep"
        );
        assert_eq!(fs::read_to_string(dir.join("a/two")).unwrap(), "2");
        // Not a list of groups, or too long to read.
        let file = t.path().join("links.json");
        fs::write(&file, r#"{"a": 1}"#).unwrap();
        let e = read_links(&file).unwrap_err().to_string();
        assert!(e.contains("not a list of groups"), "{e}");
        fs::File::create(&file)
            .unwrap()
            .set_len(LINKS_BYTES_MAX + 1)
            .unwrap();
        let e = read_links(&file).unwrap_err().to_string();
        assert!(e.contains("over"), "{e}");
    }

    #[test]
    fn a_restored_plug_keeps_the_earlier_backups_the_latest_until_they_are_back() {
        let t = tempfile::tempdir().unwrap();
        let b = backups(t.path());
        prosody_data(&b.sources[0]);
        let owner = OwnerSecret::generate().unwrap();
        // A login on a plug that never had backups: nothing on the partners, a vault of its own.
        b.prepare(&owner, false).unwrap();
        assert_eq!(b.waiting(), None);
        assert!(matches!(b.run_once(), Ok(Done::Stored { snapshot: 1, .. })));
        // Its own backups are the latest: nothing earlier to restore over them.
        let e = restore(&b, &owner).unwrap_err().to_string();
        assert!(e.contains("holds data already"), "{e}");
        let moved = t.path().join("prosody.old");
        fs::rename(&b.sources[0], &moved).unwrap();
        let e = restore(&b, &owner).unwrap_err().to_string();
        assert!(e.contains("backups of its own (snapshot 1)"), "{e}");

        // A new plug: set up from the recovery key, Prosody made an empty folder of its own,
        // the owner logs in. The earlier backups are found and wait.
        fs::remove_dir_all(&b.dir).unwrap();
        fs::create_dir_all(b.sources[0].join("new%2elocal")).unwrap();
        fs::write(b.sources[0].join("new%2elocal/fresh.dat"), "fresh").unwrap();
        let again = OwnerSecret::from_recovery_key(&owner.recovery_key()).unwrap();
        assert!(b.prepare(&again, false).unwrap());
        assert!(b.ready());
        assert_eq!(b.waiting(), Some(1));
        let e = b.run_once().unwrap_err().to_string();
        assert!(e.contains("wait to be restored"), "{e}");
        // The owner follows the README: the fresh folder moved away, then the restore.
        fs::rename(&b.sources[0], t.path().join("prosody.new")).unwrap();
        let r = restore(&b, &again).unwrap();
        assert_eq!(r.snapshot, 1);
        assert_eq!(
            fs::read(b.sources[0].join("cairn%2elocal/archive.list")).unwrap(),
            fs::read(moved.join("cairn%2elocal/archive.list")).unwrap()
        );
        assert_eq!(b.waiting(), None);
        fs::write(b.sources[0].join("cairn%2elocal/accounts/cy.dat"), "y").unwrap();
        assert!(matches!(b.run_once(), Ok(Done::Stored { snapshot: 2, .. })));

        // Or the owner starts afresh ("Back up now"): the earlier snapshots stay, older.
        fs::remove_dir_all(&b.dir).unwrap();
        b.prepare(&again, false).unwrap();
        assert_eq!(b.waiting(), Some(2));
        b.start_own().unwrap();
        assert!(matches!(b.run_once(), Ok(Done::Stored { snapshot: 3, .. })));
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
