//! Bounded per-service log: the newest lines of a service's stdout and stderr.
//!
//! Memory: at most [`LOG_BYTES_MAX`] bytes of text per service plus a small per-line header
//! (line numbers are implicit), so three bundled services cost well under 1 MiB. The oldest lines
//! are dropped first and counted.

use std::collections::VecDeque;

/// Bytes of log text kept per service: the one place the ring size is set.
pub const LOG_BYTES_MAX: usize = 64 * 1024;
/// Longest line kept; longer output is split into lines of this size.
pub const LINE_BYTES_MAX: usize = 1024;

/// A ring of complete lines with a drop counter.
#[derive(Debug)]
pub struct LogRing {
    /// Lines, oldest first; each without its newline.
    lines: VecDeque<Box<str>>,
    /// Sum of the lines' lengths.
    bytes: usize,
    /// Bound on `bytes`.
    bytes_max: usize,
    /// Sequence number of `lines[0]`; sequence numbers grow by one per line ever pushed.
    first_seq: u64,
    /// Lines dropped to stay within the bound.
    dropped: u64,
    /// An incomplete last line per stream (stdout, stderr), at most `LINE_BYTES_MAX`.
    partial: [Vec<u8>; 2],
}

impl Default for LogRing {
    fn default() -> Self {
        Self::with_capacity(LOG_BYTES_MAX)
    }
}

impl LogRing {
    /// A ring keeping at most `bytes_max` bytes of text.
    pub fn with_capacity(bytes_max: usize) -> Self {
        LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            bytes_max,
            first_seq: 0,
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// Appends one complete line (a trailing newline is stripped; long lines are split).
    pub fn push_line(&mut self, line: &str) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(LINE_BYTES_MAX);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            self.push_one(head);
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }

    fn push_one(&mut self, line: &str) {
        let mut len = line.len().min(self.bytes_max);
        while !line.is_char_boundary(len) {
            len -= 1;
        }
        while self.bytes + len > self.bytes_max {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    self.first_seq += 1;
                    self.dropped += 1;
                }
                None => break,
            }
        }
        self.bytes += len;
        self.lines.push_back(line[..len].into());
        debug_assert!(self.bytes <= self.bytes_max);
    }

    /// Feeds raw output from stream 0 (stdout) or 1 (stderr); complete lines go into the ring.
    pub fn feed(&mut self, stream: usize, data: &[u8]) {
        let stream = stream.min(1);
        let mut buf = std::mem::take(&mut self.partial[stream]);
        for &b in data {
            if b == b'\n' {
                self.push_line(&String::from_utf8_lossy(&buf));
                buf.clear();
            } else {
                buf.push(b);
                if buf.len() >= LINE_BYTES_MAX {
                    self.push_line(&String::from_utf8_lossy(&buf));
                    buf.clear();
                }
            }
        }
        self.partial[stream] = buf;
    }

    /// Moves incomplete last lines into the ring (when the process ended).
    pub fn flush_partial(&mut self) {
        for s in 0..2 {
            let buf = std::mem::take(&mut self.partial[s]);
            if !buf.is_empty() {
                self.push_line(&String::from_utf8_lossy(&buf));
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sequence number the next pushed line will get.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }

    /// Lines with sequence number ≥ `seq` (all kept lines if `seq` is older than the ring).
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &str> {
        let skip = seq.saturating_sub(self.first_seq) as usize;
        self.lines.iter().skip(skip).map(|l| &**l)
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The whole log as text, one line per line, with a note of dropped lines first.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.bytes + self.lines.len() + 64);
        if self.dropped > 0 {
            out.push_str(&format!("[{} earlier lines dropped]\n", self.dropped));
        }
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_lines_within_the_bound_and_counts_drops() {
        let mut r = LogRing::with_capacity(100);
        for i in 0..50 {
            r.push_line(&format!("line {i:03}"));
        }
        assert!(r.bytes() <= 100);
        let kept: Vec<&str> = r.since(0).collect();
        assert_eq!(kept.len(), 12);
        assert_eq!(kept.last(), Some(&"line 049"));
        assert_eq!(kept[0], "line 038");
        assert_eq!(r.dropped(), 38);
        assert_eq!(r.next_seq(), 50);
        assert!(r
            .to_text()
            .starts_with("[38 earlier lines dropped]\nline 038\n"));
    }

    #[test]
    fn since_returns_only_newer_lines() {
        let mut r = LogRing::with_capacity(1000);
        for i in 0..5 {
            r.push_line(&i.to_string());
        }
        assert_eq!(r.since(3).collect::<Vec<_>>(), vec!["3", "4"]);
        assert_eq!(r.since(5).count(), 0);
    }

    #[test]
    fn feed_splits_lines_and_keeps_streams_apart() {
        let mut r = LogRing::with_capacity(1000);
        r.feed(0, b"hel");
        r.feed(1, b"err one\nerr");
        r.feed(0, b"lo\nworld\n");
        assert_eq!(
            r.since(0).collect::<Vec<_>>(),
            vec!["err one", "hello", "world"]
        );
        r.flush_partial();
        assert_eq!(r.since(3).collect::<Vec<_>>(), vec!["err"]);
    }

    #[test]
    fn long_lines_and_bad_utf8_are_bounded() {
        let mut r = LogRing::with_capacity(LOG_BYTES_MAX);
        r.feed(0, &vec![b'x'; LINE_BYTES_MAX * 3 + 5]);
        r.feed(0, b"\xff\xfe\n");
        r.flush_partial();
        let lines: Vec<&str> = r.since(0).collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() <= LINE_BYTES_MAX));
        assert!(lines[3].starts_with("xxxxx"));
        assert!(lines[3].contains('\u{fffd}'));
    }

    #[test]
    fn line_bigger_than_ring_is_truncated_not_lost_bound() {
        let mut r = LogRing::with_capacity(10);
        r.push_line("abcdefghijklmnop");
        assert!(r.bytes() <= 10);
        r.push_line("ééééééééééé");
        assert!(r.bytes() <= 10);
        assert_eq!(r.since(1).next(), Some("ééééé"));
    }
}
