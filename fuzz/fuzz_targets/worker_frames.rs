#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_v8::fuzz::worker_frames(data));
