// jemalloc instead of glibc's malloc, for ingest CPU. 1,000 simulated agents × 100 paths
// at 1 report/s (bench section 4, 2026-12-04, same machine and load): glibc applied
// 86,843–87,915 path-reports/s on 0.99–1.01 cores, and 6–19 simulated agents were dropped
// for hellos that waited over 10 s; jemalloc with the settings below 105,665/s on 0.75
// cores (100,647/s on 0.82 cores over 7 min), none dropped. It costs memory once the
// windows are full: 9.16 KiB of RSS a path after 7 min, still growing slowly, where glibc
// levelled off at 8.64 (README, "Where the aggregator's memory goes"). Two arenas (the
// ingest tasks and the alert engine's thread), freed pages returned after 1 s by a
// background thread.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(not(feature = "system-allocator"))]
/// jemalloc's settings, read before `main` (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): NUL-terminated, as C's `const char *malloc_conf`.
const JEMALLOC_CONF: &[u8] =
    b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

// tikv-jemalloc-sys links jemalloc with the `_rjem_` prefix; jemalloc declares this
// pointer weak, so this definition is the one it reads. `export_name` is an unsafe
// attribute (a symbol defined twice is undefined behaviour): nothing else defines it.
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&u8> = Some(&JEMALLOC_CONF[0]);

fn main() -> std::process::ExitCode {
    pathpulse_aggregator::cli::main()
}
