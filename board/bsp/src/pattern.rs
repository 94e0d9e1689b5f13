//! LED patterns as data, and a driver that plays them on `embedded-hal` output pins.
//!
//! A board has a `status` LED (green on most boards) and may have an `alert` LED (red). Every
//! pattern is told apart by the status LED's rhythm alone, so a one-LED board is never ambiguous;
//! the alert LED adds colour (red for trouble, red + green for amber) where it exists.
//! The README's "The LEDs and the button" table is generated from the same numbers (see
//! `Pattern::describe`).

use embedded_hal::digital::OutputPin;

/// Which LED of the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The main LED, green on most boards; every pattern is readable from it alone.
    Status,
    /// A second, red LED where the board has one: trouble, and amber together with green.
    Alert,
}

impl Role {
    /// Both roles, in the order the front panel lists them.
    pub const ALL: [Role; 2] = [Role::Status, Role::Alert];

    /// The name used in board files and on the front panel.
    pub fn name(self) -> &'static str {
        match self {
            Role::Status => "status",
            Role::Alert => "alert",
        }
    }

    /// The role with this name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// One step of an LED's rhythm: lit or dark for `ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Whether the LED is lit during this step.
    pub on: bool,
    /// How long the step lasts.
    pub ms: u32,
}

const fn on(ms: u32) -> Step {
    Step { on: true, ms }
}
const fn off(ms: u32) -> Step {
    Step { on: false, ms }
}

/// A looping rhythm for one LED. A single step means steady.
pub type Track = &'static [Step];

const STEADY_ON: Track = &[on(1000)];
const STEADY_OFF: Track = &[off(1000)];
/// An even 1 Hz blink: the universal "busy starting".
const BOOTING: Track = &[on(500), off(500)];
/// A double flash every 2 s: calm, but unlike anything a running device shows.
const SETUP_NEEDED: Track = &[on(200), off(200), on(200), off(1400)];
/// A fast 4 Hz blink, as push-button pairing (WPS, Hue) does while it waits.
const PAIRING_OPEN: Track = &[on(125), off(125)];
/// Steady with a short dip every 3 s, so a one-LED board still shows "not quite".
const DEGRADED: Track = &[on(2800), off(200)];
/// A triple flash every 2 s.
const ERROR: Track = &[on(100), off(100), on(100), off(100), on(100), off(1500)];
/// One tick a second while the reset counts down.
const COUNTDOWN: Track = &[on(100), off(900)];
const COUNTDOWN_ALERT: Track = &[on(500), off(500)];
/// A frantic 10 Hz flicker: impossible to mistake, and it asks for action.
const RELEASE_NOW: Track = &[on(50), off(50)];

/// What the LEDs say. The names are what the front panel and the README use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// The firmware is starting.
    Booting,
    /// First boot: nobody has claimed the device yet; open the setup page.
    SetupNeeded,
    /// The pairing window is open: a claim or a friend's plug may pair now.
    PairingOpen,
    /// A claim or pairing just completed (shown for a few seconds).
    Confirmed,
    /// Everything is fine.
    Healthy,
    /// Running, but storage redundancy is below target.
    Degraded,
    /// Something needs the owner's attention (see the web UI or the logs).
    Error,
    /// The button has been held 5 s: a factory reset is counting down; release to cancel.
    ResetCountdown,
    /// The button has been held 10 s: release now to wipe the device.
    ReleaseNow,
}

impl Pattern {
    /// Every pattern, in the README's order.
    pub const ALL: [Pattern; 9] = [
        Pattern::Booting,
        Pattern::SetupNeeded,
        Pattern::PairingOpen,
        Pattern::Confirmed,
        Pattern::Healthy,
        Pattern::Degraded,
        Pattern::Error,
        Pattern::ResetCountdown,
        Pattern::ReleaseNow,
    ];

    /// The pattern's name on the front panel.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Booting => "booting",
            Pattern::SetupNeeded => "setup-needed",
            Pattern::PairingOpen => "pairing-open",
            Pattern::Confirmed => "confirmed",
            Pattern::Healthy => "healthy",
            Pattern::Degraded => "degraded",
            Pattern::Error => "error",
            Pattern::ResetCountdown => "reset-countdown",
            Pattern::ReleaseNow => "release-now",
        }
    }

    /// The pattern with this name.
    pub fn from_name(name: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The rhythm of one LED in this pattern.
    pub fn track(self, role: Role) -> Track {
        match (self, role) {
            (Pattern::Booting, Role::Status) => BOOTING,
            (Pattern::SetupNeeded, Role::Status) => SETUP_NEEDED,
            (Pattern::PairingOpen, Role::Status) => PAIRING_OPEN,
            (Pattern::Confirmed, Role::Status) => STEADY_ON,
            (Pattern::Healthy, Role::Status) => STEADY_ON,
            (Pattern::Degraded, Role::Status) => DEGRADED,
            (Pattern::Degraded, Role::Alert) => STEADY_ON,
            (Pattern::Error, Role::Status) => ERROR,
            (Pattern::Error, Role::Alert) => STEADY_ON,
            (Pattern::ResetCountdown, Role::Status) => COUNTDOWN,
            (Pattern::ResetCountdown, Role::Alert) => COUNTDOWN_ALERT,
            (Pattern::ReleaseNow, Role::Status) => RELEASE_NOW,
            (Pattern::ReleaseNow, Role::Alert) => STEADY_ON,
            (_, Role::Alert) => STEADY_OFF,
        }
    }

    /// One line for people: what the status LED does, and the alert LED where it is lit.
    pub fn describe(self) -> String {
        let mut s = describe_track(self.track(Role::Status));
        let alert = self.track(Role::Alert);
        if alert != STEADY_OFF {
            s.push_str("; red LED ");
            s.push_str(&describe_track(alert));
        }
        s
    }
}

fn describe_track(track: Track) -> String {
    if is_steady(track) {
        return if track[0].on { "on" } else { "off" }.to_string();
    }
    track
        .iter()
        .map(|s| format!("{} {} ms", if s.on { "on" } else { "off" }, s.ms))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_steady(track: Track) -> bool {
    track.iter().all(|s| s.on == track[0].on)
}

/// The LED's level `elapsed_ms` into a track, and how many ms until it next changes (`None`:
/// never, the track is steady).
pub fn level_at(track: Track, elapsed_ms: u64) -> (bool, Option<u64>) {
    assert!(!track.is_empty(), "an LED track needs at least one step");
    if is_steady(track) {
        return (track[0].on, None);
    }
    let period: u64 = track.iter().map(|s| u64::from(s.ms)).sum();
    let t = elapsed_ms % period;
    let mut start = 0u64;
    let mut idx = 0;
    for (i, s) in track.iter().enumerate() {
        if t < start + u64::from(s.ms) {
            idx = i;
            break;
        }
        start += u64::from(s.ms);
    }
    let level = track[idx].on;
    // Walk forward (at most once round the loop: the track is not steady) to the next step of
    // the other level.
    let mut until = start + u64::from(track[idx].ms) - t;
    let mut j = (idx + 1) % track.len();
    while track[j].on == level {
        until += u64::from(track[j].ms);
        j = (j + 1) % track.len();
    }
    (level, Some(until))
}

/// Which blinking pattern a status LED's observed changes `(ms, lit)` show, judged from the
/// lengths of the complete lit and dark spells between them (the first and last spell are
/// partial and ignored). At least one full cycle of the pattern must be seen. Each spell may
/// be off by `max(tolerance_ms, a quarter of its length)`, for an observer whose clock or
/// scheduling jitters (an emulated board). Steady patterns have no spells: `None`.
pub fn recognize(changes: &[(u64, bool)], tolerance_ms: u64) -> Option<Pattern> {
    // Spells between consecutive changes (merging repeats of one level).
    let mut edges: Vec<(u64, bool)> = Vec::with_capacity(changes.len());
    for &(t, on) in changes {
        if edges.last().is_none_or(|&(_, l)| l != on) {
            edges.push((t, on));
        }
    }
    let spells: Vec<(bool, u64)> = edges
        .windows(2)
        .map(|w| (w[0].1, w[1].0.saturating_sub(w[0].0)))
        .collect();
    Pattern::ALL.into_iter().find(|p| {
        let cycle = spells_of(p.track(Role::Status));
        !cycle.is_empty()
            && spells.len() >= cycle.len()
            && (0..cycle.len()).any(|rot| {
                spells.iter().enumerate().all(|(i, &(on, ms))| {
                    let (c_on, c_ms) = cycle[(rot + i) % cycle.len()];
                    let tol = tolerance_ms.max(c_ms / 4);
                    on == c_on && ms.abs_diff(c_ms) <= tol
                })
            })
    })
}

/// A track's cycle as alternating spells (neighbouring steps of one level merged); empty for
/// a steady track.
fn spells_of(track: Track) -> Vec<(bool, u64)> {
    if is_steady(track) {
        return Vec::new();
    }
    let mut spells: Vec<(bool, u64)> = Vec::with_capacity(track.len());
    for s in track {
        match spells.last_mut() {
            Some((on, ms)) if *on == s.on => *ms += u64::from(s.ms),
            _ => spells.push((s.on, u64::from(s.ms))),
        }
    }
    // The cycle wraps: a last spell of the first spell's level joins it.
    if spells.len() > 1 && spells[0].0 == spells[spells.len() - 1].0 {
        let (_, ms) = spells.pop().expect("len > 1");
        spells[0].1 += ms;
    }
    spells
}

/// One LED on an output pin. Active-low wiring is handled here, once; the pin is written only
/// when the level changes, so an idle pattern costs nothing.
#[derive(Debug)]
pub struct Led<P> {
    pin: P,
    active_low: bool,
    lit: Option<bool>,
}

impl<P: OutputPin> Led<P> {
    /// An LED on `pin`, lit by driving it low if `active_low`. Its state is unknown until the
    /// first `set`.
    pub fn new(pin: P, active_low: bool) -> Self {
        Self {
            pin,
            active_low,
            lit: None,
        }
    }

    /// Lights or darkens the LED; returns whether its state changed.
    pub fn set(&mut self, lit: bool) -> Result<bool, P::Error> {
        if self.lit == Some(lit) {
            return Ok(false);
        }
        if lit != self.active_low {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        self.lit = Some(lit);
        Ok(true)
    }

    /// Whether the LED is lit (`None` before the first `set`).
    pub fn lit(&self) -> Option<bool> {
        self.lit
    }

    /// The pin, given back.
    pub fn into_pin(self) -> P {
        self.pin
    }
}

/// What one `LedDriver::update` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// LEDs whose state changed, with their new state.
    pub changed: heapless::Vec<(Role, bool), 2>,
    /// When (clock ms) the next change is due; `None` while the pattern is steady.
    pub next_change_ms: Option<u64>,
}

/// Plays a pattern on the board's LEDs. Memory: two pins and a few words; no buffers.
#[derive(Debug)]
pub struct LedDriver<P> {
    status: Option<Led<P>>,
    alert: Option<Led<P>>,
    pattern: Pattern,
    started_ms: u64,
}

impl<P: OutputPin> LedDriver<P> {
    /// A driver for the LEDs the board has (either may be missing), showing `Booting` from
    /// `now_ms`.
    pub fn new(status: Option<Led<P>>, alert: Option<Led<P>>, now_ms: u64) -> Self {
        Self {
            status,
            alert,
            pattern: Pattern::Booting,
            started_ms: now_ms,
        }
    }

    /// The pattern being shown.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Switches to `pattern`, starting its rhythm at `now_ms`; showing the pattern already
    /// shown keeps its rhythm going. Call `update` to apply.
    pub fn show(&mut self, pattern: Pattern, now_ms: u64) {
        if pattern != self.pattern {
            self.pattern = pattern;
            self.started_ms = now_ms;
        }
    }

    /// Sets the LEDs to where the pattern is at `now_ms`.
    pub fn update(&mut self, now_ms: u64) -> Result<Update, P::Error> {
        let elapsed = now_ms.saturating_sub(self.started_ms);
        let mut out = Update::default();
        for role in Role::ALL {
            let led = match role {
                Role::Status => self.status.as_mut(),
                Role::Alert => self.alert.as_mut(),
            };
            let Some(led) = led else { continue };
            let (level, until) = level_at(self.pattern.track(role), elapsed);
            if led.set(level)? {
                // Two roles, capacity two: cannot overflow.
                let _ = out.changed.push((role, level));
            }
            if let Some(until) = until {
                let at = now_ms + until;
                out.next_change_ms = Some(out.next_change_ms.map_or(at, |n: u64| n.min(at)));
            }
        }
        Ok(out)
    }

    /// Whether the LED of `role` is lit (`None`: the board has no such LED, or it was never set).
    pub fn lit(&self, role: Role) -> Option<bool> {
        match role {
            Role::Status => self.status.as_ref()?.lit(),
            Role::Alert => self.alert.as_ref()?.lit(),
        }
    }

    /// Which LEDs the board has.
    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        Role::ALL.into_iter().filter(|r| match r {
            Role::Status => self.status.is_some(),
            Role::Alert => self.alert.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    /// Plays `pattern` from 0 up to (excluding) `until_ms`, jumping from change to change, and
    /// checks the exact transitions of both LEDs against the pins' expected writes.
    fn plays(pattern: Pattern, until_ms: u64, status: &[(u64, bool)], alert: &[(u64, bool)]) {
        let pin_writes = |t: &[(u64, bool)], active_low: bool| -> Vec<Transaction> {
            t.iter()
                .map(|&(_, on)| {
                    Transaction::set(if on != active_low {
                        State::High
                    } else {
                        State::Low
                    })
                })
                .collect()
        };
        let status_pin = Mock::new(&pin_writes(status, false));
        // The alert LED is wired active-low here to prove the inversion happens in one place.
        let alert_pin = Mock::new(&pin_writes(alert, true));
        let mut d = LedDriver::new(
            Some(Led::new(status_pin, false)),
            Some(Led::new(alert_pin, true)),
            0,
        );
        d.show(pattern, 0);
        let (mut seen_s, mut seen_a) = (Vec::new(), Vec::new());
        let mut now = 0;
        let mut steps = 0;
        while now < until_ms {
            let u = d.update(now).unwrap();
            for (role, on) in u.changed {
                match role {
                    Role::Status => seen_s.push((now, on)),
                    Role::Alert => seen_a.push((now, on)),
                }
            }
            match u.next_change_ms {
                Some(t) => {
                    assert!(t > now, "{pattern:?}: next change {t} not after {now}");
                    now = t;
                }
                None => break,
            }
            steps += 1;
            assert!(steps < 1000);
        }
        assert_eq!(seen_s, status, "{pattern:?} status LED");
        assert_eq!(seen_a, alert, "{pattern:?} alert LED");
        let LedDriver { status, alert, .. } = d;
        status.unwrap().into_pin().done();
        alert.unwrap().into_pin().done();
    }

    #[test]
    fn booting_blinks_at_1_hz() {
        let s = [(0, true), (500, false), (1000, true), (1500, false)];
        plays(Pattern::Booting, 2000, &s, &[(0, false)]);
    }

    #[test]
    fn setup_needed_double_flashes_every_2_s() {
        let s = [
            (0, true),
            (200, false),
            (400, true),
            (600, false),
            (2000, true),
            (2200, false),
            (2400, true),
            (2600, false),
        ];
        plays(Pattern::SetupNeeded, 4000, &s, &[(0, false)]);
    }

    #[test]
    fn pairing_open_blinks_at_4_hz() {
        let s = [
            (0, true),
            (125, false),
            (250, true),
            (375, false),
            (500, true),
        ];
        plays(Pattern::PairingOpen, 501, &s, &[(0, false)]);
    }

    #[test]
    fn confirmed_and_healthy_are_steady_green() {
        plays(Pattern::Confirmed, 10_000, &[(0, true)], &[(0, false)]);
        plays(Pattern::Healthy, 10_000, &[(0, true)], &[(0, false)]);
    }

    #[test]
    fn degraded_is_amber_with_a_dip_every_3_s() {
        let s = [(0, true), (2800, false), (3000, true), (5800, false)];
        plays(Pattern::Degraded, 6000, &s, &[(0, true)]);
    }

    #[test]
    fn error_is_red_with_a_triple_flash() {
        let s = [
            (0, true),
            (100, false),
            (200, true),
            (300, false),
            (400, true),
            (500, false),
            (2000, true),
        ];
        plays(Pattern::Error, 2001, &s, &[(0, true)]);
    }

    #[test]
    fn reset_countdown_ticks_each_second_with_red_blinking() {
        let s = [(0, true), (100, false), (1000, true), (1100, false)];
        let a = [(0, true), (500, false), (1000, true), (1500, false)];
        plays(Pattern::ResetCountdown, 2000, &s, &a);
    }

    #[test]
    fn release_now_flickers_at_10_hz_with_red_on() {
        let s = [(0, true), (50, false), (100, true), (150, false)];
        plays(Pattern::ReleaseNow, 200, &s, &[(0, true)]);
    }

    #[test]
    fn every_pattern_is_told_apart_by_the_status_led_alone() {
        for a in Pattern::ALL {
            for b in Pattern::ALL {
                let same = a.track(Role::Status) == b.track(Role::Status);
                let both_steady_ok = matches!(
                    (a, b),
                    (Pattern::Confirmed, Pattern::Healthy) | (Pattern::Healthy, Pattern::Confirmed)
                );
                // Confirmed is Healthy's steady green for a few seconds, by design (WPS shows
                // success the same way); every other pair differs.
                assert!(
                    a == b || !same || both_steady_ok,
                    "{a:?} and {b:?} look alike"
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Pattern::ALL {
            assert_eq!(Pattern::from_name(p.name()), Some(p));
        }
        assert_eq!(Pattern::from_name("disco"), None);
        assert_eq!(Role::from_name("alert"), Some(Role::Alert));
        assert_eq!(Role::from_name("blue"), None);
    }

    #[test]
    fn showing_the_same_pattern_keeps_its_rhythm_and_a_new_one_restarts() {
        let pin = Mock::new(&[
            Transaction::set(State::High), // 0: booting on
            Transaction::set(State::Low),  // 500: off
            Transaction::set(State::High), // 700: pairing starts lit
            Transaction::set(State::Low),  // 825
        ]);
        let mut d = LedDriver::new(Some(Led::new(pin, false)), None, 0);
        assert_eq!(d.update(0).unwrap().next_change_ms, Some(500));
        d.show(Pattern::Booting, 300);
        // Unchanged pattern: nothing written, and still due at 500.
        let u = d.update(300).unwrap();
        assert!(u.changed.is_empty());
        assert_eq!(u.next_change_ms, Some(500));
        d.update(500).unwrap();
        d.show(Pattern::PairingOpen, 700);
        assert_eq!(d.update(700).unwrap().next_change_ms, Some(825));
        assert_eq!(d.update(825).unwrap().next_change_ms, Some(950));
        assert_eq!(d.lit(Role::Status), Some(false));
        assert_eq!(d.lit(Role::Alert), None);
        assert_eq!(d.roles().collect::<Vec<_>>(), vec![Role::Status]);
        let LedDriver { status, .. } = d;
        status.unwrap().into_pin().done();
    }

    #[test]
    fn a_late_update_lands_in_the_right_step() {
        // 2440 ms into setup-needed is 440 ms into the second cycle: the second flash, lit
        // until 2600.
        let pin = Mock::new(&[Transaction::set(State::High)]);
        let mut d = LedDriver::new(Some(Led::new(pin, false)), None, 0);
        d.show(Pattern::SetupNeeded, 0);
        assert_eq!(d.update(2440).unwrap().next_change_ms, Some(2600));
        let LedDriver { status, .. } = d;
        status.unwrap().into_pin().done();
    }

    #[test]
    fn level_at_merges_neighbouring_steps_of_one_level() {
        const T: Track = &[on(100), on(100), off(50)];
        assert_eq!(level_at(T, 0), (true, Some(200)));
        assert_eq!(level_at(T, 150), (true, Some(50)));
        assert_eq!(level_at(T, 220), (false, Some(30)));
        assert_eq!(level_at(STEADY_OFF, 123_456), (false, None));
    }

    #[test]
    fn a_pin_error_is_returned_and_the_write_retried() {
        use embedded_hal_mock::eh1::MockError;
        let err = MockError::Io(std::io::ErrorKind::NotConnected);
        let pin = Mock::new(&[
            Transaction::set(State::High).with_error(err),
            Transaction::set(State::High),
        ]);
        let mut d = LedDriver::new(Some(Led::new(pin, false)), None, 0);
        assert!(d.update(0).is_err());
        assert_eq!(
            d.update(10).unwrap().changed.as_slice(),
            &[(Role::Status, true)]
        );
        let LedDriver { status, .. } = d;
        status.unwrap().into_pin().done();
    }

    #[test]
    fn describe_gives_the_readme_wording() {
        assert_eq!(Pattern::Healthy.describe(), "on");
        assert_eq!(Pattern::PairingOpen.describe(), "on 125 ms, off 125 ms");
        assert_eq!(
            Pattern::Degraded.describe(),
            "on 2800 ms, off 200 ms; red LED on"
        );
    }

    /// The changes a driver makes playing `pattern` from `start` for `ms`.
    fn changes(pattern: Pattern, start: u64, ms: u64) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut t = 0;
        let mut level = None;
        while t < ms {
            let (on, until) = level_at(pattern.track(Role::Status), t);
            if level != Some(on) {
                out.push((start + t, on));
                level = Some(on);
            }
            match until {
                Some(u) => t += u,
                None => break,
            }
        }
        out
    }

    #[test]
    fn recognize_finds_every_blinking_pattern_from_any_phase() {
        for p in Pattern::ALL {
            if is_steady(p.track(Role::Status)) {
                assert_eq!(recognize(&changes(p, 0, 10_000), 40), None, "{p:?}");
                continue;
            }
            // Up to 60 ms of tolerance (what the QEMU tests allow) still tells them apart.
            for (skip, tolerance) in [(0, 0), (1, 40), (2, 60), (3, 60)] {
                let c = changes(p, 1000, 10_000);
                assert_eq!(
                    recognize(&c[skip..], tolerance),
                    Some(p),
                    "{p:?} from change {skip}"
                );
            }
        }
    }

    #[test]
    fn recognize_tolerates_jitter_but_not_another_rhythm() {
        // 4 Hz pairing blink seen with ±30 ms of scheduling jitter.
        let jittered: Vec<(u64, bool)> = changes(Pattern::PairingOpen, 0, 3000)
            .into_iter()
            .enumerate()
            .map(|(i, (t, on))| (t + if i % 2 == 0 { 30 } else { 0 }, on))
            .collect();
        assert_eq!(recognize(&jittered, 40), Some(Pattern::PairingOpen));
        // Booting (500/500) is not pairing (125/125), and too little is nothing.
        assert_eq!(
            recognize(&changes(Pattern::Booting, 0, 5000), 40),
            Some(Pattern::Booting)
        );
        assert_eq!(recognize(&[(0, true), (125, false)], 40), None);
        // A full double-flash cycle is not a pairing blink, though its flashes are short too.
        assert_eq!(
            recognize(&changes(Pattern::SetupNeeded, 0, 2700), 40),
            Some(Pattern::SetupNeeded)
        );
    }

    #[test]
    fn the_readme_gives_each_pattern_its_exact_timing() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        for p in Pattern::ALL {
            let row = format!("| `{}` | {} |", p.name(), p.describe());
            assert!(
                readme.contains(&row),
                "{} lacks the row {row}",
                path.display()
            );
        }
    }
}
