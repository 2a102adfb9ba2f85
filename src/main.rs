//! The `gantry` binary: every verb lives in `gantry::cli`.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    gantry::cli::main()
}

/// glibc gives threads that contend for the heap arenas of their own (up
/// to eight per core); with tokio's workers and RocksDB's threads, freed
/// memory stays scattered over them. Under 64 writing clients a gateway
/// peaked at 154 MiB with glibc's default and at 92 MiB with two arenas,
/// at the same throughput (`bench_writes`). MALLOC_ARENA_MAX in the
/// environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of the allocator, and this runs
    // first in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
