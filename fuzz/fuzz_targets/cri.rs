//! libFuzzer entry point for the `cri` target; the target itself is
//! [`remedy_fuzz::cri`], which the replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remedy_fuzz::cri(data));
