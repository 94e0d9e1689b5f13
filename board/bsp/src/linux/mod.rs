//! The Linux backend: board lines through the GPIO character device (`/dev/gpiochipN`),
//! found by chip label and requested with the consumer name "cairn"; the button through line
//! edge events, so waiting for it costs no CPU; and the qemu-virt board's gpio-sim chip.
//!
//! Every line is requested without the kernel's active-low flag: `Led` and `Button` handle
//! polarity, once, for every backend.

pub mod gpiosim;

use crate::board::{GpioLine, Pull};
use crate::clock::Clock;
use crate::pattern::Led;
use embedded_hal::digital::{ErrorType, InputPin};
use gpio_cdev::{Chip, EventRequestFlags, LineEventHandle, LineRequestFlags};
use std::os::fd::AsFd;

/// An LED's output line (linux-embedded-hal's character-device pin).
pub use linux_embedded_hal::CdevPin;

/// The consumer name on every line the firmware requests (shown by `gpioinfo`).
pub const CONSUMER: &str = "cairn";

/// `GPIOHANDLE_REQUEST_BIAS_PULL_UP` / `_DOWN` of the kernel's v1 GPIO ABI (Linux ≥ 5.5);
/// gpio-cdev does not name them.
const BIAS_PULL_UP: u32 = 1 << 5;
const BIAS_PULL_DOWN: u32 = 1 << 6;

/// A board line could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// No GPIO chip has the label the board file names.
    #[error("no GPIO chip labelled '{label}' (chips here: {present})")]
    NoChip {
        /// The label looked for.
        label: String,
        /// The chips there are, as `gpiochipN 'label'`.
        present: String,
    },
    /// The chip refused the line (missing, or already in use by a kernel driver).
    #[error("GPIO chip '{label}' line {line}: {source}")]
    Line {
        /// The chip's label.
        label: String,
        /// The line offset.
        line: u32,
        /// What the kernel said.
        source: gpio_cdev::Error,
    },
}

/// The system's boot-time clock (`CLOCK_BOOTTIME`), in ms since the kernel started: the time
/// base of the front panel's LED reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now_ms(&self) -> u64 {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
            Ok(ts) => {
                u64::try_from(ts.tv_sec()).unwrap_or(0) * 1000
                    + u64::try_from(ts.tv_nsec()).unwrap_or(0) / 1_000_000
            }
            // Cannot happen on Linux ≥ 2.6.39; a frozen clock would only stall the patterns.
            Err(_) => 0,
        }
    }
}

/// Opens the chip with this label.
pub fn find_chip(label: &str) -> Result<Chip, LineError> {
    let mut present = Vec::new();
    for chip in gpio_cdev::chips().into_iter().flatten().flatten() {
        if chip.label() == label {
            return Ok(chip);
        }
        present.push(format!("{} '{}'", chip.name(), chip.label()));
    }
    Err(LineError::NoChip {
        label: label.to_string(),
        present: if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        },
    })
}

fn line_err(l: &GpioLine) -> impl FnOnce(gpio_cdev::Error) -> LineError + '_ {
    move |source| LineError::Line {
        label: l.chip.clone(),
        line: l.line,
        source,
    }
}

/// Requests an LED's line as an output, dark.
pub fn request_led(l: &GpioLine) -> Result<Led<CdevPin>, LineError> {
    let mut chip = find_chip(&l.chip)?;
    let line = chip.get_line(l.line).map_err(line_err(l))?;
    let dark = u8::from(l.active_low);
    let handle = line
        .request(LineRequestFlags::OUTPUT, dark, CONSUMER)
        .map_err(line_err(l))?;
    let pin = CdevPin::new(handle).map_err(line_err(l))?;
    Ok(Led::new(pin, l.active_low))
}

/// The button's line, requested for edge events on both edges, with the board's bias.
#[derive(Debug)]
pub struct EdgePin {
    events: LineEventHandle,
}

/// Reading the button's line failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the button line: {0}")]
pub struct EdgePinError(#[from] gpio_cdev::Error);

impl embedded_hal::digital::Error for EdgePinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl ErrorType for EdgePin {
    type Error = EdgePinError;
}

impl InputPin for EdgePin {
    fn is_high(&mut self) -> Result<bool, EdgePinError> {
        Ok(self.events.get_value()? != 0)
    }

    fn is_low(&mut self) -> Result<bool, EdgePinError> {
        Ok(self.events.get_value()? == 0)
    }
}

impl EdgePin {
    /// Waits up to `timeout_ms` (`None`: for ever) for an edge; returns whether one came.
    /// The edge is consumed: the caller reads the level itself, which also covers edges that
    /// arrived in a burst.
    pub fn wait_edge(&mut self, timeout_ms: Option<u64>) -> std::io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = match timeout_ms {
            // Longer waits are cut to the largest poll(2) timeout; the caller loops.
            Some(ms) => {
                PollTimeout::try_from(ms.min(i32::MAX as u64) as i32).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let ready = {
            let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if ready {
            self.events
                .get_event()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(ready)
    }
}

/// Requests the button's line for edge events.
pub fn request_button(l: &GpioLine) -> Result<EdgePin, LineError> {
    let mut chip = find_chip(&l.chip)?;
    let line = chip.get_line(l.line).map_err(line_err(l))?;
    let bias = match l.pull {
        Pull::None => 0,
        Pull::Up => BIAS_PULL_UP,
        Pull::Down => BIAS_PULL_DOWN,
    };
    let flags = LineRequestFlags::INPUT | LineRequestFlags::from_bits_retain(bias);
    let events = line
        .events(flags, EventRequestFlags::BOTH_EDGES, CONSUMER)
        .map_err(line_err(l))?;
    Ok(EdgePin { events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chip_is_named_with_the_chips_there_are() {
        let line = GpioLine {
            chip: "no-such-chip".into(),
            line: 3,
            active_low: false,
            pull: Pull::Up,
        };
        let e = request_led(&line).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.starts_with("no GPIO chip labelled 'no-such-chip' (chips here: "),
            "{e}"
        );
        let e = request_button(&line).map(|_| ()).unwrap_err().to_string();
        assert!(e.starts_with("no GPIO chip labelled 'no-such-chip'"), "{e}");
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = BootClock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(BootClock.now_ms() > a);
    }
}
