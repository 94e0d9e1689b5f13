//! The device's whole user interface before the web UI is reachable: what the LEDs should show,
//! given the device's health, the pairing window, a fresh confirmation and a held button.
//!
//! `Ui` is the plain state machine; `SharedUi` puts it behind a lock with a clock so the button
//! thread, the LED thread, the setup UI and the network can share it.

use crate::button::ButtonEvent;
use crate::clock::Clock;
use crate::pairing::{Closing, Completion, Opened, PairingError, PairingWindow, WindowStatus};
use crate::pattern::Pattern;
use serde::Deserialize;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Timing of the pairing window and the confirmation, from the board file's `[ui]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// How long a short press keeps the pairing window open.
    pub pairing_window_s: u64,
    /// How long the LEDs confirm a completed claim or pairing.
    pub confirmation_ms: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            pairing_window_s: 120,
            confirmation_ms: 3_000,
        }
    }
}

impl UiConfig {
    /// Checks the values; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.pairing_window_s) {
            return Err(format!(
                "ui.pairing_window_s = {} must be between 1 and 3600",
                self.pairing_window_s
            ));
        }
        if self.confirmation_ms == 0 || self.confirmation_ms > 60_000 {
            return Err(format!(
                "ui.confirmation_ms = {} must be between 1 and 60000",
                self.confirmation_ms
            ));
        }
        Ok(())
    }
}

impl UiConfig {
    /// Applies `cairn.pairing_window_s=N` and `cairn.confirmation_ms=N` from a kernel command
    /// line (test images shorten the window this way). Returns one message per word that was
    /// not applied, naming it; the rest of the configuration stays as it was.
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let mut next = *self;
            let field = match key {
                "cairn.pairing_window_s" => &mut next.pairing_window_s,
                "cairn.confirmation_ms" => &mut next.confirmation_ms,
                _ => continue,
            };
            match value.parse::<u64>() {
                Ok(v) => *field = v,
                Err(_) => {
                    problems.push(format!("kernel command line: {word}: not a number"));
                    continue;
                }
            }
            match next.validate() {
                Ok(()) => *self = next,
                Err(e) => problems.push(format!("kernel command line: {word}: {e}")),
            }
        }
        problems
    }
}

/// The device's standing condition, set by the firmware as it learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Still starting.
    Booting,
    /// Running, but nobody has claimed it yet.
    SetupNeeded,
    /// Running and claimed; everything fine.
    Healthy,
    /// Running; storage redundancy below target.
    Degraded,
    /// Something is wrong.
    Error,
}

/// Something the firmware must do because of the button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The button opened a pairing window (or found one open).
    PairingOpened(Opened),
    /// Wipe the data partition's configuration and keys, then reboot.
    FactoryReset,
}

/// The user-interface state machine.
#[derive(Debug, Clone)]
pub struct Ui {
    config: UiConfig,
    health: Health,
    pairing: PairingWindow,
    /// End of the confirmation shown after a claim or pairing (clock ms).
    confirmed_until_ms: Option<u64>,
    /// What a held button shows, overriding everything else.
    hold: Option<Pattern>,
}

impl Ui {
    /// A UI for a booting device.
    pub fn new(config: UiConfig) -> Self {
        Self {
            config,
            health: Health::Booting,
            pairing: PairingWindow::new(config.pairing_window_s * 1000),
            confirmed_until_ms: None,
            hold: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> UiConfig {
        self.config
    }

    /// Sets the device's health.
    pub fn set_health(&mut self, health: Health) {
        self.health = health;
    }

    /// The device's health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Applies a button event; returns what the firmware must do.
    pub fn on_button(&mut self, event: ButtonEvent, now_ms: u64) -> Option<Action> {
        match event {
            ButtonEvent::Pressed { .. } => None,
            ButtonEvent::ShortPress => {
                self.hold = None;
                Some(Action::PairingOpened(self.pairing.press(now_ms)))
            }
            ButtonEvent::LongPress | ButtonEvent::ResetCancelled => {
                self.hold = None;
                None
            }
            ButtonEvent::CountdownStarted => {
                self.hold = Some(Pattern::ResetCountdown);
                None
            }
            ButtonEvent::ReleaseNow => {
                self.hold = Some(Pattern::ReleaseNow);
                None
            }
            // "Release now" stays on while the device wipes itself and reboots.
            ButtonEvent::FactoryReset => Some(Action::FactoryReset),
        }
    }

    /// Completes a claim or pairing if the window is open (see `PairingWindow::complete`), and
    /// starts the confirmation.
    pub fn complete(&mut self, what: Completion, now_ms: u64) -> Result<Closing, PairingError> {
        let closing = self.pairing.complete(what, now_ms)?;
        self.confirmed_until_ms = Some(now_ms + self.config.confirmation_ms);
        Ok(closing)
    }

    /// Completes a claim or pairing in window `id` only (see `PairingWindow::complete_window`).
    pub fn complete_window(
        &mut self,
        id: u64,
        what: Completion,
        now_ms: u64,
    ) -> Result<Closing, PairingError> {
        let closing = self.pairing.complete_window(id, what, now_ms)?;
        self.confirmed_until_ms = Some(now_ms + self.config.confirmation_ms);
        Ok(closing)
    }

    /// Closes window `id` for a refused claim, with no confirmation (see
    /// `PairingWindow::refuse_window`): the LEDs go back to the health.
    pub fn refuse_window(&mut self, id: u64, now_ms: u64) -> Result<Closing, PairingError> {
        self.pairing.refuse_window(id, now_ms)
    }

    /// The pairing window's state.
    pub fn pairing_status(&mut self, now_ms: u64) -> WindowStatus {
        self.pairing.status(now_ms)
    }

    /// The number of the last pairing window opened since boot (0: none yet).
    pub fn last_window(&self) -> u64 {
        self.pairing.last_id()
    }

    /// What the LEDs show at `now_ms`. A held button wins, then a fresh confirmation, then an
    /// open pairing window, then the health.
    pub fn pattern(&mut self, now_ms: u64) -> Pattern {
        self.pairing.expire(now_ms);
        if self.confirmed_until_ms.is_some_and(|t| now_ms >= t) {
            self.confirmed_until_ms = None;
        }
        if let Some(p) = self.hold {
            return p;
        }
        if self.confirmed_until_ms.is_some() {
            return Pattern::Confirmed;
        }
        if self.pairing.closes_at_ms().is_some() {
            return Pattern::PairingOpen;
        }
        match self.health {
            Health::Booting => Pattern::Booting,
            Health::SetupNeeded => Pattern::SetupNeeded,
            Health::Healthy => Pattern::Healthy,
            Health::Degraded => Pattern::Degraded,
            Health::Error => Pattern::Error,
        }
    }

    /// When `pattern` next changes by itself (window timeout, end of confirmation).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match (self.pairing.closes_at_ms(), self.confirmed_until_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `Ui` shared between threads, with the clock it runs on. Every change wakes the waiters
/// (the LED thread), so LEDs follow at once without polling.
#[derive(Debug)]
pub struct SharedUi<C> {
    clock: C,
    state: Mutex<(Ui, u64)>,
    changed: Condvar,
}

impl<C: Clock> SharedUi<C> {
    /// Shares `ui`, timed by `clock`.
    pub fn new(ui: Ui, clock: C) -> Self {
        Self {
            clock,
            state: Mutex::new((ui, 0)),
            changed: Condvar::new(),
        }
    }

    /// The clock's reading.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn lock(&self) -> MutexGuard<'_, (Ui, u64)> {
        // A panic elsewhere while holding the lock leaves a consistent state machine behind
        // (every method completes its update before returning): keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, mut g: MutexGuard<'_, (Ui, u64)>) {
        g.1 += 1;
        drop(g);
        self.changed.notify_all();
    }

    /// Applies a button event (see `Ui::on_button`).
    pub fn on_button(&self, event: ButtonEvent) -> Option<Action> {
        let now = self.now_ms();
        let mut g = self.lock();
        let action = g.0.on_button(event, now);
        self.changed(g);
        action
    }

    /// Completes a claim or pairing (see `PairingWindow::complete`). The setup UI calls this
    /// with `Completion::Claim`, the network with `Completion::Pairing`.
    pub fn complete(&self, what: Completion) -> Result<Closing, PairingError> {
        let now = self.now_ms();
        let mut g = self.lock();
        let r = g.0.complete(what, now);
        self.changed(g);
        r
    }

    /// Completes a claim or pairing in window `id` only (see `PairingWindow::complete_window`).
    pub fn complete_window(&self, id: u64, what: Completion) -> Result<Closing, PairingError> {
        let now = self.now_ms();
        let mut g = self.lock();
        let r = g.0.complete_window(id, what, now);
        self.changed(g);
        r
    }

    /// Closes window `id` for a refused claim (see `PairingWindow::refuse_window`).
    pub fn refuse_window(&self, id: u64) -> Result<Closing, PairingError> {
        let now = self.now_ms();
        let mut g = self.lock();
        let r = g.0.refuse_window(id, now);
        self.changed(g);
        r
    }

    /// The pairing window's state now.
    pub fn pairing_status(&self) -> WindowStatus {
        let now = self.now_ms();
        self.lock().0.pairing_status(now)
    }

    /// The number of the last pairing window opened since boot (0: none yet).
    pub fn last_window(&self) -> u64 {
        self.lock().0.last_window()
    }

    /// The device's health.
    pub fn health(&self) -> Health {
        self.lock().0.health()
    }

    /// Sets the device's health.
    pub fn set_health(&self, health: Health) {
        let mut g = self.lock();
        g.0.set_health(health);
        self.changed(g);
    }

    /// The pattern to show now, when it next changes by itself, and the change counter to pass
    /// to `wait`.
    pub fn pattern(&self) -> (Pattern, Option<u64>, u64) {
        let now = self.now_ms();
        let mut g = self.lock();
        let p = g.0.pattern(now);
        (p, g.0.next_deadline_ms(), g.1)
    }

    /// Blocks until something changed since `seen` (a counter from `pattern`) or the clock
    /// reaches `until_ms`; returns at once if either already happened.
    pub fn wait(&self, seen: u64, until_ms: Option<u64>) {
        let mut g = self.lock();
        while g.1 == seen {
            let timeout = match until_ms {
                Some(t) => {
                    let now = self.now_ms();
                    if now >= t {
                        return;
                    }
                    Duration::from_millis(t - now)
                }
                // Nothing timed pending: sleep until told (bounded, so a lost wake-up costs
                // at most this long).
                None => Duration::from_secs(60),
            };
            g = self
                .changed
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if until_ms.is_none() && g.1 == seen {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn ui() -> Ui {
        let mut u = Ui::new(UiConfig {
            pairing_window_s: 120,
            confirmation_ms: 3000,
        });
        u.set_health(Health::SetupNeeded);
        u
    }

    #[test]
    fn health_sets_the_base_pattern() {
        let mut u = Ui::new(UiConfig::default());
        assert_eq!(u.pattern(0), Pattern::Booting);
        for (h, p) in [
            (Health::SetupNeeded, Pattern::SetupNeeded),
            (Health::Healthy, Pattern::Healthy),
            (Health::Degraded, Pattern::Degraded),
            (Health::Error, Pattern::Error),
            (Health::Booting, Pattern::Booting),
        ] {
            u.set_health(h);
            assert_eq!(u.health(), h);
            assert_eq!(u.pattern(0), p);
        }
    }

    #[test]
    fn short_press_opens_the_window_which_closes_by_itself() {
        let mut u = ui();
        let a = u.on_button(ButtonEvent::ShortPress, 1000);
        assert_eq!(
            a,
            Some(Action::PairingOpened(Opened::New {
                id: 1,
                closes_at_ms: 121_000
            }))
        );
        assert_eq!(u.pattern(1000), Pattern::PairingOpen);
        assert_eq!(u.next_deadline_ms(), Some(121_000));
        assert_eq!(u.pattern(120_999), Pattern::PairingOpen);
        assert_eq!(u.pattern(121_000), Pattern::SetupNeeded);
        assert_eq!(u.next_deadline_ms(), None);
    }

    #[test]
    fn a_refused_claim_ends_the_fast_blink_without_a_confirmation() {
        let mut u = ui();
        u.on_button(ButtonEvent::ShortPress, 0);
        assert_eq!(u.refuse_window(1, 4000), Ok(Closing::Refused { id: 1 }));
        assert_eq!(u.pattern(4000), Pattern::SetupNeeded);
        assert_eq!(u.next_deadline_ms(), None);
        // The press the page asks for next opens a new window at once.
        assert!(matches!(
            u.on_button(ButtonEvent::ShortPress, 5000),
            Some(Action::PairingOpened(Opened::New { id: 2, .. }))
        ));
    }

    #[test]
    fn a_completion_confirms_then_falls_back() {
        let mut u = ui();
        u.on_button(ButtonEvent::ShortPress, 0);
        u.complete(Completion::Claim, 5000).unwrap();
        assert_eq!(u.pattern(5000), Pattern::Confirmed);
        assert_eq!(u.next_deadline_ms(), Some(8000));
        assert_eq!(u.pattern(7999), Pattern::Confirmed);
        u.set_health(Health::Healthy);
        assert_eq!(u.pattern(8000), Pattern::Healthy);
        assert_eq!(u.pairing_status(8000), WindowStatus::Closed);
    }

    #[test]
    fn a_held_button_overrides_everything_and_cancelling_restores_it() {
        let mut u = ui();
        u.on_button(ButtonEvent::ShortPress, 0);
        u.on_button(ButtonEvent::Pressed { at_ms: 1000 }, 1050);
        assert_eq!(u.pattern(1050), Pattern::PairingOpen);
        u.on_button(ButtonEvent::CountdownStarted, 6000);
        assert_eq!(u.pattern(6000), Pattern::ResetCountdown);
        u.on_button(ButtonEvent::ReleaseNow, 11_000);
        assert_eq!(u.pattern(11_000), Pattern::ReleaseNow);
        // The pairing window runs on underneath; its timeout still applies.
        assert_eq!(u.next_deadline_ms(), Some(120_000));
        u.on_button(ButtonEvent::ResetCancelled, 11_500);
        assert_eq!(u.pattern(11_500), Pattern::PairingOpen);
    }

    #[test]
    fn factory_reset_is_asked_for_and_release_now_stays_on() {
        let mut u = ui();
        u.on_button(ButtonEvent::CountdownStarted, 5000);
        u.on_button(ButtonEvent::ReleaseNow, 10_000);
        assert_eq!(
            u.on_button(ButtonEvent::FactoryReset, 10_500),
            Some(Action::FactoryReset)
        );
        assert_eq!(u.pattern(10_500), Pattern::ReleaseNow);
    }

    #[test]
    fn a_long_press_does_not_open_the_window() {
        let mut u = ui();
        assert_eq!(u.on_button(ButtonEvent::LongPress, 3000), None);
        assert_eq!(u.pattern(3000), Pattern::SetupNeeded);
        assert_eq!(u.pairing_status(3000), WindowStatus::Closed);
    }

    #[test]
    fn config_is_checked() {
        assert!(UiConfig::default().validate().is_ok());
        let e = UiConfig {
            pairing_window_s: 0,
            ..UiConfig::default()
        };
        assert!(e.validate().unwrap_err().contains("pairing_window_s = 0"));
        let e = UiConfig {
            confirmation_ms: 0,
            ..UiConfig::default()
        };
        assert!(e.validate().unwrap_err().contains("confirmation_ms = 0"));
    }

    #[test]
    fn of_racing_claims_and_pairings_exactly_one_wins() {
        let clock = Arc::new(ManualClock::new(0));
        let shared = Arc::new(SharedUi::new(ui(), clock.clone()));
        shared.on_button(ButtonEvent::ShortPress);
        clock.advance(1000);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = shared.clone();
                std::thread::spawn(move || {
                    let what = if i % 2 == 0 {
                        Completion::Claim
                    } else {
                        Completion::Pairing
                    };
                    s.complete(what).is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(shared.pattern().0, Pattern::Confirmed);
        assert_eq!(shared.pairing_status(), WindowStatus::Closed);
    }

    #[test]
    fn shared_ui_reports_changes_to_waiters() {
        let clock = Arc::new(ManualClock::new(0));
        let shared = Arc::new(SharedUi::new(ui(), clock.clone()));
        let (p, deadline, seen) = shared.pattern();
        assert_eq!((p, deadline), (Pattern::SetupNeeded, None));
        let s = shared.clone();
        let waiter = std::thread::spawn(move || {
            s.wait(seen, None);
            s.pattern().0
        });
        shared.set_health(Health::Healthy);
        // The waiter wakes on the change (or, if it missed the notification, because the
        // counter moved), and sees the new pattern.
        assert_eq!(waiter.join().unwrap(), Pattern::Healthy);
        // A deadline already passed returns at once.
        let (_, _, seen) = shared.pattern();
        shared.wait(seen, Some(0));
        assert_eq!(shared.now_ms(), 0);
    }

    #[test]
    fn the_kernel_command_line_can_shorten_the_window() {
        let mut c = UiConfig::default();
        let problems = c.apply_cmdline(
            "console=ttyAMA0 cairn.pairing_window_s=5 quiet cairn.confirmation_ms=x \
             cairn.pairing_window_s=0",
        );
        assert_eq!(c.pairing_window_s, 5);
        assert_eq!(c.confirmation_ms, 3000);
        assert_eq!(
            problems,
            vec![
                "kernel command line: cairn.confirmation_ms=x: not a number".to_string(),
                "kernel command line: cairn.pairing_window_s=0: ui.pairing_window_s = 0 must be \
                 between 1 and 3600"
                    .to_string(),
            ]
        );
    }
}
