//! Board support for Cairn: what a board is (its definition file) and, generic over
//! `embedded-hal` traits, what its LEDs and button mean: LED patterns, button gestures, the
//! pairing window, and the virtual board's front-panel protocol; and the MBR partition table
//! the boards boot from (`mbr`), shared by the image builder, `cairn init` and the QEMU tests.
//! Nothing here needs Linux except the `linux` module (cargo feature `linux`): GPIO
//! character-device pins, line events and the gpio-sim chip of the qemu-virt board.

pub mod board;
pub mod button;
pub mod clock;
pub mod mbr;
pub mod pairing;
pub mod panel;
pub mod pattern;
pub mod ui;

#[cfg(feature = "linux")]
pub mod linux;

pub use board::{Board, BoardError, GpioLine, Pull};
pub use button::{Button, ButtonEvent, Gestures, Timing};
pub use clock::{Clock, ManualClock, StdClock};
pub use pairing::{Completion, PairingError, PairingWindow, WindowStatus};
pub use pattern::{Led, LedDriver, Pattern, Role};
pub use ui::{Action, Health, SharedUi, Ui, UiConfig};

/// The message of the panic `f` raises (tests of documented panics, instead of
/// `#[should_panic]`, so the test says which panic it expects and fails on any other).
#[cfg(test)]
pub(crate) fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
