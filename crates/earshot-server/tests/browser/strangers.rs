//! The stranger page: two strangers meet, talk and chat; a call survives a
//! server restart. See the crate docs in `main.rs`.

use crate::support::harness::{
    Browser, Run, STEP, Snapshot, check_audio, hold, median, report, wait_for,
};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How many extra End + Start rounds feed the time-to-audio figure.
const EXTRA_ROUNDS: usize = 5;
/// How long the restart scenario keeps the server down.
const DOWNTIME: Duration = Duration::from_secs(2);
/// What the server's trace log must mention to prove it saw a stranger call.
const LOG_SHOWS: &[&str] = &["matched"];

/// Two strangers meet, hear each other and chat; skips re-queue both sides
/// without re-matching the pair; End goes idle and re-queues the partner;
/// shared interests show; and the time to audio of every call is printed.
/// Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_strangers_talk_and_chat() -> Result<()> {
    Run::scenario(
        "browser_strangers_talk_and_chat",
        &["A", "B", "C"],
        LOG_SHOWS,
        |run| {
            let first = run.browser("C")?.load_figures()?;
            let mut times = Vec::new();
            let (mut limits, mut steps) = (Vec::new(), Vec::new());
            let result = strangers_scenario(run, &mut times, &mut limits, &mut steps);
            report_times(&times);
            report_milestones(&steps, &limits);
            result?;
            check_returning_visit(run, &first)
        },
    )
}

/// A first visit downloads the page once, precompressed; a returning visit
/// (C opens the page again, its cache warm) revalidates every file and
/// transfers headers only. Both figures go to the report.
fn check_returning_visit(run: &Run, first: &Value) -> Result<()> {
    let c = run.browser("C")?;
    c.goto(&run.server_url()?)?;
    let again = c.load_figures()?;
    let n = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    report(&format!(
        "page load: first visit {:.0} bytes over {:.0} requests, Start works after {:.0} ms; \
         returning visit {:.0} bytes over {:.0} requests (none over {:.0} bytes), Start after \
         {:.0} ms",
        n(first, "transfer"),
        n(first, "resources"),
        n(first, "ready_ms"),
        n(&again, "transfer"),
        n(&again, "resources"),
        n(&again, "largest"),
        n(&again, "ready_ms"),
    ));
    ensure!(
        n(first, "transfer") < 120_000.0,
        "a first visit should download the precompressed page: {first}"
    );
    ensure!(
        n(&again, "transfer") * 5.0 < n(first, "transfer"),
        "a returning visit should transfer headers only: {again} after {first}"
    );
    // A "not modified" answer is its headers, about 300 bytes; the smallest
    // file of the page is bigger than that with its own.
    ensure!(
        n(&again, "largest") < 600.0,
        "a returning visit should revalidate every file, headers only: {again}"
    );
    Ok(())
}

/// A call survives a server restart: A and B talk; the server is stopped
/// with SIGTERM (it closes the WebSockets with 1012) and stays down for
/// [`DOWNTIME`], during which both pages stay connected, audio keeps coming
/// and chat still goes through (all of it peer to peer); a new server comes
/// up on the same port, both pages reconnect their signalling on their own,
/// and the call from before is the same peer connection, never having left
/// `connected`. Then A skips and B starts again: a new call through the new
/// server. Ends with the privacy checks of `Run::finish`, over the logs of
/// both servers.
#[test]
fn browser_call_survives_a_server_restart() -> Result<()> {
    Run::scenario(
        "browser_call_survives_a_server_restart",
        &["A", "B"],
        LOG_SHOWS,
        restart_scenario,
    )
}

/// `a` presses Start, then `b`: they meet, hear each other (see
/// [`check_audio_flows`]) and chat both ways. The time to audio.
pub(crate) fn meet_and_chat(run: &Run, a: &Browser, b: &Browser) -> Result<f64> {
    a.arm()?;
    b.arm()?;
    a.click("start")?;
    wait_for(&format!("{} searching", a.name), &[a], |s| {
        s[0].state == "searching"
    })?;
    b.click("start")?;
    wait_for(
        &format!("{} and {} connected", a.name, b.name),
        &[a, b],
        |s| s.iter().all(|s| s.state == "connected"),
    )?;
    let since = a.clicked_at("start")?.max(b.clicked_at("start")?);
    let time = time_to_audio(a, b, since)?;
    check_audio_flows(&[a, b])?;
    for (from, to) in [(a, b), (b, a)] {
        run.chat(
            from,
            &[to],
            &format!("hello from {} to {}", from.name, to.name),
        )?;
    }
    Ok(time)
}

fn restart_scenario(run: &Run) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    let time = meet_and_chat(run, a, b)?;
    println!("restart scenario: time to audio {time:.0} ms");

    // From here on, any change of data-state or of the peer connection's
    // state is recorded.
    for x in [a, b] {
        x.arm()?;
        x.watch_call()?;
    }
    let stopping = Instant::now();
    let status = run.stop_server()?;
    let down_at = Instant::now();
    ensure!(
        status.success(),
        "earshot exited with {status} after SIGTERM"
    );
    println!(
        "restart scenario: earshot exited {:.0?} after SIGTERM",
        down_at - stopping
    );

    // While it is down: the pages say they are reconnecting, yet stay
    // connected; the socket they had was closed with 1012; chat goes
    // through and audio keeps coming.
    wait_for(
        "both pages connected and reconnecting to the server",
        &[a, b],
        |s| {
            s.iter()
                .all(|s| s.state == "connected" && s.status.contains("Reconnecting"))
        },
    )?;
    for x in [a, b] {
        let sockets = x.sockets()?;
        let last_ready = sockets
            .iter()
            .rev()
            .find(|s| s["welcome"].as_f64().is_some())
            .with_context(|| format!("{}: no socket ever got a welcome: {sockets:?}", x.name))?;
        ensure!(
            last_ready["close"]["code"] == json!(1012)
                && last_ready["close"]["reason"] == json!("server restart"),
            "{}: the signalling socket was not closed with 1012 \"server restart\": {last_ready}",
            x.name
        );
    }
    let before = [a.stats()?, b.stats()?];
    for (from, to) in [(a, b), (b, a)] {
        let text = format!("{} to {}, server down", from.name, to.name);
        run.chat(from, &[to], &text)?;
    }
    hold(
        "both pages connected while the server is down",
        &[a, b],
        DOWNTIME.saturating_sub(down_at.elapsed()),
        |s| s.state == "connected",
    )?;
    let after = [a.stats()?, b.stats()?];
    for (x, (first, second)) in [a, b].into_iter().zip(before.iter().zip(&after)) {
        check_audio(x.name, first, second, "while the server was down")?;
    }
    for x in [a, b] {
        x.check_call_unbroken()?;
    }
    let downtime = down_at.elapsed();

    // A new server on the same port: the pages reconnect on their own and
    // the call carries on, untouched.
    run.restart_server()?;
    let up_at = Instant::now();
    wait_for(
        "both pages back on the server, still connected",
        &[a, b],
        |s| {
            s.iter()
                .all(|s| s.state == "connected" && !s.status.contains("Reconnecting"))
        },
    )?;
    let back = up_at.elapsed();
    for x in [a, b] {
        let sockets = x.sockets()?;
        let welcomed = sockets
            .iter()
            .filter(|s| s["welcome"].as_f64().is_some())
            .count();
        ensure!(
            welcomed == 2,
            "{}: expected one welcome before and one after the restart: {sockets:?}",
            x.name
        );
        println!(
            "restart scenario: {} opened {} sockets in all ({} refused while down)",
            x.name,
            sockets.len(),
            sockets.len() - welcomed
        );
    }
    println!(
        "restart scenario: down for {downtime:.1?}; pages back on the new server {back:.1?} after it started"
    );
    check_audio_flows(&[a, b])?;
    for x in [a, b] {
        x.check_call_unbroken()?;
    }

    // A new call through the new server: A skips (the new server does not
    // know the old call, so the page searches afresh), B sees the stranger
    // leave, presses Start and meets A.
    for x in [a, b] {
        x.arm()?;
    }
    a.click("skip")?;
    wait_for("A searching, B told the stranger left", &[a, b], |s| {
        s[0].state == "searching" && is_ended(&s[1])
    })?;
    b.click("start")?;
    wait_for("A and B in a new call", &[a, b], |_| {
        a.newly_connected().unwrap_or(false) && b.newly_connected().unwrap_or(false)
    })?;
    let time = time_to_audio(a, b, b.clicked_at("start")?)?;
    println!("restart scenario: new call through the new server, time to audio {time:.0} ms");
    let log = run.servers.borrow().last().context("no server")?.output();
    ensure!(
        log.contains("matched"),
        "the new call did not go through the new server: its log has no \"matched\""
    );
    a.click("end")?;
    wait_for("A idle, B searching", &[a, b], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    b.click("end")?;
    wait_for("B idle", &[b], |s| is_ended(&s[0]))?;
    Ok(())
}

fn strangers_scenario(
    run: &Run,
    times: &mut Vec<f64>,
    limits: &mut Vec<Limit>,
    steps: &mut Vec<Vec<(&'static str, f64)>>,
) -> Result<()> {
    let [a, b, c] = &run.browsers[..] else {
        bail!("expected three browsers")
    };
    for x in [a, b, c] {
        let snap = x.snapshot()?;
        ensure!(
            snap.state == "idle" && snap.start_enabled == Some(true),
            "a fresh page should be idle with Start enabled: {snap}"
        );
    }

    // 1. A and B press Start, meet, hear each other and chat both ways.
    times.push(meet_and_chat(run, a, b)?);
    let config = a.execute(CONFIG_JS, json!([]))?;
    ensure!(
        config.is_object(),
        "no peer connection configuration: {config}"
    );

    // 2. C waits; A skips B. Both are back in the queue, C meets one of
    //    them (X) and the other (Y) keeps searching.
    c.arm()?;
    c.click("start")?;
    wait_for("C searching", &[c], |s| s[0].state == "searching")?;
    for x in [a, b, c] {
        x.arm()?;
    }
    a.click("skip")?;
    wait_for(
        "C connected to A or B after A skipped B",
        &[a, b, c],
        |_| {
            let fresh = |x: &Browser| x.newly_connected().unwrap_or(false);
            fresh(c) && (fresh(a) || fresh(b))
        },
    )?;
    let (x, y) = if a.newly_connected()? { (a, b) } else { (b, a) };
    ensure!(
        !y.newly_connected()?,
        "both A and B connected again after A skipped B"
    );
    wait_for(&format!("{} searching", y.name), &[y], |s| {
        s[0].state == "searching"
    })?;
    times.push(time_to_audio(x, c, a.clicked_at("skip")?)?);

    // 3. X skips C. X and C are queued again while Y waits: X may not meet Y
    //    (A and B just skipped each other) nor C (just skipped), so C meets Y
    //    and X searches alone.
    for z in [x, y, c] {
        z.arm()?;
    }
    x.click("skip")?;
    wait_for(
        &format!("C connected to {} after {} skipped C", y.name, x.name),
        &[x, y, c],
        // C showed `connected` before too: only a state change proves the
        // new call.
        |s| s[1].state == "connected" && c.newly_connected().unwrap_or(false),
    )?;
    hold(
        &format!("{} still searching (no re-match with A/B partner)", x.name),
        &[x],
        Duration::from_millis(1500),
        |s| s.state == "searching",
    )?;
    times.push(time_to_audio(y, c, x.clicked_at("skip")?)?);

    // 4. X ends its search; Y ends the call: Y goes idle with Start enabled,
    //    C goes back to searching, and stays there with nobody else queued.
    x.click("end")?;
    wait_for(&format!("{} idle after End", x.name), &[x], |s| {
        is_ended(&s[0])
    })?;
    c.arm()?;
    y.click("end")?;
    wait_for(
        &format!("{} idle after End, C searching", y.name),
        &[y, c],
        |s| is_ended(&s[0]) && s[1].state == "searching",
    )?;
    hold("C still searching", &[c], Duration::from_millis(500), |s| {
        s.state == "searching"
    })?;

    // 5. Extra rounds for the figure: Y presses Start, meets the waiting C,
    //    both hear audio; Y presses End, C is queued again. Before each,
    //    Y's page measures the limit (see `in_page_limit`).
    for round in 1..=EXTRA_ROUNDS {
        // The limit, in turn with the call through the server, so that
        // both see the same machine load.
        limits.push(in_page_limit(y, &config)?);
        y.arm()?;
        c.arm()?;
        y.click("start")?;
        wait_for(
            &format!("round {round}: {} and C connected", y.name),
            &[y, c],
            |s| s.iter().all(|s| s.state == "connected"),
        )?;
        ensure!(c.newly_connected()?, "C never left the old call");
        let since = y.clicked_at("start")?;
        times.push(time_to_audio(y, c, since)?);
        steps.push(milestones(y, c, since)?);
        c.arm()?;
        y.click("end")?;
        wait_for(
            &format!("round {round}: {} idle, C searching", y.name),
            &[y, c],
            |s| is_ended(&s[0]) && s[1].state == "searching",
        )?;
    }

    // 6. Interests: C ends too; Y and C both enter "chess", press Start and
    //    see it as a shared interest.
    c.click("end")?;
    wait_for("C idle", &[c], |s| is_ended(&s[0]))?;
    for z in [y, c] {
        let input = z.testid("interests-input")?;
        input.clear()?;
        input.send_keys("chess")?;
        z.arm()?;
    }
    y.click("start")?;
    c.click("start")?;
    wait_for(
        &format!("{} and C connected with shared interest chess", y.name),
        &[y, c],
        |s| {
            s.iter()
                .all(|s| s.state == "connected" && s.shared.to_lowercase().contains("chess"))
        },
    )?;
    let since = y.clicked_at("start")?.max(c.clicked_at("start")?);
    times.push(time_to_audio(y, c, since)?);
    y.click("end")?;
    wait_for(&format!("{} idle, C searching", y.name), &[y, c], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    c.click("end")?;
    wait_for("C idle", &[c], |s| is_ended(&s[0]))?;
    Ok(())
}

/// The state after pressing End: `idle` (or `ended`), with Start enabled.
pub(crate) fn is_ended(snap: &Snapshot) -> bool {
    (snap.state == "idle" || snap.state == "ended") && snap.start_enabled == Some(true)
}

/// Waits until both sides of a call decode audio with energy; milliseconds
/// from `since` (an epoch time from a page) to the later of the two.
pub(crate) fn time_to_audio(x: &Browser, y: &Browser, since: f64) -> Result<f64> {
    let deadline = Instant::now() + STEP;
    loop {
        let (px, py) = (x.probe()?, y.probe()?);
        if let (Some(tx), Some(ty)) = (px["audioAt"].as_f64(), py["audioAt"].as_f64()) {
            return Ok(tx.max(ty) - since);
        }
        if Instant::now() > deadline {
            bail!(
                "no audio both ways between {} and {} within {STEP:?}:\n{}: {px}\n  stats {}\n{}: {py}\n  stats {}",
                x.name,
                y.name,
                x.name,
                x.stats().unwrap_or_else(|e| json!(format!("{e:#}"))),
                y.name,
                y.stats().unwrap_or_else(|e| json!(format!("{e:#}"))),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// In every one of `browsers`, inbound audio keeps flowing over a second:
/// see [`check_audio`].
fn check_audio_flows(browsers: &[&Browser]) -> Result<()> {
    let first = browsers
        .iter()
        .map(|x| x.stats())
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    for (x, first) in browsers.iter().zip(&first) {
        check_audio(x.name, first, &x.stats()?, "over 1 s")?;
    }
    Ok(())
}

/// Reports the time-to-audio figure (see `harness::report`).
fn report_times(times: &[f64]) {
    if times.is_empty() {
        return;
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    let samples: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    report(&format!(
        "time to audio: median {:.0} ms over {} calls (samples: {} ms; min {min:.0}, max {max:.0})",
        median(times),
        times.len(),
        samples.join(", "),
    ));
}

/// Reports the median of each step of [`milestones`] over the calls, and
/// the time to the first audio packet and to audible audio beside the
/// in-page limits measured in turn with them, as ratios.
fn report_milestones(steps: &[Vec<(&'static str, f64)>], limits: &[Limit]) {
    let Some(first) = steps.first() else { return };
    let step = |label: &str| {
        let values: Vec<f64> = steps
            .iter()
            .filter_map(|s| s.iter().find(|(l, _)| *l == label).map(|(_, v)| *v))
            .collect();
        (!values.is_empty()).then(|| median(&values))
    };
    let parts: Vec<String> = first
        .iter()
        .filter_map(|(label, _)| Some(format!("{label} {:.0}", step(label)?)))
        .collect();
    report(&format!(
        "time to audio, where it goes (median ms from Start over {} calls): {}",
        steps.len(),
        parts.join(", ")
    ));
    if limits.is_empty() {
        return;
    }
    let connected: Vec<f64> = limits.iter().map(|l| l.connected).collect();
    let packet: Vec<f64> = limits.iter().map(|l| l.packet).collect();
    let audible: Vec<f64> = limits.iter().map(|l| l.audible).collect();
    for (what, label, limit) in [
        ("DTLS connected", "DTLS connected", &connected),
        ("first audio packet", "first audio packet", &packet),
        ("audible audio", "audio with energy", &audible),
    ] {
        let samples: Vec<String> = limit.iter().map(|t| format!("{t:.0}")).collect();
        let Some(through) = step(label) else { continue };
        let limit = median(limit);
        report(&format!(
            "time to {what}: through the server median {through:.0} ms; limit (the same two \
             peer connections in one page, no server) median {limit:.0} ms over {} (samples: \
             {} ms); ratio {:.2}",
            packet.len(),
            samples.join(", "),
            through / limit.max(1.0),
        ));
    }
}

/// Where a call's time to audio goes: for the call `y` started at `since`
/// with `c` waiting, milliseconds from `since` to the first time either page
/// reached each step (from the pages' timelines, see `harness::INIT_JS`).
pub(crate) fn milestones(y: &Browser, c: &Browser, since: f64) -> Result<Vec<(&'static str, f64)>> {
    const STEPS: [(&str, &str); 7] = [
        ("search sent (microphone open)", "ws>search"),
        ("matched", "ws<matched"),
        ("first signal sent", "ws>signal"),
        ("first signal relayed", "ws<signal"),
        ("offer/answer done", "sdp:stable"),
        ("ICE connected", "ice:connected"),
        ("DTLS connected", "conn:connected"),
    ];
    let mut events = Vec::new();
    for x in [y, c] {
        let line = x.execute("return window.__e2e.timeline", json!([]))?;
        for e in line.as_array().cloned().unwrap_or_default() {
            if let (Some(t), Some(name)) = (e[0].as_f64(), e[1].as_str())
                && t >= since
            {
                events.push((t, name.to_owned()));
            }
        }
    }
    let mut out = Vec::new();
    for (label, event) in STEPS {
        let times = events.iter().filter(|(_, n)| n == event).map(|(t, _)| *t);
        // A connection is up when both pages say so; a message counts at its first.
        let at = if event.starts_with("ice:") || event.starts_with("conn:") {
            times.reduce(f64::max)
        } else {
            times.reduce(f64::min)
        };
        if let Some(at) = at {
            out.push((label, at - since));
        }
    }
    let (py, pc) = (y.probe()?, c.probe()?);
    for (label, key) in [
        ("first audio packet", "bytesAt"),
        ("audio with energy", "audioAt"),
    ] {
        if let (Some(a), Some(b)) = (py[key].as_f64(), pc[key].as_f64()) {
            out.push((label, a.max(b) - since));
        }
    }
    Ok(out)
}

/// The time to audio with no server at all: in `x`'s page, two peer
/// connections with the page's own configuration (`config`, from
/// [`CONFIG_JS`]) each take the fake microphone, as a page does after Start,
/// and negotiate directly, candidates handed over in the page. Milliseconds
/// from the start to the later of the two decoding audio with energy,
/// watched as [`ARM_JS`] does for a call.
pub(crate) fn in_page_limit(x: &Browser, config: &Value) -> Result<Limit> {
    let out = x.execute_async(LIMIT_JS, json!([config]))?;
    let get = |key: &str| {
        out[key]
            .as_f64()
            .with_context(|| format!("{}: in-page limit failed: {out}", x.name))
    };
    Ok(Limit {
        connected: get("connected")?,
        packet: get("packet")?,
        audible: get("audible")?,
    })
}

/// One in-page measurement: milliseconds to the first audio packet on both
/// sides, and to audio with energy on both.
pub(crate) struct Limit {
    pub(crate) connected: f64,
    pub(crate) packet: f64,
    pub(crate) audible: f64,
}

/// The configuration of the page's current peer connection, in a form
/// `RTCPeerConnection` takes back.
pub(crate) const CONFIG_JS: &str = r#"
const pc = window.earshot && window.earshot.pc;
if (!pc) return null;
const c = pc.getConfiguration();
return {iceServers: c.iceServers || [], iceTransportPolicy: c.iceTransportPolicy || 'all'};
"#;

const LIMIT_JS: &str = r#"
const [config, done] = [arguments[0], arguments[arguments.length - 1]];
const constraints = {audio: {echoCancellation: true, noiseSuppression: true, autoGainControl: true}};
(async () => {
  const t0 = Date.now();
  const [s1, s2] = await Promise.all([navigator.mediaDevices.getUserMedia(constraints),
                                      navigator.mediaDevices.getUserMedia(constraints)]);
  const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
  // Played as the page plays a partner: Chromium decodes (and measures the
  // energy of) remote audio only when something renders it.
  const players = [];
  for (const pc of [a, b]) {
    pc.ontrack = (e) => {
      const el = new Audio();
      el.srcObject = e.streams[0] || new MediaStream([e.track]);
      el.play().catch(() => {});
      players.push(el);
    };
  }
  const cleanup = () => {
    a.close(); b.close();
    for (const el of players) { el.pause(); el.srcObject = null; }
    for (const t of [...s1.getTracks(), ...s2.getTracks()]) t.stop();
  };
  try {
    // Candidates wait until the other side has the description they belong to.
    let ready = false;
    const held = [];
    const hand = (to) => (e) => {
      if (!e.candidate) return;
      if (ready) to.addIceCandidate(e.candidate).catch(() => {});
      else held.push([to, e.candidate]);
    };
    a.onicecandidate = hand(b);
    b.onicecandidate = hand(a);
    a.createDataChannel('chat', {ordered: true});
    for (const t of s1.getTracks()) a.addTrack(t, s1);
    for (const t of s2.getTracks()) b.addTrack(t, s2);
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    ready = true;
    for (const [to, c] of held) to.addIceCandidate(c).catch(() => {});
    // [first packet, first energy], as ARM_JS records them for a call.
    const at = [[null, null], [null, null]];
    const up = [null, null];
    a.addEventListener('connectionstatechange', () => { if (a.connectionState === 'connected') up[0] = Date.now(); });
    b.addEventListener('connectionstatechange', () => { if (b.connectionState === 'connected') up[1] = Date.now(); });
    const watch = async (pc, mine, now) => {
      (await pc.getStats()).forEach((r) => {
        if (r.type !== 'inbound-rtp' || r.kind !== 'audio' || !(r.bytesReceived > 0)) return;
        if (mine[0] === null) mine[0] = now;
        if (mine[1] === null && r.totalAudioEnergy > 0) mine[1] = now;
      });
    };
    while (at[0][1] === null || at[1][1] === null) {
      if (Date.now() - t0 > 20000) {
        const inbound = async (pc) => {
          const out = [];
          (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp') out.push([r.kind, r.bytesReceived, r.totalAudioEnergy]); });
          return out;
        };
        throw new Error(`no audio within 20 s: ${a.connectionState}/${b.connectionState} ` +
          `${JSON.stringify(await inbound(a))} ${JSON.stringify(await inbound(b))} ${JSON.stringify(config)}`);
      }
      await new Promise((r) => setTimeout(r, 10));
      const now = Date.now();
      await Promise.all([watch(a, at[0], now), watch(b, at[1], now)]);
    }
    cleanup();
    done({connected: Math.max(up[0], up[1]) - t0, packet: Math.max(at[0][0], at[1][0]) - t0, audible: Math.max(at[0][1], at[1][1]) - t0});
  } catch (e) {
    cleanup();
    done({error: String(e)});
  }
})();
"#;

/// Starts a probe for the next call: every `data-state` the status takes from
/// now on, and when the first peer connection other than the current one
/// first has inbound audio bytes (`bytesAt`) and audio energy (`audioAt`).
const ARM_JS: &str = r#"
const e2e = window.__e2e;
if (e2e.timer) clearInterval(e2e.timer);
if (e2e.observer) e2e.observer.disconnect();
const stateNow = () => {
  const s = document.querySelector('[data-testid="status"]');
  return s ? s.getAttribute('data-state') : null;
};
const run = {old: (window.earshot && window.earshot.pc) || null,
             audioAt: null, bytesAt: null, states: [stateNow()], busy: false};
e2e.run = run;
e2e.observer = new MutationObserver(() => {
  const s = stateNow();
  if (s !== run.states[run.states.length - 1]) run.states.push(s);
});
e2e.observer.observe(document.documentElement,
  {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
e2e.timer = setInterval(() => {
  const pc = window.earshot && window.earshot.pc;
  if (run.busy || !pc || pc === run.old) return;
  run.busy = true;
  pc.getStats().then(stats => {
    const now = Date.now();
    stats.forEach(r => {
      if (r.type !== 'inbound-rtp' || r.kind !== 'audio' || !(r.bytesReceived > 0)) return;
      if (run.bytesAt === null) run.bytesAt = now;
      if (run.audioAt === null && r.totalAudioEnergy > 0) run.audioAt = now;
    });
    if (run.audioAt !== null) { clearInterval(e2e.timer); e2e.timer = null; }
  }).catch(() => {}).finally(() => { run.busy = false; });
}, 10);
"#;

const PROBE_JS: &str = r#"
const e2e = window.__e2e, run = e2e.run || {};
return {clicks: e2e.clicks, audioAt: run.audioAt ?? null, bytesAt: run.bytesAt ?? null,
        states: run.states || []};
"#;

/// Starts watching the current peer connection: every change of its
/// connection and ICE state from now on.
const WATCH_CALL_JS: &str = r#"
const pc = window.earshot && window.earshot.pc;
if (!pc) return 'window.earshot.pc is null';
const w = {pc, conn: [pc.connectionState], ice: [pc.iceConnectionState]};
pc.addEventListener('connectionstatechange', () => w.conn.push(pc.connectionState));
pc.addEventListener('iceconnectionstatechange', () => w.ice.push(pc.iceConnectionState));
window.__e2e.watch = w;
return null;
"#;

const WATCHED_CALL_JS: &str = r#"
const w = window.__e2e.watch;
if (!w) return {error: 'not watching a call'};
return {same: !!window.earshot && window.earshot.pc === w.pc, conn: w.conn, ice: w.ice};
"#;

/// The stranger page's probes.
impl Browser<'_> {
    /// Starts recording states and audio for the next call (see `ARM_JS`).
    pub(crate) fn arm(&self) -> Result<()> {
        self.session.execute(ARM_JS, json!([]))?;
        Ok(())
    }

    fn probe(&self) -> Result<Value> {
        self.session.execute(PROBE_JS, json!([]))
    }

    /// Connected now, after some other state since [`Browser::arm`]: in a
    /// new call, not still showing the old one.
    pub(crate) fn newly_connected(&self) -> Result<bool> {
        let probe = self.probe()?;
        let states = probe["states"].as_array().cloned().unwrap_or_default();
        Ok(states.last() == Some(&json!("connected"))
            && states.iter().any(|s| s != &json!("connected")))
    }

    /// Starts recording the current call's peer connection states (see
    /// `WATCH_CALL_JS`), for [`Browser::check_call_unbroken`].
    fn watch_call(&self) -> Result<()> {
        let error = self.session.execute(WATCH_CALL_JS, json!([]))?;
        ensure!(
            error.is_null(),
            "{}: cannot watch the call: {error}",
            self.name
        );
        Ok(())
    }

    /// Since [`Browser::watch_call`] and [`Browser::arm`]: the page still has
    /// the same peer connection, it never left `connected` (ICE: `connected`
    /// or `completed`), and neither did the page's `data-state`.
    fn check_call_unbroken(&self) -> Result<()> {
        let w = self.session.execute(WATCHED_CALL_JS, json!([]))?;
        let states = self.probe()?["states"].clone();
        let all = |v: &Value, ok: &[&str]| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .all(|s| s.as_str().is_some_and(|s| ok.contains(&s)))
            })
        };
        ensure!(
            w["same"] == json!(true)
                && all(&w["conn"], &["connected"])
                && all(&w["ice"], &["connected", "completed"])
                && all(&states, &["connected"]),
            "{}: the call did not stay up: peer connection {w}, data-state since then {states}",
            self.name
        );
        Ok(())
    }

    /// Audio statistics of the current call (see `STATS_JS`).
    fn stats(&self) -> Result<Value> {
        self.audio_stats(None)
    }
}
