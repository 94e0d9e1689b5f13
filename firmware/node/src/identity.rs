//! The node's identity: an Ed25519 key on the data partition, created on first start; and the
//! owners' statements that let it act for them.
//!
//! The peer id partners know this plug by derives from it, so a damaged key file is an error
//! that names the file, never a reason to make a new key (that would orphan every pairing).
//!
//! An owner (a vault) names itself by its owner key (Ed25519, derived from the owner secret:
//! `cairn_vault::keys::OwnerKey`) and signs a [`statement`] naming an epoch and this plug's peer
//! id (the epoch grows with each statement, so a holder knows the owner's current plug). The node
//! keeps those statements — never the owner key — in `owners.json` (mode 0600) and sends one
//! with each request it makes for that owner; holders check it with [`verify`]. A plug restored
//! from the recovery key gets a statement for its own new peer id and is the same owner at once.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use libp2p::identity::Keypair;

use crate::wire::OwnerAuth;

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

/// The bytes an owner signs to let the plug `peer` act for it from `epoch` on. Epoch 0 is the
/// statement before epochs (v1, what `owners.json` of older nodes keeps): still valid, and
/// superseded by any later one.
pub fn statement(epoch: u64, peer: &libp2p::PeerId) -> Vec<u8> {
    let mut m = if epoch == 0 {
        b"cairn owner statement v1 ".to_vec()
    } else {
        let mut m = b"cairn owner statement v2 ".to_vec();
        m.extend_from_slice(&epoch.to_le_bytes());
        m
    };
    m.extend_from_slice(&peer.to_bytes());
    m
}

/// The epoch of a new statement: the signer's clock in Unix microseconds (fine enough that a
/// plug's statements signed in one burst stay close to it), above `current` (the epoch of the
/// statement the node has now) so a plug's own statements only grow. A plug restored later
/// than the old one last signed supersedes it; a signer whose clock is far behind is refused
/// by the holders with the epoch that superseded it.
pub fn next_epoch(current: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    now.max(current.saturating_add(1))
}

/// Whether `auth` is its owner's statement for `peer`. Checked strictly: a plain Ed25519 check
/// accepts a small-order key (e.g. all zeros) with a zero signature for about one peer in four,
/// an owner anyone could speak for.
pub fn verify(auth: &OwnerAuth, peer: &libp2p::PeerId) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(&auth.sig);
    ed25519_dalek::VerifyingKey::from_bytes(&auth.owner)
        .is_ok_and(|pk| pk.verify_strict(&statement(auth.epoch, peer), &sig).is_ok())
}

/// Most owners one node acts for (each vault home using it is one; bounds `owners.json`).
pub const OWNERS_MAX: usize = 16;

/// One statement as `owners.json` keeps it (hex).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    owner: String,
    /// Absent in files of nodes before epochs: their v1 statements are epoch 0.
    #[serde(default)]
    epoch: u64,
    sig: String,
}

/// The statements in `path` (none if it does not exist); a damaged file is an error naming it.
pub fn load_owners(path: &Path) -> Result<Vec<OwnerAuth>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    };
    let damaged = |why: String| anyhow!("{}: damaged owner statements: {why}", path.display());
    let list: Vec<Stored> = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    list.iter()
        .take(OWNERS_MAX)
        .map(|s| {
            let mut a = OwnerAuth {
                owner: [0; 32],
                epoch: s.epoch,
                sig: [0; 64],
            };
            hex::decode_to_slice(&s.owner, &mut a.owner)
                .and_then(|()| hex::decode_to_slice(&s.sig, &mut a.sig))
                .map_err(|e| damaged(format!("owner {}: {e}", s.owner)))?;
            Ok(a)
        })
        .collect()
}

/// Stores the statements at `path` (mode 0600, replaced durably: see `cairn_durable`).
pub fn store_owners(path: &Path, owners: &[OwnerAuth]) -> Result<()> {
    let list: Vec<Stored> = owners
        .iter()
        .map(|a| Stored {
            owner: hex::encode(a.owner),
            epoch: a.epoch,
            sig: hex::encode(a.sig),
        })
        .collect();
    let bytes = serde_json::to_vec_pretty(&list)?;
    cairn_durable::write_mode(path, &bytes, 0o600)
        .with_context(|| format!("{}: storing the owner statements", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_verify_for_their_peer_only_and_are_kept_private() {
        let owner = cairn_vault::OwnerSecret::from_bytes([7; 32]).keys();
        let owner = owner.owner_key();
        let (me, other) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let auth = OwnerAuth {
            owner: owner.public(),
            epoch: 7,
            sig: owner.sign(&statement(7, &me)),
        };
        assert!(verify(&auth, &me));
        assert!(
            !verify(&auth, &other),
            "a statement is only good for its plug"
        );
        let mut forged = auth;
        forged.owner[0] ^= 1;
        assert!(!verify(&forged, &me));
        let mut later = auth;
        later.epoch += 1;
        assert!(!verify(&later, &me), "the epoch is signed too");
        let v1 = OwnerAuth {
            epoch: 0,
            sig: owner.sign(&[&b"cairn owner statement v1 "[..], &me.to_bytes()].concat()),
            ..auth
        };
        assert!(verify(&v1, &me), "statements before epochs are epoch 0");
        // A small-order key with a zero signature: a plain check passes it for some peers.
        let weak = OwnerAuth {
            owner: [0; 32],
            epoch: 0,
            sig: [0; 64],
        };
        for _ in 0..32 {
            assert!(!verify(&weak, &libp2p::PeerId::random()));
        }

        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("owners.json");
        assert!(load_owners(&p).unwrap().is_empty());
        store_owners(&p, &[auth]).unwrap();
        assert_eq!(load_owners(&p).unwrap(), vec![auth]);
        let old = format!(
            "[{{\"owner\": \"{}\", \"sig\": \"{}\"}}]",
            hex::encode(v1.owner),
            hex::encode(v1.sig)
        );
        fs::write(&p, old).unwrap();
        assert_eq!(load_owners(&p).unwrap(), vec![v1], "an older node's file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, b"[{\"owner\": \"zz\", \"sig\": \"00\"}]").unwrap();
        let e = load_owners(&p).unwrap_err().to_string();
        assert!(e.contains("owners.json: damaged owner statements"), "{e}");
    }

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
