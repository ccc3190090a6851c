//! Trigger matching: see `baton_fuzz::jq`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_fuzz::jq::trigger(data));
