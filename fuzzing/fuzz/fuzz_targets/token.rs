#![no_main]
//! See `petrel_fuzzing::token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzzing::token(data));
