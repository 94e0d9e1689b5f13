//! The owner's vault, as setup makes it and the admin pages reach it: made at setup under the
//! admin passphrase (shards go to the storage node), its recovery key shown until the owner
//! confirms its last group, and re-keyed when the passphrase changes.
//!
//! The web never stores the recovery key: it is derived from the vault's key file (opened with
//! the passphrase) whenever it is shown, and kept in memory only while a confirmation is
//! pending. The vault is opened once with the passphrase (an Argon2id derivation,
//! [`KdfParams::m_kib`] of memory: the server does it one at a time on its blocking pool, at
//! setup and at login) and stays open, unlocked, while the owner is logged in: one open vault
//! at a time (its home's lock is the process's), shared by every call. [`OwnerVault::lock`]
//! forgets it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use cairn_vault::home::{Config as VaultConfig, Target};
use cairn_vault::keys::KdfParams;
use cairn_vault::seal::AeadKind;
use cairn_vault::vault::NodeConnector;
use cairn_vault::Vault;

/// Worker threads for an upload: one keeps a large file's batch near 20 MiB (two reached 37 MiB,
/// over the web's 32 MiB budget for an upload); the reading thread works beside it.
const WORKERS: usize = 1;

/// Where a vault's shards go and how they are coded: what the owner's vault and the services'
/// backups ([`crate::backup`]) each have.
#[derive(Clone)]
pub struct Placement {
    /// Where shards go: the storage node (`node:SOCKET`), or `n` directories (tests).
    pub targets: Vec<Target>,
    /// Opens `node:` targets (the binary links the node's client; this crate does not).
    pub nodes: Arc<dyn NodeConnector + Send + Sync>,
    /// Shards needed to read a chunk.
    pub k: usize,
    /// Shards written per chunk.
    pub n: usize,
}

impl Placement {
    /// A new vault's configuration.
    pub fn config(&self) -> VaultConfig {
        VaultConfig {
            k: self.k,
            n: self.n,
            // Measured here once (50 ms): a Pi without AES instructions gets ChaCha20.
            aead: AeadKind::fastest_here(50),
            targets: self.targets.clone(),
        }
    }
}

/// Where the owner's vault lives and where its shards go.
#[derive(Clone)]
pub struct OwnerVault {
    /// Its home (key file, config, head): on a plug `/data/web/vault`.
    pub home: PathBuf,
    /// Where its shards go.
    pub place: Placement,
    /// The key file's passphrase hash cost.
    pub kdf: KdfParams,
    /// The vault while the owner is logged in.
    pub open: Arc<Mutex<Option<Vault>>>,
}

impl OwnerVault {
    /// Makes the vault under `passphrase`; returns its recovery key. Whatever a failure left
    /// half-made is removed, so that setup can be tried again.
    pub fn create(&self, passphrase: &str) -> Result<String> {
        if self.exists() {
            // Never removed here: it holds the owner's key.
            anyhow::bail!("{}: a vault already exists here", self.home.display());
        }
        let made = Vault::init(
            &self.home,
            self.place.config(),
            passphrase.as_bytes(),
            self.kdf,
            &*self.place.nodes,
        );
        match made {
            Ok(mut v) => {
                v.set_workers(WORKERS);
                let key = v.secret().recovery_key();
                *self.guard() = Some(v);
                Ok(key)
            }
            Err(e) => {
                self.remove();
                Err(e).context("creating your vault")
            }
        }
    }

    /// Whether the vault was made.
    pub fn exists(&self) -> bool {
        cairn_vault::home::Home::new(&self.home).exists()
    }

    /// The recovery key (opening the vault with the passphrase if it is not open).
    pub fn recovery_key(&self, passphrase: &str) -> Result<String> {
        self.with_open(passphrase, |v| Ok(v.secret().recovery_key()))
    }

    /// Re-keys the vault from `old` to `new`.
    pub fn change_passphrase(&self, old: &str, new: &str) -> Result<()> {
        self.with_open(old, |v| {
            v.change_passphrase(new.as_bytes(), self.kdf)
                .context("re-keying your vault")
        })
    }

    /// Opens the vault with the passphrase (the owner logged in), if it is not open.
    pub fn unlock(&self, passphrase: &str) -> Result<()> {
        self.with_open(passphrase, |_| Ok(()))
    }

    /// Forgets the open vault (the owner's last session ended).
    pub fn lock(&self) {
        *self.guard() = None;
    }

    /// Runs `f` on the open vault; an error when it is not open (nobody logged in with the
    /// passphrase since the service started).
    pub fn with_unlocked<T>(&self, f: impl FnOnce(&mut Vault) -> Result<T>) -> Result<T> {
        let mut g = self.guard();
        let v = g
            .as_mut()
            .context("your vault is locked: log out and in again to open it")?;
        f(v)
    }

    /// Runs `f` on the vault, opening it with `passphrase` first if it is not open. The caller
    /// has checked the passphrase against the owner's; an open vault is not asked again.
    fn with_open<T>(&self, passphrase: &str, f: impl FnOnce(&mut Vault) -> Result<T>) -> Result<T> {
        let mut g = self.guard();
        if g.is_none() {
            let mut v = Vault::open(&self.home, passphrase.as_bytes(), &*self.place.nodes)
                .context("opening your vault")?;
            v.set_workers(WORKERS);
            *g = Some(v);
        }
        f(g.as_mut().expect("opened above"))
    }

    fn guard(&self) -> MutexGuard<'_, Option<Vault>> {
        // A call that panicked leaves the vault as it was: go on with it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the vault's home (setup failed after making it).
    pub fn remove(&self) {
        self.lock();
        if let Err(e) = std::fs::remove_dir_all(&self.home) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: removing: {e}", self.home.display());
            }
        }
    }
}

/// The recovery key's last group (what the owner types to confirm they wrote it all down).
pub fn last_group(key: &str) -> &str {
    key.rsplit(['-', ' ']).next().unwrap_or(key)
}

/// Whether `typed` is `key`'s last group (case and surrounding spaces do not matter).
pub fn confirms(key: &str, typed: &str) -> bool {
    let want = last_group(key);
    let typed = typed.trim();
    !typed.is_empty() && typed.eq_ignore_ascii_case(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(dir: &std::path::Path) -> OwnerVault {
        OwnerVault {
            home: dir.join("vault"),
            place: Placement {
                targets: (0..3)
                    .map(|i| Target::Dir(dir.join(format!("t{i}"))))
                    .collect(),
                nodes: Arc::new(cairn_vault::vault::NoNode),
                k: 2,
                n: 3,
            },
            kdf: KdfParams {
                m_kib: 64,
                t: 1,
                p: 1,
            },
            open: Arc::default(),
        }
    }

    #[test]
    fn made_shown_again_with_the_passphrase_and_rekeyed() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let key = v.create("first passphrase").unwrap();
        assert!(key.starts_with(cairn_vault::keys::RECOVERY_PREFIX), "{key}");
        assert!(v.exists());
        // Open since it was made.
        assert!(v.with_unlocked(|_| Ok(())).is_ok());
        assert_eq!(v.recovery_key("first passphrase").unwrap(), key);
        v.lock();
        assert!(v.with_unlocked(|_| Ok(())).is_err());
        assert!(v.recovery_key("wrong").is_err());
        v.change_passphrase("first passphrase", "second passphrase")
            .unwrap();
        v.lock();
        assert!(v.recovery_key("first passphrase").is_err());
        assert_eq!(v.recovery_key("second passphrase").unwrap(), key);
        // A second vault over the first: refused, and the first is untouched.
        assert!(v.create("x").is_err());
        assert_eq!(v.recovery_key("second passphrase").unwrap(), key);
    }

    #[test]
    fn a_failed_creation_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = vault(dir.path());
        // A node target where no node can be reached.
        v.place.targets = vec![Target::Node(dir.path().join("none.sock"))];
        let e = v.create("passphrase").unwrap_err();
        assert!(format!("{e:#}").contains("creating your vault"), "{e:#}");
        assert!(!v.home.exists());
    }

    #[test]
    fn the_last_group_confirms() {
        let key = "cairn-recovery-1 ABCD-EFGH-JK23";
        assert_eq!(last_group(key), "JK23");
        assert!(confirms(key, " jk23 "));
        assert!(!confirms(key, "EFGH"));
        assert!(!confirms(key, ""));
    }
}
