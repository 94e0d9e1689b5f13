//! The holder's side of the shard protocol: which partners' requests are admitted, and
//! serving them — put, get, delete, lease renewal, audit challenges and free-space queries —
//! against the chunk store (blocking: [`serve`] runs on tokio's blocking pool).
//!
//! Every request names the owner it is made for with the owner's statement for the sender
//! (`wire::OwnerAuth`). Shards are kept per owner ([`held_id`]): a request reaches only the
//! shards of the owner it was made for, so only the owner's plugs read, audit, renew or delete
//! them, and nobody can squat another owner's keys. The books count bytes against the partner
//! that put them (the store's owner id of an entry). Leases are kept apart ([`leases`]), under
//! the same per-owner ids.

use cairn_store::{Lease, ShardId as StoreId};
use libp2p::PeerId;

use crate::audit::Challenge;
use crate::codec::Held;
use crate::leases;
use crate::records::{check_vault_shard, held_id, owner_of};
use crate::state::{now_secs, Shared};
use crate::wire::{ErrorCode, Msg, OwnerAuth};

/// Admits a shard request of `peer` made for the owner of `auth`: partners only — or a new
/// plug of an owner a partner acted for, which becomes a partner — with a valid statement, at
/// most `inflight_per_peer` at once (counted until [`finished`]). The owner key, or the error
/// reply.
pub(crate) fn admit(
    shared: &Shared,
    peer: PeerId,
    auth: Option<&OwnerAuth>,
) -> Result<[u8; 32], Msg> {
    let invalid = || {
        err(
            ErrorCode::BadRequest,
            format!("the request of {peer} carries no valid owner's statement for it"),
        )
    };
    let Some(auth) = auth else {
        return Err(invalid());
    };
    let owner = auth.owner;
    let owner_hex = crate::records::hex(&owner);
    let (partner, learn, successor_of) = {
        let st = shared.state();
        match st.saved.partners.get(&peer) {
            Some(p) => (true, !p.owners.contains(&owner_hex), None),
            None => (
                false,
                false,
                st.saved
                    .partners
                    .iter()
                    .find(|(_, p)| p.owners.contains(&owner_hex))
                    .map(|(id, _)| *id),
            ),
        }
    };
    if !partner && successor_of.is_none() {
        return Err(err(
            ErrorCode::BadRequest,
            format!("peer {peer} is not a partner of {}: pair first", shared.me),
        ));
    }
    // After that cheap refusal: only a partner, or a peer naming an owner a partner acted for,
    // costs a signature check (once per peer, owner and epoch).
    if !shared.verified(&peer, auth) {
        return Err(invalid());
    }
    // Only the owner's current plug: a copy of an earlier plug's key and statement (a stolen
    // or pre-reset card) is refused once a newer statement was seen here.
    let replaced = shared
        .current_plug(&peer, auth)
        .map_err(|why| err(ErrorCode::BadRequest, why))?;
    if let Some(old) = successor_of {
        // Only the owner's secret signs a statement: this is a new plug of the owner that
        // partner `old` acted for (restored from the recovery key).
        tracing::info!("{peer} acts for owner {owner_hex} as {old} did: accepted as a partner");
        if let Err(e) = shared.add_partner(peer, Vec::new(), "owner key") {
            tracing::error!("saving partner {peer}: {e:#}");
        }
    }
    if learn || !partner {
        let mut st = shared.state();
        if let Some(p) = st.saved.partners.get_mut(&peer) {
            if p.owners.len() >= crate::state::OWNERS_PER_PARTNER {
                let n = p.owners.len();
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("peer {peer} acts for {n} owners here already (the most allowed)"),
                ));
            }
            p.owners.push(owner_hex);
        }
        drop(st);
        if let Err(e) = shared.persist() {
            tracing::error!("saving partner {peer}: {e:#}");
        }
    }
    if let Some(old) = replaced.filter(|old| *old != peer) {
        shared.take_over(&old, &peer);
    }
    let mut st = shared.state();
    let limit = shared.cfg.limits.inflight_per_peer;
    let n = st.inflight.entry(peer).or_default();
    if *n >= limit {
        return Err(err(
            ErrorCode::Busy,
            format!("too many requests in flight from {peer} (limit {limit}); retry later"),
        ));
    }
    *n += 1;
    Ok(owner)
}

/// Ends what [`admit`] counted for `peer`.
pub(crate) fn finished(shared: &Shared, peer: &PeerId) {
    if let Some(n) = shared.state().inflight.get_mut(peer) {
        *n = n.saturating_sub(1);
    }
}

/// An error reply (reason cut to the wire's bound).
pub fn err(code: ErrorCode, mut reason: String) -> Msg {
    if reason.len() > crate::wire::REASON_BYTES_MAX {
        let mut cut = crate::wire::REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Msg::Error { code, reason }
}

fn store_err(e: cairn_store::Error) -> Msg {
    err(ErrorCode::Internal, format!("chunk store: {e}"))
}

fn not_here(shard: &crate::wire::ShardId) -> Msg {
    err(ErrorCode::NotFound, format!("no shard {shard} here"))
}

/// The bytes of `owner`'s shard as this holder has them; the error reply otherwise. A copy the
/// store finds damaged (its checksum) is dropped and the asking owner told so: its audit marks
/// the shard bad and its next repair round places it anew.
fn held(shared: &Shared, owner: &[u8; 32], shard: &crate::wire::ShardId) -> Result<Vec<u8>, Msg> {
    let id = held_id(owner, shard);
    if entry(shared, owner, shard)?.is_none() {
        return Err(not_here(shard));
    }
    match shared.store.get(id) {
        Err(cairn_store::Error::Corrupt { .. }) => Err(drop_damaged(shared, id, shard)),
        Ok(data) => {
            #[cfg(feature = "test-fixtures")]
            let data = crate::fixtures::tamper(shared, data);
            Ok(data)
        }
        Err(cairn_store::Error::NotFound { .. }) => Err(not_here(shard)),
        Err(e) => Err(store_err(e)),
    }
}

/// Deletes the copy (store id `id`) the store found damaged, booked to whoever put it; the
/// `NotFound` reply that tells its owner.
fn drop_damaged(shared: &Shared, id: StoreId, shard: &crate::wire::ShardId) -> Msg {
    let _key = leases::lock(shared, id);
    tracing::warn!(
        "shard {shard} is damaged on this plug's disk: dropped for its owner to re-place"
    );
    drop_copy(shared, id);
    err(
        ErrorCode::NotFound,
        format!(
            "shard {shard} was damaged on {}'s disk and is dropped: place it again",
            shared.me
        ),
    )
}

/// Deletes the partner's shard stored under `id` and its lease, released from its payer's
/// books (the caller holds the shard's lock); what it was, if it was there.
pub(crate) fn drop_copy(shared: &Shared, id: StoreId) -> Option<cairn_store::ShardInfo> {
    let info = shared.store.info(id).ok()??;
    shared.store.delete(id).ok()?;
    leases::forget(shared, id);
    release_payer(shared, info.owner, u64::from(info.len));
    Some(info)
}

/// The shards `peer` put that the scrub found damaged since it last asked (at most
/// [`crate::wire::LOST_MAX`]); forgotten once told.
fn lost_for(shared: &Shared, peer: &PeerId) -> Msg {
    let ids = {
        let mut st = shared.state();
        let Some(p) = st.saved.partners.get_mut(peer) else {
            return Msg::Lost { ids: Vec::new() };
        };
        let n = p.lost.len().min(crate::wire::LOST_MAX);
        p.lost.drain(..n).collect::<Vec<_>>()
    };
    if !ids.is_empty() {
        if let Err(e) = shared.persist() {
            tracing::error!("saving the shards lost for {peer}: {e:#}");
        }
    }
    Msg::Lost {
        ids: ids
            .iter()
            .filter_map(|h| crate::records::unhex32(h).map(crate::wire::ShardId))
            .collect(),
    }
}

/// The entry of `owner`'s shard if it is held and leased. One whose lease ran out is as good as
/// gone (the next sweep deletes it).
fn entry(
    shared: &Shared,
    owner: &[u8; 32],
    shard: &crate::wire::ShardId,
) -> Result<Option<cairn_store::ShardInfo>, Msg> {
    let info = shared
        .store
        .info(held_id(owner, shard))
        .map_err(store_err)?;
    match info {
        Some(i) if leases::leased(shared, &i).map_err(store_err)? => Ok(Some(i)),
        _ => Ok(None),
    }
}

/// Books `bytes` no longer held for `partner`.
fn release(shared: &Shared, partner: &PeerId, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let mut st = shared.state();
    let _ = st.ledger.released_for_them(partner, bytes);
    st.used = st.used.saturating_sub(bytes);
}

/// Books `bytes` no longer held for whichever partner's books `payer` (a store owner id) is on
/// (the plug that put them or the one that took over from it); nobody's if no partner's.
fn release_payer(shared: &Shared, payer: cairn_store::OwnerId, bytes: u64) {
    let partner = shared.state().booked_to(payer);
    if let Some(p) = partner {
        release(shared, &p, bytes);
    }
}

/// The longest lease a holder grants: an owner gone for longer (its plug off, its data given
/// up) cannot pin our space forever.
pub const LEASE_SECS_MAX: u32 = 365 * 24 * 3600;

/// The lease `lease_secs` from now; a refusal naming the limit beyond [`LEASE_SECS_MAX`] (refused
/// rather than clamped: the owner would believe its shard kept longer than it is).
fn lease_from_now(shard: &crate::wire::ShardId, lease_secs: u32) -> Result<u64, Msg> {
    if lease_secs > LEASE_SECS_MAX {
        return Err(err(
            ErrorCode::BadRequest,
            format!(
                "shard {shard}: a lease of {lease_secs} s is longer than the {LEASE_SECS_MAX} s \
                 (1 year) a holder grants"
            ),
        ));
    }
    Ok(now_secs() + u64::from(lease_secs))
}

/// Serves one shard request of partner `peer` made for `owner` (blocking: runs on the
/// blocking pool).
pub(crate) fn serve(shared: &Shared, peer: PeerId, owner: [u8; 32], request: Held) -> Msg {
    let payer = owner_of(&peer);
    match request.msg {
        Msg::Put {
            shard,
            lease_secs,
            data,
        } => {
            if let Err(e) = check_vault_shard(&shard, &data) {
                return err(ErrorCode::HashMismatch, e);
            }
            let lease = match lease_from_now(&shard, lease_secs) {
                Ok(l) => l,
                Err(m) => return m,
            };
            let id = held_id(&owner, &shard);
            let _key = leases::lock(shared, id);
            // The owner's earlier copy is replaced (leased or not: its bytes are still booked);
            // it counts against whoever put it.
            let (old, other) = match shared.store.info(id) {
                Ok(Some(i)) if i.owner == payer => (u64::from(i.len), None),
                Ok(Some(i)) => (0, Some(i)),
                Ok(None) => (0, None),
                Err(e) => return store_err(e),
            };
            let len = data.len() as u64;
            let extra = len.saturating_sub(old);
            {
                let mut st = shared.state();
                let capacity = st.capacity(&shared.cfg);
                if st.used + extra > capacity {
                    return err(
                        ErrorCode::TooLarge,
                        format!(
                            "{} offers {} bytes to partners and {} are in use",
                            shared.me, capacity, st.used
                        ),
                    );
                }
                if let Err(e) = st.ledger.accept(&peer, extra) {
                    return err(ErrorCode::QuotaExceeded, e.to_string());
                }
                st.used += extra;
            }
            match leases::put(shared, id, &data, payer, lease) {
                Ok(()) => {
                    // A smaller replacement frees the difference.
                    release(shared, &peer, old.saturating_sub(len));
                    if let Some(i) = other {
                        release_payer(shared, i.owner, u64::from(i.len));
                    }
                    Msg::Stored { shard }
                }
                Err(e) => {
                    release(shared, &peer, extra);
                    err(ErrorCode::TooLarge, format!("chunk store: {e}"))
                }
            }
        }
        Msg::Get { shard } => {
            #[cfg(feature = "test-fixtures")]
            if let Some(forged) = crate::fixtures::forged_get(shared, &owner, &shard) {
                return forged;
            }
            match held(shared, &owner, &shard) {
                Ok(data) => Msg::ShardData { shard, data },
                Err(m) => m,
            }
        }
        Msg::Delete { shard } => {
            let id = held_id(&owner, &shard);
            let _key = leases::lock(shared, id);
            match entry(shared, &owner, &shard) {
                Ok(Some(i)) => match shared.store.delete(id) {
                    Ok(()) => {
                        leases::forget(shared, id);
                        release_payer(shared, i.owner, u64::from(i.len));
                        Msg::Deleted { shard }
                    }
                    Err(e) => store_err(e),
                },
                Ok(None) => not_here(&shard),
                Err(m) => m,
            }
        }
        Msg::RenewLease { shard, lease_secs } => {
            let until = match lease_from_now(&shard, lease_secs) {
                Ok(l) => l,
                Err(m) => return m,
            };
            let id = held_id(&owner, &shard);
            let _key = leases::lock(shared, id);
            // The bytes stay booked to the partner that put them (`i.owner`).
            match entry(shared, &owner, &shard) {
                // Shards stored before leases were kept apart carry their own expiry: stored
                // once more the new way (the last renewal that rewrites them).
                Ok(Some(i)) if i.lease != Lease::Forever => {
                    let r = shared
                        .store
                        .get(id)
                        .and_then(|data| leases::put(shared, id, &data, i.owner, until));
                    match r {
                        Ok(()) => Msg::LeaseRenewed { shard, lease_secs },
                        Err(e) => store_err(e),
                    }
                }
                Ok(Some(_)) => match leases::renew(shared, id, until) {
                    Ok(()) => Msg::LeaseRenewed { shard, lease_secs },
                    Err(e) => store_err(e),
                },
                Ok(None) => not_here(&shard),
                Err(m) => m,
            }
        }
        Msg::AuditChallenge {
            shard,
            nonce,
            offset,
            len,
        } => match held(shared, &owner, &shard) {
            Ok(data) => {
                let c = Challenge {
                    shard,
                    nonce,
                    offset,
                    len,
                };
                match c.prove(&data) {
                    Ok(proof) => Msg::AuditResponse { shard, proof },
                    Err(e) => err(ErrorCode::BadRequest, e.to_string()),
                }
            }
            Err(m) => m,
        },
        Msg::LostQuery => lost_for(shared, &peer),
        Msg::FreeSpaceQuery => {
            let st = shared.state();
            let capacity = st.capacity(&shared.cfg);
            let free = capacity.saturating_sub(st.used);
            let a = st.ledger.account(&peer).unwrap_or_default();
            let quota = (a.held_for_us + st.ledger.allowance).saturating_sub(a.held_for_them);
            Msg::FreeSpace {
                free: free.min(quota),
                offered: capacity,
            }
        }
        other => err(
            ErrorCode::BadRequest,
            format!("{} is not a request", kind_name(&other)),
        ),
    }
}

fn kind_name(m: &Msg) -> &'static str {
    match m {
        Msg::Stored { .. } => "stored",
        Msg::ShardData { .. } => "shard-data",
        Msg::Deleted { .. } => "deleted",
        Msg::LeaseRenewed { .. } => "lease-renewed",
        Msg::AuditResponse { .. } => "audit-response",
        Msg::FreeSpace { .. } => "free-space",
        Msg::Lost { .. } => "lost",
        Msg::Error { .. } => "error",
        Msg::Paired => "paired",
        _ => "this message",
    }
}
