//! The vault's home directory: its configuration, the encrypted key file, the latest snapshot
//! number and the index of stored chunks. Nothing here is secret in clear: the owner secret is
//! only in `key`, encrypted; chunk ids are keyed hashes.
//!
//! ```text
//! HOME/config      k, n, AEAD and targets, one `name = value` per line
//! HOME/key         the owner secret under the passphrase (see keys::write_key_file)
//! HOME/head        `seq = N`: the latest snapshot
//! HOME/chunks.idx  32-byte ids of chunks known stored (dedup); memory: 32 B each when loaded
//! HOME/lock        locked (File::try_lock) while a command runs, so two puts cannot interleave
//! ```

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, VaultError};
use crate::seal::AeadKind;

/// Where shards are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A local directory (`dir:PATH`).
    Dir(PathBuf),
    /// A running storage node, by its control socket (`node:PATH`): shards go to partners.
    Node(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = VaultError;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("dir", p)) if !p.is_empty() => Ok(Target::Dir(PathBuf::from(p))),
            Some(("node", p)) if !p.is_empty() => Ok(Target::Node(PathBuf::from(p))),
            _ => Err(VaultError::Usage(format!(
                "target `{s}`: unknown kind (expected dir:PATH or node:SOCKET)"
            ))),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Dir(p) => write!(f, "dir:{}", p.display()),
            Target::Node(p) => write!(f, "node:{}", p.display()),
        }
    }
}

/// The vault's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Data shards per chunk.
    pub k: usize,
    /// All shards per chunk.
    pub n: usize,
    /// AEAD for new chunks.
    pub aead: AeadKind,
    /// Where shards go (shard i to target i mod T).
    pub targets: Vec<Target>,
}

impl Config {
    /// Serializes the configuration.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "# Cairn vault configuration\nk = {}\nn = {}\naead = {}\n",
            self.k,
            self.n,
            self.aead.name()
        );
        for t in &self.targets {
            s.push_str(&format!("target = {t}\n"));
        }
        s
    }

    /// Parses a configuration file; unknown names are errors (a typo must not pass silently).
    pub fn decode(text: &str, path: &Path) -> Result<Self> {
        let bad = |line: usize, m: &str| {
            VaultError::Usage(format!("{}:{}: {m}", path.display(), line + 1))
        };
        let (mut k, mut n, mut aead, mut targets) = (None, None, None, Vec::new());
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| bad(i, "expected `name = value`"))?;
            match name {
                "k" => k = Some(value.parse().map_err(|_| bad(i, "k is not a number"))?),
                "n" => n = Some(value.parse().map_err(|_| bad(i, "n is not a number"))?),
                "aead" => {
                    aead = Some(AeadKind::from_name(value).ok_or_else(|| bad(i, "unknown aead"))?)
                }
                "target" => targets.push(value.parse()?),
                other => return Err(bad(i, &format!("unknown setting `{other}`"))),
            }
        }
        let missing = |m: &str| VaultError::Usage(format!("{}: no `{m}` setting", path.display()));
        Ok(Self {
            k: k.ok_or_else(|| missing("k"))?,
            n: n.ok_or_else(|| missing("n"))?,
            aead: aead.ok_or_else(|| missing("aead"))?,
            targets,
        })
    }
}

/// Paths inside a home directory.
#[derive(Clone, Debug)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
}

impl Home {
    /// The home at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Key file.
    pub fn key(&self) -> PathBuf {
        self.dir.join("key")
    }

    /// Latest snapshot number.
    pub fn head(&self) -> PathBuf {
        self.dir.join("head")
    }

    /// Chunk index.
    pub fn index(&self) -> PathBuf {
        self.dir.join("chunks.idx")
    }

    /// Whether a vault exists here (a vault whose secret the caller holds has no key file).
    pub fn exists(&self) -> bool {
        self.key().exists() || self.config().exists()
    }

    /// Takes the home's lock for as long as the returned file lives.
    pub fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // An flock(2) on Linux, released when the file is closed (or its process dies).
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(VaultError::Usage(format!(
                "{}: another cairn vault command is using this vault",
                self.dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// Reads the latest snapshot number (0 = none yet).
    pub fn read_head(&self) -> Result<u64> {
        let path = self.head();
        match fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .strip_prefix("seq = ")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    VaultError::Usage(format!("{}: expected `seq = N`", path.display()))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Records the latest snapshot number.
    pub fn write_head(&self, seq: u64) -> Result<()> {
        let path = self.head();
        cairn_durable::write_mode(&path, format!("seq = {seq}\n").as_bytes(), 0o644)
            .map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_command_at_a_time_holds_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let h = Home::new(t.path());
        let held = h.lock().unwrap();
        let e = h.lock().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: another cairn vault command is using this vault",
                t.path().display()
            )
        );
        drop(held);
        h.lock().unwrap();
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_settings() {
        let c = Config {
            k: 4,
            n: 8,
            aead: AeadKind::Aes256Gcm,
            targets: vec!["dir:/a".parse().unwrap(), "dir:/b c".parse().unwrap()],
        };
        let p = Path::new("/h/config");
        assert_eq!(Config::decode(&c.encode(), p).unwrap(), c);
        let e = Config::decode("k = 4\nkk = 5\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/h/config:2") && e.contains("unknown setting `kk`"),
            "{e}"
        );
        let e = "usb:/x".parse::<Target>().unwrap_err().to_string();
        assert!(e.contains("usb:/x"), "{e}");
    }
}
