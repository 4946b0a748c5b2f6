//! `earshot-bench match`: matchmaking throughput.
//!
//! For each number N of users waiting: N clients connect and complete
//! `hello`/`welcome` (spread over worker processes, each from its own
//! 127.0.x.y), then in each round all N send `search` in one burst, with no
//! interests or with 1 to 3 interest tags each, and wait for `matched`.
//! Throughput is pairs (N / 2) over the time from the first `search` sent to
//! the last `matched` received (wall clock, shared by the processes); with
//! interests, also over the time until 99 % of the users had their `matched`
//! (the rest may wait out the interest wait, see BENCHMARKS.md). Between
//! rounds every client sends `end` and waits for `idle`. The first round
//! warms up and is not counted; the table shows the median round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Protocol, Ws, msg_type, wall_ns};
use crate::fleet::{Servers, SourceAddrs, Worker, collect, spawn_crowd, wait_ready};
use crate::load::{Done, Fanout, answers, block_on, start_users, stdin_lines};

/// Flags the server is started with for load: each worker is one client
/// address with thousands of users, which the per-client limits exist to stop.
pub const LOAD_FLAGS: &[&str] = &["--bench-no-rate-limits"];

/// The interest vocabulary, most popular first (popularity ~ 1 / rank).
const VOCABULARY: [&str; 50] = [
    "music",
    "games",
    "movies",
    "anime",
    "sports",
    "books",
    "art",
    "travel",
    "food",
    "tech",
    "memes",
    "football",
    "cats",
    "dogs",
    "science",
    "history",
    "fitness",
    "coding",
    "politics",
    "fashion",
    "photography",
    "cooking",
    "languages",
    "philosophy",
    "space",
    "chess",
    "guitar",
    "hiking",
    "poetry",
    "kpop",
    "rock",
    "jazz",
    "hip hop",
    "basketball",
    "tennis",
    "cars",
    "crypto",
    "gardening",
    "writing",
    "drawing",
    "comics",
    "theatre",
    "dance",
    "yoga",
    "math",
    "physics",
    "cycling",
    "fishing",
    "camping",
    "board games",
];

/// Flags of `earshot-bench match`, checked.
pub struct Config {
    pub waiting: Vec<usize>,
    /// Workloads: without interests (`false`) and/or with them (`true`).
    pub interests: Vec<bool>,
    pub runs: usize,
    pub servers: Servers,
    /// Already-running servers to use instead of starting one.
    pub targets: Vec<String>,
    pub per_worker: usize,
    pub round_timeout: Duration,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.waiting.is_empty() && self.waiting.iter().all(|&n| n >= 2 && n % 2 == 0),
            "--waiting needs even counts of at least 2"
        );
        ensure!(self.runs >= 1, "--runs must be at least 1");
        ensure!(
            !self.interests.is_empty(),
            "--interests needs off and/or on"
        );
        ensure!(
            (1..=15_000).contains(&self.per_worker),
            "--per-worker must be 1 to 15000 (a process may open 20,000 files)"
        );
        for url in &self.targets {
            crate::client::parse_url(url)?;
        }
        if self.targets.is_empty() {
            self.servers.validate(&[Protocol::Earshot])?;
        }
        Ok(())
    }
}

/// One counted round.
#[derive(Debug, Clone)]
pub struct Round {
    /// From the first `search` sent to the last `matched` received.
    pub all: Duration,
    /// From the first `search` to the `matched` of 99 % of the users.
    pub p99: Duration,
    /// Server CPU time (all threads) over the round, when we started it.
    pub server_cpu: Option<Duration>,
    /// CPU time of the client workers over the round.
    pub client_cpu: Duration,
}

impl Round {
    fn from_times(first_sent: u64, mut matched: Vec<u64>) -> Round {
        matched.sort_unstable();
        let at = |rank: usize| Duration::from_nanos(matched[rank].saturating_sub(first_sent));
        let p99_rank = (matched.len() * 99).div_ceil(100).max(1) - 1;
        Round {
            all: at(matched.len() - 1),
            p99: at(p99_rank),
            server_cpu: None,
            client_cpu: Duration::ZERO,
        }
    }
}

pub struct Summary {
    pub waiting: usize,
    pub interests: bool,
    pub rounds: Vec<Round>,
}

fn rate(pairs: f64, time: Duration) -> f64 {
    pairs / time.as_secs_f64().max(1e-9)
}

impl Summary {
    /// Pairs per second to the last `matched`, median round.
    pub fn pairs_per_sec(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| rate(self.waiting as f64 / 2.0, r.all)),
        )
    }

    /// Pairs per second to 99 % matched, median round.
    pub fn pairs_per_sec_p99(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| rate(self.waiting as f64 * 0.99 / 2.0, r.p99)),
        )
    }

    /// Server CPU time per pair, median round, in µs.
    pub fn cpu_per_pair(&self) -> Option<f64> {
        let values: Option<Vec<f64>> = self
            .rounds
            .iter()
            .map(|r| Some(self.per_pair(r.server_cpu?)))
            .collect();
        Some(median(values?.into_iter()))
    }

    /// The client workers' CPU time per pair, median round, in µs.
    pub fn client_cpu_per_pair(&self) -> f64 {
        median(self.rounds.iter().map(|r| self.per_pair(r.client_cpu)))
    }

    fn per_pair(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / (self.waiting as f64 / 2.0)
    }

    fn median_time(&self, f: impl Fn(&Round) -> Duration) -> Duration {
        Duration::from_secs_f64(median(self.rounds.iter().map(|r| f(r).as_secs_f64())))
    }
}

/// The median (lower middle for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    assert!(!v.is_empty(), "a median of nothing");
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

pub fn run(config: &Config) -> anyhow::Result<Vec<Summary>> {
    let mut sources = SourceAddrs::default();
    let mut out = Vec::new();
    for &interests in &config.interests {
        for &n in &config.waiting {
            let what = format!(
                "{n} waiting, {}",
                if interests {
                    "interests"
                } else {
                    "no interests"
                }
            );
            let rounds = measure(config, n, interests, &mut sources).context(what)?;
            out.push(Summary {
                waiting: n,
                interests,
                rounds,
            });
        }
    }
    Ok(out)
}

fn measure(
    config: &Config,
    n: usize,
    interests: bool,
    sources: &mut SourceAddrs,
) -> anyhow::Result<Vec<Round>> {
    let server = match config.targets.is_empty() {
        true => Some(config.servers.start(Protocol::Earshot, LOAD_FLAGS)?),
        false => None,
    };
    let urls = match &server {
        Some(s) => s.url.clone(),
        None => config.targets.join(","),
    };
    let (events_tx, events) = crate::fleet::events();
    let extra: &[&str] = if interests { &["--interests"] } else { &[] };
    let mut workers = spawn_crowd(
        "match-worker",
        &urls,
        n,
        config.per_worker,
        0,
        sources,
        extra,
        &events_tx,
    )?;
    let connect_by = Instant::now() + Duration::from_secs(120);
    wait_ready(&events, &workers.iter().collect::<Vec<_>>(), connect_by)?;

    let mut rounds = Vec::new();
    let cpu = || {
        server
            .as_ref()
            .map(|s| crate::procmem::cpu_ns(s.pid()))
            .transpose()
    };
    let client_cpu = |workers: &[Worker]| -> anyhow::Result<u64> {
        workers
            .iter()
            .map(|w| crate::procmem::cpu_ns(w.pid()))
            .sum()
    };
    for round in 0..=config.runs {
        let cpu_before = cpu()?;
        let clients_before = client_cpu(&workers)?;
        for w in &mut workers {
            w.tell("go")?;
        }
        let until = Instant::now() + config.round_timeout;
        let lines = collect(&events, &workers, "matched", until)?;
        let mut first_sent = u64::MAX;
        let mut times = Vec::with_capacity(n);
        for line in lines.values() {
            let (first, matched) = parse_matched(line)?;
            first_sent = first_sent.min(first);
            times.extend(matched);
        }
        ensure!(times.len() == n, "{} of {n} users matched", times.len());
        let mut r = Round::from_times(first_sent, times);
        if let (Some(before), Some(after)) = (cpu_before, cpu()?) {
            r.server_cpu = Some(Duration::from_nanos(after.saturating_sub(before)));
        }
        r.client_cpu = Duration::from_nanos(client_cpu(&workers)?.saturating_sub(clients_before));
        eprintln!(
            "match: {n} waiting{}, round {round}{}: all matched in {:.1} ms ({:.0} pairs/s), 99 % in {:.1} ms, CPU: server {:.1} ms, clients {:.1} ms",
            if interests { " with interests" } else { "" },
            if round == 0 { " (warm-up)" } else { "" },
            r.all.as_secs_f64() * 1e3,
            rate(n as f64 / 2.0, r.all),
            r.p99.as_secs_f64() * 1e3,
            r.server_cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1e3),
            r.client_cpu.as_secs_f64() * 1e3,
        );
        if round > 0 {
            rounds.push(r);
        }
        for w in &mut workers {
            w.tell("reset")?;
        }
        collect(
            &events,
            &workers,
            "reset",
            Instant::now() + config.round_timeout,
        )?;
    }
    for w in &mut workers {
        w.stop(Duration::from_secs(5));
    }
    drop(server);
    Ok(rounds)
}

/// `FIRST_SENT T1 T2 ...` (wall-clock ns) from a worker.
fn parse_matched(line: &str) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut words = line.split_ascii_whitespace().map(str::parse::<u64>);
    let first = words.next().context("empty `matched` line")??;
    let times = words.collect::<Result<Vec<_>, _>>()?;
    Ok((first, times))
}

pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| users waiting | interests | rounds | all matched in | pairs/s (all) | 99 % matched in | pairs/s (99 %) | server CPU µs/pair | client CPU µs/pair |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:.0} | {:.1} ms | {:.0} | {} | {:.1} |\n",
            s.waiting,
            if s.interests { "1-3 of 50" } else { "none" },
            s.rounds.len(),
            s.median_time(|r| r.all).as_secs_f64() * 1e3,
            s.pairs_per_sec(),
            s.median_time(|r| r.p99).as_secs_f64() * 1e3,
            s.pairs_per_sec_p99(),
            s.cpu_per_pair().map_or("-".into(), |c| format!("{c:.1}")),
            s.client_cpu_per_pair(),
        ));
    }
    out
}

pub fn to_json(summaries: &[Summary]) -> serde_json::Value {
    serde_json::json!({
        "benchmark": "match",
        "results": summaries.iter().map(|s| serde_json::json!({
            "waiting": s.waiting,
            "interests": s.interests,
            "pairs_per_sec": s.pairs_per_sec(),
            "pairs_per_sec_99": s.pairs_per_sec_p99(),
            "server_cpu_us_per_pair": s.cpu_per_pair(),
            "client_cpu_us_per_pair": s.client_cpu_per_pair(),
            "rounds": s.rounds.iter().map(|r| serde_json::json!({
                "all_matched_secs": r.all.as_secs_f64(),
                "p99_matched_secs": r.p99.as_secs_f64(),
                "server_cpu_secs": r.server_cpu.map(|c| c.as_secs_f64()),
                "client_cpu_secs": r.client_cpu.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A small deterministic generator (splitmix64): the same users every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// User `global`'s interests: 1 to 3 distinct tags, each drawn with
/// probability proportional to 1 / rank (Zipf, s = 1).
pub fn interests_of(global: usize) -> Vec<&'static str> {
    let mut rng = Rng::new(global as u64);
    let weights: Vec<f64> = (1..=VOCABULARY.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let k = 1 + (rng.next() % 3) as usize;
    let mut tags = Vec::with_capacity(k);
    while tags.len() < k {
        let mut x = rng.unit() * total;
        let pick = weights
            .iter()
            .position(|w| {
                x -= w;
                x < 0.0
            })
            .unwrap_or(VOCABULARY.len() - 1);
        if !tags.contains(&VOCABULARY[pick]) {
            tags.push(VOCABULARY[pick]);
        }
    }
    tags
}

/// Flags of the hidden `match-worker`.
pub struct WorkerConfig {
    pub fanout: Fanout,
    pub count: usize,
    pub interests: bool,
}

pub fn worker(config: WorkerConfig) -> anyhow::Result<()> {
    block_on(serve(config))
}

/// What the parent asks for; the number counts commands, so each is new.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Wait,
    Go(u32),
    Reset(u32),
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let fanout = Arc::new(config.fanout);
    let (first, interests) = (fanout.first, config.interests);
    let (step_tx, mut done) =
        start_users(&fanout, config.count, Step::Wait, |i, ws, steps, done| {
            let search = search_message(interests.then(|| interests_of(first + i)));
            user(ws, search, steps, done)
        })
        .await?;

    let mut commands = stdin_lines();
    let mut number = 0;
    while let Some(command) = commands.recv().await {
        number += 1;
        let step = match command.as_str() {
            "go" => Step::Go(number),
            "reset" => Step::Reset(number),
            other => bail!("unknown command `{other}`"),
        };
        step_tx.send_replace(step);
        let answers = answers(&mut done, config.count).await?;
        let first_sent = answers
            .iter()
            .map(|&(sent, _)| sent)
            .min()
            .unwrap_or(u64::MAX);
        let times: Vec<u64> = answers.iter().map(|&(_, matched)| matched).collect();
        let line = match step {
            Step::Go(_) => {
                let times: Vec<String> = times.iter().map(u64::to_string).collect();
                format!("matched {first_sent} {}", times.join(" "))
            }
            _ => format!("reset {}", config.count),
        };
        crate::worker::say(&line);
    }
    Ok(())
}

fn search_message(interests: Option<Vec<&str>>) -> String {
    match interests {
        None => r#"{"type":"search"}"#.to_string(),
        Some(tags) => serde_json::json!({ "type": "search", "interests": tags }).to_string(),
    }
}

/// One user: on each `Go`, searches and reports (sent, matched) times; on
/// each `Reset`, ends and reports once idle.
async fn user(mut ws: Ws, search: String, mut step: watch::Receiver<Step>, done: Done<(u64, u64)>) {
    loop {
        if step.changed().await.is_err() {
            return;
        }
        let current = *step.borrow_and_update();
        let result = match current {
            Step::Wait => continue,
            Step::Go(_) => {
                let sent = wall_ns();
                match exchange(&mut ws, &search, "matched").await {
                    Ok(()) => Ok((sent, wall_ns())),
                    Err(e) => Err(e),
                }
            }
            Step::Reset(_) => exchange(&mut ws, r#"{"type":"end"}"#, "idle")
                .await
                .map(|()| (0, 0)),
        };
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Sends `request`, then reads until a message of type `until`.
async fn exchange(ws: &mut Ws, request: &str, until: &str) -> Result<(), String> {
    ws.send(Message::text(request))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match msg_type(text.as_str()) {
                Some(t) if t == until => return Ok(()),
                Some("error") => return Err(format!("server error: {}", text.as_str())),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn round_times_count_from_the_first_search() {
        let r = Round::from_times(1_000, (1..=100).map(|i| 1_000 + i * 1_000_000).collect());
        assert_eq!(r.all, Duration::from_millis(100));
        assert_eq!(r.p99, Duration::from_millis(99));
        let one = Round::from_times(5, vec![10, 7]);
        assert_eq!(
            (one.all, one.p99),
            (Duration::from_nanos(5), Duration::from_nanos(5))
        );
    }

    #[test]
    fn medians_take_the_lower_middle() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.0);
    }

    #[test]
    fn interests_are_one_to_three_distinct_valid_skewed_tags() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for user in 0..10_000 {
            let tags = interests_of(user);
            assert!((1..=3).contains(&tags.len()));
            let mut dedup = tags.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(dedup.len(), tags.len());
            assert_eq!(tags, interests_of(user), "deterministic");
            for t in tags {
                assert!(
                    t.chars()
                        .all(|c| c.is_alphanumeric() || c == ' ' || c == '-')
                );
                *counts.entry(t).or_default() += 1;
            }
        }
        assert!(counts["music"] > 5 * counts.get("board games").copied().unwrap_or(1));
        assert!(counts.len() >= 45, "most of the vocabulary is used");
    }

    #[test]
    fn search_messages_are_the_protocols() {
        assert_eq!(search_message(None), r#"{"type":"search"}"#);
        assert_eq!(
            search_message(Some(vec!["hip hop", "music"])),
            r#"{"interests":["hip hop","music"],"type":"search"}"#
        );
        assert_eq!(parse_matched("5 7 9").unwrap(), (5, vec![7, 9]));
        assert!(parse_matched("").is_err());
    }
}
