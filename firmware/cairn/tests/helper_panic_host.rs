//! PID 1 survives a panic on a helper thread. The real `cairn init`, built with the
//! `test-fixtures` fault switch, runs as PID 1 of a new PID namespace (`unshare --fork --pid
//! --mount-proc`, as in supervisor_host.rs); a helper thread is made to panic, and then a
//! killed service must still be restarted by the supervisor and a poweroff must still complete.
//! Needs root (as the test machine has) for the PID namespace.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
/// Generous bound for anything to happen; the test polls and goes on as soon as it has.
const PATIENCE: Duration = Duration::from_secs(15);
/// The fault switch's thread name and message (firmware/cairn/src/init/helpers.rs).
const THREAD: &str = "fault-switch";
const MESSAGE: &str = "fault switch: a helper panic on purpose";
/// PID 1's handled signals (the supervisor's `handled_signals`): HUP, INT, USR1, USR2, TERM, CHLD.
const HANDLED: [u32; 6] = [1, 2, 10, 12, 15, 17];

type Lines = Arc<Mutex<Vec<String>>>;

fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            // A failed assertion may have poisoned the lock; the lines are still good.
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    lines
}

/// `cairn init` as PID 1 of its own PID namespace; killed (with everything in it) if the test
/// fails before the poweroff.
struct Init {
    dir: tempfile::TempDir,
    unshare: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Init {
    fn start(panic_after_ms: u64) -> Init {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir(&services).unwrap();
        std::fs::write(
            services.join("svc.toml"),
            format!("name = \"svc\"\nexec = [\"{CAIRN}\", \"fixture\", \"sleep\"]\nready = \"notify\"\n"),
        )
        .unwrap();
        let mut unshare = Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--mount-proc",
                CAIRN,
                "init",
                "--services",
            ])
            .arg(&services)
            .arg("--state")
            .arg(dir.path().join("state"))
            .env("CAIRN_TEST_PANIC_HELPER_MS", panic_after_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) must be installed");
        let stdout = collect(unshare.stdout.take().unwrap());
        let stderr = collect(unshare.stderr.take().unwrap());
        Init {
            dir,
            unshare,
            stdout,
            stderr,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("state/control.sock")
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}\nstdout: {:#?}\nstderr: {:#?}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(CAIRN)
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn status(&self, service: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ctl(&["status", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The supervisor's pid as the host sees it: unshare's child.
    fn host_pid(&self) -> u32 {
        children_of(self.unshare.id())
            .first()
            .copied()
            .expect("unshare's child")
    }

    fn stdout_lines(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().filter(|l| pred(l)).cloned().collect()
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            // Killing the namespace's init takes every process in it along.
            for pid in children_of(self.unshare.id()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = self.unshare.wait();
        }
    }
}

/// Host pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The host pid of the process that is `ns_pid` in the namespace, among `parent`'s children.
fn host_pid_in_namespace(parent: u32, ns_pid: u64) -> Option<u32> {
    children_of(parent).into_iter().find(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            == Some(ns_pid)
    })
}

/// Each thread of `pid`: its name and its blocked-signal mask.
fn threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let (Some(name), Some(blocked)) = (field("Name:"), field("SigBlk:")) else {
            continue;
        };
        out.push((name, u64::from_str_radix(&blocked, 16).unwrap()));
    }
    out
}

#[test]
fn a_helper_panic_is_contained_and_supervision_goes_on() {
    let mut init = Init::start(300);
    init.wait_for("the control socket", || init.socket().exists());
    init.wait_for("svc ready", || init.status("svc")["state"] == "ready");

    // The helper panics: one clear line, and no emergency.
    let is_report = |l: &str| l.starts_with("cairn: error: ");
    init.wait_for("the helper's panic", || {
        !init.stdout_lines(is_report).is_empty()
    });
    let reports = init.stdout_lines(is_report);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let head = format!("cairn: error: helper thread '{THREAD}' panicked: {MESSAGE} (at ");
    let tail = "); the thread is stopped, services go on";
    assert!(
        reports[0].starts_with(&head) && reports[0].ends_with(tail),
        "{}",
        reports[0]
    );
    assert!(reports[0].contains("helpers.rs:"), "{}", reports[0]);
    assert!(
        init.stdout_lines(|l| l.contains("EMERGENCY") || l.contains("FATAL"))
            .is_empty(),
        "{:#?}",
        init.stdout.lock().unwrap()
    );
    assert!(
        !init
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("panicked")),
        "the default panic report is replaced by the hook's line"
    );

    // The helper is parked, not gone (its hook never returned), and, like every thread of
    // PID 1, it has the handled signals blocked: only the supervisor's signalfd takes them.
    let pid1 = init.host_pid();
    let all = threads(pid1);
    assert!(
        all.iter().any(|(name, _)| name == THREAD),
        "threads of PID 1: {all:?}"
    );
    for (name, blocked) in &all {
        for sig in HANDLED {
            assert!(
                blocked & (1 << (sig - 1)) != 0,
                "thread {name} of PID 1 has signal {sig} unblocked (SigBlk {blocked:x})"
            );
        }
    }

    // Supervision goes on: a killed service is reaped and restarted by the supervisor, each
    // time (a helper taking SIGCHLD would reap one from under it; three kills make that show).
    let restarts = init.status("svc")["restarts"].as_u64().unwrap();
    for round in 1..=3 {
        let ns_pid = init.status("svc")["pid"].as_u64().unwrap();
        let host = host_pid_in_namespace(pid1, ns_pid).expect("the service's process");
        assert!(Command::new("kill")
            .args(["-9", &host.to_string()])
            .status()
            .unwrap()
            .success());
        init.wait_for(&format!("svc restarted ({round})"), || {
            let s = init.status("svc");
            s["state"] == "ready" && s["pid"].as_u64() != Some(ns_pid)
        });
        let s = init.status("svc");
        assert_eq!(s["restarts"].as_u64(), Some(restarts + round), "{s}");
        assert_eq!(s["last_exit"]["signal"], 9, "{s}");
    }

    // And a poweroff still completes cleanly.
    assert!(init.ctl(&["poweroff"]).contains("powering off"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = init.unshare.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "init did not exit after poweroff\nstdout: {:#?}\nstderr: {:#?}",
            init.stdout.lock().unwrap(),
            init.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "init exited with {status}");
    // Let the readers take the last lines.
    std::thread::sleep(Duration::from_millis(100));
    let out = init.stdout.lock().unwrap().clone();
    let err = init.stderr.lock().unwrap().clone();
    assert!(
        out.iter()
            .any(|l| l == "cairn: poweroff requested: exiting (not the device's init)"),
        "{out:#?}"
    );
    assert!(err.iter().any(|l| l == "cairn: svc: stopped"), "{err:#?}");
    assert_eq!(out.iter().filter(|l| is_report(l)).count(), 1, "{out:#?}");
}
