//! `earshot-bench`: benchmarks for the earshot server, as programs that print
//! figures (not timed tests). See BENCHMARKS.md for what each one measures.
//!
//! Module map:
//!
//! - [`idle`]: `earshot-bench idle`, memory per idle signalling WebSocket
//!   (also of PeerJS server, `--against`).
//! - [`matching`]: `earshot-bench match`, matchmaking throughput.
//! - [`relay`]: `earshot-bench relay`, signalling relay latency at fixed
//!   offered loads, and the highest load held.
//! - [`soak`]: `earshot-bench soak`, server memory over batches of clients
//!   that connect, match three times and leave.
//! - [`nodes`]: `earshot-bench nodes`, several nodes in memory, on one
//!   Redis, on a Redis Cluster and behind a delayed link: matches per
//!   second and what each costs the nodes and Redis; [`redisproc`]: those
//!   Redis servers (started by the `earshot-redisproc` crate, which the
//!   server's tests share), their CPU time, the delaying proxy.
//! - [`fleet`]: the processes of a run: the server under test and the
//!   bench's worker processes (this binary re-run with a hidden subcommand,
//!   each from its own 127.0.x.y).
//! - [`worker`], [`load`]: the worker side (`idle-worker`; `match-worker`,
//!   `relay-worker` and `soak-worker`, whose users are tasks started by
//!   `load::start_users`); [`client`]: one client socket of either server.
//! - [`peerjs`]: installing and starting PeerJS server for comparison.
//! - [`hist`]: latency histograms; [`procmem`]: memory from `/proc`.
//!
//! Everything only ever connects to 127.0.0.0/8, every load is bounded in
//! time and count, and every wait is bounded.

#![forbid(unsafe_code)]

mod client;
mod fleet;
mod hist;
mod idle;
mod load;
mod matching;
mod nodes;
mod peerjs;
mod procmem;
mod redisproc;
mod relay;
mod soak;
mod worker;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Protocol;

#[derive(Debug, Parser)]
#[command(name = "earshot-bench", about = "Benchmarks for the earshot server", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Server memory per idle signalling WebSocket (after the greeting).
    Idle(IdleArgs),
    /// Matchmaking throughput: pairs per second from `search` to `matched`.
    Match(MatchArgs),
    /// Signalling relay latency (p50, p99) at fixed offered loads.
    Relay(RelayArgs),
    /// Server memory over batches of clients that connect, match three
    /// times and leave: what each connection leaves behind.
    Soak(SoakArgs),
    /// Several nodes: in memory, on one Redis, on a Redis Cluster, and
    /// behind a delayed link to Redis; matches/s and CPU per match.
    Nodes(NodesArgs),
    /// One client process of `idle`: holds --count idle WebSockets.
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
    #[command(hide = true)]
    MatchWorker(MatchWorkerArgs),
    #[command(hide = true)]
    RelayWorker(RelayWorkerArgs),
    #[command(hide = true)]
    SoakWorker(WorkerArgs),
}

/// Which servers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Against {
    Earshot,
    Peerjs,
    Both,
}

impl Against {
    fn targets(self) -> Vec<Protocol> {
        match self {
            Against::Earshot => vec![Protocol::Earshot],
            Against::Peerjs => vec![Protocol::Peerjs],
            Against::Both => vec![Protocol::Earshot, Protocol::Peerjs],
        }
    }
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Runs (or rounds) per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The earshot binary [default: `earshot` next to this executable].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Where PeerJS server is installed (npm `peer`), installing it if
    /// missing [default: `peerjs` in the target directory].
    #[arg(long)]
    peerjs_dir: Option<PathBuf>,
    /// Print a JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn servers(&self) -> anyhow::Result<fleet::Servers> {
        let exe = std::env::current_exe()?;
        let earshot = self
            .server
            .clone()
            .unwrap_or_else(|| exe.with_file_name("earshot"));
        // target/release/earshot-bench -> target/peerjs
        let peerjs_dir = match &self.peerjs_dir {
            Some(dir) => dir.clone(),
            None => exe
                .parent()
                .and_then(|p| p.parent())
                .map(|t| t.join("peerjs"))
                .ok_or_else(|| anyhow::anyhow!("pass --peerjs-dir"))?,
        };
        Ok(fleet::Servers {
            earshot,
            peerjs_dir,
        })
    }

    fn print(&self, json: serde_json::Value, table: String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            print!("{table}");
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    connections: Vec<usize>,
    #[command(flatten)]
    common: Common,
    /// The server(s) to measure.
    #[arg(long, value_enum, default_value = "earshot")]
    against: Against,
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
struct MatchArgs {
    /// Users waiting: each round, this many connected users search at once.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    waiting: Vec<usize>,
    /// Workloads: `off` (no interests), `on` (1-3 interest tags each).
    #[arg(long, value_delimiter = ',', default_value = "off,on", value_parser = ["off", "on"])]
    interests: Vec<String>,
    #[command(flatten)]
    common: Common,
    /// Already-running earshot servers (ws://127.x.y.z:PORT/ws), clients
    /// spread round-robin over them, instead of starting one.
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// Most users one worker process holds.
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// Seconds one round may take.
    #[arg(long, default_value_t = 30.0)]
    round_timeout: f64,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// Offered loads, messages per second in total, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rate: Vec<u32>,
    /// Then raise the load by 25 % steps until p99 reaches 10 ms (or
    /// messages are lost), to find the highest load held.
    #[arg(long)]
    find_max: bool,
    /// Matched pairs exchanging messages.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Client processes the pairs are spread over.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[command(flatten)]
    common: Common,
    /// The server(s) to measure.
    #[arg(long, value_enum, default_value = "earshot")]
    against: Against,
    /// Already-running earshot servers (ws://127.x.y.z:PORT/ws), clients
    /// spread round-robin over them, instead of starting one per run.
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Batches of clients, one after the other.
    #[arg(long, default_value_t = 14)]
    batches: usize,
    /// Clients per batch (even).
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Most clients one worker process holds.
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// Seconds to wait, once the server is idle after a batch, before
    /// reading its memory (longer than two of the server's 5 s looks at
    /// whether to give freed memory back: it waits for a look that finds
    /// the crowd gone).
    #[arg(long, default_value_t = 15.0)]
    settle: f64,
    /// Seconds one round (or connecting, or leaving, or going idle) may take.
    #[arg(long, default_value_t = 120.0)]
    round_timeout: f64,
    /// The earshot binary [default: `earshot` next to this executable].
    #[arg(long)]
    server: Option<PathBuf>,
    /// An already-running earshot server (ws://127.x.y.z:PORT/ws), for
    /// example one under a heap profiler, instead of starting one.
    #[arg(long)]
    target: Option<String>,
    /// With --target: the server's process id, to read its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Print a JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct NodesArgs {
    /// Node counts to measure on Redis, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Primaries of a Redis Cluster to measure too (0: none).
    #[arg(long, default_value_t = 3)]
    cluster: usize,
    /// Clients churning through matches.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Seconds of churn before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured, for matches and for the relay.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Pairs across nodes exchanging signals.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Relay messages per second, all pairs together.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Milliseconds each way of the delayed link to Redis (0: skip).
    #[arg(long, default_value_t = 0.5)]
    delay_ms: f64,
    /// The earshot binary [default: `earshot` next to this executable].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Print a JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    #[arg(long)]
    count: usize,
}

#[derive(Debug, clap::Args)]
struct FanoutArgs {
    /// Server URLs, comma-separated; clients go round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// Global index of this worker's first client.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Source address for every socket, in 127.0.0.0/8.
    #[arg(long)]
    source: Ipv4Addr,
    #[arg(long, value_enum, default_value = "earshot")]
    protocol: Protocol,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds one connection (TCP, upgrade, greeting) may take.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

impl FanoutArgs {
    fn fanout(self) -> anyhow::Result<load::Fanout> {
        for url in &self.urls {
            client::parse_url(url)?;
        }
        Ok(load::Fanout {
            protocol: self.protocol,
            urls: self.urls,
            first: self.first,
            source: self.source,
            concurrency: self.concurrency,
            connect_timeout: seconds("connect-timeout", self.connect_timeout)?,
        })
    }
}

#[derive(Debug, clap::Args)]
struct MatchWorkerArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    interests: bool,
}

#[derive(Debug, clap::Args)]
struct RelayWorkerArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    #[arg(long)]
    pairs: usize,
    /// This worker's share of the load, messages per second.
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    warmup: f64,
    #[arg(long)]
    duration: f64,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("--{name} must be a number of seconds >= 0"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle(args) => {
            let config = idle::Config {
                connections: args.connections,
                runs: args.common.runs,
                servers: args.common.servers()?,
                targets: args.against.targets(),
                per_worker: args.per_worker,
                settle: seconds("settle", args.settle)?,
                deadline: seconds("deadline", args.deadline)?,
            };
            config.validate()?;
            let results = idle::run(&config)?;
            args.common
                .print(idle::to_json(&config, &results), idle::table(&results))
        }
        Command::Match(args) => {
            let config = matching::Config {
                waiting: args.waiting,
                interests: args.interests.iter().map(|i| i == "on").collect(),
                runs: args.common.runs,
                servers: args.common.servers()?,
                targets: args.target,
                per_worker: args.per_worker,
                round_timeout: seconds("round-timeout", args.round_timeout)?,
            };
            config.validate()?;
            let results = matching::run(&config)?;
            args.common
                .print(matching::to_json(&results), matching::table(&results))
        }
        Command::Relay(args) => {
            let config = relay::Config {
                rates: args.rate,
                find_max: args.find_max,
                pairs: args.pairs,
                workers: args.workers,
                warmup: seconds("warmup", args.warmup)?,
                duration: seconds("duration", args.duration)?,
                runs: args.common.runs,
                against: args.against.targets(),
                servers: args.common.servers()?,
                targets: args.target,
            };
            config.validate()?;
            let results = relay::run(&config)?;
            args.common.print(
                relay::to_json(&config, &results),
                relay::table(&config, &results),
            )
        }
        Command::Soak(args) => {
            let exe = std::env::current_exe()?;
            let config = soak::Config {
                batches: args.batches,
                clients: args.clients,
                per_worker: args.per_worker,
                settle: seconds("settle", args.settle)?,
                round_timeout: seconds("round-timeout", args.round_timeout)?,
                servers: fleet::Servers {
                    earshot: args
                        .server
                        .clone()
                        .unwrap_or_else(|| exe.with_file_name("earshot")),
                    peerjs_dir: PathBuf::new(),
                },
                target: args.target,
                pid: args.pid,
            };
            config.validate()?;
            let results = soak::run(&config)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&soak::to_json(&results))?
                );
            } else {
                print!("{}", soak::table(&results));
            }
            Ok(())
        }
        Command::Nodes(args) => {
            let server = match args.server {
                Some(s) => s,
                None => std::env::current_exe()?.with_file_name("earshot"),
            };
            let config = nodes::Config {
                nodes: args.nodes,
                cluster: args.cluster,
                clients: args.clients,
                warmup: seconds("warmup", args.warmup)?,
                window: seconds("seconds", args.seconds)?,
                pairs: args.pairs,
                rate: args.rate,
                delay: seconds("delay-ms", args.delay_ms / 1000.0)?,
                server,
            };
            config.validate()?;
            let results = nodes::run(&config)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&nodes::to_json(&config, &results))?
                );
            } else {
                print!("{}", nodes::table(&results));
            }
            Ok(())
        }
        Command::IdleWorker(args) => {
            let fanout = args.fanout.fanout()?;
            worker::run(worker::Config {
                protocol: fanout.protocol,
                url: fanout.urls[0].clone(),
                count: args.count,
                source: fanout.source,
                concurrency: fanout.concurrency.max(1),
                connect_timeout: fanout.connect_timeout,
            })
        }
        Command::MatchWorker(args) => matching::worker(matching::WorkerConfig {
            fanout: args.fanout.fanout()?,
            count: args.count,
            interests: args.interests,
        }),
        Command::SoakWorker(args) => soak::worker(soak::WorkerConfig {
            fanout: args.fanout.fanout()?,
            count: args.count,
        }),
        Command::RelayWorker(args) => relay::worker(relay::WorkerConfig {
            fanout: args.fanout.fanout()?,
            pairs: args.pairs,
            rate: args.rate,
            warmup: seconds("warmup", args.warmup)?,
            duration: seconds("duration", args.duration)?,
        }),
    }
}
