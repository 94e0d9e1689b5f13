//! The vault without files on disk: batches of files from readers, files read back as streams,
//! and changing the passphrase.

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_vault::home::{Config, Target};
use cairn_vault::manifest::{EntryKind, Extent, Tree};
use cairn_vault::progress::{NoProgress, Progress};
use cairn_vault::{
    AeadKind, DirStore, FileReader, KdfParams, NoNode, ShardError, ShardId, ShardSink, Vault,
    VaultError,
};
use rand::{RngCore, SeedableRng};

const PASS: &[u8] = b"correct horse battery staple";
/// Cheap key derivation for tests.
const KDF: KdfParams = KdfParams {
    m_kib: 256,
    t: 1,
    p: 1,
};

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        Self { _t: t, root }
    }

    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    fn target(&self, i: usize) -> PathBuf {
        self.root.join(format!("stick{i}"))
    }

    /// A 2-of-4 vault over four directories.
    fn init(&self) -> Vault {
        let config = Config {
            k: 2,
            n: 4,
            aead: AeadKind::Aes256Gcm,
            targets: (0..4).map(|i| Target::Dir(self.target(i))).collect(),
        };
        Vault::init(&self.home(), config, PASS, KDF, &NoNode).unwrap()
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut b);
    b
}

/// Hands out at most 1000 bytes per read, like a network stream.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(1000);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Gives `ok` bytes of `data`, then fails: a cut upload.
struct CutAfter<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for CutAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "upload cut"));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

/// Counts the bytes it is told about.
#[derive(Default)]
struct Count(u64);

impl Progress for Count {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, b: u64) {
        self.0 += b;
    }
    fn finish(&mut self) {}
}

/// Reads a file back through `open_file` with reads of odd sizes.
fn read_back(v: &Vault, snapshot: Option<u64>, path: &str) -> Vec<u8> {
    let mut r = v.open_file(snapshot, path).unwrap();
    let mut out = Vec::with_capacity(r.size() as usize);
    let mut buf = vec![0u8; 65_537];
    let mut step = 1usize;
    loop {
        let want = step.min(buf.len());
        let n = r.read(&mut buf[..want]).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        step = step * 7 % 70_001 + 1;
    }
    assert_eq!(out.len() as u64, r.size(), "{path}");
    out
}

fn kinds(t: &Tree) -> Vec<(String, &'static str)> {
    t.entries
        .iter()
        .map(|e| {
            let k = match e.kind {
                EntryKind::Dir => "dir",
                EntryKind::File { .. } => "file",
                EntryKind::Symlink { .. } => "link",
            };
            (String::from_utf8_lossy(&e.path).into_owned(), k)
        })
        .collect()
}

fn extents(t: &Tree, path: &str) -> Vec<Extent> {
    let e = &t.entries[t.find(path.as_bytes()).expect(path)];
    match &e.kind {
        EntryKind::File { extents } => extents.clone(),
        _ => panic!("{path}: not a file"),
    }
}

#[test]
fn a_batch_of_files_and_folders_from_readers_round_trips_with_any_worker_count() {
    let big = random(13 << 20, 1); // ≈ 13 chunks
    let mut zeros = vec![0u8; 12 << 20]; // random, 10 MiB of zeros, random
    zeros[..1 << 20].copy_from_slice(&random(1 << 20, 2));
    zeros[11 << 20..].copy_from_slice(&random(1 << 20, 3));
    let small = b"hello from the browser".to_vec();
    let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    for workers in [0, 1, 2] {
        let s = Setup::new();
        let mut v = s.init();
        v.set_workers(workers);
        let mut b = v.batch().unwrap();
        assert_eq!(b.base(), 0);
        let mut count = Count::default();
        assert_eq!(
            b.add_file("docs/big.bin", Trickle(&big), 0o100644, mtime, &mut count)
                .unwrap(),
            big.len() as u64
        );
        b.add_file("docs/zeros.img", &zeros[..], 0o600, mtime, &mut count)
            .unwrap();
        b.add_file("a/b/c/small.txt", &small[..], 0o644, mtime, &mut count)
            .unwrap();
        b.add_file("empty", io::empty(), 0o644, mtime, &mut count)
            .unwrap();
        b.add_dir("empty-folder/inner").unwrap();
        b.add_dir("docs").unwrap(); // already there (implicitly): kept
        assert_eq!(count.0, (big.len() + zeros.len() + small.len()) as u64);
        let report = b.commit().unwrap();
        assert_eq!(report.seq, 1);
        assert_eq!(report.files, 4);
        assert_eq!(report.bytes, (big.len() + zeros.len() + small.len()) as u64);
        assert!(report.zero_bytes >= 4 << 20, "{report:?}");

        assert_eq!(v.snapshots().unwrap().len(), 1);
        let t = v.tree(None).unwrap();
        assert_eq!(
            kinds(&t),
            [
                ("a", "dir"),
                ("a/b", "dir"),
                ("a/b/c", "dir"),
                ("a/b/c/small.txt", "file"),
                ("docs", "dir"),
                ("docs/big.bin", "file"),
                ("docs/zeros.img", "file"),
                ("empty", "file"),
                ("empty-folder", "dir"),
                ("empty-folder/inner", "dir"),
            ]
            .map(|(p, k)| (p.to_string(), k))
        );
        let e = &t.entries[t.find(b"docs/big.bin").unwrap()];
        assert_eq!(
            (e.mode, e.mtime, e.mtime_nsec),
            (0o644, 1_700_000_000, 123_456_789)
        );
        assert_eq!(t.entries[t.find(b"docs/zeros.img").unwrap()].mode, 0o600);
        assert!(
            extents(&t, "docs/big.bin").len() > 5,
            "several chunks: {workers} workers"
        );
        assert!(extents(&t, "docs/zeros.img")
            .iter()
            .any(|x| matches!(x, Extent::Zero { len } if *len >= 4 << 20)));

        assert_eq!(
            read_back(&v, None, "docs/big.bin"),
            big,
            "{workers} workers"
        );
        assert_eq!(read_back(&v, Some(1), "docs/zeros.img"), zeros);
        assert_eq!(read_back(&v, None, "a/b/c/small.txt"), small);
        assert!(read_back(&v, None, "empty").is_empty());
        // A whole folder from one tree, as a zip download would read it.
        for e in t.subtree(b"docs") {
            if let EntryKind::File { .. } = e.kind {
                let mut got = Vec::new();
                v.open_entry(e).unwrap().read_to_end(&mut got).unwrap();
                assert_eq!(got.len() as u64, e.size);
            }
        }
        // `get` agrees with the stream.
        let out = s.root.join("out");
        v.get(None, "docs", &out, &mut NoProgress).unwrap();
        assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
        assert_eq!(fs::read(out.join("zeros.img")).unwrap(), zeros);
    }
}

#[test]
fn a_later_batch_keeps_the_rest_and_replaces_what_it_adds() {
    let s = Setup::new();
    let mut v = s.init();
    let mut b = v.batch().unwrap();
    let t0 = SystemTime::now();
    b.add_file("notes/a.txt", &b"one"[..], 0o644, t0, &mut NoProgress)
        .unwrap();
    b.add_file("notes/b.txt", &b"two"[..], 0o644, t0, &mut NoProgress)
        .unwrap();
    b.commit().unwrap();
    let mut b = v.batch().unwrap();
    assert_eq!(b.base(), 1);
    b.add_file("notes/a.txt", &b"ONE!"[..], 0o644, t0, &mut NoProgress)
        .unwrap();
    assert_eq!(b.commit().unwrap().seq, 2);
    assert_eq!(read_back(&v, None, "notes/a.txt"), b"ONE!");
    assert_eq!(read_back(&v, None, "notes/b.txt"), b"two");
    assert_eq!(read_back(&v, Some(1), "notes/a.txt"), b"one");
}

#[test]
fn a_reader_failing_midway_leaves_the_snapshots_unchanged() {
    let s = Setup::new();
    let mut v = s.init();
    v.set_workers(2);
    let data = random(9 << 20, 4);
    let mut b = v.batch().unwrap();
    b.add_file(
        "keep.bin",
        &data[..1 << 20],
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap();
    b.commit().unwrap();
    let before = v.snapshots().unwrap();

    // Cut after several chunks (workers busy) and after a few bytes (first chunk held).
    for ok in [6 << 20, 1000] {
        let mut b = v.batch().unwrap();
        b.add_file(
            "other.txt",
            &b"fine"[..],
            0o644,
            SystemTime::now(),
            &mut NoProgress,
        )
        .unwrap();
        let e = b
            .add_file(
                "uploads/cut.bin",
                CutAfter { data: &data, ok },
                0o644,
                SystemTime::now(),
                &mut NoProgress,
            )
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("uploads/cut.bin") && m.contains("upload cut"),
            "{m}"
        );
        assert!(matches!(e, VaultError::Io { .. }), "{e:?}");
        drop(b);
        assert_eq!(v.snapshots().unwrap(), before);
        assert_eq!(v.head().unwrap(), 1);
        assert!(v.tree(None).unwrap().find(b"other.txt").is_none());
    }

    // The batch stays usable after a cut: the other files commit, the cut one is absent.
    let mut b = v.batch().unwrap();
    b.add_file(
        "other.txt",
        &b"fine"[..],
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap();
    b.add_file(
        "uploads/cut.bin",
        CutAfter {
            data: &data,
            ok: 5 << 20,
        },
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap_err();
    b.commit().unwrap();
    let t = v.tree(None).unwrap();
    assert!(t.find(b"uploads/cut.bin").is_none() && t.find(b"uploads").is_none());
    assert_eq!(read_back(&v, None, "other.txt"), b"fine");
    assert_eq!(read_back(&v, None, "keep.bin"), data[..1 << 20]);
}

#[test]
fn invalid_paths_are_refused_with_the_path_named() {
    let s = Setup::new();
    let mut v = s.init();
    let mut b = v.batch().unwrap();
    let now = SystemTime::now();
    for bad in [
        "../etc/passwd",
        "/abs",
        "a//b",
        "a/",
        "",
        "a/./b",
        "a/../b",
        "nul\0byte",
        ".",
    ] {
        let quoted = format!("{bad:?}");
        for e in [
            b.add_file(bad, &b"x"[..], 0o644, now, &mut NoProgress)
                .map(|_| ())
                .unwrap_err(),
            b.add_dir(bad).unwrap_err(),
            b.remove(bad).map(|_| ()).unwrap_err(),
        ] {
            let m = e.to_string();
            assert!(
                m.contains(&quoted) && m.contains("not a valid vault path"),
                "{bad:?}: {m}"
            );
        }
    }
    // A file where a folder is, and a folder where a file is.
    b.add_file("f", &b"x"[..], 0o644, now, &mut NoProgress)
        .unwrap();
    b.add_dir("d").unwrap();
    let m = b
        .add_file("f/child", &b"x"[..], 0o644, now, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("\"f/child\"") && m.contains("\"f\" is not a folder"),
        "{m}"
    );
    let m = b
        .add_file("d", &b"x"[..], 0o644, now, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(m.contains("\"d\"") && m.contains("is a folder"), "{m}");
    let m = b.add_dir("f").unwrap_err().to_string();
    assert!(m.contains("\"f\"") && m.contains("is a file"), "{m}");
    let m = b.remove("nothing/here").unwrap_err().to_string();
    assert!(
        m.contains("\"nothing/here\"") && m.contains("not in the vault"),
        "{m}"
    );
    b.commit().unwrap();
    assert_eq!(kinds(&v.tree(None).unwrap()).len(), 2);
    for bad in ["../f", "/f", "f/", "f//x", "f\0"] {
        let m = v.open_file(None, bad).map(|_| ()).unwrap_err().to_string();
        assert!(
            m.contains(&format!("{bad:?}: not a valid vault path")),
            "{m}"
        );
    }
}

#[test]
fn removing_a_folder_removes_everything_below_it_and_nothing_else() {
    let s = Setup::new();
    let dir = s.root.join("src");
    fs::create_dir_all(dir.join("photos/2024/june")).unwrap();
    fs::write(dir.join("photos/2024/june/a.jpg"), random(5000, 5)).unwrap();
    fs::write(dir.join("photos/2024/b.jpg"), random(5000, 6)).unwrap();
    fs::write(dir.join("photos.txt"), b"sorts between photos and photos/").unwrap();
    fs::write(dir.join("photos-old"), b"also").unwrap();
    let mut v = s.init();
    v.put(&[&dir], &mut NoProgress).unwrap();
    let mut b = v.batch().unwrap();
    assert_eq!(b.remove("src/photos").unwrap(), 5);
    assert_eq!(b.remove("src/photos-old").unwrap(), 1);
    let m = b.remove("src/photos/2024").unwrap_err().to_string();
    assert!(m.contains("not in the vault"), "{m}");
    b.commit().unwrap();
    assert_eq!(
        kinds(&v.tree(None).unwrap()),
        [("src", "dir"), ("src/photos.txt", "file")].map(|(p, k)| (p.to_string(), k))
    );
    // The earlier snapshot still has them.
    assert_eq!(
        read_back(&v, Some(1), "src/photos/2024/b.jpg"),
        random(5000, 6)
    );
    let m = v
        .open_file(None, "src/photos/2024/b.jpg")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(m.contains("not in snapshot 2"), "{m}");
}

#[test]
fn a_batch_dedups_against_files_put_from_disk_and_reads_their_holes() {
    let s = Setup::new();
    let dir = s.root.join("disk");
    fs::create_dir_all(&dir).unwrap();
    // Over one 32 MiB segment, so the batch must cut where put cuts to share every chunk.
    let data = random(40 << 20, 7);
    fs::write(dir.join("movie.mkv"), &data).unwrap();
    // A sparse file: data, a 20 MiB hole, data.
    let sparse = dir.join("sparse.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&sparse).unwrap();
        f.write_all(&data[..300_000]).unwrap();
        f.seek(SeekFrom::Start(20 << 20)).unwrap();
        f.write_all(&data[..5000]).unwrap();
    }
    let mut v = s.init();
    v.set_workers(2);
    v.put(&[&dir], &mut NoProgress).unwrap();

    let mut b = v.batch().unwrap();
    b.add_file(
        "upload/movie.mkv",
        Trickle(&data),
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap();
    let report = b.commit().unwrap();
    let t = v.tree(None).unwrap();
    let put_extents = extents(&t, "disk/movie.mkv");
    assert_eq!(extents(&t, "upload/movie.mkv"), put_extents);
    assert!(put_extents.len() > 20, "{}", put_extents.len());
    // Every data chunk deduplicated: only the new manifest's one chunk was stored.
    assert_eq!(report.dedup_chunks, put_extents.len() as u64, "{report:?}");
    assert_eq!(report.stored_chunks, 1, "{report:?}");

    // Holes and data read back through the stream.
    let mut want = vec![0u8; (20 << 20) + 5000];
    want[..300_000].copy_from_slice(&data[..300_000]);
    want[20 << 20..].copy_from_slice(&data[..5000]);
    assert!(extents(&t, "disk/sparse.img")
        .iter()
        .any(|x| matches!(x, Extent::Zero { .. })));
    assert_eq!(read_back(&v, None, "disk/sparse.img"), want);
}

#[test]
fn open_file_errors_name_the_file_and_what_is_wrong() {
    let s = Setup::new();
    let mut v = s.init();
    let data = random(3 << 20, 8);
    let mut b = v.batch().unwrap();
    b.add_file(
        "dir/f.bin",
        &data[..],
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap();
    b.commit().unwrap();
    let m = v
        .open_file(None, "dir")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(m.contains("\"dir\": not a file"), "{m}");
    let m = v
        .open_file(None, "nope")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(m.contains("\"nope\": not in snapshot 1"), "{m}");
    let m = v
        .open_file(Some(9), "dir/f.bin")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(m.contains("no snapshot 9"), "{m}");

    // Lose three of the four shards (k = 2) of the file's chunks: one target survives.
    let t = v.tree(None).unwrap();
    let ids: Vec<String> = extents(&t, "dir/f.bin")
        .iter()
        .filter_map(|x| match x {
            Extent::Data { id, .. } => Some(id.to_string()),
            Extent::Zero { .. } => None,
        })
        .collect();
    assert!(!ids.is_empty());
    let mut removed = 0;
    for i in 0..3 {
        for f in walk_files(&s.target(i)) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                fs::remove_file(&f).unwrap();
                removed += 1;
            }
        }
    }
    assert!(removed >= 3 * ids.len(), "{removed} shard files removed");
    let mut r = v.open_file(None, "dir/f.bin").unwrap();
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with("dir/f.bin: chunk ") && m.contains("shards"),
        "{m}"
    );
    let inner = FileReader::into_inner_error(e).expect("a FileReadError inside");
    assert_eq!(inner.path, "dir/f.bin");
    assert!(
        matches!(
            inner.source,
            VaultError::NotEnoughShards { found: 1, k: 2, .. }
        ),
        "{:?}",
        inner.source
    );
    // Nothing more after the failure.
    assert_eq!(r.read(&mut [0u8; 16]).unwrap(), 0);
}

fn walk_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn change_passphrase_refuses_the_old_one_and_opens_with_the_new_one() {
    let s = Setup::new();
    let mut v = s.init();
    let mut b = v.batch().unwrap();
    b.add_file(
        "a.txt",
        &b"kept across"[..],
        0o644,
        SystemTime::now(),
        &mut NoProgress,
    )
    .unwrap();
    b.commit().unwrap();
    let secret = v.secret().clone();

    // Refused without touching the key file: empty, or costs the reader would refuse.
    let m = v.change_passphrase(b"", KDF).unwrap_err().to_string();
    assert!(m.contains("must not be empty"), "{m}");
    let huge = KdfParams {
        m_kib: 4 << 20,
        t: 1,
        p: 1,
    };
    let m = v.change_passphrase(b"new", huge).unwrap_err().to_string();
    assert!(m.contains("out of range"), "{m}");
    let bad = KdfParams {
        m_kib: 256,
        t: 0,
        p: 1,
    };
    v.change_passphrase(b"new", bad).unwrap_err();
    drop(v);
    drop(Vault::open(&s.home(), PASS, &NoNode).unwrap());

    let mut v = Vault::open(&s.home(), PASS, &NoNode).unwrap();
    v.change_passphrase(b"a new passphrase", KDF).unwrap();
    drop(v);
    let e = Vault::open(&s.home(), PASS, &NoNode)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, VaultError::WrongPassphrase(_)), "{e:?}");
    let v = Vault::open(&s.home(), b"a new passphrase", &NoNode).unwrap();
    assert_eq!(v.secret(), &secret);
    assert_eq!(read_back(&v, None, "a.txt"), b"kept across");
    // No temporary file left beside the key.
    let names: Vec<String> = fs::read_dir(s.home())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("tmp") && !n.starts_with('.')),
        "{names:?}"
    );
}

#[test]
fn a_batch_starts_from_a_snapshot_the_home_did_not_record() {
    // As after a crash between writing snapshot 2's root and recording it in HOME/head.
    let s = Setup::new();
    let mut v = s.init();
    for (i, text) in [&b"first"[..], b"second"].iter().enumerate() {
        let mut b = v.batch().unwrap();
        b.add_file(
            &format!("f{i}"),
            *text,
            0o644,
            SystemTime::now(),
            &mut NoProgress,
        )
        .unwrap();
        b.commit().unwrap();
    }
    drop(v);
    fs::write(s.home().join("head"), "seq = 1\n").unwrap();
    let mut v = Vault::open(&s.home(), PASS, &NoNode).unwrap();
    let b = v.batch().unwrap();
    assert_eq!(b.base(), 2);
    assert_eq!(b.commit().unwrap().seq, 3);
    assert_eq!(read_back(&v, None, "f1"), b"second");
    assert_eq!(read_back(&v, None, "f0"), b"first");
}

/// Stores `left` shards, then fails every put.
struct Failing {
    inner: DirStore,
    left: AtomicI64,
}

impl ShardSink for Failing {
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(ShardError::Failed {
                id: *id,
                place: "stick2".into(),
                reason: "I/O error".into(),
            });
        }
        self.inner.put_shard(id, shard)
    }
}

#[test]
fn a_failing_store_fails_the_file_and_the_batch_cannot_be_committed() {
    let s = Setup::new();
    let mut v = s.init();
    v.set_workers(2);
    let mut b = v.batch().unwrap();
    b.add_file("old", &b"x"[..], 0o644, SystemTime::now(), &mut NoProgress)
        .unwrap();
    b.commit().unwrap();
    let before = v.snapshots().unwrap();
    let targets: Vec<PathBuf> = (0..4).map(|i| s.target(i)).collect();
    let store = Arc::new(DirStore::new(targets.clone()));
    v.set_backend(
        Arc::new(Failing {
            inner: DirStore::new(targets),
            left: 10.into(),
        }),
        store,
    );
    let data = random(12 << 20, 9);
    let mut b = v.batch().unwrap();
    let m = b
        .add_file("big", &data[..], 0o644, SystemTime::now(), &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(m.contains("stick2") && m.contains("I/O error"), "{m}");
    // Its dedup index may now name a chunk that was not stored: nothing more goes in.
    let m = b
        .add_file(
            "small",
            &b"y"[..],
            0o644,
            SystemTime::now(),
            &mut NoProgress,
        )
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("earlier failure") && m.contains("\"big\""),
        "{m}"
    );
    let m = b.commit().unwrap_err().to_string();
    assert!(m.contains("earlier failure"), "{m}");
    assert_eq!(v.snapshots().unwrap(), before);
}
