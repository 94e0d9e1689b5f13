//! The harness shared by the host tests that run the real `cairn init` as PID 1 of a new PID
//! namespace (`unshare --fork --pid --mount-proc`) and drive it through `cairn ctl` as a person
//! would: supervisor_host.rs and helper_panic_host.rs. One copy, so the two tests start,
//! watch and stop init the same way. Needs root (as the test machine has) for the PID namespace.
//!
//! It lives in `tests/common/mod.rs` (not `tests/common.rs`) so Cargo does not build it as a
//! test of its own; each test file takes it in with `mod common;`. Each test file is then its
//! own crate, so a helper only one file uses is marked `#[allow(dead_code)]` to keep the other
//! file's build free of warnings.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
/// Generous bound for anything to happen; tests poll and go on as soon as it has.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The lines a process has written so far, taken by a reader thread (see [`collect`]).
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Reads `stream` line by line on a thread of its own, so the process never blocks on a full
/// pipe and the test can look at what it has said so far.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
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

/// A manifest (name, text) for a service that runs `cairn fixture <fixture>`, with `extra`
/// manifest lines after the name and exec.
pub fn manifest(name: &str, fixture: &str, extra: &str) -> (String, String) {
    let args: Vec<String> = fixture
        .split_whitespace()
        .map(|a| format!("{a:?}"))
        .collect();
    (
        name.to_string(),
        format!(
            "name = \"{name}\"\nexec = [\"{CAIRN}\", \"fixture\", {}]\n{extra}\n",
            args.join(", ")
        ),
    )
}

/// `cairn init` as PID 1 of its own PID namespace; killed (with everything in it) on drop if
/// the test fails before the poweroff.
pub struct Init {
    dir: tempfile::TempDir,
    unshare: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Init {
    /// Starts init on a services directory holding `manifests` (name, text; written as
    /// `<name>.toml`) and waits for its control socket, so `ctl` works at once.
    #[allow(
        dead_code,
        reason = "supervisor_host only (helper_panic_host needs an environment)"
    )]
    pub fn start(manifests: &[(String, String)]) -> Init {
        Init::start_with_env(manifests, &[])
    }

    /// [`Init::start`], with `env` added to init's environment (the `test-fixtures` switches,
    /// such as `CAIRN_TEST_PANIC_HELPER_MS`).
    pub fn start_with_env(manifests: &[(String, String)], env: &[(&str, &str)]) -> Init {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir(&services).unwrap();
        for (name, text) in manifests {
            std::fs::write(services.join(format!("{name}.toml")), text).unwrap();
        }
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
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) must be installed");
        let stdout = collect(unshare.stdout.take().unwrap());
        let stderr = collect(unshare.stderr.take().unwrap());
        let init = Init {
            dir,
            unshare,
            stdout,
            stderr,
        };
        init.wait_for("the control socket", || init.socket().exists());
        init
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("state/control.sock")
    }

    #[allow(dead_code, reason = "supervisor_host only")]
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Polls `cond` until it holds; after [`PATIENCE`], fails showing all init has said.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
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

    /// `cairn ctl <args>` on this init's socket, whatever its outcome.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CAIRN)
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    /// `cairn ctl <args>`, which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "cairn ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// One service's entry in `status --json`, or null if there is no such service.
    pub fn status(&self, service: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ctl_ok(&["status", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[allow(dead_code, reason = "supervisor_host only")]
    pub fn wait_state(&self, service: &str, state: &str) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("{service} to be {state}"), || {
            last = self.status(service);
            last["state"] == state
        });
        last
    }

    #[allow(dead_code, reason = "supervisor_host only")]
    pub fn logs(&self, service: &str) -> String {
        self.ctl_ok(&["logs", service])
    }

    /// The lines init has written to stdout so far that satisfy `pred`.
    #[allow(dead_code, reason = "helper_panic_host only")]
    pub fn stdout_lines(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().filter(|l| pred(l)).cloned().collect()
    }

    /// The supervisor's pid as the host sees it: unshare's child.
    pub fn host_pid(&self) -> u32 {
        let unshare = self.unshare.id();
        processes()
            .into_iter()
            .find(|p| p.ppid == unshare)
            .map(|p| p.pid)
            .expect("unshare's child")
    }

    /// Every process below the supervisor (host pids).
    pub fn descendants(&self) -> Vec<Proc> {
        let all = processes();
        let mut found = vec![self.host_pid()];
        let mut out = Vec::new();
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            for p in all.iter().filter(|p| p.ppid == parent) {
                found.push(p.pid);
                out.push(p.clone());
            }
            i += 1;
        }
        out
    }

    /// The host pid of the process that is `ns_pid` inside the namespace.
    pub fn host_pid_of(&self, ns_pid: u32) -> Option<Proc> {
        self.descendants().into_iter().find(|p| p.ns_pid == ns_pid)
    }

    /// Asks for a poweroff and waits for the supervisor (and so the namespace) to end; what
    /// init wrote to stdout and stderr.
    #[allow(dead_code, reason = "supervisor_host only")]
    pub fn poweroff(&mut self) -> (Vec<String>, Vec<String>) {
        self.ctl_ok(&["poweroff"]);
        self.wait_exit()
    }

    /// Waits for init (and so the namespace) to end, which it must do cleanly once a poweroff
    /// has been asked for; what init wrote to stdout and stderr.
    pub fn wait_exit(&mut self) -> (Vec<String>, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.unshare.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "init did not exit after poweroff\nstdout: {:#?}\nstderr: {:#?}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "init exited with {status}");
        // Let the readers take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (out, err)
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            // Killing the namespace's init takes every process in it along.
            let unshare = self.unshare.id();
            for p in processes().into_iter().filter(|p| p.ppid == unshare) {
                let _ = Command::new("kill")
                    .args(["-9", &p.pid.to_string()])
                    .status();
            }
            let _ = self.unshare.wait();
        }
    }
}

/// A process as /proc shows it to the host.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// Its pid inside its own (innermost) PID namespace.
    pub ns_pid: u32,
    #[allow(dead_code, reason = "supervisor_host only")]
    pub state: char,
    #[allow(dead_code, reason = "supervisor_host only")]
    pub cmdline: String,
}

/// Every process on the host.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a.to_string()) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ns_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse().ok())
            .unwrap_or(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0),
            ns_pid,
            state: fields.first().and_then(|s| s.chars().next()).unwrap_or('?'),
            cmdline,
        });
    }
    out
}

/// Sends `sig` (as `kill` spells it: `-9`, `-TERM`) to the host process `pid`, which must work.
pub fn kill(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}
