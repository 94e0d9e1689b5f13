//! The qemu-virt board's GPIO chip: a Linux `gpio-sim` device made through configfs, carrying
//! the board's LED and button lines under the board's chip label. The firmware then uses these
//! lines exactly as it uses a real board's; the front panel "presses" the button by setting
//! the line's pull, and reads the LEDs' levels, through the chip's sysfs attributes.

use crate::board::{Board, Pull};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where configfs is mounted.
pub const CONFIGFS: &str = "/sys/kernel/config";
/// Where gpiolib lists its chips in sysfs.
pub const SYSFS_GPIO: &str = "/sys/bus/gpio/devices";

/// Setting up the simulated chip failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The board has no `[gpio_sim]`.
    #[error("board '{0}' has no simulated GPIO chip")]
    NotSimulated(String),
    /// A configfs or sysfs file could not be used.
    #[error("gpio-sim: {path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), SimError> {
    fs::write(path, value).map_err(io_at(path))
}

fn read(path: &Path) -> Result<String, SimError> {
    Ok(fs::read_to_string(path)
        .map_err(io_at(path))?
        .trim()
        .to_string())
}

/// A live simulated chip.
#[derive(Debug, Clone)]
pub struct SimChip {
    /// The chip's device name, `gpiochipN`.
    pub chip_name: String,
    /// `SYSFS_GPIO/gpiochipN`, holding `sim_gpioM/{value,pull}` for every line M.
    sysfs_dir: PathBuf,
}

/// Mounts configfs at `CONFIGFS` unless it is there already (stage 1 mounts only proc, sys,
/// dev and run).
pub fn ensure_configfs() -> Result<(), SimError> {
    let root = Path::new(CONFIGFS);
    if root.join("gpio-sim").is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("configfs"),
        root,
        Some("configfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| SimError::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })
}

/// Creates and enables the board's simulated chip under `configfs` (normally `CONFIGFS`;
/// configfs must be mounted) and sets each input line's pull to the board's idle level.
/// If the chip exists and is live already, it is reused.
pub fn create(board: &Board, configfs: &Path, sysfs_gpio: &Path) -> Result<SimChip, SimError> {
    let sim = board
        .gpio_sim
        .as_ref()
        .ok_or_else(|| SimError::NotSimulated(board.name.clone()))?;
    let lines = board.sim_lines();
    let dev = configfs.join("gpio-sim").join(&sim.label);
    let bank = dev.join("bank0");
    let live = dev.join("live");
    if !(live.is_file() && read(&live)? == "1") {
        fs::create_dir_all(&bank).map_err(io_at(&bank))?;
        write(&bank.join("label"), &sim.label)?;
        let num_lines = lines.iter().map(|l| l.line + 1).max().unwrap_or(1);
        write(&bank.join("num_lines"), &num_lines.to_string())?;
        for l in &lines {
            let dir = bank.join(format!("line{}", l.line));
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            write(&dir.join("name"), &l.name)?;
        }
        write(&live, "1")?;
    }
    let chip_name = read(&bank.join("chip_name"))?;
    let chip = SimChip {
        sysfs_dir: sysfs_gpio.join(&chip_name),
        chip_name,
    };
    if let Some(b) = board.button.as_ref().filter(|b| b.chip == sim.label) {
        // gpio-sim lines idle pulled down; an active-low button must idle high or it would
        // read as held from boot.
        let up = match b.pull {
            Pull::Up => true,
            Pull::Down => false,
            Pull::None => b.active_low,
        };
        chip.set_pull(b.line, up)?;
    }
    Ok(chip)
}

impl SimChip {
    /// Opens an existing chip by its device name (for the front panel, which runs after
    /// `create`).
    pub fn open(chip_name: &str, sysfs_gpio: &Path) -> SimChip {
        SimChip {
            sysfs_dir: sysfs_gpio.join(chip_name),
            chip_name: chip_name.to_string(),
        }
    }

    fn attr(&self, line: u32, name: &str) -> PathBuf {
        self.sysfs_dir.join(format!("sim_gpio{line}")).join(name)
    }

    /// Pulls an input line up or down: what a button wired to it does.
    pub fn set_pull(&self, line: u32, up: bool) -> Result<(), SimError> {
        write(
            &self.attr(line, "pull"),
            if up { "pull-up" } else { "pull-down" },
        )
    }

    /// The level a line is at: for an output, what the firmware drives (an LED's wire).
    pub fn value(&self, line: u32) -> Result<bool, SimError> {
        Ok(read(&self.attr(line, "value"))? == "1")
    }

    /// Presses (`down`) or releases the button on `line`, wired as the board says.
    pub fn press(&self, line: u32, active_low: bool, down: bool) -> Result<(), SimError> {
        // Pressed drives the line to its active level.
        self.set_pull(line, down != active_low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// configfs and sysfs are kernel file systems; a directory tree with the files the kernel
    /// would create stands in for them, to check what is written where.
    #[test]
    fn create_writes_the_chip_and_idles_the_button() {
        let dir = tempfile::tempdir().unwrap();
        let configfs = dir.path().join("config");
        let sysfs = dir.path().join("sys");
        let board_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let board = Board::load(&board_dir, "qemu-virt").unwrap();
        let bank = configfs.join("gpio-sim/cairn-panel/bank0");
        fs::create_dir_all(&bank).unwrap();
        // What the kernel shows once the device is live.
        fs::write(bank.join("chip_name"), "gpiochip1\n").unwrap();
        fs::create_dir_all(sysfs.join("gpiochip1/sim_gpio2")).unwrap();
        fs::create_dir_all(sysfs.join("gpiochip1/sim_gpio0")).unwrap();
        fs::write(sysfs.join("gpiochip1/sim_gpio0/value"), "1\n").unwrap();

        let chip = create(&board, &configfs, &sysfs).unwrap();
        assert_eq!(chip.chip_name, "gpiochip1");
        assert_eq!(
            fs::read_to_string(bank.join("label")).unwrap(),
            "cairn-panel"
        );
        assert_eq!(fs::read_to_string(bank.join("num_lines")).unwrap(), "3");
        assert_eq!(
            fs::read_to_string(bank.join("line0/name")).unwrap(),
            "led-status"
        );
        assert_eq!(
            fs::read_to_string(bank.join("line1/name")).unwrap(),
            "led-alert"
        );
        assert_eq!(
            fs::read_to_string(bank.join("line2/name")).unwrap(),
            "button"
        );
        assert_eq!(
            fs::read_to_string(configfs.join("gpio-sim/cairn-panel/live")).unwrap(),
            "1"
        );
        let pull = sysfs.join("gpiochip1/sim_gpio2/pull");
        assert_eq!(fs::read_to_string(&pull).unwrap(), "pull-up");
        chip.press(2, true, true).unwrap();
        assert_eq!(fs::read_to_string(&pull).unwrap(), "pull-down");
        chip.press(2, true, false).unwrap();
        assert_eq!(fs::read_to_string(&pull).unwrap(), "pull-up");
        assert!(chip.value(0).unwrap());
        let e = chip.value(1).unwrap_err().to_string();
        assert!(
            e.starts_with("gpio-sim: ") && e.contains("sim_gpio1/value"),
            "{e}"
        );
    }

    #[test]
    fn a_board_without_a_simulated_chip_is_refused() {
        let board_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let board = Board::load(&board_dir, "rpi4").unwrap();
        let e = create(&board, Path::new("/nonexistent"), Path::new("/nonexistent"));
        assert_eq!(
            e.unwrap_err().to_string(),
            "board 'rpi4' has no simulated GPIO chip"
        );
    }
}
