//! `cluster_payloads`: see `gantry_fuzz::cluster_payloads` for what it feeds and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gantry_fuzz::cluster_payloads(data));
