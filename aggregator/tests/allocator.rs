//! The aggregator binary runs on jemalloc with its own settings (`src/main.rs`): asked to
//! print its statistics, jemalloc reports the options the binary compiled in.

use std::process::Command;

#[test]
fn the_binary_runs_on_jemalloc_with_its_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_pathpulse-aggregator"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run pathpulse-aggregator");
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    for want in [
        "opt.narenas: 2",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
        "opt.background_thread: true",
    ] {
        assert!(
            stats.contains(want),
            "{want:?} not in jemalloc's statistics:\n{stats}"
        );
    }
}
