//! A simulated medium for deterministic crash and fault tests, driven by a seed.
//!
//! Every file keeps its durable bytes (as of the last `sync`) apart from the writes since.
//! [`SimStorage::crash`] models a power cut: each unsynced write lands whole, is lost, or is
//! torn (a random subset of its 512-byte sectors lands, sometimes one sector as garbage), and
//! unsynced creations, renames and removals are either all kept or all lost. Bit flips and a
//! capacity limit (ENOSPC) are injected on demand. A failing seed replays exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

const SECTOR: usize = 512;

/// A small deterministic generator (SplitMix64) so a seed replays on every platform.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// Starts from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

struct SimFile {
    data: Mutex<FileData>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Bytes in use (sum of current file lengths), for the capacity limit.
    used: AtomicU64,
    /// Capacity in bytes; `u64::MAX` for unlimited.
    capacity: AtomicU64,
    /// Mutating operations left before the power goes out; negative for never.
    power_left: std::sync::atomic::AtomicI64,
}

impl Shared {
    /// Counts one mutating operation; fails once the power is out.
    fn tick(&self) -> io::Result<()> {
        let left = self.power_left.load(Ordering::SeqCst);
        if left < 0 {
            return Ok(());
        }
        if left == 0 {
            return Err(io::Error::other("power lost (simulated)"));
        }
        self.power_left.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Names {
    current: BTreeMap<String, Arc<SimFile>>,
    durable: BTreeMap<String, Arc<SimFile>>,
}

/// The simulated medium. Cloning shares it.
#[derive(Clone)]
pub struct SimStorage {
    names: Arc<Mutex<Names>>,
    shared: Arc<Shared>,
    rng: Arc<Mutex<SimRng>>,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStorage").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl SimStorage {
    /// An empty medium with unlimited capacity whose faults follow `seed`.
    pub fn new(seed: u64) -> SimStorage {
        let shared = Arc::new(Shared::default());
        shared.capacity.store(u64::MAX, Ordering::SeqCst);
        shared.power_left.store(-1, Ordering::SeqCst);
        SimStorage {
            names: Arc::new(Mutex::new(Names {
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
            })),
            shared,
            rng: Arc::new(Mutex::new(SimRng::new(seed))),
        }
    }

    /// Limits the bytes all files may use together; writes past it fail with ENOSPC after
    /// writing what fits (as a real disk does). `u64::MAX` removes the limit.
    pub fn set_capacity(&self, bytes: u64) {
        self.shared.capacity.store(bytes, Ordering::SeqCst);
    }

    /// Cuts the power after `ops` more mutating operations (writes, syncs, truncations,
    /// creations, renames, removals): from then on each fails with an I/O error, as the
    /// process would see just before dying. [`SimStorage::crash`] restores power.
    pub fn power_cut_after(&self, ops: u64) {
        self.shared.power_left.store(ops as i64, Ordering::SeqCst);
    }

    /// Bytes in use by all files.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Cuts the power: every handle opened before becomes detached (its later writes go
    /// nowhere), and the medium is left as a real one could be after the cut.
    pub fn crash(&self) {
        self.shared.power_left.store(-1, Ordering::SeqCst);
        let mut rng = lock(&self.rng);
        let mut names = lock(&self.names);
        let keep_dir_ops = rng.chance(50);
        let chosen = if keep_dir_ops {
            names.current.clone()
        } else {
            names.durable.clone()
        };
        let mut fresh = BTreeMap::new();
        let mut used = 0u64;
        for (name, f) in chosen {
            let d = lock(&f.data);
            let mut bytes = d.durable.clone();
            for op in &d.pending {
                match op {
                    Pending::SetLen(len) => {
                        if rng.chance(60) {
                            bytes.resize(*len as usize, 0);
                        }
                    }
                    Pending::Write(off, data) => {
                        let mode = rng.below(10);
                        if mode < 4 {
                            put_bytes(&mut bytes, *off, data);
                        } else if mode < 7 {
                            // Torn: a random subset of sectors lands.
                            let mut s = 0;
                            while s < data.len() {
                                let e = (s + SECTOR).min(data.len());
                                if rng.chance(50) {
                                    if rng.chance(5) {
                                        let mut junk = vec![0u8; e - s];
                                        rng.fill(&mut junk);
                                        put_bytes(&mut bytes, *off + s as u64, &junk);
                                    } else {
                                        put_bytes(&mut bytes, *off + s as u64, &data[s..e]);
                                    }
                                }
                                s = e;
                            }
                        }
                    }
                }
            }
            used += bytes.len() as u64;
            fresh.insert(
                name,
                Arc::new(SimFile {
                    data: Mutex::new(FileData {
                        current: bytes.clone(),
                        durable: bytes,
                        pending: Vec::new(),
                    }),
                    shared: self.shared.clone(),
                }),
            );
        }
        self.shared.used.store(used, Ordering::SeqCst);
        names.current = fresh.clone();
        names.durable = fresh;
    }

    /// Flips bit `bit` (0–7) of byte `offset` of file `name`, durably (media decay).
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        let names = lock(&self.names);
        let f = names.current.get(name).ok_or_else(|| not_found(name))?;
        let mut d = lock(&f.data);
        let o = offset as usize;
        if o >= d.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flip past end of file",
            ));
        }
        d.current[o] ^= 1 << (bit & 7);
        if o < d.durable.len() {
            d.durable[o] ^= 1 << (bit & 7);
        }
        Ok(())
    }

    /// Flips one random bit in a random file whose name starts with `prefix`; returns
    /// (file, offset) or `None` when no such non-empty file exists.
    pub fn flip_random_bit(&self, prefix: &str) -> Option<(String, u64)> {
        let candidates: Vec<(String, u64)> = {
            let names = lock(&self.names);
            names
                .current
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, f)| (n.clone(), lock(&f.data).current.len() as u64))
                .filter(|(_, l)| *l > 0)
                .collect()
        };
        if candidates.is_empty() {
            return None;
        }
        let (name, off, bit) = {
            let mut rng = lock(&self.rng);
            let (n, len) = &candidates[rng.below(candidates.len() as u64) as usize];
            (n.clone(), rng.below(*len), rng.below(8) as u8)
        };
        self.flip_bit(&name, off, bit).ok()?;
        Some((name, off))
    }

    /// Replaces the whole content of `name` (created if missing), durably: lets tests and
    /// fuzzers put arbitrary bytes where the store expects its own files.
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let f = Arc::new(SimFile {
            data: Mutex::new(FileData {
                current: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: Vec::new(),
            }),
            shared: self.shared.clone(),
        });
        let mut names = lock(&self.names);
        if let Some(old) = names.current.get(name) {
            let l = lock(&old.data).current.len() as u64;
            self.shared.used.fetch_sub(l, Ordering::SeqCst);
        }
        self.shared
            .used
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        names.current.insert(name.to_string(), f.clone());
        names.durable.insert(name.to_string(), f);
    }

    /// The current content of `name`, if it exists.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let names = lock(&self.names);
        names
            .current
            .get(name)
            .map(|f| lock(&f.data).current.clone())
    }
}

fn put_bytes(bytes: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if bytes.len() < off + data.len() {
        bytes.resize(off + data.len(), 0);
    }
    bytes[off..off + data.len()].copy_from_slice(data);
}

impl SimFile {
    fn grow_allowed(&self, old: usize, new: usize) -> usize {
        if new <= old {
            return new;
        }
        let cap = self.shared.capacity.load(Ordering::SeqCst);
        let used = self.shared.used.load(Ordering::SeqCst);
        let free = cap.saturating_sub(used) as usize;
        old + (new - old).min(free)
    }
    fn account(&self, old: usize, new: usize) {
        if new > old {
            self.shared
                .used
                .fetch_add((new - old) as u64, Ordering::SeqCst);
        } else {
            self.shared
                .used
                .fetch_sub((old - new) as u64, Ordering::SeqCst);
        }
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = lock(&self.data);
        let o = offset as usize;
        if o.checked_add(buf.len()).is_none_or(|e| e > d.current.len()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        buf.copy_from_slice(&d.current[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.shared.tick()?;
        let mut d = lock(&self.data);
        let old = d.current.len();
        let want = old.max(offset as usize + buf.len());
        let allowed = self.grow_allowed(old, want);
        let fits = if allowed < want {
            allowed.saturating_sub(offset as usize).min(buf.len())
        } else {
            buf.len()
        };
        let part = buf[..fits].to_vec();
        put_bytes(&mut d.current, offset, &part);
        let new = d.current.len();
        self.account(old, new);
        d.pending.push(Pending::Write(offset, part));
        if fits < buf.len() {
            return Err(enospc());
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.shared.tick()?;
        let mut d = lock(&self.data);
        d.durable = d.current.clone();
        d.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.shared.tick()?;
        let mut d = lock(&self.data);
        let old = d.current.len();
        let allowed = self.grow_allowed(old, len as usize);
        if allowed < len as usize {
            return Err(enospc());
        }
        d.current.resize(len as usize, 0);
        self.account(old, len as usize);
        d.pending.push(Pending::SetLen(len));
        Ok(())
    }
}

impl Storage for SimStorage {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let names = lock(&self.names);
        let f = names.current.get(name).ok_or_else(|| not_found(name))?;
        Ok(f.clone())
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.shared.tick()?;
        let mut names = lock(&self.names);
        if let Some(old) = names.current.get(name) {
            let l = lock(&old.data).current.len() as u64;
            self.shared.used.fetch_sub(l, Ordering::SeqCst);
        }
        let f = Arc::new(SimFile {
            data: Mutex::new(FileData {
                current: Vec::new(),
                durable: Vec::new(),
                pending: Vec::new(),
            }),
            shared: self.shared.clone(),
        });
        names.current.insert(name.to_string(), f.clone());
        Ok(f)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.shared.tick()?;
        let mut names = lock(&self.names);
        let f = names.current.remove(name).ok_or_else(|| not_found(name))?;
        let l = lock(&f.data).current.len() as u64;
        self.shared.used.fetch_sub(l, Ordering::SeqCst);
        Ok(())
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.shared.tick()?;
        let mut names = lock(&self.names);
        let f = names.current.remove(from).ok_or_else(|| not_found(from))?;
        if let Some(old) = names.current.insert(to.to_string(), f) {
            let l = lock(&old.data).current.len() as u64;
            self.shared.used.fetch_sub(l, Ordering::SeqCst);
        }
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.names).current.keys().cloned().collect())
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.shared.tick()?;
        let mut names = lock(&self.names);
        names.durable = names.current.clone();
        Ok(())
    }
    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}
