//! Index runs: sorted, immutable on-disk indexes of sealed records, with their RAM summary.
//!
//! A run file is a sequence of 4 KiB pages of index entries sorted by shard id, then a meta
//! block (Bloom filter and fence pointers) and a footer. Only the meta block lives in RAM:
//! about 1.5 bytes of filter and 0.11 bytes of fences per entry. A lookup asks the filter,
//! picks the page by the fences and reads that one page.
//!
//! ```text
//! page:   crc u32 (of bytes 4..4096) | count u16 | 0 u16 | count × entry (56 bytes)
//! entry:  id [32] | seg u32 | offset u32 | len u32 | owner u32 | expiry u32 | kind u8 | 0 [3]
//! meta:   bloom words (u64 × n) | fences (u64 × pages: first 8 id bytes of each page)
//! footer: magic [8] | entries u64 | pages u32 | bloom_k u32 | bloom_words u32 | meta crc u32 | footer crc u32 | 0 u32
//! ```

use std::sync::Arc;

use crate::format::PAGE;
use crate::storage::StorageFile;
use crate::{Error, Result, ShardId};

/// Bytes per index entry on disk.
pub const ENTRY: usize = 56;
const PAGE_HDR: usize = 8;
/// Entries per index page.
pub const PER_PAGE: usize = (PAGE as usize - PAGE_HDR) / ENTRY;
const FOOTER: usize = 40;
const RUN_MAGIC: &[u8; 8] = b"CAIRNRUN";

/// Entry kinds.
pub const KIND_PUT: u8 = 1;
/// A tombstone: the id is deleted.
pub const KIND_DEL: u8 = 2;

/// Where a shard's record is, and its metadata (in RAM in the memtable, on disk in runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Segment number.
    pub seg: u32,
    /// Offset of the record in the segment.
    pub off: u32,
    /// Unpadded record length (header + payload).
    pub len: u32,
    /// Interned owner number.
    pub owner: u32,
    /// Expiry word (`u32::MAX` = never).
    pub expiry: u32,
    /// [`KIND_PUT`] or [`KIND_DEL`].
    pub kind: u8,
}

impl Entry {
    /// True for a put whose lease has not run out at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.kind == KIND_PUT && (self.expiry == u32::MAX || u64::from(self.expiry) > now)
    }
}

fn encode_entry(out: &mut [u8], id: &ShardId, e: &Entry) {
    out[0..32].copy_from_slice(&id.0);
    out[32..36].copy_from_slice(&e.seg.to_le_bytes());
    out[36..40].copy_from_slice(&e.off.to_le_bytes());
    out[40..44].copy_from_slice(&e.len.to_le_bytes());
    out[44..48].copy_from_slice(&e.owner.to_le_bytes());
    out[48..52].copy_from_slice(&e.expiry.to_le_bytes());
    out[52] = e.kind;
    out[53..56].copy_from_slice(&[0; 3]);
}

fn decode_entry(b: &[u8]) -> (ShardId, Entry) {
    let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    (
        ShardId(b[0..32].try_into().expect("32 bytes")),
        Entry {
            seg: u(32),
            off: u(36),
            len: u(40),
            owner: u(44),
            expiry: u(48),
            kind: b[52],
        },
    )
}

fn prefix(id: &ShardId) -> u64 {
    u64::from_be_bytes(id.0[0..8].try_into().expect("8 bytes"))
}

/// A Bloom filter over shard ids, salted per store so crafted ids cannot target it.
#[derive(Clone, Debug, Default)]
pub struct Bloom {
    words: Vec<u64>,
    k: u32,
    seed: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Bloom {
    /// A filter for `n` ids at `bits_per_key` bits each (0 = no filter: always "maybe").
    pub fn new(n: u64, bits_per_key: u32, seed: u64) -> Bloom {
        if bits_per_key == 0 || n == 0 {
            return Bloom {
                words: Vec::new(),
                k: 0,
                seed,
            };
        }
        let bits = (n * u64::from(bits_per_key)).max(64);
        let k = ((f64::from(bits_per_key) * 0.69).round() as u32).clamp(1, 12);
        Bloom {
            words: vec![0; bits.div_ceil(64) as usize],
            k,
            seed,
        }
    }
    fn hashes(&self, id: &ShardId) -> (u64, u64) {
        let a = u64::from_le_bytes(id.0[0..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(id.0[8..16].try_into().expect("8 bytes"));
        let c = u64::from_le_bytes(id.0[16..24].try_into().expect("8 bytes"));
        (
            mix(a ^ self.seed ^ c.rotate_left(17)),
            mix(b ^ self.seed.rotate_left(32)) | 1,
        )
    }
    /// Adds `id`.
    pub fn insert(&mut self, id: &ShardId) {
        if self.words.is_empty() {
            return;
        }
        let nbits = self.words.len() as u64 * 64;
        let (h1, h2) = self.hashes(id);
        for i in 0..u64::from(self.k) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }
    /// False only if `id` was never added.
    pub fn may_contain(&self, id: &ShardId) -> bool {
        if self.words.is_empty() {
            return true;
        }
        let nbits = self.words.len() as u64 * 64;
        let (h1, h2) = self.hashes(id);
        (0..u64::from(self.k)).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
            self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }
    /// RAM held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// An open index run: the file handle plus its RAM summary.
pub struct Run {
    /// Run number (its file is `idx-NNNNNNNN.run`).
    pub id: u32,
    /// File name, for errors.
    pub name: String,
    file: Arc<dyn StorageFile>,
    /// Entries in the run.
    pub count: u64,
    fences: Vec<u64>,
    bloom: Bloom,
}

impl Run {
    /// Name of run file number `id`.
    pub fn file_name(id: u32) -> String {
        format!("idx-{id:08x}.run")
    }

    /// RAM held by this run's summary.
    pub fn ram_bytes(&self) -> usize {
        self.bloom.bytes() + self.fences.len() * 8 + std::mem::size_of::<Run>()
    }

    /// Pages in the run.
    pub fn pages(&self) -> u32 {
        self.fences.len() as u32
    }

    /// Opens run `id` from `file`: reads the footer and the meta block (one read each).
    pub fn open(id: u32, name: String, file: Arc<dyn StorageFile>, seed: u64) -> Result<Run> {
        let bad = |d: &str| Error::Format {
            file: name.clone(),
            detail: format!("index run is damaged: {d}"),
        };
        let len = file.len().map_err(|e| Error::io(&name, e))?;
        if len < FOOTER as u64 {
            return Err(bad("shorter than its footer"));
        }
        let mut f = [0u8; FOOTER];
        file.read_at(&mut f, len - FOOTER as u64)
            .map_err(|e| Error::io(&name, e))?;
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        if &f[0..8] != RUN_MAGIC || crc32c::crc32c(&f[0..32]) != u32_at(&f, 32) {
            return Err(bad("footer checksum mismatch"));
        }
        let count = u64::from_le_bytes(f[8..16].try_into().expect("8"));
        let pages = u32_at(&f, 16);
        let k = u32_at(&f, 20);
        let words = u32_at(&f, 24) as usize;
        let meta_crc = u32_at(&f, 28);
        let meta_len = words * 8 + pages as usize * 8;
        if u64::from(pages) * PAGE + meta_len as u64 + FOOTER as u64 != len
            || count > u64::from(pages) * PER_PAGE as u64
            || k > 12
        {
            return Err(bad("footer sizes disagree with the file length"));
        }
        let mut meta = vec![0u8; meta_len];
        file.read_at(&mut meta, u64::from(pages) * PAGE)
            .map_err(|e| Error::io(&name, e))?;
        if crc32c::crc32c(&meta) != meta_crc {
            return Err(bad("filter/fence block checksum mismatch"));
        }
        let mut it = meta
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")));
        let bloom_words: Vec<u64> = it.by_ref().take(words).collect();
        let fences: Vec<u64> = it.collect();
        Ok(Run {
            id,
            name,
            file,
            count,
            fences,
            bloom: Bloom {
                words: bloom_words,
                k,
                seed,
            },
        })
    }

    /// Reads and checks page `p`; returns its entries.
    pub fn page(&self, p: u32) -> Result<Vec<(ShardId, Entry)>> {
        let mut buf = vec![0u8; PAGE as usize];
        self.file
            .read_at(&mut buf, u64::from(p) * PAGE)
            .map_err(|e| Error::io(&self.name, e))?;
        let stored = u32::from_le_bytes(buf[0..4].try_into().expect("4"));
        let n = u16::from_le_bytes(buf[4..6].try_into().expect("2")) as usize;
        if crc32c::crc32c(&buf[4..]) != stored || n > PER_PAGE {
            return Err(Error::Format {
                file: self.name.clone(),
                detail: format!("index page {p} is damaged (checksum mismatch)"),
            });
        }
        Ok((0..n)
            .map(|i| decode_entry(&buf[PAGE_HDR + i * ENTRY..PAGE_HDR + (i + 1) * ENTRY]))
            .collect())
    }

    /// Pages that may hold `id`: normally one; more only when equal 8-byte prefixes
    /// straddle a page boundary.
    fn candidate_pages(&self, id: &ShardId) -> std::ops::RangeInclusive<u32> {
        let p = prefix(id);
        let hi = self.fences.partition_point(|&f| f <= p);
        let lo = self.fences.partition_point(|&f| f < p);
        let hi = hi.saturating_sub(1) as u32;
        let lo = lo.saturating_sub(1) as u32;
        lo..=hi.max(lo)
    }

    /// Looks `id` up: the filter first, then one page read.
    pub fn get(&self, id: &ShardId) -> Result<Option<Entry>> {
        if self.fences.is_empty() || !self.bloom.may_contain(id) {
            return Ok(None);
        }
        // Newest candidate first: only equal 8-byte prefixes straddling a boundary need the
        // earlier pages, and a key that opens a page is found with one read.
        for p in self.candidate_pages(id).rev() {
            let entries = self.page(p)?;
            if let Ok(i) = entries.binary_search_by(|(k, _)| k.cmp(id)) {
                return Ok(Some(entries[i].1));
            }
        }
        Ok(None)
    }

    /// The first page that may hold ids greater than `after` (0 when `after` is `None`).
    pub fn start_page(&self, after: Option<&ShardId>) -> u32 {
        match after {
            None => 0,
            Some(id) => *self.candidate_pages(id).start(),
        }
    }
}

/// Writes a run file from entries given in increasing id order.
pub struct RunWriter {
    file: Arc<dyn StorageFile>,
    name: String,
    page: Vec<u8>,
    in_page: usize,
    pages: u32,
    count: u64,
    fences: Vec<u64>,
    bloom: Bloom,
    /// Several pages are written per call to keep writes large on flash.
    out: Vec<u8>,
    last: Option<ShardId>,
}

/// Bytes of pages gathered before one write.
const WRITE_CHUNK: usize = 256 << 10;

impl RunWriter {
    /// Starts a run expected to hold about `expected` entries.
    pub fn new(
        file: Arc<dyn StorageFile>,
        name: String,
        expected: u64,
        bits_per_key: u32,
        seed: u64,
    ) -> RunWriter {
        RunWriter {
            file,
            name,
            page: vec![0u8; PAGE as usize],
            in_page: 0,
            pages: 0,
            count: 0,
            fences: Vec::new(),
            bloom: Bloom::new(expected, bits_per_key, seed),
            out: Vec::with_capacity(WRITE_CHUNK),
            last: None,
        }
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.name, e)
    }

    /// Adds the next entry (ids strictly increasing).
    pub fn add(&mut self, id: &ShardId, e: &Entry) -> Result<()> {
        assert!(
            self.last.is_none_or(|l| l < *id),
            "run entries out of order"
        );
        self.last = Some(*id);
        if self.in_page == 0 {
            self.fences.push(prefix(id));
        }
        let o = PAGE_HDR + self.in_page * ENTRY;
        encode_entry(&mut self.page[o..o + ENTRY], id, e);
        self.in_page += 1;
        self.count += 1;
        self.bloom.insert(id);
        if self.in_page == PER_PAGE {
            self.finish_page()?;
        }
        Ok(())
    }

    fn finish_page(&mut self) -> Result<()> {
        if self.in_page == 0 {
            return Ok(());
        }
        self.page[4..6].copy_from_slice(&(self.in_page as u16).to_le_bytes());
        self.page[6..8].copy_from_slice(&[0; 2]);
        let used = PAGE_HDR + self.in_page * ENTRY;
        self.page[used..].fill(0);
        let c = crc32c::crc32c(&self.page[4..]);
        self.page[0..4].copy_from_slice(&c.to_le_bytes());
        self.out.extend_from_slice(&self.page);
        self.pages += 1;
        self.in_page = 0;
        if self.out.len() >= WRITE_CHUNK {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let at = u64::from(self.pages) * PAGE - self.out.len() as u64;
        self.file.write_at(&self.out, at).map_err(|e| self.io(e))?;
        self.out.clear();
        Ok(())
    }

    /// Writes the meta block and footer and syncs the file.
    pub fn finish(mut self, id: u32) -> Result<Run> {
        self.finish_page()?;
        self.flush_out()?;
        let mut meta = Vec::with_capacity((self.bloom.words.len() + self.fences.len()) * 8);
        for w in &self.bloom.words {
            meta.extend_from_slice(&w.to_le_bytes());
        }
        for f in &self.fences {
            meta.extend_from_slice(&f.to_le_bytes());
        }
        let mut footer = [0u8; FOOTER];
        footer[0..8].copy_from_slice(RUN_MAGIC);
        footer[8..16].copy_from_slice(&self.count.to_le_bytes());
        footer[16..20].copy_from_slice(&self.pages.to_le_bytes());
        footer[20..24].copy_from_slice(&self.bloom.k.to_le_bytes());
        footer[24..28].copy_from_slice(&(self.bloom.words.len() as u32).to_le_bytes());
        footer[28..32].copy_from_slice(&crc32c::crc32c(&meta).to_le_bytes());
        let c = crc32c::crc32c(&footer[0..32]);
        footer[32..36].copy_from_slice(&c.to_le_bytes());
        meta.extend_from_slice(&footer);
        self.file
            .write_at(&meta, u64::from(self.pages) * PAGE)
            .map_err(|e| self.io(e))?;
        self.file.sync().map_err(|e| self.io(e))?;
        Ok(Run {
            id,
            name: self.name,
            file: self.file,
            count: self.count,
            fences: self.fences,
            bloom: self.bloom,
        })
    }
}

/// Walks a run's entries in id order, one page in RAM at a time.
pub struct RunCursor {
    run: Arc<Run>,
    next_page: u32,
    buf: std::collections::VecDeque<(ShardId, Entry)>,
}

impl RunCursor {
    /// A cursor at the first entry with id greater than `after`.
    pub fn new(run: Arc<Run>, after: Option<&ShardId>) -> Result<RunCursor> {
        let mut c = RunCursor {
            next_page: run.start_page(after),
            run,
            buf: Default::default(),
        };
        if let Some(a) = after {
            loop {
                match c.peek()? {
                    Some((id, _)) if id <= *a => {
                        c.buf.pop_front();
                    }
                    _ => break,
                }
            }
        }
        Ok(c)
    }

    /// The current entry without moving.
    pub fn peek(&mut self) -> Result<Option<(ShardId, Entry)>> {
        while self.buf.is_empty() && self.next_page < self.run.pages() {
            self.buf.extend(self.run.page(self.next_page)?);
            self.next_page += 1;
        }
        Ok(self.buf.front().copied())
    }

    /// Moves past the current entry.
    pub fn advance(&mut self) {
        self.buf.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;
    use crate::storage::Storage;

    #[test]
    fn bloom_false_positive_rate_is_near_its_design() {
        let mut b = Bloom::new(10_000, 12, 99);
        for i in 0..10_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            b.insert(&ShardId(blake(&id)));
        }
        let mut fp = 0;
        for i in 10_000..110_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            fp += b.may_contain(&ShardId(blake(&id))) as u32;
        }
        // 12 bits per key: about 0.3 % expected; 1 % would mean a broken hash.
        assert!(fp < 1_000, "{fp} false positives in 100000");
    }

    fn blake(x: &[u8; 32]) -> [u8; 32] {
        let mut r = crate::sim::SimRng::new(u64::from_le_bytes(x[..8].try_into().unwrap()));
        let mut o = [0u8; 32];
        r.fill(&mut o);
        o
    }

    #[test]
    fn run_round_trips_and_finds_every_entry() {
        let sim = SimStorage::new(1);
        let f = sim.create("r").unwrap();
        let mut ids: Vec<ShardId> = (0..1000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                ShardId(blake(&id))
            })
            .collect();
        // Equal 8-byte prefixes across a page boundary must still be found.
        for (i, id) in ids.iter_mut().enumerate().take(200).skip(60) {
            id.0[..8].copy_from_slice(&[0x55; 8]);
            id.0[31] = i as u8;
        }
        ids.sort();
        ids.dedup();
        let mut w = RunWriter::new(f.clone(), "r".into(), ids.len() as u64, 12, 5);
        for (i, id) in ids.iter().enumerate() {
            let e = Entry {
                seg: 1,
                off: i as u32,
                len: 9,
                owner: 0,
                expiry: u32::MAX,
                kind: KIND_PUT,
            };
            w.add(id, &e).unwrap();
        }
        w.finish(3).unwrap();
        let run = Arc::new(Run::open(3, "r".into(), f, 5).unwrap());
        assert_eq!(run.count, ids.len() as u64);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(run.get(id).unwrap().map(|e| e.off), Some(i as u32));
        }
        assert_eq!(run.get(&ShardId([0xff; 32])).unwrap(), None);
        let mut c = RunCursor::new(run.clone(), Some(&ids[100])).unwrap();
        let mut n = 0;
        while let Some((id, _)) = c.peek().unwrap() {
            assert!(id > ids[100]);
            n += 1;
            c.advance();
        }
        assert_eq!(n, ids.len() - 101);
    }
}
