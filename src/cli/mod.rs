//! The `gantry` command line. Daemon verbs (`init`, `join`, `run`) start a
//! gateway in the foreground; every other verb is a client of the Admin API
//! at `--server`, exactly like any script would be.

pub mod args;
pub mod client;
pub mod daemon;
pub mod dev;
pub mod output;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

pub use args::{Cli, Verb};

/// Parses the command line and runs the verb.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Verb::FenceGuard { data_dir } = &cli.verb {
        // No async runtime, no logging setup: it must stay small.
        return crate::agent::guard::main(data_dir);
    }
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let server = cli.server.clone();
    let output = cli.output;
    match cli.verb {
        Verb::Init(args) => daemon::init(args).await,
        Verb::Join(args) => daemon::join(args).await,
        Verb::Run(args) => daemon::run(args).await,
        Verb::Dev(args) => dev::run(args).await,
        Verb::Hub { verb } => crate::cloud::hub::cli::run(verb, output).await,
        Verb::FenceGuard { data_dir } => Ok(crate::agent::guard::main(&data_dir)),
        verb => client::run(&server, output, verb).await,
    }
}

fn init_tracing(cli: &Cli) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match &cli.verb {
        // `gantry dev` prints its own story; the gateways' logs would drown it.
        Verb::Dev(_) => "warn,openraft=error",
        verb if verb.is_daemon() => "info,openraft=warn",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cli.log_format {
        args::LogFormat::Json => builder.json().try_init(),
        args::LogFormat::Text => builder.try_init(),
    };
}
