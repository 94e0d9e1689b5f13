//! Deterministic tests of the state machine: a fake clock, fake processes, no sleeping.

use super::*;
use crate::manifest::{Limits, Manifest, Readiness, RestartPolicy};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

#[derive(Clone, Default)]
struct FakeClock(Rc<Cell<Millis>>);

impl Clock for FakeClock {
    fn now_ms(&self) -> Millis {
        self.0.get()
    }
}

#[derive(Default)]
struct World {
    next_pid: u32,
    /// (service, pid) in spawn order.
    spawned: Vec<(String, u32)>,
    /// (pid, signal) in order sent.
    signals: Vec<(u32, StopSignal)>,
    open_ports: BTreeSet<u16>,
    unspawnable: BTreeSet<String>,
}

#[derive(Clone, Default)]
struct FakeSpawner(Rc<RefCell<World>>);

impl Spawner for FakeSpawner {
    fn spawn(&mut self, m: &Manifest) -> Result<u32, String> {
        let mut w = self.0.borrow_mut();
        if w.unspawnable.contains(&m.name) {
            return Err("No such file or directory".into());
        }
        w.next_pid += 1;
        let pid = 100 + w.next_pid;
        w.spawned.push((m.name.clone(), pid));
        Ok(pid)
    }
    fn signal_group(&mut self, pid: u32, signal: StopSignal) {
        self.0.borrow_mut().signals.push((pid, signal));
    }
    fn tcp_ready(&mut self, port: u16) -> bool {
        self.0.borrow().open_ports.contains(&port)
    }
}

fn svc(name: &str) -> Manifest {
    Manifest {
        name: name.into(),
        exec: vec!["/bin/true".into()],
        env: BTreeMap::new(),
        user: None,
        group: None,
        groups: vec![],
        runtime_dir: false,
        requires: Vec::new(),
        workdir: None,
        workdir_group_read: false,
        depends_on: vec![],
        ready: Readiness::None,
        restart: RestartPolicy::Always,
        stop_grace_ms: 1000,
        ready_timeout_ms: 5000,
        limits: Limits::default(),
        listen: vec![],
        control: vec![],
    }
}

struct Harness {
    clock: FakeClock,
    world: FakeSpawner,
    sup: Supervisor<FakeClock, FakeSpawner>,
}

impl Harness {
    fn new(manifests: Vec<Manifest>) -> Self {
        let clock = FakeClock::default();
        let world = FakeSpawner::default();
        let sup = Supervisor::new(manifests, clock.clone(), world.clone(), Policy::default());
        Harness { clock, world, sup }
    }
    fn advance(&mut self, ms: Millis) {
        self.clock.0.set(self.clock.0.get() + ms);
        self.sup.tick();
    }
    /// Runs the clock forward to the machine's next deadline.
    fn advance_to_deadline(&mut self) -> Millis {
        let d = self.sup.next_deadline().expect("a deadline");
        let now = self.clock.0.get();
        self.advance(d.saturating_sub(now));
        d - now
    }
    fn spawned(&self) -> Vec<String> {
        self.world
            .0
            .borrow()
            .spawned
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
    fn pid(&self, name: &str) -> u32 {
        self.sup.pid_of(name).expect("running")
    }
    fn state(&self, name: &str) -> &'static str {
        self.sup
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .state
    }
    fn crash(&mut self, name: &str) {
        let pid = self.pid(name);
        assert!(self.sup.on_exit(pid, ExitStatus::Signal(9)));
        self.sup.tick();
    }
    fn signals(&self) -> Vec<(u32, StopSignal)> {
        self.world.0.borrow().signals.clone()
    }
    fn now(&self) -> Millis {
        self.clock.0.get()
    }
    /// Crashes a running service until it is failed for a crash loop (5 failures within 60 s).
    fn crash_loop(&mut self, name: &str) {
        for _ in 0..5 {
            assert!(self.sup.pid_of(name).is_some(), "{name} runs");
            self.crash(name);
            if self.state(name) == "backoff" {
                self.advance_to_deadline();
            }
        }
        assert_eq!(self.state(name), "failed");
        assert!(self.now() < 60_000);
    }
    fn status_of(&self, name: &str) -> ServiceStatus {
        self.sup
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }
}

#[test]
fn starts_in_dependency_order() {
    let mut web = svc("web");
    web.depends_on = vec!["node".into()];
    let mut node = svc("node");
    node.ready = Readiness::Notify;
    let mut h = Harness::new(vec![web, node, svc("ui")]);
    h.sup.tick();
    assert_eq!(h.spawned(), vec!["node", "ui"]);
    assert_eq!(h.state("web"), "waiting");
    h.advance(1000);
    assert_eq!(
        h.spawned(),
        vec!["node", "ui"],
        "web waits for node's readiness"
    );
    let pid = h.pid("node");
    h.sup.on_notify(pid);
    h.sup.tick();
    assert_eq!(h.spawned(), vec!["node", "ui", "web"]);
    assert!(h.sup.all_ready());
}

#[test]
fn chain_of_instantly_ready_services_starts_in_one_tick() {
    let mut a = svc("a");
    a.depends_on = vec!["b".into()];
    let mut b = svc("b");
    b.depends_on = vec!["c".into()];
    let mut h = Harness::new(vec![a, b, svc("c")]);
    h.sup.tick();
    assert_eq!(h.spawned(), vec!["c", "b", "a"]);
    assert!(h.sup.all_ready());
}

#[test]
fn no_services_is_ready() {
    let h = Harness::new(vec![]);
    assert!(h.sup.all_ready());
    assert!(h.sup.all_stopped());
}

#[test]
fn backoff_schedule_doubles_up_to_the_bound() {
    let p = Policy::default();
    let delays: Vec<Millis> = (1..=12).map(|n| p.backoff_ms(n)).collect();
    assert_eq!(
        delays,
        vec![0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
    );
    assert_eq!(p.backoff_ms(u32::MAX), 30_000);
}

#[test]
fn crash_restarts_at_once_then_backs_off() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.advance(2000);
    h.crash("a");
    assert_eq!(h.spawned().len(), 2, "first restart is immediate");
    h.advance(2000);
    h.crash("a");
    assert_eq!(h.state("a"), "backoff");
    assert_eq!(h.advance_to_deadline(), 100);
    assert_eq!(h.spawned().len(), 3);
    h.crash("a");
    assert_eq!(h.advance_to_deadline(), 200);
    assert_eq!(h.spawned().len(), 4);
    let st = &h.sup.status()[0];
    assert_eq!(st.restarts, 3);
    assert_eq!(st.last_exit, Some(ExitStatus::Signal(9)));
}

#[test]
fn staying_ready_resets_the_backoff() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash("a");
    h.crash("a");
    h.advance_to_deadline(); // 100 ms backoff
    h.crash("a");
    h.advance_to_deadline(); // 200 ms backoff
                             // Ready for the stable period: the next crash restarts at once again.
    h.advance(Policy::default().stable_ms);
    let before = h.spawned().len();
    h.crash("a");
    assert_eq!(h.spawned().len(), before + 1);
}

#[test]
fn crash_loop_marks_failed_until_the_long_retry() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    for _ in 0..4 {
        h.crash("a");
        if h.state("a") == "backoff" {
            h.advance_to_deadline();
        }
    }
    assert_eq!(h.state("a"), "ready");
    h.crash("a");
    assert_eq!(h.state("a"), "failed");
    let st = &h.sup.status()[0];
    assert!(
        st.reason.as_deref().unwrap().starts_with("crash loop"),
        "{st:?}"
    );
    let n = h.spawned().len();
    let failed_at = h.now();
    h.advance(120_000);
    assert_eq!(h.spawned().len(), n, "a failed service is not restarted");
    // Not before the long retry (see `crash_loop_is_retried_every_ten_minutes`).
    assert_eq!(
        h.sup.next_deadline(),
        Some(failed_at + RETRY_AFTER_FAILED_MS)
    );
    // An administrator's start clears the failure.
    h.sup.start("a").unwrap();
    assert_eq!(h.spawned().len(), n + 1);
    assert_eq!(h.state("a"), "ready");
}

#[test]
fn failures_spread_over_more_than_the_window_are_no_crash_loop() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    for _ in 0..20 {
        h.advance(16_000);
        h.crash("a");
        assert_ne!(h.state("a"), "failed");
        if h.state("a") == "backoff" {
            h.advance_to_deadline();
        }
    }
}

#[test]
fn permanent_failure_code_is_not_restarted() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    let pid = h.pid("a");
    h.sup.on_exit(pid, ExitStatus::Code(PERMANENT_FAILURE_CODE));
    h.advance(10_000);
    assert_eq!(h.state("a"), "failed");
    assert_eq!(h.spawned().len(), 1);
    // Not even at the crash loop's long retry.
    h.advance(3 * RETRY_AFTER_FAILED_MS);
    assert_eq!(h.spawned().len(), 1);
    assert_eq!(h.sup.next_deadline(), None);
    assert_eq!(h.status_of("a").retry_in_ms, None);
}

#[test]
fn crash_loop_is_retried_every_ten_minutes() {
    assert_eq!(RETRY_AFTER_FAILED_MS, 10 * 60 * 1000);
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash_loop("a");
    let events = h.sup.drain_events();
    let failed = events
        .iter()
        .find(|e| matches!(e, Event::Failed { .. }))
        .unwrap();
    assert_eq!(
        failed,
        &Event::Failed {
            service: "a".into(),
            reason: "crash loop: 5 failures within 60 s (last: ended with signal 9)".into(),
            retry_in_ms: Some(RETRY_AFTER_FAILED_MS),
        }
    );
    assert!(
        failed.to_string().ends_with("; next try in 10m00s"),
        "{failed}"
    );
    let n = h.spawned().len();
    // Not restarted one millisecond before the 10 minutes; the status says when.
    h.advance(RETRY_AFTER_FAILED_MS - 1);
    assert_eq!(h.spawned().len(), n);
    let st = h.status_of("a");
    assert_eq!((st.state, st.retry_in_ms), ("failed", Some(1)));
    let reason = st.reason.unwrap();
    assert!(
        reason.starts_with("crash loop: 5 failures") && reason.ends_with("; next try in 1s"),
        "{reason}"
    );
    // Restarted at 10 minutes.
    h.advance(1);
    assert_eq!(h.spawned().len(), n + 1);
    assert_eq!(h.state("a"), "ready");
    assert_eq!(h.status_of("a").retry_in_ms, None);
    // Ready, but not yet for the stable period: a crash waits 10 minutes again, with no fast
    // restart or backoff in between.
    h.advance(Policy::default().stable_ms - 1);
    h.crash("a");
    let again = h.now();
    assert_eq!(h.state("a"), "failed");
    assert_eq!(h.spawned().len(), n + 1);
    assert!(h
        .status_of("a")
        .reason
        .unwrap()
        .starts_with("crash loop: failed again when tried (ended with signal 9)"));
    assert_eq!(h.sup.next_deadline(), Some(again + RETRY_AFTER_FAILED_MS));
    h.advance(RETRY_AFTER_FAILED_MS - 1);
    assert_eq!(h.spawned().len(), n + 1);
    h.advance(1);
    assert_eq!(h.spawned().len(), n + 2);
    assert_eq!(h.state("a"), "ready");
}

#[test]
fn a_failed_try_of_any_kind_waits_ten_minutes_again() {
    // The try times out waiting for readiness.
    let mut a = svc("a");
    a.ready = Readiness::Notify;
    let mut h = Harness::new(vec![a]);
    h.sup.tick();
    for _ in 0..5 {
        let pid = h.pid("a");
        h.sup.on_notify(pid);
        h.crash("a");
        if h.state("a") == "backoff" {
            h.advance_to_deadline();
        }
    }
    assert_eq!(h.state("a"), "failed");
    assert_eq!(h.advance_to_deadline(), RETRY_AFTER_FAILED_MS);
    let pid = h.pid("a");
    assert_eq!(h.advance_to_deadline(), 5000, "the readiness timeout");
    assert!(h.sup.on_exit(pid, ExitStatus::Signal(9)));
    h.sup.tick();
    assert_eq!(h.state("a"), "failed");
    assert_eq!(h.advance_to_deadline(), RETRY_AFTER_FAILED_MS);
    assert_eq!(h.state("a"), "starting");

    // The try cannot even be spawned.
    let mut h = Harness::new(vec![svc("b")]);
    h.world.0.borrow_mut().unspawnable.insert("b".into());
    h.sup.tick();
    while h.state("b") != "failed" {
        h.advance_to_deadline();
    }
    for _ in 0..3 {
        assert_eq!(h.advance_to_deadline(), RETRY_AFTER_FAILED_MS);
        assert_eq!(h.state("b"), "failed");
    }
    let spawn_failures = h
        .sup
        .drain_events()
        .iter()
        .filter(|e| matches!(e, Event::SpawnFailed { .. }))
        .count();
    assert_eq!(
        spawn_failures,
        5 + 3,
        "one try per 10 minutes after the crash loop"
    );
}

#[test]
fn staying_ready_after_a_retry_resets_the_failure_count() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash_loop("a");
    h.advance(RETRY_AFTER_FAILED_MS);
    assert_eq!(h.state("a"), "ready");
    h.advance(Policy::default().stable_ms);
    assert_eq!(h.sup.next_deadline(), None, "nothing left to reset");
    // Back to the ordinary rules: an immediate restart, then the backoff, and 5 failures
    // within 60 s before the service counts as failed again.
    let n = h.spawned().len();
    h.crash("a");
    assert_eq!(h.spawned().len(), n + 1, "first restart is immediate");
    h.crash("a");
    assert_eq!(h.state("a"), "backoff");
    assert_eq!(h.advance_to_deadline(), 100);
    h.crash("a");
    h.advance_to_deadline();
    h.crash("a");
    h.advance_to_deadline();
    assert_eq!(h.state("a"), "ready");
    h.crash("a");
    assert_eq!(h.state("a"), "failed");
    assert_eq!(h.status_of("a").retry_in_ms, Some(RETRY_AFTER_FAILED_MS));
}

#[test]
fn permanent_failure_after_a_crash_loop_is_never_retried() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash_loop("a");
    h.advance(RETRY_AFTER_FAILED_MS);
    let pid = h.pid("a");
    h.sup.on_exit(pid, ExitStatus::Code(PERMANENT_FAILURE_CODE));
    h.sup.tick();
    let st = h.status_of("a");
    assert_eq!(st.state, "failed");
    assert_eq!(st.retry_in_ms, None);
    assert!(st.reason.unwrap().starts_with("permanent failure"));
    let n = h.spawned().len();
    assert_eq!(h.sup.next_deadline(), None);
    h.advance(3 * RETRY_AFTER_FAILED_MS);
    assert_eq!(h.spawned().len(), n);
    assert!(h.sup.drain_events().contains(&Event::Failed {
        service: "a".into(),
        reason: format!("permanent failure (exit code {PERMANENT_FAILURE_CODE})"),
        retry_in_ms: None,
    }));
}

#[test]
fn start_and_restart_commands_try_a_crash_looped_service_at_once() {
    for cmd in ["start", "restart"] {
        let mut h = Harness::new(vec![svc("a")]);
        h.sup.tick();
        h.crash_loop("a");
        h.advance(1000);
        let n = h.spawned().len();
        match cmd {
            "start" => h.sup.start("a").unwrap(),
            _ => h.sup.restart("a").unwrap(),
        };
        assert_eq!(h.spawned().len(), n + 1, "{cmd}");
        assert_eq!(h.state("a"), "ready", "{cmd}");
        // A fresh start: the next crash restarts at once instead of waiting 10 minutes.
        h.crash("a");
        assert_eq!(h.spawned().len(), n + 2, "{cmd}");
        assert_eq!(h.state("a"), "ready", "{cmd}");
    }
}

#[test]
fn stop_and_shutdown_cancel_the_long_retry() {
    let mut h = Harness::new(vec![svc("a"), svc("b")]);
    h.sup.tick();
    h.crash_loop("a");
    h.crash_loop("b");
    h.sup.stop("a").unwrap();
    assert_eq!(h.state("a"), "down");
    h.sup.shutdown();
    assert_eq!(h.state("b"), "failed");
    assert_eq!(h.status_of("b").retry_in_ms, None);
    assert_eq!(h.sup.next_deadline(), None);
    let n = h.spawned().len();
    h.advance(2 * RETRY_AFTER_FAILED_MS);
    assert_eq!(h.spawned().len(), n, "nothing is tried again");
    assert!(h.sup.all_stopped());
}

#[test]
fn restart_policies() {
    let mut never = svc("never");
    never.restart = RestartPolicy::Never;
    let mut onf = svc("onf");
    onf.restart = RestartPolicy::OnFailure;
    let mut onf_ok = svc("onfok");
    onf_ok.restart = RestartPolicy::OnFailure;
    let mut h = Harness::new(vec![never, onf, onf_ok]);
    h.sup.tick();
    for (name, status) in [
        ("never", ExitStatus::Signal(11)),
        ("onf", ExitStatus::Code(1)),
        ("onfok", ExitStatus::Code(0)),
    ] {
        let pid = h.pid(name);
        h.sup.on_exit(pid, status);
    }
    h.advance(60_000);
    assert_eq!(h.state("never"), "exited");
    assert_eq!(h.state("onf"), "ready");
    assert_eq!(h.state("onfok"), "exited");
    assert_eq!(h.spawned().len(), 4);
}

#[test]
fn notify_readiness_timeout_kills_and_restarts() {
    let mut a = svc("a");
    a.ready = Readiness::Notify;
    a.ready_timeout_ms = 700;
    let mut h = Harness::new(vec![a]);
    h.sup.tick();
    let pid = h.pid("a");
    assert_eq!(h.state("a"), "starting");
    assert_eq!(h.advance_to_deadline(), 700);
    assert_eq!(h.signals(), vec![(pid, StopSignal::Kill)]);
    assert!(h.sup.on_exit(pid, ExitStatus::Signal(9)));
    h.sup.tick();
    assert_eq!(h.spawned().len(), 2, "restarted after the timeout");
    // A notification from the old pid means nothing.
    h.sup.on_notify(pid);
    assert_eq!(h.state("a"), "starting");
    h.sup.on_notify(h.pid("a"));
    assert_eq!(h.state("a"), "ready");
}

#[test]
fn tcp_readiness_is_probed() {
    let mut a = svc("a");
    a.ready = Readiness::Tcp(8080);
    let mut h = Harness::new(vec![a]);
    h.sup.tick();
    h.advance(50);
    h.advance(50);
    assert_eq!(h.state("a"), "starting");
    h.world.0.borrow_mut().open_ports.insert(8080);
    assert_eq!(h.advance_to_deadline(), 50);
    assert_eq!(h.state("a"), "ready");
}

#[test]
fn stop_sends_term_then_kill_after_grace() {
    let mut a = svc("a");
    a.stop_grace_ms = 1500;
    let mut h = Harness::new(vec![a]);
    h.sup.tick();
    let pid = h.pid("a");
    h.sup.stop("a").unwrap();
    assert_eq!(h.signals(), vec![(pid, StopSignal::Term)]);
    assert_eq!(h.advance_to_deadline(), 1500);
    assert_eq!(
        h.signals(),
        vec![(pid, StopSignal::Term), (pid, StopSignal::Kill)]
    );
    h.sup.on_exit(pid, ExitStatus::Signal(9));
    h.advance(60_000);
    assert_eq!(h.state("a"), "down");
    assert_eq!(h.spawned().len(), 1, "a stopped service stays down");
    assert!(h.sup.all_stopped());
}

#[test]
fn exit_kills_the_rest_of_the_process_group() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    let pid = h.pid("a");
    h.sup.on_exit(pid, ExitStatus::Code(0));
    assert_eq!(h.signals(), vec![(pid, StopSignal::Kill)]);
}

#[test]
fn restart_command_stops_and_starts_without_counting_a_failure() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    let pid = h.pid("a");
    h.sup.restart("a").unwrap();
    assert_eq!(h.state("a"), "stopping");
    h.sup.on_exit(pid, ExitStatus::Signal(15));
    h.sup.tick();
    assert_eq!(h.state("a"), "ready");
    assert_ne!(h.pid("a"), pid);
    assert!(h.sup.restart("nope").is_err());
}

#[test]
fn shutdown_stops_in_reverse_dependency_order() {
    let mut web = svc("web");
    web.depends_on = vec!["node".into()];
    let mut ui = svc("ui");
    ui.depends_on = vec!["web".into()];
    let mut h = Harness::new(vec![svc("node"), web, ui, svc("lone")]);
    h.sup.tick();
    let (node, web, ui, lone) = (h.pid("node"), h.pid("web"), h.pid("ui"), h.pid("lone"));
    h.sup.shutdown();
    // Only services nothing depends on get SIGTERM first.
    assert_eq!(
        h.signals(),
        vec![(ui, StopSignal::Term), (lone, StopSignal::Term)]
    );
    h.sup.on_exit(ui, ExitStatus::Signal(15));
    h.sup.tick();
    assert_eq!(h.signals().last(), Some(&(web, StopSignal::Term)));
    h.sup.on_exit(web, ExitStatus::Signal(15));
    h.sup.tick();
    assert_eq!(h.signals().last(), Some(&(node, StopSignal::Term)));
    assert!(!h.sup.all_stopped());
    h.sup.on_exit(node, ExitStatus::Code(0));
    h.sup.on_exit(lone, ExitStatus::Code(0));
    h.sup.tick();
    assert!(h.sup.all_stopped());
    assert_eq!(h.spawned().len(), 4, "nothing restarts during shutdown");
}

#[test]
fn shutdown_kills_a_service_ignoring_term_after_its_grace() {
    let mut a = svc("a");
    a.stop_grace_ms = 3000;
    let mut h = Harness::new(vec![a]);
    h.sup.tick();
    let pid = h.pid("a");
    h.sup.shutdown();
    assert_eq!(h.advance_to_deadline(), 3000);
    assert_eq!(
        h.signals(),
        vec![(pid, StopSignal::Term), (pid, StopSignal::Kill)]
    );
    assert!(h.sup.drain_events().contains(&Event::Killed {
        service: "a".into()
    }));
    h.sup.on_exit(pid, ExitStatus::Signal(9));
    assert!(h.sup.all_stopped());
}

#[test]
fn shutdown_cancels_pending_restarts() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash("a");
    h.crash("a");
    assert_eq!(h.state("a"), "backoff");
    h.sup.shutdown();
    assert_eq!(h.state("a"), "down");
    assert!(h.sup.all_stopped());
}

#[test]
fn unknown_and_cyclic_dependencies_fail_only_those_services() {
    let mut a = svc("a");
    a.depends_on = vec!["ghost".into()];
    let mut b = svc("b");
    b.depends_on = vec!["c".into()];
    let mut c = svc("c");
    c.depends_on = vec!["b".into()];
    let mut h = Harness::new(vec![a, b, c, svc("d")]);
    h.sup.tick();
    assert_eq!(h.spawned(), vec!["d"]);
    for n in ["a", "b", "c"] {
        assert_eq!(h.state(n), "failed", "{n}");
    }
    assert!(!h.sup.all_ready());
}

#[test]
fn unspawnable_service_fails_after_the_crash_limit() {
    let mut h = Harness::new(vec![svc("a")]);
    h.world.0.borrow_mut().unspawnable.insert("a".into());
    h.sup.tick();
    for _ in 0..10 {
        if h.sup.next_deadline().is_some() {
            h.advance_to_deadline();
        }
    }
    assert_eq!(h.state("a"), "failed");
    let events = h.sup.drain_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::SpawnFailed { error, .. } if error.contains("No such file"))));
}

#[test]
fn orphan_exits_are_not_service_exits() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    assert!(!h.sup.on_exit(4242, ExitStatus::Code(0)));
    assert_eq!(h.state("a"), "ready");
}

#[test]
fn uptime_comes_from_the_clock() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.advance(1234);
    assert_eq!(h.sup.status()[0].uptime_ms, Some(1234));
}

/// Random sequences of events never break the machine's invariants (seeded, 200 runs × 300 steps).
#[test]
fn random_event_sequences_keep_invariants() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..200 {
        let mut b = svc("b");
        b.depends_on = vec!["a".into()];
        b.ready = Readiness::Notify;
        let mut c = svc("c");
        c.ready = Readiness::Tcp(1);
        c.restart = RestartPolicy::OnFailure;
        let mut h = Harness::new(vec![svc("a"), b, c]);
        h.sup.tick();
        for _ in 0..300 {
            let name = ["a", "b", "c"][rnd(3) as usize];
            match rnd(8) {
                0 => h.advance(rnd(3000)),
                1 => {
                    if let Some(pid) = h.sup.pid_of(name) {
                        h.sup.on_exit(pid, ExitStatus::Code(rnd(3) as i32));
                    }
                }
                2 => {
                    if let Some(pid) = h.sup.pid_of(name) {
                        h.sup.on_notify(pid);
                    }
                }
                3 => drop(h.sup.stop(name)),
                4 => drop(h.sup.start(name)),
                5 => drop(h.sup.restart(name)),
                6 => {
                    let mut w = h.world.0.borrow_mut();
                    if !w.open_ports.remove(&1) {
                        w.open_ports.insert(1);
                    }
                }
                _ => {
                    if let Some(d) = h.sup.next_deadline() {
                        let now = h.clock.0.get();
                        assert!(d + 60_000 >= now, "deadline far in the past");
                        h.advance(d.saturating_sub(now));
                    }
                }
            }
            h.sup.tick();
            // b never runs while a is not ready unless b was already running.
            let st = h.sup.status();
            let pids: Vec<u32> = st.iter().filter_map(|s| s.pid).collect();
            let unique: BTreeSet<u32> = pids.iter().copied().collect();
            assert_eq!(pids.len(), unique.len(), "one pid per service");
        }
        h.sup.shutdown();
        for _ in 0..10 {
            let running: Vec<u32> = ["a", "b", "c"]
                .iter()
                .filter_map(|n| h.sup.pid_of(n))
                .collect();
            for pid in running {
                h.sup.on_exit(pid, ExitStatus::Signal(15));
            }
            h.sup.tick();
        }
        assert!(h.sup.all_stopped());
    }
}

#[test]
fn administrator_restart_clears_the_backoff() {
    let mut h = Harness::new(vec![svc("a")]);
    h.sup.tick();
    h.crash("a");
    h.crash("a");
    h.advance_to_deadline(); // 100 ms backoff: the failures count
    let pid = h.pid("a");
    h.sup.restart("a").unwrap();
    h.sup.on_exit(pid, ExitStatus::Signal(15));
    h.sup.tick();
    let before = h.spawned().len();
    h.crash("a");
    assert_eq!(
        h.spawned().len(),
        before + 1,
        "first restart is immediate again"
    );
}

#[test]
fn shutdown_waiting_on_a_starting_service_has_no_stale_deadline() {
    let mut a = svc("a");
    a.ready = Readiness::Notify;
    a.ready_timeout_ms = 100;
    let mut b = svc("b");
    b.depends_on = vec!["a".into()];
    let mut h = Harness::new(vec![a, b]);
    h.sup.tick();
    h.sup.on_notify(h.pid("a"));
    h.sup.tick();
    assert_eq!(h.state("b"), "ready");
    // a restarts and is starting again while b still runs.
    let old = h.pid("a");
    h.sup.restart("a").unwrap();
    h.sup.on_exit(old, ExitStatus::Signal(15));
    h.sup.tick();
    assert_eq!(h.state("a"), "starting");
    h.sup.shutdown();
    assert_eq!(h.state("b"), "stopping");
    // a waits for b (grace 1000 ms); its readiness timeout (100 ms) no longer counts, and a
    // deadline in the past would make the runtime's loop spin.
    h.advance(500);
    assert_eq!(h.state("a"), "starting");
    assert_eq!(h.sup.next_deadline(), Some(1000));
}
