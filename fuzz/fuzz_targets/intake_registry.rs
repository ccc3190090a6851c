//! Webhook intake of a `registry` source: see `baton_fuzz::intake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton_fuzz::intake::run(baton_fuzz::intake::Kind::Registry, data);
});
