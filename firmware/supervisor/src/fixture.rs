//! Test services (`cairn fixture ROLE`): small programs that misbehave on purpose, so host and
//! QEMU tests can prove what the supervisor does with crashes, stubborn processes, memory hogs,
//! orphans and chatty output. Each prints what it does, so a test reads the answer in the log.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

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
    /// Listen on 127.0.0.1:PORT; a connection sending `crash` makes it abort, `exit N` exit N.
    CrashOnCommand {
        #[arg(long)]
        port: u16,
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
            say(&format!("sleep: pid {pid}"));
            notify_ready();
            forever()
        }
        Role::CrashOnCommand { port } => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            say(&format!(
                "crash-on-command: pid {pid} listening on {port} at {} ms",
                monotonic_ms()
            ));
            notify_ready();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut line = String::new();
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::new(&conn);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                    ["crash"] => {
                        say(&format!(
                            "crash-on-command: crashing at {} ms",
                            monotonic_ms()
                        ));
                        std::process::abort();
                    }
                    ["exit", code] => {
                        let code = code.parse().unwrap_or(1);
                        say(&format!("crash-on-command: exiting with {code}"));
                        std::process::exit(code);
                    }
                    _ => {
                        let mut w = &conn;
                        let _ = w.write_all(b"unknown command\n");
                    }
                }
            }
            Ok(())
        }
        Role::IgnoreTerm => {
            // SAFETY: setting a signal's disposition to SIG_IGN involves no handler code.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            say(&format!("ignore-term: pid {pid} ignores SIGTERM"));
            notify_ready();
            forever()
        }
        Role::HogMemory {
            step_mib,
            interval_ms,
            max_mib,
        } => {
            say(&format!("hog-memory: pid {pid}"));
            notify_ready();
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
                    if unsafe { libc::fork() } == 0 {
                        unsafe { libc::setsid() };
                        say(&format!("orphan: pid {}", std::process::id()));
                        std::thread::sleep(Duration::from_millis(linger_ms));
                        unsafe { libc::_exit(0) };
                    }
                    unsafe { libc::_exit(0) };
                }
                -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
                middle => {
                    let mut status = 0;
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
