//! `cairn-update`: signed A/B updates. A bundle (`cairn-BOARD-VERSION.cupd`) is a header, a
//! manifest signed with Ed25519 and the parts; [`bundle::write`] makes one, [`install::apply`]
//! streams one into the inactive [`slot::Slot`] verifying as it goes, with buffers bounded by
//! [`BUFFER_BYTES`] whatever the bundle's size, then reads the slot back. Only then may the
//! caller mark the slot "try once" in the [`bootstate::BootState`] that the bootloader counts
//! down. The mechanism per board is in `DESIGN.md`; the command line is `cairn update`
//! (firmware/cairn), never here.

pub mod bootstate;
pub mod bundle;
pub mod disk;
pub mod error;
pub mod install;
pub mod keys;
pub mod slot;

pub use error::Refusal;

/// The one data buffer of an install (and of the read-back): the bundle's parts pass through
/// it in pieces of at most this size. With the manifest's bound ([`bundle::MANIFEST_BYTES_MAX`])
/// it is all the memory an install holds, far under the 16 MiB the installer may use.
pub const BUFFER_BYTES: usize = 1 << 20;

/// The installer's memory: one data buffer and the manifest, under the 16 MiB it may use.
const _: () = assert!(BUFFER_BYTES + bundle::MANIFEST_BYTES_MAX <= 16 << 20);
