//! Content-defined chunking (FastCDC 2020, normalization level 1) over any `Read`, in constant
//! memory: one buffer of twice the largest chunk (8 MiB) whatever the input size.
//!
//! The gear table is XORed with a seed derived from the owner secret, so where chunks are cut —
//! and hence their sizes — depends on the key, and a peer cannot fingerprint a known file from
//! the sizes of the shards it holds.

use std::io::{self, Read};

use fastcdc::v2020::{cut_gear, get_gear_with_seed, MASKS};

/// Smallest chunk (except a stream's last).
pub const MIN_CHUNK: usize = 256 * 1024;
/// Target average chunk.
pub const AVG_CHUNK: usize = 1024 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

/// A streaming chunker; reuse one across files to keep its buffer.
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    masks: [u64; 4],
    min: usize,
    avg: usize,
    max: usize,
    /// Holds up to 2 × max bytes of input; chunks are cut from `start..end`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Chunker {
    /// A chunker with the vault's sizes (256 KiB / 1 MiB / 4 MiB).
    pub fn new(seed: u64) -> Self {
        Self::with_sizes(seed, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
    }

    /// A chunker with other sizes (tests use small ones to get many chunks from little data).
    pub fn with_sizes(seed: u64, min: usize, avg: usize, max: usize) -> Self {
        assert!(64 <= min && min < avg && avg < max && max <= MAX_CHUNK);
        assert!(avg.is_power_of_two());
        let bits = avg.trailing_zeros() as usize;
        let (mask_s, mask_l) = (MASKS[bits + 1], MASKS[bits - 1]);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Self {
            gear,
            gear_ls,
            masks: [mask_s, mask_l, mask_s << 1, mask_l << 1],
            min,
            avg,
            max,
            buf: vec![0; 2 * max],
            start: 0,
            end: 0,
            eof: true,
        }
    }

    /// Starts a new stream (a new file or region): chunks never span two streams.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.eof = false;
    }

    /// The next chunk of `r`, or `None` at its end. Call [`Chunker::reset`] before a new stream.
    pub fn next_chunk<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<Option<&[u8]>> {
        if !self.eof && self.end - self.start < self.max {
            // Move the tail to the front (less than one max chunk) and refill.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < self.buf.len() {
                match r.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.start == self.end {
            return Ok(None);
        }
        let [ms, ml, msl, mll] = self.masks;
        let (_, cut) = cut_gear(
            &self.buf[self.start..self.end],
            self.min,
            self.avg,
            self.max,
            ms,
            ml,
            msl,
            mll,
            &self.gear,
            &self.gear_ls,
        );
        let s = self.start;
        self.start += cut;
        Ok(Some(&self.buf[s..s + cut]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn chunks(c: &mut Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        c.reset();
        let mut r = data;
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r).unwrap() {
            out.push(ch.to_vec());
        }
        out
    }

    /// A reader that returns at most 1000 bytes per call, like a pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunks_cover_the_input_within_bounds_and_resist_shifts() {
        let mut data = vec![0u8; 6 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
        let mut c = Chunker::with_sizes(7, 16 << 10, 64 << 10, 256 << 10);
        let a = chunks(&mut c, &data);
        assert_eq!(a.concat(), data);
        assert!(a.len() > 40, "{} chunks", a.len());
        for ch in &a[..a.len() - 1] {
            assert!(ch.len() >= 16 << 10 && ch.len() <= 256 << 10);
        }
        // Same chunks through a trickling reader.
        c.reset();
        let mut t = Trickle(&data);
        let mut b = Vec::new();
        while let Some(ch) = c.next_chunk(&mut t).unwrap() {
            b.push(ch.to_vec());
        }
        assert_eq!(a, b);
        // Inserting bytes at the front changes only the first chunks.
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let s = chunks(&mut c, &shifted);
        let common = a.iter().filter(|ch| s.contains(ch)).count();
        assert!(common >= a.len() - 2, "{common} of {}", a.len());
        // Another seed cuts elsewhere.
        let mut other = Chunker::with_sizes(8, 16 << 10, 64 << 10, 256 << 10);
        let o = chunks(&mut other, &data);
        assert!(o.iter().filter(|ch| a.contains(ch)).count() < a.len() / 2);
    }

    #[test]
    fn empty_and_zero_inputs() {
        let mut c = Chunker::new(1);
        assert!(chunks(&mut c, &[]).is_empty());
        let zeros = vec![0u8; 9 << 20];
        let z = chunks(&mut c, &zeros);
        assert_eq!(z.concat(), zeros);
        assert!(z.iter().all(|ch| ch.len() <= MAX_CHUNK));
    }
}
