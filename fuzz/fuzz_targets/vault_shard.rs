//! Vault shard decoder on arbitrary bytes: a shard or a refusal, never a panic; an accepted
//! shard re-encodes to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_vault::fuzz_shard(data);
});
