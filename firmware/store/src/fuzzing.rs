//! Bodies of the fuzz targets, kept here so ordinary tests run them on seeded bytes too.

use std::sync::Arc;

use crate::format::{decode_batch_header, decode_record, REC_HDR};
use crate::sim::SimStorage;
use crate::{Config, Error, Lease, OwnerId, ShardId, Store};

/// Decodes `data` as a record and as a batch header; must never panic, and whatever decodes
/// must be self-consistent.
pub fn decode_bytes(data: &[u8]) {
    if let Some(r) = decode_record(data) {
        assert!(REC_HDR + r.payload_len as usize <= data.len());
        assert!(r.padded_len >= REC_HDR);
    }
    let _ = decode_batch_header(data);
}

/// Opens a store whose only segment holds `data` (after a valid prefix written by the store
/// itself when `data[0]` is odd), then reads, writes and verifies it. Recovery must never
/// panic, never return bytes other than those put, and leave a store that accepts writes.
/// Returns how many of the shards put before the damage were still readable.
pub fn recover_from_bytes(data: &[u8]) -> usize {
    let sim = SimStorage::new(7);
    let cfg = Config {
        memory_budget_bytes: 256 << 10,
        segment_bytes: 1 << 20,
        max_shard_bytes: 64 << 10,
        max_batch_bytes: 64 << 10,
        reserve_bytes: 0,
        clock: Arc::new(|| 1_000),
    };
    let ids: Vec<ShardId> = (0..4u8).map(|i| ShardId([i + 1; 32])).collect();
    {
        let store = Store::open(Arc::new(sim.clone()), cfg.clone()).expect("fresh store opens");
        if data.first().is_some_and(|b| b & 1 == 1) {
            for id in &ids {
                store
                    .put(*id, &id.0, OwnerId([9; 32]), Lease::Forever)
                    .expect("put on a fresh store");
            }
        }
    }
    let name = "seg-00000001.log";
    let mut seg = sim.file_bytes(name).unwrap_or_default();
    // Either overwrite the middle of what is there or append arbitrary bytes. Appended bytes
    // may spell out valid later records (their checksums are public), so only damage in
    // place is held to "the bytes put or an error".
    let in_place = data.len() > 1 && data[1] & 1 == 1 && !seg.is_empty();
    if in_place {
        let at = usize::from(data[1]) * 37 % seg.len();
        for (i, b) in data.iter().enumerate().skip(2) {
            if at + i < seg.len() {
                seg[at + i] = *b;
            }
        }
    } else {
        seg.extend_from_slice(data);
    }
    sim.put_file(name, &seg);
    let store = match Store::open(Arc::new(sim), cfg) {
        Ok(s) => s,
        Err(e) => {
            // Only a clear error naming a file is acceptable.
            assert!(!e.to_string().is_empty());
            return 0;
        }
    };
    let mut readable = 0;
    for id in &ids {
        match store.get(*id) {
            Ok(b) => {
                assert!(!in_place || b == id.0, "recovered wrong bytes for {id}");
                readable += 1;
            }
            Err(Error::NotFound { .. }) | Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let _ = store.verify().expect("verify runs");
    let new = ShardId([0xee; 32]);
    store
        .put(new, b"after recovery", OwnerId([9; 32]), Lease::Forever)
        .expect("writes resume after recovery");
    assert_eq!(store.get(new).expect("readable"), b"after recovery");
    readable
}
