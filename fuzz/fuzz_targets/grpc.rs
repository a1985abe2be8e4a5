//! libFuzzer entry point for the `grpc` target; the target itself is
//! [`remedy_fuzz::grpc`], which the replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remedy_fuzz::grpc(data));
