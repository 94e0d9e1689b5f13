//! The figures the dashboard shows besides PID 1's: memory (`/proc/meminfo`) and the data
//! partition's space (statvfs).

use std::path::Path;

use anyhow::{Context, Result};

/// Memory, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what could be had without swapping.
    pub available: u64,
}

/// Reads `MemTotal` and `MemAvailable` from a meminfo file.
pub fn memory(meminfo: &Path) -> Result<Memory> {
    let text = std::fs::read_to_string(meminfo)
        .with_context(|| format!("{}: reading", meminfo.display()))?;
    parse_meminfo(&text).with_context(|| format!("{}: no MemTotal/MemAvailable", meminfo.display()))
}

fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some(Memory {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

/// A file system's size, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The file system's size.
    pub total: u64,
    /// What an unprivileged user may still write.
    pub available: u64,
}

/// The size of the file system holding `path`.
pub fn disk(path: &Path) -> Result<Disk> {
    let s =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("{}: statvfs", path.display()))?;
    let unit = s.fragment_size() as u64;
    Ok(Disk {
        total: (s.blocks() as u64).saturating_mul(unit),
        available: (s.blocks_available() as u64).saturating_mul(unit),
    })
}

/// Bytes for a person: `1.5 GiB`, `300 MiB`, `12 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// A duration for a person, to the unit that matters: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 60 => format!("{s} s"),
        _ if m < 60 => format!("{m} min"),
        _ if h < 24 => format!("{h} h {} min", m % 60),
        _ => format!("{d} d {} h", h % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:         251904 kB\nMemFree:          200000 kB\nMemAvailable:     219000 kB\n",
        )
        .unwrap();
        assert_eq!(m.total, 251904 * 1024);
        assert_eq!(m.available, 219000 * 1024);
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotalX: 5 kB\nMemAvailable: 1 kB"), None);
    }

    #[test]
    fn the_disk_holding_a_directory_has_a_size() {
        let d = disk(Path::new("/")).unwrap();
        assert!(d.total > 0 && d.available <= d.total);
        assert!(disk(Path::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 << 20), "300 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(999), "0 s");
        assert_eq!(human_duration(45_000), "45 s");
        assert_eq!(human_duration(12 * 60_000 + 59_000), "12 min");
        assert_eq!(human_duration((3 * 60 + 5) * 60_000), "3 h 5 min");
        assert_eq!(human_duration((2 * 24 + 4) * 3_600_000 + 1), "2 d 4 h");
        assert_eq!(human_duration(u64::MAX), "213503982334 d 14 h");
    }
}
