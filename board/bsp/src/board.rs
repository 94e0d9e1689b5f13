//! Board definitions: `board/boards/NAME.toml`, data rather than code, so adding a board is
//! adding a file. The image builder reads the build-side fields (target, kernel, bootloader);
//! `cairn init` reads the run-side ones (modules, storage, GPIO lines, timing) from the copy in
//! the image.

use crate::button::Timing;
use crate::pattern::Role;
use crate::ui::UiConfig;
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
    /// The kernel: its config, device tree and command line (its source is pinned once for all boards).
    pub kernel: Kernel,
    /// What boots the kernel.
    pub bootloader: Bootloader,
    /// Where the image lives on the device.
    pub storage: Storage,
    /// Kernel modules to load at boot, by name; their dependencies are resolved from
    /// `modules.dep` and loaded first. Empty where every driver is built in.
    #[serde(default)]
    pub modules: Vec<String>,
    /// LEDs by role: `status` (every pattern readable from it alone) and optionally `alert`
    /// (red). See `pattern::Role`.
    #[serde(default)]
    pub leds: BTreeMap<String, GpioLine>,
    /// The setup button, if the board has one.
    pub button: Option<GpioLine>,
    /// A power button that asks for a clean poweroff, if the board has one.
    pub power_button: Option<GpioLine>,
    /// Pairing window and confirmation timing.
    #[serde(default)]
    pub ui: UiConfig,
    /// Debounce and gesture thresholds of the setup button.
    #[serde(default)]
    pub button_timing: Timing,
    /// A `gpio-sim` chip `cairn init` creates at boot to carry the LED and button lines (the
    /// qemu-virt board only); its lines are those of `leds` and `button` on `label`.
    pub gpio_sim: Option<GpioSim>,
    /// The wired network interface `cairn init` configures at boot.
    #[serde(default)]
    pub network: Network,
}

/// The board's wired network: the interface brought up at boot and configured by DHCPv4.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Kernel name of the Ethernet interface (no udev renames it on the device).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Ask the LAN's DHCP server for an address; without it the interface stays link-local
    /// (IPv6) only.
    #[serde(default = "default_dhcp")]
    pub dhcp: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: default_interface(),
            dhcp: default_dhcp(),
        }
    }
}

fn default_interface() -> String {
    "eth0".to_string()
}

fn default_dhcp() -> bool {
    true
}

/// A simulated GPIO chip (Linux `gpio-sim`, set up through configfs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpioSim {
    /// The chip's label; LED and button lines name it as their `chip`.
    pub label: String,
}

/// A line of the simulated chip: its offset and the name it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLine {
    /// Offset on the chip.
    pub line: u32,
    /// Line name (`led-status`, `button`), visible to `gpioinfo`.
    pub name: String,
}

fn default_hostname() -> String {
    "cairn".to_string()
}

/// How the kernel for this board is built and started. Its source is one pin for all boards
/// (`board/kernel-source.toml`, read by the image builder).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
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
    /// The Raspberry Pi's GPU firmware (`config.txt` on the boot partition), which starts
    /// u-boot from the card; u-boot's distro boot then runs `boot.scr` as on the other boards.
    /// Files are named `PACKAGE:PATH` (Debian arm64 packages pinned in
    /// `board/boot-packages.toml`).
    RpiFirmware {
        /// The u-boot the firmware starts (`kernel=u-boot.bin` in `config.txt`).
        uboot: String,
        /// The GPU firmware files (`bootcode.bin`, `start*.elf`, `fixup*.dat`), copied to the
        /// boot partition under their own names.
        firmware: Vec<String>,
        /// The Raspberry Pi Imager device tags the card is offered for (`devices` in its
        /// `os_list` entry, e.g. `pi3-64bit`).
        imager_devices: Vec<String>,
    },
    /// u-boot and its SPL as one file the SoC's boot ROM loads from a fixed offset of the card
    /// (Allwinner: `u-boot-sunxi-with-spl.bin` at 8 KiB), in the gap before partition 1;
    /// u-boot's distro boot then runs `boot.scr` as on the other boards. Named `PACKAGE:PATH`
    /// (Debian armhf packages pinned in `board/boot-packages.toml`).
    UBootSpl {
        /// The SPL + u-boot image, written to the card as it is.
        binary: String,
        /// Where it starts on the card, in KiB.
        offset_kib: u64,
    },
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
    /// The chip's label as the kernel reports it (`gpiodetect`).
    pub chip: String,
    /// Offset of the line on that chip.
    pub line: u32,
    /// The line is low when the LED is lit or the button pressed.
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
    /// No bias (the board has its own resistor, or the line is an output).
    #[default]
    None,
    /// Pull up: an active-low button to ground reads high when up.
    Up,
    /// Pull down.
    Down,
}

/// The 1-based line of `text` where `needle` first appears (0 if nowhere).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle) || l.contains(needle))
        .map_or(0, |i| i + 1)
}

/// Why a board definition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No such board file.
    #[error("unknown board '{name}' (known: {known}); add board/boards/{name}.toml")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The boards there are.
        known: String,
    },
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The board file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid board definition.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The board file.
        path: PathBuf,
        /// The 1-based line at fault (0: unknown).
        line: usize,
        /// What is wrong.
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
        board
            .validate()
            .map_err(|(key, message)| BoardError::Malformed {
                path: path.to_path_buf(),
                line: line_of(text, &key),
                message,
            })?;
        Ok(board)
    }

    /// Checks what the schema alone cannot; on error returns the key to point at and why.
    fn validate(&self) -> Result<(), (String, String)> {
        for role in self.leds.keys() {
            if Role::from_name(role).is_none() {
                return Err((
                    format!("[leds.{role}]"),
                    format!("unknown LED role '{role}' (known: status, alert)"),
                ));
            }
        }
        if !self.leds.is_empty() && !self.leds.contains_key("status") {
            return Err((
                "[leds.".into(),
                "a board with LEDs needs a `status` LED: every pattern is read from it".into(),
            ));
        }
        self.ui.validate().map_err(|m| ("[ui]".into(), m))?;
        let iface = &self.network.interface;
        // The kernel's limit (IFNAMSIZ, 16 with the NUL); a '/' or space names no interface.
        if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ', ':']) {
            return Err((
                "[network]".into(),
                format!("interface '{iface}' is not a network interface name (1–15 characters, no '/', ':' or space)"),
            ));
        }
        self.button_timing
            .validate()
            .map_err(|m| ("[button_timing]".into(), m))?;
        let mut seen: Vec<(&str, u32, String)> = Vec::new();
        let lines = self
            .leds
            .iter()
            .map(|(role, l)| (format!("[leds.{role}]"), l))
            .chain(self.button.iter().map(|l| ("[button]".to_string(), l)))
            .chain(
                self.power_button
                    .iter()
                    .map(|l| ("[power_button]".to_string(), l)),
            );
        for (key, l) in lines {
            if l.chip.is_empty() {
                return Err((key, "chip label is empty".into()));
            }
            if let Some((_, _, other)) = seen.iter().find(|(c, n, _)| *c == l.chip && *n == l.line)
            {
                return Err((
                    key.clone(),
                    format!(
                        "line {} of chip '{}' is also used by {other}",
                        l.line, l.chip
                    ),
                ));
            }
            seen.push((&l.chip, l.line, key));
        }
        if let Some(sim) = &self.gpio_sim {
            let lines = self.sim_lines();
            if lines.is_empty() {
                return Err((
                    "[gpio_sim]".into(),
                    format!("no LED or button is on the simulated chip '{}'", sim.label),
                ));
            }
            if lines.iter().any(|l| l.line >= 64) {
                return Err((
                    "[gpio_sim]".into(),
                    "simulated lines must be numbered below 64".into(),
                ));
            }
        }
        Ok(())
    }

    /// The lines of the simulated chip, if the board has one, by offset.
    pub fn sim_lines(&self) -> Vec<SimLine> {
        let Some(sim) = &self.gpio_sim else {
            return Vec::new();
        };
        let mut lines: Vec<SimLine> = self
            .leds
            .iter()
            .map(|(role, l)| (format!("led-{role}"), l))
            .chain(self.button.iter().map(|l| ("button".to_string(), l)))
            .filter(|(_, l)| l.chip == sim.label)
            .map(|(name, l)| SimLine { line: l.line, name })
            .collect();
        lines.sort_by_key(|l| l.line);
        lines
    }

    /// The LED line of `role`, if the board has that LED.
    pub fn led(&self, role: Role) -> Option<&GpioLine> {
        self.leds.get(role.name())
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
        let board = Self::parse(&path, &text)?;
        if board.name != name {
            return Err(BoardError::Malformed {
                path,
                line: 1,
                message: format!("name = '{}' but the file is {name}.toml", board.name),
            });
        }
        Ok(board)
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
        let e = Board::load(&boards_dir(), "toaster")
            .unwrap_err()
            .to_string();
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

    #[test]
    fn network_defaults_to_dhcp_on_eth0_and_bad_interface_names_are_refused() {
        let (path, text) = qemu_text();
        let b = Board::parse(&path, &text).unwrap();
        assert_eq!(b.network.interface, "eth0");
        assert!(b.network.dhcp);
        let without: String = text
            .lines()
            .take_while(|l| !l.starts_with("[network]"))
            .collect::<Vec<_>>()
            .join("\n");
        let d = Board::parse(&path, &without).unwrap();
        assert_eq!(d.network, Network::default());
        let bad = format!("{without}\n[network]\ninterface = \"../eth0\"\n");
        let (line, message) = malformed(&path, &bad);
        assert_eq!(
            line,
            bad.lines().position(|l| l == "[network]").unwrap() + 1
        );
        assert!(message.contains("'../eth0'"), "{message}");
    }

    fn qemu_text() -> (PathBuf, String) {
        let path = boards_dir().join("qemu-virt.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    fn malformed(path: &Path, text: &str) -> (usize, String) {
        match Board::parse(path, text).unwrap_err() {
            BoardError::Malformed { line, message, .. } => (line, message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn every_hardware_board_has_a_status_led_and_a_button() {
        for name in ["rpi4", "rpi3", "lime2", "bpi-m2u"] {
            let b = Board::load(&boards_dir(), name).unwrap();
            assert!(b.led(Role::Status).is_some(), "{name}");
            let button = b.button.as_ref().unwrap();
            assert!(button.active_low && button.pull == Pull::Up, "{name}");
            assert!(b.gpio_sim.is_none(), "{name}");
            assert!(b.kernel.dtb.is_some(), "{name}");
            let fragment = boards_dir().join(&b.kernel.config_fragment);
            let config = std::fs::read_to_string(&fragment).unwrap();
            assert!(config.contains("CONFIG_GPIO_CDEV=y"), "{name}");
            assert!(config.contains("# CONFIG_LEDS_GPIO is not set"), "{name}");
        }
        let lime2 = Board::load(&boards_dir(), "lime2").unwrap();
        assert_eq!(lime2.target, "armv7-unknown-linux-musleabihf");
        // PH2 on the A20's single pin controller.
        assert_eq!(lime2.led(Role::Status).unwrap().line, 7 * 32 + 2);
        // The armv7 boards share one kernel and write their SPL at 8 KiB.
        let m2u = Board::load(&boards_dir(), "bpi-m2u").unwrap();
        assert_eq!(m2u.target, lime2.target);
        assert_eq!(m2u.kernel.config_fragment, lime2.kernel.config_fragment);
        // PH21 (green) and PH20 (red) on the R40's single pin controller.
        assert_eq!(m2u.led(Role::Status).unwrap().line, 7 * 32 + 21);
        assert_eq!(m2u.led(Role::Alert).unwrap().line, 7 * 32 + 20);
        for b in [&lime2, &m2u] {
            assert!(
                matches!(b.bootloader, Bootloader::UBootSpl { offset_kib: 8, .. }),
                "{}",
                b.name
            );
        }
    }

    #[test]
    fn qemu_virt_puts_its_panel_on_a_simulated_chip() {
        let b = Board::load(&boards_dir(), "qemu-virt").unwrap();
        assert_eq!(b.gpio_sim.as_ref().unwrap().label, "cairn-panel");
        let lines = b.sim_lines();
        let lines: Vec<(u32, &str)> = lines.iter().map(|l| (l.line, l.name.as_str())).collect();
        assert_eq!(
            lines,
            vec![(0, "led-status"), (1, "led-alert"), (2, "button")]
        );
        assert_eq!(b.ui, UiConfig::default());
        assert_eq!(b.button_timing, Timing::default());
    }

    #[test]
    fn an_unknown_led_role_is_named_with_its_line() {
        let (path, text) = qemu_text();
        let bad = text.replace("[leds.alert]", "[leds.blue]");
        let (line, message) = malformed(&path, &bad);
        assert_eq!(message, "unknown LED role 'blue' (known: status, alert)");
        assert_eq!(bad.lines().nth(line - 1), Some("[leds.blue]"));
    }

    #[test]
    fn leds_without_a_status_led_are_refused() {
        let (path, text) = qemu_text();
        let bad = text.replace("[leds.status]\nchip = \"cairn-panel\"\nline = 0\n", "");
        assert_ne!(bad, text);
        let (_, message) = malformed(&path, &bad);
        assert!(message.contains("needs a `status` LED"), "{message}");
    }

    #[test]
    fn two_uses_of_one_line_are_refused() {
        let (path, text) = qemu_text();
        let bad = text.replace("line = 2\n", "line = 1\n");
        let (line, message) = malformed(&path, &bad);
        assert_eq!(
            message,
            "line 1 of chip 'cairn-panel' is also used by [leds.alert]"
        );
        assert_eq!(bad.lines().nth(line - 1), Some("[button]"));
    }

    #[test]
    fn bad_timing_is_refused_with_the_field() {
        let (path, text) = qemu_text();
        let bad = format!("{text}\n[button_timing]\ncountdown_ms = 20000\n");
        let (line, message) = malformed(&path, &bad);
        assert!(
            message.contains("countdown_ms = 20000 must be below reset_ms"),
            "{message}"
        );
        assert_eq!(bad.lines().nth(line - 1), Some("[button_timing]"));
        let bad = format!("{text}\n[ui]\npairing_window_s = 0\n");
        let (_, message) = malformed(&path, &bad);
        assert!(message.contains("pairing_window_s = 0"), "{message}");
        let bad = format!("{text}\n[ui]\npairing_window = 10\n");
        let (_, message) = malformed(&path, &bad);
        assert!(message.contains("pairing_window"), "{message}");
    }

    #[test]
    fn timing_can_be_set_per_board() {
        let (path, text) = qemu_text();
        let b = Board::parse(
            &path,
            &format!("{text}\n[ui]\npairing_window_s = 5\n[button_timing]\ndebounce_ms = 20\n"),
        )
        .unwrap();
        assert_eq!(b.ui.pairing_window_s, 5);
        assert_eq!(b.button_timing.debounce_ms, 20);
        assert_eq!(b.button_timing.reset_ms, 10_000);
    }

    #[test]
    fn a_simulated_chip_without_lines_is_refused() {
        let (path, text) = qemu_text();
        let bad = text.replace("label = \"cairn-panel\"", "label = \"elsewhere\"");
        let (_, message) = malformed(&path, &bad);
        assert_eq!(
            message,
            "no LED or button is on the simulated chip 'elsewhere'"
        );
    }
}
