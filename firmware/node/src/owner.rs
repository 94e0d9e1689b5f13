//! The owner's side: placing this plug's shards on partners, fetching them back, auditing the
//! holders and repairing chunks whose holders failed or vanished.
//!
//! Shards of one chunk go to distinct partners (and distinct public IPs where known), chosen by
//! [`placement`](crate::placement) among live partners weighted by the free space they report
//! for us and their audit score. Each chunk's record (see [`crate::records`]) stays in RAM
//! while its shards are being placed — at most [`PENDING_CHUNKS_MAX`] chunks — and is then written
//! to the node's chunk store; audits and repair page through the records 64 at a time.
//!
//! A shard no partner can take is kept in the node's own chunk store and its slot names
//! [`HERE`]: the owner's put succeeds on a plug without (enough) partners, and the repair round
//! moves such shards out once eligible partners exist.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cairn_store::{Lease, ShardInfo};
use cairn_vault::shard::{decode_shard, shard_auth, Authority, Codec};
use libp2p::PeerId;
use serde::Serialize;

use crate::placement::{place, Candidate};
use crate::records::{
    check_vault_shard, held_id, hex, local_id, record_id, shard_key, unhex32, AuditRec,
    ChunkRecord, Slot, HERE, OWN_RECORDS, OWN_SHARDS,
};
use crate::repair::{plan, ChunkState, Holding, PeerHealth, Policy};
use crate::state::{now_secs, Shared};
use crate::wire::{ErrorCode, Msg};

/// Chunks whose records may wait in RAM for their shards to be placed (~1 KiB each).
pub const PENDING_CHUNKS_MAX: usize = 256;

/// Records kept after a read for the other shards of the same chunk (~1 KiB each).
pub const RECENT_RECORDS: usize = 32;

/// Records read per page when walking all of them.
const PAGE: usize = 64;

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> T {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .expect("blocking task panicked")
}

fn load_record(shared: &Shared, chunk: &[u8; 32]) -> Result<Option<ChunkRecord>, String> {
    let id = record_id(chunk);
    match shared.store.get(id) {
        Ok(b) => ChunkRecord::decode(&b, &id).map(Some),
        Err(cairn_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("placement record {id}: {e}")),
    }
}

fn save_record(shared: &Shared, r: &ChunkRecord) -> Result<(), String> {
    let chunk = r.chunk_id().ok_or("record without chunk id")?;
    shared.state().recent.retain(|(c, _)| *c != chunk);
    shared
        .store
        .put(record_id(&chunk), &r.encode(), OWN_RECORDS, Lease::Forever)
        .map_err(|e| format!("writing placement record of chunk {}: {e}", r.chunk))
}

/// Keeps shard `index` of `chunk` in this plug's own chunk store (blocking): no partner could
/// take it. A full store is named in the error.
///
/// These bytes do not count against the node's `capacity`: that is what the plug offers its
/// partners (`used` and the free space partners are told count only their shards), while the
/// owner's shards kept here are bounded by the disk itself, stay only until partners take them,
/// and are reported apart (`status`: `chunks.held_here`, `chunks.held_here_bytes`).
fn keep_here(shared: &Shared, chunk: &[u8; 32], index: u8, bytes: &[u8]) -> Result<(), String> {
    shared
        .store
        .put(local_id(chunk, index), bytes, OWN_SHARDS, Lease::Forever)
        .map_err(|e| {
            format!(
                "keeping shard {} on this plug: chunk store {}: {e}",
                shard_key(chunk, index),
                shared.cfg.home.join("store").display()
            )
        })
}

/// The bytes of shard `index` of `chunk` kept here, checked against the recorded hash
/// (blocking); `Ok(None)` when the store has no such copy or a damaged one.
fn read_here(
    shared: &Shared,
    chunk: &[u8; 32],
    index: u8,
    hash: &str,
) -> Result<Option<Vec<u8>>, String> {
    match shared.store.get(local_id(chunk, index)) {
        Ok(b) if hex(blake3::hash(&b).as_bytes()) == hash => Ok(Some(b)),
        Ok(_) => {
            tracing::error!(
                "shard {} kept here does not match its record",
                shard_key(chunk, index)
            );
            Ok(None)
        }
        Err(cairn_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!(
            "reading shard {} kept here: {e}",
            shard_key(chunk, index)
        )),
    }
}

/// Deletes the copies kept here of `chunk`'s shards at `indices` (blocking), once a saved
/// record names their partners; a copy already gone is fine.
fn drop_here(shared: &Shared, chunk: &[u8; 32], indices: &[u8]) {
    let ids: Vec<_> = indices.iter().map(|i| local_id(chunk, *i)).collect();
    match shared.store.delete_many(&ids) {
        Ok(rs) => {
            for (i, r) in indices.iter().zip(rs) {
                if let Err(e) = r.or_else(|e| match e {
                    cairn_store::Error::NotFound { .. } => Ok(()),
                    e => Err(e),
                }) {
                    tracing::warn!("deleting shard {} kept here: {e}", shard_key(chunk, *i));
                }
            }
        }
        Err(e) => tracing::warn!("deleting shards kept here: {e}"),
    }
}

/// The page of records after `after` (blocking): the last id and the records, damaged ones
/// logged and skipped; `None` past the last.
fn load_page(
    shared: &Shared,
    after: Option<cairn_store::ShardId>,
) -> Result<Option<(cairn_store::ShardId, Vec<ChunkRecord>)>, String> {
    let page: Vec<ShardInfo> = shared
        .store
        .shards_of(OWN_RECORDS, after, PAGE)
        .map_err(|e| format!("listing placement records: {e}"))?;
    let Some(last) = page.last().map(|i| i.id) else {
        return Ok(None);
    };
    let mut records = Vec::with_capacity(page.len());
    for info in page {
        match shared.store.get(info.id) {
            Ok(b) => match ChunkRecord::decode(&b, &info.id) {
                Ok(r) => records.push(r),
                Err(e) => tracing::error!("{e}"),
            },
            Err(e) => tracing::error!("placement record {}: {e}", info.id),
        }
    }
    Ok(Some((last, records)))
}

/// Calls `f` on every stored record, page by page (blocking).
fn each_record(shared: &Shared, mut f: impl FnMut(ChunkRecord)) -> Result<(), String> {
    let mut after = None;
    while let Some((last, records)) = load_page(shared, after)? {
        after = Some(last);
        records.into_iter().for_each(&mut f);
    }
    Ok(())
}

/// Rebuilds "bytes partners hold for us" from the records (authoritative after a crash).
pub fn rebuild_books(shared: &Shared) -> anyhow::Result<()> {
    let mut per_peer: BTreeMap<String, u64> = BTreeMap::new();
    each_record(shared, |r| {
        for s in r.slots.iter().flatten() {
            *per_peer.entry(s.peer.clone()).or_default() += u64::from(s.len);
        }
    })
    .map_err(anyhow::Error::msg)?;
    let mut st = shared.state();
    for (p, bytes) in per_peer {
        let Ok(id) = p.parse::<PeerId>() else {
            continue;
        };
        if st.is_partner(&id) {
            st.ledger.set_held_for_us(&id, bytes);
        }
    }
    Ok(())
}

/// Live partners that may take a shard of `len` bytes, minus `exclude` and their public IPs.
fn candidates(shared: &Shared, exclude: &HashSet<PeerId>, len: u64) -> Vec<Candidate<PeerId>> {
    let now = now_secs();
    let mut st = shared.state();
    let connected: Vec<PeerId> = st
        .peers
        .iter()
        .filter(|(_, m)| m.connections > 0)
        .map(|(p, _)| *p)
        .collect();
    for p in connected {
        st.tracker.seen(&p, now);
    }
    let taken_ips: HashSet<std::net::IpAddr> = exclude
        .iter()
        .filter_map(|p| st.peers.get(p).and_then(|m| m.public_ip))
        .collect();
    st.partner_ids()
        .into_iter()
        .filter_map(|p| {
            if exclude.contains(&p) {
                return None;
            }
            if st.tracker.health(&p, now) != PeerHealth::Live {
                return None;
            }
            let meta = st.peers.get(&p).cloned().unwrap_or_default();
            if meta.unreachable() {
                return None;
            }
            if meta.public_ip.is_some_and(|ip| taken_ips.contains(&ip)) {
                return None;
            }
            Some(Candidate {
                peer: p,
                public_ip: meta.public_ip,
                // Unknown until the partner answers a free-space query: assume it has room,
                // its answer to the put will tell.
                free_bytes: meta.free_for_us.unwrap_or(u64::MAX / 4).max(len.min(1)),
                trust: st.tracker.score(&p).max(0.01),
            })
        })
        .collect()
}

/// The lease we ask holders for: the configured one, at most what holders grant.
fn lease_secs(shared: &Shared) -> u32 {
    let max = u64::from(crate::holder::LEASE_SECS_MAX);
    shared.cfg.lease.as_secs().min(max) as u32
}

/// Why no partner took a shard.
struct Unplaced {
    /// One line for a person.
    reason: String,
    /// A partner refused it as beyond the allowance its books give us: the owner must give
    /// before it gets more, so a new put fails with that reason instead of waiting here.
    over_quota: bool,
}

/// Sends `bytes` (shard `index` of `chunk`) to one partner outside `exclude`; retries others
/// on refusal. Returns the holder and its id in text form (for the record).
async fn place_one(
    shared: &Arc<Shared>,
    owner: &[u8; 32],
    chunk: [u8; 32],
    index: u8,
    bytes: &[u8],
    exclude: &mut HashSet<PeerId>,
    prefer: Option<PeerId>,
) -> Result<(PeerId, String), Unplaced> {
    let key = shard_key(&chunk, index);
    let len = bytes.len() as u64;
    let lease_secs = lease_secs(shared);
    let mut refusals: Vec<String> = Vec::new();
    let mut over_quota = false;
    let mut prefer = prefer;
    for attempt in 0..32u64 {
        let chosen = match prefer.take() {
            Some(p) if shared.health(&p) == PeerHealth::Live && !exclude.contains(&p) => p,
            _ => {
                let cands = candidates(shared, exclude, len);
                let seed = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes")) ^ attempt;
                match place(&cands, 1, len, seed) {
                    Ok(v) => v[0],
                    Err(_) => {
                        let partners = shared.state().saved.partners.len();
                        return Err(Unplaced {
                            over_quota,
                            reason: format!(
                            "no partner can take shard {key} ({len} bytes): {partners} partners, \
                             {} eligible after excluding those holding this chunk's other \
                             shards{}",
                            cands.len(),
                            if refusals.is_empty() {
                                String::new()
                            } else {
                                format!("; refused by: {}", refusals.join("; "))
                            }
                        ),
                        });
                    }
                }
            }
        };
        let peer = chosen;
        let name = peer.to_base58();
        exclude.insert(peer);
        // Another shard of this chunk may be on its way to the same partner right now.
        {
            let mut st = shared.state();
            let taken = st.reserving.contains(&(chunk, peer))
                || st.pending.get(&chunk).is_some_and(|r| {
                    r.slots.iter().enumerate().any(|(i, s)| {
                        i != usize::from(index) && s.as_ref().is_some_and(|s| s.peer == name)
                    })
                });
            if taken {
                continue;
            }
            st.reserving.insert((chunk, peer));
        }
        // On success the reservation stays until the caller has recorded the holder, so no
        // other shard of the chunk can slip onto this peer in between.
        match send_put(shared, owner, peer, key, bytes, lease_secs).await {
            Ok(()) => return Ok((peer, name)),
            Err((e, quota)) => {
                shared.state().reserving.remove(&(chunk, peer));
                over_quota |= quota;
                refusals.push(e);
            }
        }
    }
    Err(Unplaced {
        over_quota,
        reason: format!(
            "shard {key}: every partner tried refused: {}",
            refusals.join("; ")
        ),
    })
}

async fn send_put(
    shared: &Arc<Shared>,
    owner: &[u8; 32],
    peer: PeerId,
    key: crate::wire::ShardId,
    bytes: &[u8],
    lease_secs: u32,
) -> Result<(), (String, bool)> {
    let len = bytes.len() as u64;
    {
        let msg = Msg::Put {
            shard: key,
            lease_secs,
            data: bytes.to_vec(),
        };
        match shared.request_as(peer, owner, msg).await {
            Ok(Msg::Stored { shard }) if shard == key => {
                let mut st = shared.state();
                if let Some(m) = st.peers.get_mut(&peer) {
                    m.free_for_us = m.free_for_us.map(|f| f.saturating_sub(len));
                }
                Ok(())
            }
            Ok(Msg::Error { code, reason }) => {
                if code == ErrorCode::QuotaExceeded || code == ErrorCode::TooLarge {
                    if let Some(m) = shared.state().peers.get_mut(&peer) {
                        m.free_for_us = Some(0);
                    }
                }
                Err((
                    format!("{peer}: {reason}"),
                    code == ErrorCode::QuotaExceeded,
                ))
            }
            Ok(other) => Err((format!("{peer}: unexpected answer {other:?}"), false)),
            Err(e) => Err((e, false)),
        }
    }
}

/// Stores one shard of `owner`'s vault on a partner (the vault's `put_shard`).
pub async fn put_shard(
    shared: &Arc<Shared>,
    owner: [u8; 32],
    bytes: Vec<u8>,
) -> Result<(), String> {
    if shared.auth_for(&owner).is_none() {
        return Err(format!(
            "this node does not act for owner {} (the vault registers it first)",
            hex(&owner)
        ));
    }
    let (h, _) = decode_shard(&bytes).map_err(|e| format!("not a vault shard: {e}"))?;
    let chunk = h.chunk.0;
    let index = h.index;
    let key = shard_key(&chunk, index);
    let hash = hex(blake3::hash(&bytes).as_bytes());
    let needs_load = !shared.state().pending.contains_key(&chunk);
    let stored = if needs_load {
        blocking(shared, move |s| load_record(s, &chunk)).await?
    } else {
        None
    };
    if shared.state().pending.len() >= PENDING_CHUNKS_MAX {
        flush(shared).await?;
    }
    // Reserve this index's slot and learn which partners hold the chunk's other shards.
    let (mut exclude, prefer) = {
        let mut st = shared.state();
        let lease_until = now_secs() + u64::from(lease_secs(shared));
        let rec = st.pending.entry(chunk).or_insert_with(|| {
            stored.unwrap_or_else(|| ChunkRecord::new(&owner, &chunk, h.k, h.n, lease_until))
        });
        if rec.owner_key() != Some(owner) {
            return Err(format!(
                "chunk {} is recorded for another owner ({})",
                h.chunk, rec.owner
            ));
        }
        if rec.k != h.k || rec.n != h.n {
            return Err(format!(
                "shard {}.{index}: {}-of-{} does not match the chunk's {}-of-{}",
                h.chunk, h.k, h.n, rec.k, rec.n
            ));
        }
        let slot = &rec.slots[usize::from(index)];
        if slot.as_ref().is_some_and(|s| s.hash == hash && !s.bad) {
            return Ok(()); // Already placed: putting the same bytes again is harmless.
        }
        let prefer = slot
            .as_ref()
            .filter(|s| !s.hash.is_empty())
            .and_then(|s| s.peer.parse::<PeerId>().ok());
        *st.busy.entry(chunk).or_default() += 1;
        let exclude: HashSet<PeerId> = st.pending[&chunk]
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != usize::from(index))
            .filter_map(|(_, s)| s.as_ref().and_then(|s| s.peer.parse().ok()))
            .collect();
        (exclude, prefer)
    };
    let _busy = BusyChunk {
        shared: shared.clone(),
        chunk,
    };
    let len = bytes.len() as u32;
    let (holder, slot) =
        match place_one(shared, &owner, chunk, index, &bytes, &mut exclude, prefer).await {
            Ok((peer, name)) => {
                let audit = AuditRec::prepare(key, &bytes);
                (
                    Some(peer),
                    Slot {
                        peer: name,
                        hash,
                        len,
                        audit,
                        bad: false,
                    },
                )
            }
            Err(Unplaced {
                reason,
                over_quota: true,
            }) => return Err(reason),
            Err(Unplaced { reason: why, .. }) => {
                // No partner can take it now (a new plug, or fewer partners than n): the owner's
                // put still succeeds, the shard waits here and the repair round moves it out.
                tracing::debug!("shard {key} kept here: {why}");
                blocking(shared, move |s| keep_here(s, &chunk, index, &bytes))
                    .await
                    .map_err(|e| format!("{e} (no partner took it: {why})"))?;
                (
                    None,
                    Slot {
                        peer: HERE.to_owned(),
                        hash,
                        len,
                        audit: None,
                        bad: false,
                    },
                )
            }
        };
    let (record, drop_old) = {
        let mut st = shared.state();
        if let Some(peer) = holder {
            st.reserving.remove(&(chunk, peer));
        }
        let Some(rec) = st.pending.get_mut(&chunk) else {
            return Err(format!("chunk {}: record lost while placing", h.chunk));
        };
        let old = rec.slots[usize::from(index)].replace(slot.clone());
        let complete = rec.slots.iter().all(Option::is_some);
        // A copy kept here that a partner now replaces goes once a saved record says so.
        let drop_old = holder.is_some() && old.as_ref().is_some_and(Slot::is_here);
        let record = if complete {
            st.pending.remove(&chunk)
        } else if drop_old {
            Some(rec.clone())
        } else {
            None
        };
        if let Some(peer) = holder {
            if let Some(o) = old.filter(|o| o.peer == slot.peer) {
                let _ = st.ledger.removed_from_them(&peer, u64::from(o.len));
            }
            let _ = st.ledger.stored_with_them(&peer, u64::from(slot.len));
        }
        (record, drop_old)
    };
    if let Some(r) = record {
        blocking(shared, move |s| {
            save_record(s, &r)?;
            if drop_old {
                drop_here(s, &chunk, &[index]);
            }
            Ok::<_, String>(())
        })
        .await?;
    }
    Ok(())
}

/// Marks a chunk as having a shard on its way while alive.
struct BusyChunk {
    shared: Arc<Shared>,
    chunk: [u8; 32],
}

impl Drop for BusyChunk {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if let Some(n) = st.busy.get_mut(&self.chunk) {
            *n -= 1;
            if *n == 0 {
                st.busy.remove(&self.chunk);
            }
        }
    }
}

/// Why a get failed.
pub struct GetError {
    /// Nobody has the shard (as opposed to: could not tell).
    pub missing: bool,
    /// One line for a person.
    pub reason: String,
}

/// Partners a `get_shard` may be told to avoid at most (the vault asks again at most 8 times).
pub const AVOID_MAX: usize = 16;

/// The `avoid` field of a `get_shard`: the partners whose bytes for this shard failed the
/// vault's check (absent: none); a one-line error otherwise.
pub fn parse_avoid(v: &serde_json::Value) -> Result<Vec<PeerId>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let list = v
        .as_array()
        .filter(|a| a.len() <= AVOID_MAX)
        .ok_or_else(|| {
            format!("get_shard: avoid must be a list of at most {AVOID_MAX} peer ids")
        })?;
    list.iter()
        .map(|p| {
            p.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("get_shard: avoid: {p} is not a peer id"))
        })
        .collect()
}

/// Fetches shard `index` of `owner`'s `chunk` from whoever holds it, but not from the partners
/// in `avoid` (the vault's `get_shard`); the bytes and the partner that served them. The last
/// partner in `avoid` has just served bytes the vault refused as not the owner's: it is scored
/// down as for a failed audit, and a record naming it for this shard marks the slot bad.
pub async fn get_shard(
    shared: &Arc<Shared>,
    owner: [u8; 32],
    chunk: [u8; 32],
    index: u8,
    avoid: &[PeerId],
) -> Result<(Vec<u8>, Option<PeerId>), GetError> {
    if let Some(&p) = avoid.last() {
        tracing::warn!(
            "{p} served bytes for shard {} that are not the owner's: asking others",
            shard_key(&chunk, index)
        );
        shared.state().tracker.audit(&p, false);
        // A restore records the holders it finds before the vault checks the bytes: a forger
        // found that way must not stay the shard's holder.
        let r = blocking(shared, move |s| mark_refused(s, owner, chunk, index, p)).await;
        if let Err(e) = r {
            tracing::warn!("marking shard {} of {p} bad: {e}", shard_key(&chunk, index));
        }
    }
    let r = fetch_shard(shared, owner, chunk, index, avoid).await;
    if r.is_err() {
        // A cached record may predate a repair that moved this shard: read it afresh next time.
        shared.state().recent.retain(|(c, _)| *c != chunk);
    }
    r
}

async fn fetch_shard(
    shared: &Arc<Shared>,
    owner: [u8; 32],
    chunk: [u8; 32],
    index: u8,
    avoid: &[PeerId],
) -> Result<(Vec<u8>, Option<PeerId>), GetError> {
    let key = shard_key(&chunk, index);
    if shared.auth_for(&owner).is_none() {
        return Err(GetError {
            missing: false,
            reason: format!(
                "this node does not act for owner {} (the vault registers it first)",
                hex(&owner)
            ),
        });
    }
    // The vault asks for a chunk's shards together: its record is read from the store once.
    let known = {
        let st = shared.state();
        st.pending.get(&chunk).cloned().or_else(|| {
            st.recent
                .iter()
                .find(|(c, _)| *c == chunk)
                .map(|(_, r)| r.clone())
        })
    };
    let rec = match known {
        Some(r) => Some(r),
        None => {
            let r = blocking(shared, move |s| load_record(s, &chunk))
                .await
                .map_err(|reason| GetError {
                    missing: false,
                    reason,
                })?;
            if let Some(r) = &r {
                let mut st = shared.state();
                if st.recent.len() >= RECENT_RECORDS {
                    st.recent.pop_front();
                }
                st.recent.push_back((chunk, r.clone()));
            }
            r
        }
    };
    // Another owner's record says nothing of this owner's shards. A recorded holder the vault
    // avoids: ask the others as if there were no record.
    let slot = rec
        .filter(|r| r.owner_key() == Some(owner))
        .and_then(|r| r.slots.get(usize::from(index)).cloned().flatten())
        .filter(|s| !s.peer.parse().is_ok_and(|p: PeerId| avoid.contains(&p)));
    if let Some(slot) = slot.as_ref().filter(|s| s.is_here()) {
        let hash = slot.hash.clone();
        return match blocking(shared, move |s| read_here(s, &chunk, index, &hash)).await {
            Ok(Some(data)) => Ok((data, None)),
            Ok(None) => Err(GetError {
                missing: true,
                reason: format!("shard {key} was kept on this plug and its copy is gone"),
            }),
            Err(reason) => Err(GetError {
                missing: false,
                reason,
            }),
        };
    }
    if let Some(slot) = slot {
        let peer: PeerId = slot.peer.parse().map_err(|_| GetError {
            missing: false,
            reason: format!("bad peer id {}", slot.peer),
        })?;
        // A live holder's transient failure (busy, a stream reset) is retried twice.
        let mut attempt = 0;
        let answer = loop {
            let r = shared
                .request_as(peer, &owner, Msg::Get { shard: key })
                .await;
            let transient = match &r {
                Ok(Msg::Error { code, .. }) => *code == ErrorCode::Busy,
                Err(e) => !e.ends_with("is unreachable"),
                Ok(_) => false,
            };
            if !transient || attempt == 2 {
                if transient {
                    tracing::warn!("get of shard {key} from {peer} failed: {r:?}");
                }
                break r;
            }
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
        };
        return match answer {
            Ok(Msg::ShardData { data, .. }) => {
                if hex(blake3::hash(&data).as_bytes()) == slot.hash {
                    Ok((data, Some(peer)))
                } else {
                    shared.state().tracker.audit(&peer, false);
                    tracing::warn!("{peer} returned wrong bytes for shard {key}");
                    Err(GetError {
                        missing: false,
                        reason: format!("partner {peer} returned bytes that are not shard {key}"),
                    })
                }
            }
            Ok(Msg::Error {
                code: ErrorCode::NotFound,
                reason,
            }) => Err(GetError {
                missing: true,
                reason: format!("partner {peer}: {reason}"),
            }),
            Ok(Msg::Error { reason, .. }) => Err(GetError {
                missing: false,
                reason: format!("partner {peer}: {reason}"),
            }),
            Ok(other) => Err(GetError {
                missing: false,
                reason: format!("partner {peer}: unexpected answer {other:?}"),
            }),
            Err(reason) => Err(GetError {
                missing: false,
                reason,
            }),
        };
    }
    // No record (a new plug restoring from its recovery key): ask the live partners, but not
    // those whose bytes the vault refused, and record the holder found, so the chunk is
    // audited, renewed and repaired from now on. Whether bytes are the owner's only the vault
    // can tell (the shard's tag): it asks again, avoiding the partner that served them.
    let partners = shared.state().partner_ids();
    let mut failures = 0;
    for peer in partners {
        if shared.health(&peer) != PeerHealth::Live || avoid.contains(&peer) {
            continue;
        }
        match shared
            .request_as(peer, &owner, Msg::Get { shard: key })
            .await
        {
            Ok(Msg::ShardData { data, .. }) if check_vault_shard(&key, &data).is_ok() => {
                let found = (data.clone(), peer);
                if let Err(e) = blocking(shared, move |s| adopt(s, owner, &[found])).await {
                    tracing::warn!("recording shard {key} of {peer}: {e}");
                }
                return Ok((data, Some(peer)));
            }
            Ok(Msg::Error {
                code: ErrorCode::NotFound,
                ..
            }) => {}
            _ => failures += 1,
        }
    }
    Err(GetError {
        missing: failures == 0,
        reason: format!("no live partner holds shard {key}"),
    })
}

/// Records shards a partner holds for `owner` that no record names (blocking): found by a
/// plug restored from the recovery key, which has no records. Each is a vault shard already
/// checked against its key; an index a record fills already is left as it is, unless its slot
/// is bad (a forger's, found the same way before the vault refused its bytes). The lease is
/// unknown, so the next audit renews it.
fn adopt(shared: &Shared, owner: [u8; 32], found: &[(Vec<u8>, PeerId)]) -> Result<(), String> {
    let Some((first, _)) = found.first() else {
        return Ok(());
    };
    let (h, _) = decode_shard(first).map_err(|e| e.to_string())?;
    let chunk = h.chunk.0;
    // Concurrent gets of one chunk's shards must not lose each other's slots.
    let _lock = shared.key_lock(&crate::wire::ShardId(chunk));
    if shared.state().pending.contains_key(&chunk) {
        return Ok(()); // Being put right now: the put records it.
    }
    let mut rec = load_record(shared, &chunk)?
        .unwrap_or_else(|| ChunkRecord::new(&owner, &chunk, h.k, h.n, 0));
    if rec.owner_key() != Some(owner) || rec.k != h.k || rec.n != h.n {
        return Ok(());
    }
    let mut changed = Vec::new();
    let mut replaced = Vec::new();
    for (bytes, peer) in found {
        let Ok((sh, _)) = decode_shard(bytes) else {
            continue;
        };
        let name = peer.to_base58();
        let i = usize::from(sh.index);
        let taken = rec.slots.iter().flatten().any(|s| s.peer == name);
        if sh.chunk.0 != chunk || i >= rec.slots.len() || taken {
            continue;
        }
        match rec.slots[i].take() {
            Some(old) if old.bad => replaced.push(old),
            Some(old) => {
                rec.slots[i] = Some(old);
                continue;
            }
            None => {}
        }
        rec.slots[i] = Some(Slot {
            peer: name,
            hash: hex(blake3::hash(bytes).as_bytes()),
            len: bytes.len() as u32,
            audit: AuditRec::prepare(shard_key(&chunk, sh.index), bytes),
            bad: false,
        });
        changed.push((*peer, bytes.len() as u64));
    }
    if changed.is_empty() {
        return Ok(());
    }
    save_record(shared, &rec)?;
    let mut st = shared.state();
    for (peer, len) in changed {
        let _ = st.ledger.stored_with_them(&peer, len);
    }
    for old in replaced {
        if let Ok(peer) = old.peer.parse::<PeerId>() {
            let _ = st.ledger.removed_from_them(&peer, u64::from(old.len));
        }
    }
    Ok(())
}

/// Marks slot `index` of `owner`'s `chunk` bad if its record names `peer`, whose bytes for it
/// the vault refused (blocking): the next repair round places the shard anew.
fn mark_refused(
    shared: &Shared,
    owner: [u8; 32],
    chunk: [u8; 32],
    index: u8,
    peer: PeerId,
) -> Result<(), String> {
    let _lock = shared.key_lock(&crate::wire::ShardId(chunk));
    if shared.state().pending.contains_key(&chunk) {
        return Ok(()); // Being put right now: its holders have not been read back.
    }
    let Some(mut rec) = load_record(shared, &chunk)? else {
        return Ok(());
    };
    if rec.owner_key() != Some(owner) {
        return Ok(());
    }
    let name = peer.to_base58();
    let slot = rec
        .slots
        .get_mut(usize::from(index))
        .and_then(Option::as_mut);
    match slot {
        Some(s) if s.peer == name && !s.bad => s.bad = true,
        _ => return Ok(()),
    }
    save_record(shared, &rec)
}

/// The partners `rec` names as holders.
fn holders(rec: &ChunkRecord) -> HashSet<PeerId> {
    rec.slots
        .iter()
        .flatten()
        .filter_map(|s| s.peer.parse().ok())
        .collect()
}

/// Looks for the shards of `rec`'s empty slots on live partners that hold none of the chunk
/// (a record rebuilt by a restored plug names only the shards it read) and records those found,
/// so repair rebuilds only what is really lost. Returns whether any was found.
async fn discover(shared: &Arc<Shared>, rec: &mut ChunkRecord) -> Result<bool, String> {
    let (Some(chunk), Some(owner)) = (rec.chunk_id(), rec.owner_key()) else {
        return Ok(false);
    };
    let empty: Vec<u8> = (0..rec.n)
        .filter(|i| rec.slots[usize::from(*i)].is_none())
        .collect();
    if empty.is_empty() {
        return Ok(false);
    }
    let mut asked = holders(rec);
    let partners = shared.state().partner_ids();
    let mut found = false;
    for peer in partners {
        if asked.contains(&peer) || shared.health(&peer) != PeerHealth::Live {
            continue;
        }
        asked.insert(peer);
        for &i in &empty {
            if rec.slots[usize::from(i)].is_some() {
                continue;
            }
            let key = shard_key(&chunk, i);
            if let Ok(Msg::ShardData { data, .. }) = shared
                .request_as(peer, &owner, Msg::Get { shard: key })
                .await
            {
                if check_vault_shard(&key, &data).is_ok() {
                    blocking(shared, move |s| adopt(s, owner, &[(data, peer)])).await?;
                    if let Some(r) = blocking(shared, move |s| load_record(s, &chunk)).await? {
                        *rec = r;
                    }
                    found = true;
                    break; // One shard of a chunk per holder.
                }
            }
        }
    }
    Ok(found)
}

/// Writes every record still in RAM to the store and syncs it (the vault's `flush`).
pub async fn flush(shared: &Arc<Shared>) -> Result<(), String> {
    let records: Vec<ChunkRecord> = {
        let mut st = shared.state();
        let all = st.pending.values().cloned().collect();
        // Chunks with shards still on their way stay in RAM: those puts record into them.
        let busy = std::mem::take(&mut st.busy);
        st.pending.retain(|c, _| busy.contains_key(c));
        st.busy = busy;
        all
    };
    blocking(shared, move |s| {
        for r in &records {
            save_record(s, r)?;
        }
        Ok(())
    })
    .await
}

/// What an audit round found.
#[derive(Debug, Default, Serialize)]
pub struct AuditReport {
    /// Shards challenged.
    pub checked: u64,
    /// Answered correctly.
    pub passed: u64,
    /// Wrong, missing or no answer.
    pub failed: u64,
    /// Failures per partner.
    pub failed_by: BTreeMap<String, u64>,
    /// Leases renewed.
    pub renewed: u64,
}

/// Challenges the holders of every chunk's shards (`max` 0), or of about `max` chunks from
/// where the last partial round stopped (whole pages; wraps around at the end).
pub async fn audit_round(shared: &Arc<Shared>, max: usize) -> Result<AuditReport, String> {
    flush(shared).await?;
    let mut report = AuditReport::default();
    let mut after = if max == 0 {
        None
    } else {
        shared.state().audit_after
    };
    let mut done = 0usize;
    while let Some((last, records)) = blocking(shared, move |s| load_page(s, after)).await? {
        after = Some(last);
        for mut rec in records {
            done += 1;
            if audit_chunk(shared, &mut rec, &mut report).await {
                blocking(shared, move |s| save_record(s, &rec)).await?;
            }
        }
        if max != 0 && done >= max {
            shared.state().audit_after = after;
            return Ok(report);
        }
    }
    shared.state().audit_after = None;
    Ok(report)
}

/// Audits each live holder of one chunk; returns whether the record changed.
async fn audit_chunk(
    shared: &Arc<Shared>,
    rec: &mut ChunkRecord,
    report: &mut AuditReport,
) -> bool {
    let (Some(chunk), Some(owner)) = (rec.chunk_id(), rec.owner_key()) else {
        return false;
    };
    let now = now_secs();
    let lease_secs = lease_secs(shared);
    let renew = rec.lease_until < now + u64::from(lease_secs) / 2;
    let mut changed = false;
    let mut all_renewed = true;
    for (index, slot) in rec.slots.iter_mut().enumerate() {
        let Some(slot) = slot.as_mut() else { continue };
        // Kept here: nothing to challenge, no lease to renew. Known bad: the repair round
        // places it anew.
        if slot.is_here() || slot.bad {
            all_renewed &= !slot.bad;
            continue;
        }
        let Ok(peer) = slot.peer.parse::<PeerId>() else {
            all_renewed = false;
            continue;
        };
        if shared.health(&peer) != PeerHealth::Live {
            all_renewed = false;
            continue;
        }
        let key = shard_key(&chunk, index as u8);
        report.checked += 1;
        let (passed, answer) = match slot.audit.take().and_then(|a| a.expected(key)) {
            Some(e) => {
                changed = true;
                let c = e.challenge;
                let msg = Msg::AuditChallenge {
                    shard: key,
                    nonce: c.nonce,
                    offset: c.offset,
                    len: c.len,
                };
                let answer = shared.request_as(peer, &owner, msg).await;
                let passed = matches!(&answer,
                    Ok(Msg::AuditResponse { proof, .. }) if e.check(proof));
                (passed, answer)
            }
            // The prepared challenge was used: fetch the shard, check it whole, prepare anew.
            None => {
                let answer = shared
                    .request_as(peer, &owner, Msg::Get { shard: key })
                    .await;
                match &answer {
                    Ok(Msg::ShardData { data, .. })
                        if hex(blake3::hash(data).as_bytes()) == slot.hash =>
                    {
                        slot.audit = AuditRec::prepare(key, data);
                        changed = true;
                        (true, answer)
                    }
                    _ => (false, answer),
                }
            }
        };
        if !passed && shard_is_bad(&answer) {
            slot.bad = true;
            changed = true;
        }
        shared.state().tracker.audit(&peer, passed);
        if passed {
            report.passed += 1;
        } else {
            report.failed += 1;
            *report.failed_by.entry(slot.peer.clone()).or_default() += 1;
            // The holder's reason, if it gave one (e.g. this plug's statement superseded).
            let why = match &answer {
                Ok(Msg::Error { reason, .. }) => reason.as_str(),
                Err(e) => e.as_str(),
                Ok(_) => "wrong proof or bytes",
            };
            tracing::warn!("audit of shard {key} on {peer} failed: {why}");
        }
        if renew {
            match shared
                .request_as(
                    peer,
                    &owner,
                    Msg::RenewLease {
                        shard: key,
                        lease_secs,
                    },
                )
                .await
            {
                Ok(Msg::LeaseRenewed { .. }) => report.renewed += 1,
                _ => all_renewed = false,
            }
        }
    }
    if renew && all_renewed {
        rec.lease_until = now + u64::from(lease_secs);
        changed = true;
    }
    changed
}

/// Whether a failed audit's answer shows the holder's copy lost or wrong (so it is placed
/// anew), rather than the holder being busy or unreachable for a moment (retried next round).
fn shard_is_bad(answer: &Result<Msg, String>) -> bool {
    matches!(
        answer,
        Ok(Msg::AuditResponse { .. })
            | Ok(Msg::ShardData { .. })
            | Ok(Msg::Error {
                code: ErrorCode::NotFound | ErrorCode::HashMismatch,
                ..
            })
    )
}

/// What a repair round did.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Chunks looked at.
    pub chunks: u64,
    /// Chunks with every shard on a live partner after the round.
    pub healthy: u64,
    /// Chunks repaired in this round.
    pub repaired: u64,
    /// Shards rebuilt and placed on partners.
    pub shards_placed: u64,
    /// Shards kept here that went out to partners in this round.
    pub moved_out: u64,
    /// Shards rebuilt and kept here, no partner being able to take them.
    pub kept_here: u64,
    /// Chunks with shards still kept here after the round, waiting for partners.
    pub waiting: u64,
    /// Shards their holders reported lost (their scrub found them damaged), marked bad and
    /// so rebuilt in this round.
    pub lost: u64,
    /// Chunks that could not be repaired now, with why.
    pub stuck: Vec<String>,
}

/// Moves shards kept here out to partners, then rebuilds lost shards of every chunk below full
/// redundancy and places them on other partners (or here, when none can take them).
pub async fn repair_round(shared: &Arc<Shared>) -> Result<RepairReport, String> {
    flush(shared).await?;
    let mut report = RepairReport::default();
    let lost = Arc::new(ask_lost(shared).await);
    let mut after: Option<cairn_store::ShardId> = None;
    while let Some((last, records)) = blocking(shared, move |s| load_page(s, after)).await? {
        after = Some(last);
        for mut rec in records {
            report.chunks += 1;
            if !lost.is_empty() {
                let lost = lost.clone();
                let (now, marked) = blocking(shared, move |s| mark_lost(s, rec, &lost)).await?;
                rec = now;
                report.lost += marked;
            }
            match repair_chunk(shared, rec).await {
                Ok(r) => {
                    report.moved_out += r.moved_out;
                    report.kept_here += r.kept_here;
                    report.shards_placed += r.placed;
                    if r.placed + r.kept_here > 0 {
                        report.repaired += 1;
                    }
                    if r.here_left > 0 {
                        report.waiting += 1;
                    } else {
                        report.healthy += 1;
                    }
                }
                Err(e) => report.stuck.push(e),
            }
        }
    }
    Ok(report)
}

/// Asks every connected partner which of the shards we put it lost since we last asked (its
/// scrub found them damaged): their chunk-store ids, with who reported each.
async fn ask_lost(shared: &Arc<Shared>) -> HashMap<[u8; 32], PeerId> {
    let (connected, owner) = {
        let st = shared.state();
        let connected: Vec<PeerId> = st
            .partner_ids()
            .into_iter()
            .filter(|p| st.peers.get(p).is_some_and(|m| m.connections > 0))
            .collect();
        (connected, st.owners.first().map(|a| a.owner))
    };
    let mut lost = HashMap::new();
    let Some(owner) = owner else { return lost };
    for p in connected {
        // A holder that does not know the question (an older node) answers with an error:
        // its audits find what it lost.
        if let Ok(Msg::Lost { ids }) = shared.request_as(p, &owner, Msg::LostQuery).await {
            if !ids.is_empty() {
                tracing::warn!("{p} reports {} of our shards lost on its disk", ids.len());
            }
            lost.extend(ids.into_iter().map(|id| (id.0, p)));
        }
    }
    lost
}

/// Marks bad the slots of `rec` whose holder reported them `lost` (blocking), saving the
/// record; the record as it is now and how many were marked.
fn mark_lost(
    shared: &Shared,
    rec: ChunkRecord,
    lost: &HashMap<[u8; 32], PeerId>,
) -> Result<(ChunkRecord, u64), String> {
    let (Some(chunk), Some(owner)) = (rec.chunk_id(), rec.owner_key()) else {
        return Ok((rec, 0));
    };
    let reported = |rec: &ChunkRecord| -> Vec<usize> {
        rec.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref().filter(|s| !s.bad)?;
                let id = held_id(&owner, &shard_key(&chunk, i as u8));
                (lost.get(&id.0)?.to_base58() == s.peer).then_some(i)
            })
            .collect()
    };
    if reported(&rec).is_empty() {
        return Ok((rec, 0));
    }
    let _lock = shared.key_lock(&crate::wire::ShardId(chunk));
    if shared.state().pending.contains_key(&chunk) {
        return Ok((rec, 0)); // Being put right now: its slots are being written anew.
    }
    let Some(mut now) = load_record(shared, &chunk)? else {
        return Ok((rec, 0));
    };
    let marked = reported(&now);
    for &i in &marked {
        if let Some(s) = now.slots[i].as_mut() {
            s.bad = true;
        }
    }
    if !marked.is_empty() {
        save_record(shared, &now)?;
    }
    Ok((now, marked.len() as u64))
}

/// Who holds a shard, for repair planning: this plug (one per index, so shards kept here never
/// count as one holder's several shards) or a partner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    Here(u8),
    Peer(PeerId),
}

/// What repairing one chunk did.
#[derive(Default)]
struct ChunkRepair {
    moved_out: u64,
    placed: u64,
    kept_here: u64,
    here_left: u64,
}

fn count_here(rec: &ChunkRecord) -> u64 {
    rec.slots.iter().flatten().filter(|s| s.is_here()).count() as u64
}

/// Moves the shards of `rec` kept here to eligible partners, one at a time (one shard's bytes in
/// memory); saves the record, then deletes the copies moved. A copy missing or damaged here
/// empties its slot, for the rebuild to restore. Returns the number moved.
async fn move_out(
    shared: &Arc<Shared>,
    chunk: [u8; 32],
    rec: &mut ChunkRecord,
) -> Result<u64, String> {
    let owner = rec.owner_key().ok_or("record without owner")?;
    let here: Vec<u8> = (0..rec.n)
        .filter(|i| {
            rec.slots[usize::from(*i)]
                .as_ref()
                .is_some_and(Slot::is_here)
        })
        .collect();
    if here.is_empty() {
        return Ok(0);
    }
    let mut exclude = holders(rec);
    let mut moved: Vec<u8> = Vec::new();
    let mut changed = false;
    for i in here {
        // Nobody to take it: the usual case on a plug without (enough) partners, so the
        // shard is not even read.
        if candidates(shared, &exclude, 1).is_empty() {
            break;
        }
        let Some(slot) = rec.slots[usize::from(i)].clone() else {
            continue;
        };
        let hash = slot.hash.clone();
        let Some(bytes) = blocking(shared, move |s| read_here(s, &chunk, i, &hash)).await? else {
            rec.slots[usize::from(i)] = None;
            changed = true;
            continue;
        };
        let key = shard_key(&chunk, i);
        match place_one(shared, &owner, chunk, i, &bytes, &mut exclude, None).await {
            Ok((peer, name)) => {
                let mut st = shared.state();
                st.reserving.remove(&(chunk, peer));
                let _ = st.ledger.stored_with_them(&peer, u64::from(slot.len));
                drop(st);
                rec.slots[usize::from(i)] = Some(Slot {
                    peer: name,
                    audit: AuditRec::prepare(key, &bytes),
                    ..slot
                });
                moved.push(i);
                changed = true;
            }
            Err(e) => {
                tracing::debug!("shard {key} stays here: {}", e.reason);
                break;
            }
        }
    }
    if changed {
        let r = rec.clone();
        let done = moved.clone();
        blocking(shared, move |s| {
            save_record(s, &r)?;
            drop_here(s, &chunk, &done);
            Ok::<_, String>(())
        })
        .await?;
    }
    Ok(moved.len() as u64)
}

/// Repairs one chunk: shards kept here go out to partners where they can, then lost ones are
/// rebuilt.
async fn repair_chunk(shared: &Arc<Shared>, mut rec: ChunkRecord) -> Result<ChunkRepair, String> {
    let chunk = rec.chunk_id().ok_or("record without chunk id")?;
    let owner = rec.owner_key().ok_or("record without owner")?;
    let mut out = ChunkRepair::default();
    // Shards of it are being put right now: its record in RAM is newer than this one.
    if shared.state().busy.contains_key(&chunk) {
        out.here_left = count_here(&rec);
        return Ok(out);
    }
    out.moved_out = move_out(shared, chunk, &mut rec).await?;
    discover(shared, &mut rec).await?;
    let state = ChunkState {
        k: rec.k,
        n: rec.n,
        holdings: rec
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                // A bad shard is as good as lost: it is rebuilt.
                let s = s.as_ref().filter(|s| !s.bad)?;
                let peer = if s.is_here() {
                    Holder::Here(i as u8)
                } else {
                    // A holder whose id does not parse holds nothing usable: its shard is
                    // rebuilt.
                    Holder::Peer(s.peer.parse().ok()?)
                };
                Some(Holding {
                    index: i as u8,
                    peer,
                })
            })
            .collect(),
    };
    let policy = Policy {
        threshold: rec.n,
        grace_secs: shared.cfg.grace.as_secs(),
        min_score: shared.cfg.min_score,
    };
    let health = |h: &Holder| match h {
        Holder::Here(_) => PeerHealth::Live,
        Holder::Peer(p) => shared.health(p),
    };
    let Some(plan) =
        plan(&state, health, &policy).map_err(|e| format!("chunk {}: {e}", rec.chunk))?
    else {
        out.here_left = count_here(&rec);
        return Ok(out);
    };
    // Fetch k sources, each checked against its recorded hash.
    let mut payloads: Vec<Option<Vec<u8>>> = vec![None; usize::from(rec.n)];
    let mut header = None;
    let mut auth = None;
    let mut got = 0usize;
    let mut sources: Vec<Holding<Holder>> = plan.sources.clone();
    // Any other live holding may stand in for a source that fails.
    for h in &state.holdings {
        if !sources.iter().any(|s| s.index == h.index) && !plan.rebuild.contains(&h.index) {
            sources.push(h.clone());
        }
    }
    for src in sources {
        if got >= usize::from(rec.k) {
            break;
        }
        let Some(slot) = rec.slots[usize::from(src.index)].clone() else {
            continue;
        };
        let data = match src.peer {
            Holder::Here(i) => {
                let hash = slot.hash.clone();
                blocking(shared, move |s| read_here(s, &chunk, i, &hash))
                    .await
                    .ok()
                    .flatten()
            }
            Holder::Peer(peer) => {
                let key = shard_key(&chunk, src.index);
                match shared
                    .request_as(peer, &owner, Msg::Get { shard: key })
                    .await
                {
                    Ok(Msg::ShardData { data, .. })
                        if hex(blake3::hash(&data).as_bytes()) == slot.hash =>
                    {
                        Some(data)
                    }
                    Ok(Msg::ShardData { .. }) => {
                        shared.state().tracker.audit(&peer, false);
                        None
                    }
                    _ => None,
                }
            }
        };
        if let Some(Ok((h, payload))) = data.as_deref().map(decode_shard) {
            // Every shard of the chunk carries the same digests and tag: the rebuilt ones copy
            // them (the node has no key to make new ones).
            if auth.is_none() {
                auth = data.as_deref().and_then(|d| shard_auth(d).ok());
            }
            payloads[usize::from(src.index)] = Some(payload.to_vec());
            header = Some(h);
            got += 1;
        }
    }
    let h =
        header.ok_or_else(|| format!("chunk {}: no source shard could be fetched", rec.chunk))?;
    if got < usize::from(rec.k) {
        return Err(format!(
            "chunk {}: fetched {got} of the {} shards needed to rebuild",
            rec.chunk, rec.k
        ));
    }
    let auth = auth.ok_or_else(|| format!("chunk {}: no source shard has digests", rec.chunk))?;
    let rebuild = plan.rebuild.clone();
    let rebuilt: Vec<(u8, Vec<u8>)> = tokio::task::spawn_blocking(move || {
        let codec = Codec::new(usize::from(h.k), usize::from(h.n)).map_err(|e| e.to_string())?;
        let mut sealed = codec
            .decode(payloads, h.sealed_len as usize)
            .map_err(|e| e.to_string())?;
        let (mut parity, mut frame) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        codec
            .encode(
                &h.chunk,
                h.aead,
                &mut sealed,
                &mut parity,
                &mut frame,
                Authority::Copied(&auth),
                |i, f| {
                    if rebuild.contains(&i) {
                        out.push((i, f.to_vec()));
                    }
                    Ok(())
                },
            )
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(out)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("chunk {}: rebuilding: {e}", rec.chunk))?;
    let mut exclude: HashSet<PeerId> = plan
        .keep
        .iter()
        .filter_map(|h| match h {
            Holder::Peer(p) => Some(*p),
            Holder::Here(_) => None,
        })
        .collect();
    for (i, bytes) in rebuilt {
        let key = shard_key(&chunk, i);
        let hash = hex(blake3::hash(&bytes).as_bytes());
        let len = bytes.len() as u32;
        let old = rec.slots[usize::from(i)].take();
        let slot = match place_one(shared, &owner, chunk, i, &bytes, &mut exclude, None).await {
            Ok((peer, name)) => {
                let mut st = shared.state();
                st.reserving.remove(&(chunk, peer));
                let _ = st.ledger.stored_with_them(&peer, u64::from(len));
                out.placed += 1;
                Slot {
                    peer: name,
                    hash,
                    len,
                    audit: AuditRec::prepare(key, &bytes),
                    bad: false,
                }
            }
            Err(e) => {
                // Rebuilt redundancy kept here beats none; it goes out when a partner can take
                // it.
                let kept = blocking(shared, move |s| keep_here(s, &chunk, i, &bytes)).await;
                if let Err(why) = kept {
                    rec.slots[usize::from(i)] = old;
                    let r = rec.clone();
                    blocking(shared, move |s| save_record(s, &r)).await?;
                    return Err(format!("chunk {}: {}; {why}", rec.chunk, e.reason));
                }
                out.kept_here += 1;
                Slot {
                    peer: HERE.to_owned(),
                    hash,
                    len,
                    audit: None,
                    bad: false,
                }
            }
        };
        if let Some(old_peer) = old.as_ref().and_then(|o| o.peer.parse::<PeerId>().ok()) {
            let _ = shared
                .state()
                .ledger
                .removed_from_them(&old_peer, u64::from(old.as_ref().map_or(0, |o| o.len)));
        }
        rec.slots[usize::from(i)] = Some(slot);
    }
    out.here_left = count_here(&rec);
    blocking(shared, move |s| save_record(s, &rec)).await?;
    Ok(out)
}

/// Counts of this plug's own chunks by redundancy (for status). Only partners protect a chunk:
/// shards kept here are readable but lost with the plug.
#[derive(Debug, Default, Serialize)]
pub struct Redundancy {
    /// Chunks recorded.
    pub chunks: u64,
    /// Chunks with every shard on a live or briefly unreachable partner.
    pub full: u64,
    /// Chunks below full redundancy but readable from partners alone.
    pub degraded: u64,
    /// Chunks readable only with shards kept here (fewer than k on partners): they wait for
    /// partners.
    pub unprotected: u64,
    /// Chunks with fewer than k shards on partners that are not gone and here together.
    pub unreadable: u64,
    /// Shards kept here, waiting for partners.
    pub held_here: u64,
    /// Their bytes.
    pub held_here_bytes: u64,
}

/// Walks the records and classifies each chunk.
pub async fn redundancy(shared: &Arc<Shared>) -> Result<Redundancy, String> {
    flush(shared).await?;
    let s2 = shared.clone();
    blocking(shared, move |s| {
        let mut r = Redundancy::default();
        each_record(s, |rec| {
            r.chunks += 1;
            // A peer holding two shards of a chunk counts once: losing it loses both.
            let ok = rec
                .slots
                .iter()
                .flatten()
                .filter(|sl| {
                    !sl.bad
                        && sl
                            .peer
                            .parse::<PeerId>()
                            .is_ok_and(|p| s2.health(&p) != PeerHealth::Gone)
                })
                .map(|sl| sl.peer.as_str())
                .collect::<HashSet<_>>()
                .len();
            let here = rec.slots.iter().flatten().filter(|sl| sl.is_here());
            let (mut here_n, mut here_bytes) = (0usize, 0u64);
            for sl in here {
                here_n += 1;
                here_bytes += u64::from(sl.len);
            }
            r.held_here += here_n as u64;
            r.held_here_bytes += here_bytes;
            if ok >= usize::from(rec.n) {
                r.full += 1;
            } else if ok >= usize::from(rec.k) {
                r.degraded += 1;
            } else if ok + here_n >= usize::from(rec.k) {
                r.unprotected += 1;
            } else {
                r.unreadable += 1;
            }
        })?;
        Ok(r)
    })
    .await
}

/// Refreshes free-space figures of connected partners, then audits and repairs on schedule.
pub async fn background(shared: Arc<Shared>) {
    let mut last_audit = tokio::time::Instant::now();
    let mut last_repair = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let connected: Vec<PeerId> = {
            let st = shared.state();
            st.partner_ids()
                .into_iter()
                .filter(|p| st.peers.get(p).is_some_and(|m| m.connections > 0))
                .collect()
        };
        // Asked for any owner this node acts for: the room is the plug's, whoever's shards.
        let owner = shared.state().owners.first().map(|a| a.owner);
        for (p, owner) in connected.into_iter().filter_map(|p| Some((p, owner?))) {
            let asked = shared.request_as(p, &owner, Msg::FreeSpaceQuery);
            if let Ok(Msg::FreeSpace { free, .. }) = asked.await {
                if let Some(m) = shared.state().peers.get_mut(&p) {
                    m.free_for_us = Some(free);
                }
            }
        }
        if last_audit.elapsed() >= shared.cfg.audit_every {
            last_audit = tokio::time::Instant::now();
            let r = audit_round(&shared, 64).await;
            if let Err(e) = shared.persist() {
                tracing::error!("saving audit scores: {e:#}");
            }
            match r {
                Ok(r) if r.failed > 0 => {
                    tracing::warn!("audit: {} of {} failed", r.failed, r.checked)
                }
                Ok(_) => {}
                Err(e) => tracing::error!("audit: {e}"),
            }
        }
        if last_repair.elapsed() >= shared.cfg.repair_every {
            last_repair = tokio::time::Instant::now();
            // Reclaim space of deleted shards and of leases that ran out (owners that stopped
            // renewing), then bring the books in line with what is really held.
            let compacted = blocking(&shared, |s| {
                let swept = crate::leases::sweep(s).unwrap_or_else(|e| {
                    tracing::error!("dropping shards whose lease ran out: {e}");
                    0
                });
                s.store
                    .compact(cairn_store::CompactOptions::default())
                    .map(|r| (r.expired + swept, r))
            })
            .await;
            match compacted {
                Ok((expired, _)) if expired > 0 => {
                    tracing::info!("{expired} shards whose lease ran out were dropped");
                    if let Err(e) = blocking(&shared, crate::state::recount_held).await {
                        tracing::error!("recounting the books: {e:#}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!("compacting the chunk store: {e}"),
            }
            match repair_round(&shared).await {
                Ok(r) if r.repaired > 0 || !r.stuck.is_empty() => tracing::info!(
                    "repair: {} chunks repaired, {} shards placed, {} stuck",
                    r.repaired,
                    r.shards_placed,
                    r.stuck.len()
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("repair: {e}"),
            }
        }
    }
}

/// Hex chunk id from the control protocol.
pub fn parse_chunk(s: &str) -> Option<[u8; 32]> {
    unhex32(s)
}
