//! Crash-test writer: puts (and deletes) shards from four threads into the store at `DIR`
//! until killed, printing one line per acknowledged operation:
//! `P <id hex> <len>` after a put returned, `d <id hex>` before a delete starts and
//! `D <id hex>` after it returned (a delete in flight at the kill may land or not).
//! The kill -9 test runs it, kills it at random moments and checks every printed line.
//!
//! Usage: `crash_child DIR SEED`

use std::io::Write;
use std::sync::{Arc, Mutex};

use cairn_store::sim::SimRng;
use cairn_store::{CompactOptions, Config, Lease, OwnerId, ShardId, Store};

/// The bytes of shard `id` with length `len`: derived from the id, so a reader can check them.
fn payload_of(id: &ShardId, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes")));
    let mut b = vec![0u8; len];
    r.fill(&mut b);
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: crash_child DIR SEED");
        std::process::exit(2);
    }
    let seed: u64 = args[2].parse().expect("SEED is a number");
    let cfg = Config {
        segment_bytes: 1 << 20,
        max_shard_bytes: 64 << 10,
        max_batch_bytes: 256 << 10,
        memory_budget_bytes: 512 << 10,
        reserve_bytes: 64 << 10,
        ..Config::default()
    };
    let store = Arc::new(Store::open_dir(&args[1], cfg).unwrap_or_else(|e| {
        eprintln!("crash_child: {e}");
        std::process::exit(1)
    }));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut rng = SimRng::new(seed * 1000 + t);
                let mut mine: Vec<ShardId> = Vec::new();
                for k in 0.. {
                    if t == 0 && k % 40 == 39 {
                        let opts = CompactOptions {
                            min_dead_ratio: 0.3,
                            max_read_bytes: 4 << 20,
                        };
                        store.compact(opts).expect("compact");
                    }
                    if !mine.is_empty() && rng.chance(25) {
                        let id = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                        {
                            let mut o = out.lock().unwrap();
                            writeln!(o, "d {id}")
                                .and_then(|()| o.flush())
                                .expect("stdout");
                        }
                        store.delete(id).expect("delete");
                        let mut o = out.lock().unwrap();
                        writeln!(o, "D {id}")
                            .and_then(|()| o.flush())
                            .expect("stdout");
                        continue;
                    }
                    let mut b = [0u8; 32];
                    rng.fill(&mut b);
                    let id = ShardId(b);
                    let len = 1 + rng.below(64 << 10) as usize;
                    store
                        .put(
                            id,
                            &payload_of(&id, len),
                            OwnerId([t as u8; 32]),
                            Lease::Forever,
                        )
                        .expect("put");
                    mine.push(id);
                    let mut o = out.lock().unwrap();
                    writeln!(o, "P {id} {len}")
                        .and_then(|()| o.flush())
                        .expect("stdout");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
