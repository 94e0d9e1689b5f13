//! Leases of partners' shards, kept apart from the shards: renewing one writes a small lease
//! record (one page of the chunk store), not the shard again, so an owner's audits do not wear
//! the holder's flash by a shard's size per renewal.
//!
//! A partner's shard is stored without an expiry of its own, under its per-owner id
//! (`records::held_id`), booked to the partner that put it; its lease record (owner [`LEASES`],
//! id [`lease_id`] of that id, so one owner's lease is not another's; 8 bytes: the expiry)
//! carries the lease as the store's expiry, so
//! the store drops it when the lease runs out. A shard whose lease record is gone reads as
//! absent, and [`sweep`] (each repair round, before compaction) deletes it. Shards stored before
//! leases moved here carry their lease themselves and are left to the store's expiry.

use std::sync::MutexGuard;

use cairn_store::{Lease, OwnerId, ShardId as StoreId, ShardInfo};

use crate::records::{OWN_RECORDS, OWN_SHARDS};
use crate::state::Shared;

/// The chunk-store owner of lease records.
pub const LEASES: OwnerId = OwnerId([0xfc; 32]);

/// Shards looked at per page of a sweep.
const PAGE: usize = 256;

/// The chunk-store id of the lease record of the shard stored under `id`.
pub fn lease_id(id: StoreId) -> StoreId {
    StoreId(blake3::derive_key("cairn lease v1", &id.0))
}

/// Held while the shard stored under `id` is checked and written or deleted: the holder's
/// requests and the sweep take this one lock for a shard, so a renewal and the sweep's delete
/// exclude each other.
pub(crate) fn lock(shared: &Shared, id: StoreId) -> MutexGuard<'_, ()> {
    shared.key_lock(&crate::wire::ShardId(id.0))
}

/// Stores a partner's shard under `id`, booked to `payer`, and its lease (until Unix second
/// `until`) in one batch.
pub(crate) fn put(
    shared: &Shared,
    id: StoreId,
    data: &[u8],
    payer: OwnerId,
    until: u64,
) -> Result<(), cairn_store::Error> {
    let expiry = until.to_le_bytes();
    let items = [
        // The lease first: a lease without its shard is harmless, and runs out by itself.
        (lease_id(id), &expiry[..], LEASES, Lease::Until(until)),
        (id, data, payer, Lease::Forever),
    ];
    shared.store.put_many(&items)?.into_iter().collect()
}

/// Renews the lease of the shard stored under `id`: writes its lease record only.
pub(crate) fn renew(shared: &Shared, id: StoreId, until: u64) -> Result<(), cairn_store::Error> {
    shared.store.put(
        lease_id(id),
        &until.to_le_bytes(),
        LEASES,
        Lease::Until(until),
    )
}

/// Whether the shard `info` describes is still leased: its lease record is live (or, stored
/// before leases were kept apart, it carries its own expiry, which the store enforces).
pub(crate) fn leased(shared: &Shared, info: &ShardInfo) -> Result<bool, cairn_store::Error> {
    if info.lease != Lease::Forever {
        return Ok(true);
    }
    Ok(shared.store.info(lease_id(info.id))?.is_some())
}

/// Deletes the lease record of the shard stored under `id` (after the shard itself); one
/// already gone is fine.
pub(crate) fn forget(shared: &Shared, id: StoreId) {
    match shared.store.delete(lease_id(id)) {
        Ok(()) | Err(cairn_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!("deleting the lease of shard {id}: {e}"),
    }
}

/// Deletes partners' shards whose lease ran out (blocking); returns how many. The books are
/// recounted by the caller.
pub fn sweep(shared: &Shared) -> Result<u64, cairn_store::Error> {
    let mut dropped = 0;
    for owner in shared.store.owners() {
        if [OWN_RECORDS, OWN_SHARDS, LEASES].contains(&owner) {
            continue;
        }
        let mut after = None;
        loop {
            let page = shared.store.shards_of(owner, after, PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for info in &page {
                if leased(shared, info)? {
                    continue;
                }
                // Checked again under the shard's lock: a renewal may have come in between.
                let _key = lock(shared, info.id);
                let now = shared.store.info(info.id)?;
                if now.is_some_and(|i| !leased(shared, &i).unwrap_or(true)) {
                    match shared.store.delete(info.id) {
                        Ok(()) => dropped += 1,
                        Err(cairn_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::codec::Budget;
    use crate::config::Config;

    #[test]
    fn a_shard_whose_lease_ran_out_reads_as_gone_and_the_sweep_deletes_it() {
        let home = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        let store = cairn_store::Store::open_dir_reserve_later(
            home.path().join("store"),
            cairn_store::Config {
                memory_budget_bytes: 1 << 20,
                clock: Arc::new(move || clock.load(Ordering::Relaxed)),
                ..Default::default()
            },
        )
        .unwrap();
        let saved = crate::state::load_persisted(&home.path().join("partners.json")).unwrap();
        let me = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let (shared, _rx) = Shared::new(
            Config::new(home.path().to_owned()),
            me,
            store,
            saved,
            Budget::new(1 << 20),
        );
        let payer = OwnerId([1; 32]);
        // Stored as a holder stores them: per owner.
        let id = |key: u8| crate::records::held_id(&[7; 32], &crate::wire::ShardId([key; 32]));
        let (short, long, old) = (id(1), id(2), id(3));
        put(&shared, short, b"short", payer, 1_000_100).unwrap();
        put(&shared, long, b"long", payer, 1_000_100).unwrap();
        renew(&shared, long, 2_000_000).unwrap();
        // Another owner's shard under the same wire key has a lease of its own.
        let other = crate::records::held_id(&[8; 32], &crate::wire::ShardId([2; 32]));
        put(&shared, other, b"other", payer, 1_000_100).unwrap();
        // Stored before leases were kept apart: its own expiry, no lease record.
        shared
            .store
            .put(old, b"old", payer, Lease::Until(1_500_000))
            .unwrap();
        let info = |s: &StoreId| shared.store.info(*s).unwrap().unwrap();
        assert!(leased(&shared, &info(&short)).unwrap());
        now.store(1_000_200, Ordering::Relaxed);
        assert!(!leased(&shared, &info(&short)).unwrap());
        assert!(leased(&shared, &info(&long)).unwrap());
        assert!(leased(&shared, &info(&old)).unwrap());
        assert!(!leased(&shared, &info(&other)).unwrap());
        assert_eq!(sweep(&shared).unwrap(), 2);
        assert!(shared.store.info(short).unwrap().is_none());
        assert!(shared.store.info(other).unwrap().is_none());
        assert_eq!(shared.store.get(long).unwrap(), b"long");
        assert_eq!(shared.store.get(old).unwrap(), b"old");
        assert_eq!(sweep(&shared).unwrap(), 0);
    }
}
