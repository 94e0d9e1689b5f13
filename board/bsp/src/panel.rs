//! The virtual board's front panel: a line protocol on the virtio-serial port `cairn.panel`,
//! by which a test or a person presses the qemu-virt board's button and watches its LEDs.
//!
//! Host → guest: `button down`, `button up`, `leds` (ask for the state).
//! Guest → host: `led NAME on|off MS` on every change (MS: milliseconds since boot),
//! `leds NAME=on|off …` in answer to `leds`, and `pattern NAME MS` when the LEDs start a new
//! pattern (so a person or test need not infer it from the blinking).
//!
//! Pure codec: parsing and formatting, no I/O. Lines are at most `LINE_BYTES_MAX` bytes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest line either side sends or accepts, in bytes (bounds the reader's buffer).
pub const LINE_BYTES_MAX: usize = 256;
/// Most LEDs a `leds` answer may list.
pub const LEDS_MAX: usize = 8;
/// Longest LED or pattern name.
pub const NAME_BYTES_MAX: usize = 32;

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
    if line.len() > LINE_BYTES_MAX {
        return Err(bad(line, format!("longer than {LINE_BYTES_MAX} bytes")));
    }
    let w: Vec<&str> = line.split_ascii_whitespace().collect();
    if w.is_empty() {
        return Err(bad(line, "empty line"));
    }
    Ok(w)
}

fn name<'a>(line: &str, s: &'a str) -> Result<&'a str, PanelError> {
    let ok = !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(s)
    } else {
        Err(bad(
            line,
            format!("{s:?} is not a name (a-z, 0-9, - and _, at most {NAME_BYTES_MAX})"),
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
                if rest.len() > LEDS_MAX {
                    return Err(bad(line, format!("more than {LEDS_MAX} LEDs")));
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

/// The fuzz target's body (`fuzz/fuzz_targets/bsp_panel.rs`), also run by the unit tests:
/// any bytes parse to a message or an error, never a panic, and whatever parses formats back
/// to text that parses to the same message.
#[doc(hidden)]
pub fn fuzz_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    if let Ok(m) = ToGuest::parse(&line) {
        assert_eq!(ToGuest::parse(&m.to_string()), Ok(m));
    }
    if let Ok(m) = ToHost::parse(&line) {
        assert_eq!(ToHost::parse(&m.to_string()), Ok(m));
    }
}

/// Most messages a `PanelLink` keeps (older ones are dropped): about 20 minutes of the
/// fastest pattern on two LEDs, ~200 KiB.
pub const KEEP_MESSAGES: usize = 8192;

/// What the reader thread has received.
#[derive(Debug, Default)]
struct Received {
    /// Messages with their sequence numbers, oldest first, at most `KEEP_MESSAGES`.
    msgs: VecDeque<(u64, ToHost)>,
    /// Sequence number of the next message.
    next_seq: u64,
    /// Lines that did not parse (at most 16 kept), with the reason.
    bad: Vec<String>,
    /// The device side closed the stream.
    closed: bool,
}

/// The host side of the front panel over any byte stream (QEMU's chardev socket): sends
/// presses, and keeps what the device reports, for tests and for a person at a terminal.
pub struct PanelLink {
    writer: Mutex<Box<dyn Write + Send>>,
    shared: Arc<(Mutex<Received>, Condvar)>,
}

impl PanelLink {
    /// Starts reading `reader` on a thread; `writer` carries the presses.
    pub fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
    ) -> std::io::Result<PanelLink> {
        let shared: Arc<(Mutex<Received>, Condvar)> = Arc::default();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("panel-reader".into())
            .spawn(move || read_loop(reader, &s))?;
        Ok(PanelLink {
            writer: Mutex::new(Box::new(writer)),
            shared,
        })
    }

    /// Sends one message.
    pub fn send(&self, m: ToGuest) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(format!("{m}\n").as_bytes())?;
        w.flush()
    }

    /// Presses the button for `hold`, as a finger does: down, then up `hold` later.
    pub fn press(&self, hold: Duration) -> std::io::Result<()> {
        self.send(ToGuest::ButtonDown)?;
        std::thread::sleep(hold);
        self.send(ToGuest::ButtonUp)
    }

    /// Sends several messages in one write, so they arrive together: a burst of contact
    /// bounce far shorter than any debounce time.
    pub fn send_burst(&self, msgs: &[ToGuest]) -> std::io::Result<()> {
        let text: String = msgs.iter().map(|m| format!("{m}\n")).collect();
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(text.as_bytes())?;
        w.flush()
    }

    fn received(&self) -> MutexGuard<'_, Received> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence number the next message will get: pass it to `wait_for` or `since` to
    /// look only at what comes after now.
    pub fn cursor(&self) -> u64 {
        self.received().next_seq
    }

    /// Messages received from sequence number `from` on (those still kept).
    pub fn since(&self, from: u64) -> Vec<ToHost> {
        self.received()
            .msgs
            .iter()
            .filter(|(n, _)| *n >= from)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits up to `timeout` for a message from sequence number `from` on for which `f` says
    /// `Some`; returns that and the message's sequence number.
    pub fn wait_for<T>(
        &self,
        from: u64,
        timeout: Duration,
        mut f: impl FnMut(&ToHost) -> Option<T>,
    ) -> Option<(u64, T)> {
        let deadline = Instant::now() + timeout;
        let mut g = self.received();
        let mut next = from;
        loop {
            for (n, m) in g.msgs.iter().filter(|(n, _)| *n >= next) {
                if let Some(t) = f(m) {
                    return Some((*n, t));
                }
            }
            next = g.next_seq;
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = self
                .shared
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the device to report it started `pattern`; returns the report's time
    /// (ms since boot) and sequence number.
    pub fn wait_pattern(&self, from: u64, pattern: &str, timeout: Duration) -> Option<(u64, u64)> {
        self.wait_for(from, timeout, |m| match m {
            ToHost::Pattern { name, ms } if name == pattern => Some(*ms),
            _ => None,
        })
        .map(|(seq, ms)| (ms, seq))
    }

    /// The changes `(ms, lit)` of one LED reported from sequence number `from` on.
    pub fn led_changes(&self, from: u64, led: &str) -> Vec<(u64, bool)> {
        self.since(from)
            .into_iter()
            .filter_map(|m| match m {
                ToHost::Led { name, on, ms } if name == led => Some((ms, on)),
                _ => None,
            })
            .collect()
    }

    /// Lines from the device that did not parse, with the reason.
    pub fn bad_lines(&self) -> Vec<String> {
        self.received().bad.clone()
    }

    /// Whether the device side closed the stream.
    pub fn is_closed(&self) -> bool {
        self.received().closed
    }
}

fn read_loop(reader: impl Read, shared: &(Mutex<Received>, Condvar)) {
    let mut reader = BufReader::with_capacity(LINE_BYTES_MAX * 4, reader);
    let mut line = Vec::with_capacity(LINE_BYTES_MAX + 1);
    loop {
        line.clear();
        // At most LINE_BYTES_MAX + 1 bytes per read: a longer line is reported and skipped.
        let n = match (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let mut g = shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 {
            g.closed = true;
            drop(g);
            shared.1.notify_all();
            return;
        }
        let text = String::from_utf8_lossy(&line);
        match ToHost::parse(&text) {
            Ok(m) => {
                let seq = g.next_seq;
                g.next_seq += 1;
                if g.msgs.len() == KEEP_MESSAGES {
                    g.msgs.pop_front();
                }
                g.msgs.push_back((seq, m));
            }
            Err(e) => {
                if g.bad.len() < 16 {
                    g.bad.push(e.to_string());
                }
                if !line.ends_with(b"\n") {
                    // The rest of an over-long line: skip to its end.
                    let mut rest = Vec::new();
                    let _ = (&mut reader).take(1 << 20).read_until(b'\n', &mut rest);
                }
            }
        }
        drop(g);
        shared.1.notify_all();
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
        let long = format!("button {}", "x".repeat(LINE_BYTES_MAX));
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
            fuzz_line(&line);
        }
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn link_sends_presses_and_keeps_reports() {
        let device = "pattern setup-needed 900\nled status on 900\nnonsense\nled status off 1100\n\
                      led alert on 1200\npattern pairing-open 5000\n";
        let sink = Sink::default();
        let link = PanelLink::new(
            std::io::Cursor::new(device.as_bytes().to_vec()),
            sink.clone(),
        )
        .unwrap();
        link.send(ToGuest::ButtonDown).unwrap();
        link.send(ToGuest::ButtonUp).unwrap();
        link.send_burst(&[ToGuest::ButtonDown, ToGuest::ButtonUp])
            .unwrap();
        assert_eq!(
            &*sink.0.lock().unwrap(),
            b"button down\nbutton up\nbutton down\nbutton up\n"
        );
        assert_eq!(
            link.wait_pattern(0, "pairing-open", Duration::from_secs(10)),
            Some((5000, 4))
        );
        assert_eq!(
            link.led_changes(0, "status"),
            vec![(900, true), (1100, false)]
        );
        assert_eq!(link.led_changes(2, "status"), vec![(1100, false)]);
        assert_eq!(link.bad_lines().len(), 1);
        assert!(link.bad_lines()[0].contains("unknown message \"nonsense\""));
        // The stream ended: waiting for what never comes returns at once.
        assert_eq!(
            link.wait_pattern(0, "healthy", Duration::from_secs(600)),
            None
        );
        assert!(link.is_closed());
        assert_eq!(link.cursor(), 5);
    }

    #[test]
    fn link_skips_an_over_long_line_and_goes_on() {
        let device = format!("led status on {}\nled status off 5\n", "9".repeat(1000));
        let link =
            PanelLink::new(std::io::Cursor::new(device.into_bytes()), Sink::default()).unwrap();
        assert!(link
            .wait_for(0, Duration::from_secs(10), |m| matches!(
                m,
                ToHost::Led { ms: 5, .. }
            )
            .then_some(()))
            .is_some());
        assert_eq!(link.led_changes(0, "status"), vec![(5, false)]);
        assert!(
            link.bad_lines()[0].contains("longer than 256 bytes"),
            "{:?}",
            link.bad_lines()
        );
    }
}
