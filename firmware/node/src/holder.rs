//! The holder's side of the shard protocol: which partners' requests are admitted, and
//! serving them — put, get, delete, lease renewal, audit challenges and free-space queries —
//! against the chunk store (blocking: [`serve`] runs on tokio's blocking pool).
//!
//! Every request names the owner it is made for with the owner's statement for the sender
//! (`wire::OwnerAuth`). Shards are kept per owner ([`held_id`]): a request reaches only the
//! shards of the owner it was made for, so only the owner's plugs read, audit, renew or delete
//! them, and nobody can squat another owner's keys. The books count bytes against the partner
//! that put them (the store's owner id of an entry).

use cairn_store::Lease;
use libp2p::PeerId;

use crate::audit::Challenge;
use crate::codec::Held;
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
    // costs a signature check (once per peer and owner).
    if !shared.verified(&peer, auth) {
        return Err(invalid());
    }
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

fn flip_for_hostile(shared: &Shared, bytes: &mut [u8]) {
    // A holder that kept something else than it was given: one byte in every 512 differs.
    if shared.cfg.hostile.as_deref() == Some("wrong-bytes") {
        for b in bytes.iter_mut().step_by(512) {
            *b ^= 0x5a;
        }
    }
}

fn store_err(e: cairn_store::Error) -> Msg {
    err(ErrorCode::Internal, format!("chunk store: {e}"))
}

fn not_here(shard: &crate::wire::ShardId) -> Msg {
    err(ErrorCode::NotFound, format!("no shard {shard} here"))
}

/// The bytes of `owner`'s shard as this holder has them; the error reply otherwise.
fn held(shared: &Shared, owner: &[u8; 32], shard: &crate::wire::ShardId) -> Result<Vec<u8>, Msg> {
    match shared.store.get(held_id(owner, shard)) {
        Ok(mut data) => {
            flip_for_hostile(shared, &mut data);
            Ok(data)
        }
        Err(cairn_store::Error::NotFound { .. }) => Err(not_here(shard)),
        Err(e) => Err(store_err(e)),
    }
}

/// The entry of `owner`'s shard, if any.
fn entry(
    shared: &Shared,
    owner: &[u8; 32],
    shard: &crate::wire::ShardId,
) -> Result<Option<cairn_store::ShardInfo>, Msg> {
    shared.store.info(held_id(owner, shard)).map_err(store_err)
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

/// Books `bytes` no longer held for whichever partner's books `payer` (a store owner id) names
/// (another plug of the same owner may have put them); nobody's if no partner's.
fn release_payer(shared: &Shared, payer: cairn_store::OwnerId, bytes: u64) {
    let partner = shared
        .state()
        .partner_ids()
        .into_iter()
        .find(|p| owner_of(p) == payer);
    if let Some(p) = partner {
        release(shared, &p, bytes);
    }
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
            let _key = shared.key_lock(&shard);
            // The owner's earlier copy is replaced; it counts against whoever put it.
            let (old, other) = match entry(shared, &owner, &shard) {
                Ok(Some(i)) if i.owner == payer => (u64::from(i.len), None),
                Ok(Some(i)) => (0, Some(i)),
                Ok(None) => (0, None),
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
            let lease = Lease::Until(now_secs() + u64::from(lease_secs));
            match shared
                .store
                .put(held_id(&owner, &shard), &data, payer, lease)
            {
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
        Msg::Get { shard } => match held(shared, &owner, &shard) {
            Ok(data) => Msg::ShardData { shard, data },
            Err(m) => m,
        },
        Msg::Delete { shard } => {
            let _key = shared.key_lock(&shard);
            match entry(shared, &owner, &shard) {
                Ok(Some(i)) => match shared.store.delete(held_id(&owner, &shard)) {
                    Ok(()) => {
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
            let _key = shared.key_lock(&shard);
            let id = held_id(&owner, &shard);
            match entry(shared, &owner, &shard) {
                // The bytes stay booked to the partner that put them.
                Ok(Some(i)) => {
                    let until = Lease::Until(now_secs() + u64::from(lease_secs));
                    let r = shared
                        .store
                        .get(id)
                        .and_then(|data| shared.store.put(id, &data, i.owner, until));
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
