//! Vault manifest decoders (file tree and root record) on arbitrary bytes: a tree, a record or
//! a one-line error, never a panic; whatever decodes re-encodes to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_vault::fuzz_manifest(data);
});
