//! Shard protocol frame decoder on arbitrary bytes: frames or a refusal, never a panic; every
//! accepted frame re-encodes to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_node::wire::fuzz_decode(data);
});
