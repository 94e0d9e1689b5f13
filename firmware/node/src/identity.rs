//! The node's identity: an Ed25519 key on the data partition, created on first start.
//!
//! The peer id partners know this plug by derives from it, so a damaged key file is an error
//! that names the file, never a reason to make a new key (that would orphan every pairing).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use libp2p::identity::Keypair;

/// Loads the key at `path`, or creates it (mode 0600, written aside and renamed) if absent.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    let (key, new) = load_or_generate(path)?;
    if new {
        store(path, &key)?;
    }
    Ok(key)
}

/// Loads the key at `path`, or generates a new one without storing it: `(key, true)` means
/// the caller must [`store`] it before the peer id is shown to anyone (so the node can set
/// up its network while the key file is written and synced).
pub fn load_or_generate(path: &Path) -> Result<(Keypair, bool)> {
    match fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map(|k| (k, false))
            .map_err(|e| {
                anyhow!(
                    "{}: not a node key ({e}); move it away only if this plug may get a new \
                     identity (partners would have to pair again)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok((Keypair::generate_ed25519(), true)),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
    }
}

/// Stores `key` at `path` (mode 0600, replaced durably: see `cairn_durable`).
pub fn store(path: &Path, key: &Keypair) -> Result<()> {
    let bytes = key
        .to_protobuf_encoding()
        .context("encoding the node key")?;
    cairn_durable::write_mode(path, &bytes, 0o600)
        .with_context(|| format!("{}: storing the node key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("identity.key");
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn damaged_key_is_an_error_naming_the_file_and_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("identity.key");
        fs::write(&p, b"garbage").unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(
            e.contains("identity.key") && e.contains("not a node key"),
            "{e}"
        );
        assert_eq!(fs::read(&p).unwrap(), b"garbage");
    }
}
