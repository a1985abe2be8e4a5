//! libFuzzer entry point for the `template` target; the target itself is
//! [`remedy_fuzz::template`], which the replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remedy_fuzz::template(data));
