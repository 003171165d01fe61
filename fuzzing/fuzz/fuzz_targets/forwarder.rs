#![no_main]
//! See `petrel_fuzzing::forwarder`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| petrel_fuzzing::forwarder(data));
