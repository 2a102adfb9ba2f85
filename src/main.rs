//! The `gantry` binary: every verb lives in `gantry::cli`.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    gantry::cli::main()
}

/// glibc gives threads that contend for the heap arenas of their own (up
/// to eight per core); with tokio's workers and RocksDB's threads, freed
/// memory stays scattered over them. Under 64 writing clients a gateway
/// of three peaked at 154 MiB with glibc's default and at 92 MiB with two
/// arenas (`bench_writes`); one gateway with ten containers (`bench_footprint`)
/// holds 4.4 MiB of heap idle with one arena against 9.1 with two, and
/// peaks at 68 against 79 MiB under load, at the same writes per second:
/// the per-thread caches take most of the contention a single arena would
/// bring. MALLOC_ARENA_MAX in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of the allocator, and this runs
    // first in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
