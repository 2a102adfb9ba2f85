//! The `gantry` command line. Daemon verbs (`init`, `join`, `run`) start a
//! gateway in the foreground; every other verb is a client of the Admin API
//! at `--server`, exactly like any script would be.

pub mod args;
pub mod check;
pub mod client;
pub mod config_file;
pub mod daemon;
pub mod dev;
mod image_pull;
pub mod output;
pub mod progress;
pub mod systemd;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

pub use args::{Cli, Verb};

/// Parses the command line and runs the verb.
pub fn main() -> ExitCode {
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match &cli.verb {
        Verb::FenceGuard { data_dir } => {
            // No async runtime, no logging setup: it must stay small.
            return crate::agent::guard::main(data_dir);
        }
        Verb::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "gantry",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Verb::Man { dir } => return man_pages(dir),
        Verb::Convert { file } => return convert(file),
        _ => {}
    }
    init_tracing(&cli);
    // At least 4 workers, also on a 2-core gateway: a long poll (the node
    // agent reconciling hundreds of instances, the desired set recomputed
    // over a large state) holds its worker, and with one worker per core
    // two of them left Raft unpolled for seconds, so a follower stood for
    // election under load. Spare workers cost a thread stack each.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(4);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
        Verb::Completion { .. } | Verb::Man { .. } | Verb::Convert { .. } => Ok(ExitCode::SUCCESS),
        Verb::Check {
            files,
            containerd_socket,
        } => Ok(check::run(files.data_dir, containerd_socket, output).await),
        verb => client::run(&server, output, verb).await,
    }
}

/// `gantry convert -f FILE`: the gantry manifest a Compose file or
/// Kubernetes manifest becomes, on standard output; nothing is contacted.
fn convert(file: &std::path::Path) -> ExitCode {
    let converted = client::read_manifest(file).and_then(|text| {
        let specs = crate::manifest::parse(&text)?;
        Ok(crate::manifest::to_yaml(&specs)?)
    });
    match converted {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gantry man DIR`: one page for gantry and one per verb (`gantry-apply.1`).
fn man_pages(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => {
            println!("man pages written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write man pages to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
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
