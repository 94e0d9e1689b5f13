//! The virtual board's front panel: a line protocol on the virtio-serial port `cairn.panel`,
//! by which a test or a person presses the qemu-virt board's button and watches its LEDs.
//!
//! Host → guest: `button down`, `button up`, `leds` (ask for the state).
//! Guest → host: `led NAME on|off MS` on every change (MS: milliseconds since boot),
//! `leds NAME=on|off …` in answer to `leds`, and `pattern NAME MS` when the LEDs start a new
//! pattern (so a person or test need not infer it from the blinking).
//!
//! Pure codec: parsing and formatting, no I/O. Lines are at most `MAX_LINE` bytes.

use std::fmt;

/// Longest line either side sends or accepts, in bytes (bounds the reader's buffer).
pub const MAX_LINE: usize = 256;
/// Most LEDs a `leds` answer may list.
pub const MAX_LEDS: usize = 8;
/// Longest LED or pattern name.
pub const MAX_NAME: usize = 32;

/// A message from the host to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToGuest {
    /// Press the button (and keep it down).
    ButtonDown,
    /// Release the button.
    ButtonUp,
    /// Ask for every LED's state.
    Leds,
}

/// A message from the device to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHost {
    /// An LED changed.
    Led {
        /// The LED's role name (`status`, `alert`).
        name: String,
        /// Lit or dark.
        on: bool,
        /// When, in milliseconds since boot.
        ms: u64,
    },
    /// Every LED's state, in answer to `leds`.
    Leds(Vec<(String, bool)>),
    /// The LEDs started showing a pattern.
    Pattern {
        /// The pattern's name (`setup-needed`, …).
        name: String,
        /// When, in milliseconds since boot.
        ms: u64,
    },
}

/// A line that is not part of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("front panel: bad line {line:?}: {reason}")]
pub struct PanelError {
    /// The offending line (cut to 64 characters).
    pub line: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(line: &str, reason: impl Into<String>) -> PanelError {
    PanelError {
        line: line.chars().take(64).collect(),
        reason: reason.into(),
    }
}

/// Strips the line ending and checks the length.
fn words(line: &str) -> Result<Vec<&str>, PanelError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(bad(line, format!("longer than {MAX_LINE} bytes")));
    }
    let w: Vec<&str> = line.split_ascii_whitespace().collect();
    if w.is_empty() {
        return Err(bad(line, "empty line"));
    }
    Ok(w)
}

fn name<'a>(line: &str, s: &'a str) -> Result<&'a str, PanelError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(s)
    } else {
        Err(bad(
            line,
            format!("{s:?} is not a name (a-z, 0-9, - and _, at most {MAX_NAME})"),
        ))
    }
}

fn state(line: &str, s: &str) -> Result<bool, PanelError> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(bad(line, format!("state {s:?} is neither on nor off"))),
    }
}

fn millis(line: &str, s: &str) -> Result<u64, PanelError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            line,
            format!("time {s:?} is not a number of milliseconds"),
        ));
    }
    s.parse()
        .map_err(|_| bad(line, format!("time {s:?} is out of range")))
}

impl ToGuest {
    /// Parses one line from the host.
    pub fn parse(line: &str) -> Result<ToGuest, PanelError> {
        match words(line)?.as_slice() {
            ["button", "down"] => Ok(ToGuest::ButtonDown),
            ["button", "up"] => Ok(ToGuest::ButtonUp),
            ["leds"] => Ok(ToGuest::Leds),
            ["button", ..] => Err(bad(line, "expected `button down` or `button up`")),
            ["leds", ..] => Err(bad(line, "`leds` takes no arguments")),
            [cmd, ..] => Err(bad(line, format!("unknown command {cmd:?}"))),
            [] => Err(bad(line, "empty line")),
        }
    }
}

impl fmt::Display for ToGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToGuest::ButtonDown => "button down",
            ToGuest::ButtonUp => "button up",
            ToGuest::Leds => "leds",
        })
    }
}

impl ToHost {
    /// Parses one line from the device.
    pub fn parse(line: &str) -> Result<ToHost, PanelError> {
        match words(line)?.as_slice() {
            ["led", n, s, ms] => Ok(ToHost::Led {
                name: name(line, n)?.to_string(),
                on: state(line, s)?,
                ms: millis(line, ms)?,
            }),
            ["led", ..] => Err(bad(line, "expected `led NAME on|off MS`")),
            ["pattern", n, ms] => Ok(ToHost::Pattern {
                name: name(line, n)?.to_string(),
                ms: millis(line, ms)?,
            }),
            ["pattern", ..] => Err(bad(line, "expected `pattern NAME MS`")),
            ["leds", rest @ ..] => {
                if rest.len() > MAX_LEDS {
                    return Err(bad(line, format!("more than {MAX_LEDS} LEDs")));
                }
                let mut leds: Vec<(String, bool)> = Vec::with_capacity(rest.len());
                for item in rest {
                    let (n, s) = item
                        .split_once('=')
                        .ok_or_else(|| bad(line, format!("{item:?} is not NAME=on|off")))?;
                    let n = name(line, n)?;
                    if leds.iter().any(|(m, _)| m == n) {
                        return Err(bad(line, format!("LED {n:?} listed twice")));
                    }
                    leds.push((n.to_string(), state(line, s)?));
                }
                Ok(ToHost::Leds(leds))
            }
            [cmd, ..] => Err(bad(line, format!("unknown message {cmd:?}"))),
            [] => Err(bad(line, "empty line")),
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

impl fmt::Display for ToHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToHost::Led { name, on, ms } => write!(f, "led {name} {} {ms}", on_off(*on)),
            ToHost::Pattern { name, ms } => write!(f, "pattern {name} {ms}"),
            ToHost::Leds(leds) => {
                f.write_str("leds")?;
                for (n, on) in leds {
                    write!(f, " {n}={}", on_off(*on))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(line: &str) -> ToHost {
        ToHost::parse(line).unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        for m in [ToGuest::ButtonDown, ToGuest::ButtonUp, ToGuest::Leds] {
            assert_eq!(ToGuest::parse(&m.to_string()), Ok(m));
        }
        let msgs = [
            ToHost::Led {
                name: "status".into(),
                on: true,
                ms: 1234,
            },
            ToHost::Led {
                name: "alert".into(),
                on: false,
                ms: 0,
            },
            ToHost::Leds(vec![("status".into(), true), ("alert".into(), false)]),
            ToHost::Leds(vec![]),
            ToHost::Pattern {
                name: "setup-needed".into(),
                ms: u64::MAX,
            },
        ];
        for m in msgs {
            assert_eq!(ToHost::parse(&m.to_string()), Ok(m.clone()), "{m}");
        }
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        let m = ToHost::Led {
            name: "status".into(),
            on: true,
            ms: 1500,
        };
        assert_eq!(m.to_string(), "led status on 1500");
        let m = ToHost::Leds(vec![("status".into(), true), ("alert".into(), false)]);
        assert_eq!(m.to_string(), "leds status=on alert=off");
        assert_eq!(ToGuest::ButtonDown.to_string(), "button down");
    }

    #[test]
    fn line_endings_and_spacing_are_tolerated() {
        assert_eq!(ToGuest::parse("button down\n"), Ok(ToGuest::ButtonDown));
        assert_eq!(ToGuest::parse("button up\r\n"), Ok(ToGuest::ButtonUp));
        assert_eq!(ToGuest::parse("  leds  "), Ok(ToGuest::Leds));
        assert_eq!(
            host("led  status\toff 7\n"),
            ToHost::Led {
                name: "status".into(),
                on: false,
                ms: 7
            }
        );
    }

    fn guest_err(line: &str) -> String {
        ToGuest::parse(line).unwrap_err().to_string()
    }

    fn host_err(line: &str) -> String {
        ToHost::parse(line).unwrap_err().to_string()
    }

    #[test]
    fn malformed_host_lines_are_refused_with_the_reason() {
        assert_eq!(guest_err(""), "front panel: bad line \"\": empty line");
        assert!(guest_err("   \n").ends_with("empty line"));
        assert!(guest_err("button").contains("expected `button down` or `button up`"));
        assert!(guest_err("button sideways").contains("expected `button down`"));
        assert!(guest_err("button down now").contains("expected `button down`"));
        assert!(guest_err("leds all").contains("`leds` takes no arguments"));
        assert!(guest_err("reboot").contains("unknown command \"reboot\""));
        assert!(guest_err("BUTTON DOWN").contains("unknown command"));
        let long = format!("button {}", "x".repeat(MAX_LINE));
        assert!(guest_err(&long).contains("longer than 256 bytes"));
    }

    #[test]
    fn malformed_device_lines_are_refused_with_the_reason() {
        assert!(host_err("led status on").contains("expected `led NAME on|off MS`"));
        assert!(host_err("led status on 5 6").contains("expected `led NAME on|off MS`"));
        assert!(host_err("led status dim 5").contains("state \"dim\" is neither on nor off"));
        assert!(host_err("led status on -5").contains("time \"-5\" is not a number"));
        assert!(host_err("led status on 5ms").contains("is not a number"));
        assert!(host_err("led status on 99999999999999999999999").contains("out of range"));
        assert!(host_err("led Status on 5").contains("\"Status\" is not a name"));
        assert!(host_err(&format!("led {} on 5", "a".repeat(33))).contains("is not a name"));
        assert!(host_err("leds status").contains("\"status\" is not NAME=on|off"));
        assert!(host_err("leds status=on status=off").contains("listed twice"));
        assert!(host_err("leds =on").contains("\"\" is not a name"));
        assert!(host_err("leds a=yes").contains("neither on nor off"));
        let many: Vec<String> = (0..9).map(|i| format!("l{i}=on")).collect();
        assert!(host_err(&format!("leds {}", many.join(" "))).contains("more than 8 LEDs"));
        assert!(host_err("pattern").contains("expected `pattern NAME MS`"));
        assert!(host_err("pattern x y").contains("time \"y\""));
        assert!(host_err("hello world").contains("unknown message \"hello\""));
    }

    #[test]
    fn the_offending_line_is_cut_in_the_message() {
        let e = ToHost::parse(&format!("nonsense {}", "z".repeat(200))).unwrap_err();
        assert_eq!(e.line.chars().count(), 64);
    }

    /// The fuzz target's body: any bytes parse to a message or an error, never a panic, and
    /// whatever parses formats back to something that parses to the same message.
    pub(crate) fn check_any_line(data: &[u8]) {
        let line = String::from_utf8_lossy(data);
        if let Ok(m) = ToGuest::parse(&line) {
            assert_eq!(ToGuest::parse(&m.to_string()), Ok(m));
        }
        if let Ok(m) = ToHost::parse(&line) {
            assert_eq!(ToHost::parse(&m.to_string()), Ok(m));
        }
    }

    #[test]
    fn random_lines_never_panic() {
        // A small xorshift so the run is the same every time; 20 000 lines of up to 300 bytes
        // drawn from an alphabet rich in the protocol's own words.
        let words: [&[u8]; 12] = [
            b"led ",
            b"leds ",
            b"button ",
            b"down",
            b"up",
            b"on",
            b"off",
            b"=",
            b" ",
            b"12",
            b"status",
            b"pattern ",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut line = Vec::new();
            let n = next() % 12;
            for _ in 0..n {
                let r = next();
                if r % 4 == 0 {
                    line.push((r >> 8) as u8);
                } else {
                    line.extend_from_slice(words[(r >> 8) as usize % words.len()]);
                }
            }
            if next() % 50 == 0 {
                line.extend(std::iter::repeat_n(b'a', 300));
            }
            check_any_line(&line);
        }
    }
}
