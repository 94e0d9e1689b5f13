//! Service manifests on arbitrary bytes: a manifest or a one-line error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_supervisor::manifest::fuzz_parse(data);
});
