// jemalloc instead of glibc's malloc. Ingest of 1,000 simulated agents × 100 paths at
// 1 report/s (bench section 4, back to back on one machine, 60 s each, 2026-12-04):
// glibc 86,843–87,915 path-reports/s applied on 0.99–1.01 cores with 6–19 simulated
// agents dropped as too slow, 8.1–8.5 KiB RSS per path; jemalloc with the settings below
// 105,665/s on 0.75 cores, none dropped, 7.99 KiB per path (104,558/s, 8.25 KiB with its
// defaults). Two arenas (the ingest tasks and the alert engine's thread), freed pages
// returned after 1 s by a background thread.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read before `main` (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): NUL-terminated, as C's `const char *malloc_conf`.
const JEMALLOC_CONF: &[u8] =
    b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

// tikv-jemalloc-sys links jemalloc with the `_rjem_` prefix; jemalloc declares this
// pointer weak, so this definition is the one it reads. `export_name` is an unsafe
// attribute (a symbol defined twice is undefined behaviour): nothing else defines it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&u8> = Some(&JEMALLOC_CONF[0]);

fn main() -> std::process::ExitCode {
    pathpulse_aggregator::cli::main()
}
