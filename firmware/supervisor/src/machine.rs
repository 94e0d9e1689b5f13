//! The service state machine: start order, readiness, restarts with backoff, crash loops, stop
//! and shutdown order.
//!
//! It owns no processes and reads no clock itself: it works through [`Clock`] and [`Spawner`], so
//! tests drive it with a fake clock and fake processes, deterministically and without sleeping.
//! The Linux runtime feeds it real exits, notifications and time.

use crate::manifest::{Manifest, Readiness, RestartPolicy};
use serde::Serialize;
use std::collections::VecDeque;

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// A monotonic clock.
pub trait Clock {
    /// Milliseconds since an arbitrary fixed point.
    fn now_ms(&self) -> Millis;
}

/// Signals the supervisor sends to a service's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// Ask politely.
    Term,
    /// Kill.
    Kill,
}

/// What starts and signals processes (real ones on Linux, fakes in tests).
pub trait Spawner {
    /// Starts the service in its own session and process group; returns its pid.
    fn spawn(&mut self, manifest: &Manifest) -> Result<u32, String>;
    /// Sends `signal` to the process group led by `pid`.
    fn signal_group(&mut self, pid: u32, signal: StopSignal);
    /// True when `127.0.0.1:port` accepts a TCP connection.
    fn tcp_ready(&mut self, port: u16) -> bool;
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Supervision timings and thresholds, in one place.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Delay before the second consecutive restart; doubles each time after that. The first
    /// restart after a failure is immediate.
    pub backoff_base_ms: Millis,
    /// Upper bound of the restart delay.
    pub backoff_max_ms: Millis,
    /// Ready this long resets the backoff.
    pub stable_ms: Millis,
    /// `crash_limit` failures within this window mark the service failed.
    pub crash_window_ms: Millis,
    /// Failures within `crash_window_ms` that make a crash loop.
    pub crash_limit: usize,
    /// A crash-looped service is tried again after this long; a try that fails before it was
    /// ready for `stable_ms` waits this long again.
    pub retry_after_failed_ms: Millis,
    /// Interval between TCP readiness probes.
    pub tcp_probe_ms: Millis,
    /// Exit code meaning "permanent failure, do not restart".
    pub permanent_failure_code: i32,
}

/// Exit code by which a service says "permanent failure, do not restart" (as in s6).
pub const PERMANENT_FAILURE_CODE: i32 = 100;

/// Wait before a crash-looped service is tried again: an unattended plug must not give up on a
/// service for good, yet a service that cannot run should cost little (one try per 10 minutes).
pub const RETRY_AFTER_FAILED_MS: Millis = 10 * 60 * 1000;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base_ms: 100,
            backoff_max_ms: 30_000,
            stable_ms: 10_000,
            crash_window_ms: 60_000,
            crash_limit: 5,
            retry_after_failed_ms: RETRY_AFTER_FAILED_MS,
            tcp_probe_ms: 50,
            permanent_failure_code: PERMANENT_FAILURE_CODE,
        }
    }
}

impl Policy {
    /// Delay before the restart following the `n`-th consecutive failure (n ≥ 1).
    pub fn backoff_ms(&self, n: u32) -> Millis {
        if n <= 1 {
            return 0;
        }
        let shift = (n - 2).min(32);
        self.backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms)
    }
}

/// What happens once a stopping service has exited.
#[derive(Clone, Debug, PartialEq, Eq)]
enum After {
    /// Stay down.
    Down,
    /// Start again at once (an administrator's restart).
    Restart,
    /// Count as a failure with this reason.
    Fail(String),
}

/// A service's state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for its dependencies to be ready.
    Waiting,
    /// Waiting to be restarted.
    Backoff { until: Millis },
    /// Running, not yet ready.
    Starting { pid: u32, next_probe: Millis },
    /// Running and ready.
    Ready { pid: u32, since: Millis },
    /// Asked to stop; killed at `kill_at` if still running.
    Stopping {
        pid: u32,
        kill_at: Millis,
        killed: bool,
        then: After,
    },
    /// Stopped on request.
    Down,
    /// Ended and not restarted, as its restart policy says.
    Exited { status: ExitStatus },
    /// Given up on: crash loop, permanent failure, bad dependencies. A crash loop is tried again
    /// at `retry_at`; the others stay failed until an administrator's start.
    Failed {
        reason: String,
        retry_at: Option<Millis>,
    },
}

/// Things that happened, for the console and the service's log. Every variant names its
/// `service`; the other fields are the pid, exit status, delay or reason the variant's text shows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "the fields are described above, once for all variants"
)]
pub enum Event {
    /// A process was started.
    Started { service: String, pid: u32 },
    /// The service became ready.
    Ready { service: String },
    /// The service's main process ended.
    Exited {
        service: String,
        pid: u32,
        status: ExitStatus,
    },
    /// It will be started again after `delay_ms`.
    Restarting { service: String, delay_ms: Millis },
    /// It could not be started.
    SpawnFailed { service: String, error: String },
    /// Its process group got SIGKILL after the grace period.
    Killed { service: String },
    /// It is given up on; tried again after `retry_in_ms` if that is set (crash loop).
    Failed {
        service: String,
        reason: String,
        retry_in_ms: Option<Millis>,
    },
    /// It stopped on request.
    Stopped { service: String },
}

impl Event {
    /// The service the event is about.
    pub fn service(&self) -> &str {
        match self {
            Event::Started { service, .. }
            | Event::Ready { service }
            | Event::Exited { service, .. }
            | Event::Restarting { service, .. }
            | Event::SpawnFailed { service, .. }
            | Event::Killed { service }
            | Event::Failed { service, .. }
            | Event::Stopped { service } => service,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started { service, pid } => write!(f, "{service}: started, pid {pid}"),
            Event::Ready { service } => write!(f, "{service}: ready"),
            Event::Exited {
                service,
                pid,
                status,
            } => write!(f, "{service}: pid {pid} ended with {status}"),
            Event::Restarting { service, delay_ms } => {
                write!(f, "{service}: restarting in {delay_ms} ms")
            }
            Event::SpawnFailed { service, error } => write!(f, "{service}: cannot start: {error}"),
            Event::Killed { service } => {
                write!(f, "{service}: still running after its grace period; killed")
            }
            Event::Failed {
                service,
                reason,
                retry_in_ms: None,
            } => write!(f, "{service}: failed: {reason}"),
            Event::Failed {
                service,
                reason,
                retry_in_ms: Some(ms),
            } => write!(
                f,
                "{service}: failed: {reason}; next try in {}",
                human_ms(*ms)
            ),
            Event::Stopped { service } => write!(f, "{service}: stopped"),
        }
    }
}

/// One service's status, as `cairn ctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// `waiting`, `backoff`, `starting`, `ready`, `stopping`, `down`, `exited` or `failed`.
    pub state: &'static str,
    /// Main process id while running.
    pub pid: Option<u32>,
    /// Milliseconds since the running process started.
    pub uptime_ms: Option<Millis>,
    /// Times started again after the first start.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it failed, or what it waits for (a crash-looped service: also when it is tried again).
    pub reason: Option<String>,
    /// A crash-looped (`failed`) service: milliseconds until it is tried again.
    pub retry_in_ms: Option<Millis>,
    /// Memory in use (filled in by the runtime).
    pub memory_bytes: Option<u64>,
}

/// Most events kept between drains; the runtime drains after every step, so this is slack.
const EVENTS_MAX: usize = 1024;

struct Service {
    manifest: Manifest,
    state: State,
    /// When the current process started.
    started_at: Millis,
    /// Whether a process was ever started (the next start is then a restart).
    ever_started: bool,
    restarts: u32,
    consecutive_failures: u32,
    /// Failure times within the crash window; at most `crash_limit` entries.
    recent_failures: VecDeque<Millis>,
    /// Crash-looped and not ready for `stable_ms` since: a failure waits
    /// `retry_after_failed_ms` again instead of going through the backoff.
    crash_looped: bool,
    last_exit: Option<ExitStatus>,
}

/// Supervises a fixed set of services.
pub struct Supervisor<C: Clock, S: Spawner> {
    clock: C,
    spawner: S,
    policy: Policy,
    services: Vec<Service>,
    /// `dependents[i]`: indices of services that depend on service `i`.
    dependents: Vec<Vec<usize>>,
    shutting_down: bool,
    events: VecDeque<Event>,
}

impl<C: Clock, S: Spawner> Supervisor<C, S> {
    /// Takes the manifests (unique names); services with unknown or cyclic dependencies start
    /// out failed. Nothing starts before the first [`Supervisor::tick`].
    pub fn new(manifests: Vec<Manifest>, clock: C, spawner: S, policy: Policy) -> Self {
        let names: Vec<String> = manifests.iter().map(|m| m.name.clone()).collect();
        let mut services: Vec<Service> = manifests
            .into_iter()
            .map(|manifest| Service {
                manifest,
                state: State::Waiting,
                started_at: 0,
                ever_started: false,
                restarts: 0,
                consecutive_failures: 0,
                recent_failures: VecDeque::new(),
                crash_looped: false,
                last_exit: None,
            })
            .collect();
        let mut dependents = vec![Vec::new(); services.len()];
        for (i, s) in services.iter_mut().enumerate() {
            for d in &s.manifest.depends_on {
                match names.iter().position(|n| n == d) {
                    Some(j) => dependents[j].push(i),
                    None => {
                        s.state = State::Failed {
                            reason: format!("depends on {d}, which has no valid manifest"),
                            retry_at: None,
                        }
                    }
                }
            }
        }
        let mut sup = Supervisor {
            clock,
            spawner,
            policy,
            services,
            dependents,
            shutting_down: false,
            events: VecDeque::new(),
        };
        for i in 0..sup.services.len() {
            if sup.in_cycle(i) {
                sup.services[i].state = State::Failed {
                    reason: "dependency cycle".into(),
                    retry_at: None,
                };
            }
        }
        sup
    }

    /// True when following dependencies from `start` leads back to it.
    fn in_cycle(&self, start: usize) -> bool {
        let mut stack = vec![start];
        let mut seen = vec![false; self.services.len()];
        while let Some(i) = stack.pop() {
            for d in &self.services[i].manifest.depends_on {
                if let Some(j) = self.index(d) {
                    if j == start {
                        return true;
                    }
                    if !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        false
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.manifest.name == name)
    }

    /// The machine's clock reading.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The spawner, for the runtime's bookkeeping of real processes.
    pub fn spawner_mut(&mut self) -> &mut S {
        &mut self.spawner
    }

    /// The spawner.
    pub fn spawner(&self) -> &S {
        &self.spawner
    }

    /// The manifests, in supervision order.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.services.iter().map(|s| &s.manifest)
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Takes the events since the last call.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Advances timers: starts services whose dependencies are ready, restarts after backoff,
    /// probes readiness, enforces timeouts and grace periods, and orders the shutdown.
    pub fn tick(&mut self) {
        let now = self.clock.now_ms();
        // Starting one service can unblock its dependents when it is ready at once, and a
        // failed spawn passes through backoff (immediate the first time) to a second try, so
        // repeat until nothing changes. A service changes at most a few times per tick (the
        // second failure sets a future backoff), so 4 passes per service bound the loop.
        for _ in 0..4 * (self.services.len() + 1) {
            let mut changed = false;
            for i in 0..self.services.len() {
                changed |= self.step(i, now);
            }
            if !changed {
                break;
            }
        }
    }

    fn step(&mut self, i: usize, now: Millis) -> bool {
        let state = self.services[i].state.clone();
        match state {
            State::Waiting | State::Backoff { .. } if self.shutting_down => {
                self.services[i].state = State::Down;
                true
            }
            State::Backoff { until } if now >= until => {
                self.services[i].state = State::Waiting;
                true
            }
            // The failure history stays: `crash_looped` sends a failed try back to waiting.
            State::Failed {
                retry_at: Some(at), ..
            } if now >= at && !self.shutting_down => {
                self.services[i].state = State::Waiting;
                true
            }
            State::Waiting if self.deps_ready(i) => {
                self.spawn(i, now);
                true
            }
            State::Starting { pid, next_probe } => {
                let m = &self.services[i].manifest;
                let deadline = self.services[i].started_at + m.ready_timeout_ms;
                if let Readiness::Tcp(port) = m.ready {
                    if now >= next_probe {
                        if self.spawner.tcp_ready(port) {
                            self.become_ready(i, pid, now);
                            return true;
                        }
                        self.services[i].state = State::Starting {
                            pid,
                            next_probe: now + self.policy.tcp_probe_ms,
                        };
                    }
                }
                if now >= deadline && !self.shutting_down {
                    let reason = format!(
                        "not ready within {} ms",
                        self.services[i].manifest.ready_timeout_ms
                    );
                    self.spawner.signal_group(pid, StopSignal::Kill);
                    self.services[i].state = State::Stopping {
                        pid,
                        kill_at: now,
                        killed: true,
                        then: After::Fail(reason),
                    };
                    return true;
                }
                if self.shutting_down && self.dependents_down(i) {
                    self.begin_stop(i, pid, now, After::Down);
                    return true;
                }
                false
            }
            State::Ready { pid, since } => {
                let s = &mut self.services[i];
                if (s.consecutive_failures > 0 || s.crash_looped)
                    && now >= since + self.policy.stable_ms
                {
                    s.consecutive_failures = 0;
                    s.crash_looped = false;
                }
                if self.shutting_down && self.dependents_down(i) {
                    self.begin_stop(i, pid, now, After::Down);
                    return true;
                }
                false
            }
            State::Stopping {
                pid,
                kill_at,
                killed: false,
                then,
            } if now >= kill_at => {
                self.spawner.signal_group(pid, StopSignal::Kill);
                self.services[i].state = State::Stopping {
                    pid,
                    kill_at,
                    killed: true,
                    then,
                };
                let service = self.services[i].manifest.name.clone();
                self.push_event(Event::Killed { service });
                true
            }
            _ => false,
        }
    }

    fn deps_ready(&self, i: usize) -> bool {
        self.services[i].manifest.depends_on.iter().all(|d| {
            self.index(d).is_some_and(|j| {
                matches!(
                    self.services[j].state,
                    State::Ready { .. }
                        | State::Exited {
                            status: ExitStatus::Code(0)
                        }
                )
            })
        })
    }

    /// True when no service depending on `i` still runs.
    fn dependents_down(&self, i: usize) -> bool {
        self.dependents[i].iter().all(|&j| {
            !matches!(
                self.services[j].state,
                State::Starting { .. } | State::Ready { .. } | State::Stopping { .. }
            )
        })
    }

    fn spawn(&mut self, i: usize, now: Millis) {
        let result = self.spawner.spawn(&self.services[i].manifest);
        let name = self.services[i].manifest.name.clone();
        match result {
            Ok(pid) => {
                let s = &mut self.services[i];
                if s.ever_started {
                    s.restarts = s.restarts.saturating_add(1);
                }
                s.ever_started = true;
                s.started_at = now;
                s.state = State::Starting {
                    pid,
                    next_probe: now,
                };
                self.push_event(Event::Started { service: name, pid });
                if self.services[i].manifest.ready == Readiness::None {
                    self.become_ready(i, pid, now);
                }
            }
            Err(error) => {
                self.push_event(Event::SpawnFailed {
                    service: name,
                    error: error.clone(),
                });
                self.fail(i, now, format!("cannot start: {error}"));
            }
        }
    }

    fn become_ready(&mut self, i: usize, pid: u32, now: Millis) {
        self.services[i].state = State::Ready { pid, since: now };
        let service = self.services[i].manifest.name.clone();
        self.push_event(Event::Ready { service });
    }

    fn begin_stop(&mut self, i: usize, pid: u32, now: Millis, then: After) {
        self.spawner.signal_group(pid, StopSignal::Term);
        self.services[i].state = State::Stopping {
            pid,
            kill_at: now + self.services[i].manifest.stop_grace_ms,
            killed: false,
            then,
        };
    }

    /// Counts a failure: restart after backoff, or, on a crash loop (or a failed try after one),
    /// wait `retry_after_failed_ms`.
    fn fail(&mut self, i: usize, now: Millis, reason: String) {
        let window = self.policy.crash_window_ms;
        let limit = self.policy.crash_limit.max(1);
        let s = &mut self.services[i];
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        while s
            .recent_failures
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= window)
        {
            s.recent_failures.pop_front();
        }
        if s.recent_failures.len() >= limit {
            s.recent_failures.pop_front();
        }
        s.recent_failures.push_back(now);
        let service = s.manifest.name.clone();
        if self.shutting_down {
            s.state = State::Down;
        } else if s.crash_looped || s.recent_failures.len() >= limit {
            let reason = if s.recent_failures.len() >= limit {
                format!(
                    "crash loop: {limit} failures within {} s (last: {reason})",
                    window / 1000
                )
            } else {
                format!("crash loop: failed again when tried ({reason})")
            };
            let retry_in_ms = self.policy.retry_after_failed_ms;
            s.crash_looped = true;
            s.state = State::Failed {
                reason: reason.clone(),
                retry_at: Some(now.saturating_add(retry_in_ms)),
            };
            self.push_event(Event::Failed {
                service,
                reason,
                retry_in_ms: Some(retry_in_ms),
            });
        } else {
            let delay_ms = self.policy.backoff_ms(s.consecutive_failures);
            s.state = State::Backoff {
                until: now + delay_ms,
            };
            self.push_event(Event::Restarting { service, delay_ms });
        }
    }

    /// A child process ended. Returns false when `pid` is no service's main process (an orphan).
    pub fn on_exit(&mut self, pid: u32, status: ExitStatus) -> bool {
        let Some(i) = self.services.iter().position(|s| {
            matches!(s.state,
                State::Starting { pid: p, .. } | State::Ready { pid: p, .. } | State::Stopping { pid: p, .. }
                if p == pid)
        }) else {
            return false;
        };
        let now = self.clock.now_ms();
        // What is left of the process group goes with its leader.
        self.spawner.signal_group(pid, StopSignal::Kill);
        let service = self.services[i].manifest.name.clone();
        self.services[i].last_exit = Some(status);
        self.push_event(Event::Exited {
            service: service.clone(),
            pid,
            status,
        });
        let state = self.services[i].state.clone();
        match state {
            State::Stopping { then, .. } => match then {
                After::Down => {
                    self.services[i].state = State::Down;
                    self.push_event(Event::Stopped { service });
                }
                After::Restart if !self.shutting_down => {
                    self.services[i].state = State::Waiting;
                }
                After::Restart => self.services[i].state = State::Down,
                After::Fail(reason) => self.fail(i, now, reason),
            },
            _ if self.shutting_down => self.services[i].state = State::Down,
            _ if status == ExitStatus::Code(self.policy.permanent_failure_code) => {
                let reason = format!("permanent failure ({status})");
                self.services[i].state = State::Failed {
                    reason: reason.clone(),
                    retry_at: None,
                };
                self.push_event(Event::Failed {
                    service,
                    reason,
                    retry_in_ms: None,
                });
            }
            _ => {
                let restart = match self.services[i].manifest.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Never => false,
                };
                if restart {
                    self.fail(i, now, format!("ended with {status}"));
                } else {
                    self.services[i].state = State::Exited { status };
                }
            }
        }
        true
    }

    /// The process `pid` wrote a readiness line to its notification fd.
    pub fn on_notify(&mut self, pid: u32) {
        let now = self.clock.now_ms();
        if let Some(i) = self.services.iter().position(|s| {
            s.manifest.ready == Readiness::Notify
                && matches!(s.state, State::Starting { pid: p, .. } if p == pid)
        }) {
            self.become_ready(i, pid, now);
        }
    }

    /// Starts a service that is down, exited or failed (clearing its failure history).
    pub fn start(&mut self, name: &str) -> Result<String, String> {
        let i = self.lookup(name)?;
        if self.shutting_down {
            return Err("shutting down".into());
        }
        let s = &mut self.services[i];
        match s.state {
            State::Down | State::Exited { .. } | State::Failed { .. } => {
                s.consecutive_failures = 0;
                s.recent_failures.clear();
                s.crash_looped = false;
                s.state = State::Waiting;
                self.tick();
                Ok(format!("{name}: starting"))
            }
            _ => Ok(format!("{name}: already running")),
        }
    }

    /// Stops a service: SIGTERM to its process group, SIGKILL after its grace period.
    pub fn stop(&mut self, name: &str) -> Result<String, String> {
        let i = self.lookup(name)?;
        let now = self.clock.now_ms();
        match self.services[i].state.clone() {
            State::Starting { pid, .. } | State::Ready { pid, .. } => {
                self.begin_stop(i, pid, now, After::Down);
                Ok(format!("{name}: stopping"))
            }
            State::Stopping {
                pid,
                kill_at,
                killed,
                ..
            } => {
                self.services[i].state = State::Stopping {
                    pid,
                    kill_at,
                    killed,
                    then: After::Down,
                };
                Ok(format!("{name}: stopping"))
            }
            // A crash loop's pending try is cancelled too: stopped means stay down.
            State::Waiting
            | State::Backoff { .. }
            | State::Failed {
                retry_at: Some(_), ..
            } => {
                self.services[i].state = State::Down;
                Ok(format!("{name}: stopped"))
            }
            _ => Ok(format!("{name}: not running")),
        }
    }

    /// Stops a running service and starts it again; starts it if it is not running.
    pub fn restart(&mut self, name: &str) -> Result<String, String> {
        let i = self.lookup(name)?;
        let now = self.clock.now_ms();
        match self.services[i].state.clone() {
            State::Starting { pid, .. } | State::Ready { pid, .. } if !self.shutting_down => {
                // An administrator's restart is a fresh start: no backoff, no crash history.
                self.services[i].consecutive_failures = 0;
                self.services[i].recent_failures.clear();
                self.services[i].crash_looped = false;
                self.begin_stop(i, pid, now, After::Restart);
                Ok(format!("{name}: restarting"))
            }
            State::Stopping { .. } => Err(format!("{name}: already stopping")),
            _ => self.start(name),
        }
    }

    fn lookup(&self, name: &str) -> Result<usize, String> {
        self.index(name)
            .ok_or_else(|| format!("no service named {name:?}"))
    }

    /// Begins the shutdown: services stop in reverse dependency order, nothing restarts.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.tick();
    }

    /// True once a shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// True when no service process runs any more.
    pub fn all_stopped(&self) -> bool {
        self.services.iter().all(|s| {
            !matches!(
                s.state,
                State::Starting { .. } | State::Ready { .. } | State::Stopping { .. }
            )
        })
    }

    /// True when every service is ready, or has run to completion successfully, or was stopped
    /// on request. True when there are no services.
    pub fn all_ready(&self) -> bool {
        self.services.iter().all(|s| {
            matches!(
                s.state,
                State::Ready { .. }
                    | State::Down
                    | State::Exited {
                        status: ExitStatus::Code(0)
                    }
            )
        })
    }

    /// The earliest time at which [`Supervisor::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                State::Waiting if !self.shutting_down && self.deps_ready(i) => {
                    Some(self.clock.now_ms())
                }
                State::Backoff { until } => Some(*until),
                State::Failed {
                    retry_at: Some(at), ..
                } if !self.shutting_down => Some(*at),
                // During a shutdown the readiness timeout no longer applies (see `step`).
                State::Starting { next_probe, .. } => {
                    let timeout =
                        (!self.shutting_down).then_some(s.started_at + s.manifest.ready_timeout_ms);
                    match s.manifest.ready {
                        Readiness::Tcp(_) => {
                            Some(timeout.map_or(*next_probe, |t| t.min(*next_probe)))
                        }
                        _ => timeout,
                    }
                }
                State::Ready { since, .. } if s.consecutive_failures > 0 || s.crash_looped => {
                    Some(since + self.policy.stable_ms)
                }
                State::Stopping {
                    kill_at,
                    killed: false,
                    ..
                } => Some(*kill_at),
                _ => None,
            })
            .min()
    }

    /// Every service's status (memory left for the runtime to fill in).
    pub fn status(&self) -> Vec<ServiceStatus> {
        let now = self.clock.now_ms();
        self.services
            .iter()
            .map(|s| {
                let mut retry_in_ms = None;
                let (state, pid, reason) = match &s.state {
                    State::Waiting => {
                        let missing: Vec<&str> = s
                            .manifest
                            .depends_on
                            .iter()
                            .map(String::as_str)
                            .filter(|d| {
                                !self.index(d).is_some_and(|j| {
                                    matches!(self.services[j].state, State::Ready { .. })
                                })
                            })
                            .collect();
                        let reason = (!missing.is_empty())
                            .then(|| format!("waiting for {}", missing.join(", ")));
                        ("waiting", None, reason)
                    }
                    State::Backoff { .. } => ("backoff", None, None),
                    State::Starting { pid, .. } => ("starting", Some(*pid), None),
                    State::Ready { pid, .. } => ("ready", Some(*pid), None),
                    State::Stopping { pid, .. } => ("stopping", Some(*pid), None),
                    State::Down => ("down", None, None),
                    State::Exited { .. } => ("exited", None, None),
                    State::Failed {
                        reason,
                        retry_at: Some(at),
                    } if !self.shutting_down => {
                        let ms = at.saturating_sub(now);
                        retry_in_ms = Some(ms);
                        let reason = format!("{reason}; next try in {}", human_ms(ms));
                        ("failed", None, Some(reason))
                    }
                    State::Failed { reason, .. } => ("failed", None, Some(reason.clone())),
                };
                ServiceStatus {
                    name: s.manifest.name.clone(),
                    state,
                    pid,
                    uptime_ms: pid.map(|_| now.saturating_sub(s.started_at)),
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                    reason,
                    retry_in_ms,
                    memory_bytes: None,
                }
            })
            .collect()
    }

    /// The main pid of a running service.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.index(name).and_then(|i| match self.services[i].state {
            State::Starting { pid, .. }
            | State::Ready { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        })
    }
}

/// `ms` for a person, rounded up to whole seconds: `45s`, `9m12s`.
fn human_ms(ms: Millis) -> String {
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests;
