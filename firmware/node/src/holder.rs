//! The holder's side of the shard protocol: which partners' requests are admitted, and
//! serving them — put, get, delete, lease renewal, audit challenges and free-space queries —
//! against the chunk store (blocking: [`serve`] runs on tokio's blocking pool).

use cairn_store::Lease;
use libp2p::PeerId;

use crate::audit::Challenge;
use crate::codec::Held;
use crate::leases;
use crate::records::{check_vault_shard, owner_of};
use crate::state::{now_secs, Shared};
use crate::wire::{ErrorCode, Msg};

/// Admits a shard request of `peer`: partners only, at most `inflight_per_peer` at once
/// (counted until [`finished`]); the error reply otherwise.
pub(crate) fn admit(shared: &Shared, peer: PeerId) -> Result<(), Msg> {
    let mut st = shared.state();
    if !st.is_partner(&peer) {
        return Err(err(
            ErrorCode::BadRequest,
            format!("peer {peer} is not a partner of {}: pair first", shared.me),
        ));
    }
    let limit = shared.cfg.limits.inflight_per_peer;
    let n = st.inflight.entry(peer).or_default();
    if *n >= limit {
        return Err(err(
            ErrorCode::Busy,
            format!("too many requests in flight from {peer} (limit {limit}); retry later"),
        ));
    }
    *n += 1;
    Ok(())
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

/// The shard's bytes as this holder has them; the error reply otherwise. A copy the store
/// finds damaged (its checksum) is dropped and the asking owner told so: its audit marks the
/// shard bad and its next repair round places it anew.
fn held(shared: &Shared, peer: &PeerId, shard: &crate::wire::ShardId) -> Result<Vec<u8>, Msg> {
    let id = cairn_store::ShardId(shard.0);
    match shared.store.info(id) {
        Ok(Some(info)) => match leases::leased(shared, &info) {
            Ok(true) => {}
            Ok(false) => return Err(not_here(shard)),
            Err(e) => return Err(store_err(e)),
        },
        Ok(None) => return Err(not_here(shard)),
        Err(e) => return Err(store_err(e)),
    }
    match shared.store.get(id) {
        Err(cairn_store::Error::Corrupt { .. }) => Err(drop_damaged(shared, peer, shard)),
        Ok(data) => {
            #[cfg(feature = "test-fixtures")]
            let data = crate::fixtures::tamper(shared, data);
            Ok(data)
        }
        Err(cairn_store::Error::NotFound { .. }) => Err(not_here(shard)),
        Err(e) => Err(store_err(e)),
    }
}

/// Deletes a copy the store found damaged; the `NotFound` reply that tells its owner.
fn drop_damaged(shared: &Shared, peer: &PeerId, shard: &crate::wire::ShardId) -> Msg {
    let _key = shared.key_lock(shard);
    let id = cairn_store::ShardId(shard.0);
    tracing::warn!(
        "shard {shard} is damaged on this plug's disk: dropped for its owner to re-place"
    );
    if let Ok(Some(info)) = shared.store.info(id) {
        if shared.store.delete(id).is_ok() {
            leases::forget(shared, shard);
            if info.owner == owner_of(peer) {
                release(shared, peer, u64::from(info.len));
            }
        }
    }
    err(
        ErrorCode::NotFound,
        format!(
            "shard {shard} was damaged on {}'s disk and is dropped: place it again",
            shared.me
        ),
    )
}

/// The shard's entry if `owner` may change it (or it is absent); a refusal if another owner's.
fn owned(
    shared: &Shared,
    shard: &crate::wire::ShardId,
    owner: cairn_store::OwnerId,
) -> Result<Option<cairn_store::ShardInfo>, Msg> {
    match shared.store.info(cairn_store::ShardId(shard.0)) {
        // Its lease ran out: as good as gone (the next sweep deletes it).
        Ok(Some(i)) if !leases::leased(shared, &i).map_err(store_err)? => Ok(None),
        Ok(Some(i)) if i.owner != owner => Err(err(
            ErrorCode::BadRequest,
            format!("shard {shard} is held for another owner"),
        )),
        Ok(i) => Ok(i),
        Err(e) => Err(store_err(e)),
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

/// Serves one shard request of partner `peer` (blocking: runs on the blocking pool).
pub(crate) fn serve(shared: &Shared, peer: PeerId, request: Held) -> Msg {
    let owner = owner_of(&peer);
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
            let _key = shared.key_lock(&shard);
            let old = match owned(shared, &shard, owner) {
                Ok(i) => i.map_or(0, |i| u64::from(i.len)),
                Err(m) => return m,
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
            match leases::put(shared, &shard, &data, owner, lease) {
                Ok(()) => {
                    // A smaller replacement frees the difference.
                    release(shared, &peer, old.saturating_sub(len));
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
            if let Some(forged) = crate::fixtures::forged_get(shared, &peer, &shard) {
                return forged;
            }
            match held(shared, &peer, &shard) {
                Ok(data) => Msg::ShardData { shard, data },
                Err(m) => m,
            }
        }
        Msg::Delete { shard } => {
            let _key = shared.key_lock(&shard);
            match owned(shared, &shard, owner) {
                Ok(Some(i)) => match shared.store.delete(cairn_store::ShardId(shard.0)) {
                    Ok(()) => {
                        leases::forget(shared, &shard);
                        release(shared, &peer, u64::from(i.len));
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
            let _key = shared.key_lock(&shard);
            match owned(shared, &shard, owner) {
                // Shards stored before leases were kept apart carry their own expiry: stored
                // once more the new way (the last renewal that rewrites them).
                Ok(Some(i)) if i.lease != Lease::Forever => {
                    let r = shared
                        .store
                        .get(cairn_store::ShardId(shard.0))
                        .and_then(|data| leases::put(shared, &shard, &data, owner, until));
                    match r {
                        Ok(()) => Msg::LeaseRenewed { shard, lease_secs },
                        Err(e) => store_err(e),
                    }
                }
                Ok(Some(_)) => {
                    let r = leases::renew(shared, &shard, until);
                    match r {
                        Ok(()) => Msg::LeaseRenewed { shard, lease_secs },
                        Err(e) => store_err(e),
                    }
                }
                Ok(None) => not_here(&shard),
                Err(m) => m,
            }
        }
        Msg::AuditChallenge {
            shard,
            nonce,
            offset,
            len,
        } => match held(shared, &peer, &shard) {
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
        Msg::Error { .. } => "error",
        Msg::Paired => "paired",
        _ => "this message",
    }
}
