//! Time for the LED patterns, button gestures and pairing window: milliseconds on a monotonic
//! clock, read through a trait so host tests drive time by hand and stay deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonic clock in milliseconds. On the device it counts from boot (the front panel reports
/// LED changes in this time base); only differences matter to the state machines.
pub trait Clock: Send + Sync {
    /// Milliseconds since an arbitrary fixed point; never decreases.
    fn now_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The process's monotonic clock (`std::time::Instant`), counted from when this value was made.
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    start: std::time::Instant,
}

impl StdClock {
    /// A clock reading 0 now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told: for tests and simulations of code that consumes the
/// pairing window or the LED patterns.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock; it must not go backwards.
    pub fn set(&self, now_ms: u64) {
        // Checked before the store: a refused step leaves the clock where it was.
        let old = self.now_ms.load(Ordering::SeqCst);
        assert!(
            now_ms >= old,
            "a monotonic clock cannot go back ({old} → {now_ms})"
        );
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_ms(), 5);
        c.advance(10);
        assert_eq!(c.now_ms(), 15);
        c.set(20);
        assert_eq!(c.now_ms(), 20);
    }

    #[test]
    fn manual_clock_refuses_to_go_back() {
        let c = ManualClock::new(5);
        let message = crate::panic_message(|| c.set(4));
        assert!(message.contains("cannot go back (5 → 4)"), "{message}");
        assert_eq!(c.now_ms(), 5);
    }

    #[test]
    fn std_clock_does_not_go_back() {
        let c = StdClock::new();
        let a = c.now_ms();
        let b = c.now_ms();
        assert!(b >= a);
    }
}
