//! The holder's scrub: a background walk over the shards it holds for partners, so a copy the
//! card damaged is found before an audit or a read of that shard happens to ask for it.
//!
//! Each shard is read (one in memory at a time) and checked as a read for a partner is: the
//! chunk store's CRC, then that the bytes are a vault shard whose key, with an owner its payer
//! acted for, gives the id it is stored under. A damaged copy is deleted, its bytes released
//! from the payer's books, and its id remembered for that partner (`Partner::lost`, persisted)
//! until the partner asks (`Msg::LostQuery`, each repair round), when its owner marks the slot
//! bad and re-places it. Reads are paced to `Config::scrub_rate` bytes per second, and a pass
//! starts every `Config::scrub_every`.

use std::sync::Arc;
use std::time::Duration;

use cairn_store::{OwnerId, ShardId as StoreId, ShardInfo};
use serde::Serialize;

use crate::leases::{self, LEASES};
use crate::records::{held_id, hex, owner_of, shard_key, OWN_RECORDS, OWN_SHARDS};
use crate::state::{Shared, LOST_PER_PARTNER};

/// Shards listed per page of a pass (ids only; the bytes are read one shard at a time).
const PAGE: usize = 256;

/// What the scrub has done since the node started (`status`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrubStats {
    /// Passes finished.
    pub passes: u64,
    /// Shards checked.
    pub checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damaged copies found and dropped.
    pub damaged: u64,
}

/// Scrubs on schedule until the node stops.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let start = tokio::time::Instant::now();
        if let Err(e) = pass(&shared).await {
            tracing::error!("scrub: {e}");
        }
        shared.state().scrub.passes += 1;
        tokio::time::sleep_until(start + shared.cfg.scrub_every).await;
    }
}

/// One pass over every partner's shards.
async fn pass(shared: &Arc<Shared>) -> Result<(), String> {
    let payers: Vec<OwnerId> = shared
        .store
        .owners()
        .into_iter()
        .filter(|o| ![OWN_RECORDS, OWN_SHARDS, LEASES].contains(o))
        .collect();
    for payer in payers {
        let mut after = None;
        loop {
            let s = shared.clone();
            let page = tokio::task::spawn_blocking(move || s.store.shards_of(payer, after, PAGE))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for info in page {
                let s = shared.clone();
                let read = tokio::task::spawn_blocking(move || check(&s, &info))
                    .await
                    .map_err(|e| e.to_string())?;
                pace(shared, read).await;
            }
        }
    }
    Ok(())
}

/// Waits as long as reading `bytes` takes at the scrub's rate.
async fn pace(shared: &Shared, bytes: u64) {
    let rate = shared.cfg.scrub_rate.max(1);
    tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
}

/// Checks one shard (blocking); drops it and remembers it for its payer if damaged. The bytes
/// read.
fn check(shared: &Shared, info: &ShardInfo) -> u64 {
    let _key = leases::lock(shared, info.id);
    // Gone since it was listed, or its lease ran out (the sweep's to delete): nothing to check.
    match shared.store.info(info.id) {
        Ok(Some(now)) if leases::leased(shared, &now).unwrap_or(false) => {}
        _ => return 0,
    }
    let partner = shared
        .state()
        .partner_ids()
        .into_iter()
        .find(|p| owner_of(p) == info.owner);
    let damage = match shared.store.get(info.id) {
        Err(cairn_store::Error::Corrupt { .. }) => Some("its checksum fails".to_string()),
        Err(e) => {
            tracing::warn!("scrub: reading shard {}: {e}", info.id);
            None
        }
        Ok(data) => {
            let owners = partner
                .and_then(|p| {
                    shared
                        .state()
                        .saved
                        .partners
                        .get(&p)
                        .map(|p| p.owners.clone())
                })
                .unwrap_or_default();
            mismatch(info.id, &data, &owners)
        }
    };
    {
        let mut st = shared.state();
        st.scrub.checked += 1;
        st.scrub.bytes += u64::from(info.len);
    }
    if let Some(why) = damage {
        tracing::warn!(
            "scrub: a shard stored under {} is damaged on this plug's disk ({why}): dropped, \
             its owner is told at its next repair round",
            info.id
        );
        if crate::holder::drop_copy(shared, info.id).is_some() {
            shared.state().scrub.damaged += 1;
            if let Some(p) = partner {
                remember(shared, &p, info.id);
            }
        }
    }
    u64::from(info.len)
}

/// Why `data`, stored under `id`, is not the shard it should be: not a vault shard, or (when the
/// payer's owners are known) a shard whose key gives another id for each of them.
fn mismatch(id: StoreId, data: &[u8], owners: &[String]) -> Option<String> {
    let (h, _) = match cairn_vault::shard::decode_shard(data) {
        Ok(x) => x,
        Err(e) => return Some(format!("not a valid shard: {e}")),
    };
    let key = shard_key(&h.chunk.0, h.index);
    let keys: Vec<[u8; 32]> = owners
        .iter()
        .filter_map(|o| crate::records::unhex32(o))
        .collect();
    if keys.is_empty() || keys.iter().any(|o| held_id(o, &key) == id) {
        return None;
    }
    Some(format!(
        "its bytes are shard {key}, not the one stored here"
    ))
}

/// Remembers for `partner` that the shard stored under `id` is lost (bounded; persisted).
fn remember(shared: &Shared, partner: &libp2p::PeerId, id: StoreId) {
    {
        let mut st = shared.state();
        let Some(p) = st.saved.partners.get_mut(partner) else {
            return;
        };
        let id = hex(&id.0);
        if !p.lost.contains(&id) {
            if p.lost.len() >= LOST_PER_PARTNER {
                p.lost.remove(0);
            }
            p.lost.push(id);
        }
    }
    if let Err(e) = shared.persist() {
        tracing::error!("saving the shards lost for {partner}: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(chunk: [u8; 32], index: u8) -> Vec<u8> {
        crate::records::test_shard(chunk, index, 3, index)
    }

    #[test]
    fn a_shard_is_damaged_unless_its_key_gives_the_id_it_is_stored_under() {
        let (owner, other) = ([1u8; 32], [2u8; 32]);
        let chunk = [9u8; 32];
        let data = shard(chunk, 1);
        let id = held_id(&owner, &shard_key(&chunk, 1));
        let owners = vec![hex(&other), hex(&owner)];
        assert_eq!(mismatch(id, &data, &owners), None);
        // Owners not known (a payer no longer a partner): the store's CRC is the check.
        assert_eq!(mismatch(id, &data, &[]), None);
        // Another index's bytes under this id.
        let wrong = shard(chunk, 2);
        let why = mismatch(id, &wrong, &owners).expect("caught");
        assert!(why.contains(&shard_key(&chunk, 2).to_string()), "{why}");
        // Not a shard at all.
        let mut cut = data.clone();
        cut.truncate(20);
        assert!(mismatch(id, &cut, &owners)
            .unwrap()
            .contains("not a valid shard"));
    }
}
