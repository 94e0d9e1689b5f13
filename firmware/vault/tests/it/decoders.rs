//! Property tests of the shard codec and decoder: the bodies of the fuzz targets run here on
//! seeded random and mutated inputs (CI runs the fuzzers only briefly).

use cairn_vault::shard::{decode_shard, Authority, Codec, ShardFormatError};
use cairn_vault::{AeadKind, ChunkId};
use proptest::prelude::*;

fn shards(k: usize, n: usize, sealed: &[u8]) -> Vec<Vec<u8>> {
    let codec = Codec::new(k, n).unwrap();
    let (mut s, mut p, mut f) = (sealed.to_vec(), Vec::new(), Vec::new());
    let mut out = Vec::new();
    codec
        .encode(
            &ChunkId([3; 32]),
            AeadKind::ChaCha20Poly1305,
            &mut s,
            &mut p,
            &mut f,
            Authority::Owner(&[4; 32]),
            |_, b| {
                out.push(b.to_vec());
                Ok(())
            },
        )
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn codec_rebuilds_from_any_k_shards(
        k in 1usize..6, extra in 1usize..5, len in 28usize..20_000, seed in any::<u64>(),
    ) {
        let n = k + extra;
        let sealed: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed).wrapping_mul(0x9e37) as u8).collect();
        let all = shards(k, n, &sealed);
        // Keep a seeded choice of exactly k shards.
        let mut idx: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            idx.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut payloads = vec![None; n];
        for &i in &idx[..k] {
            let (h, p) = decode_shard(&all[i]).unwrap();
            prop_assert_eq!(usize::from(h.index), i);
            payloads[i] = Some(p.to_vec());
        }
        prop_assert_eq!(Codec::new(k, n).unwrap().decode(payloads, len).unwrap(), sealed);
    }

    #[test]
    fn any_changed_byte_or_length_is_refused(pos in any::<usize>(), v in 1u8..=255, cut in any::<usize>()) {
        let all = shards(2, 4, &[7u8; 3000]);
        let mut bad = all[1].clone();
        let i = pos % bad.len();
        bad[i] ^= v;
        prop_assert!(decode_shard(&bad).is_err());
        cairn_vault::fuzz_shard(&bad);
        let c = cut % all[1].len();
        prop_assert!(decode_shard(&all[1][..c]).is_err());
        cairn_vault::fuzz_shard(&all[1][..c]);
        cairn_vault::fuzz_shard(&all[1]);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        cairn_vault::fuzz_shard(&data);
        cairn_vault::fuzz_manifest(&data);
        let mut framed = b"CSH1".to_vec();
        framed.extend_from_slice(&data);
        cairn_vault::fuzz_shard(&framed);
    }
}

#[test]
fn k_equal_one_shards_decode_alone() {
    let all = shards(1, 3, &[5u8; 100]);
    for s in &all {
        cairn_vault::fuzz_shard(s);
    }
    assert_eq!(decode_shard(&all[0][..3]), Err(ShardFormatError::Length(3)));
}
