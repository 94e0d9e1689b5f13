//! The system layer: the image's partition 3, a squashfs of pinned Debian packages (the
//! third-party servers), mounted read-only on /usr. Images without one boot the same; the
//! services that need it are then not started (their manifests' `requires`).

use cairn_bsp::board::Storage;
use cairn_bsp::mbr::{self, SYSTEM_PARTITION};
use nix::mount::{mount, MsFlags};
use std::io::Read;
use std::path::Path;

/// The layer's list of packages (`NAME VERSION` lines), relative to its mount point.
const MANIFEST: &str = "share/cairn/packages";

/// Mounts the layer on `mountpoint` if the disk has one; a line for the log either way.
pub fn mount_layer(storage: &Storage, mountpoint: &Path) -> anyhow::Result<String> {
    let disk = &storage.device;
    let mut table = [0u8; 512];
    std::fs::File::open(disk)
        .and_then(|mut f| f.read_exact(&mut table))
        .map_err(|e| anyhow::anyhow!("{disk}: reading the MBR: {e}"))?;
    let Ok(p) = mbr::partition(&table, SYSTEM_PARTITION) else {
        return Ok("no system layer in this image".into());
    };
    let part = super::data::partition_device(disk, SYSTEM_PARTITION);
    std::fs::create_dir_all(mountpoint)?;
    mount(
        Some(part.as_str()),
        mountpoint,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount {part} (squashfs) on {}: {e}", mountpoint.display()))?;
    let packages = std::fs::read_to_string(mountpoint.join(MANIFEST))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    Ok(format!(
        "system layer {part}: {} MiB, {packages} packages, mounted read-only on {}",
        p.bytes() >> 20,
        mountpoint.display()
    ))
}
