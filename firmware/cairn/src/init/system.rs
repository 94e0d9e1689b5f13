//! The running system slot and its system layer: the slot u-boot booted (`cairn.slot=` on the
//! kernel command line, set by `boot.scr`) is mounted read-only, and its `system.squashfs` (the
//! pinned Debian packages: the third-party servers) is mounted through a loop device read-only
//! on /usr. Images without a layer boot the same; the services that need it are then not
//! started (their manifests' `requires`).

use cairn_bsp::board::Storage;
use cairn_bsp::mbr::{self, SLOT_PARTITIONS};
use cairn_update::bootstate::SlotName;
use nix::mount::{mount, MsFlags};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The layer's list of packages (`NAME VERSION` lines), relative to its mount point.
const MANIFEST: &str = "share/cairn/packages";
/// Where the running slot's FAT is mounted (read-only).
pub const SLOT_MOUNT: &str = "/run/slot";
/// The layer's file in a slot (as cairn-image names it).
const LAYER_FILE: &str = "system.squashfs";

/// `LOOP_CTL_GET_FREE` and `LOOP_SET_FD` (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;

/// The slot this boot runs from: `cairn.slot=a|b` on the kernel command line; slot A when the
/// bootloader did not say (an image booted some other way).
pub fn running_slot(cmdline: &str) -> SlotName {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.slot="))
        .and_then(SlotName::parse)
        .unwrap_or(SlotName::A)
}

/// The partition device of `slot` on `disk` (`/dev/vda3`).
pub fn slot_device(disk: &str, slot: SlotName) -> String {
    super::data::partition_device(disk, SLOT_PARTITIONS[slot.index()])
}

/// Mounts the running slot and its layer on `mountpoint`; a line for the log either way.
pub fn mount_layer(storage: &Storage, slot: SlotName, mountpoint: &Path) -> anyhow::Result<String> {
    let disk = &storage.device;
    let mut table = [0u8; 512];
    std::fs::File::open(disk)
        .and_then(|mut f| f.read_exact(&mut table))
        .map_err(|e| anyhow::anyhow!("{disk}: reading the MBR: {e}"))?;
    let n = SLOT_PARTITIONS[slot.index()];
    mbr::partition(&table, n)
        .map_err(|e| anyhow::anyhow!("{disk}: slot {slot} (partition {n}): {e}"))?;
    let part = slot_device(disk, slot);
    std::fs::create_dir_all(SLOT_MOUNT)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount(
        Some(part.as_str()),
        SLOT_MOUNT,
        Some("vfat"),
        ro | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount {part} (slot {slot}) on {SLOT_MOUNT}: {e}"))?;
    let file = Path::new(SLOT_MOUNT).join(LAYER_FILE);
    let layer = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!(
                "slot {slot} ({part}): no system layer in this image"
            ))
        }
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    };
    let bytes = layer.metadata()?.len();
    let dev = attach_loop(&layer)
        .map_err(|e| anyhow::anyhow!("loop device for {}: {e}", file.display()))?;
    std::fs::create_dir_all(mountpoint)?;
    mount(
        Some(dev.as_str()),
        mountpoint,
        Some("squashfs"),
        ro,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount {dev} (squashfs) on {}: {e}", mountpoint.display()))?;
    let packages = std::fs::read_to_string(mountpoint.join(MANIFEST))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    Ok(format!(
        "system layer {part}/{LAYER_FILE} (slot {slot}): {} MiB, {packages} packages, mounted read-only on {}",
        bytes >> 20,
        mountpoint.display()
    ))
}

/// A free loop device backed by `file` (opened read-only, so the device is read-only too).
fn attach_loop(file: &std::fs::File) -> std::io::Result<String> {
    let ctl = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // SAFETY: an ioctl without an argument on a descriptor open for the call's length.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let dev = format!("/dev/loop{n}");
    let lo = std::fs::File::options().read(true).open(&dev)?;
    // SAFETY: both descriptors are open for the call's length; the kernel takes its own
    // reference to the backing file.
    let rc = unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_comes_from_the_command_line_and_defaults_to_a() {
        assert_eq!(
            running_slot("console=ttyAMA0 cairn.slot=b panic=-1"),
            SlotName::B
        );
        assert_eq!(running_slot("cairn.slot=a"), SlotName::A);
        // u-boot expands an unset variable to nothing.
        assert_eq!(running_slot("console=ttyAMA0 cairn.slot="), SlotName::A);
        assert_eq!(running_slot("cairn.slot=c"), SlotName::A);
        assert_eq!(slot_device("/dev/mmcblk0", SlotName::B), "/dev/mmcblk0p4");
    }
}
