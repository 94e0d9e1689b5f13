//! The vault: put files in, list and get them back, list snapshots, restore on a new device.
//!
//! Put pipeline (memory is bounded whatever the file sizes):
//! ```text
//! calling thread: walk ─► data regions (holes skipped) ─► 32 MiB segments ─► queue (bounded)
//! W workers:      read ─► FastCDC ─► zero check ─► id ─► dedup ─► seal ─► Reed–Solomon
//!                 ─► shards ─► sink
//! ```
//! Each worker reads a chunk straight into the buffer it seals it in. Memory per worker: that
//! buffer (≈5 MiB: a sealed largest chunk), the read carry (< 256 KiB), parity and one framed
//! shard (≈6.3 MiB for 4-of-8): ≈12 MiB, so W ≤ 4 workers stay under 48 MiB even after the
//! rare largest chunks have passed through every buffer. The tree being built costs ~100
//! bytes per file.
//!
//! Snapshots are numbered 1, 2, …; snapshot N's root record is stored under `head_id(N)`, so a
//! new device holding only the key finds the latest one by probing (see [`Vault::restore`]).
//! A put never overwrites an existing snapshot: it writes the first free number.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::chunker::{Chunker, CHUNK_BYTES_MAX, READ_STEP};
use crate::error::{corrupt, io_err, Result, VaultError};
use crate::home::{Config, Home, Target};
use crate::keys::{self, KdfParams, Keys, Kind, OwnerKey, OwnerSecret, RootCapability};
use crate::manifest::{self, Entry, EntryKind, Extent, RootRecord, Tree};
use crate::progress::Progress;
use crate::seal;
use crate::shard::Codec;
use crate::sink::{DirStore, ShardSink, ShardSource};
use crate::store::{ChunkReader, ChunkWriter, Scratch};
use crate::ChunkId;

/// Most worker threads a put uses (bounds its memory; see the module notes).
pub const WORKERS_MAX: usize = 4;
/// Holes shorter than this are read as data (avoids a manifest full of tiny extents).
const HOLE_BYTES_MIN: u64 = 1024 * 1024;
/// Files are chunked in segments of this size, in parallel (see `run_pipeline`).
pub(crate) const SEGMENT: u64 = 32 * 1024 * 1024;

/// An open vault.
pub struct Vault {
    pub(crate) home: Home,
    pub(crate) config: Config,
    pub(crate) secret: OwnerSecret,
    pub(crate) keys: Keys,
    pub(crate) codec: Codec,
    pub(crate) sink: Arc<dyn ShardSink>,
    pub(crate) source: Arc<dyn ShardSource>,
    /// Worker threads for puts (0 = all work on the calling thread).
    pub(crate) workers: usize,
    /// Places (partners) that served shards failing the owner's check since it was opened,
    /// shared by all its readers (trees, files, restores).
    pub(crate) bad_places: crate::store::BadPlaces,
    /// Held while the vault is open.
    _lock: File,
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// The new snapshot.
    pub seq: u64,
    /// Files read.
    pub files: u64,
    /// File bytes read.
    pub bytes: u64,
    /// Chunks sealed and stored.
    pub stored_chunks: u64,
    /// Chunks already stored (deduplicated).
    pub dedup_chunks: u64,
    /// Bytes kept as zero runs (holes, all-zero chunks).
    pub zero_bytes: u64,
    /// Shard bytes written.
    pub shard_bytes: u64,
}

/// What a get did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetReport {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Shards found missing on the way (redundancy degraded, data intact).
    pub shards_missing: u64,
    /// Shards found corrupt or unreadable on the way.
    pub shards_corrupt: u64,
    /// Places (partners) that served shards failing the owner's check: forged or altered.
    pub bad_places: Vec<String>,
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(WORKERS_MAX)
}

/// Where a vault's shards go and come from.
pub type Backend = (Arc<dyn ShardSink>, Arc<dyn ShardSource>);

/// Opens the shard backend of a storage node by its control socket: what `node:SOCKET` targets
/// use. This crate does not link the node (the node depends on it, not the other way round):
/// the program that does passes a connector to [`Vault::init`], [`Vault::open`] and
/// [`Vault::restore`]; [`NoNode`] refuses node targets. The connector is handed the vault's
/// owner key so that the node can act for this owner (it gets a statement signed with the key,
/// never the key). A closure `Fn(&Path, &OwnerKey) -> Result<Backend, String>` is one too.
pub trait NodeConnector {
    /// The backend of the node whose control socket is `socket`, acting for `owner`, or why
    /// there is none.
    fn connect(&self, socket: &Path, owner: &OwnerKey) -> std::result::Result<Backend, String>;
}

impl<F: Fn(&Path, &OwnerKey) -> std::result::Result<Backend, String>> NodeConnector for F {
    fn connect(&self, socket: &Path, owner: &OwnerKey) -> std::result::Result<Backend, String> {
        self(socket, owner)
    }
}

/// No storage node here: `node:` targets are refused with a usage error.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNode;

impl NodeConnector for NoNode {
    fn connect(&self, _socket: &Path, _owner: &OwnerKey) -> std::result::Result<Backend, String> {
        Err("this program cannot use a storage node (node: targets)".into())
    }
}

/// The backend of the node whose control socket is at `path`, opened by `nodes` for `owner`.
pub fn node_backend(nodes: &dyn NodeConnector, path: &Path, owner: &OwnerKey) -> Result<Backend> {
    nodes.connect(path, owner).map_err(VaultError::Usage)
}

fn backend(targets: &[Target], nodes: &dyn NodeConnector, owner: &OwnerKey) -> Result<Backend> {
    if targets.is_empty() {
        return Err(VaultError::Usage(
            "no shard target: give --target dir:PATH or --target node:SOCKET".into(),
        ));
    }
    if let Some(Target::Node(p)) = targets.iter().find(|t| matches!(t, Target::Node(_))) {
        if targets.len() != 1 {
            return Err(VaultError::Usage(
                "a node target places every shard itself: give it alone".into(),
            ));
        }
        return node_backend(nodes, p, owner);
    }
    let dirs = targets
        .iter()
        .filter_map(|t| match t {
            Target::Dir(p) => Some(p.clone()),
            Target::Node(_) => None,
        })
        .collect();
    let store = Arc::new(DirStore::new(dirs));
    Ok((store.clone(), store))
}

impl Vault {
    /// Creates a vault in `home`: a new owner secret, encrypted under `passphrase`. `nodes`
    /// opens a `node:SOCKET` target ([`NoNode`] when the program has no storage node).
    pub fn init(
        home: &Path,
        config: Config,
        passphrase: &[u8],
        kdf: KdfParams,
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        Self::create(
            home,
            config,
            OwnerSecret::generate()?,
            Some((passphrase, kdf)),
            (0, true),
            nodes,
        )
    }

    /// Creates a vault in `home` whose secret the caller holds: no key file is written, and
    /// [`Vault::open_held`] opens it with the same secret. For the device's own backups, whose
    /// key must be at hand while nobody is logged in (see [`OwnerSecret::services`]).
    pub fn init_held(
        home: &Path,
        config: Config,
        secret: OwnerSecret,
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        Self::create(home, config, secret, None, (0, true), nodes)
    }

    /// `key_file`: the passphrase and its hash cost to keep the secret under, or `None` when
    /// the caller holds it. `(head, one_target_per_shard)`: the snapshot recorded as the head,
    /// and whether n targets (one per shard) are required.
    fn create(
        home: &Path,
        config: Config,
        secret: OwnerSecret,
        key_file: Option<(&[u8], KdfParams)>,
        (head, one_target_per_shard): (u64, bool),
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        let h = Home::new(home);
        if h.exists() {
            return Err(VaultError::Usage(format!(
                "{}: a vault already exists here",
                home.display()
            )));
        }
        let codec = Codec::new(config.k, config.n)?;
        let node = matches!(config.targets.as_slice(), [Target::Node(_)]);
        if one_target_per_shard && !node && config.targets.len() != config.n {
            return Err(VaultError::Usage(format!(
                "{}-of-{} needs {} targets (one per shard), {} given",
                config.k,
                config.n,
                config.n,
                config.targets.len()
            )));
        }
        if key_file.is_some_and(|(p, _)| p.is_empty()) {
            return Err(VaultError::Usage("the passphrase must not be empty".into()));
        }
        for t in &config.targets {
            if let Target::Dir(d) = t {
                fs::create_dir_all(d).map_err(io_err(d))?;
            }
        }
        fs::create_dir_all(home).map_err(io_err(home))?;
        fs::set_permissions(home, fs::Permissions::from_mode(0o700)).map_err(io_err(home))?;
        let lock = h.lock()?;
        let (sink, source) = backend(&config.targets, nodes, secret.keys().owner_key())?;
        if let Some((passphrase, kdf)) = key_file {
            keys::write_key_file(&h.key(), &secret, passphrase, kdf)?;
        }
        cairn_durable::write_mode(&h.config(), config.encode().as_bytes(), 0o644)
            .map_err(io_err(h.config()))?;
        h.write_head(head)?;
        Ok(Self {
            keys: secret.keys(),
            secret,
            home: h,
            config,
            codec,
            sink,
            source,
            workers: default_workers(),
            bad_places: Default::default(),
            _lock: lock,
        })
    }

    /// Opens the vault in `home` with the passphrase; `nodes` opens a `node:SOCKET` target.
    pub fn open(home: &Path, passphrase: &[u8], nodes: &dyn NodeConnector) -> Result<Self> {
        Self::open_with(home, nodes, |h| keys::read_key_file(&h.key(), passphrase))
    }

    /// Opens a vault made by [`Vault::init_held`] (or [`Vault::restore_held`]) with its secret.
    /// A wrong secret opens it but finds none of its snapshots.
    pub fn open_held(home: &Path, secret: OwnerSecret, nodes: &dyn NodeConnector) -> Result<Self> {
        Self::open_with(home, nodes, |_| Ok(secret))
    }

    fn open_with(
        home: &Path,
        nodes: &dyn NodeConnector,
        secret: impl FnOnce(&Home) -> Result<OwnerSecret>,
    ) -> Result<Self> {
        let h = Home::new(home);
        if !h.exists() {
            return Err(VaultError::Usage(format!(
                "{}: no vault here (run `cairn vault init` or `cairn vault restore`)",
                home.display()
            )));
        }
        let lock = h.lock()?;
        let cpath = h.config();
        let text = fs::read_to_string(&cpath).map_err(io_err(&cpath))?;
        let config = Config::decode(&text, &cpath)?;
        let codec = Codec::new(config.k, config.n)?;
        let secret = secret(&h)?;
        let (sink, source) = backend(&config.targets, nodes, secret.keys().owner_key())?;
        Ok(Self {
            keys: secret.keys(),
            secret,
            home: h,
            config,
            codec,
            sink,
            source,
            workers: default_workers(),
            bad_places: Default::default(),
            _lock: lock,
        })
    }

    /// Restores a vault into a new `home` from the owner secret and the shards on `targets`:
    /// finds the latest snapshot (or takes `seq`), learns k, n and the AEAD from its shards and
    /// writes the configuration and key file. Files come back with [`Vault::get`]. Fewer targets
    /// than n will do as long as they hold k shards of every chunk (later puts then place
    /// several shards of a chunk on one target: re-create the vault with n targets). `nodes`
    /// opens a `node:SOCKET` target.
    pub fn restore(
        home: &Path,
        secret: OwnerSecret,
        seq: Option<u64>,
        targets: Vec<Target>,
        passphrase: &[u8],
        kdf: KdfParams,
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        Self::restore_with(home, secret, seq, targets, Some((passphrase, kdf)), nodes)
    }

    /// [`Vault::restore`] of a vault whose secret the caller holds (no key file; see
    /// [`Vault::init_held`]): the latest snapshot.
    pub fn restore_held(
        home: &Path,
        secret: OwnerSecret,
        targets: Vec<Target>,
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        Self::restore_with(home, secret, None, targets, None, nodes)
    }

    fn restore_with(
        home: &Path,
        secret: OwnerSecret,
        seq: Option<u64>,
        targets: Vec<Target>,
        key_file: Option<(&[u8], KdfParams)>,
        nodes: &dyn NodeConnector,
    ) -> Result<Self> {
        let keys = secret.keys();
        let (_, source) = backend(&targets, nodes, keys.owner_key())?;
        // Partners found serving forged bytes while the snapshot is looked for are named by
        // the restore's report too.
        let bad_places = crate::store::BadPlaces::default();
        let reader =
            ChunkReader::new(&keys, source.as_ref(), None).with_bad_places(bad_places.clone());
        let n_probe = 255;
        let exists = |s: u64| reader.exists(&keys.head_id(s), n_probe);
        let seq = match seq {
            Some(s) => s,
            None => {
                if !exists(1)? {
                    return Err(VaultError::NoSnapshot(format!(
                        "no snapshot of this vault on {}: wrong recovery key, or not the targets \
                         that hold its shards",
                        targets
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                // Snapshots are numbered without gaps: gallop, then bisect.
                let mut lo = 1u64;
                let mut hi = 2u64;
                while exists(hi)? {
                    lo = hi;
                    hi = hi.saturating_mul(2);
                }
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if exists(mid)? {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        };
        let root = reader
            .fetch(Kind::Root, &keys.head_id(seq))
            .map_err(|e| match e {
                VaultError::NotEnoughShards { found: 0, .. } => VaultError::Usage(format!(
                    "snapshot {seq} not found on the targets (wrong key or targets?)"
                )),
                e => e,
            })?;
        let record = RootRecord::decode(&root.data, &format!("root record of snapshot {seq}"))?;
        let config = Config {
            k: usize::from(record.k),
            n: usize::from(record.n),
            aead: root.header.aead,
            targets,
        };
        // Restoring with some targets lost is the point: any k of them may do.
        let mut vault = Self::create(home, config, secret, key_file, (seq, false), nodes)?;
        vault.bad_places = bad_places;
        Ok(vault)
    }

    /// Replaces the shard backend (the network node; failing stores in tests).
    pub fn set_backend(&mut self, sink: Arc<dyn ShardSink>, source: Arc<dyn ShardSource>) {
        self.sink = sink;
        self.source = source;
    }

    /// Sets the number of put worker threads (0 = on the calling thread; capped at
    /// [`WORKERS_MAX`]).
    pub fn set_workers(&mut self, workers: usize) {
        self.workers = workers.min(WORKERS_MAX);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-encrypts the owner secret under `new` (Argon2id with `params`) and replaces the key
    /// file durably (`cairn_durable`: a temporary file, synced, renamed over the old one, the
    /// directory synced), so after a crash the file opens with either the old passphrase or
    /// the new one. Afterwards only the new one opens it. Nothing else changes: the secret, and
    /// so every key and shard, stays the same. Memory: Argon2's `params.m_kib` while it runs.
    pub fn change_passphrase(&mut self, new: &[u8], params: KdfParams) -> Result<()> {
        if new.is_empty() {
            return Err(VaultError::Usage("the passphrase must not be empty".into()));
        }
        keys::write_key_file(&self.home.key(), &self.secret, new, params)
    }

    /// The owner secret (for printing the recovery key).
    pub fn secret(&self) -> &OwnerSecret {
        &self.secret
    }

    /// The latest snapshot number recorded here (0: none).
    pub fn head(&self) -> Result<u64> {
        self.home.read_head()
    }

    /// The root capability of the latest snapshot.
    pub fn capability(&self) -> Result<RootCapability> {
        Ok(RootCapability {
            secret: self.secret.clone(),
            seq: self.head()?,
        })
    }

    pub(crate) fn reader(&self) -> ChunkReader<'_> {
        ChunkReader::new(&self.keys, self.source.as_ref(), Some(self.config.n))
            .with_prefetch(self.config.k)
            .with_bad_places(self.bad_places.clone())
    }

    /// The root record of snapshot `seq`.
    pub fn root(&self, seq: u64) -> Result<RootRecord> {
        let head = self.head()?;
        if seq == 0 || seq > head {
            return Err(VaultError::Usage(format!(
                "there is no snapshot {seq} (snapshots here: 1 to {head})"
            )));
        }
        self.fetch_root(seq)
    }

    /// The root record of snapshot `seq`, whether or not this home recorded it.
    fn fetch_root(&self, seq: u64) -> Result<RootRecord> {
        let f = self
            .reader()
            .fetch(Kind::Root, &self.keys.head_id(seq))
            .map_err(|e| match e {
                VaultError::NotEnoughShards { .. } => VaultError::Usage(format!(
                    "snapshot {seq}: its root record cannot be read: {e}"
                )),
                e => e,
            })?;
        RootRecord::decode(&f.data, &format!("root record of snapshot {seq}"))
    }

    /// All snapshots, newest first.
    pub fn snapshots(&self) -> Result<Vec<RootRecord>> {
        (1..=self.head()?).rev().map(|s| self.root(s)).collect()
    }

    /// The file tree of snapshot `seq` (the latest when `None`; empty when there is none).
    pub fn tree(&self, seq: Option<u64>) -> Result<Tree> {
        let seq = match seq {
            Some(s) => s,
            None => self.head()?,
        };
        if seq == 0 {
            return Ok(Tree::default());
        }
        self.root(seq)?;
        self.tree_at(seq)
    }

    /// The tree of snapshot `seq` (empty for 0), whether or not this home recorded it: a put
    /// starts from the newest snapshot on the backend, which may be one past the head.
    pub(crate) fn tree_at(&self, seq: u64) -> Result<Tree> {
        if seq == 0 {
            return Ok(Tree::default());
        }
        let root = self.fetch_root(seq)?;
        let what = format!("manifest of snapshot {seq}");
        let reader = self.reader();
        let total: u64 = root.manifest.iter().map(|(_, l)| u64::from(*l)).sum();
        let mut bytes = Vec::with_capacity(total as usize);
        for (id, len) in &root.manifest {
            let f = reader.fetch(Kind::Manifest, id)?;
            if f.data.len() != *len as usize {
                return Err(corrupt(&what, format!("chunk {id} has the wrong length")));
            }
            bytes.extend_from_slice(&f.data);
        }
        Tree::decode(&bytes, &what)
    }

    pub(crate) fn known_chunks(&self) -> Result<HashSet<ChunkId>> {
        let path = self.home.index();
        match fs::read(&path) {
            Ok(b) => Ok(b
                .chunks_exact(32)
                .map(|c| ChunkId(c.try_into().expect("32 bytes")))
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Puts files and directories into a new snapshot: each path is stored under its last
    /// component at the top of the tree, replacing what was there; everything else is kept.
    pub fn put<P: AsRef<Path>>(
        &mut self,
        paths: &[P],
        progress: &mut dyn Progress,
    ) -> Result<PutReport> {
        let latest = self.latest_seq()?;
        let mut tree = self.tree_at(latest)?;

        // Walk first: the entries (with empty extents) and the total for progress.
        let mut entries = Vec::new();
        let mut roots = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let name = match p.file_name() {
                Some(n) => Some(n.as_bytes().to_vec()),
                None => p
                    .canonicalize()
                    .ok()
                    .and_then(|c| c.file_name().map(|n| n.as_bytes().to_vec())),
            }
            .ok_or_else(|| VaultError::Usage(format!("{}: has no name", p.display())))?;
            if roots.contains(&name) {
                return Err(VaultError::Usage(format!(
                    "{}: two paths would both be stored as `{}`",
                    p.display(),
                    String::from_utf8_lossy(&name)
                )));
            }
            walk(p, name.clone(), true, &mut entries)?;
            roots.push(name);
        }
        let total: u64 = entries.iter().map(|(e, _)| e.size).sum();
        progress.start("put", total);

        let known = self.known_chunks()?;
        let writer = ChunkWriter::new(
            &self.keys,
            self.config.aead,
            &self.codec,
            self.sink.as_ref(),
            known,
        );
        let chunker = Chunker::new(self.keys.chunker_seed());
        let files: Vec<(usize, PathBuf)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, (e, src))| match e.kind {
                EntryKind::File { .. } => Some((i, src.clone())),
                _ => None,
            })
            .collect();
        let extents = run_pipeline(&writer, &chunker, &files, self.workers, progress)?;
        let mut bytes = 0;
        let mut stored = 0u64;
        let mut gone = vec![false; entries.len()];
        for ((i, _), ext) in files.iter().zip(extents) {
            // A file deleted after the walk (a service's queue in a live folder) is not
            // part of the snapshot, as if the walk had come after the deletion.
            let Some(ext) = ext else {
                if roots.contains(&entries[*i].0.path) {
                    // What the owner named is not there any more: say so.
                    let p = &entries[*i].1;
                    return Err(io_err(p)(std::io::ErrorKind::NotFound.into()));
                }
                gone[*i] = true;
                continue;
            };
            let e = &mut entries[*i].0;
            // The file may have changed while read: the manifest records what was read.
            e.size = ext.iter().map(Extent::len).sum();
            bytes += e.size;
            stored += 1;
            e.kind = EntryKind::File { extents: ext };
        }
        progress.finish();
        let kept = entries
            .into_iter()
            .zip(gone)
            .filter(|(_, gone)| !gone)
            .map(|((e, _), _)| e);
        tree.replace(&roots, kept.collect());

        let seq = latest + 1;
        self.write_snapshot(&writer, &chunker, &tree, seq)?;
        let s = &writer.stats;
        Ok(PutReport {
            seq,
            files: stored,
            bytes,
            stored_chunks: s.stored.load(Ordering::Relaxed),
            dedup_chunks: s.deduplicated.load(Ordering::Relaxed),
            zero_bytes: bytes_zero(&tree, &roots),
            shard_bytes: s.shard_bytes.load(Ordering::Relaxed),
        })
    }

    /// The newest snapshot on the backend, even one this home has not recorded (a put that
    /// crashed after writing its root, or another device).
    pub(crate) fn latest_seq(&self) -> Result<u64> {
        let reader = self.reader();
        let mut latest = self.head()?;
        while reader.exists(&self.keys.head_id(latest + 1), self.config.n)? {
            latest += 1;
        }
        Ok(latest)
    }

    /// Writes `tree` as snapshot `seq`: its manifest, chunked and stored like data, then the
    /// root record, then this home's chunk index and head. Everything the root points at is
    /// durable before the root is written, and the root before this home records it.
    pub(crate) fn write_snapshot(
        &self,
        writer: &ChunkWriter<'_>,
        chunker: &Chunker,
        tree: &Tree,
        seq: u64,
    ) -> Result<()> {
        let encoded = tree.encode();
        if encoded.len() as u64 > manifest::MANIFEST_BYTES_MAX {
            return Err(VaultError::Usage(format!(
                "the tree would need a {} byte manifest, over the {} limit",
                encoded.len(),
                manifest::MANIFEST_BYTES_MAX
            )));
        }
        let mut manifest_chunks = Vec::new();
        let mut scratch = Scratch::default();
        let mut reader: &[u8] = &encoded;
        let (mut buf, mut carry) = (
            Vec::with_capacity(chunk_capacity(self.config.k)),
            Vec::new(),
        );
        while chunker
            .next_chunk(&mut reader, &mut buf, &mut carry)
            .map_err(|e| VaultError::Usage(format!("manifest: {e}")))?
        {
            let len = buf.len() as u32;
            let id = writer.store(Kind::Manifest, &mut buf, &mut scratch)?;
            manifest_chunks.push((id, len));
        }
        let record = RootRecord {
            seq,
            time: now_secs(),
            k: self.config.k as u8,
            n: self.config.n as u8,
            files: tree.file_count(),
            bytes: tree.total_bytes(),
            manifest: manifest_chunks,
        };
        self.sink.flush()?;
        writer.store_root(seq, &record.encode())?;
        self.sink.flush()?;
        self.append_index(&writer.take_fresh())?;
        self.home.write_head(seq)
    }

    fn append_index(&self, ids: &[ChunkId]) -> Result<()> {
        let path = self.home.index();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut b = Vec::with_capacity(ids.len() * 32);
        for id in ids {
            b.extend_from_slice(&id.0);
        }
        f.write_all(&b).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))
    }

    /// Writes `path` of snapshot `seq` (latest if `None`; the whole tree for an empty path or
    /// `/`) to `dest`. A file goes to `dest` (or into it, if `dest` is a directory); a directory's
    /// content goes into `dest`. Existing files are not overwritten.
    pub fn get(
        &self,
        seq: Option<u64>,
        path: &str,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<GetReport> {
        let tree = self.tree(seq)?;
        let vpath = path.trim_matches('/').as_bytes();
        let base: Vec<u8> = if vpath.is_empty() {
            Vec::new()
        } else {
            tree.find(vpath).ok_or_else(|| {
                VaultError::Usage(format!("{path}: not in the vault (see `cairn vault ls`)"))
            })?;
            vpath.to_vec()
        };
        let single_file = tree
            .find(&base)
            .is_some_and(|i| !matches!(tree.entries[i].kind, EntryKind::Dir));
        let reader = self.reader();
        let mut report = GetReport::default();
        let total: u64 = tree.subtree(&base).map(|e| e.size).sum();
        progress.start("get", total);
        let mut dirs = Vec::new();
        for e in tree.subtree(&base) {
            let rel = if base.is_empty() {
                &e.path[..]
            } else if e.path.len() == base.len() {
                &b""[..]
            } else {
                &e.path[base.len() + 1..]
            };
            let out = if single_file {
                if dest.is_dir() {
                    dest.join(std::ffi::OsStr::from_bytes(
                        e.path.rsplit(|&b| b == b'/').next().unwrap_or(&e.path),
                    ))
                } else {
                    dest.to_path_buf()
                }
            } else if rel.is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(std::ffi::OsStr::from_bytes(rel))
            };
            match &e.kind {
                EntryKind::Dir => {
                    fs::create_dir_all(&out).map_err(io_err(&out))?;
                    dirs.push((out, e));
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &out)
                        .map_err(io_err(&out))?;
                }
                EntryKind::File { extents } => {
                    if let Some(parent) = out.parent() {
                        fs::create_dir_all(parent).map_err(io_err(parent))?;
                    }
                    write_file(&reader, &out, e, extents, progress)?;
                    report.files += 1;
                    report.bytes += e.size;
                }
            }
        }
        // Directory times last: writing their content changed them.
        for (out, e) in dirs.iter().rev() {
            set_meta(out, e)?;
        }
        progress.finish();
        report.shards_missing = reader.stats.missing.load(Ordering::Relaxed);
        report.shards_corrupt = reader.stats.corrupt.load(Ordering::Relaxed);
        // Shared with the tree's reader: its forgeries are named too.
        report.bad_places = reader.stats.bad_places();
        Ok(report)
    }
}

fn bytes_zero(tree: &Tree, roots: &[Vec<u8>]) -> u64 {
    tree.entries
        .iter()
        .filter(|e| roots.iter().any(|r| manifest::under(&e.path, r)))
        .filter_map(|e| match &e.kind {
            EntryKind::File { extents } => Some(
                extents
                    .iter()
                    .filter(|x| matches!(x, Extent::Zero { .. }))
                    .map(Extent::len)
                    .sum::<u64>(),
            ),
            _ => None,
        })
        .sum()
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Capacity of a chunk buffer: the largest chunk sealed and padded to a multiple of k.
pub(crate) fn chunk_capacity(k: usize) -> usize {
    seal::sealed_len(CHUNK_BYTES_MAX) + k
}

/// Lists `p` (stored as `name`) and everything below it, sorted by path. File sizes are those
/// seen now; the pipeline records what it reads. Below the `root` the owner named, what was
/// deleted between its folder's listing and its own look is left out, not an error.
fn walk(p: &Path, name: Vec<u8>, root: bool, out: &mut Vec<(Entry, PathBuf)>) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Err(e) if !root && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err(p))?,
    };
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File {
            extents: Vec::new(),
        }
    } else if ft.is_symlink() {
        EntryKind::Symlink {
            target: fs::read_link(p)
                .map_err(io_err(p))?
                .into_os_string()
                .into_vec(),
        }
    } else {
        // Sockets, fifos and devices have no content to keep.
        return Ok(());
    };
    out.push((
        Entry {
            path: name.clone(),
            mode: md.mode() & 0o7777,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            size: if ft.is_file() { md.len() } else { 0 },
            kind,
        },
        p.to_path_buf(),
    ));
    if ft.is_dir() {
        let listed = fs::read_dir(p).and_then(|d| {
            d.map(|d| d.map(|d| d.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
        });
        let mut children = match listed {
            Err(e) if !root && e.kind() == std::io::ErrorKind::NotFound => {
                out.pop();
                return Ok(());
            }
            r => r.map_err(io_err(p))?,
        };
        children.sort();
        for c in children {
            let mut child = name.clone();
            child.push(b'/');
            child.extend_from_slice(c.as_bytes());
            walk(&p.join(&c), child, false, out)?;
        }
    }
    Ok(())
}

/// The next data region of `f` at or after `pos`, as `(start, end)`; holes shorter than
/// [`HOLE_BYTES_MIN`] are part of the data.
fn next_data(f: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    if pos >= size {
        return Ok(None);
    }
    let Some(start) = seek_data(f, pos)? else {
        return Ok(None);
    };
    let mut end = seek_hole(f, start)?.min(size);
    while end < size {
        match seek_data(f, end)? {
            Some(next) if next - end < HOLE_BYTES_MIN => end = seek_hole(f, next)?.min(size),
            _ => break,
        }
    }
    Ok(Some((start.min(size), end)))
}

#[cfg(target_os = "linux")]
fn seek_data(f: &File, pos: u64) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek only reads the descriptor, which `f` keeps open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // Filesystems without hole reporting: everything is data.
            Some(libc::EINVAL) => Ok(Some(pos)),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

#[cfg(target_os = "linux")]
fn seek_hole(f: &File, pos: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: as above.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_HOLE) };
    if r < 0 {
        return Ok(u64::MAX);
    }
    Ok(r as u64)
}

#[cfg(not(target_os = "linux"))]
fn seek_data(_f: &File, pos: u64) -> std::io::Result<Option<u64>> {
    Ok(Some(pos))
}

#[cfg(not(target_os = "linux"))]
fn seek_hole(_f: &File, _pos: u64) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// A piece of work: one segment of one file's data.
struct Unit {
    file: usize,
    slot: usize,
    src: Arc<File>,
    path: Arc<PathBuf>,
    start: u64,
    end: u64,
}

type Done = (usize, usize, Result<Vec<Extent>>);

/// What a worker keeps from segment to segment. Memory: the chunk buffer (room for a sealed
/// largest chunk, ≈5 MiB), the carry (< [`READ_STEP`]) and the scratch (parity and one
/// framed shard, ≈6.3 MiB for 4-of-8) — about 12 MiB per worker at most.
struct WorkerState {
    buf: Vec<u8>,
    carry: Vec<u8>,
    scratch: Scratch,
}

impl WorkerState {
    fn new(k: usize) -> Self {
        Self {
            buf: Vec::with_capacity(chunk_capacity(k)),
            carry: Vec::with_capacity(READ_STEP),
            scratch: Scratch::default(),
        }
    }
}

/// Reads `file` from `pos` to `end` with positioned reads (workers share one open file).
struct Segment<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Segment<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Chunks and stores one segment; returns its extents.
fn process(
    writer: &ChunkWriter<'_>,
    chunker: &Chunker,
    st: &mut WorkerState,
    unit: &Unit,
    done_bytes: &AtomicU64,
) -> Result<Vec<Extent>> {
    let mut r = Segment {
        file: &unit.src,
        pos: unit.start,
        end: unit.end,
    };
    st.carry.clear();
    let mut out = Vec::new();
    while chunker
        .next_chunk(&mut r, &mut st.buf, &mut st.carry)
        .map_err(io_err(unit.path.as_path()))?
    {
        let n = st.buf.len() as u64;
        out.push(writer.store_data(&mut st.buf, &mut st.scratch)?);
        done_bytes.fetch_add(n, Ordering::Relaxed);
    }
    Ok(out)
}

/// Splits `files` into holes and data segments of at most [`SEGMENT`] bytes, chunks and stores
/// the segments on `workers` threads (0: on this one), and returns each file's extents, or
/// `None` for a file deleted since the walk.
///
/// Segments are cut at fixed file offsets, so chunking is parallel even within one file; the
/// cost is a forced chunk boundary every [`SEGMENT`] bytes (a few more chunks, and after an
/// insertion one or two re-stored chunks per later segment).
fn run_pipeline(
    writer: &ChunkWriter<'_>,
    chunker: &Chunker,
    files: &[(usize, PathBuf)],
    workers: usize,
    progress: &mut dyn Progress,
) -> Result<Vec<Option<Vec<Extent>>>> {
    let k = writer.codec_k();
    // Per file, per slot (hole or segment): the extents once known.
    let mut slots: Vec<Vec<Option<Vec<Extent>>>> = vec![Vec::new(); files.len()];
    let done_bytes = AtomicU64::new(0);
    let mut reported = 0u64;
    let mut report = |progress: &mut dyn Progress, done: &AtomicU64, extra: u64| {
        let now = done.fetch_add(extra, Ordering::Relaxed) + extra;
        progress.advance(now - reported);
        reported = now;
    };
    let mut gone = vec![false; files.len()];
    let mut inline = (workers == 0).then(|| WorkerState::new(k));
    std::thread::scope(|scope| -> Result<Vec<Option<Vec<Extent>>>> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Unit>(workers.max(1));
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..workers {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let done_bytes = &done_bytes;
            scope.spawn(move || {
                let mut st = WorkerState::new(k);
                loop {
                    let unit = rx.lock().expect("job queue").recv();
                    let Ok(unit) = unit else { break };
                    let r = process(writer, chunker, &mut st, &unit, done_bytes);
                    if tx.send((unit.file, unit.slot, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut in_flight = 0usize;
        let mut first_err: Option<VaultError> = None;
        let settle = |d: Done,
                      slots: &mut Vec<Vec<Option<Vec<Extent>>>>,
                      first_err: &mut Option<VaultError>| match d.2 {
            Ok(x) => slots[d.0][d.1] = Some(x),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        };
        let feed = (|| -> Result<()> {
            for (fi, (_, path)) in files.iter().enumerate() {
                let f = match File::open(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        gone[fi] = true;
                        continue;
                    }
                    r => r.map_err(io_err(path))?,
                };
                let size = f.metadata().map_err(io_err(path))?.len();
                let (src, path) = (Arc::new(f), Arc::new(path.clone()));
                let mut pos = 0u64;
                while pos < size {
                    let region = next_data(&src, pos, size).map_err(io_err(path.as_path()))?;
                    let (start, end) = region.unwrap_or((size, size));
                    if start > pos {
                        slots[fi].push(Some(vec![Extent::Zero { len: start - pos }]));
                        report(progress, &done_bytes, start - pos);
                    }
                    let mut seg = start;
                    while seg < end {
                        let unit = Unit {
                            file: fi,
                            slot: slots[fi].len(),
                            src: src.clone(),
                            path: path.clone(),
                            start: seg,
                            end: (seg + SEGMENT).min(end),
                        };
                        seg = unit.end;
                        slots[fi].push(None);
                        if let Some(st) = inline.as_mut() {
                            let x = process(writer, chunker, st, &unit, &done_bytes)?;
                            slots[fi][unit.slot] = Some(x);
                        } else {
                            in_flight += 1;
                            job_tx.send(unit).expect("workers alive");
                        }
                        while let Ok(d) = done_rx.try_recv() {
                            in_flight -= 1;
                            settle(d, &mut slots, &mut first_err);
                        }
                        report(progress, &done_bytes, 0);
                        if let Some(e) = first_err.take() {
                            return Err(e);
                        }
                    }
                    pos = end;
                }
            }
            Ok(())
        })();
        drop(job_tx);
        while in_flight > 0 {
            match done_rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(d) => {
                    in_flight -= 1;
                    settle(d, &mut slots, &mut first_err);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            report(progress, &done_bytes, 0);
        }
        feed?;
        if let Some(e) = first_err {
            return Err(e);
        }
        let extents = finish_extents(slots);
        Ok(extents
            .into_iter()
            .zip(&gone)
            .map(|(x, gone)| (!gone).then_some(x))
            .collect())
    })
}

/// Flattens the slots and merges neighbouring zero runs.
fn finish_extents(slots: Vec<Vec<Option<Vec<Extent>>>>) -> Vec<Vec<Extent>> {
    slots
        .into_iter()
        .map(|v| {
            let mut out: Vec<Extent> = Vec::new();
            for x in v
                .into_iter()
                .flat_map(|x| x.expect("every segment settled"))
            {
                match (out.last_mut(), &x) {
                    (Some(Extent::Zero { len }), Extent::Zero { len: more }) => *len += more,
                    _ => out.push(x),
                }
            }
            out
        })
        .collect()
}

fn write_file(
    reader: &ChunkReader<'_>,
    out: &Path,
    e: &Entry,
    extents: &[Extent],
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => VaultError::Usage(format!(
                "{}: already exists; not overwriting it",
                out.display()
            )),
            _ => io_err(out)(err),
        })?;
    let mut pos = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        let mut ahead = ReadAhead::start(scope, reader, extents);
        for (i, x) in extents.iter().enumerate() {
            match x {
                Extent::Data { id, len } => {
                    let got = ahead.take(i)?;
                    if got.data.len() != *len as usize {
                        return Err(corrupt(
                            format!("chunk {id}"),
                            format!(
                                "is {} bytes, the manifest says {len} ({})",
                                got.data.len(),
                                out.display()
                            ),
                        ));
                    }
                    f.write_all(&got.data).map_err(io_err(out))?;
                }
                Extent::Zero { len } => {
                    // Leave a hole: seek past it (the final set_len covers a trailing one).
                    f.seek(SeekFrom::Start(pos + len)).map_err(io_err(out))?;
                }
            }
            pos += x.len();
            progress.advance(x.len());
        }
        Ok(())
    })?;
    f.set_len(e.size).map_err(io_err(out))?;
    drop(f);
    set_meta(out, e)
}

/// Chunks a file's writer will need next, fetched by [`READ_AHEAD`] threads while it writes:
/// a network backend then has several chunks' shards in flight instead of one.
///
/// Memory: at most `READ_AHEAD` fetched chunks wait for the writer (≤ 5 MiB each).
const READ_AHEAD: usize = 4;

type FetchResult = (usize, Result<crate::store::Fetched>);

struct ReadAhead {
    rx: Option<mpsc::Receiver<FetchResult>>,
    ready: std::collections::BTreeMap<usize, Result<crate::store::Fetched>>,
    /// The extent the writer waits for; `usize::MAX` tells the fetchers to stop.
    window: Arc<(Mutex<usize>, std::sync::Condvar)>,
}

impl ReadAhead {
    fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        reader: &'env ChunkReader<'env>,
        extents: &'env [Extent],
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<FetchResult>(READ_AHEAD);
        let window = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let data = extents
            .iter()
            .filter(|x| matches!(x, Extent::Data { .. }))
            .count();
        for _ in 0..READ_AHEAD.min(data) {
            let (tx, window, next) = (tx.clone(), window.clone(), next.clone());
            scope.spawn(move || loop {
                // The next data extent nobody took yet.
                let (i, id) = loop {
                    let j = next.fetch_add(1, Ordering::SeqCst);
                    match extents.get(j) {
                        None => return,
                        Some(Extent::Data { id, .. }) => break (j, *id),
                        Some(Extent::Zero { .. }) => {}
                    }
                };
                {
                    let (lock, cv) = &*window;
                    let mut want = lock.lock().expect("read-ahead window");
                    while *want != usize::MAX && i >= *want + READ_AHEAD {
                        want = cv.wait(want).expect("read-ahead window");
                    }
                    if *want == usize::MAX {
                        return;
                    }
                }
                if tx.send((i, reader.fetch(Kind::Data, &id))).is_err() {
                    return;
                }
            });
        }
        ReadAhead {
            rx: Some(rx),
            ready: std::collections::BTreeMap::new(),
            window,
        }
    }

    /// The fetched chunk of extent `i` (called in increasing `i`).
    fn take(&mut self, i: usize) -> Result<crate::store::Fetched> {
        {
            let (lock, cv) = &*self.window;
            *lock.lock().expect("read-ahead window") = i;
            cv.notify_all();
        }
        loop {
            if let Some(r) = self.ready.remove(&i) {
                return r;
            }
            let rx = self.rx.as_ref().expect("receiver while running");
            let (j, r) = rx
                .recv()
                .map_err(|_| VaultError::Usage("read-ahead threads ended early".into()))?;
            self.ready.insert(j, r);
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Stop waiting fetchers and close the channel so blocked senders return; the scope
        // then joins them.
        let (lock, cv) = &*self.window;
        *lock.lock().expect("read-ahead window") = usize::MAX;
        cv.notify_all();
        self.rx = None;
    }
}

/// Sets the modification time, then the mode (last: it may take away the right to open).
fn set_meta(out: &Path, e: &Entry) -> Result<()> {
    let t = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::new(
            e.mtime.max(0) as u64,
            e.mtime_nsec,
        ))
        .unwrap_or(std::time::UNIX_EPOCH);
    let f = File::open(out).map_err(io_err(out))?;
    f.set_times(fs::FileTimes::new().set_modified(t))
        .map_err(io_err(out))?;
    drop(f);
    fs::set_permissions(out, fs::Permissions::from_mode(e.mode)).map_err(io_err(out))
}
