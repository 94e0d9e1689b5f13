//! Test services (`cairn fixture ROLE`): small programs that misbehave on purpose, so host and
//! QEMU tests can prove what the supervisor does with crashes, stubborn processes, memory hogs,
//! orphans and chatty output. Each prints what it does, so a test reads the answer in the log.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// Longest `resolve NAME` waits for an answer.
const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// `cairn fixture` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(clap::Subcommand, Debug)]
enum Role {
    /// Run until killed.
    Sleep,
    /// Take commands, one per line, from TCP 127.0.0.1:PORT or from the virtio-serial port
    /// named NAME (hot-plugged by a QEMU test): `crash` aborts, `exit N` exits with N, `rss`
    /// answers PID 1's resident memory, `read PATH` a small file's text, `fds PID` what a process has open, `ctl ARGS…` runs `cairn ctl ARGS…` and answers its output,
    /// `resolve NAME` asks the LAN for `NAME.local`'s A record by mDNS (`resolved NAME ADDR` or
    /// `unresolved NAME`), `clear-hwm PID` resets a process's peak memory, `vault-put MIB SEED`
    /// times `cairn vault put` of the bench's bytes (`vault-put SECONDS BYTES`), `kill PID`
    /// sends SIGKILL (`killed PID`), `bench ARGS…` runs `cairn bench ARGS…` (answering each line
    /// of its output as `bench-out LINE`, then `bench-done CODE`), `fill DIR` takes every free
    /// block of DIR's filesystem with
    /// `DIR/fill` (`filled BYTES`), `unfill DIR` gives them back, `xmpp-account NAME DOMAIN
    /// PASSWORD` makes a Jabber account through Prosody's admin socket (`account NAME@DOMAIN`).
    /// `--inherited`: on the first socket the supervisor handed over (`$CAIRN_LISTEN_FDS`).
    CrashOnCommand {
        #[arg(long, required_unless_present_any = ["virtio", "inherited"])]
        port: Option<u16>,
        #[arg(long)]
        inherited: bool,
        #[arg(long)]
        virtio: Option<String>,
    },
    /// Ignore SIGTERM and run until killed.
    IgnoreTerm,
    /// Allocate and touch memory in steps until killed or at `max_mib`.
    HogMemory {
        #[arg(long, default_value_t = 4)]
        step_mib: usize,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1024)]
        max_mib: usize,
        /// Hog only if this file does not exist yet (it is created first): a restarted hog
        /// then stays small.
        #[arg(long)]
        once_marker: Option<std::path::PathBuf>,
    },
    /// Leave an orphan behind that exits after `linger_ms`, then run until killed.
    Orphan {
        #[arg(long, default_value_t = 300)]
        linger_ms: u64,
    },
    /// Fork `children` processes into the own process group, then run until killed.
    Group {
        #[arg(long, default_value_t = 2)]
        children: usize,
        /// The whole group ignores SIGTERM.
        #[arg(long)]
        ignore_term: bool,
    },
    /// Print `count` numbered lines of `width` bytes, then run until killed.
    LogLines {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        width: usize,
    },
    /// Exit with `code` after `after_ms`.
    Exit {
        #[arg(long)]
        code: i32,
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
    },
}

/// Runs a fixture role; most never return.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pid = std::process::id();
    match args.role {
        Role::Sleep => {
            // What the supervisor set up, for tests to check: account, directory, limits, env.
            let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(0, |(soft, _)| soft);
            let cwd = std::env::current_dir().unwrap_or_default();
            say(&format!(
                "sleep: pid {pid} pgid {} sid {} uid {} gid {} cwd {} nofile {nofile} note {}",
                nix::unistd::getpgrp(),
                nix::unistd::getsid(None).map_or(-1, |p| p.as_raw()),
                nix::unistd::getuid(),
                nix::unistd::getgid(),
                cwd.display(),
                std::env::var("FIXTURE_NOTE").unwrap_or_default()
            ));
            notify_ready();
            forever()
        }
        Role::CrashOnCommand {
            port,
            virtio,
            inherited,
        } => {
            let started = monotonic_ms();
            let listener = if inherited {
                Some(inherited_listener()?)
            } else if let Some(port) = port {
                Some(TcpListener::bind((Ipv4Addr::LOCALHOST, port))?)
            } else {
                None
            };
            if let Some(listener) = listener {
                let port = listener.local_addr()?.port();
                say(&format!(
                    "crash-on-command: pid {pid} listening on {port} at {started} ms"
                ));
                notify_ready();
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    if BufReader::new(&conn).read_line(&mut line).is_ok() {
                        command(&line, &mut &conn);
                    }
                }
                return Ok(());
            }
            let name = virtio.unwrap_or_default();
            notify_ready();
            // The port appears when the test plugs it in; until then, wait.
            let dev = loop {
                if let Some(dev) = find_virtio_port(&name) {
                    break dev;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            say(&format!(
                "crash-on-command: pid {pid} on {} started at {started} ms",
                dev.display()
            ));
            let port = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)?;
            let mut w = &port;
            writeln!(w, "started {started} pid {pid}")?;
            let mut reader = BufReader::new(&port);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    // The host side is not connected: wait for it.
                    Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                    Ok(_) => command(&line, &mut &port),
                    Err(e) => anyhow::bail!("{}: {e}", dev.display()),
                }
            }
        }
        Role::IgnoreTerm => {
            // SAFETY: setting a signal's disposition to SIG_IGN involves no handler code.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            say(&format!(
                "ignore-term: pid {pid} uid {} ignores SIGTERM",
                nix::unistd::getuid()
            ));
            notify_ready();
            forever()
        }
        Role::HogMemory {
            step_mib,
            interval_ms,
            max_mib,
            once_marker,
        } => {
            say(&format!("hog-memory: pid {pid}"));
            notify_ready();
            if let Some(marker) = once_marker {
                if marker.exists() {
                    say("hog-memory: ran before; staying small");
                    forever();
                }
                std::fs::write(&marker, b"")?;
            }
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            let step = step_mib.max(1) << 20;
            while hoard.len() * step_mib.max(1) < max_mib {
                // Touch every page, so the memory is really used.
                hoard.push(vec![0xa5; step]);
                say(&format!(
                    "hog-memory: holding {} MiB",
                    hoard.len() * step_mib.max(1)
                ));
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            forever()
        }
        Role::Orphan { linger_ms } => {
            // SAFETY: fork in a single-threaded program; the children only sleep, print and exit.
            match unsafe { libc::fork() } {
                0 => {
                    // Middle process: start the orphan-to-be in a new session (out of the
                    // service's group), then exit so that it is re-parented to PID 1.
                    // SAFETY: as above, the middle process has one thread.
                    if unsafe { libc::fork() } == 0 {
                        // SAFETY: setsid takes no pointers; it only changes our session.
                        unsafe { libc::setsid() };
                        say(&format!("orphan: pid {}", std::process::id()));
                        std::thread::sleep(Duration::from_millis(linger_ms));
                        // SAFETY: _exit ends the process without running anything of ours.
                        unsafe { libc::_exit(0) };
                    }
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) };
                }
                -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
                middle => {
                    let mut status = 0;
                    // SAFETY: waitpid only writes `status`, which outlives the call.
                    unsafe { libc::waitpid(middle, &mut status, 0) };
                }
            }
            say(&format!("orphan-parent: pid {pid}"));
            notify_ready();
            forever()
        }
        Role::Group {
            children,
            ignore_term,
        } => {
            if ignore_term {
                // SAFETY: as for ignore-term; inherited by the children forked below.
                unsafe {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                }
            }
            for _ in 0..children.min(64) {
                // SAFETY: as above; the child only sleeps.
                if unsafe { libc::fork() } == 0 {
                    say(&format!("group-member: pid {}", std::process::id()));
                    forever();
                }
            }
            say(&format!("group-leader: pid {pid}"));
            notify_ready();
            forever()
        }
        Role::LogLines { count, width } => {
            let out = std::io::stdout();
            let mut out = out.lock();
            for i in 0..count {
                let head = format!("line {i:08} ");
                let pad = width.saturating_sub(head.len());
                writeln!(out, "{head}{}", "x".repeat(pad))?;
            }
            writeln!(out, "log-lines: done")?;
            out.flush()?;
            notify_ready();
            forever()
        }
        Role::Exit { code, after_ms } => {
            say(&format!("exit: pid {pid} exits with {code}"));
            std::thread::sleep(Duration::from_millis(after_ms));
            std::process::exit(code)
        }
    }
}

/// The bench's bytes: `mib` MiB from xorshift64 seeded with `seed`, as
/// `hil-tests/examples/web_bench.rs` uploads them.
pub fn bench_bytes(mib: usize, seed: u64) -> impl Iterator<Item = [u8; 8]> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..mib * (1 << 20) / 8).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()
    })
}

/// `cairn vault put`'s speed on this device for the bench: writes the bench's bytes to a file
/// on the data partition, makes a vault whose shards go to the storage node, and times `put`
/// of that file (as the CLI does it); everything but the node's shards is removed after.
/// Returns the seconds and the bytes.
fn vault_put(mib: usize, seed: u64) -> anyhow::Result<(f64, u64)> {
    let dir = std::path::Path::new("/data/bench");
    let (file, mut v) = super::bench_link::bench_vault(
        dir,
        mib,
        seed,
        4,
        8,
        vec![cairn_vault::home::Target::Node(
            crate::sys::paths::NODE_SOCKET.into(),
        )],
    )?;
    let started = std::time::Instant::now();
    let r = v.put(&[&file], &mut cairn_vault::progress::NoProgress)?;
    let secs = started.elapsed().as_secs_f64();
    drop(v);
    std::fs::remove_dir_all(dir)?;
    Ok((secs, r.bytes))
}

/// The first listening socket the supervisor handed over.
fn inherited_listener() -> anyhow::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let fds = std::env::var("CAIRN_LISTEN_FDS")?;
    let fd: i32 = fds.split(',').next().unwrap_or("").parse()?;
    // SAFETY: the supervisor passed this fd open, for this process alone.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// An error but a closed pipe.
trait FilterBrokenPipe {
    fn filter_broken_pipe(self) -> std::io::Result<()>;
}

impl<T> FilterBrokenPipe for std::io::Result<T> {
    fn filter_broken_pipe(self) -> std::io::Result<()> {
        match self {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(()),
        }
    }
}

/// Runs `cairn update ARGS` (its standard input: `n` bytes of `from` at an offset, if given);
/// answers its output as `ctl-out` lines and its exit code as `ctl-done`, as `ctl` does.
fn update(args: &[&str], from: Option<(&str, u64, u64)>, out: &mut impl Write) {
    use std::process::Stdio;
    let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/cairn".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("update").args(args);
    cmd.stdin(if from.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let result = cmd.spawn().and_then(|mut child| {
        if let (Some((dev, at, n)), Some(mut stdin)) = (from, child.stdin.take()) {
            use std::io::{Read, Seek};
            let copied = std::fs::File::open(dev).and_then(|mut f| {
                f.seek(std::io::SeekFrom::Start(at))?;
                std::io::copy(&mut f.take(n), &mut stdin)
            });
            // A refusal stops reading early: its answer says why.
            if let Err(e) = copied.filter_broken_pipe() {
                let _ = writeln!(out, "ctl-out update-from {dev}: {e}");
            }
        }
        child.wait_with_output()
    });
    match result {
        Ok(o) => {
            for l in String::from_utf8_lossy(&o.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&o.stderr).lines())
            {
                let _ = writeln!(out, "ctl-out {l}");
            }
            // The largest peak RSS of the children waited for (KiB): the installer's, for
            // scripts/bench update (the fixture's other children are smaller).
            // SAFETY: rusage is plain integers, for which all zeros is a value.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: getrusage writes the struct it is given, which outlives the call.
            if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } == 0 {
                let _ = writeln!(out, "ctl-maxrss {}", ru.ru_maxrss);
            }
            let _ = writeln!(out, "ctl-done {}", o.status.code().unwrap_or(-1));
        }
        Err(e) => {
            let _ = writeln!(out, "ctl-out {e}\nctl-done -1");
        }
    }
}

/// Carries out one command line of `crash-on-command`, answering on `out`.
fn command(line: &str, out: &mut impl Write) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["crash"] => {
            let at = monotonic_ms();
            say(&format!("crash-on-command: crashing at {at} ms"));
            let _ = writeln!(out, "crashing {at}");
            let _ = out.flush();
            std::process::abort();
        }
        ["exit", code] => {
            let code = code.parse().unwrap_or(1);
            say(&format!("crash-on-command: exiting with {code}"));
            std::process::exit(code);
        }
        ["rss"] => {
            let kib = std::fs::read_to_string("/proc/1/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                })
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(out, "rss {kib}");
        }
        ["read", path] => {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("error {e}"));
            let _ = writeln!(out, "file {}", text.trim().replace('\n', " "));
        }
        ["clear-hwm", pid] => {
            // "5" resets the process's peak resident size (proc(5), clear_refs).
            match std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
                Ok(()) => {
                    let _ = writeln!(out, "cleared {pid}");
                }
                Err(e) => {
                    let _ = writeln!(out, "error clear-hwm {pid}: {e}");
                }
            }
        }
        ["vault-put", mib, seed] => {
            let answer = match (mib.parse(), seed.parse()) {
                (Ok(mib), Ok(seed)) => match vault_put(mib, seed) {
                    Ok((secs, bytes)) => format!("vault-put {secs:.3} {bytes}"),
                    Err(e) => format!("error vault-put: {e:#}"),
                },
                _ => "error vault-put: MIB and SEED are numbers".to_string(),
            };
            let _ = writeln!(out, "{answer}");
        }
        ["fds", pid] => {
            let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| std::fs::read_link(e.path()).ok())
                        .map(|l| l.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(out, "fds {}", links.join(" "));
        }
        ["ctl", args @ ..] => {
            let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/cairn".into());
            match std::process::Command::new(exe)
                .arg("ctl")
                .args(args)
                .output()
            {
                Ok(o) => {
                    for l in String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .chain(String::from_utf8_lossy(&o.stderr).lines())
                    {
                        let _ = writeln!(out, "ctl-out {l}");
                    }
                    let _ = writeln!(out, "ctl-done {}", o.status.code().unwrap_or(-1));
                }
                Err(e) => {
                    let _ = writeln!(out, "ctl-out {e}\nctl-done -1");
                }
            }
        }
        ["update", args @ ..] => update(args, None, out),
        ["update-from", dev, offset, bytes, args @ ..] => match (offset.parse(), bytes.parse()) {
            // The bundle rides on a disk the host attached: exactly its bytes go to
            // `cairn update apply -`, as a download piped in would.
            (Ok(at), Ok(n)) => update(args, Some((dev, at, n)), out),
            _ => {
                let _ = writeln!(
                    out,
                    "ctl-out update-from: {bytes:?} is not a byte count\nctl-done -1"
                );
            }
        },
        ["bench", args @ ..] => {
            // The benchmark's lines as they come (a round takes minutes), then its exit code;
            // its errors go to the service's log.
            let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/cairn".into());
            let code = match std::process::Command::new(exe)
                .arg("bench")
                .args(args)
                .stdout(std::process::Stdio::piped())
                .spawn()
            {
                Ok(mut child) => {
                    if let Some(stdout) = child.stdout.take() {
                        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                            let _ = writeln!(out, "bench-out {l}");
                            let _ = out.flush();
                        }
                    }
                    child.wait().map_or(-1, |s| s.code().unwrap_or(-1))
                }
                Err(e) => {
                    let _ = writeln!(out, "bench-out {e}");
                    -1
                }
            };
            let _ = writeln!(out, "bench-done {code}");
        }
        ["kill", pid] => {
            let answer = match pid.parse::<i32>() {
                Ok(p) if p > 1 => {
                    match nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    ) {
                        Ok(()) => format!("killed {p}"),
                        Err(e) => format!("error kill {p}: {e}"),
                    }
                }
                _ => format!("error kill: {pid:?} is not a process to kill"),
            };
            let _ = writeln!(out, "{answer}");
        }
        ["fill", dir] => {
            let answer = match fill(std::path::Path::new(dir)) {
                Ok(bytes) => format!("filled {bytes}"),
                Err(e) => format!("error fill {dir}: {e:#}"),
            };
            let _ = writeln!(out, "{answer}");
        }
        ["unfill", dir] => {
            let answer = match std::fs::remove_file(std::path::Path::new(dir).join("fill")) {
                Ok(()) => format!("unfilled {dir}"),
                Err(e) => format!("error unfill {dir}: {e}"),
            };
            let _ = writeln!(out, "{answer}");
        }
        ["xmpp-account", name, domain, password @ ..] if !password.is_empty() => {
            // The password is the rest of the line, spaces included.
            let password = password.join(" ");
            let prosody = cairn_web::chat::Prosody {
                socket: "/run/prosody/admin.sock".into(),
            };
            let answer = match prosody.create(name, domain, &password) {
                Ok(()) => format!("account {name}@{domain}"),
                Err(e) => format!("error xmpp-account {name}@{domain}: {e:#}"),
            };
            let _ = writeln!(out, "{answer}");
        }
        ["resolve", name] => {
            // The web's own resolver, as another machine on the LAN asks.
            let lan = cairn_web::mdns::Interfaces::Lan;
            let _ = match cairn_web::mdns::resolve_v4(name, lan, RESOLVE_WAIT) {
                Ok(Some(addr)) => writeln!(out, "resolved {name} {addr}"),
                Ok(None) => writeln!(out, "unresolved {name}"),
                Err(e) => writeln!(out, "unresolved {name} ({e:#})"),
            };
        }
        _ => {
            let _ = writeln!(out, "unknown command {:?}", line.trim());
        }
    }
    let _ = out.flush();
}

/// Takes every block of `dir`'s filesystem that root may still use (the reserve for root
/// included, so every service's writes fail) with one file, `dir/fill`, allocated in pieces
/// that halve when the disk says no space (the file's own extent tree needs blocks too), down
/// to one block. Returns its size.
fn fill(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(dir.join("fill"))?;
    let (mut end, mut piece): (i64, i64) = (0, 64 << 20);
    while piece >= 4096 {
        // SAFETY: fallocate(2) on a file this function opened; no memory involved.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, end, piece) } == 0 {
            end += piece;
            continue;
        }
        let e = std::io::Error::last_os_error();
        anyhow::ensure!(e.raw_os_error() == Some(libc::ENOSPC), "fallocate: {e}");
        piece /= 2;
    }
    // What is allocated stays allocated: the file is the point.
    f.sync_all()?;
    Ok(end as u64)
}

/// `/dev/vportNpM` of the virtio-serial port called `name`, once it exists.
fn find_virtio_port(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/sys/class/virtio-ports")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name))
        .map(|e| std::path::Path::new("/dev").join(e.file_name()))
}

/// One line on stdout, flushed at once (stdout is a pipe, not a terminal).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes the readiness line to `$NOTIFY_FD` when the supervisor gave one.
fn notify_ready() {
    let Some(fd) = std::env::var("NOTIFY_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: writing to and closing an fd number the supervisor passed for this purpose.
    unsafe {
        libc::write(fd, b"ready\n".as_ptr().cast(), 6);
        libc::close(fd);
    }
}

fn monotonic_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
