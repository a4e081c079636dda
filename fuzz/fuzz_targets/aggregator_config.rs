//! The aggregator's configuration loader: any TOML text is either a configuration or a
//! list of errors naming their keys; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pathpulse_aggregator::config::{AggregatorConfig, RunArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = AggregatorConfig::resolve_text(&RunArgs::default(), Some(text)) {
        assert!(!e.0.is_empty());
        assert!(e.0.iter().all(|e| !e.key.is_empty() && !e.reason.is_empty()));
    }
});
