//! The claim with the button: which browser, if any, a press of the device's button hands the
//! setup to. A browser on the "press the button" page long-polls; while it does (or did less than
//! [`WAITER_GRACE`] ago) it is a waiter. A waiter is eligible only for pairing windows opened
//! after it registered. When a new window appears: exactly one eligible waiter gets it (the
//! server claims the window for it, then grants it a setup token); two or more, and every waiter
//! is refused (someone else may be trying to take the device: as WPS does, nobody wins an
//! overlap); none, and nothing happens.
//!
//! This module only decides; the server asks PID 1 (`board`, `claim`). Time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::auth::{random_token, tokens_equal};
use crate::device::Board;

/// What a waiter's poll answers once decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This browser may set the device up with this token.
    Granted(String),
    /// Not this time, and why.
    Refused(String),
}

/// The message of an overlap.
pub const OVERLAP: &str =
    "more than one browser is trying to set up this device: close the others and press again";

struct Waiter {
    /// The last window opened before it registered: only later ones are for it.
    after_window: u64,
    /// Polls open now.
    open_polls: u32,
    /// When the last poll ended.
    last_seen: Instant,
    outcome: Option<Outcome>,
}

/// The setup token of the browser that won a window.
struct Setup {
    token: String,
    csrf: String,
    expires: Instant,
}

/// What to do about the board's latest state.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// No new window, or nobody eligible for it.
    Nothing,
    /// Claim `window` for `waiter`, then report with [`Claims::claimed`] or
    /// [`Claims::claim_failed`].
    Claim {
        /// The window's number, as `board` reported it.
        window: u64,
        /// The one eligible waiter's id.
        waiter: String,
    },
    /// Every waiter was refused.
    Refused,
}

/// Waiters, the last window looked at, and the setup token.
#[derive(Default)]
pub struct Claims {
    waiters: HashMap<String, Waiter>,
    /// The highest window number already decided.
    decided: u64,
    setup: Option<Setup>,
}

/// Too many browsers waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Claims {
    /// A new waiter, for windows after `last_window`; returns its id.
    pub fn register(&mut self, last_window: u64, now: Instant) -> Result<String, Full> {
        self.prune(now);
        if self.waiters.len() >= WAITERS_MAX {
            return Err(Full);
        }
        let id = random_token();
        self.waiters.insert(
            id.clone(),
            Waiter {
                after_window: last_window,
                open_polls: 0,
                last_seen: now,
                outcome: None,
            },
        );
        Ok(id)
    }

    /// Whether `id` is a waiter now (a forgotten one must register again).
    pub fn knows(&mut self, id: &str, now: Instant) -> bool {
        self.prune(now);
        self.waiters.contains_key(id)
    }

    /// A poll of `id` opens.
    pub fn poll_opened(&mut self, id: &str) {
        if let Some(w) = self.waiters.get_mut(id) {
            w.open_polls += 1;
        }
    }

    /// A poll of `id` ends (answered or dropped).
    pub fn poll_closed(&mut self, id: &str, now: Instant) {
        if let Some(w) = self.waiters.get_mut(id) {
            w.open_polls = w.open_polls.saturating_sub(1);
            w.last_seen = now;
        }
    }

    /// The waiter's outcome, if decided; the waiter is then done.
    pub fn take_outcome(&mut self, id: &str) -> Option<Outcome> {
        let outcome = self.waiters.get(id)?.outcome.clone()?;
        self.waiters.remove(id);
        Some(outcome)
    }

    /// Whether anyone waits (the server watches the board only then).
    pub fn anyone_waiting(&mut self, now: Instant) -> bool {
        self.prune(now);
        self.waiters.values().any(|w| w.outcome.is_none())
    }

    /// Decides about the board's state.
    pub fn on_board(&mut self, board: &Board, now: Instant) -> Action {
        self.prune(now);
        if board.last_window <= self.decided {
            return Action::Nothing;
        }
        self.decided = board.last_window;
        // The window closed before we saw it: too late for anyone.
        let Some(window) = board.window.filter(|w| w.id == board.last_window) else {
            return Action::Nothing;
        };
        let mut eligible = self
            .waiters
            .iter()
            .filter(|(_, w)| w.outcome.is_none() && w.after_window < window.id)
            .map(|(id, _)| id.clone());
        match (eligible.next(), eligible.next()) {
            (None, _) => Action::Nothing,
            (Some(waiter), None) => Action::Claim {
                window: window.id,
                waiter,
            },
            (Some(_), Some(_)) => {
                for w in self.waiters.values_mut().filter(|w| w.outcome.is_none()) {
                    w.outcome = Some(Outcome::Refused(OVERLAP.to_string()));
                }
                Action::Refused
            }
        }
    }

    /// PID 1 accepted the claim for `waiter`: it gets a setup token (replacing any earlier one:
    /// the latest press wins).
    pub fn claimed(&mut self, waiter: &str, now: Instant) {
        let token = random_token();
        self.setup = Some(Setup {
            token: token.clone(),
            csrf: random_token(),
            expires: now + SETUP_TOKEN_LIFETIME,
        });
        if let Some(w) = self.waiters.get_mut(waiter) {
            w.outcome = Some(Outcome::Granted(token));
        }
    }

    /// PID 1 refused the claim for `waiter`.
    pub fn claim_failed(&mut self, waiter: &str, why: &str) {
        if let Some(w) = self.waiters.get_mut(waiter) {
            w.outcome = Some(Outcome::Refused(format!(
                "the device did not accept the claim: {why}; press again"
            )));
        }
    }

    /// The setup form's CSRF token if `token` is the live setup token.
    pub fn setup_csrf(&self, token: &str, now: Instant) -> Option<String> {
        let s = self.setup.as_ref()?;
        (now < s.expires && tokens_equal(&s.token, token)).then(|| s.csrf.clone())
    }

    /// Setup is done: the token is spent and nobody waits any more.
    pub fn finish(&mut self) {
        self.setup = None;
        self.waiters.clear();
    }

    /// Forgets waiters that stopped polling.
    fn prune(&mut self, now: Instant) {
        self.waiters
            .retain(|_, w| w.open_polls > 0 || now.duration_since(w.last_seen) < WAITER_GRACE);
        if self.setup.as_ref().is_some_and(|s| now >= s.expires) {
            self.setup = None;
        }
    }
}

/// Most browsers waiting at once.
pub const WAITERS_MAX: usize = 16;
/// A browser still counts as waiting this long after its last poll ended: a phone's browser
/// or a loaded computer may hold a page's next poll for seconds, and a browser forgotten in
/// that gap registers again too late for the press it was waiting for.
pub const WAITER_GRACE: Duration = Duration::from_secs(10);
/// How long the winner may take to fill in the setup page.
pub const SETUP_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Window;

    fn board(last_window: u64, open: bool) -> Board {
        Board {
            claimed: false,
            name: None,
            health: "setup-needed".into(),
            window: open.then_some(Window {
                id: last_window,
                remaining_ms: 100_000,
            }),
            last_window,
            pairing: Default::default(),
        }
    }

    #[test]
    fn one_waiter_gets_the_window_then_a_token() {
        let t = Instant::now();
        let mut c = Claims::default();
        let id = c.register(0, t).unwrap();
        c.poll_opened(&id);
        assert_eq!(c.on_board(&board(0, false), t), Action::Nothing);
        let action = c.on_board(&board(1, true), t);
        assert_eq!(
            action,
            Action::Claim {
                window: 1,
                waiter: id.clone()
            }
        );
        assert_eq!(
            c.on_board(&board(1, true), t),
            Action::Nothing,
            "decided once"
        );
        c.claimed(&id, t);
        let Some(Outcome::Granted(token)) = c.take_outcome(&id) else {
            panic!("granted")
        };
        assert!(c.setup_csrf(&token, t).is_some());
        assert!(c.setup_csrf("nope", t).is_none());
        assert!(c.setup_csrf(&token, t + SETUP_TOKEN_LIFETIME).is_none());
        assert!(!c.knows(&id, t), "done after its outcome");
    }

    #[test]
    fn two_waiters_are_both_refused() {
        let t = Instant::now();
        let mut c = Claims::default();
        let a = c.register(0, t).unwrap();
        let b = c.register(0, t).unwrap();
        assert_eq!(c.on_board(&board(1, true), t), Action::Refused);
        for id in [a, b] {
            assert_eq!(c.take_outcome(&id), Some(Outcome::Refused(OVERLAP.into())));
        }
        assert!(c.setup.is_none());
    }

    #[test]
    fn a_waiter_is_eligible_only_for_later_windows() {
        let t = Instant::now();
        let mut c = Claims::default();
        let late = c.register(3, t).unwrap();
        assert_eq!(c.on_board(&board(3, true), t), Action::Nothing);
        assert!(c.take_outcome(&late).is_none());
        assert_eq!(
            c.on_board(&board(4, true), t),
            Action::Claim {
                window: 4,
                waiter: late
            }
        );
    }

    #[test]
    fn an_early_and_a_late_waiter_do_not_overlap() {
        let t = Instant::now();
        let mut c = Claims::default();
        let early = c.register(0, t).unwrap();
        let late = c.register(1, t).unwrap();
        assert_eq!(
            c.on_board(&board(1, true), t),
            Action::Claim {
                window: 1,
                waiter: early
            }
        );
        assert!(c.take_outcome(&late).is_none());
    }

    #[test]
    fn a_window_seen_closed_is_nobodys() {
        let t = Instant::now();
        let mut c = Claims::default();
        let id = c.register(0, t).unwrap();
        assert_eq!(c.on_board(&board(2, false), t), Action::Nothing);
        assert!(c.take_outcome(&id).is_none());
    }

    #[test]
    fn waiters_go_ten_seconds_after_their_last_poll() {
        let t = Instant::now();
        let mut c = Claims::default();
        let id = c.register(0, t).unwrap();
        c.poll_opened(&id);
        assert!(c.anyone_waiting(t + Duration::from_secs(60)), "poll open");
        c.poll_closed(&id, t + Duration::from_secs(60));
        // A page whose next poll a busy browser held for 9 s is still waiting.
        assert!(c.knows(&id, t + Duration::from_secs(69)));
        assert!(!c.anyone_waiting(t + Duration::from_secs(70)));
        assert!(!c.knows(&id, t + Duration::from_secs(70)));
    }

    #[test]
    fn the_waiting_room_is_bounded() {
        let t = Instant::now();
        let mut c = Claims::default();
        for _ in 0..WAITERS_MAX {
            c.register(0, t).unwrap();
        }
        assert_eq!(c.register(0, t), Err(Full));
        assert!(
            c.register(0, t + WAITER_GRACE).is_ok(),
            "the silent ones left"
        );
    }

    #[test]
    fn a_refused_claim_says_why() {
        let t = Instant::now();
        let mut c = Claims::default();
        let id = c.register(0, t).unwrap();
        let Action::Claim { waiter, .. } = c.on_board(&board(1, true), t) else {
            panic!("claim")
        };
        c.claim_failed(&waiter, "window 1 is not open");
        let Some(Outcome::Refused(m)) = c.take_outcome(&id) else {
            panic!("refused")
        };
        assert!(m.contains("window 1 is not open"));
    }
}
