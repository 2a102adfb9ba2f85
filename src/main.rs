//! The `gantry` binary: every verb lives in `gantry::cli`.

fn main() -> std::process::ExitCode {
    gantry::cli::main()
}
