//! Workflow file loading: see `baton_fuzz::load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_fuzz::load::workflow(data));
