//! `cairn update`: installs a signed bundle (`apply FILE|-`) and shows the boot state
//! (`status [--json]`), over `cairn_update`. What this phase wires: `apply` verifies and installs
//! into the slot device given with `--slot` and reads it back; `status` reads the two copies of
//! the boot state from the board's disk. Choosing the inactive slot by itself and marking it
//! "try once" wait for the two-slot layout (firmware/update/DESIGN.md, phase 2), so `apply`
//! says so instead of pretending the device will boot it.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_update::bootstate::{BootState, BLOCK_BYTES, COPY_SECTORS};
use cairn_update::install::{self, Policy};
use cairn_update::keys::TrustedKeys;
use cairn_update::slot::FileSlot;
use clap::{Parser, Subcommand};

use crate::sys::paths;

/// Signed updates: apply a bundle, show which system runs and which is good.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Verifies a bundle (`-`: standard input) as it streams into the inactive slot, then
    /// reads the slot back. Refused with a one-line reason; the running slot is never written.
    Apply {
        /// The bundle (`cairn-BOARD-VERSION.cupd`), or `-` for standard input.
        bundle: PathBuf,
        /// The inactive slot's block device (until the two-slot layout picks it itself).
        #[arg(long, value_name = "DEVICE")]
        slot: PathBuf,
        /// Install a build that is not newer than the running one (the owner's choice only).
        #[arg(long)]
        allow_downgrade: bool,
        /// The trusted public keys.
        #[arg(long, value_name = "FILE", default_value = paths::UPDATE_KEYS)]
        keys: PathBuf,
        /// The running image's build number.
        #[arg(long, value_name = "FILE", default_value = paths::BUILD)]
        build: PathBuf,
        /// The board description (its name must match the bundle's).
        #[arg(long, value_name = "FILE", default_value = paths::BOARD)]
        board: PathBuf,
    },
    /// The boot state: the good slot, the slot on trial and its tries left, the last result.
    Status {
        /// As JSON on one line.
        #[arg(long)]
        json: bool,
        /// The disk whose sectors hold the boot state (default: the board's).
        #[arg(long, value_name = "DEVICE")]
        disk: Option<PathBuf>,
        /// The board description.
        #[arg(long, value_name = "FILE", default_value = paths::BOARD)]
        board: PathBuf,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Apply {
            bundle,
            slot,
            allow_downgrade,
            keys,
            build,
            board,
        } => apply(&bundle, &slot, allow_downgrade, &keys, &build, &board),
        Command::Status { json, disk, board } => status(json, disk, &board),
    }
}

fn load_board(path: &Path) -> Result<cairn_bsp::Board> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(cairn_bsp::Board::parse(path, &text)?)
}

fn apply(
    bundle: &Path,
    slot: &Path,
    allow_downgrade: bool,
    keys: &Path,
    build: &Path,
    board: &Path,
) -> Result<()> {
    let board = load_board(board)?;
    let text = std::fs::read_to_string(keys).with_context(|| format!("{}", keys.display()))?;
    let keys = TrustedKeys::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", keys.display()))?;
    let running = std::fs::read_to_string(build).with_context(|| format!("{}", build.display()))?;
    let running: u64 = running
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: not a build number", build.display()))?;
    let policy = Policy {
        keys: &keys,
        board: &board.name,
        running_build: running,
        allow_downgrade,
    };
    let mut target =
        FileSlot::open(slot).with_context(|| format!("opening the slot {}", slot.display()))?;
    let src: Box<dyn Read> = if bundle == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(bundle).with_context(|| format!("{}", bundle.display()))?)
    };
    let manifest = install::apply(src, &policy, &mut target)
        .map_err(|e| anyhow::anyhow!("update refused: {e}"))?;
    println!(
        "installed {} build {} into {} and read it back",
        manifest.version,
        manifest.build,
        slot.display()
    );
    eprintln!(
        "cairn: not marked for booting: this image has one system slot (two-slot layout: phase 2)"
    );
    Ok(())
}

fn status(json: bool, disk: Option<PathBuf>, board: &Path) -> Result<()> {
    let disk = match disk {
        Some(d) => d,
        None => PathBuf::from(load_board(board)?.storage.device),
    };
    let f = std::fs::File::open(&disk).with_context(|| format!("{}", disk.display()))?;
    let mut copies = [[0u8; BLOCK_BYTES]; 2];
    for (copy, sector) in copies.iter_mut().zip(COPY_SECTORS) {
        f.read_exact_at(copy, sector * BLOCK_BYTES as u64)
            .with_context(|| format!("{}: reading sector {sector}", disk.display()))?;
    }
    let found = BootState::newest([&copies[0], &copies[1]]);
    let state = found.unwrap_or_default();
    let trying = state.trying.map(|s| s.to_string());
    if json {
        let v = serde_json::json!({
            "recorded": found.is_some(),
            "active": state.active.to_string(),
            "trying": trying,
            "tries_left": state.tries,
            "last": state.last.to_string(),
        });
        println!("{v}");
    } else {
        let origin = if found.is_some() {
            ""
        } else {
            " (no boot state recorded: as flashed)"
        };
        println!("good slot: {}{origin}", state.active);
        match trying {
            Some(t) => println!("on trial: slot {t}, {} tries left", state.tries),
            None => println!("on trial: none"),
        }
        println!("last result: {}", state.last);
    }
    Ok(())
}
