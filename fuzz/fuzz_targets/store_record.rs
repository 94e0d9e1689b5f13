//! Fuzzes the chunk store's record and batch-header decoders with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_store::fuzzing::decode_bytes(data);
});
