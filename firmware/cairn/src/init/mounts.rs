//! The kernel's own file systems, mounted before anything else runs.

use nix::mount::{mount, MsFlags};
use std::path::Path;

/// Mounts proc, sys, devtmpfs, /dev/shm, run, tmp and cgroup2; returns the failures (none is fatal).
pub fn mount_kernel_filesystems() -> Vec<anyhow::Error> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        // POSIX shared memory (shm_open): snac keeps its job counters there.
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=4m"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=16m"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777,size=32m"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None),
    ];
    let mut errors = Vec::new();
    for (src, target, fstype, flags, data) in table {
        if let Err(e) = mount_one(src, target, fstype, flags, data) {
            errors.push(e);
        }
    }
    errors
}

fn mount_one(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    let t = Path::new(target);
    if !t.exists() {
        std::fs::create_dir_all(t).map_err(|e| anyhow::anyhow!("mkdir {target}: {e}"))?;
    }
    match mount(Some(src), t, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("mount {fstype} on {target}: {e}")),
    }
}
