//! The board's LEDs, setup button and (on qemu-virt) front panel, started by `cairn init` right
//! after stage 1. Three small threads, each asleep until something happens:
//! - LEDs: plays what `SharedUi` says, waking at the pattern's next change or a UI change;
//! - button: waits for line edge events (or the next gesture deadline) and feeds the gestures;
//! - panel (qemu-virt only): the virtio-serial port `cairn.panel`, which presses the gpio-sim
//!   button line and reports the LED lines as read back from the simulated chip.
//!
//! On a claimed device, a short press that opens a pairing window also asks the storage node,
//! through its control socket, to pair during that window (one attempt at a time, on a fourth
//! short-lived thread); a pairing completes the window, so the LEDs confirm it. A press in a
//! window whose attempt ended unpaired tries again. An unclaimed device's window is for the claim.
//!
//! Nothing here is fatal: a missing chip or line is logged and the device runs without it.
//! Memory: three threads with 64 KiB stacks (four while pairing), one 1 KiB line buffer, a few
//! small structs.

use crate::sys::log;
use cairn_bsp::linux::{self, gpiosim, BootClock, CdevPin, EdgePin};
use cairn_bsp::pairing::Opened;
use cairn_bsp::panel::{ToGuest, ToHost, LINE_BYTES_MAX};
use cairn_bsp::pattern::Update;
use cairn_bsp::{
    Action, Board, Button, ButtonEvent, Clock, Completion, Health, LedDriver, Role, SharedUi, Ui,
};
use cairn_node::control::PairOutcome;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Written on the data partition before a factory reset starts wiping it, removed when the wipe
/// is complete: a reset cut short by a power loss is finished at the next boot.
pub const RESET_MARKER: &str = ".factory-reset";
/// Present on the data partition once the device has an owner (the setup UI writes it when a
/// claim completes); without it the LEDs say "setup needed".
pub const CLAIMED: &str = "cairn/claimed";
/// The front panel's virtio-serial port name.
pub const PANEL_PORT: &str = "cairn.panel";
pub use crate::sys::paths::NODE_SOCKET;
const STACK: usize = 64 * 1024;

/// What init keeps of the board: the shared user-interface state.
#[derive(Clone)]
pub struct BoardUi {
    /// The LEDs' and pairing window's state; the setup UI and the network complete claims and
    /// pairings through it.
    pub ui: Arc<SharedUi<BootClock>>,
    data_dir: PathBuf,
    /// Whether naming the device sets the system's hostname (the device; never a test host).
    sets_hostname: bool,
    /// The storage node's pairing, for the button and for the owner's page alike.
    pairing: Pairing,
    /// Until when (ms since boot) a short press wipes the device: the owner asked for a factory
    /// reset from the page, with the passphrase.
    reset_armed: Arc<Mutex<Option<u64>>>,
}

impl BoardUi {
    /// A board UI over `data_dir` that leaves the hostname alone (tests).
    #[cfg(test)]
    pub fn new(
        ui: Arc<SharedUi<BootClock>>,
        data_dir: PathBuf,
        pairer: Arc<dyn Pairer>,
    ) -> BoardUi {
        BoardUi {
            ui,
            data_dir,
            sets_hostname: false,
            pairing: Pairing::new(pairer),
            reset_armed: Arc::default(),
        }
    }

    /// For `for_ms` from now, the next short press wipes the device instead of opening the
    /// pairing window.
    pub fn arm_reset(&self, for_ms: u64) {
        *self.reset_armed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(self.ui.now_ms() + for_ms);
    }

    /// Whether a press now is the one an armed reset waits for (disarming it either way).
    pub fn take_reset(&self) -> bool {
        let until = self
            .reset_armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        until.is_some_and(|t| self.ui.now_ms() <= t)
    }

    /// The pairing attempts (one at a time) and the last one's outcome.
    pub fn pairing(&self) -> &Pairing {
        &self.pairing
    }

    /// Opens the pairing window as a short press of the button does, and asks the node to
    /// pair in it; in a window still open after an attempt that ended unpaired, tries again for
    /// the time left. `Err` while an attempt is under way (with the seconds left).
    pub fn open_pairing(&self) -> Result<u64, String> {
        match self.ui.on_button(ButtonEvent::ShortPress) {
            Some(Action::PairingOpened(Opened::New { closes_at_ms, .. })) => {
                let left = closes_at_ms.saturating_sub(self.ui.now_ms());
                self.pairing
                    .start(self.ui.clone(), Duration::from_millis(left));
                Ok(left)
            }
            Some(Action::PairingOpened(Opened::AlreadyOpen { closes_at_ms, .. })) => {
                let left = closes_at_ms.saturating_sub(self.ui.now_ms());
                if self.pairing.again(&self.ui, left) {
                    return Ok(left);
                }
                Err(format!(
                    "the pairing window is already open, {} s left",
                    left.div_ceil(1000)
                ))
            }
            _ => Err("the pairing window did not open".into()),
        }
    }

    /// Whether the device has been claimed by its owner (setup's marker is there).
    pub fn claimed(&self) -> bool {
        self.data_dir.join(CLAIMED).exists()
    }

    /// The data partition's mount point.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether naming the device sets the system's hostname.
    pub fn sets_hostname(&self) -> bool {
        self.sets_hostname
    }

    /// The services are up: show whether the device still needs setting up, or is healthy.
    pub fn booted(&self) {
        self.ui.set_health(if self.claimed() {
            Health::Healthy
        } else {
            Health::SetupNeeded
        });
    }
}

/// The line the front panel's button is on, and the simulated chip it belongs to.
struct SimButton {
    chip: gpiosim::SimChip,
    line: u32,
    active_low: bool,
}

/// The simulated chip's LED lines, to report their levels as the panel sees them.
struct SimLeds {
    chip: gpiosim::SimChip,
    lines: Vec<(Role, u32, bool)>,
}

impl SimLeds {
    /// The board's LEDs that are lines of the simulated chip.
    fn new(board: &Board, chip: gpiosim::SimChip) -> SimLeds {
        let label = board.gpio_sim.as_ref().map(|s| s.label.as_str());
        let lines = Role::ALL
            .into_iter()
            .filter_map(|r| {
                let l = board.led(r)?;
                (Some(l.chip.as_str()) == label).then_some((r, l.line, l.active_low))
            })
            .collect();
        SimLeds { chip, lines }
    }

    /// Whether the LED of `role` is lit, read back from the chip (what a person would see).
    fn lit(&self, role: Role) -> Option<bool> {
        let &(_, line, active_low) = self.lines.iter().find(|(r, _, _)| *r == role)?;
        match self.chip.value(line) {
            Ok(high) => Some(high != active_low),
            Err(e) => {
                log!("error: front panel: {e}");
                None
            }
        }
    }
}

/// The panel port, shared by the LED thread (reports) and the panel thread (answers).
type Port = Arc<Mutex<Option<File>>>;

/// Starts the board's LEDs, button and front panel; finishes an interrupted factory reset first.
pub fn start(board: &Board, data_dir: &Path) -> BoardUi {
    if data_dir.join(RESET_MARKER).exists() {
        log!("factory reset: finishing the wipe before anything starts");
        wipe(data_dir, true);
    }
    let mut config = board.ui;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for problem in config.apply_cmdline(&cmdline) {
        log!("error: {problem}; keeping the board's setting");
    }
    let ui = Arc::new(SharedUi::new(Ui::new(config), BootClock));
    let handle = BoardUi {
        ui: ui.clone(),
        data_dir: data_dir.to_path_buf(),
        sets_hostname: true,
        pairing: Pairing::new(Arc::new(NodeSocket(PathBuf::from(NODE_SOCKET)))),
        reset_armed: Arc::default(),
    };

    let sim = board.gpio_sim.as_ref().and_then(|_| {
        let made = gpiosim::ensure_configfs().and_then(|()| {
            gpiosim::create(
                board,
                Path::new(gpiosim::CONFIGFS),
                Path::new(gpiosim::SYSFS_GPIO),
            )
        });
        match made {
            Ok(chip) => {
                log!("board: simulated GPIO chip {} ready", chip.chip_name);
                Some(chip)
            }
            Err(e) => {
                log!("error: {e}; the board runs without LEDs and button");
                None
            }
        }
    });
    let port: Port = Arc::new(Mutex::new(None));
    // The panel opens before the LEDs start, so a host already listening sees "booting".
    let panel = sim.as_ref().and_then(|_| match open_panel() {
        Ok(file) => {
            let reader = file.try_clone();
            *port.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
            match reader {
                Ok(r) => Some(r),
                Err(e) => {
                    log!("error: front panel: {e}");
                    None
                }
            }
        }
        Err(e) => {
            log!("error: front panel: {e}");
            None
        }
    });

    let mut leds = Vec::new();
    for role in Role::ALL {
        let Some(line) = board.led(role) else {
            leds.push(None);
            continue;
        };
        match linux::request_led(line) {
            Ok(led) => {
                log!(
                    "board: {} LED on {} line {}",
                    role.name(),
                    line.chip,
                    line.line
                );
                leds.push(Some(led))
            }
            Err(e) => {
                log!("error: {} LED: {e}; running without it", role.name());
                leds.push(None);
            }
        }
    }
    let alert = leds.pop().flatten();
    let status = leds.pop().flatten();
    if board.leds.is_empty() {
        log!("board: no LEDs on this board");
    }
    let sim_leds = sim.as_ref().map(|chip| SimLeds::new(board, chip.clone()));
    let driver = LedDriver::new(status, alert, ui.now_ms());
    spawn("leds", {
        let (ui, port) = (ui.clone(), port.clone());
        move || led_loop(&ui, driver, sim_leds.as_ref(), &port)
    });

    if let Some(line) = &board.button {
        match linux::request_button(line) {
            Ok(pin) => {
                log!("board: setup button on {} line {}", line.chip, line.line);
                let button = Button::new(pin, line.active_low, board.button_timing);
                let (ui, data) = (ui.clone(), data_dir.to_path_buf());
                let board_ui = handle.clone();
                spawn("button", move || button_loop(&ui, button, &data, &board_ui));
            }
            Err(e) => log!("error: setup button: {e}; running without it"),
        }
    } else {
        log!("board: no setup button on this board");
    }

    if let (Some(chip), Some(reader)) = (sim, panel) {
        let label = board.gpio_sim.as_ref().map(|s| s.label.as_str());
        let button = board
            .button
            .as_ref()
            .filter(|b| Some(b.chip.as_str()) == label)
            .map(|b| SimButton {
                chip: chip.clone(),
                line: b.line,
                active_low: b.active_low,
            });
        let leds = SimLeds::new(board, chip);
        spawn("panel", move || {
            panel_loop(
                reader,
                &Panel {
                    port,
                    button,
                    leds,
                    ui,
                },
            )
        });
    }
    handle
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = crate::sys::helpers::spawn(name, STACK, f) {
        log!("error: {name} thread: {e}");
    }
}

/// Writes one line to the panel if a host is listening; drops it otherwise (the port is
/// non-blocking: a panel nobody reads must never stall the LEDs).
fn report(port: &Port, msg: &ToHost) {
    let mut g = port.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = g.as_mut() {
        let _ = f.write(format!("{msg}\n").as_bytes());
    }
}

fn led_loop(
    ui: &SharedUi<BootClock>,
    mut driver: LedDriver<CdevPin>,
    sim: Option<&SimLeds>,
    port: &Port,
) {
    let mut shown = None;
    let mut failing = false;
    loop {
        let (pattern, ui_deadline, seen) = ui.pattern();
        let now = ui.now_ms();
        driver.show(pattern, now);
        if shown != Some(pattern) {
            shown = Some(pattern);
            log!("leds: {}", pattern.name());
            report(
                port,
                &ToHost::Pattern {
                    name: pattern.name().into(),
                    ms: now,
                },
            );
        }
        let next = match driver.update(now) {
            Ok(Update {
                changed,
                next_change_ms,
            }) => {
                failing = false;
                for (role, on) in changed {
                    let on = sim.and_then(|s| s.lit(role)).unwrap_or(on);
                    report(
                        port,
                        &ToHost::Led {
                            name: role.name().into(),
                            on,
                            ms: now,
                        },
                    );
                }
                next_change_ms
            }
            Err(e) => {
                if !failing {
                    log!("error: LEDs: {e}; retrying each second");
                    failing = true;
                }
                Some(now + 1000)
            }
        };
        let until = match (next, ui_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ui.wait(seen, until);
    }
}

fn button_loop(
    ui: &Arc<SharedUi<BootClock>>,
    mut button: Button<EdgePin>,
    data_dir: &Path,
    board: &BoardUi,
) {
    let pairing = board.pairing();
    loop {
        match button.poll(ui.now_ms()) {
            Ok(events) => {
                for ev in events {
                    describe(ev);
                    if ev == ButtonEvent::ShortPress && board.take_reset() {
                        log!("factory reset: confirmed by a press, as the owner's page asked");
                        factory_reset(data_dir);
                        continue;
                    }
                    match ui.on_button(ev) {
                        Some(Action::FactoryReset) => factory_reset(data_dir),
                        Some(Action::PairingOpened(Opened::New { closes_at_ms, .. })) => {
                            let left = closes_at_ms.saturating_sub(ui.now_ms());
                            log!("button: pairing window open for {} s", left.div_ceil(1000));
                            // A plug nobody owns yet pairs with nobody: its window is for the
                            // claim (which closes it early; an attempt would go on without it).
                            if board.claimed() {
                                pairing.start(ui.clone(), Duration::from_millis(left));
                            } else {
                                log!("pairing: not before the device is claimed; this window is for the claim");
                            }
                        }
                        Some(Action::PairingOpened(Opened::AlreadyOpen {
                            closes_at_ms, ..
                        })) => {
                            let left = closes_at_ms.saturating_sub(ui.now_ms());
                            let s = left.div_ceil(1000);
                            if board.claimed() && pairing.again(ui, left) {
                                log!("button: pairing again, {s} s left in the window");
                            } else {
                                log!("button: pairing window already open, {s} s left");
                            }
                        }
                        None => {}
                    }
                }
            }
            Err(e) => {
                log!("error: setup button: {e}; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let timeout = button
            .next_deadline_ms()
            .map(|d| d.saturating_sub(ui.now_ms()));
        if let Err(e) = button.pin_mut().wait_edge(timeout) {
            log!("error: setup button: {e}; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Asks the storage node to pair with the one other plug whose window is open too.
pub trait Pairer: Send + Sync {
    /// Blocks until the node paired, refused an overlap, or `window` ended; `Err` is a line for
    /// the console (the node is not running, the socket broke, …).
    fn pair(&self, window: Duration) -> Result<PairOutcome, String>;
}

/// The node's control socket (the device's `Pairer`).
pub struct NodeSocket(pub PathBuf);

impl Pairer for NodeSocket {
    fn pair(&self, window: Duration) -> Result<PairOutcome, String> {
        cairn_node::control::Client::connect(&self.0)
            .and_then(|mut c| c.pair(window))
            .map_err(|e| e.to_string())
    }
}

/// One pairing attempt at a time, each on its own short-lived thread.
#[derive(Clone)]
pub struct Pairing {
    pairer: Arc<dyn Pairer>,
    busy: Arc<AtomicBool>,
    /// The last attempt's outcome (its console line without `pairing: `), for the owner's page.
    last: Arc<Mutex<Option<String>>>,
}

impl Pairing {
    /// Pairing through `pairer`.
    pub fn new(pairer: Arc<dyn Pairer>) -> Pairing {
        Pairing {
            pairer,
            busy: Arc::new(AtomicBool::new(false)),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts an attempt for a window that stays open `window` more; false (and a console line)
    /// if one is still under way.
    pub fn start<C: Clock + 'static>(&self, ui: Arc<SharedUi<C>>, window: Duration) -> bool {
        if self.busy.swap(true, Ordering::AcqRel) {
            log!(
                "pairing: the previous attempt is still finishing; this window is for a claim only"
            );
            return false;
        }
        let me = self.clone();
        let spawned = crate::sys::helpers::spawn("pairing", STACK, move || {
            let outcome = me.pairer.pair(window);
            let line = settle(&ui, outcome);
            log!("{line}");
            *me.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(line.trim_start_matches("pairing: ").to_string());
            me.busy.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            log!("error: pairing thread: {e}");
            self.busy.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// A press in a window still open: if the last attempt ended unpaired (a refusal or
    /// nobody found, which leave the window open, as the console's "press again" says), a
    /// new one for the `left_ms` left; false while one is under way or too little is left.
    pub fn again<C: Clock + 'static>(&self, ui: &Arc<SharedUi<C>>, left_ms: u64) -> bool {
        // Less than an attempt needs to settle is no attempt.
        if self.busy() || left_ms < 5_000 {
            return false;
        }
        self.start(ui.clone(), Duration::from_millis(left_ms))
    }

    /// Whether an attempt is under way.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// How the last attempt since boot ended, if one did.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Applies the node's answer to the window; returns the console line. A pairing completes the
/// window (the LEDs confirm); a refusal or nobody found leaves it to expire, still open for a
/// claim from the setup page.
pub fn settle<C: Clock>(ui: &SharedUi<C>, outcome: Result<PairOutcome, String>) -> String {
    match outcome {
        Ok(PairOutcome::Paired { peer, code }) => match ui.complete(Completion::Pairing) {
            Ok(_) => format!("pairing: paired with {peer}, code {code}"),
            Err(e) => format!(
                "pairing: paired with {peer}, code {code}, after the window closed ({e})"
            ),
        },
        Ok(PairOutcome::Unconfirmed { peer }) => format!(
            "pairing: refused: {peer} was in pairing mode but did not confirm; press again"
        ),
        Ok(PairOutcome::Overlap { candidates }) => format!(
            "pairing: refused: {} plugs are in pairing mode ({}); press again when only one other is",
            candidates.len(),
            candidates.join(", ")
        ),
        Ok(PairOutcome::NoneFound) => {
            "pairing: no other plug in pairing mode on this network".to_string()
        }
        Err(e) => format!("pairing: the storage node cannot pair now: {e}"),
    }
}

/// One console line per gesture, for whoever reads the console.
fn describe(ev: ButtonEvent) {
    match ev {
        ButtonEvent::Pressed { .. } => {}
        ButtonEvent::ShortPress => log!("button: short press"),
        ButtonEvent::LongPress => log!("button: released after 2–5 s: nothing to do"),
        ButtonEvent::CountdownStarted => {
            log!("button: held 5 s: factory reset counting down; release to cancel")
        }
        ButtonEvent::ReleaseNow => log!("button: held 10 s: release now to factory-reset"),
        ButtonEvent::ResetCancelled => {
            log!("button: released before 10 s: factory reset cancelled")
        }
        ButtonEvent::FactoryReset => log!("button: factory reset"),
    }
}

/// Wipes the data partition's configuration and keys, then asks PID 1 to reboot. The marker
/// goes first and stays: the next boot wipes again before any service starts, catching what
/// services wrote while stopping, and a wipe cut short by a power loss.
fn factory_reset(data_dir: &Path) {
    let marker = data_dir.join(RESET_MARKER);
    // Durable, directory included: a power cut right after must still find the marker.
    match cairn_durable::write(&marker, b"") {
        Ok(()) => {}
        Err(e) => log!("error: factory reset: {}: {e}", marker.display()),
    }
    retire_identity();
    wipe(data_dir, false);
    log!("factory reset: data wiped; rebooting");
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), nix::sys::signal::SIGTERM)
    {
        log!("error: factory reset: cannot ask init to reboot: {e}");
    }
}

/// Longest a factory reset waits for the partners to hear that this plug's identity goes.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// Asks the storage node to tell its partners that this plug's identity is going, so that its
/// key, if read off the card later, opens nothing there. Best effort: a node that is down, or
/// partners out of reach, do not stop the reset (the console says how many heard).
fn retire_identity() {
    let told = cairn_node::control::Client::connect(Path::new(NODE_SOCKET))
        .and_then(|mut c| c.retire(RETIRE_WAIT));
    match told {
        Ok((partners, heard)) => {
            log!("factory reset: {heard} of {partners} partners told this plug's identity is gone")
        }
        Err(e) => log!("factory reset: the partners could not be told: {e}"),
    }
}

/// Most bytes a file may have to be overwritten before it is removed: keys, settings and
/// books are small; shards and segments are sealed for their owners already.
const SHRED_BYTES_MAX: u64 = 64 * 1024;

/// Overwrites every regular file of at most [`SHRED_BYTES_MAX`] under `dir` with zeros, synced,
/// so that the plug's keys (identity, TLS, the vault's key file) are gone from the file system
/// before their names are. An SD card's controller may keep old blocks: the wipe's trim asks it
/// to drop them too.
fn shred_small_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            shred_small_files(&path);
        } else if kind.is_file() {
            let len = entry.metadata().map_or(u64::MAX, |m| m.len());
            if len == 0 || len > SHRED_BYTES_MAX {
                continue;
            }
            let zeroed = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(&vec![0; len as usize])?;
                    f.sync_all()
                });
            if let Err(e) = zeroed {
                log!("error: factory reset: overwriting {}: {e}", path.display());
            }
        }
    }
}

/// Asks the file system to discard its free blocks (FITRIM), so that an SD card may erase what
/// the wipe freed; best effort (not every card or file system can).
fn trim(data_dir: &Path) {
    // struct fstrim_range { u64 start, len, minlen }.
    let mut range: [u64; 3] = [0, u64::MAX, 0];
    nix::ioctl_readwrite!(fitrim, b'X', 121, [u64; 3]);
    match File::open(data_dir) {
        // SAFETY: FITRIM reads and writes one fstrim_range, which `range` is.
        Ok(f) => match unsafe { fitrim(std::os::fd::AsRawFd::as_raw_fd(&f), &mut range) } {
            Ok(_) => log!("factory reset: {} bytes trimmed", range[1]),
            Err(e) => log!("factory reset: trim not done: {e}"),
        },
        Err(e) => log!("factory reset: trim not done: {e}"),
    }
}

/// Removes everything on the data partition but `lost+found` (fsck's), and last the marker if
/// `done` and nothing was left behind. Small files are overwritten first
/// ([`shred_small_files`]), and the freed blocks trimmed after.
fn wipe(data_dir: &Path, done: bool) {
    shred_small_files(data_dir);
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) => {
            log!("error: factory reset: {}: {e}", data_dir.display());
            return;
        }
    };
    let mut failed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "lost+found" || name == RESET_MARKER {
            continue;
        }
        let path = entry.path();
        let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = r {
            log!("error: factory reset: removing {}: {e}", path.display());
            failed = true;
        }
    }
    nix::unistd::sync();
    trim(data_dir);
    // With something left behind, keep the marker: the next boot tries again.
    if done && !failed {
        let _ = std::fs::remove_file(data_dir.join(RESET_MARKER));
        nix::unistd::sync();
    }
}

/// Finds the virtio-serial port named `cairn.panel` and opens it, non-blocking.
fn open_panel() -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    for entry in std::fs::read_dir("/sys/class/virtio-ports")?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PANEL_PORT {
            let dev = Path::new("/dev").join(entry.file_name());
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&dev)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dev.display())));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no virtio-serial port named {PANEL_PORT}"),
    ))
}

/// What the panel thread works with.
struct Panel {
    port: Port,
    button: Option<SimButton>,
    leds: SimLeds,
    ui: Arc<SharedUi<BootClock>>,
}

impl Panel {
    /// Tells a host that just connected what the LEDs show.
    fn snapshot(&self) {
        let (pattern, _, _) = self.ui.pattern();
        let ms = self.ui.now_ms();
        report(
            &self.port,
            &ToHost::Pattern {
                name: pattern.name().into(),
                ms,
            },
        );
        self.answer_leds();
    }

    fn answer_leds(&self) {
        let all = self
            .leds
            .lines
            .iter()
            .filter_map(|&(role, _, _)| Some((role.name().to_string(), self.leds.lit(role)?)))
            .collect();
        report(&self.port, &ToHost::Leds(all));
    }

    fn handle_line(&self, text: &str) {
        let msg = match ToGuest::parse(text) {
            Ok(m) => m,
            Err(e) => {
                log!("error: {e}");
                return;
            }
        };
        match (msg, &self.button) {
            (ToGuest::ButtonDown | ToGuest::ButtonUp, Some(b)) => {
                let down = msg == ToGuest::ButtonDown;
                if let Err(e) = b.chip.press(b.line, b.active_low, down) {
                    log!("error: front panel: {e}");
                }
            }
            (ToGuest::ButtonDown | ToGuest::ButtonUp, None) => {
                log!("error: front panel: this board has no simulated button")
            }
            (ToGuest::Leds, _) => self.answer_leds(),
        }
    }
}

fn panel_loop(mut reader: File, panel: &Panel) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    log!("board: front panel on {PANEL_PORT}");
    // One line at most LINE_BYTES_MAX bytes; a longer one is dropped up to its newline.
    let mut line: Vec<u8> = Vec::with_capacity(LINE_BYTES_MAX + 1);
    let mut skipping = false;
    let mut buf = [0u8; 256];
    let mut host = false;
    loop {
        // With a host attached, sleep until it sends or leaves (either wakes poll(2)). Without
        // one, poll(2) reports POLLHUP at once, so look again each second: 1 wake-up a second
        // on a board nobody watches, and a host that connects gets the state within 1 s.
        let timeout = if host {
            PollTimeout::NONE
        } else {
            PollTimeout::from(1000u16)
        };
        let revents = {
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
                Err(_) => PollFlags::empty(),
            }
        };
        let connected = !revents.contains(PollFlags::POLLHUP);
        if connected && !host {
            panel.snapshot();
        }
        host = connected;
        if !revents.contains(PollFlags::POLLIN) {
            if !connected {
                std::thread::sleep(Duration::from_secs(1));
            }
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Ok(n) => n,
            Err(_) => continue,
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() <= LINE_BYTES_MAX {
                    line.push(b);
                } else {
                    skipping = true;
                }
                continue;
            }
            if skipping {
                log!("error: front panel: line longer than {LINE_BYTES_MAX} bytes ignored");
            } else {
                panel.handle_line(&String::from_utf8_lossy(&line));
            }
            line.clear();
            skipping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_bsp::UiConfig;

    #[test]
    fn wipe_removes_everything_but_lost_and_found_and_at_boot_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(data.join("cairn/keys")).unwrap();
        std::fs::write(data.join("cairn/keys/owner.key"), b"secret").unwrap();
        std::fs::write(data.join("marker"), b"x").unwrap();
        std::fs::create_dir(data.join("lost+found")).unwrap();
        std::fs::write(data.join(RESET_MARKER), b"").unwrap();
        wipe(data, false);
        let mut left: Vec<_> = std::fs::read_dir(data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![RESET_MARKER.to_string(), "lost+found".to_string()]
        );
        std::fs::write(data.join("written-while-stopping"), b"x").unwrap();
        wipe(data, true);
        let left: Vec<_> = std::fs::read_dir(data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["lost+found".to_string()]);
    }

    #[test]
    fn keys_are_overwritten_before_their_names_go_and_big_files_are_left_to_the_trim() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(data.join("node")).unwrap();
        let key = data.join("node/identity.key");
        std::fs::write(&key, b"the plug's secret key").unwrap();
        let segment = data.join("node/segment");
        std::fs::write(&segment, vec![7u8; SHRED_BYTES_MAX as usize + 1]).unwrap();
        // Opened before the wipe: what the blocks hold after the name is gone.
        let mut held = File::open(&key).unwrap();
        let mut big = File::open(&segment).unwrap();
        wipe(data, true);
        assert!(!key.exists());
        let mut after = Vec::new();
        held.read_to_end(&mut after).unwrap();
        assert_eq!(after, vec![0u8; 21], "the key's bytes are zeros");
        let mut after = Vec::new();
        big.read_to_end(&mut after).unwrap();
        assert!(after.iter().all(|&b| b == 7), "a big file is only unlinked");
    }

    #[test]
    fn claimed_devices_boot_healthy_and_new_ones_need_setup() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Arc::new(SharedUi::new(Ui::new(UiConfig::default()), BootClock));
        let board = BoardUi::new(
            ui.clone(),
            dir.path().to_path_buf(),
            Arc::new(NodeSocket(dir.path().join("none"))),
        );
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::Booting);
        board.booted();
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::SetupNeeded);
        std::fs::create_dir_all(dir.path().join("cairn")).unwrap();
        std::fs::write(dir.path().join(CLAIMED), b"").unwrap();
        board.booted();
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::Healthy);
    }

    /// A node double: answers after `delay` with `outcome`.
    struct FakeNode {
        outcome: Mutex<Option<Result<PairOutcome, String>>>,
        delay: Duration,
        asked: Mutex<Vec<Duration>>,
    }

    impl Pairer for FakeNode {
        fn pair(&self, window: Duration) -> Result<PairOutcome, String> {
            self.asked.lock().unwrap().push(window);
            std::thread::sleep(self.delay);
            self.outcome.lock().unwrap().take().expect("asked once")
        }
    }

    fn open_window() -> Arc<SharedUi<BootClock>> {
        let ui = Arc::new(SharedUi::new(Ui::new(UiConfig::default()), BootClock));
        ui.set_health(Health::Healthy);
        assert!(matches!(
            ui.on_button(ButtonEvent::ShortPress),
            Some(Action::PairingOpened(Opened::New { .. }))
        ));
        ui
    }

    #[test]
    fn a_pairing_completes_the_window_and_the_leds_confirm() {
        let ui = open_window();
        let line = settle(
            &ui,
            Ok(PairOutcome::Paired {
                peer: "12D3KooWpeer".into(),
                code: "123 456".into(),
            }),
        );
        assert_eq!(line, "pairing: paired with 12D3KooWpeer, code 123 456");
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::Confirmed);
        assert_eq!(ui.pairing_status(), cairn_bsp::WindowStatus::Closed);
    }

    #[test]
    fn an_overlap_or_nobody_leaves_the_window_to_expire() {
        let ui = open_window();
        let line = settle(
            &ui,
            Ok(PairOutcome::Overlap {
                candidates: vec!["12D3KooWa".into(), "12D3KooWb".into()],
            }),
        );
        assert_eq!(
            line,
            "pairing: refused: 2 plugs are in pairing mode (12D3KooWa, 12D3KooWb); press again when only one other is"
        );
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::PairingOpen);
        let line = settle(&ui, Ok(PairOutcome::NoneFound));
        assert_eq!(
            line,
            "pairing: no other plug in pairing mode on this network"
        );
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::PairingOpen);
    }

    #[test]
    fn without_a_running_node_the_reason_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("node.sock");
        let ui = open_window();
        let line = settle(&ui, NodeSocket(sock.clone()).pair(Duration::from_secs(1)));
        assert!(
            line.starts_with("pairing: the storage node cannot pair now: "),
            "{line}"
        );
        assert!(line.contains(&sock.display().to_string()), "{line}");
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::PairingOpen);
    }

    #[test]
    fn one_attempt_at_a_time_for_the_window_left() {
        let node = Arc::new(FakeNode {
            outcome: Mutex::new(Some(Ok(PairOutcome::Paired {
                peer: "p".into(),
                code: "123 456".into(),
            }))),
            delay: Duration::from_millis(300),
            asked: Mutex::new(Vec::new()),
        });
        let pairing = Pairing::new(node.clone());
        let ui = open_window();
        assert!(pairing.start(ui.clone(), Duration::from_secs(120)));
        assert!(
            !pairing.start(ui.clone(), Duration::from_secs(120)),
            "second attempt"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pairing.busy() {
            assert!(std::time::Instant::now() < deadline, "attempt never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*node.asked.lock().unwrap(), vec![Duration::from_secs(120)]);
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::Confirmed);
    }

    fn wait_idle(pairing: &Pairing) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pairing.busy() {
            assert!(std::time::Instant::now() < deadline, "attempt never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_press_after_a_refusal_tries_again_in_the_window_left() {
        let node = Arc::new(FakeNode {
            outcome: Mutex::new(Some(Ok(PairOutcome::Unconfirmed { peer: "p".into() }))),
            delay: Duration::from_millis(200),
            asked: Mutex::new(Vec::new()),
        });
        let pairing = Pairing::new(node.clone());
        let ui = open_window();
        assert!(pairing.start(ui.clone(), Duration::from_secs(120)));
        assert!(!pairing.again(&ui, 100_000), "while the first is under way");
        wait_idle(&pairing);
        assert!(pairing
            .last()
            .unwrap()
            .starts_with("refused: p was in pairing mode"));
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::PairingOpen);
        assert!(!pairing.again(&ui, 4_000), "too little left");
        *node.outcome.lock().unwrap() = Some(Ok(PairOutcome::Paired {
            peer: "p".into(),
            code: "123 456".into(),
        }));
        assert!(pairing.again(&ui, 90_000));
        wait_idle(&pairing);
        assert_eq!(
            *node.asked.lock().unwrap(),
            vec![Duration::from_secs(120), Duration::from_secs(90)]
        );
        assert_eq!(pairing.last().unwrap(), "paired with p, code 123 456");
        assert_eq!(ui.pattern().0, cairn_bsp::Pattern::Confirmed);
    }

    #[test]
    fn the_node_socket_is_where_the_node_service_puts_it() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/node.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains(&format!("\"--control\", \"{NODE_SOCKET}\"")),
            "{} does not put the socket at {NODE_SOCKET}",
            manifest.display()
        );
    }

    /// The panel's commands against a stand-in for the gpio-sim sysfs files and the port.
    #[test]
    fn panel_presses_the_button_line_and_reports_the_led_lines() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (line, value) in [(0, "1\n"), (1, "0\n"), (2, "1\n")] {
            let d = sys.join(format!("gpiochip3/sim_gpio{line}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("value"), value).unwrap();
            std::fs::write(d.join("pull"), "pull-up\n").unwrap();
        }
        let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../board/boards");
        let board = Board::load(&boards, "qemu-virt").unwrap();
        let chip = gpiosim::SimChip::open("gpiochip3", &sys);
        let out = dir.path().join("port");
        let port: Port = Arc::new(Mutex::new(Some(File::create(&out).unwrap())));
        let panel = Panel {
            port,
            button: Some(SimButton {
                chip: chip.clone(),
                line: 2,
                active_low: true,
            }),
            leds: SimLeds::new(&board, chip),
            ui: Arc::new(SharedUi::new(Ui::new(UiConfig::default()), BootClock)),
        };
        let pull = sys.join("gpiochip3/sim_gpio2/pull");
        panel.handle_line("button down");
        assert_eq!(std::fs::read_to_string(&pull).unwrap(), "pull-down");
        panel.handle_line("button up\r");
        assert_eq!(std::fs::read_to_string(&pull).unwrap(), "pull-up");
        panel.handle_line("leds");
        panel.handle_line("reboot now");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "leds status=on alert=off\n"
        );
    }
}
