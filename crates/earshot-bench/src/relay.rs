//! `earshot-bench relay`: signalling relay latency at a fixed offered load.
//!
//! A run starts a fresh server (or uses `--target` URLs), then worker
//! processes each open their share of `--pairs` pairs of clients. On
//! Earshot each pair is matched through the real queue (both search with an
//! interest tag only they have, so the pair is known in advance); on PeerJS
//! each client knows its partner's id. Then every client sends ICE-candidate
//! `signal` messages (PeerJS: `CANDIDATE`) to its partner on a fixed
//! schedule, so that all clients together offer `--rate` messages per
//! second, each carrying its send time. The partner, in the same worker
//! process (one clock), records send-to-receive latency in a histogram.
//! The first `--warmup` seconds are not measured; the next `--duration`
//! seconds are. A load is *held* when p99 stays under 10 ms and at least
//! 95 % of the offered messages arrive in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{MissedTickBehavior, interval_at, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Protocol, Ws, msg_type};
use crate::fleet::{Servers, SourceAddrs, Worker, collect, wait_ready};
use crate::hist::Histogram;
use crate::load::{Fanout, block_on, peer_id, stdin_lines};
use crate::matching::{LOAD_FLAGS, median};

/// The p99 a held load stays under.
pub const HELD_P99_MICROS: f64 = 10_000.0;
/// The share of offered messages a held load delivers.
const HELD_DELIVERED: f64 = 0.95;
/// How long after the last send a worker still waits for deliveries.
const GRACE: Duration = Duration::from_secs(2);
/// `--find-max` steps up by this factor, at most this many times.
const STEP: f64 = 1.25;
const MAX_STEPS: usize = 16;

/// A realistic trickled host candidate (loopback: nothing here is real).
const CANDIDATE: &str = "candidate:842163049 1 udp 2122260223 127.0.0.1 50000 typ host generation 0 ufrag EaRs network-id 1 network-cost 10";

/// Flags of `earshot-bench relay`, checked.
pub struct Config {
    pub rates: Vec<u32>,
    pub find_max: bool,
    pub pairs: usize,
    pub workers: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub runs: usize,
    pub against: Vec<Protocol>,
    pub servers: Servers,
    pub targets: Vec<String>,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.rates.is_empty() && self.rates.iter().all(|&r| r > 0),
            "--rate needs positive rates"
        );
        ensure!(self.runs >= 1, "--runs must be at least 1");
        ensure!(
            self.workers >= 1 && self.pairs >= self.workers,
            "--pairs must be at least --workers (>= 1)"
        );
        ensure!(
            self.pairs * 2 / self.workers <= 15_000,
            "at most 15,000 sockets per worker"
        );
        ensure!(!self.duration.is_zero(), "--duration must be positive");
        for url in &self.targets {
            crate::client::parse_url(url)?;
        }
        if !self.targets.is_empty() {
            ensure!(
                self.against == [Protocol::Earshot],
                "--target runs against earshot servers only"
            );
        } else {
            self.servers.validate(&self.against)?;
        }
        Ok(())
    }
}

/// One run at one rate.
#[derive(Debug, Clone)]
pub struct Run {
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub latency: Histogram,
    /// Server CPU time per message offered (warm-up included), in µs, when
    /// the bench started the server.
    pub server_cpu_us: Option<f64>,
}

/// All runs of one server at one offered rate.
pub struct Summary {
    pub target: Protocol,
    pub rate: u32,
    pub runs: Vec<Run>,
    pub duration: Duration,
}

impl Summary {
    fn quantile(&self, q: f64) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.latency.quantile(q).unwrap_or(f64::INFINITY)),
        )
    }

    /// Median over runs of p50, in µs.
    pub fn p50(&self) -> f64 {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> f64 {
        self.quantile(0.99)
    }

    /// Median delivered rate, messages per second.
    pub fn delivered(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.received as f64 / self.duration.as_secs_f64()),
        )
    }

    /// Median server CPU per message, µs.
    pub fn server_cpu_us(&self) -> Option<f64> {
        let values: Option<Vec<f64>> = self.runs.iter().map(|r| r.server_cpu_us).collect();
        Some(median(values?.into_iter()))
    }

    pub fn held(&self) -> bool {
        self.p99() < HELD_P99_MICROS
            && self.delivered() >= HELD_DELIVERED * f64::from(self.rate)
            && self.runs.iter().all(|r| r.errors == 0)
    }
}

pub fn run(config: &Config) -> anyhow::Result<Vec<Summary>> {
    let mut sources = SourceAddrs::default();
    let mut out = Vec::new();
    for &target in &config.against {
        let mut best_held: Option<u32> = None;
        for &rate in &config.rates {
            let s = measure(config, target, rate, &mut sources)?;
            if s.held() {
                best_held = best_held.max(Some(rate));
            }
            out.push(s);
        }
        if config.find_max {
            let mut rate = best_held.unwrap_or(config.rates[0]);
            for _ in 0..MAX_STEPS {
                rate = (f64::from(rate) * STEP).round() as u32;
                let s = measure(config, target, rate, &mut sources)?;
                let held = s.held();
                out.push(s);
                if !held {
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn measure(
    config: &Config,
    target: Protocol,
    rate: u32,
    sources: &mut SourceAddrs,
) -> anyhow::Result<Summary> {
    let mut runs = Vec::new();
    for r in 1..=config.runs {
        let run = one_run(config, target, rate, sources)
            .with_context(|| format!("{} at {rate} msg/s, run {r}", target.name()))?;
        eprintln!(
            "relay {}: {rate} msg/s, run {r}/{}: p50 {:.0} µs, p99 {:.0} µs, {} sent, {} received, {} errors",
            target.name(),
            config.runs,
            run.latency.quantile(0.5).unwrap_or(f64::NAN),
            run.latency.quantile(0.99).unwrap_or(f64::NAN),
            run.sent,
            run.received,
            run.errors,
        );
        runs.push(run);
    }
    Ok(Summary {
        target,
        rate,
        runs,
        duration: config.duration,
    })
}

fn one_run(
    config: &Config,
    target: Protocol,
    rate: u32,
    sources: &mut SourceAddrs,
) -> anyhow::Result<Run> {
    let server = match config.targets.is_empty() {
        true => Some(config.servers.start(target, LOAD_FLAGS)?),
        false => None,
    };
    let urls = match &server {
        Some(s) => s.url.clone(),
        None => config.targets.join(","),
    };
    let (events_tx, events) = crate::fleet::events();
    let mut workers = Vec::new();
    let mut first_pair = 0;
    for (tag, pairs) in crate::fleet::split(config.pairs, config.pairs.div_ceil(config.workers))
        .into_iter()
        .enumerate()
    {
        let share = f64::from(rate) * pairs as f64 / config.pairs as f64;
        let args = vec![
            "relay-worker".to_string(),
            "--urls".into(),
            urls.clone(),
            "--pairs".into(),
            pairs.to_string(),
            "--first".into(),
            (2 * first_pair).to_string(),
            "--source".into(),
            sources.next()?.to_string(),
            "--rate".into(),
            share.to_string(),
            "--warmup".into(),
            config.warmup.as_secs_f64().to_string(),
            "--duration".into(),
            config.duration.as_secs_f64().to_string(),
            "--protocol".into(),
            target.name().into(),
        ];
        workers.push(Worker::spawn(&args, 2 * pairs, tag, events_tx.clone())?);
        first_pair += pairs;
    }
    wait_ready(
        &events,
        &workers.iter().collect::<Vec<_>>(),
        Instant::now() + Duration::from_secs(60),
    )?;
    let cpu_before = server
        .as_ref()
        .map(|s| crate::procmem::cpu_ns(s.pid()))
        .transpose()?;
    for w in &mut workers {
        w.tell("go")?;
    }
    let until = Instant::now() + config.warmup + config.duration + GRACE + Duration::from_secs(10);
    let lines = collect(&events, &workers, "result", until)?;
    let mut total = Run {
        sent: 0,
        received: 0,
        errors: 0,
        latency: Histogram::default(),
        server_cpu_us: None,
    };
    if let (Some(server), Some(before)) = (&server, cpu_before) {
        let used = crate::procmem::cpu_ns(server.pid())?.saturating_sub(before);
        let offered = f64::from(rate) * (config.warmup + config.duration).as_secs_f64();
        total.server_cpu_us = Some(used as f64 / 1e3 / offered);
    }
    for line in lines.values() {
        let r = parse_result(line)?;
        total.sent += r.sent;
        total.received += r.received;
        total.errors += r.errors;
        total.latency.merge(&r.latency);
    }
    for w in &mut workers {
        w.stop(Duration::from_secs(5));
    }
    drop(server);
    Ok(total)
}

fn format_result(r: &Run) -> String {
    format!(
        "result {} {} {} {}",
        r.sent,
        r.received,
        r.errors,
        r.latency.encode()
    )
}

/// `SENT RECEIVED ERRORS HISTOGRAM`, as `format_result` writes it after `result`.
fn parse_result(line: &str) -> anyhow::Result<Run> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let [sent, received, errors, hist] = words[..] else {
        bail!("bad result line `{line}`");
    };
    Ok(Run {
        sent: sent.parse()?,
        received: received.parse()?,
        errors: errors.parse()?,
        latency: Histogram::decode(hist)?,
        server_cpu_us: None,
    })
}

fn ms(micros: f64) -> String {
    format!("{:.3}", micros / 1000.0)
}

pub fn table(config: &Config, summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| server | offered msg/s | runs | delivered msg/s | p50 ms | p99 ms | held (p99 < 10 ms) | p99 ms, every run | server CPU µs/msg |\n\
         |---|---:|---:|---:|---:|---:|---|---|---:|\n",
    );
    for s in summaries {
        let every: Vec<String> = s
            .runs
            .iter()
            .map(|r| ms(r.latency.quantile(0.99).unwrap_or(f64::NAN)))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |\n",
            s.target.name(),
            s.rate,
            s.runs.len(),
            s.delivered(),
            ms(s.p50()),
            ms(s.p99()),
            if s.held() { "yes" } else { "no" },
            every.join(", "),
            s.server_cpu_us().map_or("-".into(), |c| format!("{c:.1}")),
        ));
    }
    for &target in &config.against {
        let best = highest_held(summaries, target);
        out.push_str(&format!(
            "\nHighest load held by {}: {}\n",
            target.name(),
            best.map_or("none".into(), |r| format!("{r} msg/s"))
        ));
    }
    let ratios = ratios(summaries);
    if !ratios.is_empty() {
        out.push_str(
            "\n| offered msg/s | PeerJS p50 ÷ Earshot p50 | PeerJS p99 ÷ Earshot p99 | PeerJS CPU/msg ÷ Earshot CPU/msg |\n|---:|---:|---:|---:|\n",
        );
        for (rate, p50, p99, cpu) in ratios {
            let cpu = cpu.map_or("-".into(), |c| format!("{c:.2}"));
            out.push_str(&format!("| {rate} | {p50:.2} | {p99:.2} | {cpu} |\n"));
        }
    }
    out
}

fn highest_held(summaries: &[Summary], target: Protocol) -> Option<u32> {
    summaries
        .iter()
        .filter(|s| s.target == target && s.held())
        .map(|s| s.rate)
        .max()
}

/// PeerJS's latency (p50, p99) and CPU per message over Earshot's, at every
/// rate measured on both.
fn ratios(summaries: &[Summary]) -> Vec<(u32, f64, f64, Option<f64>)> {
    summaries
        .iter()
        .filter(|s| s.target == Protocol::Earshot)
        .filter_map(|e| {
            let p = summaries
                .iter()
                .find(|p| p.target == Protocol::Peerjs && p.rate == e.rate)?;
            let cpu = Some(p.server_cpu_us()? / e.server_cpu_us()?);
            Some((e.rate, p.p50() / e.p50(), p.p99() / e.p99(), cpu))
        })
        .collect()
}

pub fn to_json(config: &Config, summaries: &[Summary]) -> serde_json::Value {
    serde_json::json!({
        "benchmark": "relay",
        "unit": "microseconds",
        "pairs": config.pairs,
        "warmup_secs": config.warmup.as_secs_f64(),
        "duration_secs": config.duration.as_secs_f64(),
        "highest_held": config.against.iter().map(|&t| serde_json::json!({
            "target": t.name(), "rate": highest_held(summaries, t),
        })).collect::<Vec<_>>(),
        "peerjs_over_earshot": ratios(summaries).into_iter().map(|(rate, p50, p99, cpu)| serde_json::json!({
            "rate": rate, "p50": p50, "p99": p99, "server_cpu": cpu,
        })).collect::<Vec<_>>(),
        "results": summaries.iter().map(|s| serde_json::json!({
            "target": s.target.name(),
            "rate": s.rate,
            "p50": s.p50(),
            "p99": s.p99(),
            "server_cpu_us_per_msg": s.server_cpu_us(),
            "delivered_per_sec": s.delivered(),
            "held": s.held(),
            "runs": s.runs.iter().map(|r| serde_json::json!({
                "sent": r.sent, "received": r.received, "errors": r.errors,
                "p50": r.latency.quantile(0.5), "p99": r.latency.quantile(0.99),
                "max": r.latency.quantile(1.0),
                "server_cpu_us_per_msg": r.server_cpu_us,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Flags of the hidden `relay-worker`.
pub struct WorkerConfig {
    pub fanout: Fanout,
    pub pairs: usize,
    /// This worker's share of the offered load, messages per second.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

pub fn worker(config: WorkerConfig) -> anyhow::Result<()> {
    block_on(serve(config))
}

/// Who a client sends to: its call (Earshot) or its partner's id (PeerJS).
#[derive(Clone)]
enum Route {
    Call(u64),
    Peer(String),
}

/// The schedule every client of a worker shares.
struct Plan {
    epoch: Instant,
    start: Instant,
    measure_from: Instant,
    stop: Instant,
    /// Between two sends of one client.
    interval: Duration,
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let fanout = Arc::new(config.fanout);
    let mut sockets = fanout.open_all(2 * config.pairs).await?;
    let mut routes = Vec::with_capacity(sockets.len());
    match fanout.protocol {
        Protocol::Earshot => {
            // Both sides of pair p search with a tag only they have.
            for (i, ws) in sockets.iter_mut().enumerate() {
                let pair = (fanout.first + i) / 2;
                let search = format!(r#"{{"type":"search","interests":["pair-{pair}"]}}"#);
                ws.send(Message::text(search)).await.context("search")?;
            }
            for ws in &mut sockets {
                routes.push(Route::Call(matched_call(ws).await?));
            }
        }
        Protocol::Peerjs => {
            for i in 0..sockets.len() {
                routes.push(Route::Peer(peer_id(fanout.first + (i ^ 1))));
            }
        }
    }
    crate::worker::say(&format!("ready {}", sockets.len()));

    let mut commands = stdin_lines();
    match commands.recv().await.as_deref() {
        Some("go") => {}
        other => bail!("expected go, got {other:?}"),
    }
    let clients = sockets.len();
    let per_client = config.rate / clients as f64;
    ensure!(per_client > 0.0, "no load to offer");
    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(50);
    let plan = Arc::new(Plan {
        epoch,
        start,
        measure_from: start + config.warmup,
        stop: start + config.warmup + config.duration,
        interval: Duration::from_secs_f64(1.0 / per_client),
    });
    let mut tasks = Vec::new();
    for (i, (ws, route)) in sockets.into_iter().zip(routes).enumerate() {
        // Spread the clients' sends evenly over one interval.
        let offset = plan.interval.mul_f64(i as f64 / clients as f64);
        tasks.push(tokio::spawn(client(ws, route, plan.clone(), offset)));
    }
    let mut total = Run {
        sent: 0,
        received: 0,
        errors: 0,
        latency: Histogram::default(),
        server_cpu_us: None,
    };
    for t in tasks {
        let r = t.await.context("a client task failed")?;
        total.sent += r.sent;
        total.received += r.received;
        total.errors += r.errors;
        total.latency.merge(&r.latency);
    }
    crate::worker::say(&format_result(&total));
    // Hold the line until the parent has read it and closes stdin.
    while commands.recv().await.is_some() {}
    Ok(())
}

/// Reads until `matched` and returns its call id.
async fn matched_call(ws: &mut Ws) -> anyhow::Result<u64> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match msg_type(text.as_str()) {
                Some("matched") => return number_after(text.as_str(), r#""call":"#),
                Some("error") => bail!("server error: {}", text.as_str()),
                _ => {}
            },
            Some(Ok(_)) => {}
            other => bail!("closed while waiting for matched: {other:?}"),
        }
    }
}

/// The decimal number right after `key` in `text`.
fn number_after(text: &str, key: &str) -> anyhow::Result<u64> {
    let rest = &text[text.find(key).context("field missing")? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().context("not a number")
}

/// The message a client sends at `sent_ns` (since the worker's epoch).
fn signal(route: &Route, sent_ns: u64) -> String {
    let candidate = format!(
        r#"{{"candidate":"{CANDIDATE}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"ts{sent_ns}"}}"#
    );
    match route {
        Route::Call(call) => {
            format!(r#"{{"type":"signal","call":{call},"candidate":{candidate}}}"#)
        }
        Route::Peer(dst) => format!(
            r#"{{"type":"CANDIDATE","dst":"{dst}","payload":{{"candidate":{candidate},"type":"media","connectionId":"mc_bench"}}}}"#
        ),
    }
}

/// One client: sends on schedule, records what its partner sent.
async fn client(mut ws: Ws, route: Route, plan: Arc<Plan>, offset: Duration) -> Run {
    let mut run = Run {
        sent: 0,
        received: 0,
        errors: 0,
        latency: Histogram::default(),
        server_cpu_us: None,
    };
    let mut ticks = interval_at((plan.start + offset).into(), plan.interval);
    // Open loop: a late tick is made up at once, so the offered rate holds.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = plan.stop + GRACE;
    let mut sending = true;
    loop {
        tokio::select! {
            _ = ticks.tick(), if sending => {
                let now = Instant::now();
                if now >= plan.stop {
                    sending = false;
                    continue;
                }
                let stamp = (now - plan.epoch).as_nanos() as u64;
                if ws.send(Message::text(signal(&route, stamp))).await.is_err() {
                    run.errors += 1;
                    break;
                }
                if now >= plan.measure_from {
                    run.sent += 1;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    match number_after(text, r#""usernameFragment":"ts"#) {
                        Ok(stamp) => {
                            let sent = plan.epoch + Duration::from_nanos(stamp);
                            if sent >= plan.measure_from && sent < plan.stop {
                                run.received += 1;
                                run.latency.record(sent.elapsed().as_micros() as u64);
                            }
                        }
                        // Anything else (an error) is a failure, unless the
                        // partner has already closed (`call_ended`).
                        Err(_) if Instant::now() < plan.stop => run.errors += 1,
                        Err(_) => {}
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    run.errors += u64::from(Instant::now() < plan.stop);
                    break;
                }
            },
            () = sleep_until(end.into()) => break,
        }
    }
    let _ = ws.close(None).await;
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_through_a_line() {
        let mut latency = Histogram::default();
        latency.record(150);
        latency.record(9000);
        let r = Run {
            sent: 10,
            received: 9,
            errors: 1,
            latency,
            server_cpu_us: None,
        };
        let line = format_result(&r);
        let back = parse_result(line.strip_prefix("result").unwrap()).unwrap();
        assert_eq!((back.sent, back.received, back.errors), (10, 9, 1));
        assert_eq!(back.latency, r.latency);
        assert!(parse_result("1 2").is_err());
    }

    #[test]
    fn signals_carry_their_send_time_to_the_partner() {
        let e = signal(&Route::Call(7), 123_456);
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["type"], "signal");
        assert_eq!(v["call"], 7);
        assert_eq!(
            number_after(&e, r#""usernameFragment":"ts"#).unwrap(),
            123_456
        );
        let p = signal(&Route::Peer("c3".into()), 42);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["dst"], "c3");
        assert_eq!(v["payload"]["candidate"]["usernameFragment"], "ts42");
        assert_eq!(
            number_after(
                r#"{"type":"matched","call":12,"polite":true}"#,
                r#""call":"#
            )
            .unwrap(),
            12
        );
    }

    #[test]
    fn a_load_is_held_only_under_10ms_with_everything_delivered() {
        let run = |micros: u64, received: u64| {
            let mut latency = Histogram::default();
            for _ in 0..100 {
                latency.record(micros);
            }
            Run {
                sent: 1000,
                received,
                errors: 0,
                latency,
                server_cpu_us: None,
            }
        };
        let s = |runs| Summary {
            target: Protocol::Earshot,
            rate: 1000,
            runs,
            duration: Duration::from_secs(1),
        };
        assert!(s(vec![run(500, 1000)]).held());
        assert!(!s(vec![run(12_000, 1000)]).held(), "too slow");
        assert!(!s(vec![run(500, 900)]).held(), "messages missing");
        assert!(s(vec![run(500, 1000), run(20_000, 1000), run(600, 1000)]).held());
    }
}
