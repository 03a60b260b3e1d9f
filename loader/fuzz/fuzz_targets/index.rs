#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgloader_fuzz::index(data));
