//! The real [`Spawner`]: starts service processes on Linux in their own session and process
//! group, with `no_new_privs`, their account, cgroup v2 limits and rlimits, stdout/stderr on
//! pipes for the log ring and an inherited readiness fd.

use crate::machine::{Spawner, StopSignal};
use crate::manifest::{Listen, Manifest, LISTEN_MAX};
use crate::users;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The fd number on which a `ready = "notify"` service finds its notification pipe
/// (also given to it as `$NOTIFY_FD`).
pub const NOTIFY_FD: i32 = 3;
/// The fd number of a service's first inherited listening socket (`listen` in its manifest);
/// the next ones follow. Their numbers are given to it as `$CAIRN_LISTEN_FDS` (`4,5`).
pub const LISTEN_FD_FIRST: i32 = NOTIFY_FD + 1;
/// Where the sockets are parked in the child before they move into place (above any fd the
/// supervisor holds at spawn time, so no move overwrites a socket not yet moved).
const LISTEN_FD_PARK: i32 = 64;
/// PATH given to services.
const SERVICE_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// The pipes of one running service process, read by the runtime's loop.
#[derive(Debug)]
pub struct ChildIo {
    /// Service name.
    pub service: String,
    /// stdout, then stderr; `None` once closed.
    pub output: [Option<OwnedFd>; 2],
    /// Read end of the readiness pipe; `None` when not used or once closed.
    pub notify: Option<OwnedFd>,
}

/// Starts services as real processes.
pub struct LinuxSpawner {
    /// Where `passwd` and `group` live.
    etc_dir: PathBuf,
    /// The cgroup v2 root, when limits can be enforced.
    cgroup_root: Option<PathBuf>,
    /// Pipes of running service processes, by pid.
    pub children: BTreeMap<u32, ChildIo>,
    /// Listening sockets by service, bound at its first start and kept across restarts, so a
    /// restart never leaves the port unbound or lets another process take it.
    listeners: BTreeMap<String, Vec<OwnedFd>>,
}

impl LinuxSpawner {
    /// A spawner using accounts in `etc_dir` and cgroups under `cgroup_root` (if any).
    pub fn new(etc_dir: PathBuf, cgroup_root: Option<PathBuf>) -> Self {
        LinuxSpawner {
            etc_dir,
            cgroup_root,
            children: BTreeMap::new(),
            listeners: BTreeMap::new(),
        }
    }

    /// The service's cgroup directory, when cgroups are in use.
    pub fn cgroup_dir(&self, service: &str) -> Option<PathBuf> {
        self.cgroup_root
            .as_ref()
            .map(|r| r.join(format!("{service}.service")))
    }

    /// Creates the service's cgroup with its limits; returns the path of its `cgroup.procs`.
    fn prepare_cgroup(&self, m: &Manifest) -> Result<Option<CString>, String> {
        let Some(dir) = self.cgroup_dir(&m.name) else {
            return Ok(None);
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: cannot create cgroup: {e}", dir.display())),
        }
        let memory = m
            .limits
            .memory_bytes
            .map_or("max".into(), |b| b.to_string());
        let pids = m.limits.pids.map_or("max".into(), |p| p.to_string());
        // oom.group: an OOM kill takes the whole service, not a random one of its processes.
        for (file, value) in [
            ("memory.max", memory.as_str()),
            ("pids.max", pids.as_str()),
            ("memory.oom.group", "1"),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl Spawner for LinuxSpawner {
    fn spawn(&mut self, m: &Manifest) -> Result<u32, String> {
        let (uid, gid) = if m.user.is_some() || m.group.is_some() {
            users::ensure_account(&self.etc_dir, m.user.as_deref(), m.group.as_deref())?
        } else {
            (None, None)
        };
        // Primary group first: setgroups(2) replaces the whole list.
        let mut groups: Vec<libc::gid_t> = gid.into_iter().collect();
        for g in users::ensure_groups(&self.etc_dir, &m.groups)? {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let procs = self.prepare_cgroup(m)?;
        let nofile = m.limits.nofile;
        let notify = match m.ready {
            crate::manifest::Readiness::Notify => Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| format!("pipe: {e}"))?,
            ),
            _ => None,
        };
        let notify_w = notify.as_ref().map(|(_, w)| w.as_raw_fd());
        let listen = self.listeners_for(m)?;

        let mut cmd = Command::new(&m.exec[0]);
        cmd.args(&m.exec[1..])
            .env_clear()
            .env("PATH", SERVICE_PATH)
            .envs(&m.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(m.workdir.as_deref().unwrap_or(Path::new("/")));
        if notify.is_some() {
            cmd.env("NOTIFY_FD", NOTIFY_FD.to_string());
        }
        if listen.count > 0 {
            let fds: Vec<String> = (0..listen.count)
                .map(|i| (LISTEN_FD_FIRST + i as i32).to_string())
                .collect();
            cmd.env("CAIRN_LISTEN_FDS", fds.join(","));
        }
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
        // calls on values prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                child_setup(procs.as_ref(), nofile, notify_w, listen, uid, gid, &groups)
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", m.exec[0]))?;
        let pid = child.id();
        let mut output = [
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
        ];
        for fd in output.iter_mut().flatten() {
            set_nonblocking(fd);
        }
        // The write end now lives in the child only, so EOF means the child closed it.
        let notify = notify.map(|(r, w)| {
            drop(w);
            set_nonblocking(&r);
            r
        });
        // Reaping is done by the runtime's waitpid(-1); the handle is not needed.
        drop(child);
        self.children.insert(
            pid,
            ChildIo {
                service: m.name.clone(),
                output,
                notify,
            },
        );
        Ok(pid)
    }

    fn signal_group(&mut self, pid: u32, signal: StopSignal) {
        let sig = match signal {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Kill => libc::SIGKILL,
        };
        let Ok(pid) = i32::try_from(pid) else { return };
        if pid <= 1 {
            return; // never signal everything or init by mistake
        }
        // SAFETY: kill(2) with a negative pid signals one process group; no memory involved.
        unsafe {
            libc::kill(-pid, sig);
        }
    }

    fn tcp_ready(&mut self, port: u16) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok()
    }
}

/// The raw fds of a service's listening sockets, copied before the fork (no allocation after).
#[derive(Clone, Copy)]
struct ListenFds {
    fds: [i32; LISTEN_MAX],
    count: usize,
}

impl LinuxSpawner {
    /// The service's listening sockets, bound now if this is its first start.
    fn listeners_for(&mut self, m: &Manifest) -> Result<ListenFds, String> {
        if !self.listeners.contains_key(&m.name) {
            let mut socks = Vec::with_capacity(m.listen.len());
            for &l in &m.listen {
                socks.push(match l {
                    Listen::Tcp(port) => OwnedFd::from(bind_tcp(port)?),
                    Listen::LoopbackUdp(port) => OwnedFd::from(
                        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
                            .map_err(|e| format!("cannot bind UDP 127.0.0.1:{port}: {e}"))?,
                    ),
                });
            }
            self.listeners.insert(m.name.clone(), socks);
        }
        let mut out = ListenFds {
            fds: [-1; LISTEN_MAX],
            count: 0,
        };
        for (slot, fd) in out.fds.iter_mut().zip(&self.listeners[&m.name]) {
            *slot = fd.as_raw_fd();
            out.count += 1;
        }
        Ok(out)
    }
}

/// Listens on `port` on every address: IPv6 and IPv4 in one socket where the kernel has IPv6,
/// IPv4 only where it has not.
fn bind_tcp(port: u16) -> Result<std::net::TcpListener, String> {
    use std::net::{Ipv6Addr, TcpListener};
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|e| format!("cannot listen on TCP port {port}: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Runs in the child between fork and exec: only raw, async-signal-safe system calls.
fn child_setup(
    procs: Option<&CString>,
    nofile: Option<u64>,
    notify_w: Option<i32>,
    listen: ListenFds,
    uid: Option<u32>,
    gid: Option<u32>,
    groups: &[libc::gid_t],
) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on integers and on C strings built before the fork.
    unsafe {
        // The supervisor blocks the signals it reads through signalfd; services start clean.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))?;
        // Own session, hence own process group (pgid = pid) that stop signals reach as a whole.
        check(libc::setsid())?;
        if let Some(path) = procs {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd)?;
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // The sockets move out of the way first: one of them may sit on fd 3 or 4, where the
        // notify pipe or another socket goes.
        let mut parked = [-1; LISTEN_MAX];
        for (park, &fd) in parked.iter_mut().zip(&listen.fds).take(listen.count) {
            *park = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, LISTEN_FD_PARK);
            check(*park)?;
        }
        if let Some(w) = notify_w {
            if w == NOTIFY_FD {
                check(libc::fcntl(w, libc::F_SETFD, 0))?;
            } else {
                check(libc::dup2(w, NOTIFY_FD))?;
            }
        }
        // dup2 leaves the new fd without close-on-exec: exactly these survive the exec.
        for (i, &fd) in parked.iter().enumerate().take(listen.count) {
            check(libc::dup2(fd, LISTEN_FD_FIRST + i as i32))?;
        }
        // After the parking: F_DUPFD refuses a place at or above the limit (EINVAL), and a
        // service with a small `nofile` still gets its sockets.
        if let Some(n) = nofile {
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        if let Some(g) = gid {
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(g))?;
        }
        if let Some(u) = uid {
            check(libc::setuid(u))?;
        }
    }
    Ok(())
}

/// Finds (and on a device, mounts) the cgroup v2 hierarchy at `root` and enables the memory and
/// pids controllers for services. `None` (with the reason) where only cgroup v1 exists, as on
/// many development hosts: limits are then not enforced.
pub fn setup_cgroups(root: &Path, may_mount: bool) -> Result<PathBuf, String> {
    let is_cgroup2 = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    };
    if !is_cgroup2(root) {
        let parent_dev = root
            .parent()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev()
            });
        let own_dev = std::fs::metadata(root).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev()
        });
        let mounted_here = own_dev.is_some() && own_dev != parent_dev;
        if mounted_here || !may_mount {
            return Err(format!(
                "{}: not a cgroup2 mount; limits not enforced",
                root.display()
            ));
        }
        let _ = std::fs::create_dir_all(root);
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "{}: cannot mount cgroup2: {e}; limits not enforced",
                root.display()
            )
        })?;
    }
    let control = root.join("cgroup.subtree_control");
    std::fs::write(&control, "+memory +pids")
        .map_err(|e| format!("{}: {e}; limits not enforced", control.display()))?;
    Ok(root.to_path_buf())
}
