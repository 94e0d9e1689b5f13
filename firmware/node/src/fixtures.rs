//! Test builds only (feature `test-fixtures`, never the product): holders that misbehave on
//! purpose, for the tests of audits and restores against lying partners.

use std::str::FromStr;

use crate::leases::LEASES;
use crate::records::{held_id, shard_key, OWN_RECORDS, OWN_SHARDS};
use crate::state::Shared;
use crate::wire::{Msg, ShardId};

/// How a hostile holder misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// Keeps something else than it was given: one byte in every 512 of what it serves differs.
    WrongBytes,
    /// Answers every get it can with a forged, well-formed shard: for any index of any chunk
    /// it holds a shard of (the chunk id is in every shard's header), the right header and
    /// checksum around a payload of its own.
    Forge,
}

impl FromStr for Hostile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wrong-bytes" => Ok(Hostile::WrongBytes),
            "forge" => Ok(Hostile::Forge),
            other => Err(format!(
                "unknown hostile mode {other:?} (wrong-bytes, forge)"
            )),
        }
    }
}

/// Alters bytes about to be served, as [`Hostile::WrongBytes`] does.
pub(crate) fn tamper(shared: &Shared, mut bytes: Vec<u8>) -> Vec<u8> {
    if shared.cfg.hostile == Some(Hostile::WrongBytes) {
        for b in bytes.iter_mut().step_by(512) {
            *b ^= 0x5a;
        }
    }
    bytes
}

/// The forged answer to a get of `owner`'s `key`, as [`Hostile::Forge`] gives it; `None` when
/// this holder is honest or holds no shard of `owner`'s chunk the key belongs to.
pub(crate) fn forged_get(shared: &Shared, owner: &[u8; 32], key: &ShardId) -> Option<Msg> {
    if shared.cfg.hostile != Some(Hostile::Forge) {
        return None;
    }
    // Whichever partner put them (another plug of the owner may have): every partner's shards.
    shared
        .store
        .owners()
        .into_iter()
        .filter(|o| ![OWN_RECORDS, OWN_SHARDS, LEASES].contains(o))
        .find_map(|payer| forged_from(shared, payer, owner, key))
}

/// [`forged_get`] from the shards `payer` put here.
fn forged_from(
    shared: &Shared,
    payer: cairn_store::OwnerId,
    owner: &[u8; 32],
    key: &ShardId,
) -> Option<Msg> {
    let mut after = None;
    loop {
        let page = shared.store.shards_of(payer, after, 256).ok()?;
        after = Some(page.last()?.id);
        for info in page {
            let Ok(bytes) = shared.store.get(info.id) else {
                continue;
            };
            let Ok((h, payload)) = cairn_vault::shard::decode_shard(&bytes) else {
                continue;
            };
            // Only `owner`'s shards are kept under the ids of `owner`'s keys.
            if info.id != held_id(owner, &shard_key(&h.chunk.0, h.index)) {
                continue;
            }
            let Some(index) = (0..h.n).find(|i| shard_key(&h.chunk.0, *i) == *key) else {
                continue;
            };
            // Its own payload under the chunk's digests and tag (copied: they are in clear).
            let forged: Vec<u8> = payload.iter().map(|b| b ^ 0xa5).collect();
            let Ok(auth) = cairn_vault::shard::shard_auth(&bytes) else {
                continue;
            };
            let mut out = Vec::new();
            cairn_vault::shard::encode_shard(
                &cairn_vault::shard::ShardHeader { index, ..h },
                &forged,
                &auth,
                &mut out,
            );
            return Some(Msg::ShardData {
                shard: *key,
                data: out,
            });
        }
    }
}
