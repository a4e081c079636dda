//! Target SPECs with options as `--target` takes them (`SPEC,key=value,...`): any text is
//! a target or errors naming their keys; never a panic. `family=both` expands names only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pathpulse_agent::options::{expand, parse_flag};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_flag(text) {
        Ok(t) => {
            let n = expand(t).len();
            assert!(n == 1 || n == 2);
        }
        Err(e) => assert!(!e.is_empty() && e.iter().all(|(_, reason)| !reason.is_empty())),
    }
});
