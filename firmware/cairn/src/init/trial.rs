//! A system slot on trial (firmware/update/DESIGN.md): when the slot this boot runs from is the
//! one the boot state has on trial, PID 1 commits it once every service has been ready for the
//! settle time, and stops feeding the watchdog if that has not happened by the deadline — the
//! board resets and u-boot's `boot.scr` counts the next try, or falls back. The console says
//! which: `update: slot b on trial (try 1 of 3)`, `update: slot b committed`,
//! `update: fell back to slot a (slot b failed 3 tries)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_supervisor::Notice;
use cairn_update::bootstate::{BootState, Last, SlotName, TRIES};
use cairn_update::disk::BootDisk;

use crate::sys::log;

/// Every service ready this long, without a failure, before the slot is committed.
pub const SETTLE_DEFAULT: Duration = Duration::from_secs(120);
/// From PID 1's start: a slot on trial not committed by then makes the board reset.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(600);

/// The trial's times, from the kernel command line (`cairn.update_settle=SECONDS`,
/// `cairn.update_deadline=SECONDS`: tests use seconds) or the defaults. A bad value is named
/// and the default kept.
pub fn times(cmdline: &str) -> (Duration, Duration, Vec<String>) {
    let mut problems = Vec::new();
    let mut get = |key: &str, default: Duration| {
        let Some(v) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        else {
            return default;
        };
        match v.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => {
                problems.push(format!("{key}={v} is not a number of seconds"));
                default
            }
        }
    };
    let settle = get("cairn.update_settle", SETTLE_DEFAULT);
    let deadline = get("cairn.update_deadline", DEADLINE_DEFAULT);
    (settle, deadline, problems)
}

/// What the boot state says about this boot, for the console, and whether `running` is on
/// trial.
pub fn announce(state: &BootState, running: SlotName) -> (Option<String>, bool) {
    if state.trying == Some(running) {
        // boot.scr counted this boot down already.
        let tries = TRIES.saturating_sub(state.tries);
        let line = format!("update: slot {running} on trial (try {tries} of {TRIES})");
        return (Some(line), true);
    }
    if state.last == Last::Fallback && state.active == running {
        let line = format!(
            "update: fell back to slot {running} (slot {} failed {TRIES} tries)",
            running.other()
        );
        return (Some(line), false);
    }
    (None, false)
}

/// The trial's decision at `now`, given since when every service has been ready.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting, at most this long.
    Wait(Duration),
    /// Healthy for the settle time: commit.
    Commit,
    /// The deadline passed: stop feeding the watchdog.
    GiveUp,
}

/// `ready_since`: since when every service is ready (`None`: not now); times from PID 1's
/// start.
pub fn step(
    ready_since: Option<Duration>,
    now: Duration,
    settle: Duration,
    deadline: Duration,
) -> Step {
    if let Some(t) = ready_since {
        if now >= t + settle {
            return Step::Commit;
        }
    }
    if now >= deadline {
        return Step::GiveUp;
    }
    let mut next = deadline - now;
    if let Some(t) = ready_since {
        next = next.min(t + settle - now);
    }
    Step::Wait(next)
}

/// Since when every service has been ready after `notice` at `now`: a crash, even one that is
/// restarted at once, starts the settle time again, so that a slot is never committed in the
/// middle of one.
pub fn heard(notice: &Notice, now: Duration) -> Option<Duration> {
    match notice {
        Notice::Ready => Some(now),
        Notice::Failed(_) | Notice::Retrying(_) | Notice::Restarting(_) => None,
    }
}

/// Runs the trial of `running` on the notices `rx` until it is committed or given up.
pub fn run(
    disk: BootDisk,
    running: SlotName,
    settle: Duration,
    deadline: Duration,
    started: Instant,
    rx: Receiver<Notice>,
    starve: Arc<AtomicBool>,
) {
    let mut ready_since = None;
    loop {
        let now = started.elapsed();
        match step(ready_since, now, settle, deadline) {
            Step::Commit => {
                match disk.state().map(|s| s.and_then(|s| s.commit(running))) {
                    Ok(Some(next)) => match disk.write_state(&next) {
                        Ok(()) => log!("update: slot {running} committed"),
                        Err(e) => {
                            log!("error: update: committing slot {running}: {e}");
                            starve.store(true, Ordering::SeqCst);
                        }
                    },
                    Ok(None) => log!("update: slot {running} is no longer on trial"),
                    Err(e) => log!("error: update: reading the boot state: {e}"),
                }
                return;
            }
            Step::GiveUp => {
                log!(
                    "update: slot {running} not healthy for {} s within {} s: resetting through the watchdog",
                    settle.as_secs(),
                    deadline.as_secs()
                );
                starve.store(true, Ordering::SeqCst);
                return;
            }
            Step::Wait(d) => match rx.recv_timeout(d) {
                Ok(n) => ready_since = heard(&n, started.elapsed()),
                Err(RecvTimeoutError::Timeout) => {}
                // Stage 2 has ended (a shutdown): nothing to commit.
                Err(RecvTimeoutError::Disconnected) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn times_come_from_the_command_line_or_the_defaults() {
        let (s, d, p) = times("console=ttyAMA0 cairn.update_settle=5 cairn.update_deadline=90");
        assert_eq!((s, d, p.len()), (S(5), S(90), 0));
        let (s, d, p) = times("cairn.update_settle=soon");
        assert_eq!((s, d), (SETTLE_DEFAULT, DEADLINE_DEFAULT));
        assert_eq!(p, ["cairn.update_settle=soon is not a number of seconds"]);
    }

    #[test]
    fn commit_after_settling_give_up_at_the_deadline() {
        let (settle, deadline) = (S(10), S(60));
        assert_eq!(step(None, S(0), settle, deadline), Step::Wait(S(60)));
        assert_eq!(step(Some(S(5)), S(6), settle, deadline), Step::Wait(S(9)));
        assert_eq!(step(Some(S(5)), S(15), settle, deadline), Step::Commit);
        // A failure reset the readiness: the deadline wins.
        assert_eq!(step(None, S(60), settle, deadline), Step::GiveUp);
        assert_eq!(step(Some(S(55)), S(60), settle, deadline), Step::GiveUp);
    }

    /// Plays `notices` (at their times) through [`heard`] and [`step`] as [`run`] does, and
    /// returns when the slot was committed.
    fn committed_at(notices: &[(u64, Notice)], settle: Duration, deadline: Duration) -> Step {
        let mut ready_since = None;
        let mut now = S(0);
        let mut next = notices.iter().peekable();
        loop {
            match step(ready_since, now, settle, deadline) {
                Step::Wait(d) => match next.peek() {
                    Some((at, _)) if S(*at) <= now + d => {
                        let (at, n) = next.next().unwrap();
                        now = S(*at);
                        ready_since = heard(n, now);
                    }
                    _ => now += d,
                },
                Step::Commit => return Step::Wait(now),
                Step::GiveUp => return Step::GiveUp,
            }
        }
    }

    #[test]
    fn a_crash_restarted_at_once_starts_the_settle_time_again() {
        let (settle, deadline) = (S(10), S(60));
        let crash = |at| (at, Notice::Restarting("web".into()));
        // Ready at 2: committed at 12.
        assert_eq!(
            committed_at(&[(2, Notice::Ready)], settle, deadline),
            Step::Wait(S(12))
        );
        // One crash at 8 (restarted, ready again at 9): not committed at 12, but at 19.
        assert_eq!(
            committed_at(
                &[(2, Notice::Ready), crash(8), (9, Notice::Ready)],
                settle,
                deadline
            ),
            Step::Wait(S(19))
        );
        // A crash every 8 s, each restarted at once: never 10 s without one, never committed.
        let mut every_8s = vec![(2, Notice::Ready)];
        for t in (8..60).step_by(8) {
            every_8s.push(crash(t));
            every_8s.push((t + 1, Notice::Ready));
        }
        assert_eq!(committed_at(&every_8s, settle, deadline), Step::GiveUp);
        // Crash loops and failures count the same.
        for n in [Notice::Retrying("web".into()), Notice::Failed("web".into())] {
            assert_eq!(heard(&n, S(5)), None);
        }
        assert_eq!(heard(&Notice::Ready, S(5)), Some(S(5)));
    }

    #[test]
    fn only_the_slot_on_trial_is_announced() {
        let s = BootState::default().try_once(SlotName::B).boot().1.unwrap();
        let (line, on_trial) = announce(&s, SlotName::B);
        assert_eq!(line.unwrap(), "update: slot b on trial (try 1 of 3)");
        assert!(on_trial);
        assert_eq!(announce(&s, SlotName::A), (None, false));
        let mut f = s;
        for _ in 0..TRIES {
            f = f.boot().1.unwrap();
        }
        let (line, on_trial) = announce(&f, SlotName::A);
        assert_eq!(
            line.unwrap(),
            "update: fell back to slot a (slot b failed 3 tries)"
        );
        assert!(!on_trial);
    }
}
