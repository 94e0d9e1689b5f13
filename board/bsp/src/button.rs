//! The setup button: debouncing and gestures, over an `embedded-hal` input pin.
//!
//! | held for            | while held                 | on release            |
//! |---------------------|----------------------------|-----------------------|
//! | < 2 s               |                            | short press: open the pairing window |
//! | 2 s – 5 s           |                            | nothing               |
//! | 5 s – 10 s          | from 5 s: reset countdown  | cancelled             |
//! | ≥ 10 s              | from 10 s: "release now"   | factory reset         |
//!
//! Durations run from the first edge of a press to the first edge of its release, once each
//! has been stable for the debounce time; a glitch shorter than that does nothing at all.
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

    /// Feeds one sample of the button's level; returns what it completed.
    pub fn sample(&mut self, pressed: bool, now_ms: u64) -> Events {
        let mut ev = Events::new();
        if pressed != self.raw {
            self.raw = pressed;
            self.raw_since_ms = now_ms;
        }
        if self.raw != self.stable
            && now_ms.saturating_sub(self.raw_since_ms) >= self.timing.debounce_ms
        {
            self.stable = self.raw;
            if self.stable {
                self.pressed_at_ms = self.raw_since_ms;
                self.phase = Phase::Held;
                push(&mut ev, ButtonEvent::Pressed { at_ms: self.pressed_at_ms });
            } else {
                let held = self.raw_since_ms - self.pressed_at_ms;
                self.phase = Phase::Up;
                push(&mut ev, self.classify(held));
                return ev;
            }
        }
        // Thresholds count only while the raw level is still down: a release that is still
        // being debounced has already ended the hold at its first edge.
        if self.stable && self.raw {
            let held = now_ms - self.pressed_at_ms;
            if self.phase < Phase::Countdown && held >= self.timing.countdown_ms {
                self.phase = Phase::Countdown;
                push(&mut ev, ButtonEvent::CountdownStarted);
            }
            if self.phase < Phase::ReleaseNow && held >= self.timing.reset_ms {
                self.phase = Phase::ReleaseNow;
                push(&mut ev, ButtonEvent::ReleaseNow);
            }
        }
        ev
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
