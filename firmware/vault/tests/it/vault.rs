//! End-to-end tests of the vault: round trips, dedup, shard loss and corruption, restore on a
//! new device, snapshots, and the clear errors for bad input.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_vault::home::{Config, Target};
use cairn_vault::progress::NoProgress;
use cairn_vault::{
    AeadKind, DirStore, KdfParams, NoNode, OwnerSecret, RootCapability, ShardError, ShardId,
    ShardSink, ShardSource, Vault,
};
use rand::{Rng, RngCore, SeedableRng};

const PASS: &[u8] = b"correct horse battery staple";
/// Cheap key derivation for tests (the format stores the parameters; the CLI uses the defaults).
const KDF: KdfParams = KdfParams {
    m_kib: 256,
    t: 1,
    p: 1,
};

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    targets: Vec<PathBuf>,
}

impl Setup {
    fn new(n: usize) -> Self {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let targets = (0..n).map(|i| root.join(format!("stick{i}"))).collect();
        Self {
            _t: t,
            root,
            targets,
        }
    }

    fn config(&self, k: usize, aead: AeadKind) -> Config {
        Config {
            k,
            n: self.targets.len(),
            aead,
            targets: self
                .targets
                .iter()
                .map(|p| Target::Dir(p.clone()))
                .collect(),
        }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// A random tree: empty and 0-byte files, multi-chunk files, deep paths, unicode names, a
/// symlink, assorted modes.
fn random_tree(dir: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    fs::write(dir.join("zero-bytes"), b"").unwrap();
    let deep: PathBuf = (0..12).map(|i| format!("d{i}")).collect();
    fs::create_dir_all(dir.join(&deep)).unwrap();
    fs::write(dir.join(&deep).join("leaf.txt"), b"deep down").unwrap();
    for name in [
        "日本語のファイル.txt",
        "émigré café",
        "space name",
        "ünï/cödé",
    ] {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut b = vec![0u8; rng.gen_range(1..20_000)];
        rng.fill_bytes(&mut b);
        fs::write(p, b).unwrap();
    }
    for i in 0..5 {
        let mut b = vec![0u8; rng.gen_range(0..3_500_000)];
        rng.fill_bytes(&mut b);
        fs::write(dir.join(format!("blob{i}.bin")), b).unwrap();
    }
    // A file with a run of zeros in the middle, longer than two largest chunks, so at least
    // one chunk is all zeros (kept as a zero run).
    let mut b = vec![0u8; 14 << 20];
    rng.fill_bytes(&mut b[..1 << 20]);
    rng.fill_bytes(&mut b[13 << 20..]);
    fs::write(dir.join("zeros-inside"), b).unwrap();
    std::os::unix::fs::symlink("blob0.bin", dir.join("link")).unwrap();
    // A name that is not UTF-8 (Linux names are bytes).
    let raw = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"raw\xffname");
    fs::write(dir.join(raw), b"bytes").unwrap();
    fs::set_permissions(dir.join("blob1.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir.join("zero-bytes"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Everything a user would compare: kind, mode, size, mtime, content or link target.
fn snapshot_of(dir: &Path) -> BTreeMap<PathBuf, (String, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    fn go(base: &Path, p: &Path, out: &mut BTreeMap<PathBuf, (String, u32, i64, Vec<u8>)>) {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        if md.is_dir() {
            out.insert(rel, ("dir".into(), md.mode() & 0o7777, 0, Vec::new()));
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for c in names {
                go(base, &c, out);
            }
        } else if md.file_type().is_symlink() {
            let t = fs::read_link(p).unwrap();
            out.insert(
                rel,
                ("link".into(), 0, 0, t.into_os_string().into_encoded_bytes()),
            );
        } else {
            let content = fs::read(p).unwrap();
            out.insert(
                rel,
                ("file".into(), md.mode() & 0o7777, md.mtime(), content),
            );
        }
    }
    go(dir, dir, &mut out);
    out
}

fn init(s: &Setup, k: usize, aead: AeadKind) -> Vault {
    Vault::init(&s.p("home"), s.config(k, aead), PASS, KDF, &NoNode).unwrap()
}

#[test]
fn random_trees_round_trip_with_both_aeads_and_any_worker_count() {
    for (seed, aead, workers) in [
        (1, AeadKind::ChaCha20Poly1305, 0),
        (2, AeadKind::Aes256Gcm, 2),
        (3, AeadKind::ChaCha20Poly1305, 4),
    ] {
        let s = Setup::new(8);
        let src = s.p("src");
        random_tree(&src, seed);
        let mut v = init(&s, 4, aead);
        v.set_workers(workers);
        let r = v.put(&[&src], &mut NoProgress).unwrap();
        assert_eq!(r.seq, 1);
        assert_eq!(r.files, 13);
        assert!(r.zero_bytes >= 4 << 20, "zero run not detected: {r:?}");
        // About n/k = 2× the data in shards, plus padding.
        assert!(r.shard_bytes < r.bytes * 3, "{r:?}");
        let dest = s.p("out");
        let g = v.get(None, "src", &dest, &mut NoProgress).unwrap();
        assert_eq!(g.files, 13);
        assert_eq!((g.shards_missing, g.shards_corrupt), (0, 0));
        assert_eq!(snapshot_of(&dest), snapshot_of(&src), "seed {seed}");
        // A single file, into an existing directory.
        let one = s.p("one");
        fs::create_dir(&one).unwrap();
        v.get(None, "src/ünï/cödé", &one, &mut NoProgress).unwrap();
        assert_eq!(
            fs::read(one.join("cödé")).unwrap(),
            fs::read(src.join("ünï/cödé")).unwrap()
        );
        // Getting again does not overwrite what is there.
        let e = v.get(None, "src/blob0.bin", &one.join("cödé"), &mut NoProgress);
        assert!(e.unwrap_err().to_string().contains("already exists"));
        let e = v.get(None, "nope", &one, &mut NoProgress).unwrap_err();
        assert!(e.to_string().contains("nope: not in the vault"), "{e}");
    }
}

#[test]
fn sparse_10_gib_file_round_trips_cheaply() {
    let s = Setup::new(4);
    let src = s.p("big");
    fs::create_dir(&src).unwrap();
    let file = src.join("disk.img");
    let size: u64 = 10 << 30;
    let mut islands = Vec::new();
    {
        let mut f = fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        for off in [0u64, 5 << 30, size - (1 << 20)] {
            let mut b = vec![0u8; 1 << 20];
            rng.fill_bytes(&mut b);
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&b).unwrap();
            islands.push((off, b));
        }
    }
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    let r = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r.bytes, size);
    assert!(r.zero_bytes >= size - (3 << 20) - (2 << 20), "{r:?}");
    assert!(r.shard_bytes < 64 << 20, "holes were stored: {r:?}");
    let dest = s.p("restored");
    v.get(None, "big", &dest, &mut NoProgress).unwrap();
    let out = dest.join("disk.img");
    let md = fs::metadata(&out).unwrap();
    assert_eq!(md.len(), size);
    // Restored sparse: the holes take no blocks.
    assert!(md.blocks() * 512 < 64 << 20, "{} blocks", md.blocks());
    let mut f = fs::File::open(&out).unwrap();
    for (off, b) in &islands {
        let mut got = vec![0u8; b.len()];
        f.seek(SeekFrom::Start(*off)).unwrap();
        std::io::Read::read_exact(&mut f, &mut got).unwrap();
        assert!(got == *b, "island at {off} differs");
    }
    // A probe inside a hole reads zeros.
    let mut got = vec![1u8; 4096];
    f.seek(SeekFrom::Start(3 << 30)).unwrap();
    std::io::Read::read_exact(&mut f, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0));
}

#[test]
fn identical_content_is_stored_once() {
    let s = Setup::new(3);
    let src = s.p("d");
    fs::create_dir(&src).unwrap();
    let mut b = vec![0u8; 5 << 20];
    rand::rngs::StdRng::seed_from_u64(4).fill_bytes(&mut b);
    fs::write(src.join("a"), &b).unwrap();
    fs::write(src.join("copy-of-a"), &b).unwrap();
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    let r1 = v.put(&[&src], &mut NoProgress).unwrap();
    assert!(
        r1.dedup_chunks >= 2 && r1.dedup_chunks * 2 >= r1.stored_chunks,
        "{r1:?}"
    );
    // The same tree again: no data chunk stored twice, and the unchanged manifest neither.
    let r2 = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r2.seq, 2);
    assert_eq!(r2.stored_chunks, 0, "{r2:?}");
    // An edit in the middle of a large file stores only the chunks around it.
    b[3 << 20] ^= 0xff;
    fs::write(src.join("a"), &b).unwrap();
    let r3 = v.put(&[&src], &mut NoProgress).unwrap();
    assert!(r3.stored_chunks <= 4, "{r3:?}");
    // Reopened (the index is on disk), the same content is still known.
    drop(v);
    let mut v = Vault::open(&s.p("home"), PASS, &NoNode).unwrap();
    let r4 = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r4.stored_chunks, 0, "{r4:?}");
}

/// Hides, for every chunk, a seeded random choice of `lose` of its n shards.
struct Lossy {
    inner: DirStore,
    n: u8,
    lose: usize,
    seed: u64,
}

impl ShardSource for Lossy {
    fn get_shard(&self, id: &ShardId) -> Result<Vec<u8>, ShardError> {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        for (s, c) in seed.iter_mut().zip(id.chunk.0) {
            *s ^= c;
        }
        let mut idx: Vec<u8> = (0..self.n).collect();
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.gen_range(0..=i));
        }
        if idx[..self.lose].contains(&id.index) {
            return Err(ShardError::Missing {
                id: *id,
                place: "lossy".into(),
            });
        }
        self.inner.get_shard(id)
    }
}

#[test]
fn any_n_minus_k_lost_shards_of_every_chunk_are_survived() {
    let s = Setup::new(8);
    let src = s.p("src");
    random_tree(&src, 5);
    let mut v = init(&s, 4, AeadKind::ChaCha20Poly1305);
    v.put(&[&src], &mut NoProgress).unwrap();
    let dirs = s.targets.clone();
    let sink: Arc<dyn ShardSink> = Arc::new(DirStore::new(dirs.clone()));
    for seed in 0..4 {
        let lossy: Arc<dyn ShardSource> = Arc::new(Lossy {
            inner: DirStore::new(dirs.clone()),
            n: 8,
            lose: 4,
            seed,
        });
        v.set_backend(sink.clone(), lossy);
        let dest = s.p(&format!("out{seed}"));
        let g = v.get(None, "/", &dest, &mut NoProgress).unwrap();
        assert!(g.shards_missing > 0);
        assert_eq!(snapshot_of(&dest.join("src")), snapshot_of(&src));
    }
    // One more lost shard per chunk: a clear error naming the chunk and the count.
    let lossy: Arc<dyn ShardSource> = Arc::new(Lossy {
        inner: DirStore::new(dirs.clone()),
        n: 8,
        lose: 5,
        seed: 9,
    });
    v.set_backend(sink, lossy);
    // (The root record is a chunk too: it is the first to fail.)
    let e = v.get(None, "/", &s.p("fail"), &mut NoProgress).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("chunk ") && m.contains("only 3 of the 4 shards"),
        "{m}"
    );
}

#[test]
fn whole_targets_lost_up_to_n_minus_k() {
    let s = Setup::new(6);
    let src = s.p("src");
    random_tree(&src, 6);
    let mut v = init(&s, 3, AeadKind::Aes256Gcm);
    v.put(&[&src], &mut NoProgress).unwrap();
    // Three of six sticks gone (the data ones, so parity must do the work).
    for t in &s.targets[..3] {
        fs::remove_dir_all(t.join("cairn-shards")).unwrap();
    }
    let dest = s.p("out");
    v.get(None, "src", &dest, &mut NoProgress).unwrap();
    assert_eq!(snapshot_of(&dest), snapshot_of(&src));
    fs::remove_dir_all(s.targets[3].join("cairn-shards")).unwrap();
    let e = v
        .get(None, "src", &s.p("out2"), &mut NoProgress)
        .unwrap_err();
    assert!(e.to_string().contains("only 2 of the 3 shards"), "{e}");
}

#[test]
fn corrupt_shards_are_detected_and_treated_as_missing() {
    let s = Setup::new(4);
    let src = s.p("src");
    fs::create_dir(&src).unwrap();
    let mut b = vec![0u8; 3 << 20];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut b);
    fs::write(src.join("f"), &b).unwrap();
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    v.put(&[&src], &mut NoProgress).unwrap();
    // Damage every shard file on stick 0 and truncate every one on stick 1.
    let shard_files = |d: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in fs::read_dir(d.join("cairn-shards")).unwrap() {
            for f in fs::read_dir(sub.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    };
    for f in shard_files(&s.targets[0]) {
        let mut bytes = fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&f, bytes).unwrap();
    }
    let dest = s.p("out");
    let g = v.get(None, "src", &dest, &mut NoProgress).unwrap();
    assert!(g.shards_corrupt > 0, "{g:?}");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b);
    // Truncating stick 1's and stick 2's too leaves one good shard of two needed.
    for f in shard_files(&s.targets[1])
        .into_iter()
        .chain(shard_files(&s.targets[2]))
    {
        let bytes = fs::read(&f).unwrap();
        fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    }
    let e = v
        .get(None, "src", &s.p("out2"), &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("only 1 of the 2 shards") && e.contains("3 corrupt"),
        "{e}"
    );
    assert!(
        e.contains("wrong length") || e.contains("checksum mismatch"),
        "{e}"
    );
}

#[test]
fn a_new_device_restores_everything_from_the_recovery_key_and_the_shards() {
    let s = Setup::new(5);
    let src = s.p("src");
    random_tree(&src, 8);
    let mut v = init(&s, 3, AeadKind::Aes256Gcm);
    let key = v.secret().recovery_key();
    // Several snapshots, so the latest must be searched for.
    let mut seqs = Vec::new();
    for i in 0..5 {
        fs::write(src.join("counter"), format!("{i}")).unwrap();
        seqs.push(v.put(&[&src], &mut NoProgress).unwrap().seq);
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let old_cap = RootCapability {
        secret: v.secret().clone(),
        seq: 2,
    }
    .to_string();
    drop(v);
    fs::remove_dir_all(s.p("home")).unwrap();

    // The new device: only the key (typed back in) and the sticks, listed in another order.
    let mut targets: Vec<Target> = s.targets.iter().map(|p| Target::Dir(p.clone())).collect();
    targets.reverse();
    let secret = OwnerSecret::from_recovery_key(&key.to_lowercase()).unwrap();
    let v = Vault::restore(
        &s.p("home2"),
        secret,
        None,
        targets.clone(),
        b"new pass",
        KDF,
        &NoNode,
    )
    .unwrap();
    assert_eq!(v.head().unwrap(), 5);
    assert_eq!((v.config().k, v.config().n), (3, 5));
    assert_eq!(v.config().aead, AeadKind::Aes256Gcm);
    let dest = s.p("restored");
    v.get(None, "/", &dest, &mut NoProgress).unwrap();
    assert_eq!(snapshot_of(&dest.join("src")), snapshot_of(&src));
    let snaps = v.snapshots().unwrap();
    assert_eq!(
        snaps.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    drop(v);
    assert!(
        Vault::open(&s.p("home2"), PASS, &NoNode).is_err(),
        "old passphrase opened the new home"
    );

    // A capability restores the snapshot it names, here with two of the five sticks lost.
    let cap: RootCapability = old_cap.parse().unwrap();
    let v = Vault::restore(
        &s.p("home3"),
        cap.secret,
        Some(cap.seq),
        targets[2..].to_vec(),
        PASS,
        KDF,
        &NoNode,
    )
    .unwrap();
    let t = v.tree(None).unwrap();
    let i = t.find(b"src/counter").unwrap();
    let out = s.p("counter-at-2");
    v.get(None, "src/counter", &out, &mut NoProgress).unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "1");
    assert_eq!(t.entries[i].size, 1);

    // Another key finds nothing and says so.
    let e = Vault::restore(
        &s.p("home4"),
        OwnerSecret::from_bytes([1; 32]),
        None,
        targets,
        PASS,
        KDF,
        &NoNode,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no snapshot of this vault") && e.contains("wrong recovery key"),
        "{e}"
    );
    assert!(!s.p("home4").join("key").exists());
}

#[test]
fn a_vault_whose_secret_the_device_holds_opens_without_a_passphrase_and_comes_back_from_the_recovery_key(
) {
    let s = Setup::new(4);
    let src = s.p("src");
    random_tree(&src, 21);
    let owner = OwnerSecret::generate().unwrap();
    let held = owner.services();
    let mut v = Vault::init_held(
        &s.p("home"),
        s.config(2, AeadKind::Aes256Gcm),
        held.clone(),
        &NoNode,
    )
    .unwrap();
    v.put(&[&src], &mut NoProgress).unwrap();
    drop(v);
    // No key file: nothing on the device holds the owner's secret for it.
    assert!(!s.p("home").join("key").exists());
    let mut v = Vault::open_held(&s.p("home"), held.clone(), &NoNode).unwrap();
    fs::write(src.join("counter"), "2").unwrap();
    assert_eq!(v.put(&[&src], &mut NoProgress).unwrap().seq, 2);
    drop(v);
    assert!(
        Vault::init_held(
            &s.p("home"),
            s.config(2, AeadKind::Aes256Gcm),
            held,
            &NoNode
        )
        .is_err(),
        "made a second vault over the first"
    );

    // A new device: the recovery key gives the owner's secret, which gives the held one.
    fs::remove_dir_all(s.p("home")).unwrap();
    let again = OwnerSecret::from_recovery_key(&owner.recovery_key()).unwrap();
    let targets: Vec<Target> = s.targets.iter().map(|p| Target::Dir(p.clone())).collect();
    let v = Vault::restore_held(&s.p("home2"), again.services(), targets.clone(), &NoNode).unwrap();
    assert_eq!(v.head().unwrap(), 2);
    let dest = s.p("restored");
    v.get(None, "/", &dest, &mut NoProgress).unwrap();
    assert_eq!(snapshot_of(&dest.join("src")), snapshot_of(&src));
    drop(v);
    // The owner's own secret finds none of it.
    let e = match Vault::restore_held(&s.p("home3"), again, targets, &NoNode) {
        Ok(_) => panic!("the owner's secret restored the device's backups"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no snapshot"), "{e}");
}

#[test]
fn puts_keep_earlier_snapshots() {
    let s = Setup::new(3);
    let (a, b) = (s.p("a"), s.p("b"));
    fs::create_dir(&a).unwrap();
    fs::write(a.join("one"), b"first version").unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(b.join("two"), b"other").unwrap();
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    v.put(&[&a], &mut NoProgress).unwrap();
    fs::write(a.join("one"), b"second version").unwrap();
    v.put(&[&a, &b], &mut NoProgress).unwrap();
    let t1 = v.tree(Some(1)).unwrap();
    let t2 = v.tree(Some(2)).unwrap();
    assert!(t1.find(b"b").is_none() && t2.find(b"b/two").is_some());
    let o1 = s.p("o1");
    v.get(Some(1), "a/one", &o1, &mut NoProgress).unwrap();
    assert_eq!(fs::read(&o1).unwrap(), b"first version");
    // Putting only b keeps a.
    v.put(&[&b], &mut NoProgress).unwrap();
    assert!(v.tree(None).unwrap().find(b"a/one").is_some());
}

/// Deletes files when the put has listed them and not yet read them: a service emptying its
/// queue while a backup walks its live folder.
struct DeletesAfterTheWalk(Vec<PathBuf>);

impl cairn_vault::progress::Progress for DeletesAfterTheWalk {
    fn start(&mut self, _: &str, _: u64) {
        for p in self.0.drain(..) {
            fs::remove_file(&p).unwrap();
        }
    }
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

#[test]
fn a_file_deleted_during_a_put_is_left_out_and_what_was_named_must_be_there() {
    let s = Setup::new(3);
    let live = s.p("snac");
    fs::create_dir_all(live.join("queue")).unwrap();
    fs::write(live.join("queue/1.json"), b"sent soon").unwrap();
    fs::write(live.join("queue/2.json"), b"stays").unwrap();
    fs::write(live.join("user.json"), b"the account").unwrap();
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    let r = v
        .put(
            &[&live],
            &mut DeletesAfterTheWalk(vec![live.join("queue/1.json")]),
        )
        .unwrap();
    assert_eq!(r.files, 2);
    let t = v.tree(None).unwrap();
    assert!(t.find(b"snac/queue/1.json").is_none());
    assert!(t.find(b"snac/queue/2.json").is_some());
    let out = s.p("back");
    v.get(None, "snac/user.json", &out, &mut NoProgress)
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"the account");

    // A file the owner named, gone before it was read, is an error naming it, and no snapshot.
    let named = s.p("notes.txt");
    fs::write(&named, b"mine").unwrap();
    let err = v
        .put(&[&named], &mut DeletesAfterTheWalk(vec![named.clone()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert!(v.tree(Some(2)).is_err());
}

/// A sink whose one target fails after a number of shards.
struct Failing {
    inner: DirStore,
    left: std::sync::atomic::AtomicI64,
}

impl ShardSink for Failing {
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
            return Err(ShardError::Failed {
                id: *id,
                place: "stick3".into(),
                reason: "I/O error".into(),
            });
        }
        self.inner.put_shard(id, shard)
    }
}

#[test]
fn a_failing_target_fails_the_put_and_keeps_the_previous_snapshot() {
    let s = Setup::new(4);
    let src = s.p("src");
    random_tree(&src, 11);
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    v.put(&[&src], &mut NoProgress).unwrap();
    fs::write(src.join("new-file"), vec![7u8; 2 << 20]).unwrap();
    let store = Arc::new(DirStore::new(s.targets.clone()));
    v.set_backend(
        Arc::new(Failing {
            inner: DirStore::new(s.targets.clone()),
            left: 3.into(),
        }),
        store.clone(),
    );
    let e = v.put(&[&src], &mut NoProgress).unwrap_err().to_string();
    assert!(e.contains("stick3") && e.contains("I/O error"), "{e}");
    assert_eq!(v.head().unwrap(), 1);
    v.set_backend(store.clone(), store);
    let t = v.tree(None).unwrap();
    assert!(t.find(b"src/new-file").is_none());
    // The next put goes through and stores the chunks the failed one claimed.
    let r = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r.seq, 2);
    let out = s.p("out");
    v.get(None, "src", &out, &mut NoProgress).unwrap();
    assert_eq!(snapshot_of(&out), snapshot_of(&src));
}

#[test]
fn bad_input_gets_clear_errors() {
    let s = Setup::new(3);
    let v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    drop(v);
    let e = Vault::open(&s.p("home"), b"wrong", &NoNode)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("wrong passphrase") && e.contains("home/key"),
        "{e}"
    );
    let e = Vault::init(
        &s.p("home"),
        s.config(2, AeadKind::Aes256Gcm),
        PASS,
        KDF,
        &NoNode,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("already exists"), "{e}");
    let e = Vault::init(
        &s.p("h2"),
        s.config(3, AeadKind::Aes256Gcm),
        PASS,
        KDF,
        &NoNode,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("3-of-3 is not possible"), "{e}");
    let mut c = s.config(2, AeadKind::Aes256Gcm);
    c.targets.pop();
    let e = Vault::init(&s.p("h3"), c, PASS, KDF, &NoNode)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("needs 3 targets") && e.contains("2 given"),
        "{e}"
    );
    let e = Vault::open(&s.p("nothing"), PASS, &NoNode)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no vault here"), "{e}");
    // A path that does not exist is named.
    let mut v = Vault::open(&s.p("home"), PASS, &NoNode).unwrap();
    let src = s.p("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("x"), b"x").unwrap();
    v.put(&[&src], &mut NoProgress).unwrap();
    let e = v
        .put(&[s.p("missing")], &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
}

#[test]
fn a_file_of_several_segments_round_trips_with_parallel_workers() {
    let s = Setup::new(3);
    let src = s.p("src");
    fs::create_dir(&src).unwrap();
    // 70 MiB: three segments, read by two workers at once; a zero run across a boundary.
    let mut b = vec![0u8; 70 << 20];
    rand::rngs::StdRng::seed_from_u64(12).fill_bytes(&mut b);
    b[30 << 20..36 << 20].fill(0);
    fs::write(src.join("big"), &b).unwrap();
    let mut v = init(&s, 2, AeadKind::ChaCha20Poly1305);
    v.set_workers(2);
    let r = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r.bytes, 70 << 20);
    assert!(r.zero_bytes >= 2 << 20, "{r:?}");
    let out = s.p("out");
    v.get(None, "src/big", &out, &mut NoProgress).unwrap();
    assert!(fs::read(&out).unwrap() == b, "content differs");
    // The same content again: nothing new stored, whichever worker cut which segment.
    let r2 = v.put(&[&src], &mut NoProgress).unwrap();
    assert_eq!(r2.stored_chunks, 0, "{r2:?}");
}

#[test]
fn node_targets_go_through_the_connector_the_caller_passes() {
    let s = Setup::new(3);
    let sock = s.p("node.sock");
    let config = |k| Config {
        k,
        n: 3,
        aead: AeadKind::ChaCha20Poly1305,
        targets: vec![Target::Node(sock.clone())],
    };
    // Without a node (NoNode), a node target is a clear usage error.
    let e = Vault::init(&s.p("home"), config(2), PASS, KDF, &NoNode)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot use a storage node"), "{e}");
    // With a connector, it opens the node by the target's socket (here: directories stand in).
    let asked = std::sync::Mutex::new(Vec::new());
    let dirs = s.targets.clone();
    for d in &dirs {
        fs::create_dir_all(d).unwrap();
    }
    let owners = std::sync::Mutex::new(Vec::new());
    let nodes = |p: &Path,
                 owner: &cairn_vault::keys::OwnerKey|
     -> Result<cairn_vault::vault::Backend, String> {
        asked.lock().unwrap().push(p.to_path_buf());
        owners.lock().unwrap().push(owner.public());
        let store = Arc::new(DirStore::new(dirs.clone()));
        Ok((store.clone(), store))
    };
    let mut v = Vault::init(&s.p("home2"), config(2), PASS, KDF, &nodes).unwrap();
    let src = s.p("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "through the node").unwrap();
    v.put(&[&src], &mut NoProgress).unwrap();
    drop(v);
    let v = Vault::open(&s.p("home2"), PASS, &nodes).unwrap();
    let out = s.p("a-out");
    v.get(None, "src/a.txt", &out, &mut NoProgress).unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "through the node");
    assert_eq!(*asked.lock().unwrap(), vec![sock.clone(), sock]);
    // The node is handed the vault's owner key each time: the same key, the vault's.
    let owners = owners.lock().unwrap();
    assert_eq!(owners[0], v.secret().keys().owner_key().public());
    assert_eq!(owners[0], owners[1]);
}
