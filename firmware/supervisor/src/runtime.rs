//! The Linux runtime: one single-threaded loop around the state machine that reads signals
//! (signalfd), reaps every child, collects service output into the log rings, serves the
//! control socket and pings the hardware watchdog; and the shutdown that follows.
//!
//! It never panics on bad input or failed system calls: errors are logged (`tracing` events,
//! which the binary prints as `cairn: …` console lines) and the loop goes on, because this runs
//! as PID 1. The one line written here directly is the readiness announcement on stdout.

use crate::logbuf::LogRing;
use crate::machine::{Clock, ExitStatus, Policy, Supervisor};
use crate::manifest;
use crate::proto::{Request, Response};
use crate::spawn::{self, LinuxSpawner};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the supervisor was asked to do at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Power the device off.
    Poweroff,
    /// Reboot the device.
    Reboot,
}

/// What the supervisor tells the rest of init (the board's LEDs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Every enabled service is ready: sent with the `cairn: ready` line, and again whenever
    /// every service is ready once more after a `Failed` or `Retrying` notice.
    Ready,
    /// This service failed and will not be restarted (permanent failure, bad dependencies)
    /// until an administrator's start.
    Failed(String),
    /// This service crash-looped and waits to be tried again
    /// ([`crate::machine::RETRY_AFTER_FAILED_MS`]); sent again for every try that fails.
    Retrying(String),
    /// This service ended without being asked to and is started again after its backoff (one
    /// crash, not yet a loop); `Ready` follows once every service is ready again.
    Restarting(String),
}

/// How [`run`] is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Directory of service manifests (`*.toml`).
    pub services_dir: PathBuf,
    /// Directory for state that outlives a boot (logs are saved under `logs/`).
    pub state_dir: PathBuf,
    /// Path of the control socket.
    pub socket_path: PathBuf,
    /// Hardware watchdog device to ping, if it exists.
    pub watchdog: Option<PathBuf>,
    /// Once set, the watchdog is no longer pinged and its timeout is cut to
    /// [`STARVED_TIMEOUT_S`]: the board resets (a system slot on trial that did not become
    /// healthy in time, so that the bootloader counts the try).
    pub starve_watchdog: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Running as PID 1 (of the device or of a PID namespace): at shutdown, every remaining
    /// process gets SIGTERM, then SIGKILL.
    pub pid1: bool,
    /// Where `passwd` and `group` are (service accounts are added there).
    pub etc_dir: PathBuf,
    /// Where the cgroup v2 hierarchy is (or is mounted, when `mount_cgroup`).
    pub cgroup_root: PathBuf,
    /// Mount cgroup2 at `cgroup_root` when nothing is mounted there (on the device).
    pub mount_cgroup: bool,
    /// Told when every service is ready, when a service fails for good and when one waits to be
    /// tried again after a crash loop: what the board's status LED shows. Bounded; a notice is dropped rather than block the supervisor.
    pub notices: Option<std::sync::mpsc::SyncSender<Notice>>,
    /// Answers the control requests the supervisor does not know (PID 1's board commands).
    pub extension: Option<Extension>,
    /// Takes the connection of a request whose answer cannot be given at once (an update's
    /// bundle follows the request line); asked before [`RunConfig::extension`].
    pub handoff: Option<Handoff>,
}

/// A handler for control requests beyond the supervisor's own, given the request and the asking
/// service's user (`None`: root); `None` back means "not mine either". It runs on the
/// supervisor's loop, so it must answer at once.
#[derive(Clone)]
#[allow(clippy::type_complexity, reason = "one handler type, named once here")]
pub struct Extension(
    pub std::sync::Arc<dyn Fn(&Request, Option<&str>) -> Option<Response> + Send + Sync>,
);

/// A handler that takes over a control connection, given the request, the asking service's
/// user (`None`: root) and the connection, positioned just after the request line. `None`
/// back: not its request; `Some(Ok(()))`: it answers on the connection itself (e.g. from a
/// process it started with a copy of it); `Some(Err(why))`: the supervisor answers with the
/// error. It runs on the supervisor's loop, so it must return at once.
#[derive(Clone)]
#[allow(clippy::type_complexity, reason = "one handler type, named once here")]
pub struct Handoff(
    pub  std::sync::Arc<
        dyn Fn(&Request, Option<&str>, &UnixStream) -> Option<Result<(), String>> + Send + Sync,
    >,
);

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handoff")
    }
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Extension")
    }
}

impl RunConfig {
    /// A configuration with the device's defaults for everything but the three paths.
    pub fn new(services_dir: PathBuf, state_dir: PathBuf, socket_path: PathBuf) -> Self {
        RunConfig {
            services_dir,
            state_dir,
            socket_path,
            watchdog: Some(PathBuf::from("/dev/watchdog")),
            starve_watchdog: None,
            pid1: nix::unistd::getpid().as_raw() == 1,
            etc_dir: PathBuf::from("/etc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            mount_cgroup: false,
            notices: None,
            extension: None,
            handoff: None,
        }
    }
}

/// The watchdog's timeout once it is starved, seconds: the reset comes soon, not after the
/// driver's default (i6300esb: 30 s per stage).
pub const STARVED_TIMEOUT_S: i32 = 5;
/// `WDIOC_SETTIMEOUT` (linux/watchdog.h: `_IOWR('W', 6, int)`).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// `WDIOC_GETTIMEOUT` (linux/watchdog.h: `_IOR('W', 7, int)`).
const WDIOC_GETTIMEOUT: libc::c_ulong = 0x8004_5707;
/// Bounds of the interval between watchdog pings: a third of the driver's timeout (i6300esb:
/// 30 s, so 10 s), so that an idle PID 1 wakes rarely and two pings may be late before a reset.
const WATCHDOG_PING_MS_MIN: u64 = 1000;
const WATCHDOG_PING_MS_MAX: u64 = 10_000;
/// Longest the loop sleeps with no watchdog to feed and nothing due: only a lost wake-up
/// would wait this long (everything the loop serves wakes its poll).
const LOOP_WAIT_MS_IDLE: u64 = 60_000;
/// Longest the loop sleeps during a shutdown: its overall limit is checked as it goes.
const LOOP_WAIT_MS_SHUTDOWN: u64 = 1000;
/// Bytes read from one pipe per loop turn, so one chatty service cannot starve the loop.
const READ_BYTES_PER_TURN: usize = 64 * 1024;
/// Longest control request line.
const REQUEST_BYTES_MAX: usize = 4096;
/// Most `logs -f` clients at once; the oldest is dropped for a new one.
const FOLLOWERS_MAX: usize = 8;
/// Connections accepted per loop turn.
const ACCEPTS_PER_TURN: usize = 8;
/// Time a shutdown may take beyond the services' grace periods before it goes on regardless.
const SHUTDOWN_SLACK_MS: u64 = 10_000;
/// Time for all remaining processes to exit after SIGTERM at the end of a shutdown.
const KILL_ALL_GRACE_MS: u64 = 2000;

/// The signals the supervisor takes through its signalfd (init blocks the same set at once).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the supervisor's signals in the calling thread. Call it before starting any other
/// thread, so every thread inherits the mask and no signal is delivered (and lost) elsewhere.
pub fn block_signals() {
    if let Err(e) = handled_signals().thread_block() {
        tracing::error!("cannot block signals: {e}");
    }
}

struct MonoClock(Instant);

impl Clock for MonoClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// A `cairn ctl logs -f` client.
struct Follower {
    stream: UnixStream,
    service: String,
    next_seq: u64,
}

struct Runtime {
    cfg: RunConfig,
    sup: Supervisor<MonoClock, LinuxSpawner>,
    /// One ring per service, created with the service.
    logs: BTreeMap<String, LogRing>,
    followers: VecDeque<Follower>,
    requested: Option<Shutdown>,
    ready_announced: bool,
    /// A `Failed` or `Retrying` notice went out since the last `Ready`: the next time every
    /// service is ready, `Ready` is sent again so the LEDs recover.
    unwell_since_ready: bool,
}

/// Supervises the services in `cfg.services_dir` until a poweroff or reboot is requested
/// (signal or control socket), stops them in reverse dependency order, and returns which.
pub fn run(cfg: RunConfig) -> Shutdown {
    block_signals();
    let sfd = loop {
        match SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        ) {
            Ok(fd) => break fd,
            Err(e) => {
                // Without it nothing is reaped; retrying is all PID 1 can do.
                tracing::error!("signalfd: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let (mut manifests, errors) = manifest::load_dir(&cfg.services_dir);
    for e in &errors {
        tracing::error!("{e}");
    }
    manifests.retain(|m| match m.missing_requirement() {
        Some(p) => {
            tracing::info!(
                "{}: not started: this image has no {} (the system layer)",
                m.name,
                p.display()
            );
            false
        }
        None => true,
    });
    for dir in [
        cfg.state_dir.join("logs"),
        cfg.socket_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    ] {
        if !dir.as_os_str().is_empty() {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::error!("{}: {e}", dir.display());
            }
        }
    }
    let cgroup = match spawn::setup_cgroups(&cfg.cgroup_root, cfg.mount_cgroup) {
        Ok(root) => Some(root),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let spawner = LinuxSpawner::new(cfg.etc_dir.clone(), cgroup);
    let logs = manifests
        .iter()
        .map(|m| (m.name.clone(), LogRing::default()))
        .collect();
    let sup = Supervisor::new(
        manifests,
        MonoClock(Instant::now()),
        spawner,
        Policy::default(),
    );
    // Other users may connect only when some service is allowed requests; each request is still
    // judged by the peer's uid.
    let open_to_services = sup.manifests().any(|m| !m.control.is_empty());
    let listener = bind_control(&cfg.socket_path, open_to_services);
    let mut watchdog = cfg.watchdog.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!("{}: {e}", p.display());
                }
            })
            .ok()
    });
    let mut rt = Runtime {
        cfg,
        sup,
        logs,
        followers: VecDeque::new(),
        requested: None,
        ready_announced: false,
        unwell_since_ready: false,
    };
    let mut last_ping = Instant::now();
    // A process stuck in the kernel survives SIGKILL; the shutdown must still end. Every
    // service's grace in turn, plus slack for the SIGKILLs to land.
    let shutdown_limit = Duration::from_millis(
        rt.sup
            .manifests()
            .map(|m| m.stop_grace_ms)
            .fold(SHUTDOWN_SLACK_MS, u64::saturating_add),
    );
    let mut shutdown_started: Option<Instant> = None;
    if let Some(w) = watchdog.as_mut() {
        let _ = w.write_all(b"p");
    }
    let mut starved = false;
    let ping_every = watchdog.as_ref().map(ping_interval);
    if let Some(every) = ping_every {
        tracing::info!("watchdog: fed every {} s", every.as_secs());
    }
    loop {
        rt.sup.tick();
        rt.after_step();
        if rt.requested.is_some() && !rt.sup.shutting_down() {
            rt.sup.shutdown();
            rt.after_step();
        }
        if rt.sup.shutting_down() && rt.sup.all_stopped() {
            break;
        }
        if rt.sup.shutting_down() {
            let started = *shutdown_started.get_or_insert_with(Instant::now);
            if started.elapsed() > shutdown_limit {
                let stuck: Vec<String> = rt
                    .sup
                    .status()
                    .into_iter()
                    .filter(|s| s.pid.is_some())
                    .map(|s| s.name)
                    .collect();
                tracing::error!(
                    "shutdown: giving up on {} after {} ms",
                    stuck.join(", "),
                    shutdown_limit.as_millis()
                );
                break;
            }
        }
        let starve = rt
            .cfg
            .starve_watchdog
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
        if let (Some(w), true, false) = (watchdog.as_ref(), starve, starved) {
            starved = true;
            let mut secs: libc::c_int = STARVED_TIMEOUT_S;
            // SAFETY: the descriptor is open and `secs` outlives the call, which writes it.
            let rc = unsafe { libc::ioctl(w.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs) };
            tracing::warn!(
                "watchdog: no longer fed{}",
                if rc == 0 {
                    format!("; reset in {secs} s")
                } else {
                    String::new()
                }
            );
        }
        if let (Some(w), false) = (watchdog.as_mut(), starved) {
            if ping_every.is_some_and(|every| last_ping.elapsed() >= every) {
                if let Err(e) = w.write_all(b"p") {
                    tracing::error!("watchdog: {e}");
                }
                last_ping = Instant::now();
            }
        }
        let wait_max = if rt.sup.shutting_down() {
            Duration::from_millis(LOOP_WAIT_MS_SHUTDOWN)
        } else {
            match (ping_every, starved) {
                (Some(every), false) => every.saturating_sub(last_ping.elapsed()),
                _ => Duration::from_millis(LOOP_WAIT_MS_IDLE),
            }
        };
        rt.wait_and_handle(&sfd, listener.as_ref(), wait_max);
    }
    let shutdown = rt.requested.unwrap_or(Shutdown::Reboot);
    rt.save_logs();
    for f in &rt.followers {
        let _ = f.stream.shutdown(std::net::Shutdown::Both);
    }
    if rt.cfg.pid1 {
        kill_everything(&sfd);
    }
    let _ = std::fs::remove_file(&rt.cfg.socket_path);
    // The watchdog stays armed (closed without the magic 'V'): should the rest of the shutdown
    // hang, the hardware resets the device.
    drop(watchdog);
    shutdown
}

/// How often to feed the watchdog `w`: a third of its driver's timeout, within
/// [`WATCHDOG_PING_MS_MIN`]..=[`WATCHDOG_PING_MS_MAX`] (the minimum when the driver does not say).
fn ping_interval(w: &std::fs::File) -> Duration {
    let mut secs: libc::c_int = 0;
    // SAFETY: the descriptor is open and `secs` outlives the call, which writes it.
    let rc = unsafe { libc::ioctl(w.as_raw_fd(), WDIOC_GETTIMEOUT as _, &mut secs) };
    let ms = if rc == 0 && secs > 0 {
        secs as u64 * 1000 / 3
    } else {
        WATCHDOG_PING_MS_MIN
    };
    Duration::from_millis(ms.clamp(WATCHDOG_PING_MS_MIN, WATCHDOG_PING_MS_MAX))
}

fn bind_control(path: &std::path::Path, open_to_services: bool) -> Option<UnixListener> {
    let _ = std::fs::remove_file(path);
    match UnixListener::bind(path) {
        Ok(l) => {
            // Root only unless a service may ask; the peer's uid is checked on every request.
            let mode = if open_to_services { 0o666 } else { 0o600 };
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                tracing::error!("{}: {e}", path.display());
            }
            let _ = l.set_nonblocking(true);
            Some(l)
        }
        Err(e) => {
            tracing::error!("{}: cannot listen: {e}; no control socket", path.display());
            None
        }
    }
}

impl Runtime {
    fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.cfg.notices {
            let _ = tx.try_send(notice);
        }
    }

    /// Logs the machine's events, tells init of failures, and announces readiness (on stdout
    /// once; to init again when every service is back after a failure).
    fn after_step(&mut self) {
        for e in self.sup.drain_events() {
            use crate::machine::Event;
            match e {
                Event::SpawnFailed { .. } | Event::Killed { .. } | Event::Failed { .. } => {
                    tracing::warn!("{e}")
                }
                _ => tracing::info!("{e}"),
            }
            if let Event::Failed {
                service,
                retry_in_ms,
                ..
            } = &e
            {
                self.unwell_since_ready = true;
                self.notify(match retry_in_ms {
                    Some(_) => Notice::Retrying(service.clone()),
                    None => Notice::Failed(service.clone()),
                });
            }
            // A slot on trial must not be committed in the middle of a crash.
            if let Event::Restarting { service, .. } = &e {
                self.unwell_since_ready = true;
                self.notify(Notice::Restarting(service.clone()));
            }
            if let Some(ring) = self.logs.get_mut(e.service()) {
                ring.push_line(&format!("cairn: {e}"));
            }
        }
        let all_ready = !self.sup.shutting_down() && self.sup.all_ready();
        if all_ready && self.ready_announced && self.unwell_since_ready {
            // Back from a failure (a retry that came up, or an administrator's start).
            self.unwell_since_ready = false;
            tracing::info!("every service is ready again");
            self.notify(Notice::Ready);
        }
        if all_ready && !self.ready_announced {
            self.ready_announced = true;
            self.unwell_since_ready = false;
            // Not a log event: the announcement the console, the tests and the boot benchmark
            // wait for, on stdout whatever the log filter says.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "cairn: ready");
            self.notify(Notice::Ready);
            // What the whole system uses once up: the figure a plug's RAM budget is held to.
            if let Some((used, total)) = memory_in_use_kib() {
                let _ = writeln!(
                    out,
                    "cairn: memory in use: {} MiB of {} MiB",
                    used / 1024,
                    total / 1024
                );
            }
            let _ = out.flush();
        }
        self.feed_followers();
    }

    /// Sleeps until a child, a signal or a client needs the loop, the machine's next deadline,
    /// or `wait_max`; then serves what woke it.
    fn wait_and_handle(
        &mut self,
        sfd: &SignalFd,
        listener: Option<&UnixListener>,
        wait_max: Duration,
    ) {
        let now = self.sup.now_ms();
        let wait_max = wait_max.as_millis() as u64;
        let wait_ms = self
            .sup
            .next_deadline()
            .map_or(wait_max, |d| d.saturating_sub(now))
            .min(wait_max);
        // Poll set: [signalfd, listener?, then per child: stdout, stderr, notify].
        let mut targets: Vec<(u32, usize)> = Vec::new();
        let mut raw: Vec<i32> = vec![sfd.as_fd().as_raw_fd()];
        if let Some(l) = listener {
            raw.push(l.as_raw_fd());
        }
        let fixed = raw.len();
        for (&pid, io) in &self.sup.spawner().children {
            for (slot, fd) in io.output.iter().enumerate() {
                if let Some(fd) = fd {
                    raw.push(fd.as_raw_fd());
                    targets.push((pid, slot));
                }
            }
            if let Some(fd) = &io.notify {
                raw.push(fd.as_raw_fd());
                targets.push((pid, 2));
            }
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = raw
                .iter()
                .map(|&fd| {
                    // SAFETY: every raw fd is owned by `sfd`, `listener` or the spawner's
                    // children table, none of which changes until the borrowed fds are dropped
                    // at the end of this block.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    PollFd::new(fd, PollFlags::POLLIN)
                })
                .collect();
            let timeout = PollTimeout::try_from(wait_ms as i32).unwrap_or(PollTimeout::MAX);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => vec![false; fds.len()],
                Err(e) => {
                    tracing::error!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    vec![false; fds.len()]
                }
            }
        };
        for (i, &(pid, slot)) in targets.iter().enumerate() {
            if ready[fixed + i] {
                self.read_child(pid, slot);
            }
        }
        if listener.is_some() && ready[1] {
            if let Some(l) = listener {
                self.accept(l);
            }
        }
        if ready[0] {
            self.read_signals(sfd);
        }
    }

    /// Reads what a child wrote on stdout/stderr (slot 0/1) or its readiness pipe (slot 2).
    fn read_child(&mut self, pid: u32, slot: usize) {
        let Some(io) = self.sup.spawner_mut().children.get_mut(&pid) else {
            return;
        };
        let service = io.service.clone();
        let fd = match slot {
            0 | 1 => &mut io.output[slot],
            _ => &mut io.notify,
        };
        let mut buf = [0u8; 4096];
        let mut total = 0;
        let mut notified = false;
        while total < READ_BYTES_PER_TURN {
            let Some(f) = fd.as_ref() else { break };
            match nix::unistd::read(f, &mut buf) {
                Ok(0) => {
                    *fd = None;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if slot == 2 {
                        if buf[..n].contains(&b'\n') {
                            notified = true;
                            *fd = None;
                        }
                    } else if let Some(ring) = self.logs.get_mut(&service) {
                        ring.feed(slot, &buf[..n]);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => {
                    *fd = None;
                    break;
                }
            }
        }
        if notified {
            self.sup.on_notify(pid);
        }
    }

    fn read_signals(&mut self, sfd: &SignalFd) {
        let mut child_exited = false;
        // Bounded: the signalfd holds at most one pending instance per signal number.
        for _ in 0..64 {
            match sfd.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => child_exited = true,
                    Ok(Signal::SIGTERM | Signal::SIGINT) => {
                        self.request(Shutdown::Reboot, "signal")
                    }
                    Ok(Signal::SIGUSR1 | Signal::SIGUSR2) => {
                        self.request(Shutdown::Poweroff, "signal")
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("signalfd: {e}");
                    break;
                }
            }
        }
        if child_exited {
            self.reap();
        }
    }

    fn request(&mut self, what: Shutdown, by: &str) {
        if self.requested.is_none() {
            tracing::info!(
                "{} requested by {by}",
                if what == Shutdown::Poweroff {
                    "poweroff"
                } else {
                    "reboot"
                }
            );
            self.requested = Some(what);
        }
    }

    /// Reaps every exited child: services' main processes and orphans alike.
    fn reap(&mut self) {
        // Bounded by the number of children; the cap only guards against a kernel surprise.
        for _ in 0..100_000 {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.child_exited(pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.child_exited(pid, ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children left
            }
        }
    }

    fn child_exited(&mut self, pid: Pid, status: ExitStatus) {
        let pid = pid.as_raw() as u32;
        // Drain what the process wrote before it ended, so its last words precede the exit note.
        if self.sup.spawner().children.contains_key(&pid) {
            for slot in 0..2 {
                self.read_child(pid, slot);
            }
            if let Some(io) = self.sup.spawner_mut().children.remove(&pid) {
                if let Some(ring) = self.logs.get_mut(&io.service) {
                    ring.flush_partial();
                }
            }
        }
        self.sup.on_exit(pid, status);
    }

    fn accept(&mut self, listener: &UnixListener) {
        for _ in 0..ACCEPTS_PER_TURN {
            match listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::error!("control socket: {e}");
                    break;
                }
            }
        }
    }

    /// Answers one control request. Requests are short; the timeouts bound how long a client
    /// can hold the loop.
    fn serve(&mut self, mut stream: UnixStream) {
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map(|c| c.uid())
                .ok();
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = stream.set_write_timeout(Some(Duration::from_millis(1000)));
        // The request is read before the credentials are judged, so that the client gets the
        // answer instead of a broken pipe.
        let req = match read_request(&mut stream) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut stream, &Response::error(&e));
                return;
            }
        };
        let asker = match self.may_ask(peer, &req.cmd) {
            Ok(user) => user,
            Err(e) => {
                let _ = send(&mut stream, &Response::error(&e));
                return;
            }
        };
        if let Some(taken) = self
            .cfg
            .handoff
            .as_ref()
            .and_then(|h| (h.0)(&req, asker.as_deref(), &stream))
        {
            if let Err(e) = taken {
                let _ = send(&mut stream, &Response::error(&e));
            }
            return;
        }
        let service = req.service.clone().unwrap_or_default();
        let resp = match req.cmd.as_str() {
            "status" => {
                let mut services = self.sup.status();
                for s in &mut services {
                    s.memory_bytes = self.memory_of(&s.name, s.pid);
                }
                Response {
                    services: Some(services),
                    ..Response::ok("")
                }
            }
            "start" => Response::from(self.sup.start(&service)),
            "stop" => Response::from(self.sup.stop(&service)),
            "restart" => Response::from(self.sup.restart(&service)),
            "logs" => {
                let Some(ring) = self.logs.get(&service) else {
                    let _ = send(
                        &mut stream,
                        &Response::error(&format!("no service named {service:?}")),
                    );
                    return;
                };
                let head = Response {
                    dropped: Some(ring.dropped()),
                    ..Response::ok("")
                };
                let mut text = String::with_capacity(ring.bytes() + 1024);
                for l in ring.since(0) {
                    text.push_str(l);
                    text.push('\n');
                }
                let next_seq = ring.next_seq();
                if send(&mut stream, &head).is_err() || stream.write_all(text.as_bytes()).is_err() {
                    return;
                }
                if req.follow {
                    let _ = stream.set_nonblocking(true);
                    if self.followers.len() >= FOLLOWERS_MAX {
                        self.followers.pop_front();
                    }
                    self.followers.push_back(Follower {
                        stream,
                        service,
                        next_seq,
                    });
                }
                return;
            }
            "save-logs" => match self.save_logs() {
                0 => Response::ok(&format!(
                    "logs saved in {}",
                    self.cfg.state_dir.join("logs").display()
                )),
                n => Response::error(&format!("{n} logs could not be saved (see the console)")),
            },
            "poweroff" => {
                self.request(Shutdown::Poweroff, "control socket");
                Response::ok("powering off")
            }
            "reboot" => {
                self.request(Shutdown::Reboot, "control socket");
                Response::ok("rebooting")
            }
            other => match self
                .cfg
                .extension
                .as_ref()
                .and_then(|x| (x.0)(&req, asker.as_deref()))
            {
                Some(resp) => resp,
                None => Response::error(&format!("unknown command {other:?}")),
            },
        };
        let _ = send(&mut stream, &resp);
    }

    /// Root (and the supervisor's own user) may make every request; another user only what
    /// the manifests of its services list under `control`. Returns the other user's name.
    fn may_ask(&self, peer: Option<u32>, cmd: &str) -> Result<Option<String>, String> {
        let Some(uid) = peer else {
            return Err("permission denied: cannot tell who is asking".into());
        };
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return Ok(None);
        }
        let user = crate::users::user_of(&self.cfg.etc_dir, uid);
        let allowed = user.as_deref().is_some_and(|u| {
            self.sup
                .manifests()
                .filter(|m| m.user.as_deref() == Some(u))
                .any(|m| m.control.iter().any(|c| c == cmd))
        });
        if allowed {
            Ok(user)
        } else {
            Err(format!(
                "permission denied: root only ({cmd:?} is not in the `control` list of user {}'s services)",
                user.unwrap_or_else(|| uid.to_string())
            ))
        }
    }

    /// Memory in use: the cgroup's count where cgroups are used, else the main process's RSS.
    fn memory_of(&self, service: &str, pid: Option<u32>) -> Option<u64> {
        if let Some(dir) = self.sup.spawner().cgroup_dir(service) {
            if let Ok(s) = std::fs::read_to_string(dir.join("memory.current")) {
                return s.trim().parse().ok();
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Sends new log lines to `logs -f` clients; a client that does not keep up is dropped.
    fn feed_followers(&mut self) {
        let logs = &self.logs;
        self.followers.retain_mut(|f| {
            let Some(ring) = logs.get(&f.service) else {
                return false;
            };
            let mut text = String::new();
            for l in ring.since(f.next_seq) {
                text.push_str(l);
                text.push('\n');
            }
            f.next_seq = ring.next_seq();
            text.is_empty() || f.stream.write_all(text.as_bytes()).is_ok()
        });
    }

    /// Writes every service's log ring under `state_dir/logs`; returns how many failed.
    fn save_logs(&mut self) -> usize {
        let dir = self.cfg.state_dir.join("logs");
        let _ = std::fs::create_dir_all(&dir);
        let mut failed = 0;
        for (name, ring) in &self.logs {
            let path = dir.join(format!("{name}.log"));
            if let Err(e) = crate::users::write_atomically(&path, ring.to_text().as_bytes()) {
                tracing::error!("{}: {e}", path.display());
                failed += 1;
            }
        }
        failed
    }
}

/// Reads the request line a byte at a time: what follows it (an update's bundle) stays in the
/// socket for whoever the connection is handed to. A line is a few hundred bytes at most.
fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        }
        if buf.len() > REQUEST_BYTES_MAX {
            return Err("request too long".into());
        }
    }
    serde_json::from_slice(&buf).map_err(|e| format!("bad request: {e}"))
}

fn send(stream: &mut UnixStream, resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// SIGTERM to every process left, a short grace, then SIGKILL; reaps all of them.
fn kill_everything(sfd: &SignalFd) {
    // SAFETY: kill(-1, …) signals every process but ourselves; no memory involved.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_millis(KILL_ALL_GRACE_MS);
    while Instant::now() < deadline {
        if reap_all() {
            break;
        }
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u8));
        while let Ok(Some(_)) = sfd.read_signal() {}
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_millis(KILL_ALL_GRACE_MS);
    while Instant::now() < deadline && !reap_all() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps what has exited; true when no children are left.
fn reap_all() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// MemTotal − MemAvailable and MemTotal from /proc/meminfo, in KiB.
fn memory_in_use_kib() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let total = field("MemTotal:")?;
    Some((total.saturating_sub(field("MemAvailable:")?), total))
}
