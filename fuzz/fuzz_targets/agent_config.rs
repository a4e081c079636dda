//! The agent's configuration loader: any TOML text is either a configuration or a list
//! of errors naming their keys; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pathpulse_agent::config::{AgentConfig, RunArgs, parse_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The one key that names a file to read: not the loader's parsing, and a fuzzer could
    // name /dev/zero.
    if text.contains("key_file") {
        return;
    }
    match parse_file(text, Path::new("fuzz.toml")) {
        Ok(file) => {
            let args = RunArgs::default();
            if let Err(e) = AgentConfig::resolve_with(&args, file) {
                assert!(!e.0.is_empty());
                assert!(
                    e.0.iter()
                        .all(|e| !e.key.is_empty() && !e.reason.is_empty())
                );
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
