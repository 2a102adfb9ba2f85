//! `state_machine`: see `gantry_fuzz::state_machine` for what it feeds and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gantry_fuzz::state_machine(data));
