//! Content-defined chunking: FastCDC 2020 (normalization level 1, the `fastcdc` crate's gear
//! tables and masks), made resumable so a chunk is read straight into the buffer it will be
//! sealed in. The input is read in steps of at most [`READ_STEP`]; the few bytes read past a
//! cut are carried over to the next chunk. Memory: the caller's chunk buffer (at most
//! [`CHUNK_BYTES_MAX`] plus sealing room) and a carry of less than one step, whatever the input size.
//!
//! The gear table is XORed with a seed derived from the owner secret, so where chunks are cut —
//! and hence their sizes — depends on the key, and a peer cannot fingerprint a known file from
//! the sizes of the shards it holds.

use std::io::{self, Read};

use fastcdc::v2020::{get_gear_with_seed, MASKS};

/// Smallest chunk (except a stream's last).
pub const CHUNK_BYTES_MIN: usize = 256 * 1024;
/// Target average chunk.
pub const CHUNK_BYTES_AVG: usize = 1024 * 1024;
/// Largest chunk.
pub const CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most bytes read at once (and so the most carried over past a cut).
pub const READ_STEP: usize = 256 * 1024;

/// Where chunks are cut; immutable, shared by every worker.
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    min: usize,
    avg: usize,
    max: usize,
}

/// A scan in progress over the bytes of one chunk: next byte pair and rolling hash.
#[derive(Clone, Copy, Debug)]
struct Scan {
    pair: usize,
    hash: u64,
}

impl Chunker {
    /// A chunker with the vault's sizes (256 KiB / 1 MiB / 4 MiB).
    pub fn new(seed: u64) -> Self {
        Self::with_sizes(seed, CHUNK_BYTES_MIN, CHUNK_BYTES_AVG, CHUNK_BYTES_MAX)
    }

    /// A chunker with other sizes (tests use small ones to get many chunks from little data).
    pub fn with_sizes(seed: u64, min: usize, avg: usize, max: usize) -> Self {
        assert!(64 <= min && min < avg && avg < max && max <= CHUNK_BYTES_MAX);
        assert!(avg.is_power_of_two());
        let bits = avg.trailing_zeros() as usize;
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Self {
            gear,
            gear_ls,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
            min,
            avg,
            max,
        }
    }

    /// Largest chunk this chunker cuts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Continues `scan` over `data` (the chunk's bytes so far, from its start): the cut length
    /// if one is found, `None` if more bytes are needed. Same cut points as FastCDC 2020's
    /// `cut_gear` on an input that does not end before the cut.
    fn scan(&self, data: &[u8], s: &mut Scan) -> Option<usize> {
        let remaining = data.len().min(self.max);
        if remaining <= self.min {
            return None;
        }
        let (ms, ml) = (self.mask_s, self.mask_l);
        let (msl, mll) = (ms << 1, ml << 1);
        let (mut pair, mut hash) = (s.pair.max(self.min / 2), s.hash);
        let small_end = (self.avg / 2).min(remaining / 2);
        while pair < small_end {
            let a = pair * 2;
            hash = (hash << 2).wrapping_add(self.gear_ls[data[a] as usize]);
            if hash & msl == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(self.gear[data[a + 1] as usize]);
            if hash & ms == 0 {
                return Some(a + 1);
            }
            pair += 1;
        }
        while pair < remaining / 2 {
            let a = pair * 2;
            hash = (hash << 2).wrapping_add(self.gear_ls[data[a] as usize]);
            if hash & mll == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(self.gear[data[a + 1] as usize]);
            if hash & ml == 0 {
                return Some(a + 1);
            }
            pair += 1;
        }
        if remaining == self.max {
            return Some(self.max);
        }
        *s = Scan { pair, hash };
        None
    }

    /// Reads the next chunk of `r` into `buf` (cleared first), starting with the bytes in
    /// `carry` and leaving there those read past the cut. Returns `false` at the end of the
    /// stream (then `buf` is empty). Start each stream with an empty `carry`.
    pub fn next_chunk<R: Read + ?Sized>(
        &self,
        r: &mut R,
        buf: &mut Vec<u8>,
        carry: &mut Vec<u8>,
    ) -> io::Result<bool> {
        buf.clear();
        buf.append(carry);
        let mut scan = Scan { pair: 0, hash: 0 };
        loop {
            if let Some(cut) = self.scan(buf, &mut scan) {
                carry.extend_from_slice(&buf[cut..]);
                buf.truncate(cut);
                return Ok(true);
            }
            let want = READ_STEP.min(self.max - buf.len());
            if read_more(r, buf, want)? == 0 {
                return Ok(!buf.is_empty());
            }
        }
    }
}

/// Appends up to `want` bytes from `r` to `buf`; returns how many (0 only at the end).
/// (`read_to_end` on a `Take` reads into spare capacity without zeroing it first.)
fn read_more<R: Read + ?Sized>(r: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    r.take(want as u64).read_to_end(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::cut_gear;
    use rand::{RngCore, SeedableRng};

    fn chunks_of(c: &Chunker, mut r: impl Read) -> Vec<Vec<u8>> {
        let (mut buf, mut carry) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while c.next_chunk(&mut r, &mut buf, &mut carry).unwrap() {
            out.push(buf.clone());
        }
        assert!(carry.is_empty());
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

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    #[test]
    fn cuts_where_fastcdc_cuts() {
        let data = random(24 << 20, 3);
        let seed = 99;
        let c = Chunker::new(seed);
        let got = chunks_of(&c, &data[..]);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let (ms, ml) = (MASKS[21], MASKS[19]);
        let mut pos = 0;
        for (i, ch) in got.iter().enumerate() {
            let rest = &data[pos..];
            if rest.len() < CHUNK_BYTES_AVG {
                // The stream's end: FastCDC narrows its centre there; ours does not.
                assert!(i >= got.len() - 2);
                break;
            }
            let (_, cut) = cut_gear(
                rest,
                CHUNK_BYTES_MIN,
                CHUNK_BYTES_AVG,
                CHUNK_BYTES_MAX,
                ms,
                ml,
                ms << 1,
                ml << 1,
                &gear,
                &gear_ls,
            );
            assert_eq!(ch.len(), cut, "chunk {i}");
            pos += cut;
        }
        assert_eq!(got.concat(), data);
    }

    #[test]
    fn chunks_cover_the_input_within_bounds_and_resist_shifts() {
        let data = random(6 << 20, 1);
        let c = Chunker::with_sizes(7, 16 << 10, 64 << 10, 256 << 10);
        let a = chunks_of(&c, &data[..]);
        assert_eq!(a.concat(), data);
        assert!(a.len() > 40, "{} chunks", a.len());
        for ch in &a[..a.len() - 1] {
            assert!(ch.len() >= 16 << 10 && ch.len() <= 256 << 10);
        }
        // Same chunks through a trickling reader.
        assert_eq!(a, chunks_of(&c, Trickle(&data)));
        // Inserting bytes at the front changes only the first chunks.
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let s = chunks_of(&c, &shifted[..]);
        let common = a.iter().filter(|ch| s.contains(ch)).count();
        assert!(common >= a.len() - 2, "{common} of {}", a.len());
        // Another seed cuts elsewhere.
        let other = Chunker::with_sizes(8, 16 << 10, 64 << 10, 256 << 10);
        let o = chunks_of(&other, &data[..]);
        assert!(o.iter().filter(|ch| a.contains(ch)).count() < a.len() / 2);
    }

    #[test]
    fn empty_short_and_zero_inputs() {
        let c = Chunker::new(1);
        assert!(chunks_of(&c, &[][..]).is_empty());
        assert_eq!(chunks_of(&c, &[5u8; 10][..]), vec![vec![5u8; 10]]);
        let zeros = vec![0u8; 9 << 20];
        let z = chunks_of(&c, &zeros[..]);
        assert_eq!(z.concat(), zeros);
        assert!(z.iter().all(|ch| ch.len() <= CHUNK_BYTES_MAX));
    }
}
