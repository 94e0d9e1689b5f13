//! Manifests: the file tree of a snapshot (names, sizes, modes, mtimes, chunk lists) and the
//! snapshot's root record, with their compact binary codecs.
//!
//! The serialized tree is cut into chunks and stored like file data (sealed, erasure-coded), so
//! peers cannot tell manifest shards from data shards; the root record lists those chunks and is
//! stored under an id derived from the owner secret and the snapshot number.
//!
//! Decoders trust nothing: every length is checked against the bytes left, paths cannot escape
//! the destination (no `..`, no absolute paths), entries must be sorted and unique, and a file's
//! extents must add up to its size. Memory: a decoded tree costs about its serialized size plus
//! ~100 bytes per entry; manifests are limited to [`MANIFEST_BYTES_MAX`].

use crate::chunker::CHUNK_BYTES_MAX;
use crate::error::{corrupt, Result};
use crate::ChunkId;

/// Largest serialized tree accepted (about two million files).
pub const MANIFEST_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// One stretch of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Bytes stored in a chunk.
    Data {
        /// The chunk.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
    /// A run of zero bytes (a hole or an all-zero chunk): stored as nothing, restored sparse.
    Zero {
        /// Its length.
        len: u64,
    },
}

impl Extent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => u64::from(*len),
            Extent::Zero { len } => *len,
        }
    }

    /// Whether the extent is empty (never true in a valid manifest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file and its content.
    File {
        /// The extents, in order; their lengths add up to the entry's size.
        extents: Vec<Extent>,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as stored.
        target: Vec<u8>,
    },
}

/// One file, directory or link of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path in the vault: relative, `/`-separated, no empty, `.` or `..` components.
    pub path: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Kind and content.
    pub kind: EntryKind,
}

/// A snapshot's file tree: entries sorted by path, unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Checks a vault path.
pub fn valid_path(p: &[u8]) -> bool {
    !p.is_empty()
        && !p.contains(&0)
        && p.split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

impl Tree {
    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64
    }

    /// Total file bytes.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Index of the entry at `path`.
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
    }

    /// The entry at `path` and everything below it (all entries for an empty path).
    pub fn subtree<'a>(&'a self, path: &'a [u8]) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| path.is_empty() || under(&e.path, path))
    }

    /// Replaces everything at or below each of `roots` by `new` entries (which must all be at or
    /// below one of `roots`), keeping the order.
    pub fn replace(&mut self, roots: &[Vec<u8>], new: Vec<Entry>) {
        self.entries
            .retain(|e| !roots.iter().any(|r| under(&e.path, r)));
        self.entries.extend(new);
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self.entries.dedup_by(|a, b| a.path == b.path);
    }

    /// Serializes the tree.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 * self.entries.len() + 16);
        w.extend_from_slice(TREE_MAGIC);
        put_varint(&mut w, self.entries.len() as u64);
        for e in &self.entries {
            put_bytes(&mut w, &e.path);
            let tag = match e.kind {
                EntryKind::Dir => 0,
                EntryKind::File { .. } => 1,
                EntryKind::Symlink { .. } => 2,
            };
            w.push(tag);
            put_varint(&mut w, u64::from(e.mode));
            put_varint(&mut w, zigzag(e.mtime));
            put_varint(&mut w, u64::from(e.mtime_nsec));
            match &e.kind {
                EntryKind::Dir => {}
                EntryKind::File { extents } => {
                    put_varint(&mut w, e.size);
                    put_varint(&mut w, extents.len() as u64);
                    for x in extents {
                        match x {
                            Extent::Data { id, len } => {
                                w.push(0);
                                w.extend_from_slice(&id.0);
                                put_varint(&mut w, u64::from(*len));
                            }
                            Extent::Zero { len } => {
                                w.push(1);
                                put_varint(&mut w, *len);
                            }
                        }
                    }
                }
                EntryKind::Symlink { target } => put_bytes(&mut w, target),
            }
        }
        w
    }

    /// Parses a serialized tree; `what` names it in errors ("manifest of snapshot 3").
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let mut r = Reader::new(bytes, what);
        r.magic(TREE_MAGIC)?;
        let count = r.varint()?;
        // Every entry takes at least 6 bytes: a count larger than that is a lie.
        if count > (r.left() / 6) as u64 {
            return Err(r.err("entry count larger than the manifest"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let path = r.bytes()?.to_vec();
            if !valid_path(&path) {
                return Err(r.err(format!("invalid path {:?}", String::from_utf8_lossy(&path))));
            }
            if let Some(prev) = entries.last() {
                if prev.path >= path {
                    return Err(r.err("entries not sorted or not unique"));
                }
            }
            let tag = r.byte()?;
            let mode = u32::try_from(r.varint()?).map_err(|_| r.err("mode out of range"))?;
            let mtime = unzigzag(r.varint()?);
            let mtime_nsec = r.varint()?;
            if mtime_nsec >= 1_000_000_000 {
                return Err(r.err("mtime nanoseconds out of range"));
            }
            let (size, kind) = match tag {
                0 => (0, EntryKind::Dir),
                1 => {
                    let size = r.varint()?;
                    let n = r.varint()?;
                    if n > (r.left() / 2) as u64 {
                        return Err(r.err("extent count larger than the manifest"));
                    }
                    let mut extents = Vec::with_capacity(n as usize);
                    let mut sum = 0u64;
                    for _ in 0..n {
                        let x = match r.byte()? {
                            0 => {
                                let id = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
                                let len = r.varint()?;
                                if len == 0 || len > CHUNK_BYTES_MAX as u64 {
                                    return Err(r.err("chunk length out of range"));
                                }
                                Extent::Data {
                                    id,
                                    len: len as u32,
                                }
                            }
                            1 => {
                                let len = r.varint()?;
                                if len == 0 {
                                    return Err(r.err("empty zero extent"));
                                }
                                Extent::Zero { len }
                            }
                            t => return Err(r.err(format!("unknown extent type {t}"))),
                        };
                        sum = sum
                            .checked_add(x.len())
                            .ok_or_else(|| r.err("file size overflows"))?;
                        extents.push(x);
                    }
                    if sum != size {
                        return Err(r.err("extents do not add up to the file size"));
                    }
                    (size, EntryKind::File { extents })
                }
                2 => (
                    0,
                    EntryKind::Symlink {
                        target: r.bytes()?.to_vec(),
                    },
                ),
                t => return Err(r.err(format!("unknown entry type {t}"))),
            };
            entries.push(Entry {
                path,
                mode,
                mtime,
                mtime_nsec: mtime_nsec as u32,
                size,
                kind,
            });
        }
        r.end()?;
        Ok(Self { entries })
    }
}

/// Whether `path` is `root` or below it.
pub fn under(path: &[u8], root: &[u8]) -> bool {
    path.starts_with(root) && (path.len() == root.len() || path[root.len()] == b'/')
}

const TREE_MAGIC: &[u8; 4] = b"CMF1";
const ROOT_MAGIC: &[u8; 4] = b"CRT1";

/// A snapshot's root record: where its manifest is, plus a summary for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRecord {
    /// Snapshot number (1, 2, …); snapshot `seq` is stored under `Keys::head_id(seq)`.
    pub seq: u64,
    /// When the snapshot was taken, seconds since the epoch.
    pub time: i64,
    /// Data shards per chunk when it was taken.
    pub k: u8,
    /// All shards per chunk.
    pub n: u8,
    /// Files in the tree.
    pub files: u64,
    /// Bytes in the tree's files.
    pub bytes: u64,
    /// The serialized tree's chunks, in order.
    pub manifest: Vec<(ChunkId, u32)>,
}

impl RootRecord {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + 40 * self.manifest.len());
        w.extend_from_slice(ROOT_MAGIC);
        put_varint(&mut w, self.seq);
        put_varint(&mut w, zigzag(self.time));
        w.push(self.k);
        w.push(self.n);
        put_varint(&mut w, self.files);
        put_varint(&mut w, self.bytes);
        put_varint(&mut w, self.manifest.len() as u64);
        for (id, len) in &self.manifest {
            w.extend_from_slice(&id.0);
            put_varint(&mut w, u64::from(*len));
        }
        w
    }

    /// Parses a root record.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let mut r = Reader::new(bytes, what);
        r.magic(ROOT_MAGIC)?;
        let seq = r.varint()?;
        let time = unzigzag(r.varint()?);
        let (k, n) = (r.byte()?, r.byte()?);
        if k == 0 || n <= k {
            return Err(r.err("invalid k-of-n"));
        }
        let files = r.varint()?;
        let bytes_total = r.varint()?;
        let count = r.varint()?;
        if count > (r.left() / 33) as u64 {
            return Err(r.err("chunk count larger than the record"));
        }
        let mut manifest = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for _ in 0..count {
            let id = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
            let len = r.varint()?;
            if len == 0 || len > CHUNK_BYTES_MAX as u64 {
                return Err(r.err("manifest chunk length out of range"));
            }
            total += len;
            manifest.push((id, len as u32));
        }
        if total > MANIFEST_BYTES_MAX {
            return Err(r.err("manifest larger than the limit"));
        }
        r.end()?;
        Ok(Self {
            seq,
            time,
            k,
            n,
            files,
            bytes: bytes_total,
            manifest,
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(w: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        w.push((v as u8) | 0x80);
        v >>= 7;
    }
    w.push(v as u8);
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_varint(w, b.len() as u64);
    w.extend_from_slice(b);
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'a str) -> Self {
        Self { b, pos: 0, what }
    }

    fn err(&self, reason: impl Into<String>) -> crate::VaultError {
        corrupt(
            self.what,
            format!("{} (at byte {})", reason.into(), self.pos),
        )
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err("truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(self.err("number too large"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // One encoding per number, so equal trees have equal bytes.
                if i > 0 && b == 0 {
                    return Err(self.err("number not in shortest form"));
                }
                return Ok(v);
            }
        }
        Err(self.err("number too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        if n > self.left() as u64 {
            return Err(self.err("truncated"));
        }
        self.take(n as usize)
    }

    fn magic(&mut self, m: &[u8; 4]) -> Result<()> {
        if self.take(4).ok() != Some(m.as_slice()) {
            return Err(self.err("not a Cairn manifest of this version (bad magic)"));
        }
        Ok(())
    }

    fn end(&self) -> Result<()> {
        if self.left() != 0 {
            return Err(self.err("trailing bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_extent() -> impl Strategy<Value = Extent> {
        prop_oneof![
            (any::<[u8; 32]>(), 1u32..=CHUNK_BYTES_MAX as u32).prop_map(|(id, len)| Extent::Data {
                id: ChunkId(id),
                len
            }),
            (1u64..1 << 40).prop_map(|len| Extent::Zero { len }),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let path =
            proptest::collection::vec("[a-zé日本 .~_-]{1,8}", 1..5).prop_filter_map("valid", |c| {
                let p = c.join("/").into_bytes();
                valid_path(&p).then_some(p)
            });
        let kind = prop_oneof![
            Just(EntryKind::Dir),
            proptest::collection::vec(arb_extent(), 0..4)
                .prop_map(|extents| EntryKind::File { extents }),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|target| EntryKind::Symlink { target }),
        ];
        (path, any::<u32>(), any::<i64>(), 0u32..1_000_000_000, kind).prop_map(
            |(path, mode, mtime, mtime_nsec, kind)| {
                let size = match &kind {
                    EntryKind::File { extents } => extents.iter().map(Extent::len).sum(),
                    _ => 0,
                };
                Entry {
                    path,
                    mode,
                    mtime,
                    mtime_nsec,
                    size,
                    kind,
                }
            },
        )
    }

    fn arb_tree() -> impl Strategy<Value = Tree> {
        proptest::collection::vec(arb_entry(), 0..20).prop_map(|mut entries| {
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            entries.dedup_by(|a, b| a.path == b.path);
            Tree { entries }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn tree_codec_round_trips(tree in arb_tree()) {
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes, "m").unwrap(), tree);
        }

        #[test]
        fn tree_decoder_refuses_every_truncation(tree in arb_tree()) {
            let bytes = tree.encode();
            for cut in 0..bytes.len() {
                prop_assert!(Tree::decode(&bytes[..cut], "m").is_err());
            }
        }

        #[test]
        fn decoders_never_panic_on_mutated_or_random_input(
            tree in arb_tree(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            noise in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = tree.encode();
            for (pos, v) in flips {
                let n = bytes.len();
                bytes[pos % n] = v;
            }
            if let Ok(t) = Tree::decode(&bytes, "m") {
                // Whatever decodes is well formed and re-encodes to the same bytes.
                prop_assert_eq!(t.encode(), bytes);
            }
            let _ = Tree::decode(&noise, "m");
            let _ = RootRecord::decode(&noise, "r");
            crate::fuzz_manifest(&noise);
        }

        #[test]
        fn root_record_round_trips(
            seq in any::<u64>(), time in any::<i64>(), files in any::<u64>(), bytes in any::<u64>(),
            ids in proptest::collection::vec((any::<[u8; 32]>(), 1u32..=CHUNK_BYTES_MAX as u32), 0..10),
        ) {
            let r = RootRecord {
                seq, time, k: 4, n: 8, files, bytes,
                manifest: ids.into_iter().map(|(i, l)| (ChunkId(i), l)).collect(),
            };
            let enc = r.encode();
            prop_assert_eq!(RootRecord::decode(&enc, "r").unwrap(), r);
            for cut in 0..enc.len() {
                prop_assert!(RootRecord::decode(&enc[..cut], "r").is_err());
            }
        }
    }

    #[test]
    fn escaping_paths_are_refused_with_the_manifest_named() {
        for bad in [
            &b"../etc"[..],
            b"/abs",
            b"a//b",
            b"a/./b",
            b"a/",
            b"",
            b"a\0b",
        ] {
            let t = Tree {
                entries: vec![Entry {
                    path: bad.to_vec(),
                    mode: 0o644,
                    mtime: 0,
                    mtime_nsec: 0,
                    size: 0,
                    kind: EntryKind::Dir,
                }],
            };
            let e = Tree::decode(&t.encode(), "manifest of snapshot 7").unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains("manifest of snapshot 7") && m.contains("invalid path"),
                "{m}"
            );
        }
    }

    #[test]
    fn extents_must_add_up() {
        let mut t = Tree {
            entries: vec![Entry {
                path: b"f".to_vec(),
                mode: 0,
                mtime: 0,
                mtime_nsec: 0,
                size: 10,
                kind: EntryKind::File {
                    extents: vec![Extent::Zero { len: 9 }],
                },
            }],
        };
        assert!(Tree::decode(&t.encode(), "m")
            .unwrap_err()
            .to_string()
            .contains("do not add up"));
        t.entries[0].size = 9;
        assert!(Tree::decode(&t.encode(), "m").is_ok());
    }

    #[test]
    fn replace_keeps_other_entries_and_order() {
        let e = |p: &str| Entry {
            path: p.as_bytes().to_vec(),
            mode: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            kind: EntryKind::Dir,
        };
        let mut t = Tree {
            entries: vec![e("a"), e("a/x"), e("a.txt"), e("b")],
        };
        t.entries.sort_by(|a, b| a.path.cmp(&b.path));
        t.replace(&[b"a".to_vec()], vec![e("a"), e("a/y")]);
        let paths: Vec<&[u8]> = t.entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, vec![&b"a"[..], b"a.txt", b"a/y", b"b"]);
        assert_eq!(t.subtree(b"a").count(), 2);
    }
}
