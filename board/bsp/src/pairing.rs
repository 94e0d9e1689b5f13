//! The pairing window: the physical proof that whoever claims the device, or pairs it with a
//! friend's plug, stands next to it.
//!
//! A short press opens the window for `duration` (120 s unless the board or the kernel command
//! line says otherwise). While it is open exactly one claim *or* one peer pairing may complete;
//! completing closes it. Pressing again while it is open changes nothing (presses do not
//! stack: the window still closes when the first press said). A claim refused because two
//! browsers waited for the press closes the window too, so that the press the person is asked
//! for next opens a new one. The setup UI and the network
//! consume this through `SharedUi`; this type is the plain state machine.

/// What completed in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The owner claimed the device from the setup page.
    Claim,
    /// The device paired with a friend's plug.
    Pairing,
}

/// Why a claim or pairing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// No window is open: nobody pressed the button, it timed out, or it was used.
    #[error("the pairing window is closed: press the device's button, then try again within {window_s} s")]
    Closed {
        /// The window's length, to tell the person how long they have.
        window_s: u64,
    },
}

/// Result of a press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new window opened; it closes at `closes_at_ms`.
    New {
        /// The window's number (counts from 1 since boot).
        id: u64,
        /// When it closes unless used first.
        closes_at_ms: u64,
    },
    /// A window was already open; it still closes at `closes_at_ms`.
    AlreadyOpen {
        /// The open window's number.
        id: u64,
        /// When it closes (unchanged by this press).
        closes_at_ms: u64,
    },
}

/// The window's state as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStatus {
    /// Closed.
    Closed,
    /// Open for `remaining_ms` more.
    Open {
        /// The window's number.
        id: u64,
        /// Time left before it closes by itself.
        remaining_ms: u64,
    },
}

/// How a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Nothing completed before the timeout.
    Expired {
        /// The window's number.
        id: u64,
    },
    /// A claim in it was refused (more than one browser waited for the press): closed early,
    /// nothing completed.
    Refused {
        /// The window's number.
        id: u64,
    },
    /// A claim or pairing used it.
    Completed {
        /// The window's number.
        id: u64,
        /// What completed.
        what: Completion,
    },
}

/// The pairing window state machine.
#[derive(Debug, Clone)]
pub struct PairingWindow {
    duration_ms: u64,
    /// The open window: its number and when it closes.
    open: Option<(u64, u64)>,
    last_id: u64,
}

impl PairingWindow {
    /// A closed window that will stay open `duration_ms` once opened.
    pub fn new(duration_ms: u64) -> Self {
        assert!(
            duration_ms > 0,
            "a pairing window must stay open for some time"
        );
        Self {
            duration_ms,
            open: None,
            last_id: 0,
        }
    }

    /// How long an opened window stays open.
    pub fn duration_ms(&self) -> u64 {
        self.duration_ms
    }

    /// A button press: opens a window unless one is open.
    pub fn press(&mut self, now_ms: u64) -> Opened {
        self.expire(now_ms);
        if let Some((id, closes_at_ms)) = self.open {
            return Opened::AlreadyOpen { id, closes_at_ms };
        }
        self.last_id += 1;
        let closes_at_ms = now_ms + self.duration_ms;
        self.open = Some((self.last_id, closes_at_ms));
        Opened::New {
            id: self.last_id,
            closes_at_ms,
        }
    }

    /// Closes the window if its time is up; returns the closing if it happened now.
    pub fn expire(&mut self, now_ms: u64) -> Option<Closing> {
        match self.open {
            Some((id, closes_at_ms)) if now_ms >= closes_at_ms => {
                self.open = None;
                Some(Closing::Expired { id })
            }
            _ => None,
        }
    }

    /// The window's state at `now_ms`.
    pub fn status(&mut self, now_ms: u64) -> WindowStatus {
        self.expire(now_ms);
        match self.open {
            Some((id, closes_at_ms)) => WindowStatus::Open {
                id,
                remaining_ms: closes_at_ms - now_ms,
            },
            None => WindowStatus::Closed,
        }
    }

    /// Completes a claim or pairing: succeeds only while a window is open, and closes it, so
    /// of several attempts in one window exactly one succeeds.
    pub fn complete(&mut self, what: Completion, now_ms: u64) -> Result<Closing, PairingError> {
        self.expire(now_ms);
        match self.open.take() {
            Some((id, _)) => Ok(Closing::Completed { id, what }),
            None => Err(PairingError::Closed {
                window_s: self.duration_ms.div_ceil(1000),
            }),
        }
    }

    /// Completes a claim or pairing only in window `id`: a claim granted for one press must not
    /// use the window a later press opened.
    pub fn complete_window(
        &mut self,
        id: u64,
        what: Completion,
        now_ms: u64,
    ) -> Result<Closing, PairingError> {
        self.expire(now_ms);
        match self.open {
            Some((open_id, _)) if open_id == id => self.complete(what, now_ms),
            _ => Err(PairingError::Closed {
                window_s: self.duration_ms.div_ceil(1000),
            }),
        }
    }

    /// Closes window `id` without a completion: the claim it was opened for was refused (more
    /// than one browser waited for the press). Left open, it would swallow the next press
    /// (presses do not stack) until its time ran out, while the page asks the person to press
    /// again. Refused, as `complete_window` is, when `id` is not the open window.
    pub fn refuse_window(&mut self, id: u64, now_ms: u64) -> Result<Closing, PairingError> {
        self.expire(now_ms);
        match self.open {
            Some((open_id, _)) if open_id == id => {
                self.open = None;
                Ok(Closing::Refused { id })
            }
            _ => Err(PairingError::Closed {
                window_s: self.duration_ms.div_ceil(1000),
            }),
        }
    }

    /// The number of the last window opened since boot (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// When the open window closes by itself (clock ms).
    pub fn closes_at_ms(&self) -> Option<u64> {
        self.open.map(|(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_completes_only_the_window_it_names() {
        let mut w = PairingWindow::new(1000);
        assert_eq!(w.last_id(), 0);
        assert_eq!(
            w.complete_window(1, Completion::Claim, 0),
            Err(PairingError::Closed { window_s: 1 }),
            "no press, no claim"
        );
        w.press(0);
        assert_eq!(w.last_id(), 1);
        w.expire(1000);
        w.press(2000);
        assert_eq!(w.last_id(), 2);
        assert!(
            w.complete_window(1, Completion::Claim, 2100).is_err(),
            "the first window has closed"
        );
        assert_eq!(
            w.complete_window(2, Completion::Claim, 2100),
            Ok(Closing::Completed {
                id: 2,
                what: Completion::Claim
            })
        );
        assert!(
            w.complete_window(2, Completion::Claim, 2200).is_err(),
            "a window completes once"
        );
    }

    #[test]
    fn a_refused_claim_closes_its_window_and_the_next_press_opens_another() {
        let mut w = PairingWindow::new(120_000);
        assert!(w.refuse_window(1, 0).is_err(), "no window is open");
        w.press(0);
        assert!(w.refuse_window(2, 1000).is_err(), "another window");
        assert_eq!(w.refuse_window(1, 1000), Ok(Closing::Refused { id: 1 }));
        assert_eq!(w.status(1000), WindowStatus::Closed);
        assert!(w.complete_window(1, Completion::Claim, 1000).is_err());
        assert!(matches!(w.press(2000), Opened::New { id: 2, .. }));
        assert!(w.complete_window(2, Completion::Claim, 2100).is_ok());
    }

    #[test]
    fn a_press_opens_the_window_for_its_duration() {
        let mut w = PairingWindow::new(120_000);
        assert_eq!(w.status(0), WindowStatus::Closed);
        assert_eq!(
            w.press(1000),
            Opened::New {
                id: 1,
                closes_at_ms: 121_000
            }
        );
        assert_eq!(
            w.status(120_999),
            WindowStatus::Open {
                id: 1,
                remaining_ms: 1
            }
        );
        assert_eq!(w.status(121_000), WindowStatus::Closed);
    }

    #[test]
    fn expiry_is_reported_once() {
        let mut w = PairingWindow::new(5000);
        w.press(0);
        assert_eq!(w.expire(4999), None);
        assert_eq!(w.expire(5000), Some(Closing::Expired { id: 1 }));
        assert_eq!(w.expire(5001), None);
        assert_eq!(w.closes_at_ms(), None);
    }

    #[test]
    fn presses_do_not_stack() {
        let mut w = PairingWindow::new(120_000);
        w.press(0);
        assert_eq!(
            w.press(60_000),
            Opened::AlreadyOpen {
                id: 1,
                closes_at_ms: 120_000
            }
        );
        assert_eq!(w.status(120_000), WindowStatus::Closed);
    }

    #[test]
    fn exactly_one_completion_per_window_and_it_closes_the_window() {
        let mut w = PairingWindow::new(120_000);
        w.press(0);
        assert_eq!(
            w.complete(Completion::Pairing, 10_000),
            Ok(Closing::Completed {
                id: 1,
                what: Completion::Pairing
            })
        );
        assert_eq!(w.status(10_000), WindowStatus::Closed);
        assert_eq!(
            w.complete(Completion::Claim, 10_001),
            Err(PairingError::Closed { window_s: 120 })
        );
        // The next press opens a new window, with a new number.
        assert!(matches!(w.press(20_000), Opened::New { id: 2, .. }));
        assert!(w.complete(Completion::Claim, 20_001).is_ok());
    }

    #[test]
    fn no_completion_without_a_press_or_after_the_timeout() {
        let mut w = PairingWindow::new(120_000);
        let e = w.complete(Completion::Claim, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the pairing window is closed: press the device's button, then try again within 120 s"
        );
        w.press(0);
        assert!(w.complete(Completion::Claim, 120_000).is_err());
        w.press(200_000);
        assert!(w.complete(Completion::Claim, 319_999).is_ok());
    }

    #[test]
    fn a_zero_window_is_refused() {
        let message = crate::panic_message(|| {
            PairingWindow::new(0);
        });
        assert!(message.contains("must stay open"), "{message}");
    }
}
