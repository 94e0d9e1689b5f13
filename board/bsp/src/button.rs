//! The setup button: debouncing and gestures, over an `embedded-hal` input pin.
//!
//! | held for            | while held                 | on release            |
//! |---------------------|----------------------------|-----------------------|
//! | < 2 s               |                            | short press: open the pairing window |
//! | 2 s – 5 s           |                            | nothing               |
//! | 5 s – 10 s          | from 5 s: reset countdown  | cancelled             |
//! | ≥ 10 s              | from 10 s: "release now"   | factory reset         |
//!
//! Durations run from the edge that starts a press to the edge that ends it, each counted only
//! once its level has held for the debounce time; a glitch shorter than that does nothing.
//! The gesture machine is fed samples `(pressed, now)`: on Linux one per line edge event plus
//! one at each deadline it asks for, so an idle button costs no CPU.

use embedded_hal::digital::InputPin;
use serde::Deserialize;

/// Gesture timing, from the board file's `[button_timing]` (defaults are the documented ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// A level must hold this long to count; shorter glitches are ignored.
    pub debounce_ms: u64,
    /// Presses shorter than this are short presses.
    pub short_press_max_ms: u64,
    /// Holding this long starts the factory-reset countdown.
    pub countdown_ms: u64,
    /// Holding this long arms the factory reset: releasing then wipes the device.
    pub reset_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            debounce_ms: 50,
            short_press_max_ms: 2_000,
            countdown_ms: 5_000,
            reset_ms: 10_000,
        }
    }
}

impl Timing {
    /// Checks the thresholds are in order; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.debounce_ms == 0 || self.debounce_ms >= self.short_press_max_ms {
            return Err(format!(
                "button_timing.debounce_ms = {} must be above 0 and below short_press_max_ms = {}",
                self.debounce_ms, self.short_press_max_ms
            ));
        }
        if self.short_press_max_ms > self.countdown_ms {
            return Err(format!(
                "button_timing.short_press_max_ms = {} must not exceed countdown_ms = {}",
                self.short_press_max_ms, self.countdown_ms
            ));
        }
        if self.countdown_ms >= self.reset_ms {
            return Err(format!(
                "button_timing.countdown_ms = {} must be below reset_ms = {}",
                self.countdown_ms, self.reset_ms
            ));
        }
        Ok(())
    }
}

/// What the button did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    /// A press began (debounced) at `at_ms`.
    Pressed {
        /// When the press's first edge came.
        at_ms: u64,
    },
    /// Released before `short_press_max_ms`: open the pairing window.
    ShortPress,
    /// Released between `short_press_max_ms` and `countdown_ms`: means nothing.
    LongPress,
    /// Held `countdown_ms`: the factory-reset countdown runs.
    CountdownStarted,
    /// Held `reset_ms`: releasing now wipes the device.
    ReleaseNow,
    /// Released during the countdown: nothing happens.
    ResetCancelled,
    /// Released after `reset_ms`: wipe the configuration and keys, then reboot.
    FactoryReset,
}

/// Where a held button is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Up,
    Held,
    Countdown,
    ReleaseNow,
}

/// Events from one sample: at most a press, two threshold crossings and nothing else, or one
/// release.
pub type Events = heapless::Vec<ButtonEvent, 4>;

/// The gesture state machine: debouncing, hold thresholds, release classification.
#[derive(Debug, Clone)]
pub struct Gestures {
    timing: Timing,
    /// Last sampled level and since when (clock ms).
    raw: bool,
    raw_since_ms: u64,
    /// Debounced level.
    stable: bool,
    pressed_at_ms: u64,
    phase: Phase,
}

impl Gestures {
    /// A machine with the button up.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            raw: false,
            raw_since_ms: 0,
            stable: false,
            pressed_at_ms: 0,
            phase: Phase::Up,
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether the button is (debounced) down.
    pub fn is_pressed(&self) -> bool {
        self.stable
    }

    /// Feeds one sample: the button's level now. The level seen before held until `now_ms`, so
    /// what it completed by then (a debounced edge, a threshold) is reported first; the new
    /// level starts counting from `now_ms`. Returns the completed events in order.
    pub fn sample(&mut self, pressed: bool, now_ms: u64) -> Events {
        let mut ev = Events::new();
        self.advance(now_ms, &mut ev);
        if pressed != self.raw {
            self.raw = pressed;
            self.raw_since_ms = now_ms;
        }
        ev
    }

    /// Applies the passage of time up to `now_ms` with the raw level unchanged.
    fn advance(&mut self, now_ms: u64, ev: &mut Events) {
        if self.raw != self.stable
            && now_ms.saturating_sub(self.raw_since_ms) >= self.timing.debounce_ms
        {
            self.stable = self.raw;
            if self.stable {
                self.pressed_at_ms = self.raw_since_ms;
                self.phase = Phase::Held;
                push(
                    ev,
                    ButtonEvent::Pressed {
                        at_ms: self.pressed_at_ms,
                    },
                );
            } else {
                let held = self.raw_since_ms - self.pressed_at_ms;
                self.phase = Phase::Up;
                push(ev, self.classify(held));
                return;
            }
        }
        // Thresholds count only while the raw level is still down: a release that is still
        // being debounced has already ended the hold at its edge.
        if self.stable && self.raw {
            let held = now_ms - self.pressed_at_ms;
            if self.phase < Phase::Countdown && held >= self.timing.countdown_ms {
                self.phase = Phase::Countdown;
                push(ev, ButtonEvent::CountdownStarted);
            }
            if self.phase < Phase::ReleaseNow && held >= self.timing.reset_ms {
                self.phase = Phase::ReleaseNow;
                push(ev, ButtonEvent::ReleaseNow);
            }
        }
    }

    /// When the machine next needs a sample even if the level does not change (clock ms).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.raw != self.stable {
            return Some(self.raw_since_ms + self.timing.debounce_ms);
        }
        if !self.stable {
            return None;
        }
        match self.phase {
            Phase::Held => Some(self.pressed_at_ms + self.timing.countdown_ms),
            Phase::Countdown => Some(self.pressed_at_ms + self.timing.reset_ms),
            Phase::ReleaseNow | Phase::Up => None,
        }
    }

    fn classify(&self, held_ms: u64) -> ButtonEvent {
        let t = &self.timing;
        if held_ms < t.short_press_max_ms {
            ButtonEvent::ShortPress
        } else if held_ms < t.countdown_ms {
            ButtonEvent::LongPress
        } else if held_ms < t.reset_ms {
            ButtonEvent::ResetCancelled
        } else {
            ButtonEvent::FactoryReset
        }
    }
}

fn push(ev: &mut Events, e: ButtonEvent) {
    // Capacity 4 covers the most one sample can produce (press + two crossings).
    ev.push(e).expect("a sample yields at most three events");
}

/// The button on an input pin: reads the level (active-low handled here) and feeds `Gestures`.
#[derive(Debug)]
pub struct Button<P> {
    pin: P,
    active_low: bool,
    gestures: Gestures,
}

impl<P: InputPin> Button<P> {
    /// A button on `pin`; pressed reads low if `active_low`.
    pub fn new(pin: P, active_low: bool, timing: Timing) -> Self {
        Self {
            pin,
            active_low,
            gestures: Gestures::new(timing),
        }
    }

    /// Reads the pin once and feeds the level to the gesture machine.
    pub fn poll(&mut self, now_ms: u64) -> Result<Events, P::Error> {
        let pressed = if self.active_low {
            self.pin.is_low()?
        } else {
            self.pin.is_high()?
        };
        Ok(self.gestures.sample(pressed, now_ms))
    }

    /// When to poll next even without an edge (clock ms).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.gestures.next_deadline_ms()
    }

    /// The pin, to wait for its edges.
    pub fn pin_mut(&mut self) -> &mut P {
        &mut self.pin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use ButtonEvent::*;

    /// Runs the machine over raw edges `(t, pressed)` as the Linux backend would: a sample at
    /// every edge and at every deadline the machine asks for, up to `end_ms`.
    fn run(edges: &[(u64, bool)], end_ms: u64) -> Vec<(u64, ButtonEvent)> {
        let mut g = Gestures::new(Timing::default());
        let mut out = Vec::new();
        let mut level = false;
        let mut i = 0;
        let mut now = 0;
        loop {
            let next_edge = edges.get(i).map(|e| e.0);
            let next = match (next_edge, g.next_deadline_ms()) {
                (Some(e), Some(d)) => e.min(d.max(now)),
                (Some(e), None) => e,
                (None, Some(d)) => d.max(now),
                (None, None) => break,
            };
            if next > end_ms {
                break;
            }
            now = next;
            if next_edge == Some(now) {
                level = edges[i].1;
                i += 1;
            }
            for e in g.sample(level, now) {
                out.push((now, e));
            }
        }
        out
    }

    fn hold(ms: u64) -> Vec<ButtonEvent> {
        run(&[(1000, true), (1000 + ms, false)], 100_000)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    #[test]
    fn short_press_boundary_is_2_s() {
        assert_eq!(hold(1999), vec![Pressed { at_ms: 1000 }, ShortPress]);
        assert_eq!(hold(2000), vec![Pressed { at_ms: 1000 }, LongPress]);
        assert_eq!(hold(2001), vec![Pressed { at_ms: 1000 }, LongPress]);
    }

    #[test]
    fn countdown_starts_at_5_s_and_a_release_before_10_s_cancels() {
        assert_eq!(hold(4999), vec![Pressed { at_ms: 1000 }, LongPress]);
        assert_eq!(
            hold(5000),
            vec![Pressed { at_ms: 1000 }, CountdownStarted, ResetCancelled]
        );
        assert_eq!(
            hold(5001),
            vec![Pressed { at_ms: 1000 }, CountdownStarted, ResetCancelled]
        );
        assert_eq!(
            hold(9999),
            vec![Pressed { at_ms: 1000 }, CountdownStarted, ResetCancelled]
        );
    }

    #[test]
    fn release_now_at_10_s_and_a_release_after_it_resets() {
        assert_eq!(
            hold(10_000),
            vec![
                Pressed { at_ms: 1000 },
                CountdownStarted,
                ReleaseNow,
                FactoryReset
            ]
        );
        assert_eq!(
            hold(10_001),
            vec![
                Pressed { at_ms: 1000 },
                CountdownStarted,
                ReleaseNow,
                FactoryReset
            ]
        );
        assert_eq!(
            hold(60_000),
            vec![
                Pressed { at_ms: 1000 },
                CountdownStarted,
                ReleaseNow,
                FactoryReset
            ]
        );
    }

    #[test]
    fn threshold_events_come_on_time_while_held() {
        let ev = run(&[(1000, true), (12_000, false)], 100_000);
        assert_eq!(
            ev,
            vec![
                (1050, Pressed { at_ms: 1000 }),
                (6000, CountdownStarted),
                (11_000, ReleaseNow),
                (12_050, FactoryReset),
            ]
        );
    }

    #[test]
    fn glitch_shorter_than_debounce_does_nothing() {
        assert_eq!(run(&[(1000, true), (1049, false)], 100_000), vec![]);
        // A glitch in an otherwise idle stretch asks for no deadline afterwards.
        let mut g = Gestures::new(Timing::default());
        assert!(g.sample(true, 10).is_empty());
        assert!(g.sample(false, 59).is_empty());
        assert_eq!(g.next_deadline_ms(), None);
        assert!(g.sample(false, 5000).is_empty());
        assert!(!g.is_pressed());
    }

    #[test]
    fn a_press_as_long_as_the_debounce_counts() {
        assert_eq!(hold(50), vec![Pressed { at_ms: 1000 }, ShortPress]);
    }

    #[test]
    fn contact_bounce_on_press_and_release_makes_one_short_press() {
        let edges = [
            (1000, true),
            (1005, false),
            (1012, true),
            (1020, false),
            (1030, true),
            (1800, false),
            (1810, true),
            (1815, false),
        ];
        let ev = run(&edges, 100_000);
        assert_eq!(
            ev,
            vec![(1080, Pressed { at_ms: 1030 }), (1865, ShortPress)]
        );
    }

    #[test]
    fn a_dropout_during_a_hold_does_not_end_it() {
        // 30 ms of contact loss at 4 s: still one hold, and it reaches the countdown.
        let edges = [(1000, true), (5000, false), (5030, true), (8000, false)];
        let ev: Vec<_> = run(&edges, 100_000).into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            ev,
            vec![Pressed { at_ms: 1000 }, CountdownStarted, ResetCancelled]
        );
    }

    #[test]
    fn a_release_being_debounced_at_a_threshold_does_not_cross_it() {
        // Released 5 ms before the countdown would start: the countdown never shows.
        let ev: Vec<_> = run(&[(1000, true), (5995, false)], 100_000)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(ev, vec![Pressed { at_ms: 1000 }, LongPress]);
    }

    #[test]
    fn a_late_sample_reports_every_crossing_in_order() {
        let mut g = Gestures::new(Timing::default());
        assert!(g.sample(true, 0).is_empty());
        let ev = g.sample(true, 20_000);
        assert_eq!(
            ev.as_slice(),
            &[Pressed { at_ms: 0 }, CountdownStarted, ReleaseNow]
        );
        assert_eq!(g.next_deadline_ms(), None);
    }

    #[test]
    fn deadlines_follow_the_hold() {
        let mut g = Gestures::new(Timing::default());
        assert_eq!(g.next_deadline_ms(), None);
        g.sample(true, 100);
        assert_eq!(g.next_deadline_ms(), Some(150));
        g.sample(true, 150);
        assert_eq!(g.next_deadline_ms(), Some(5100));
        g.sample(true, 5100);
        assert_eq!(g.next_deadline_ms(), Some(10_100));
    }

    #[test]
    fn button_reads_an_active_low_pin() {
        let pin = Mock::new(&[
            Transaction::get(State::High),
            Transaction::get(State::Low),
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::High),
        ]);
        let mut b = Button::new(pin, true, Timing::default());
        assert!(b.poll(0).unwrap().is_empty());
        assert!(b.poll(10).unwrap().is_empty());
        assert_eq!(b.poll(60).unwrap().as_slice(), &[Pressed { at_ms: 10 }]);
        assert!(b.poll(500).unwrap().is_empty());
        assert_eq!(b.poll(550).unwrap().as_slice(), &[ShortPress]);
        b.pin_mut().done();
    }

    #[test]
    fn button_reads_an_active_high_pin() {
        let pin = Mock::new(&[Transaction::get(State::High), Transaction::get(State::High)]);
        let mut b = Button::new(pin, false, Timing::default());
        assert!(b.poll(0).unwrap().is_empty());
        assert_eq!(b.poll(50).unwrap().as_slice(), &[Pressed { at_ms: 0 }]);
        b.pin_mut().done();
    }

    #[test]
    fn timing_is_checked() {
        assert!(Timing::default().validate().is_ok());
        let bad = Timing {
            countdown_ms: 10_000,
            ..Timing::default()
        };
        assert!(bad.validate().unwrap_err().contains("countdown_ms = 10000"));
        let bad = Timing {
            debounce_ms: 0,
            ..Timing::default()
        };
        assert!(bad.validate().unwrap_err().contains("debounce_ms = 0"));
        let bad = Timing {
            short_press_max_ms: 6000,
            ..Timing::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("short_press_max_ms = 6000"));
    }

    #[test]
    fn the_readme_states_the_default_thresholds() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let t = Timing::default();
        let s = |ms: u64| ms / 1000;
        for phrase in [
            format!("| less than {} s |", s(t.short_press_max_ms)),
            format!("| {} to {} s |", s(t.short_press_max_ms), s(t.countdown_ms)),
            format!(
                "| {} to {} s | from {} s:",
                s(t.countdown_ms),
                s(t.reset_ms),
                s(t.countdown_ms)
            ),
            format!("| {} s or more | from {} s:", s(t.reset_ms), s(t.reset_ms)),
            format!("A press shorter than {} ms", t.debounce_ms),
        ] {
            assert!(
                readme.contains(&phrase),
                "{} lacks {phrase:?}",
                path.display()
            );
        }
    }
}
