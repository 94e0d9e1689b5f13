//! Progress reports for long work: bytes done, rate and ETA, printed to stderr at most twice a
//! second (overwriting one line on a terminal, one line per report otherwise). The state is a
//! few numbers: printing costs no memory whatever the size of the job.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Receives progress from long operations.
pub trait Progress {
    /// A job of `total` bytes begins.
    fn start(&mut self, what: &str, total: u64);
    /// `bytes` more are done.
    fn advance(&mut self, bytes: u64);
    /// The job is over.
    fn finish(&mut self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Prints `what: 1.2 GiB / 4.0 GiB (30%), 312 MB/s, ETA 9 s` lines on stderr.
pub struct LinePrinter {
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
    interval: Duration,
}

impl Default for LinePrinter {
    fn default() -> Self {
        Self::new()
    }
}

impl LinePrinter {
    /// A printer on stderr.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            what: String::new(),
            total: 0,
            done: 0,
            started: Instant::now(),
            last: None,
            tty,
            // Off a terminal (logs, pipes) a line every 5 s is plenty.
            interval: Duration::from_millis(if tty { 500 } else { 5000 }),
        }
    }

    /// The current line.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let pct = if self.total > 0 {
            self.done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 && self.total > self.done {
            format!(
                ", ETA {}",
                human_secs((self.total - self.done) as f64 / rate)
            )
        } else {
            String::new()
        };
        format!(
            "{}: {} / {} ({pct:.0}%), {:.0} MB/s{eta}",
            self.what,
            human_bytes(self.done),
            human_bytes(self.total),
            rate / 1e6
        )
    }

    fn print(&mut self, end: bool) {
        let line = self.line();
        let mut e = std::io::stderr().lock();
        let _ = if self.tty {
            write!(e, "\r\x1b[K{line}{}", if end { "\n" } else { "" })
        } else {
            writeln!(e, "{line}")
        };
        let _ = e.flush();
    }
}

impl Progress for LinePrinter {
    fn start(&mut self, what: &str, total: u64) {
        self.what = what.to_string();
        self.total = total;
        self.done = 0;
        self.started = Instant::now();
        self.last = None;
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let now = Instant::now();
        // The first line only after the interval: short jobs stay quiet.
        let due = match self.last {
            None => now.duration_since(self.started) >= self.interval,
            Some(t) => now.duration_since(t) >= self.interval,
        };
        if due {
            self.last = Some(now);
            self.print(false);
        }
    }

    fn finish(&mut self) {
        if self.last.is_some() {
            self.print(true);
        }
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// Seconds since the epoch as a UTC date and time, `2026-12-05 10:32:35` (for listings).
pub fn utc_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_like_ls() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_764_046_031), "2025-11-25 04:47:11");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn line_shows_bytes_rate_and_eta() {
        let mut p = LinePrinter::new();
        p.start("put", 4 << 30);
        p.done = 1 << 30;
        p.started = Instant::now() - Duration::from_secs(2);
        let l = p.line();
        assert!(
            l.starts_with("put: 1.0 GiB / 4.0 GiB (25%), 537 MB/s"),
            "{l}"
        );
        assert!(l.contains("ETA 6 s"), "{l}");
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_secs(3725.0), "1h02m");
    }
}
