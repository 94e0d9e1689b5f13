//! Churn: the repair loop keeps data alive through weeks of nodes coming, going and cheating.
//!
//! The quick variant of the simulation ([`SimConfig::quick`]: 40 nodes, 4 simulated weeks,
//! 300 chunks of 4-of-8, about half the nodes leaving for good within the run); each run takes a
//! fraction of a second in release builds, this file about 2 s. The long run is the `churn`
//! benchmark.

use cairn_node::sim::{self, SimConfig, SimReport};

/// Seeds the assertions hold for; a few, so one lucky draw cannot carry the test.
const SEEDS: [u64; 3] = [1, 7, 42];

fn run(cfg: SimConfig) -> SimReport {
    sim::run(&cfg).expect("valid configuration")
}

#[test]
fn with_repair_no_chunk_is_lost() {
    for seed in SEEDS {
        let r = run(SimConfig::quick(seed));
        // The churn was real: nodes left, newcomers joined, repairs ran.
        assert!(r.nodes_left >= 10, "seed {seed}: {r:#?}");
        assert!(r.nodes_joined >= 10, "seed {seed}: {r:#?}");
        assert!(
            r.repairs > 100 && r.shards_moved > 100,
            "seed {seed}: {r:#?}"
        );
        assert_eq!(r.chunks_stored, r.chunks, "seed {seed}: {r:#?}");
        assert_eq!(r.chunks_lost, 0, "seed {seed}: {r:#?}");
        assert_eq!(r.durability, 1.0, "seed {seed}: {r:#?}");
        assert!(r.min_live_shards >= 4, "seed {seed}: {r:#?}");
        assert!(r.peak_queue_len > 0 && r.messages_dropped_full == 0);
    }
}

#[test]
fn without_repair_the_same_churn_loses_chunks() {
    for seed in SEEDS {
        let r = run(SimConfig {
            repair: false,
            ..SimConfig::quick(seed)
        });
        assert_eq!(r.chunks_stored, r.chunks, "seed {seed}: {r:#?}");
        assert_eq!(r.repairs + r.shards_moved, 0, "seed {seed}: {r:#?}");
        assert!(r.chunks_lost > 0, "seed {seed}: {r:#?}");
        assert!(r.durability < 1.0, "seed {seed}: {r:#?}");
        assert!(r.min_live_shards < 4, "seed {seed}: {r:#?}");
    }
}

#[test]
fn shards_on_dishonest_nodes_are_detected_and_placed_elsewhere() {
    for seed in SEEDS {
        let on = run(SimConfig::quick(seed));
        assert!(on.shards_on_dishonest_peak > 0, "seed {seed}: {on:#?}");
        assert!(on.audits_failed > 0, "seed {seed}: {on:#?}");
        assert_eq!(on.shards_on_dishonest_end, 0, "seed {seed}: {on:#?}");

        // Without repair the owners' books still point at the cheaters at the end.
        let off = run(SimConfig {
            repair: false,
            ..SimConfig::quick(seed)
        });
        assert!(off.shards_on_dishonest_end > 0, "seed {seed}: {off:#?}");
    }
    // With nobody cheating, nobody fails an audit: failures come from missing bytes only.
    let honest = run(SimConfig {
        dishonest: 0,
        ..SimConfig::quick(SEEDS[0])
    });
    assert_eq!(honest.shards_on_dishonest_peak, 0);
    assert_eq!(honest.audits_failed, 0, "{honest:#?}");
    assert_eq!(honest.chunks_lost, 0, "{honest:#?}");
}

#[test]
fn a_seed_replays_a_run_exactly() {
    let a = run(SimConfig::quick(SEEDS[1]));
    let b = run(SimConfig::quick(SEEDS[1]));
    assert_eq!(a, b);
    let other = run(SimConfig::quick(SEEDS[1] + 1));
    assert_ne!(a, other, "the seed must matter");
}
