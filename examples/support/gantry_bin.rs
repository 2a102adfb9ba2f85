//! Finding the `gantry` binary a benchmark runs as child processes (so
//! their memory and CPU are their own): the one of the same build, next
//! to the example's directory in the target dir, or `BENCH_GANTRY_BIN`.
//! Examples cannot depend on a binary target, so build it first.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

pub fn gantry_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_GANTRY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("gantry"))
        .ok_or_else(|| anyhow!("no directory above {}", exe.display()))?;
    if !binary.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release --bin gantry), or set BENCH_GANTRY_BIN",
            binary.display()
        );
    }
    Ok(binary)
}
