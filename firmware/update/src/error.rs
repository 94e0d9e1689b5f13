//! Why a bundle is refused or an install failed, each as one line naming what is at fault.

/// A refused bundle or a failed install. Nothing is written to the running slot in any case;
/// the inactive slot may hold part of a refused bundle, and is then not marked for booting.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The bundle does not start as a Cairn update does.
    #[error("not a Cairn update bundle (no CUPD header)")]
    NotABundle,
    /// The bundle's format version is one this firmware cannot read.
    #[error("bundle format {0} is not one this firmware reads (it reads format 1)")]
    Format(u8),
    /// Signed by a key the device does not trust.
    #[error("signed by an unknown key {0} (not among this device's trusted update keys)")]
    UnknownKey(String),
    /// The signature does not match the manifest: tampered or damaged.
    #[error("wrong signature: the manifest was not signed by key {0} (tampered or damaged)")]
    BadSignature(String),
    /// A signed manifest that does not parse or breaks a rule of the format.
    #[error("bad manifest: {0}")]
    Manifest(String),
    /// Made for another board.
    #[error("bundle is for board {bundle}, this device is {device}")]
    Board {
        /// The bundle's board.
        bundle: String,
        /// This device's board.
        device: String,
    },
    /// Not newer than the running system (anti-rollback).
    #[error("build {bundle} is not newer than the running build {running} (the owner may pass --allow-downgrade)")]
    NotNewer {
        /// The bundle's build number.
        bundle: u64,
        /// The running system's build number.
        running: u64,
    },
    /// The bundle ends early.
    #[error("truncated bundle: it ends inside {0}")]
    Truncated(String),
    /// A part's bytes do not match the signed manifest, or bytes follow the last part.
    #[error("corrupt bundle: {0}")]
    Corrupt(String),
    /// The parts do not fit the slot.
    #[error("not enough room: the bundle needs {need} bytes, the slot holds {have}")]
    NoRoom {
        /// Bytes the parts take in the slot.
        need: u64,
        /// The slot's capacity.
        have: u64,
    },
    /// The slot read back differs from what was written: the medium is failing.
    #[error("slot read back: part {0} differs from what was written (failing medium?)")]
    ReadBack(String),
    /// Reading the bundle or writing the slot failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
}

impl Refusal {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Refusal::Io {
            what: what.into(),
            source,
        }
    }
}
