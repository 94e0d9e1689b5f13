//! Board definitions: `board/boards/NAME.toml`, data rather than code, so adding a board is
//! adding a file. The image builder reads the build-side fields (target, kernel, bootloader);
//! `cairn init` reads the run-side ones (modules, storage, GPIO lines) from the copy in the image.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A board definition. Unknown fields are errors: a typo must not pass silently.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name, equal to the file name without `.toml`.
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Rust target triple the firmware is built for.
    pub target: String,
    /// Hostname set at boot (until the owner names the device).
    #[serde(default = "default_hostname")]
    pub hostname: String,
    pub kernel: Kernel,
    pub bootloader: Bootloader,
    pub storage: Storage,
    /// Kernel modules to load at boot, by name; their dependencies are resolved from
    /// `modules.dep` and loaded first. Empty where every driver is built in.
    #[serde(default)]
    pub modules: Vec<String>,
    /// LEDs by role (`status`, …).
    #[serde(default)]
    pub leds: BTreeMap<String, GpioLine>,
    /// The setup button, if the board has one.
    pub button: Option<GpioLine>,
    /// A power button that asks for a clean poweroff, if the board has one.
    pub power_button: Option<GpioLine>,
}

fn default_hostname() -> String {
    "cairn".to_string()
}

/// How the kernel for this board is obtained and started.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian source package the kernel is built from, e.g. `linux-source-6.1`.
    pub source_package: String,
    /// Exact version of that package (the build checks it and the tarball's sha256).
    pub source_version: String,
    /// sha256 of the source tarball the package ships.
    pub source_sha256: String,
    /// Kernel `ARCH=` value.
    pub arch: String,
    /// Config fragment merged over `tinyconfig`, relative to the board file's directory.
    pub config_fragment: String,
    /// Device tree to put on the boot partition; none where the bootloader passes its own.
    pub dtb: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The bootloader that reads the boot partition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "kind")]
pub enum Bootloader {
    /// u-boot's distro boot: `extlinux/extlinux.conf` on the boot partition.
    UBootExtlinux {
        /// Where the bootloader binary comes from (Debian package and path), for documentation
        /// and for QEMU's `-bios`.
        binary: String,
    },
    /// The Raspberry Pi's GPU firmware (`config.txt` on the boot partition).
    RpiFirmware,
}

/// The boot medium.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Whole-disk block device the image is written to, as the kernel names it.
    pub device: String,
    /// Partition number (1-based) of the data partition on it.
    pub data_partition: u32,
}

/// One GPIO line, named by its chip's label (stable across boots, unlike `gpiochipN`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpioLine {
    pub chip: String,
    pub line: u32,
    #[serde(default)]
    pub active_low: bool,
    /// Bias for inputs.
    #[serde(default)]
    pub pull: Pull,
}

/// Input bias.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    #[default]
    None,
    Up,
    Down,
}

/// Why a board definition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("unknown board '{name}' (known: {known}); add board/boards/{name}.toml")]
    Unknown { name: String, known: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl Board {
    /// Parses a board file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            BoardError::Malformed {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !stem.is_empty() && board.name != stem {
            return Err(BoardError::Malformed {
                path: path.to_path_buf(),
                line: 1,
                message: format!("name = '{}' but the file is {stem}.toml", board.name),
            });
        }
        Ok(board)
    }

    /// Loads `DIR/NAME.toml`, with an error listing the known boards if there is none.
    pub fn load(dir: &Path, name: &str) -> Result<Board, BoardError> {
        let path = dir.join(format!("{name}.toml"));
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name || !path.is_file() {
            return Err(BoardError::Unknown {
                name: name.to_string(),
                known: Self::known(dir).join(", "),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| BoardError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text)
    }

    /// Names of the boards defined in `dir`, sorted.
    pub fn known(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards")
    }

    #[test]
    fn every_board_file_parses() {
        let known = Board::known(&boards_dir());
        assert!(known.contains(&"qemu-virt".to_string()), "{known:?}");
        for name in known {
            let b = Board::load(&boards_dir(), &name).unwrap();
            assert_eq!(b.name, name);
        }
    }

    #[test]
    fn unknown_board_names_the_known_ones() {
        let e = Board::load(&boards_dir(), "toaster").unwrap_err().to_string();
        assert!(e.starts_with("unknown board 'toaster'"), "{e}");
        assert!(e.contains("qemu-virt"), "{e}");
        let e = Board::load(&boards_dir(), "../etc/passwd").unwrap_err();
        assert!(matches!(e, BoardError::Unknown { .. }));
    }

    #[test]
    fn typo_is_an_error_with_its_line() {
        let path = boards_dir().join("qemu-virt.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let bad = text.replacen("hostname", "hostnme", 1);
        let e = Board::parse(&path, &bad).unwrap_err();
        match e {
            BoardError::Malformed { line, message, .. } => {
                let want = bad.lines().position(|l| l.starts_with("hostnme")).unwrap() + 1;
                assert_eq!(line, want);
                assert!(message.contains("hostnme"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
}
