#![no_main]
//! See `petrel_fuzzing::frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzzing::frames(data));
