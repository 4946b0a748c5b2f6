//! `earshot-bench`: benchmarks for the earshot server, as programs that print
//! figures (not timed tests).
//!
//! Module map:
//!
//! - [`idle`]: `earshot-bench idle`, memory per idle signalling WebSocket.
//!   Starts the real `earshot` binary, fans the client sockets out over
//!   worker processes, reads the server's memory from `/proc`.
//! - [`worker`]: the hidden `idle-worker` subcommand the bench re-executes
//!   itself as: holds N idle WebSockets from one 127.0.0.x source address.
//! - [`procmem`]: reading a process's memory from `/proc/PID/status` and
//!   `/proc/PID/smaps_rollup`.
//!
//! Everything only ever connects to 127.0.0.0/8, and every wait is bounded.

mod idle;
mod procmem;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "earshot-bench", about = "Benchmarks for the earshot server", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Server memory per idle signalling WebSocket (after hello/welcome).
    Idle(IdleArgs),
    /// One client process of `idle`: holds --count idle WebSockets.
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    connections: Vec<usize>,
    /// Runs per count, each with a fresh server; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The earshot binary [default: `earshot` next to this executable].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Print a JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Most sockets one worker process holds (a process may open 20,000
    /// files here).
    #[arg(long, default_value_t = 8000)]
    per_worker: usize,
    /// Seconds to let the connections sit idle before measuring.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds one run may take in total before it is abandoned.
    #[arg(long, default_value_t = 300.0)]
    deadline: f64,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// ws://127.0.0.1:PORT/ws
    #[arg(long)]
    url: String,
    #[arg(long)]
    count: usize,
    /// Source address for every socket, in 127.0.0.0/8.
    #[arg(long)]
    source: std::net::Ipv4Addr,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds one connection (TCP, upgrade, hello, welcome) may take.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("--{name} must be a number of seconds >= 0"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle(args) => {
            let server = match args.server {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("earshot"),
            };
            let config = idle::Config {
                connections: args.connections,
                runs: args.runs,
                server,
                per_worker: args.per_worker,
                settle: seconds("settle", args.settle)?,
                deadline: seconds("deadline", args.deadline)?,
            };
            config.validate()?;
            let results = idle::run(&config)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&idle::to_json(&config, &results))?
                );
            } else {
                print!("{}", idle::table(&results));
            }
            Ok(())
        }
        Command::IdleWorker(args) => {
            let server = worker::parse_url(&args.url)?;
            worker::run(worker::Config {
                server: SocketAddr::V4(server),
                url: args.url,
                count: args.count,
                source: args.source,
                concurrency: args.concurrency.max(1),
                connect_timeout: seconds("connect-timeout", args.connect_timeout)?,
            })
        }
    }
}
