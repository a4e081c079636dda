// jemalloc instead of glibc's malloc, for memory: each report interval frees and
// reallocates many small blocks next to long-lived ones (window slots repacked at their
// exact size, the store's keys), and glibc kept that free space resident. With 10,000
// targets at 1 probe/s (bench section 2, run side by side on the same machine) the RSS
// after 5 min was 58 MiB with glibc (56-58 with arena_max=1 or a fixed mmap threshold)
// and 48 MiB with jemalloc; mimalloc 2.x and 3.x as crates did no better than glibc.
// CPU per probe (bench section 1) went from 11.9 to 12.8 us: README, "Performance".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    pathpulse_agent::cli::main()
}
