//! PID 1 survives a panic on a helper thread. The real `cairn init`, built with the
//! `test-fixtures` fault switch, runs as PID 1 of a new PID namespace (`unshare --fork --pid
//! --mount-proc`, through the harness in tests/common that supervisor_host.rs uses too); a
//! helper thread is made to panic, and then a killed service must still be restarted by the
//! supervisor and a poweroff must still complete.
//! Needs root (as the test machine has) for the PID namespace.

mod common;

use common::{kill, manifest, Init};

/// The fault switch's thread name and message (firmware/cairn/src/sys/helpers.rs).
const THREAD: &str = "fault-switch";
const MESSAGE: &str = "fault switch: a helper panic on purpose";
/// PID 1's handled signals (the supervisor's `handled_signals`): HUP, INT, USR1, USR2, TERM, CHLD.
const HANDLED: [u32; 6] = [1, 2, 10, 12, 15, 17];

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
    let mut init = Init::start_with_env(
        &[manifest("svc", "sleep", "ready = \"notify\"")],
        &[("CAIRN_TEST_PANIC_HELPER_MS", "300")],
    );
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
        let host = init
            .host_pid_of(ns_pid as u32)
            .expect("the service's process")
            .pid;
        kill(host, "-9");
        init.wait_for(&format!("svc restarted ({round})"), || {
            let s = init.status("svc");
            s["state"] == "ready" && s["pid"].as_u64() != Some(ns_pid)
        });
        let s = init.status("svc");
        assert_eq!(s["restarts"].as_u64(), Some(restarts + round), "{s}");
        assert_eq!(s["last_exit"]["signal"], 9, "{s}");
    }

    // And a poweroff still completes cleanly.
    assert!(init.ctl_ok(&["poweroff"]).contains("powering off"));
    let (out, err) = init.wait_exit();
    assert!(
        out.iter()
            .any(|l| l == "cairn: poweroff requested: exiting (not the device's init)"),
        "{out:#?}"
    );
    assert!(err.iter().any(|l| l == "cairn: svc: stopped"), "{err:#?}");
    assert_eq!(out.iter().filter(|l| is_report(l)).count(), 1, "{out:#?}");
}
