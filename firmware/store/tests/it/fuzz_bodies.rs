//! Runs the fuzz targets' bodies (`fuzz/fuzz_targets/store_*.rs`) on seeded random and
//! mutated inputs, since CI runs the fuzzers themselves only briefly.
//!
//! Size: 3,000 decoder inputs and 300 recovery inputs (about a second in release).

use cairn_store::fuzzing::{decode_bytes, recover_from_bytes};
use cairn_store::sim::SimRng;

#[test]
fn record_decoder_survives_random_bytes() {
    let mut rng = SimRng::new(1);
    for _ in 0..3000 {
        let mut b = vec![0u8; rng.below(400) as usize];
        rng.fill(&mut b);
        // Plant valid magics now and then so decoding goes past the first check.
        if b.len() >= 4 && rng.chance(50) {
            let magic: &[u8; 4] = [b"CRP1", b"CRD1", b"CBT1"][rng.below(3) as usize];
            b[..4].copy_from_slice(magic);
        }
        decode_bytes(&b);
    }
}

#[test]
fn recovery_survives_arbitrary_and_damaged_segment_bytes() {
    let mut rng = SimRng::new(2);
    let mut readable = 0;
    for _ in 0..300 {
        let mut b = vec![0u8; rng.below(9000) as usize];
        rng.fill(&mut b);
        if rng.chance(30) {
            // Long zero runs look like padding and holes.
            let from = rng.below(b.len() as u64 + 1) as usize;
            let to = (from + rng.below(5000) as usize).min(b.len());
            b[from..to].fill(0);
        }
        readable += recover_from_bytes(&b);
    }
    // About half the inputs start from a store holding four shards; damage spares most.
    assert!(readable > 200, "only {readable} shards survived");
}
