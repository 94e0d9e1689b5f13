//! Fuzzes the chunk store's crash recovery: opens a store whose segment holds arbitrary or
//! damaged bytes, then reads, verifies and writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_store::fuzzing::recover_from_bytes(data);
});
