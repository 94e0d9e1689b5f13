//! The board's power button: a GPIO line read through the character device with edge events
//! (no polling). A press asks PID 1 for a clean poweroff, as SIGUSR2 would.

use cairn_bsp::board::GpioLine;
use gpio_cdev::{Chip, EventRequestFlags, LineRequestFlags};

/// Arms the button (the line is requested before this returns, so a press right after boot is
/// not lost), then waits for presses on a small thread. Logs and gives up if the line is missing.
pub fn watch(line: GpioLine) {
    let events = match request(&line) {
        Ok(ev) => ev,
        Err(e) => {
            super::log!(
                "error: power button ({} line {}): {e:#}; poweroff by button is unavailable",
                line.chip,
                line.line
            );
            return;
        }
    };
    super::log!("board: power button on {} line {}", line.chip, line.line);
    let spawned = super::helpers::spawn("power-button", 64 * 1024, move || {
        for event in events {
            if let Err(e) = event {
                super::log!("error: power button: {e}");
                return;
            }
            super::log!("power button pressed");
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), nix::sys::signal::SIGUSR2);
        }
    });
    if let Err(e) = spawned {
        super::log!("error: power button thread: {e}");
    }
}

/// Finds a GPIO chip by its label (`/dev/gpiochipN` numbers change from boot to boot).
pub fn find_chip(label: &str) -> anyhow::Result<Chip> {
    for chip in gpio_cdev::chips()? {
        let chip = chip?;
        if chip.label() == label {
            return Ok(chip);
        }
    }
    anyhow::bail!("no GPIO chip labelled '{label}'")
}

fn request(line: &GpioLine) -> anyhow::Result<gpio_cdev::LineEventHandle> {
    let mut chip = find_chip(&line.chip)?;
    let edge = if line.active_low {
        EventRequestFlags::FALLING_EDGE
    } else {
        EventRequestFlags::RISING_EDGE
    };
    Ok(chip
        .get_line(line.line)?
        .events(LineRequestFlags::INPUT, edge, "cairn")?)
}
