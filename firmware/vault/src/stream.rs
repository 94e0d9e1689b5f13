//! Files in and out of the vault as streams, without files on disk: what a web upload or
//! download needs.
//!
//! - [`Batch`] ([`Vault::batch`]): starts from the newest snapshot's tree; files come in from
//!   readers ([`Batch::add_file`]), folders are added and removed, and [`Batch::commit`]
//!   writes the result as one new snapshot. A batch dropped without a commit makes nothing
//!   visible: the shards it stored stay behind unreferenced (the next puts re-store such
//!   chunks as new, harmlessly).
//! - [`FileReader`] ([`Vault::open_file`], [`Vault::open_entry`]): a file's content as a
//!   [`Read`], one chunk at a time.
//!
//! A stream goes through the same chunk path as [`Vault::put`]: FastCDC with a forced cut every
//! 32 MiB, as `put` makes at its segment boundaries, so a file uploaded as a stream and the same
//! file put from disk have the same chunks (they dedup) unless the disk file has holes. The
//! calling thread reads and cuts; the vault's worker threads ([`Vault::set_workers`]) id, seal,
//! erasure-code and store the chunks, several at once.
//!
//! Memory of a batch, with W workers (W ≥ 1): W + 1 chunk buffers (≤ 5 MiB each: a sealed
//! largest chunk) and W scratches (parity and one framed shard, ≤ 6.3 MiB each for 4-of-8), all
//! kept from file to file until the batch ends — at most ≈ 27.6 MiB for W = 2, ≈ 16.3 MiB for
//! W = 1, ≈ 11.3 MiB for W = 0 (everything on the calling thread, slower); buffers are only
//! resident as far as chunks have filled them (chunks average 1 MiB). Plus the tree, ≈ 150 bytes
//! per entry and 48 per extent, and the dedup index, ≈ 48 bytes per stored chunk (as a put).
//! Measured (`scripts/bench vault`, 1 GiB, the batch's own peak RSS): 17 / 20 / 37 MiB for
//! W = 0 / 1 / 2 — past the bound for W = 2, as each worker thread gets its own malloc arena;
//! a service held to 32 MiB should call `set_workers(1)`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chunker::Chunker;
use crate::error::{corrupt, Result, VaultError};
use crate::keys::Kind;
use crate::manifest::{self, Entry, EntryKind, Extent, Tree};
use crate::progress::Progress;
use crate::store::{ChunkReader, ChunkWriter, Scratch};
use crate::vault::{chunk_capacity, now_secs, PutReport, Vault, SEGMENT};

/// Mode of the folders a batch creates.
const DIR_MODE: u32 = 0o755;

/// Changes to the newest snapshot, written as one new snapshot by [`Batch::commit`]; see the
/// module notes for its memory. Holds the vault exclusively (`&mut`) while it lives.
pub struct Batch<'v> {
    vault: &'v Vault,
    /// The snapshot the batch started from; the commit writes `base + 1`.
    base: u64,
    /// The tree being edited, by path (byte order, as in a manifest).
    entries: BTreeMap<Vec<u8>, Entry>,
    writer: ChunkWriter<'v>,
    chunker: Chunker,
    workers: usize,
    /// Free chunk buffers and worker scratches, reused from file to file.
    bufs: Vec<Vec<u8>>,
    scratches: Vec<Scratch>,
    carry: Vec<u8>,
    files: u64,
    bytes: u64,
    zero_bytes: u64,
    /// Why the batch cannot be committed any more (a shard store failed: the dedup index may
    /// then name a chunk that was not stored).
    broken: Option<String>,
}

impl Vault {
    /// Starts a batch of changes from the newest snapshot (see [`Batch`]). Loads that
    /// snapshot's tree and the dedup index.
    pub fn batch(&mut self) -> Result<Batch<'_>> {
        let vault: &Vault = self;
        let base = vault.latest_seq()?;
        let tree = vault.tree_at(base)?;
        let known = vault.known_chunks()?;
        let writer = ChunkWriter::new(
            &vault.keys,
            vault.config.aead,
            &vault.codec,
            vault.sink.as_ref(),
            known,
        );
        Ok(Batch {
            vault,
            base,
            entries: tree
                .entries
                .into_iter()
                .map(|e| (e.path.clone(), e))
                .collect(),
            writer,
            chunker: Chunker::new(vault.keys.chunker_seed()),
            workers: vault.workers,
            bufs: Vec::new(),
            scratches: Vec::new(),
            carry: Vec::new(),
            files: 0,
            bytes: 0,
            zero_bytes: 0,
            broken: None,
        })
    }

    /// Opens file `path` of snapshot `snapshot` (the latest when `None`) for reading.
    pub fn open_file(&self, snapshot: Option<u64>, path: &str) -> Result<FileReader<'_>> {
        let seq = match snapshot {
            Some(s) => s,
            None => self.head()?,
        };
        let p = checked_path(path)?;
        let tree = self.tree(Some(seq))?;
        let e = tree
            .find(p)
            .map(|i| &tree.entries[i])
            .ok_or_else(|| VaultError::Usage(format!("{path:?}: not in snapshot {seq}")))?;
        self.open_entry(e)
    }

    /// Opens the file `entry` of a tree got from [`Vault::tree`] (reading a whole folder needs
    /// the tree only once).
    pub fn open_entry(&self, entry: &Entry) -> Result<FileReader<'_>> {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        let EntryKind::File { extents } = &entry.kind else {
            return Err(VaultError::Usage(format!("{path:?}: not a file")));
        };
        Ok(FileReader {
            reader: self.reader(),
            path,
            size: entry.size,
            extents: extents.clone().into_iter(),
            chunk: Vec::new(),
            pos: 0,
            zeros: 0,
        })
    }
}

/// Checks a path given to the batch or to `open_file`.
fn checked_path(path: &str) -> Result<&[u8]> {
    if manifest::valid_path(path.as_bytes()) {
        Ok(path.as_bytes())
    } else {
        Err(VaultError::Usage(format!(
            "{path:?}: not a valid vault path (relative, `/`-separated, no empty, `.` or `..` \
             components, no NUL)"
        )))
    }
}

/// `t` as seconds and nanoseconds since the epoch (negative before it), as a manifest keeps it.
fn unix_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Reads at most [`SEGMENT`] bytes, then reports an end until `left` is reset: the chunker's
/// stream ends there, which forces the cut `put` makes between its segments.
struct Segments<'a> {
    inner: &'a mut dyn Read,
    left: u64,
    eof: bool,
}

impl Read for Segments<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            self.eof = true;
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// The next chunk of the stream into `buf`; `false` at its end.
fn next_chunk(
    chunker: &Chunker,
    src: &mut Segments<'_>,
    buf: &mut Vec<u8>,
    carry: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        if chunker.next_chunk(src, buf, carry)? {
            return Ok(true);
        }
        if src.eof {
            return Ok(false);
        }
        src.left = SEGMENT;
    }
}

/// A chunk back from a worker: its index in the file, its buffer, what storing it gave.
type Done = (usize, Vec<u8>, Result<Extent>);

impl Batch<'_> {
    /// The snapshot this batch started from (0: none); the commit writes the next one.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(VaultError::Usage(format!(
                "this batch cannot be committed after an earlier failure ({why}); start a new one"
            ))),
            None => Ok(()),
        }
    }

    /// Checks that every parent of `p` is a folder or absent.
    fn check_parents(&self, p: &[u8]) -> Result<()> {
        for (i, _) in p.iter().enumerate().filter(|(_, &b)| b == b'/') {
            if let Some(e) = self.entries.get(&p[..i]) {
                if !matches!(e.kind, EntryKind::Dir) {
                    return Err(VaultError::Usage(format!(
                        "{:?}: {:?} is not a folder",
                        lossy(p),
                        lossy(&p[..i])
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates the missing parents of `p` (checked by `check_parents`).
    fn make_parents(&mut self, p: &[u8], mtime: i64) {
        for (i, _) in p.iter().enumerate().filter(|(_, &b)| b == b'/') {
            self.entries
                .entry(p[..i].to_vec())
                .or_insert_with(|| dir_entry(p[..i].to_vec(), mtime));
        }
    }

    /// Whether anything is stored below `p`.
    fn has_children(&self, p: &[u8]) -> bool {
        // Children sort between `p/` and `p0` ('0' follows '/'), not always right after `p`.
        let (mut lo, mut hi) = (p.to_vec(), p.to_vec());
        lo.push(b'/');
        hi.push(b'0');
        self.entries.range(lo..hi).next().is_some()
    }

    /// Stores the content of `reader` as file `path` (replacing a file there; a folder there is
    /// refused), creating missing parent folders; `mode`'s permission bits and `mtime` are
    /// recorded. Returns the bytes read. `progress` advances by the bytes stored (starting and
    /// finishing it is the caller's: it may know the total of several files).
    ///
    /// The reader is read sequentially, a chunk (≤ 4 MiB) at a time. If it fails (a cut
    /// upload), the error names `path` and the batch goes on without this file; if storing a
    /// chunk fails, the batch can no longer be committed. Either way no snapshot is written.
    pub fn add_file(
        &mut self,
        path: &str,
        mut reader: impl Read,
        mode: u32,
        mtime: SystemTime,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        self.usable()?;
        let p = checked_path(path)?;
        self.check_parents(p)?;
        if self
            .entries
            .get(p)
            .is_some_and(|e| matches!(e.kind, EntryKind::Dir))
            || self.has_children(p)
        {
            return Err(VaultError::Usage(format!(
                "{path:?}: is a folder in the vault; remove it first"
            )));
        }
        let extents = self.stream(path, &mut reader, progress)?;
        let size: u64 = extents.iter().map(Extent::len).sum();
        let zero: u64 = extents
            .iter()
            .filter(|x| matches!(x, Extent::Zero { .. }))
            .map(Extent::len)
            .sum();
        let (mtime, mtime_nsec) = unix_time(mtime);
        self.make_parents(p, now_secs());
        self.entries.insert(
            p.to_vec(),
            Entry {
                path: p.to_vec(),
                mode: mode & 0o7777,
                mtime,
                mtime_nsec,
                size,
                kind: EntryKind::File { extents },
            },
        );
        self.files += 1;
        self.bytes += size;
        self.zero_bytes += zero;
        Ok(size)
    }

    /// Adds folder `path` (and its missing parents; mode 0755, modified now). A folder already
    /// there is kept as it is; a file there is refused.
    pub fn add_dir(&mut self, path: &str) -> Result<()> {
        self.usable()?;
        let p = checked_path(path)?;
        self.check_parents(p)?;
        match self.entries.get(p) {
            Some(e) if matches!(e.kind, EntryKind::Dir) => return Ok(()),
            Some(_) => {
                return Err(VaultError::Usage(format!(
                    "{path:?}: is a file in the vault, not a folder"
                )))
            }
            None => {}
        }
        let now = now_secs();
        self.make_parents(p, now);
        self.entries.insert(p.to_vec(), dir_entry(p.to_vec(), now));
        Ok(())
    }

    /// Removes `path`: a file or link, or a folder and everything in it. Returns the number of
    /// entries removed; a path not in the tree is an error.
    pub fn remove(&mut self, path: &str) -> Result<usize> {
        self.usable()?;
        let p = checked_path(path)?;
        let mut gone = usize::from(self.entries.remove(p).is_some());
        let (mut lo, mut hi) = (p.to_vec(), p.to_vec());
        lo.push(b'/');
        hi.push(b'0');
        let below: Vec<Vec<u8>> = self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect();
        gone += below.len();
        for k in below {
            self.entries.remove(&k);
        }
        if gone == 0 {
            return Err(VaultError::Usage(format!(
                "{path:?}: not in the vault (snapshot {})",
                self.base
            )));
        }
        Ok(gone)
    }

    /// Writes the batch as one new snapshot, durably (as a put: data and manifest shards, flush,
    /// root record, flush, chunk index, head).
    pub fn commit(self) -> Result<PutReport> {
        self.usable()?;
        let v = self.vault;
        let seq = self.base + 1;
        // The vault is locked while the batch lives, so only another device can have written
        // since; its snapshot must not be overwritten.
        if v.latest_seq()? != self.base {
            return Err(VaultError::Usage(format!(
                "snapshot {seq} was written by someone else while this batch was open; \
                 nothing committed"
            )));
        }
        let tree = Tree {
            entries: self.entries.into_values().collect(),
        };
        v.write_snapshot(&self.writer, &self.chunker, &tree, seq)?;
        let s = &self.writer.stats;
        Ok(PutReport {
            seq,
            files: self.files,
            bytes: self.bytes,
            stored_chunks: s.stored.load(Ordering::Relaxed),
            dedup_chunks: s.deduplicated.load(Ordering::Relaxed),
            zero_bytes: self.zero_bytes,
            shard_bytes: s.shard_bytes.load(Ordering::Relaxed),
        })
    }

    /// Chunks and stores `r`; returns its extents, neighbouring zero runs merged (as a put).
    ///
    /// The calling thread reads and cuts chunks into free buffers and hands them to the
    /// workers, which store them and hand the buffers back; with W + 1 buffers the reading of
    /// one chunk overlaps the storing of W others. Workers are started only for a stream of two
    /// chunks or more: small files are stored here, without threads.
    fn stream(
        &mut self,
        path: &str,
        r: &mut dyn Read,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Extent>> {
        let workers = self.workers;
        let cap = chunk_capacity(self.writer.codec_k());
        // Reserved, not touched: a buffer costs memory only as far as chunks fill it.
        while self.bufs.len() < workers + 1 {
            self.bufs.push(Vec::with_capacity(cap));
        }
        while self.scratches.len() < workers.max(1) {
            self.scratches.push(Scratch::default());
        }
        let Batch {
            writer,
            chunker,
            bufs,
            scratches,
            carry,
            broken,
            ..
        } = self;
        let writer: &ChunkWriter<'_> = writer;
        let chunker: &Chunker = chunker;
        let mut src = Segments {
            inner: r,
            left: SEGMENT,
            eof: false,
        };
        carry.clear();
        let mut slots: Vec<Option<Extent>> = Vec::new();
        let mut store_err: Option<VaultError> = None;
        let mut read_err: Option<io::Error> = None;

        std::thread::scope(|scope| {
            let (job_tx, job_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(workers);
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (done_tx, done_rx) = mpsc::channel::<Done>();
            let mut handles = Vec::new();
            // The first chunk waits here until a second one shows the stream needs workers.
            let mut held: Option<Vec<u8>> = None;
            let mut in_flight = 0usize;
            let mut settle = |(i, buf, r): Done,
                              bufs: &mut Vec<Vec<u8>>,
                              slots: &mut Vec<Option<Extent>>,
                              err: &mut Option<VaultError>| {
                match r {
                    Ok(x) => {
                        progress.advance(x.len());
                        slots[i] = Some(x);
                    }
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
                bufs.push(buf);
            };
            loop {
                let Some(mut buf) = bufs.pop() else {
                    // Every buffer is with a worker: wait for one.
                    match done_rx.recv() {
                        Ok(d) => {
                            in_flight -= 1;
                            settle(d, bufs, &mut slots, &mut store_err);
                            if store_err.is_some() {
                                break;
                            }
                            continue;
                        }
                        Err(_) => break,
                    }
                };
                match next_chunk(chunker, &mut src, &mut buf, carry) {
                    Ok(true) => {}
                    Ok(false) => {
                        bufs.push(buf);
                        break;
                    }
                    Err(e) => {
                        read_err = Some(e);
                        bufs.push(buf);
                        break;
                    }
                }
                let i = slots.len();
                slots.push(None);
                if workers == 0 {
                    let r = writer.store_data(&mut buf, &mut scratches[0]);
                    settle((i, buf, r), bufs, &mut slots, &mut store_err);
                } else if handles.is_empty() && held.is_none() {
                    held = Some(buf);
                } else {
                    if let Some(first) = held.take() {
                        for _ in 0..workers {
                            let mut scratch = scratches.pop().expect("a scratch per worker");
                            let (rx, tx) = (job_rx.clone(), done_tx.clone());
                            handles.push(scope.spawn(move || {
                                loop {
                                    let job = rx.lock().expect("job queue").recv();
                                    let Ok((i, mut buf)) = job else { break };
                                    let r = writer.store_data(&mut buf, &mut scratch);
                                    if tx.send((i, buf, r)).is_err() {
                                        break;
                                    }
                                }
                                scratch
                            }));
                        }
                        job_tx.send((0, first)).expect("workers alive");
                        in_flight += 1;
                    }
                    job_tx.send((i, buf)).expect("workers alive");
                    in_flight += 1;
                }
                while let Ok(d) = done_rx.try_recv() {
                    in_flight -= 1;
                    settle(d, bufs, &mut slots, &mut store_err);
                }
                if store_err.is_some() {
                    break;
                }
            }
            // A one-chunk stream: stored here, no threads started.
            if let Some(mut first) = held.take() {
                if read_err.is_none() {
                    let r = writer.store_data(&mut first, &mut scratches[0]);
                    settle((0, first, r), bufs, &mut slots, &mut store_err);
                } else {
                    bufs.push(first);
                }
            }
            drop(job_tx);
            drop(done_tx);
            while in_flight > 0 {
                let Ok(d) = done_rx.recv() else { break };
                in_flight -= 1;
                settle(d, bufs, &mut slots, &mut store_err);
            }
            for h in handles {
                scratches.push(h.join().expect("store worker"));
            }
        });

        if let Some(e) = store_err {
            *broken = Some(format!("{path:?}: {e}"));
            return Err(e);
        }
        if let Some(source) = read_err {
            return Err(VaultError::Io {
                path: PathBuf::from(path),
                source,
            });
        }
        let mut out: Vec<Extent> = Vec::with_capacity(slots.len());
        for x in slots {
            let x = x.ok_or_else(|| {
                VaultError::Usage(format!("{path:?}: a store worker ended early"))
            })?;
            match (out.last_mut(), &x) {
                (Some(Extent::Zero { len }), Extent::Zero { len: more }) => *len += more,
                _ => out.push(x),
            }
        }
        Ok(out)
    }
}

fn dir_entry(path: Vec<u8>, mtime: i64) -> Entry {
    Entry {
        path,
        mode: DIR_MODE,
        mtime,
        mtime_nsec: 0,
        size: 0,
        kind: EntryKind::Dir,
    }
}

/// A file's content, read chunk by chunk from the shards ([`Vault::open_file`]).
///
/// Memory: one chunk (≤ 4 MiB, 1 MiB on average) and, while it is fetched, its k shards and
/// the sealed chunk rebuilt from them: ≤ ≈ 10 MiB, ≈ 2.5 MiB on average. Zero runs (holes,
/// all-zero chunks) cost nothing. Chunks are fetched one after the other, none ahead (`get`
/// fetches 4 ahead: over a network backend this reader is slower).
///
/// A chunk whose shards cannot be read or verified fails the read with an
/// [`io::Error`] whose inner error is a [`FileReadError`] naming the file and the chunk
/// ([`FileReader::into_inner_error`] recovers it). Reading stops at the first error.
pub struct FileReader<'v> {
    reader: ChunkReader<'v>,
    path: String,
    size: u64,
    extents: std::vec::IntoIter<Extent>,
    chunk: Vec<u8>,
    pos: usize,
    /// Zero bytes left of the current zero run.
    zeros: u64,
}

/// Why a [`FileReader`] could not go on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileReadError {
    /// The file in the vault.
    pub path: String,
    /// What went wrong (e.g. [`VaultError::NotEnoughShards`] naming the chunk).
    #[source]
    pub source: VaultError,
}

impl FileReader<'_> {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's path in the vault.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Shards found missing and corrupt so far (redundancy degraded, data intact).
    pub fn shards_degraded(&self) -> (u64, u64) {
        let s = &self.reader.stats;
        (
            s.missing.load(Ordering::Relaxed),
            s.corrupt.load(Ordering::Relaxed),
        )
    }

    /// The vault error inside an error this reader returned, if it is one.
    pub fn into_inner_error(e: io::Error) -> Option<FileReadError> {
        e.into_inner()?.downcast::<FileReadError>().ok().map(|b| *b)
    }

    /// Moves to the next extent; `false` at the end.
    fn advance(&mut self) -> Result<bool> {
        let Some(x) = self.extents.next() else {
            return Ok(false);
        };
        match x {
            Extent::Data { id, len } => {
                // Drop the previous chunk first: one at a time.
                self.chunk = Vec::new();
                self.pos = 0;
                let f = self.reader.fetch(Kind::Data, &id)?;
                if f.data.len() != len as usize {
                    return Err(corrupt(
                        format!("chunk {id}"),
                        format!("is {} bytes, the manifest says {len}", f.data.len()),
                    ));
                }
                self.chunk = f.data;
            }
            Extent::Zero { len } => self.zeros = len,
        }
        Ok(true)
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.chunk.len() {
                let n = out.len().min(self.chunk.len() - self.pos);
                out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.zeros > 0 {
                let n = (out.len() as u64).min(self.zeros) as usize;
                out[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(source) => {
                    // Nothing more after a failure: the bytes would not line up.
                    self.extents = Vec::new().into_iter();
                    self.chunk = Vec::new();
                    return Err(io::Error::other(FileReadError {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
        }
    }
}
