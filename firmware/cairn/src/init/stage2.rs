//! Stage 2: supervision, by `cairn_supervisor::run`. Returns once a poweroff or reboot has been
//! asked for and every service has been stopped.

use std::path::PathBuf;

/// What stage 2 needs to know.
pub struct Config {
    pub services_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket_path: PathBuf,
    pub watchdog: Option<PathBuf>,
    /// Set: stop feeding the watchdog (a slot on trial that did not get healthy in time).
    pub starve_watchdog: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// PID 1 (of the device or of a PID namespace): every orphan is ours to reap.
    pub pid1: bool,
    /// Told when every service is ready and when one fails for good.
    pub notices: Option<std::sync::mpsc::SyncSender<cairn_supervisor::Notice>>,
    /// Answers the board's control requests (the device's init only).
    pub extension: Option<cairn_supervisor::Extension>,
    /// Takes the connections of requests answered by another process (an update).
    pub handoff: Option<cairn_supervisor::Handoff>,
}

/// How the system is to go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Poweroff,
    Reboot,
}

impl Shutdown {
    pub fn verb(self) -> &'static str {
        match self {
            Shutdown::Poweroff => "poweroff",
            Shutdown::Reboot => "reboot",
        }
    }
}

/// Supervises the services until a poweroff or reboot is asked for, then stops them.
pub fn run(cfg: Config) -> Shutdown {
    super::log!("stage 2: supervising {}", cfg.services_dir.display());
    // The device's init passes its watchdog; a run on a host passes none. On a host, service
    // accounts go to a private passwd/group under the state directory, never the host's /etc,
    // and cgroup2 is only used if the host already has it.
    let device = cfg.watchdog.is_some();
    let etc_dir = if device {
        PathBuf::from("/etc")
    } else {
        cfg.state_dir.join("etc")
    };
    let mut rc = cairn_supervisor::RunConfig::new(cfg.services_dir, cfg.state_dir, cfg.socket_path);
    rc.watchdog = cfg.watchdog;
    rc.starve_watchdog = cfg.starve_watchdog;
    rc.pid1 = cfg.pid1;
    rc.notices = cfg.notices;
    rc.extension = cfg.extension;
    rc.handoff = cfg.handoff;
    rc.etc_dir = etc_dir;
    rc.mount_cgroup = device;
    match cairn_supervisor::run(rc) {
        cairn_supervisor::Shutdown::Poweroff => Shutdown::Poweroff,
        cairn_supervisor::Shutdown::Reboot => Shutdown::Reboot,
    }
}
