//! The owner's files in the vault, for the Files page: a folder of a snapshot listed, a file
//! stored from an upload's body as it arrives, a file streamed out for a download. The vault's
//! calls block (Argon2 is done at login; here: sealing, erasure coding, the node's socket), so
//! the server runs them on its blocking pool and passes bytes through bounded channels:
//!
//! ```text
//! upload:   hyper body frames ─► channel (UPLOAD_QUEUE frames) ─► ChannelReader ─► Batch::add_file
//! download: FileReader ─► DOWNLOAD_PIECE bytes ─► channel (DOWNLOAD_QUEUE) ─► response body
//! folder:   FileReader per file ─► zip writer (stored, data descriptors) ─► same channel
//! ```
//!
//! A folder (or several files) is uploaded as one body, [`FILES_MEDIA`]: for each file a line
//! of JSON `{"path", "size", "mtime"}` (ms), then exactly `size` bytes. One body is one batch,
//! so the whole folder becomes one snapshot, and a body cut anywhere stores none of it.
//!
//! Memory: an upload holds its batch (about 20 MiB at its peak for a large file with one
//! worker, the vault's notes say) and at most [`UPLOAD_QUEUE`] frames of the connection; a
//! download one chunk of the file (≤ 5 MiB) and [`DOWNLOAD_QUEUE`] × [`DOWNLOAD_PIECE`]; a
//! folder's zip also its central directory (≈ 50 bytes + the name per file) and the tree.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use cairn_vault::manifest::{Entry, EntryKind, RootRecord, Tree};
use cairn_vault::progress::NoProgress;
use cairn_vault::{PutReport, Vault};
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc;

/// Frames of an upload's body waiting for the vault.
pub const UPLOAD_QUEUE: usize = 8;
/// Pieces of a download waiting for the connection.
pub const DOWNLOAD_QUEUE: usize = 4;
/// One piece of a download.
pub const DOWNLOAD_PIECE: usize = 64 * 1024;
/// Longest path accepted from a browser (bytes).
pub const PATH_BYTES_MAX: usize = 1024;
/// The media type of a many-file upload's body (see the module's notes).
pub const FILES_MEDIA: &str = "application/x-cairn-files";
/// Longest header line of one file in a many-file upload (a path and two numbers).
pub const FILE_HEADER_MAX: usize = 2 * PATH_BYTES_MAX;
/// Most files in one upload: each is an entry of the batch's tree, in memory until the commit.
pub const UPLOAD_FILES_MAX: usize = 20_000;

/// One entry of a folder's listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its name (the last component).
    pub name: String,
    /// Its path in the vault.
    pub path: String,
    /// A folder.
    pub dir: bool,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A folder of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Every snapshot, newest first.
    pub snapshots: Vec<RootRecord>,
    /// The snapshot shown (0: none yet).
    pub snapshot: u64,
    /// The folder (empty: the top).
    pub dir: String,
    /// Its folders first, then its files, each by name.
    pub items: Vec<Item>,
}

/// Checks a vault path from a browser: relative, `/`-separated, no empty, `.` or `..`
/// component, no control character or backslash, at most [`PATH_BYTES_MAX`]; the empty path is
/// the top folder only where `top_ok`.
pub fn check_path(path: &str, top_ok: bool) -> Result<String> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        if top_ok {
            return Ok(String::new());
        }
        bail!("a file needs a name");
    }
    if p.len() > PATH_BYTES_MAX {
        bail!("a path of at most {PATH_BYTES_MAX} bytes");
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        bail!("{p:?}: no control characters or backslashes in a name");
    }
    if !cairn_vault::manifest::valid_path(p.as_bytes()) {
        bail!("{p:?}: no empty, `.` or `..` parts in a path");
    }
    Ok(p.to_string())
}

/// The folder `dir` of snapshot `snapshot` (the latest when `None`).
pub fn list(vault: &Vault, snapshot: Option<u64>, dir: &str) -> Result<Listing> {
    let snapshots = vault.snapshots()?;
    let seq = snapshot.unwrap_or_else(|| snapshots.first().map_or(0, |r| r.seq));
    if seq != 0 && !snapshots.iter().any(|r| r.seq == seq) {
        bail!("there is no snapshot {seq}");
    }
    let tree = vault.tree(Some(seq))?;
    let prefix = folder_prefix(&tree, dir, seq)?;
    let mut items: Vec<Item> = tree
        .entries
        .iter()
        .filter_map(|e| {
            let path = String::from_utf8_lossy(&e.path).into_owned();
            let name = path.strip_prefix(&prefix)?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            Some(Item {
                name: name.to_string(),
                dir: matches!(e.kind, EntryKind::Dir),
                size: e.size,
                mtime: e.mtime,
                path: path.clone(),
            })
        })
        .collect();
    items.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
    Ok(Listing {
        snapshots,
        snapshot: seq,
        dir: dir.to_string(),
        items,
    })
}

/// What the paths in folder `dir` of `tree` (snapshot `seq`) start with; a folder that is not
/// there is an error.
fn folder_prefix(tree: &Tree, dir: &str, seq: u64) -> Result<String> {
    if dir.is_empty() {
        return Ok(String::new());
    }
    match tree.find(dir.as_bytes()).map(|i| &tree.entries[i].kind) {
        Some(EntryKind::Dir) => Ok(format!("{dir}/")),
        _ => bail!("{dir}: no such folder in snapshot {seq}"),
    }
}

/// Stores `body` as the file at `path` in a new snapshot; the body ending in an error (a cut
/// upload) stores nothing.
pub fn store(
    vault: &mut Vault,
    path: &str,
    body: impl Read,
    mtime: SystemTime,
) -> Result<PutReport> {
    let mut batch = vault.batch()?;
    batch.add_file(path, body, 0o644, mtime, &mut NoProgress)?;
    Ok(batch.commit()?)
}

/// One file's header line in a many-file upload.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHeader {
    path: String,
    size: u64,
    mtime: Option<u64>,
}

/// What a many-file upload stored.
#[derive(Debug)]
pub struct Stored {
    /// The snapshot written.
    pub report: PutReport,
    /// The files in it from this upload.
    pub files: usize,
    /// Whether any went into the owner's site's folder.
    pub site: bool,
}

/// Stores the files of a many-file upload's `body` (see the module's notes) under folder
/// `dir`, all in one new snapshot. Anything wrong — a malformed header, a bad path, a file
/// shorter than its header said, the body cut — stores nothing, and the error names the file.
pub fn store_many(vault: &mut Vault, dir: &str, body: impl Read) -> Result<Stored> {
    let mut body = BufReader::with_capacity(DOWNLOAD_PIECE, body);
    let mut batch = vault.batch()?;
    let (mut files, mut site) = (0, false);
    loop {
        let mut line = Vec::new();
        (&mut body)
            .take(FILE_HEADER_MAX as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            break;
        }
        if line.pop() != Some(b'\n') {
            bail!(
                "file {}: its header line is cut or longer than {FILE_HEADER_MAX} bytes",
                files + 1
            );
        }
        let h: FileHeader = serde_json::from_slice(&line)
            .map_err(|e| anyhow::anyhow!("file {}: a malformed header: {e}", files + 1))?;
        let rel = check_path(&h.path, false)?;
        let path = if dir.is_empty() {
            rel
        } else {
            check_path(&format!("{dir}/{rel}"), false)?
        };
        if files == UPLOAD_FILES_MAX {
            bail!("at most {UPLOAD_FILES_MAX} files in one upload");
        }
        let got = batch.add_file(
            &path,
            (&mut body).take(h.size),
            0o644,
            mtime_from_ms(h.mtime),
            &mut NoProgress,
        )?;
        if got != h.size {
            bail!(
                "{path}: the upload was cut after {got} of its {} bytes",
                h.size
            );
        }
        site |= path.starts_with(&format!("{}/", crate::site::VAULT_DIR));
        files += 1;
    }
    if files == 0 {
        bail!("the upload held no file");
    }
    Ok(Stored {
        report: batch.commit()?,
        files,
        site,
    })
}

/// The files (and folders) under folder `dir` of `snapshot` (the latest when `None`), for a
/// zip: each with its path relative to `dir`. A folder that is not there is an error.
pub fn folder(vault: &Vault, snapshot: Option<u64>, dir: &str) -> Result<Vec<(String, Entry)>> {
    let seq = match snapshot {
        Some(s) => s,
        None => vault.head()?,
    };
    if seq == 0 {
        bail!("nothing is stored yet");
    }
    let tree = vault.tree(Some(seq))?;
    let prefix = folder_prefix(&tree, dir, seq)?;
    Ok(tree
        .entries
        .into_iter()
        .filter_map(|e| {
            let path = String::from_utf8_lossy(&e.path).into_owned();
            let rel = path.strip_prefix(&prefix)?.to_string();
            (!rel.is_empty() && !matches!(e.kind, EntryKind::Symlink { .. })).then_some((rel, e))
        })
        .collect())
}

/// Writes `entries` (from [`folder`]) as a zip into `out` as it reads them: stored, not
/// deflated (the files come back from sealed chunks, mostly media already compressed, and a
/// plug's CPU is its slowest part), sizes and CRCs after each file (no seeking back), zip64
/// where a file or the whole passes 4 GiB. Stops quietly when the receiver goes away; an error
/// reading the vault goes down the channel, so the browser sees a broken download, not a
/// short zip that looks whole.
pub fn send_zip(vault: &Vault, entries: &[(String, Entry)], out: &mpsc::Sender<io::Result<Bytes>>) {
    let mut zip = rawzip::ZipArchiveWriter::new(ChannelWriter::new(out));
    let mut write = || -> io::Result<()> {
        for (rel, e) in entries {
            let time = rawzip::time::UtcDateTime::from_unix(e.mtime);
            if matches!(e.kind, EntryKind::Dir) {
                zip.new_dir(format!("{rel}/"))
                    .last_modified(time)
                    .unix_permissions(e.mode | 0o040000)
                    .create()
                    .map_err(io::Error::other)?;
                continue;
            }
            let mut r = vault.open_entry(e).map_err(io::Error::other)?;
            let (mut entry, config) = zip
                .new_file(rel.clone())
                .last_modified(time)
                .unix_permissions(e.mode | 0o100000)
                .start()
                .map_err(io::Error::other)?;
            let mut w = config.wrap(&mut entry);
            io::copy(&mut r, &mut w)?;
            let (_, descriptor) = w.finish().map_err(io::Error::other)?;
            entry.finish(descriptor).map_err(io::Error::other)?;
        }
        Ok(())
    };
    let written = write();
    let result = written.and_then(|()| {
        let mut w = zip.finish().map_err(io::Error::other)?;
        w.flush()
    });
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = out.blocking_send(Err(e));
        }
    }
}

/// A blocking writer into a download's channel, in pieces of [`DOWNLOAD_PIECE`]; the
/// receiver gone (the browser left) is a broken pipe.
struct ChannelWriter<'a> {
    out: &'a mpsc::Sender<io::Result<Bytes>>,
    piece: Vec<u8>,
}

impl<'a> ChannelWriter<'a> {
    fn new(out: &'a mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            out,
            piece: Vec::with_capacity(DOWNLOAD_PIECE),
        }
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(DOWNLOAD_PIECE - self.piece.len());
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == DOWNLOAD_PIECE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(DOWNLOAD_PIECE));
        self.out
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the browser left"))
    }
}

/// Streams the file at `path` of `snapshot` into `out`, piece by piece, until the receiver goes
/// away (the browser left) or the file ends; an error mid-way goes down the channel.
pub fn send(
    vault: &Vault,
    snapshot: Option<u64>,
    path: &str,
    first: impl FnOnce(u64),
    out: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<()> {
    let mut r = vault.open_file(snapshot, path)?;
    first(r.size());
    let mut buf = vec![0u8; DOWNLOAD_PIECE];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => {
                let _ = out.blocking_send(Err(e));
                return Ok(());
            }
        };
        if out
            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return Ok(());
        }
    }
}

/// A blocking reader over an upload's body frames, as the async side sends them.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    piece: Bytes,
}

impl ChannelReader {
    /// Reads what `rx` brings, until it closes (the end) or brings an error.
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            piece: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.piece = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        let _ = self.piece.split_to(n);
        Ok(n)
    }
}

/// A response body fed by a channel (a download).
pub struct Streamed(pub mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// A browser's modification time (milliseconds since the epoch), or now.
pub fn mtime_from_ms(ms: Option<u64>) -> SystemTime {
    ms.map_or_else(SystemTime::now, |ms| {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_a_browser_are_checked() {
        assert_eq!(check_path("/a/b.txt", false).unwrap(), "a/b.txt");
        assert_eq!(check_path("", true).unwrap(), "");
        assert!(check_path("", false).is_err());
        for bad in ["a/../b", "../x", "a//b", "./a", "a\\b", "a\u{0}b", "a\nb"] {
            assert!(check_path(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_path(&"a".repeat(PATH_BYTES_MAX + 1), false).is_err());
    }

    #[test]
    fn the_channel_reader_gives_the_bytes_then_the_end_or_the_error() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"hello "))).unwrap();
        tx.try_send(Ok(Bytes::from_static(b"world"))).unwrap();
        drop(tx);
        let mut s = String::new();
        ChannelReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"half"))).unwrap();
        tx.try_send(Err(io::Error::other("cut"))).unwrap();
        let e = ChannelReader::new(rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.to_string(), "cut");
    }
}
