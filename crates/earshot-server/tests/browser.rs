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
//! Each scenario (`Run::scenario`) starts its own server, at trace level, and
//! its own browsers. The scenarios drive the page only through its
//! `data-testid` elements and read `window.earshot.pc` (the current
//! `RTCPeerConnection`) for stats; a script installed before the page's own
//! records the WebSockets it opens and how they close. The strangers
//! scenario also measures time to audio: from the click that makes a match
//! possible to decoded audio with energy arriving on both sides, timed inside
//! the pages with `Date.now()` so that WebDriver round trips do not count.
//! The restart scenario stops the server under an established call and
//! starts a new one on the same port.
//!
//! Every scenario ends with privacy checks (`Run::finish`): nothing stored
//! in any page (cookies, Web Storage, IndexedDB), and no chat text, SDP or
//! ICE candidate anywhere in the server's trace-level output.

mod support;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, Instant};
use support::netns::{self, Gate};
use support::server::{Server, check_log};
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

/// Every server these tests start logs at trace level, so that the privacy
/// check at the end of each scenario sees all the server can log.
const SERVER_ARGS: &[&str] = &["--log", "trace"];
/// Strings no server log may contain, besides the chat texts a scenario sent
/// (see `Run::finish`): ICE candidates and SDP (`v=0`, and two lines every
/// browser's SDP has).
const NEVER_LOGGED: &[&str] = &["candidate:", "v=0", "a=ice-ufrag", "a=fingerprint"];
/// How long the restart scenario keeps the server down.
const DOWNTIME: Duration = Duration::from_secs(2);
/// How long a SIGTERM'd server may take to exit (it closes every socket with
/// 1012 and waits for the clients to answer, a second at most each).
const STOP: Duration = Duration::from_secs(10);

/// Two strangers meet, hear each other and chat; skips re-queue both sides
/// without re-matching the pair; End goes idle and re-queues the partner;
/// shared interests show; and the time to audio of every call is printed.
/// Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_strangers_talk_and_chat() -> Result<()> {
    Run::scenario("browser_strangers_talk_and_chat", &["A", "B", "C"], |run| {
        let mut times = Vec::new();
        let result = strangers_scenario(run, &mut times);
        report(&times);
        result
    })
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
        restart_scenario,
    )
}

/// One scenario's world: its browsers, its servers (the current one last)
/// and every chat text it sent.
struct Run<'d> {
    browsers: Vec<Browser<'d>>,
    servers: RefCell<Vec<Server>>,
    said: RefCell<Vec<String>>,
}

impl Run<'_> {
    /// Starts a server, a chromedriver and one browser per name with the page
    /// open, runs `scenario`, then `finish`. On failure, prints what every
    /// page shows, its console and the servers' output.
    fn scenario(
        test: &str,
        names: &[&'static str],
        scenario: impl FnOnce(&Run) -> Result<()>,
    ) -> Result<()> {
        if !should_run(test)? {
            return Ok(());
        }
        let server = Server::start(env!("CARGO_BIN_EXE_earshot"), SERVER_ARGS)?;
        let driver = ChromeDriver::start()?;
        let browsers = Browser::open_all(&driver, names, &server.url).with_context(|| {
            format!(
                "cannot open the page in Chromium; earshot output:\n{}",
                server.output_tail(40)
            )
        })?;
        let run = Run {
            browsers,
            servers: RefCell::new(vec![server]),
            said: RefCell::new(Vec::new()),
        };
        let started = Instant::now();
        let result = scenario(&run).and_then(|()| run.finish());
        let elapsed = started.elapsed();
        let verbose = std::env::var_os("EARSHOT_E2E_VERBOSE").is_some();
        if let Err(e) = &result {
            eprintln!("{test} failed after {elapsed:.1?}: {e:#}");
            for b in &run.browsers {
                match b.snapshot() {
                    Ok(snap) => eprintln!("{snap}"),
                    Err(e) => eprintln!("{}: no snapshot: {e:#}", b.name),
                }
                eprintln!("--- console of {} ---\n{}", b.name, b.session.console_log());
            }
            for (i, server) in run.servers.borrow_mut().iter_mut().enumerate() {
                eprintln!(
                    "--- earshot #{} output (running: {}) ---\n{}",
                    i + 1,
                    server.is_running(),
                    server.output_tail(80)
                );
            }
        } else {
            println!("{test}: scenario took {elapsed:.1?}");
            if verbose {
                for b in &run.browsers {
                    println!("--- console of {} ---\n{}", b.name, b.session.console_log());
                }
                for (i, server) in run.servers.borrow().iter().enumerate() {
                    println!(
                        "--- earshot #{} output ---\n{}",
                        i + 1,
                        server.output_tail(200)
                    );
                }
            }
        }
        result
    }

    /// The privacy checks that end every scenario. Every page: no cookie (as
    /// `document.cookie` and as WebDriver sees them, `HttpOnly` included),
    /// empty `localStorage` and `sessionStorage`, no IndexedDB database.
    /// Then the server is stopped (SIGTERM, so that its last lines are in)
    /// and the output of every server of the run is checked with
    /// `server::check_log`: no chat text the run sent, nothing of
    /// [`NEVER_LOGGED`], and proof that it was a trace log of the session.
    fn finish(&self) -> Result<()> {
        for b in &self.browsers {
            b.check_nothing_stored()?;
        }
        let status = self.stop_server()?;
        ensure!(
            status.success(),
            "earshot exited with {status} after SIGTERM"
        );
        let said = self.said.borrow();
        ensure!(
            !said.is_empty(),
            "the scenario sent no chat text to look for"
        );
        let mut secrets: Vec<&str> = NEVER_LOGGED.to_vec();
        secrets.extend(said.iter().map(String::as_str));
        for (i, server) in self.servers.borrow().iter().enumerate() {
            check_log(&server.output(), &secrets, &["matched"])
                .with_context(|| format!("privacy: the log of earshot #{}", i + 1))?;
        }
        Ok(())
    }

    /// Stops the current server with SIGTERM and waits for it to exit.
    fn stop_server(&self) -> Result<std::process::ExitStatus> {
        let mut servers = self.servers.borrow_mut();
        let server = servers.last_mut().context("no server")?;
        server.stop(STOP)
    }

    /// Starts a new server on the port of the last one (stopped by now).
    fn restart_server(&self) -> Result<()> {
        let port = self.servers.borrow().last().context("no server")?.port();
        let server = Server::start_on(
            env!("CARGO_BIN_EXE_earshot"),
            &format!("127.0.0.1:{port}"),
            SERVER_ARGS,
        )?;
        ensure!(
            server.port() == port,
            "the new server announced {} instead of port {port}",
            server.url
        );
        self.servers.borrow_mut().push(server);
        Ok(())
    }

    /// `from` types `text` into the chat and sends it; it must show up in
    /// `to`'s chat log. The text is remembered for the log check.
    fn chat(&self, from: &Browser, to: &Browser, text: &str) -> Result<()> {
        self.said.borrow_mut().push(text.to_string());
        from.testid("chat-input")?.send_keys(text)?;
        from.click("chat-send")?;
        wait_for(&format!("{text:?} in {}'s chat log", to.name), &[to], |s| {
            s[0].chat.iter().any(|line| line.contains(text))
        })?;
        Ok(())
    }
}

/// `a` presses Start, then `b`: they meet, hear each other (see
/// [`check_audio_flows`]) and chat both ways. The time to audio.
fn meet_and_chat(run: &Run, a: &Browser, b: &Browser) -> Result<f64> {
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
            to,
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
        run.chat(from, to, &text)?;
    }
    hold(
        "both pages connected while the server is down",
        &[a, b],
        DOWNTIME.saturating_sub(down_at.elapsed()),
        |s| s.state == "connected",
    )?;
    let after = [a.stats()?, b.stats()?];
    for (x, (first, second)) in [a, b].into_iter().zip(before.iter().zip(&after)) {
        check_audio_between(x, first, second, "while the server was down")?;
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

fn strangers_scenario(run: &Run, times: &mut Vec<f64>) -> Result<()> {
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

/// In every one of `browsers`, inbound audio keeps flowing over a second:
/// see [`check_audio_between`].
fn check_audio_flows(browsers: &[&Browser]) -> Result<()> {
    let first = browsers
        .iter()
        .map(|x| x.stats())
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    for (x, first) in browsers.iter().zip(&first) {
        check_audio_between(x, first, &x.stats()?, "over 1 s")?;
    }
    Ok(())
}

/// Between two [`Browser::stats`] of `x`, `first` and `second` (taken
/// `when`): inbound audio kept flowing (bytes grew) on a connected peer
/// connection, carries sound (the fake microphone beeps), and every ICE
/// candidate is a loopback one.
fn check_audio_between(x: &Browser, first: &Value, second: &Value, when: &str) -> Result<()> {
    let bytes = |s: &Value| s["bytes"].as_f64().unwrap_or(0.0);
    ensure!(
        second["connectionState"] == json!("connected"),
        "{}: peer connection not connected {when}: {second}",
        x.name
    );
    ensure!(
        second["inbound"].as_u64() == Some(1),
        "{}: expected one inbound audio stream: {second}",
        x.name
    );
    ensure!(
        bytes(second) > bytes(first),
        "{}: inbound audio bytes did not grow {when}: {first} then {second}",
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

/// Checks that `ok` keeps holding for the page of every one of `browsers`
/// for `time`.
fn hold(
    what: &str,
    browsers: &[&Browser],
    time: Duration,
    ok: impl Fn(&Snapshot) -> bool,
) -> Result<()> {
    let end = Instant::now() + time;
    while Instant::now() < end {
        for x in browsers {
            let snap = x.snapshot()?;
            ensure!(ok(&snap), "expected {what}, but: {snap}");
        }
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

/// Installed before the page's own scripts: keeps a record of every
/// WebSocket the page opens (when, whether it got a `welcome`, how it
/// closed) in `window.__e2eSockets`. It only listens, with
/// `addEventListener`, so the page's own handlers are untouched.
const SOCKET_LOG_JS: &str = r#"
(() => {
  const Native = window.WebSocket;
  if (typeof Native !== 'function') return;
  const log = [];
  Object.defineProperty(window, '__e2eSockets', {value: log});
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const rec = {opened: Date.now(), open: null, welcome: null, close: null};
      log.push(rec);
      this.addEventListener('open', () => { rec.open = Date.now(); });
      this.addEventListener('message', (ev) => {
        if (rec.welcome !== null || typeof ev.data !== 'string') return;
        try { if (JSON.parse(ev.data).type === 'welcome') rec.welcome = Date.now(); } catch {}
      });
      this.addEventListener('close', (ev) => {
        rec.close = {code: ev.code, reason: ev.reason, at: Date.now()};
      });
    }
  };
})();
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

/// What the page keeps on the device.
const STORED_JS: &str = r#"
const done = arguments[arguments.length - 1];
const out = {cookie: document.cookie, local: localStorage.length,
             session: sessionStorage.length, indexedDB: []};
const dbs = indexedDB.databases ? indexedDB.databases() : Promise.resolve([]);
dbs.then(list => { out.indexedDB = list.map(d => d.name); done(out); },
         err => { out.indexedDB = ['(error: ' + err + ')']; done(out); });
"#;

/// One Chromium with the Earshot page open.
struct Browser<'d> {
    name: &'static str,
    session: Session<'d>,
}

impl<'d> Browser<'d> {
    /// One browser per name, opened in parallel.
    fn open_all(
        driver: &'d ChromeDriver,
        names: &[&'static str],
        url: &str,
    ) -> Result<Vec<Browser<'d>>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|&name| scope.spawn(move || Browser::open(driver, name, url)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                })
                .collect()
        })
    }

    fn open(driver: &'d ChromeDriver, name: &'static str, url: &str) -> Result<Browser<'d>> {
        let session = driver.session()?;
        session
            .add_init_script(SOCKET_LOG_JS)
            .with_context(|| format!("{name}: cannot install the WebSocket log"))?;
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

    /// Every WebSocket the page opened, oldest first (see `SOCKET_LOG_JS`).
    fn sockets(&self) -> Result<Vec<Value>> {
        match self
            .session
            .execute("return window.__e2eSockets || null", json!([]))?
        {
            Value::Array(sockets) => Ok(sockets),
            other => bail!("{}: no WebSocket log: {other}", self.name),
        }
    }

    /// Privacy: no cookie (neither in `document.cookie` nor any the browser
    /// holds for the page), empty `localStorage` and `sessionStorage`, no
    /// IndexedDB database.
    fn check_nothing_stored(&self) -> Result<()> {
        let stored = self.session.execute_async(STORED_JS, json!([]))?;
        ensure!(
            stored == json!({"cookie": "", "local": 0, "session": 0, "indexedDB": []}),
            "{}: the page stored something: {stored}",
            self.name
        );
        let cookies = self.session.cookies()?;
        ensure!(
            cookies.is_empty(),
            "{}: the browser holds cookies for the page: {cookies:?}",
            self.name
        );
        Ok(())
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
