//! The front-panel line codec on arbitrary bytes: never a panic, and every parsed message
//! survives formatting and parsing again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_bsp::panel::fuzz_line(data);
});
