//! Time to audio in round trips: the stranger call of the waiting-partner
//! case under added latency, beside the in-page limit under the same
//! latency. Ignored by default (a figure, minutes long); run it with
//! `scripts/test round_trips -- --ignored` or see BENCHMARKS.md.
//!
//! The kernel here has no `netem`, so the latency is added in user space
//! (`support::delay`): the pages load and signal through a TCP proxy in
//! front of the server, and reach the embedded TURN server only through a
//! UDP proxy, each holding everything for `d` each way. "Hide my IP" is on
//! (the default with TURN offered), so the call's media goes page → proxy →
//! TURN → (in memory, relay to relay) → TURN → proxy → page; the limit's two
//! in-page connections are made relay-only with the page's own ICE servers
//! and take the same way. [`RELAY_VIA_JS`] points the pages' TURN URLs at
//! the proxy: a test-only script, nothing in the page itself changes.

use crate::reach::{LOG_SHOWS_TURN, REACH_JS, embedded_turn, register_turn_secrets};
use crate::strangers::{CONFIG_JS, in_page_limit, is_ended, milestones, time_to_audio};
use crate::support::delay::{DelayedTcp, DelayedUdp};
use crate::support::free_port;
use crate::support::harness::{Browser, Run, median, report, wait_for};
use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// One-way delays, in milliseconds, added between every page and both the
/// server and the relay.
const DELAYS_MS: [u64; 3] = [0, 25, 50];
/// Calls (and limits, in turn with them) per delay.
const ROUNDS: usize = 5;

/// The waiting-partner case (C searching, Y presses Start) at each of
/// [`DELAYS_MS`], [`ROUNDS`] times, each after the in-page limit measured
/// in Y's page; prints the Markdown table of medians and, per delay, where
/// the call's time goes.
#[test]
#[ignore = "a benchmark: run explicitly"]
fn browser_round_trips_to_audio() -> Result<()> {
    let turn_port = free_port()?;
    let mut setup = embedded_turn();
    let listen = setup
        .server_args
        .iter()
        .position(|a| a == "--turn-listen")
        .context("embedded_turn sets --turn-listen")?;
    setup.server_args[listen + 1] = format!("127.0.0.1:{turn_port}");
    Run::scenario_setup(
        "browser_round_trips_to_audio",
        &["Y", "C"],
        0,
        LOG_SHOWS_TURN,
        &setup,
        |run| scenario(run, turn_port),
    )
}

/// Medians of one delay's rounds, in milliseconds from Y's click.
struct Row {
    delay: u64,
    packet: f64,
    audible: f64,
    limit_packet: f64,
    limit_audible: f64,
}

fn scenario(run: &Run, turn_port: u16) -> Result<()> {
    let [y, c] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    let server: SocketAddr = run
        .server_url()?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("the server URL is not http://ADDRESS:PORT/")?;
    let signalling = DelayedTcp::start(server)?;
    let relay = DelayedUdp::start(SocketAddr::from(([127, 0, 0, 1], turn_port)))?;
    let via = RELAY_VIA_JS.replace("RELAY_PORT", &relay.addr.port().to_string());
    let url = format!("http://{}/", signalling.addr);
    for x in [y, c] {
        x.session.add_init_script(REACH_JS)?;
        x.session.add_init_script(&via)?;
        x.goto(&url)?;
    }

    // A first call, undelayed: it proves the way works and gives the
    // configuration the limit uses (the page's own, relay only).
    c.click("start")?;
    wait_for("C searching", &[c], |s| s[0].state == "searching")?;
    let config = call(y, c)?.1;
    run.chat(y, &[c], "hello from Y, through the delaying proxies")?;
    ensure!(
        config["iceTransportPolicy"] == json!("relay"),
        "the call was not relay only: {config}"
    );
    hang_up(y, c)?;

    let mut rows = Vec::new();
    for delay in DELAYS_MS {
        let d = Duration::from_millis(delay);
        signalling.set_delay(d);
        relay.set_delay(d);
        let (mut packet, mut audible) = (Vec::new(), Vec::new());
        let (mut limit_packet, mut limit_audible) = (Vec::new(), Vec::new());
        let mut steps = Vec::new();
        for _ in 0..ROUNDS {
            let limit = in_page_limit(y, &config)?;
            limit_packet.push(limit.packet);
            limit_audible.push(limit.audible);
            let (got, _) = call(y, c)?;
            let at = |label: &str| got.iter().find(|(l, _)| *l == label).map(|(_, v)| *v);
            packet.push(at("first audio packet").context("no first audio packet")?);
            audible.push(at("audio with energy").context("no audible audio")?);
            steps.push(got);
            if steps.len() == ROUNDS {
                report_timeline(delay, &[y, c])?;
            }
            hang_up(y, c)?;
        }
        report_steps(delay, &steps);
        let samples = |v: &[f64]| {
            v.iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        report(&format!(
            "round trips, d = {delay} ms: first audio packet through the server {} ms; limit {} ms",
            samples(&packet),
            samples(&limit_packet)
        ));
        rows.push(Row {
            delay,
            packet: median(&packet),
            audible: median(&audible),
            limit_packet: median(&limit_packet),
            limit_audible: median(&limit_audible),
        });
    }
    report_table(&rows);
    c.click("end")?;
    wait_for("C idle", &[c], |s| is_ended(&s[0]))?;
    register_turn_secrets(run)
}

/// C is searching; Y presses Start. Waits until both hear each other and
/// gives where the call's time went (see `strangers::milestones`) and the
/// page's peer connection configuration.
fn call(y: &Browser, c: &Browser) -> Result<(Vec<(&'static str, f64)>, serde_json::Value)> {
    y.arm()?;
    c.arm()?;
    y.click("start")?;
    wait_for("Y and C connected", &[y, c], |s| {
        s.iter().all(|s| s.state == "connected")
    })?;
    ensure!(c.newly_connected()?, "C never left the old call");
    let since = y.clicked_at("start")?;
    time_to_audio(y, c, since)?;
    for x in [y, c] {
        ensure!(
            x.execute("return window.earshot.hideIp", json!([]))? == json!(true),
            "{}: the call was not relayed",
            x.name
        );
    }
    let config = y.execute(CONFIG_JS, json!([]))?;
    Ok((milestones(y, c, since)?, config))
}

/// Each page's timeline of the call Y started last (event types and
/// states only), in milliseconds from Y's click.
fn report_timeline(delay: u64, pages: &[&Browser]) -> Result<()> {
    let since = pages[0].clicked_at("start")?;
    for x in pages {
        let line = x.execute("return window.__e2e.timeline", json!([]))?;
        let events: Vec<String> = line
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e[0].as_f64()? - since, e[1].as_str()?.to_owned())))
            .filter(|(t, _)| *t >= -100.0)
            .map(|(t, name)| format!("{t:.0} {name}"))
            .collect();
        report(&format!(
            "round trips, d = {delay} ms, {}'s timeline of the last call: {}",
            x.name,
            events.join(", ")
        ));
    }
    Ok(())
}

/// Y presses End; C searches again.
fn hang_up(y: &Browser, c: &Browser) -> Result<()> {
    c.arm()?;
    y.click("end")?;
    wait_for("Y idle, C searching", &[y, c], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    Ok(())
}

/// The median of each step over one delay's calls (see `milestones`).
fn report_steps(delay: u64, steps: &[Vec<(&'static str, f64)>]) {
    let Some(first) = steps.first() else { return };
    let parts: Vec<String> = first
        .iter()
        .map(|(label, _)| {
            let values: Vec<f64> = steps
                .iter()
                .filter_map(|s| s.iter().find(|(l, _)| l == label).map(|(_, v)| *v))
                .collect();
            format!("{label} {:.0}", median(&values))
        })
        .collect();
    report(&format!(
        "round trips, d = {delay} ms, where the time goes (median ms from Start): {}",
        parts.join(", ")
    ));
}

/// The figure: a Markdown table, one row per delay.
fn report_table(rows: &[Row]) {
    let trips = |through: f64, limit: f64, delay: u64| {
        if delay == 0 {
            "—".to_string()
        } else {
            format!("{:.1}", (through - limit) / (2.0 * delay as f64))
        }
    };
    let mut out = vec![
        format!(
            "time to audio under delay (medians of {ROUNDS}; from the later click, partner waiting; \
             media relayed through TURN):"
        ),
        String::new(),
        "| one-way delay d | first packet, through the server | in-page limit | round trips over the limit | audible, through the server | in-page limit | round trips over the limit |".into(),
        "|---:|---:|---:|---:|---:|---:|---:|".into(),
    ];
    for r in rows {
        out.push(format!(
            "| {} ms | {:.0} ms | {:.0} ms | {} | {:.0} ms | {:.0} ms | {} |",
            r.delay,
            r.packet,
            r.limit_packet,
            trips(r.packet, r.limit_packet, r.delay),
            r.audible,
            r.limit_audible,
            trips(r.audible, r.limit_audible, r.delay),
        ));
    }
    report(&out.join("\n"));
}

/// Test only, before the page's scripts: every peer connection's TURN
/// servers become the delaying UDP proxy (`RELAY_PORT`, filled in), UDP only,
/// so that nothing reaches the relay but through it; STUN and TURN over TCP
/// are dropped (they would go around it). The same rewrite applies to
/// `setConfiguration` (fresh credentials), and is idempotent, so the limit's
/// connections, made from the page's own configuration, take the same way.
const RELAY_VIA_JS: &str = r#"
(() => {
  const VIA = '127.0.0.1:RELAY_PORT';
  const rewrite = (config) => {
    if (!config || !Array.isArray(config.iceServers)) return config;
    const iceServers = [];
    for (const s of config.iceServers) {
      const urls = (Array.isArray(s.urls) ? s.urls : [s.urls])
        .filter((u) => typeof u === 'string' && u.startsWith('turn:') && !u.includes('transport=tcp'))
        .map((u) => u.replace(/^turn:[^?]*/, 'turn:' + VIA));
      if (urls.length) iceServers.push({...s, urls});
    }
    return {...config, iceServers};
  };
  const Pc = window.RTCPeerConnection;
  if (typeof Pc !== 'function') return;
  // Where ICE spends the time: the type of each candidate gathered and the
  // gathering states, into the harness's timeline (never an address).
  const mark = (event) => {
    const line = window.__e2e && window.__e2e.timeline;
    if (line && line.length < 5000) line.push([Date.now(), event]);
  };
  window.RTCPeerConnection = class extends Pc {
    constructor(config, ...rest) {
      super(rewrite(config), ...rest);
      this.addEventListener('icecandidate', (e) => mark('cand:' + (e.candidate ? e.candidate.type || '?' : 'end')));
      this.addEventListener('icegatheringstatechange', () => mark('gather:' + this.iceGatheringState));
    }
    setConfiguration(config) { return super.setConfiguration(rewrite(config)); }
  };
})();
"#;
