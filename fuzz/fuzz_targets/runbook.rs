//! libFuzzer entry point for the `runbook` target; the target itself is
//! [`remedy_fuzz::runbook`], which the replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remedy_fuzz::runbook(data));
