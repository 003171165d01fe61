#![no_main]
//! See `petrel_fuzzing::storage_values`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzzing::storage_values(data));
