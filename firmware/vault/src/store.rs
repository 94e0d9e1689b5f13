//! The two halves of the chunk path: [`ChunkWriter`] (id → dedup → seal → encode → shards to the
//! sink) and [`ChunkReader`] (shards from the source → checks → decode → open).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Result, VaultError};
use crate::keys::{Keys, Kind};
use crate::manifest::Extent;
use crate::seal::{self, AeadKind};
use crate::shard::{verify_shard, Authority, Codec, ShardHeader};
use crate::sink::{Served, ShardError, ShardId, ShardSink, ShardSource};
use crate::ChunkId;

/// Per-thread buffers reused from chunk to chunk (parity and one framed shard).
#[derive(Default)]
pub struct Scratch {
    parity: Vec<u8>,
    frame: Vec<u8>,
}

/// Counters of a write session.
#[derive(Default, Debug)]
pub struct WriteStats {
    /// Chunks sealed and stored.
    pub stored: AtomicU64,
    /// Chunks skipped because already stored.
    pub deduplicated: AtomicU64,
    /// All-zero chunks recorded as zero runs.
    pub zero: AtomicU64,
    /// Shard bytes handed to the sink.
    pub shard_bytes: AtomicU64,
}

/// Seals and stores chunks; shared by the put pipeline's workers.
pub struct ChunkWriter<'a> {
    keys: &'a Keys,
    aead: AeadKind,
    codec: &'a Codec,
    sink: &'a dyn ShardSink,
    /// Ids known stored (loaded from the index, grown as chunks are stored). Memory: ~48 bytes
    /// per chunk, about 48 MiB per TiB stored at 1 MiB chunks.
    known: Mutex<HashSet<ChunkId>>,
    /// Ids stored in this session, appended to the index once flushed.
    fresh: Mutex<Vec<ChunkId>>,
    /// Counters.
    pub stats: WriteStats,
}

impl<'a> ChunkWriter<'a> {
    /// A writer over `sink` that skips the `known` chunks.
    pub fn new(
        keys: &'a Keys,
        aead: AeadKind,
        codec: &'a Codec,
        sink: &'a dyn ShardSink,
        known: HashSet<ChunkId>,
    ) -> Self {
        Self {
            keys,
            aead,
            codec,
            sink,
            known: Mutex::new(known),
            fresh: Mutex::new(Vec::new()),
            stats: WriteStats::default(),
        }
    }

    /// Stores one chunk of file data held in `buf` (its capacity is reused: reserve
    /// `seal::sealed_len(CHUNK_BYTES_MAX) + k` to avoid reallocations). Returns its extent: an
    /// all-zero chunk becomes a zero run and is not stored.
    pub fn store_data(&self, buf: &mut Vec<u8>, scratch: &mut Scratch) -> Result<Extent> {
        let len = buf.len();
        if is_zero(buf) {
            self.stats.zero.fetch_add(1, Ordering::Relaxed);
            return Ok(Extent::Zero { len: len as u64 });
        }
        let id = self.store(Kind::Data, buf, scratch)?;
        Ok(Extent::Data {
            id,
            len: len as u32,
        })
    }

    /// Stores a content-addressed chunk (data or manifest) and returns its id.
    pub fn store(&self, kind: Kind, buf: &mut Vec<u8>, scratch: &mut Scratch) -> Result<ChunkId> {
        let id = self.keys.chunk_id(kind, buf);
        // Claim the id first: a second worker meeting the same content skips it.
        if !self.known.lock().expect("index lock").insert(id) {
            self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            return Ok(id);
        }
        let nonce = seal::nonce_for(self.keys, kind, &id, buf);
        self.seal_and_put(kind, &id, nonce, buf, scratch)?;
        self.fresh.lock().expect("fresh lock").push(id);
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Stores the root record of snapshot `seq`.
    pub fn store_root(&self, seq: u64, record: &[u8]) -> Result<()> {
        let id = self.keys.head_id(seq);
        let mut buf = record.to_vec();
        let nonce = seal::nonce_for(self.keys, Kind::Root, &id, &buf);
        self.seal_and_put(Kind::Root, &id, nonce, &mut buf, &mut Scratch::default())
    }

    fn seal_and_put(
        &self,
        kind: Kind,
        id: &ChunkId,
        nonce: [u8; 12],
        buf: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        seal::seal_in_place(self.keys, self.aead, kind, id, nonce, buf);
        self.codec.encode(
            id,
            self.aead,
            buf,
            &mut scratch.parity,
            &mut scratch.frame,
            Authority::Owner(self.keys.shard_mac_key()),
            |index, shard| {
                self.stats
                    .shard_bytes
                    .fetch_add(shard.len() as u64, Ordering::Relaxed);
                self.sink
                    .put_shard(&ShardId { chunk: *id, index }, shard)
                    .map_err(VaultError::from)
            },
        )
    }

    /// Data shards per chunk.
    pub fn codec_k(&self) -> usize {
        self.codec.k()
    }

    /// Ids stored in this session.
    pub fn take_fresh(&self) -> Vec<ChunkId> {
        std::mem::take(&mut self.fresh.lock().expect("fresh lock"))
    }
}

/// Whether every byte is zero; 64 bytes per step, stopping at the first non-zero block, so
/// random data costs almost nothing.
pub fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for w in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

/// Counters of a read session: shards that were missing or corrupt (redundancy degraded).
#[derive(Default, Debug)]
pub struct ReadStats {
    /// Shards not found.
    pub missing: AtomicU64,
    /// Shards that failed their checks or could not be read.
    pub corrupt: AtomicU64,
    /// Places (partners) that served bytes failing the owner's check, at most
    /// [`BAD_PLACES_MAX`] named (shared with other readers of the same vault).
    pub bad_places: BadPlaces,
}

/// A set of places that served bad bytes, shared by a vault's readers.
pub type BadPlaces = Arc<Mutex<std::collections::BTreeSet<String>>>;

/// Places named in [`ReadStats::bad_places`] at most.
pub const BAD_PLACES_MAX: usize = 16;

/// Times one shard is asked for again after a place served bytes failing the check.
const RETRIES_MAX: usize = 8;

impl ReadStats {
    fn bad_place(&self, place: &str) {
        let mut b = self.bad_places.lock().expect("stats lock");
        if b.len() < BAD_PLACES_MAX {
            b.insert(place.to_owned());
        }
    }

    /// The places that served bad bytes, sorted.
    pub fn bad_places(&self) -> Vec<String> {
        self.bad_places
            .lock()
            .expect("stats lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Fetches and opens chunks.
pub struct ChunkReader<'a> {
    keys: &'a Keys,
    source: &'a dyn ShardSource,
    /// n when known (bounds the search for shards); up to 255 indices are tried otherwise.
    n_hint: Option<usize>,
    /// Shards asked for at once before the others, one thread each (k when known): a network
    /// backend then waits one round trip per chunk instead of k.
    prefetch: usize,
    codecs: Mutex<HashMap<(u8, u8), Arc<Codec>>>,
    /// Counters.
    pub stats: ReadStats,
}

/// A fetched chunk and what its shards said.
pub struct Fetched {
    /// The plaintext.
    pub data: Vec<u8>,
    /// The header of one of its shards (k, n, AEAD).
    pub header: ShardHeader,
}

impl<'a> ChunkReader<'a> {
    /// A reader over `source`.
    pub fn new(keys: &'a Keys, source: &'a dyn ShardSource, n_hint: Option<usize>) -> Self {
        Self {
            keys,
            source,
            n_hint,
            prefetch: 1,
            codecs: Mutex::new(HashMap::new()),
            stats: ReadStats::default(),
        }
    }

    /// Records the places that serve bad bytes in `places` (the vault's, shared by its readers).
    pub fn with_bad_places(mut self, places: BadPlaces) -> Self {
        self.stats.bad_places = places;
        self
    }

    /// Asks for the first `count` shards of a chunk concurrently (normally k).
    pub fn with_prefetch(mut self, count: usize) -> Self {
        self.prefetch = count.clamp(1, 32);
        self
    }

    /// Fetches, checks, rebuilds and opens chunk `id` of `kind`.
    pub fn fetch(&self, kind: Kind, id: &ChunkId) -> Result<Fetched> {
        let mut header: Option<ShardHeader> = None;
        let mut payloads: Vec<Option<Vec<u8>>> = Vec::new();
        let (mut found, mut missing, mut corrupt) = (0usize, 0usize, 0usize);
        let mut detail = String::new();
        let mut i = 0usize;
        // Memory: at most `prefetch` shards held at once before decoding, as without it k are.
        let mut early: Vec<Option<std::result::Result<Served, ShardError>>> = Vec::new();
        if self.prefetch > 1 {
            let count = self.prefetch.min(self.n_hint.unwrap_or(255));
            early = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..count)
                    .map(|j| {
                        scope.spawn(move || {
                            let sid = ShardId {
                                chunk: *id,
                                index: j as u8,
                            };
                            self.source.get_shard_avoiding(&sid, &[])
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| Some(h.join().expect("shard fetch thread")))
                    .collect()
            });
        }
        loop {
            let limit = header.map_or(self.n_hint.unwrap_or(255), |h| usize::from(h.n));
            let want = header.map_or(usize::MAX, |h| usize::from(h.k));
            if i >= limit || found >= want {
                break;
            }
            let sid = ShardId {
                chunk: *id,
                index: i as u8,
            };
            let mut got = match early.get_mut(i).and_then(Option::take) {
                Some(r) => r,
                None => self.source.get_shard_avoiding(&sid, &[]),
            };
            // Places whose bytes for this shard failed the check: asked around them.
            let mut avoid: Vec<String> = Vec::new();
            loop {
                let served = match got {
                    Ok(s) => s,
                    Err(ShardError::Missing { .. }) => {
                        missing += 1;
                        tracing::debug!(shard = %sid, "shard is missing");
                        break;
                    }
                    Err(e) => {
                        corrupt += 1;
                        tracing::debug!(shard = %sid, error = %e, "shard cannot be read");
                        detail = format!(", last failure: {e}");
                        break;
                    }
                };
                let why = match verify_shard(&served.bytes, self.keys.shard_mac_key()) {
                    Ok(Ok((h, payload))) => {
                        let consistent = h.chunk == *id
                            && usize::from(h.index) == i
                            && header.is_none_or(|f| {
                                (f.k, f.n, f.sealed_len, f.aead) == (h.k, h.n, h.sealed_len, h.aead)
                            });
                        if consistent {
                            if header.is_none() {
                                header = Some(h);
                                payloads.resize(usize::from(h.n), None);
                            }
                            payloads[i] = Some(payload.to_vec());
                            found += 1;
                            break;
                        }
                        "its header does not match".to_owned()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("damaged: {e}"),
                };
                corrupt += 1;
                let from = served
                    .place
                    .as_deref()
                    .map_or(String::new(), |p| format!(" from {p}"));
                tracing::warn!(shard = %sid, "shard{from} refused: {why}");
                detail = format!(", last failure: shard {sid}{from}: {why}");
                // Where the source said who served them, ask it again around that place.
                match served.place {
                    Some(p) if avoid.len() < RETRIES_MAX => {
                        self.stats.bad_place(&p);
                        avoid.push(p);
                        got = self.source.get_shard_avoiding(&sid, &avoid);
                    }
                    Some(p) => {
                        self.stats.bad_place(&p);
                        break;
                    }
                    None => break,
                }
            }
            i += 1;
        }
        self.stats
            .missing
            .fetch_add(missing as u64, Ordering::Relaxed);
        self.stats
            .corrupt
            .fetch_add(corrupt as u64, Ordering::Relaxed);
        let Some(h) = header.filter(|h| found >= usize::from(h.k)) else {
            let k = header.map_or(0, |h| usize::from(h.k));
            let bad = self.stats.bad_places();
            if !bad.is_empty() {
                detail.push_str(&format!("; refused bytes served by {}", bad.join(", ")));
            }
            return Err(VaultError::NotEnoughShards {
                chunk: *id,
                found,
                k,
                missing,
                corrupt,
                detail,
            });
        };
        let codec = self.codec(h.k, h.n)?;
        let mut sealed = codec.decode(payloads, h.sealed_len as usize)?;
        seal::open_in_place(self.keys, h.aead, kind, id, &mut sealed)?;
        Ok(Fetched {
            data: sealed,
            header: h,
        })
    }

    fn codec(&self, k: u8, n: u8) -> Result<Arc<Codec>> {
        let mut c = self.codecs.lock().expect("codec cache");
        if let Some(codec) = c.get(&(k, n)) {
            return Ok(codec.clone());
        }
        let codec = Arc::new(Codec::new(usize::from(k), usize::from(n))?);
        c.insert((k, n), codec.clone());
        Ok(codec)
    }

    /// Whether any shard of `id` exists (one probe per index until one answers).
    /// Refused bytes are asked for again around the place that served them, as reads do: a
    /// partner forging every index of the chunk must not hide a snapshot from a restore.
    pub fn exists(&self, id: &ChunkId, n: usize) -> Result<bool> {
        for i in 0..n {
            let sid = ShardId {
                chunk: *id,
                index: i as u8,
            };
            let mut avoid: Vec<String> = Vec::new();
            let mut got = self.source.get_shard_avoiding(&sid, &avoid);
            loop {
                match got {
                    Ok(s)
                        if verify_shard(&s.bytes, self.keys.shard_mac_key())
                            .is_ok_and(|r| r.is_ok()) =>
                    {
                        return Ok(true)
                    }
                    Ok(Served { place: Some(p), .. }) if avoid.len() < RETRIES_MAX => {
                        self.stats.bad_place(&p);
                        avoid.push(p);
                        got = self.source.get_shard_avoiding(&sid, &avoid);
                    }
                    Ok(_) | Err(ShardError::Missing { .. }) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(false)
    }
}
