//! Browser end-to-end test: real Chromium browsers (Debian's `chromium` and
//! `chromium-driver`, fake microphone) meet, talk and chat through the real
//! `earshot` binary.
//!
//! WebRTC tests only run in a loopback-only network namespace, so every ICE
//! candidate and every packet stays on 127.0.0.1 (see `support::netns`).
//! `scripts/test` runs them that way with `EARSHOT_E2E=1`, which makes them
//! mandatory; a plain `cargo test` on a machine with a network skips them with
//! a notice.
//!
//! The scenario drives the page only through its `data-testid` elements and
//! reads `window.earshot.pc` (the current `RTCPeerConnection`) for stats. It
//! also measures time to audio: from the click that makes a match possible to
//! decoded audio with energy arriving on both sides, timed inside the pages
//! with `Date.now()` so that WebDriver round trips do not count.

mod support;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::fmt;
use std::time::{Duration, Instant};
use support::netns::{self, Gate};
use support::server::Server;
use support::webdriver::{self, ChromeDriver, Session};

/// How long any one step (a match, a call, audio, a chat message) may take.
const STEP: Duration = Duration::from_secs(20);
/// How many extra End + Start rounds feed the time-to-audio figure.
const EXTRA_ROUNDS: usize = 5;

/// Whether this WebRTC test runs here; prints why not when it does not.
fn should_run(test: &str) -> Result<bool> {
    match netns::gate()? {
        Gate::Skip(why) => {
            println!("note: {test} skipped: {why}");
            Ok(false)
        }
        Gate::Run { required } => match webdriver::missing_browser() {
            Some(missing) if required => bail!("EARSHOT_E2E=1 but {missing}"),
            Some(missing) => {
                println!("note: {test} skipped: {missing}");
                Ok(false)
            }
            None => Ok(true),
        },
    }
}

/// The WebDriver client against a static page: if this fails, the harness is
/// broken, not Earshot.
#[test]
fn browser_webdriver_client_drives_chromium() -> Result<()> {
    if !should_run("browser_webdriver_client_drives_chromium")? {
        return Ok(());
    }
    let driver = ChromeDriver::start()?;
    let session = driver.session()?;
    let page = "<title>t</title>\
        <button data-testid=\"go\" onclick=\"this.dataset.clicks = +(this.dataset.clicks || 0) + 1\">Go</button>\
        <button data-testid=\"off\" disabled>Off</button>\
        <input data-testid=\"text\">";
    session.goto(&format!(
        "data:text/html;charset=utf-8,{}",
        percent_encode(page)
    ))?;
    let go = session.testid("go")?;
    go.click()?;
    go.click()?;
    assert_eq!(go.attribute("data-clicks")?.as_deref(), Some("2"));
    assert_eq!(go.text()?, "Go");
    assert!(go.enabled()?);
    assert!(!session.testid("off")?.enabled()?);
    let input = session.testid("text")?;
    input.send_keys("héllo, wörld")?;
    let typed = session.execute(
        "return document.querySelector('[data-testid=text]').value + arguments[0]",
        json!(["!"]),
    )?;
    assert_eq!(typed, json!("héllo, wörld!"));
    input.clear()?;
    assert_eq!(input.property("value")?, json!(""));
    assert_eq!(input.attribute("value")?, None);
    let later = session.execute_async(
        "const done = arguments[arguments.length - 1]; setTimeout(() => done({n: arguments[0] * 2}), 50)",
        json!([21]),
    )?;
    assert_eq!(later, json!({"n": 42}));
    assert!(session.find("#missing").is_err());
    Ok(())
}

/// Two strangers meet, hear each other and chat; skips re-queue both sides
/// without re-matching the pair; End goes idle and re-queues the partner;
/// shared interests show; and the time to audio of every call is printed.
#[test]
fn browser_strangers_talk_and_chat() -> Result<()> {
    if !should_run("browser_strangers_talk_and_chat")? {
        return Ok(());
    }
    let mut server = Server::start(env!("CARGO_BIN_EXE_earshot"), &[])?;
    let driver = ChromeDriver::start()?;
    let url = server.url.clone();
    let opened: Vec<Result<Browser>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["A", "B", "C"]
            .into_iter()
            .map(|name| {
                let (driver, url) = (&driver, &url);
                scope.spawn(move || Browser::open(driver, name, url))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            })
            .collect()
    });
    let browsers = opened
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .with_context(|| {
            format!(
                "cannot open the page in Chromium; earshot output:\n{}",
                server.output_tail(40)
            )
        })?;

    let mut times = Vec::new();
    let started = Instant::now();
    let result = scenario(&browsers, &mut times);
    let elapsed = started.elapsed();
    report(&times);
    let verbose = std::env::var_os("EARSHOT_E2E_VERBOSE").is_some();
    if let Err(e) = &result {
        eprintln!("scenario failed after {elapsed:.1?}: {e:#}");
        for b in &browsers {
            match b.snapshot() {
                Ok(snap) => eprintln!("{snap}"),
                Err(e) => eprintln!("{}: no snapshot: {e:#}", b.name),
            }
            eprintln!("--- console of {} ---\n{}", b.name, b.session.console_log());
        }
        eprintln!(
            "--- earshot output (running: {}) ---\n{}",
            server.is_running(),
            server.output_tail(80)
        );
    } else {
        println!("browser scenario took {elapsed:.1?}");
        if verbose {
            for b in &browsers {
                println!("--- console of {} ---\n{}", b.name, b.session.console_log());
            }
            println!("--- earshot output ---\n{}", server.output_tail(200));
        }
    }
    result
}

fn scenario(browsers: &[Browser], times: &mut Vec<f64>) -> Result<()> {
    let [a, b, c] = browsers else {
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
    a.arm()?;
    b.arm()?;
    a.click("start")?;
    wait_for("A searching", &[a], |s| s[0].state == "searching")?;
    b.click("start")?;
    wait_for("A and B connected", &[a, b], |s| {
        s.iter().all(|s| s.state == "connected")
    })?;
    let since = a.clicked_at("start")?.max(b.clicked_at("start")?);
    times.push(time_to_audio(a, b, since)?);
    for x in [a, b] {
        check_audio_flows(x)?;
    }
    for (from, to) in [(a, b), (b, a)] {
        let text = format!("hello from {} to {}", from.name, to.name);
        from.testid("chat-input")?.send_keys(&text)?;
        from.click("chat-send")?;
        wait_for(&format!("{text:?} in {}'s chat log", to.name), &[to], |s| {
            s[0].chat.iter().any(|line| line.contains(&text))
        })?;
    }

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
        x,
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
    hold("C still searching", c, Duration::from_millis(500), |s| {
        s.state == "searching"
    })?;

    // 5. Extra rounds for the figure: Y presses Start, meets the waiting C,
    //    both hear audio; Y presses End, C is queued again.
    for round in 1..=EXTRA_ROUNDS {
        y.arm()?;
        c.arm()?;
        y.click("start")?;
        wait_for(
            &format!("round {round}: {} and C connected", y.name),
            &[y, c],
            |s| s.iter().all(|s| s.state == "connected"),
        )?;
        ensure!(c.newly_connected()?, "C never left the old call");
        times.push(time_to_audio(y, c, y.clicked_at("start")?)?);
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
fn is_ended(snap: &Snapshot) -> bool {
    (snap.state == "idle" || snap.state == "ended") && snap.start_enabled == Some(true)
}

/// Waits until both sides of a call decode audio with energy; milliseconds
/// from `since` (an epoch time from a page) to the later of the two.
fn time_to_audio(x: &Browser, y: &Browser, since: f64) -> Result<f64> {
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

/// Inbound audio keeps flowing (bytes grow over a second), carries sound
/// (the fake microphone beeps), and every ICE candidate is a loopback one.
fn check_audio_flows(x: &Browser) -> Result<()> {
    let first = x.stats()?;
    std::thread::sleep(Duration::from_millis(1000));
    let second = x.stats()?;
    let bytes = |s: &Value| s["bytes"].as_f64().unwrap_or(0.0);
    ensure!(
        second["inbound"].as_u64() == Some(1),
        "{}: expected one inbound audio stream: {second}",
        x.name
    );
    ensure!(
        bytes(&second) > bytes(&first),
        "{}: inbound audio bytes did not grow over 1 s: {first} then {second}",
        x.name
    );
    ensure!(
        second["energy"].as_f64().unwrap_or(0.0) > 0.0,
        "{}: inbound audio is silent: {second}",
        x.name
    );
    let candidates = second["candidates"].as_array().cloned().unwrap_or_default();
    ensure!(
        !candidates.is_empty(),
        "{}: no ICE candidates: {second}",
        x.name
    );
    for cand in &candidates {
        let address = cand["address"].as_str().unwrap_or_default();
        ensure!(
            address == "127.0.0.1" || address == "::1",
            "{}: non-loopback ICE candidate {cand}",
            x.name
        );
    }
    Ok(())
}

/// Prints the time-to-audio figure, and appends it to `$EARSHOT_E2E_REPORT`
/// when set (scripts/test shows that file after the run).
fn report(times: &[f64]) {
    if times.is_empty() {
        return;
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    let samples: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    let line = format!(
        "time to audio: median {median:.0} ms over {} calls (samples: {} ms; min {:.0}, max {:.0})",
        times.len(),
        samples.join(", "),
        sorted[0],
        sorted[sorted.len() - 1],
    );
    println!("{line}");
    if let Ok(path) = std::env::var("EARSHOT_E2E_REPORT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Polls the pages of `browsers` until `ok` holds for their snapshots (in the
/// same order); fails after [`STEP`] with what every page shows.
fn wait_for(
    what: &str,
    browsers: &[&Browser],
    mut ok: impl FnMut(&[Snapshot]) -> bool,
) -> Result<Vec<Snapshot>> {
    let deadline = Instant::now() + STEP;
    loop {
        let snaps = browsers
            .iter()
            .map(|b| b.snapshot())
            .collect::<Result<Vec<_>>>()?;
        if ok(&snaps) {
            return Ok(snaps);
        }
        if Instant::now() > deadline {
            let pages: Vec<String> = snaps.iter().map(|s| format!("  {s}")).collect();
            bail!(
                "timed out after {STEP:?} waiting for {what}; the pages show:\n{}",
                pages.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `ok` keeps holding for `x` for `time`.
fn hold(what: &str, x: &Browser, time: Duration, ok: impl Fn(&Snapshot) -> bool) -> Result<()> {
    let end = Instant::now() + time;
    while Instant::now() < end {
        let snap = x.snapshot()?;
        ensure!(ok(&snap), "expected {what}, but: {snap}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What a page shows, from one script call.
struct Snapshot {
    name: &'static str,
    /// `data-state` of the status element.
    state: String,
    status: String,
    /// `window.earshot.state`, as text.
    hook: String,
    has_pc: bool,
    start_enabled: Option<bool>,
    shared: String,
    chat: Vec<String>,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: data-state={:?} status={:?} earshot.state={} pc={} start_enabled={:?} shared={:?} chat={:?}",
            self.name,
            self.state,
            self.status,
            self.hook,
            self.has_pc,
            self.start_enabled,
            self.shared,
            self.chat
        )
    }
}

const SNAPSHOT_JS: &str = r#"
const q = id => document.querySelector(`[data-testid="${id}"]`);
const text = el => el ? el.textContent.replace(/\s+/g, ' ').trim() : '';
const status = q('status'), start = q('start'), log = q('chat-log');
let hook;
try {
  const e = window.earshot;
  hook = e === undefined ? 'no window.earshot' : JSON.stringify(e.state);
} catch (err) { hook = 'unreadable: ' + err; }
return {
  state: status ? status.getAttribute('data-state') || '' : 'no status element',
  status: text(status),
  hook: String(hook),
  pc: !!(window.earshot && window.earshot.pc),
  startEnabled: start ? !start.disabled : null,
  shared: text(q('shared-interests')),
  chat: log ? Array.from(log.children, text) : [],
};
"#;

/// Records in the page when each `data-testid` element was last clicked.
const CLICK_LOG_JS: &str = r#"
window.__e2e = {clicks: {}};
document.addEventListener('click', ev => {
  const el = ev.target && ev.target.closest && ev.target.closest('[data-testid]');
  if (el) window.__e2e.clicks[el.getAttribute('data-testid')] = Date.now();
}, true);
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

const STATS_JS: &str = r#"
const done = arguments[arguments.length - 1];
const pc = window.earshot && window.earshot.pc;
if (!pc) { done({error: 'window.earshot.pc is null'}); return; }
pc.getStats().then(stats => {
  const out = {inbound: 0, bytes: 0, packets: 0, energy: 0, candidates: [],
               connectionState: pc.connectionState};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.inbound += 1;
      out.bytes += r.bytesReceived || 0;
      out.packets += r.packetsReceived || 0;
      out.energy += r.totalAudioEnergy || 0;
    }
    if (r.type === 'local-candidate' || r.type === 'remote-candidate') {
      out.candidates.push({kind: r.type, type: r.candidateType, protocol: r.protocol,
                           address: r.address ?? r.ip ?? null, port: r.port});
    }
  });
  done(out);
}, err => done({error: String(err)}));
"#;

/// One Chromium with the Earshot page open.
struct Browser<'d> {
    name: &'static str,
    session: Session<'d>,
}

impl<'d> Browser<'d> {
    fn open(driver: &'d ChromeDriver, name: &'static str, url: &str) -> Result<Browser<'d>> {
        let session = driver.session()?;
        session.goto(url)?;
        let browser = Browser { name, session };
        // The page is a module script: wait for it to render its controls.
        let deadline = Instant::now() + STEP;
        while browser.session.testid("start").is_err() || browser.snapshot()?.state.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "{name}: the page at {url} never showed [data-testid=start] and a status \
                     with data-state; it shows: {}",
                    browser.snapshot()?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        browser.session.execute(CLICK_LOG_JS, json!([]))?;
        Ok(browser)
    }

    fn testid(&self, id: &str) -> Result<webdriver::Element<'_, 'd>> {
        self.session
            .testid(id)
            .with_context(|| format!("{}: no [data-testid={id}]", self.name))
    }

    fn click(&self, id: &str) -> Result<()> {
        self.testid(id)?
            .click()
            .with_context(|| format!("{}: cannot click {id}", self.name))
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let v = self
            .session
            .execute(SNAPSHOT_JS, json!([]))
            .with_context(|| format!("{}: cannot read the page", self.name))?;
        let s = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        Ok(Snapshot {
            name: self.name,
            state: s("state"),
            status: s("status"),
            hook: s("hook"),
            has_pc: v["pc"] == json!(true),
            start_enabled: v["startEnabled"].as_bool(),
            shared: s("shared"),
            chat: v["chat"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| l.as_str().unwrap_or_default().into())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Starts recording states and audio for the next call (see `ARM_JS`).
    fn arm(&self) -> Result<()> {
        self.session.execute(ARM_JS, json!([]))?;
        Ok(())
    }

    fn probe(&self) -> Result<Value> {
        self.session.execute(PROBE_JS, json!([]))
    }

    /// Connected now, after some other state since [`Browser::arm`]: in a
    /// new call, not still showing the old one.
    fn newly_connected(&self) -> Result<bool> {
        let probe = self.probe()?;
        let states = probe["states"].as_array().cloned().unwrap_or_default();
        Ok(states.last() == Some(&json!("connected"))
            && states.iter().any(|s| s != &json!("connected")))
    }

    /// When the page saw its last click on `id`, in epoch milliseconds.
    fn clicked_at(&self, id: &str) -> Result<f64> {
        let probe = self.probe()?;
        probe["clicks"][id]
            .as_f64()
            .with_context(|| format!("{}: no click on {id} recorded", self.name))
    }

    fn stats(&self) -> Result<Value> {
        let stats = self.session.execute_async(STATS_JS, json!([]))?;
        if let Some(error) = stats["error"].as_str() {
            bail!("{}: no stats: {error}", self.name);
        }
        Ok(stats)
    }
}

/// `text` with everything but ASCII letters and digits percent-encoded, for a
/// `data:` URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
