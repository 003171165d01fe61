#![no_main]
//! See `petrel_fuzzing::session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzzing::session(data));
