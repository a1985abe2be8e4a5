//! libFuzzer entry point for the `alertmanager` target; the target itself is
//! [`remedy_fuzz::alertmanager`], which the replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remedy_fuzz::alertmanager(data));
