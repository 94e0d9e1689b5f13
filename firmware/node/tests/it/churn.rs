//! Churn: the repair loop keeps data alive through weeks of nodes coming, going and cheating;
//! the owners' audits, evaluated as the real node evaluates them, catch every cheater.
//!
//! The quick variant of the simulation ([`SimConfig::quick`]: 40 nodes, 4 simulated weeks,
//! 300 chunks of 4-of-8, about half the nodes leaving for good within the run); each run takes a
//! fraction of a second in release builds (about 0.5 s), this file about 10 s on two cores. The
//! long run is the `churn` benchmark.

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

        // Without repair the audits catch them all the same, but what they held is not
        // placed elsewhere: chunks are left with fewer shards than with repair.
        let off = run(SimConfig {
            repair: false,
            ..SimConfig::quick(seed)
        });
        assert!(off.audits_failed > 0, "seed {seed}: {off:#?}");
        assert!(
            off.min_live_shards < on.min_live_shards,
            "seed {seed}: {off:#?}"
        );
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

/// One holder of each cheating strategy: dropping shards and guessing at challenges, serving
/// forged bytes while keeping the real ones, fetching a challenged shard from other holders
/// (who serve only its owner). Each is caught, scored down by the owners that caught it and
/// left holding nothing of theirs; honest holders never fail; nothing is lost.
#[test]
fn cheaters_of_every_strategy_are_caught_lose_their_score_and_hold_nothing_at_the_end() {
    for seed in SEEDS {
        let r = run(SimConfig::quick(seed));
        for s in ["DropsShards", "ForgesOnGet", "FetchesFromOthers"] {
            let c = &r.by_strategy[s];
            assert_eq!(c.nodes, 1, "seed {seed} {s}: {r:#?}");
            assert_eq!(c.caught, 1, "seed {seed} {s}: {c:#?}");
            assert!(c.failed > 0, "seed {seed} {s}: {c:#?}");
            // Below the score a partner starts with (0.5), and below the honest ones'.
            assert!(c.score_max_caught < 0.5, "seed {seed} {s}: {c:#?}");
            assert_eq!(c.shards_end, 0, "seed {seed} {s}: {c:#?}");
        }
        // Without the bytes no answer passes, fetched from others or guessed.
        assert_eq!(r.by_strategy["DropsShards"].passed, 0, "seed {seed}");
        assert_eq!(r.by_strategy["FetchesFromOthers"].passed, 0, "seed {seed}");
        // The forger keeps the bytes: it passes prepared challenges, and fails the whole
        // checks that follow them.
        assert!(r.by_strategy["ForgesOnGet"].passed > 0, "seed {seed}");
        let h = &r.by_strategy["Honest"];
        assert_eq!((h.failed, h.caught), (0, 0), "seed {seed}: {h:#?}");
        assert!(h.score_min >= 0.5, "seed {seed}: {h:#?}");
        assert!(h.shards_end > 0);
        assert_eq!(r.chunks_lost, 0, "seed {seed}: {r:#?}");
        assert_eq!(r.durability, 1.0, "seed {seed}: {r:#?}");
    }
}

#[test]
fn a_seed_replays_a_run_exactly() {
    let a = run(SimConfig::quick(SEEDS[1]));
    let b = run(SimConfig::quick(SEEDS[1]));
    assert_eq!(a, b);
    let other = run(SimConfig::quick(SEEDS[1] + 1));
    assert_ne!(a, other, "the seed must matter");
}
