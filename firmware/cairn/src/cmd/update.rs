//! `cairn update`: installs a signed bundle (`apply FILE|-`) into the slot that is not running
//! and marks it "try once"; shows both slots and the boot state (`status [--json]`), over
//! `cairn_update`. The running slot is the one `boot.scr` named on the kernel command line
//! (`cairn.slot=`); the other slot's partition comes from the MBR. The state and the slots'
//! records are sectors of the board's disk (`cairn_update::disk`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_update::bootstate::{BootState, SlotName, SlotRecord};
use cairn_update::disk::BootDisk;
use cairn_update::install::{self, Policy};
use cairn_update::keys::TrustedKeys;
use cairn_update::slot::{FileSlot, Slot};
use clap::{Parser, Subcommand};

use cairn_supervisor::proto::Response;

use crate::init::system::{running_slot, slot_device};
use crate::sys::paths;

/// Signed updates: apply a bundle, show which system runs and which is good.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Verifies a bundle (`-`: standard input) as it streams into the slot that is not
    /// running, reads the slot back and marks it to be tried at the next boot. Refused with a
    /// one-line reason; the running slot is never written.
    Apply {
        /// The bundle (`cairn-BOARD-VERSION.cupd`), or `-` for standard input.
        bundle: PathBuf,
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
        /// Answer as PID 1's control protocol does (one JSON line on stdout): how PID 1 runs
        /// it for a service's `update` request.
        #[arg(long, hide = true)]
        answer_line: bool,
    },
    /// Both slots' versions, the running one, the good one, the slot on trial and its tries
    /// left, the last result.
    Status {
        /// As JSON on one line.
        #[arg(long)]
        json: bool,
        /// The board description.
        #[arg(long, value_name = "FILE", default_value = paths::BOARD)]
        board: PathBuf,
        /// Answer as PID 1's control protocol does (`{"ok":true,"data":…}`): how PID 1 runs
        /// it for a service's `update-status` request.
        #[arg(long, hide = true)]
        answer_line: bool,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Apply {
            bundle,
            allow_downgrade,
            keys,
            build,
            board,
            answer_line,
        } => {
            let done = apply(&bundle, allow_downgrade, &keys, &build, &board);
            if !answer_line {
                return done.map(|m| println!("{m}"));
            }
            // The console hears it too (stderr is PID 1's console; stdout is the asker's).
            let answer = match done {
                Ok(m) => {
                    eprintln!("cairn: update: {m}");
                    Response::ok(&m)
                }
                Err(e) => {
                    eprintln!("cairn: {e:#}");
                    Response::error(&format!("{e:#}"))
                }
            };
            answer_with(&answer)
        }
        Command::Status {
            json,
            board,
            answer_line,
        } => {
            let found = status_of(&board);
            match (answer_line, found) {
                (true, Ok((v, _))) => answer_with(&Response {
                    data: Some(v),
                    ..Response::ok("")
                }),
                (true, Err(e)) => answer_with(&Response::error(&format!("{e:#}"))),
                (false, Ok((v, text))) => {
                    println!("{}", if json { v.to_string() } else { text });
                    Ok(())
                }
                (false, Err(e)) => Err(e),
            }
        }
    }
}

/// Prints one answer line of PID 1's control protocol. The answer is the outcome: nobody
/// reads the exit code (PID 1 reaps the process as an orphan), and the console has its line.
fn answer_with(answer: &Response) -> Result<()> {
    println!("{}", serde_json::to_string(answer)?);
    Ok(())
}

/// Bounds how long a service's update may leave the installer waiting for the next bytes of
/// its bundle (the install holds the inactive slot and the lock until it ends).
pub const SOCKET_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// PID 1's side of a service's `update` and `update-status` requests: this binary, run as root
/// with the connection as its standard input and output, answers (the bundle follows the
/// request line); nothing of it runs on the supervisor's loop. PID 1 reaps the process as any
/// orphan.
pub fn handoff() -> cairn_supervisor::Handoff {
    cairn_supervisor::Handoff(std::sync::Arc::new(|req, asker, stream| {
        let args: &[&str] = match req.cmd.as_str() {
            "update" => &["update", "apply", "-", "--answer-line"],
            "update-status" => &["update", "status", "--answer-line"],
            _ => return None,
        };
        if req.cmd == "update" {
            crate::sys::log!(
                "update: a bundle from {} is being installed",
                asker.unwrap_or("root")
            );
        }
        Some(spawn_answering(args, stream).map_err(|e| format!("{}: {e}", req.cmd)))
    }))
}

/// Starts `cairn ARGS` answering on `stream`.
fn spawn_answering(args: &[&str], stream: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
    use std::process::{Command, Stdio};
    stream.set_read_timeout(Some(SOCKET_IDLE))?;
    stream.set_write_timeout(Some(SOCKET_IDLE))?;
    let input = std::os::fd::OwnedFd::from(stream.try_clone()?);
    let output = std::os::fd::OwnedFd::from(stream.try_clone()?);
    Command::new("/proc/self/exe")
        .args(args)
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output))
        .stderr(Stdio::inherit())
        .spawn()
        .map(drop)
}

fn load_board(path: &Path) -> Result<cairn_bsp::Board> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(cairn_bsp::Board::parse(path, &text)?)
}

/// The slot this system runs from.
fn running() -> SlotName {
    running_slot(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// A slot whose first write is preceded by `before` (the state and record that say an install
/// is under way): a bundle refused before its first byte is written changes nothing.
struct Guarded<'a, S> {
    inner: S,
    before: Option<Box<dyn FnOnce() -> std::io::Result<()> + 'a>>,
}

impl<S: Slot> Slot for Guarded<'_, S> {
    fn capacity(&mut self) -> std::io::Result<u64> {
        self.inner.capacity()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(f) = self.before.take() {
            f()?;
        }
        self.inner.write_at(offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Installs the bundle; what was done, in one line.
fn apply(
    bundle: &Path,
    allow_downgrade: bool,
    keys: &Path,
    build: &Path,
    board: &Path,
) -> Result<String> {
    let board = load_board(board)?;
    let text = std::fs::read_to_string(keys).with_context(|| format!("{}", keys.display()))?;
    let keys = TrustedKeys::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", keys.display()))?;
    let running_build =
        std::fs::read_to_string(build).with_context(|| format!("{}", build.display()))?;
    let running_build: u64 = running_build
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: not a build number", build.display()))?;
    let policy = Policy {
        keys: &keys,
        board: &board.name,
        running_build,
        allow_downgrade,
    };
    let disk = BootDisk::new(Path::new(&board.storage.device));
    // One install at a time (the command line's and the web's write the same slot): a lock
    // on the disk's node, gone with the process whatever ends it.
    let lock =
        std::fs::File::open(&board.storage.device).with_context(|| board.storage.device.clone())?;
    let _locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("update refused: another update is being installed"))?;
    let state = disk.state()?.unwrap_or_default();
    let running = running();
    let target = running.other();
    // The other slot is the fallback while this one is on trial: it must stay whole.
    anyhow::ensure!(
        state.trying != Some(running),
        "update refused: slot {running} is on trial and slot {target} is its fallback: wait until it is committed"
    );
    let device = slot_device(&board.storage.device, target);
    let inner = FileSlot::open(Path::new(&device))
        .with_context(|| format!("opening slot {target} ({device})"))?;
    let mut slot = Guarded {
        inner,
        before: Some(Box::new(|| {
            disk.write_record(target, None)?;
            let off = state.installing(target);
            if off != state {
                disk.write_state(&off)?;
            }
            Ok(())
        })),
    };
    let src: Box<dyn Read> = if bundle == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(bundle).with_context(|| format!("{}", bundle.display()))?)
    };
    let manifest = install::apply(src, &policy, &mut slot)
        .map_err(|e| anyhow::anyhow!("update refused: {e}"))?;
    drop(slot);
    disk.write_record(
        target,
        Some(&SlotRecord {
            version: manifest.version.clone(),
            build: manifest.build,
        }),
    )?;
    // Read again: the install may have taken the slot off trial.
    let state = disk.state()?.unwrap_or_default();
    disk.write_state(&state.try_once(target))?;
    Ok(format!(
        "installed {} (build {}) into slot {target} ({device}) and read it back; it is tried at the next restart",
        manifest.version, manifest.build,
    ))
}

/// Both slots and the boot state: as JSON, and as the lines `status` prints.
fn status_of(board: &Path) -> Result<(serde_json::Value, String)> {
    let board = load_board(board)?;
    let disk = BootDisk::new(Path::new(&board.storage.device));
    let found = disk.state()?;
    let state: BootState = found.unwrap_or_default();
    let records = [disk.record(SlotName::A)?, disk.record(SlotName::B)?];
    let running = running();
    let trying = state.trying.map(|s| s.to_string());
    let slot = |r: &Option<SlotRecord>| {
        r.as_ref()
            .map(|r| serde_json::json!({"version": r.version, "build": r.build}))
    };
    let v = serde_json::json!({
        "recorded": found.is_some(),
        "running": running.to_string(),
        "active": state.active.to_string(),
        "trying": trying,
        "tries_left": state.tries,
        "last": state.last.to_string(),
        "slots": {"a": slot(&records[0]), "b": slot(&records[1])},
    });
    let mut text = String::new();
    for s in [SlotName::A, SlotName::B] {
        let what = match &records[s.index()] {
            Some(r) => format!("{} (build {})", r.version, r.build),
            None => "nothing recorded".into(),
        };
        let mut marks = Vec::new();
        if s == running {
            marks.push("running".to_string());
        }
        if s == state.active {
            marks.push("good".to_string());
        }
        if state.trying == Some(s) {
            marks.push(format!("on trial, {} tries left", state.tries));
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" [{}]", marks.join(", "))
        };
        text.push_str(&format!("slot {s}: {what}{marks}\n"));
    }
    let origin = if found.is_some() {
        ""
    } else {
        " (no boot state recorded: as flashed)"
    };
    text.push_str(&format!("last result: {}{origin}", state.last));
    Ok((v, text))
}
