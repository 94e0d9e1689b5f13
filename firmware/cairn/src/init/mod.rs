//! `cairn init`: PID 1, in three stages (after s6-svscan-1):
//! 1. mount the kernel file systems, load the board's modules, grow and mount the data
//!    partition, set the hostname — each step logged, none fatal;
//! 2. supervise the services until a poweroff or reboot is asked for (`stage2`);
//! 3. stop what is left, sync, unmount, reboot(2).
//!
//! The same command runs on any Linux host as PID 1 of a new PID namespace
//! (`unshare --fork --pid --mount-proc cairn init --services DIR --state DIR`): then it skips
//! what only a device has (mounts, modules, the data partition) and exits instead of rebooting.

mod data;
mod modules;
mod mounts;
pub(crate) mod net;
mod power_button;
mod stage2;
pub(crate) mod system;
mod trial;
mod workdirs;

use cairn_bsp::ui::Health;
use cairn_bsp::Board;
use cairn_supervisor::Notice;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use stage2::Shutdown;

use crate::sys::{console, handled_signals, helpers, log, paths};

#[derive(clap::Args, Default, Debug)]
pub struct Args {
    /// Directory of service manifests (default on the device: /etc/cairn/services).
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// Directory for persistent state: logs, service state (default on the device: /data/cairn).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Control socket (default: /run/cairn/control.sock on the device, STATE/control.sock otherwise).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    let device = pid1 && args.services.is_none() && args.state.is_none();
    if device {
        device_main(args)
    } else {
        host_main(args, pid1)
    }
}

/// Init on a host: supervision only. Exits when asked to power off or reboot.
fn host_main(args: Args, pid1: bool) -> anyhow::Result<()> {
    // The same hook as on the device, so host tests exercise what the device runs.
    install_panic_hook(false);
    let state = args
        .state
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--state DIR is needed when not the device's PID 1"))?;
    let services = args
        .services
        .clone()
        .unwrap_or_else(|| PathBuf::from(paths::SERVICES));
    std::fs::create_dir_all(&state)
        .map_err(|e| anyhow::anyhow!("cannot create state dir {}: {e}", state.display()))?;
    let socket = args.socket.unwrap_or_else(|| state.join("control.sock"));
    handled_signals().thread_block()?;
    #[cfg(feature = "test-fixtures")]
    helpers::arm_fault_switch();
    let how = stage2::run(stage2::Config {
        services_dir: services,
        state_dir: state,
        socket_path: socket,
        watchdog: None,
        starve_watchdog: None,
        pid1,
        notices: None,
        extension: None,
        handoff: None,
    });
    log!("{} requested: exiting (not the device's init)", how.verb());
    Ok(())
}

/// Init on the device. Never returns: PID 1 exiting would panic the kernel.
fn device_main(_args: Args) -> ! {
    install_panic_hook(true);
    // Before any thread starts (every helper goes through `helpers::spawn`, which blocks them
    // for the new thread in any case).
    if let Err(e) = handled_signals().thread_block() {
        log!("cannot block signals: {e}");
    }
    #[cfg(feature = "test-fixtures")]
    helpers::arm_fault_switch();
    let started = std::time::Instant::now();
    log!("stage 1: starting cairn {}", env!("CARGO_PKG_VERSION"));
    let board = match std::fs::read_to_string(paths::BOARD)
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths::BOARD))
        .and_then(|t| Board::parse(Path::new(paths::BOARD), &t).map_err(Into::into))
    {
        Ok(b) => Some(b),
        Err(e) => {
            log!("error: {e:#}; continuing without board support");
            None
        }
    };
    stage1(board.as_ref());
    // LEDs, setup button, front panel (see crate::board): "booting" until every service is
    // ready, then "setup needed" or "healthy".
    let board_ui = board
        .as_ref()
        .map(|b| crate::board::start(b, Path::new(paths::DATA)));
    if let Some(b) = &board_ui {
        helpers::show_failures_on(b.ui.clone());
    }
    // Services running as their own user get their state directory on /data (after the board
    // finished any interrupted factory reset, which wipes /data), and /run/NAME if they ask.
    let etc = Path::new("/etc");
    for line in workdirs::prepare(
        Path::new(paths::SERVICES),
        etc,
        Path::new(paths::DATA),
        Path::new(paths::RUN),
    ) {
        log!("{line}");
    }
    let (notice_tx, notice_rx) = std::sync::mpsc::sync_channel::<Notice>(8);
    let extension = board_ui.clone().map(crate::requests::extension);
    let starve = Arc::new(AtomicBool::new(false));
    let trial_tx = board
        .as_ref()
        .and_then(|b| start_trial(b, started, starve.clone()));
    if board_ui.is_some() || trial_tx.is_some() {
        let spawned = helpers::spawn("status-led", 64 * 1024, move || {
            let mut led = StatusLed::default();
            for notice in notice_rx {
                if let Some(tx) = &trial_tx {
                    // Bounded: the trial thread takes each at once; one lost while it is
                    // busy committing no longer matters.
                    let _ = tx.try_send(notice.clone());
                }
                let Some(b) = &board_ui else { continue };
                match led.on(notice, helpers::failed()) {
                    LedChange::Booted => {
                        b.booted();
                        // A helper that failed before the services came up keeps it at error.
                        if helpers::failed() {
                            b.ui.set_health(Health::Error);
                        }
                    }
                    LedChange::Set(health) => b.ui.set_health(health),
                    LedChange::Keep => {}
                }
            }
        });
        if let Err(e) = spawned {
            log!("error: LED thread: {e}");
        }
    }
    let how = stage2::run(stage2::Config {
        services_dir: PathBuf::from(paths::SERVICES),
        state_dir: PathBuf::from(paths::STATE),
        socket_path: PathBuf::from(paths::SOCKET),
        watchdog: Some(PathBuf::from("/dev/watchdog")),
        starve_watchdog: Some(starve),
        pid1: true,
        notices: Some(notice_tx),
        extension,
        // Only where there is a board: its disk holds the slots.
        handoff: board.as_ref().map(|_| crate::cmd::update::handoff()),
    });
    stage3(how)
}

/// Announces what the boot state says of this boot and, when the running slot is on trial,
/// starts the thread that commits it or gives up (`trial`); the sender of its notices.
fn start_trial(
    board: &Board,
    started: std::time::Instant,
    starve: Arc<AtomicBool>,
) -> Option<std::sync::mpsc::SyncSender<Notice>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let running = system::running_slot(&cmdline);
    let disk = cairn_update::disk::BootDisk::new(Path::new(&board.storage.device));
    let state = match disk.state() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            log!("error: update: reading the boot state: {e}");
            return None;
        }
    };
    let (line, on_trial) = trial::announce(&state, running);
    if let Some(line) = line {
        log!("{line}");
    }
    if !on_trial {
        return None;
    }
    let (settle, deadline, problems) = trial::times(&cmdline);
    for p in problems {
        log!("error: {p}; keeping the default");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    let spawned = helpers::spawn("update-trial", 64 * 1024, move || {
        trial::run(disk, running, settle, deadline, started, rx, starve)
    });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            log!("error: update trial thread: {e}");
            None
        }
    }
}

/// What the `status-led` thread does with the supervisor's notices.
#[derive(Default)]
struct StatusLed {
    /// Services failed for good since the last `Ready`: while there is one, a crash loop
    /// elsewhere must not turn the error into amber.
    failed: BTreeSet<String>,
}

/// A change of the status LED.
#[derive(Debug, PartialEq, Eq)]
enum LedChange {
    /// Every service is ready: healthy or setup needed, as the board says.
    Booted,
    /// Show this.
    Set(Health),
    /// Leave it as it is.
    Keep,
}

impl StatusLed {
    /// `helper_failed`: an init helper failed, which keeps the LED at error.
    fn on(&mut self, notice: Notice, helper_failed: bool) -> LedChange {
        match notice {
            // At boot, or back after a crash loop's retry or an administrator's start.
            Notice::Ready => {
                self.failed.clear();
                LedChange::Booted
            }
            Notice::Failed(name) => {
                self.failed.insert(name);
                LedChange::Set(Health::Error)
            }
            // One crash, restarted at once: not worth a colour; `Ready` follows.
            Notice::Restarting(_) => LedChange::Keep,
            // Crash-looped and tried again in a while: amber, unless something is worse.
            Notice::Retrying(name) => {
                self.failed.remove(&name);
                if self.failed.is_empty() && !helper_failed {
                    LedChange::Set(Health::Degraded)
                } else {
                    LedChange::Keep
                }
            }
        }
    }
}

/// How long stage 1 waits for the board's disk to appear.
const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `path` exists, or appears within `limit` (looked for every 20 ms: devices and
/// interfaces appear once, and nothing here can be woken by them without udev).
pub(crate) fn wait_for(path: &Path, limit: std::time::Duration) -> bool {
    let step = std::time::Duration::from_millis(20);
    let tries = limit.as_millis() / step.as_millis() + 1;
    for _ in 0..tries {
        if path.exists() {
            return true;
        }
        std::thread::sleep(step);
    }
    path.exists()
}

/// Stage 1: every step is logged and none is fatal — a device without its data partition still
/// boots far enough to show an error and accept a reboot.
fn stage1(board: Option<&Board>) {
    for e in mounts::mount_kernel_filesystems() {
        log!("error: {e:#}");
    }
    if let Some(board) = board {
        if let Err(e) = nix::unistd::sethostname(&board.hostname) {
            log!("error: sethostname {}: {e}", board.hostname);
        }
        if let Err(e) = modules::load_all(&board.modules) {
            log!("error: {e:#}");
        }
        // lo at once; the board's Ethernet by DHCP on a thread of its own (never waited for).
        net::start(&board.network, &board.hostname);
        // An SD card is probed while /init already runs; a virtio disk is there at once.
        if !wait_for(Path::new(&board.storage.device), DEVICE_WAIT) {
            log!(
                "error: {} did not appear in {} s",
                board.storage.device,
                DEVICE_WAIT.as_secs()
            );
        }
        match data::prepare(&board.storage, Path::new(paths::DATA)) {
            Ok(report) => {
                log!("{report}");
                // The owner's name for the device, once it has one, wins over the board's.
                if let Some(name) =
                    crate::requests::claimed_name(Path::new(paths::DATA)).filter(|n| !n.is_empty())
                {
                    if let Err(e) = nix::unistd::sethostname(&name) {
                        log!("error: sethostname {name}: {e}");
                    }
                }
            }
            Err(e) => log!("error: data partition: {e:#}; running without persistent state"),
        }
        // Before the services start: some run programs from it.
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        match system::mount_layer(
            &board.storage,
            system::running_slot(&cmdline),
            Path::new("/usr"),
        ) {
            Ok(report) => log!("{report}"),
            Err(e) => log!("error: system layer: {e:#}; its services will not start"),
        }
        if let Some(line) = &board.power_button {
            power_button::watch(line.clone());
        }
    }
}

/// Stage 3. Stage 2 has stopped the services and, as PID 1, every remaining process
/// (`cairn_supervisor::run` with `pid1`); what is left is the disk and the reboot itself.
fn stage3(how: Shutdown) -> ! {
    log!("stage 3: {}", how.verb());
    nix::unistd::sync();
    if let Err(e) = data::unmount(Path::new(paths::DATA)) {
        log!("error: {e:#}");
    }
    nix::unistd::sync();
    log!("{}", how.verb());
    let mode = match how {
        Shutdown::Poweroff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Shutdown::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let err = nix::sys::reboot::reboot(mode);
    log!("error: reboot(2) failed: {err:?}");
    emergency_loop("reboot(2) failed")
}

/// Reaps every exited child; false once there are no children left at all.
pub(crate) fn reap_all() -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether the emergency state may reboot(2): on a host it must never reboot the host.
static ON_DEVICE: AtomicBool = AtomicBool::new(false);

/// With `panic = "abort"` (the firmware profile), a panic would kill PID 1 and panic the
/// kernel; instead the hook never returns, in every profile (host builds unwind, and park or
/// loop the same way). A panic on a helper thread is contained to that thread
/// (`helpers::contain`); a panic of the supervisor itself — the main thread, which runs stages
/// 1 to 3 — leaves a device that still reaps and obeys reboot requests.
fn install_panic_hook(device: bool) {
    ON_DEVICE.store(device, Ordering::SeqCst);
    std::panic::set_hook(Box::new(|info| {
        if !helpers::is_supervisor_thread() {
            helpers::contain(info);
        }
        console(&format!(
            "FATAL: supervisor {}",
            helpers::describe_panic(info)
        ));
        emergency_loop("init failed");
    }));
}

/// The error state: reap children, and on SIGTERM/SIGINT reboot, on SIGUSR1/2 power off (on a
/// host: exit, as a host run does instead of rebooting).
pub(crate) fn emergency_loop(why: &str) -> ! {
    console(&format!(
        "EMERGENCY: {why}; power off with the button or reboot with a signal"
    ));
    let set = handled_signals();
    let _ = set.thread_block();
    loop {
        let how = match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => Some(nix::sys::reboot::RebootMode::RB_AUTOBOOT),
            Ok(Signal::SIGUSR1 | Signal::SIGUSR2) => {
                Some(nix::sys::reboot::RebootMode::RB_POWER_OFF)
            }
            _ => None,
        };
        reap_all();
        if let Some(mode) = how {
            if !ON_DEVICE.load(Ordering::SeqCst) {
                console("EMERGENCY: asked to stop: exiting (not the device's init)");
                std::process::exit(1);
            }
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(mode);
        }
    }
}

#[cfg(test)]
mod status_led_tests {
    use super::*;

    #[test]
    fn a_crash_loop_shows_amber_and_ready_clears_it() {
        let mut led = StatusLed::default();
        assert_eq!(led.on(Notice::Ready, false), LedChange::Booted);
        assert_eq!(
            led.on(Notice::Retrying("node".into()), false),
            LedChange::Set(Health::Degraded)
        );
        // The retry came up: every service is ready again.
        assert_eq!(led.on(Notice::Ready, false), LedChange::Booted);
    }

    #[test]
    fn a_failure_for_good_is_not_turned_amber() {
        let mut led = StatusLed::default();
        assert_eq!(
            led.on(Notice::Failed("web".into()), false),
            LedChange::Set(Health::Error)
        );
        assert_eq!(
            led.on(Notice::Retrying("node".into()), false),
            LedChange::Keep
        );
        // Started again by hand, the failed service crash-loops: then amber is right.
        assert_eq!(
            led.on(Notice::Retrying("web".into()), false),
            LedChange::Set(Health::Degraded)
        );
        // A failed init helper keeps the error.
        let mut led = StatusLed::default();
        assert_eq!(
            led.on(Notice::Retrying("node".into()), true),
            LedChange::Keep
        );
    }
}
