//! `fastim`: the one binary of FastIM.
//!
//! Servers: `standalone` (gateway + logic + ids + embedded store in one process).
//! Clients: `register`, `send`, `group create`, `recv`, `chat`.
//! Load: `bench chat` and `bench idle`. Kubernetes: `operator crd`, `operator run`.

mod bench;
mod cli;
mod cluster;
mod commands;
mod config;
mod http;
mod operator;
mod standalone;

use clap::Parser;

fn main() {
    if let Err(e) = config::load_config_file() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let cli = cli::Cli::parse();
    let default_level = if cli.command.is_server() { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FASTIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    // The blocking pool runs password hashing, which is CPU-bound: more threads than
    // a few per core only add stacks and malloc arenas (memory per connection).
    let blocking = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(cli.command.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Don't wait for background tasks (reconnect loops) of client commands.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
