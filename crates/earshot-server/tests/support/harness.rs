//! The browser scenario harness: a [`Run`] is one scenario's world (its
//! `earshot` servers and its browsers, Chromium or Firefox), a [`Browser`]
//! one page, and the free functions poll pages, check audio statistics and
//! write figures to the report.
//!
//! Pages are driven only through their `data-testid` elements and read
//! through the read-only `window.earshot` hook. A script installed before
//! the page's own ([`INIT_JS`]) records what the tests need to see from the
//! inside: every click on a `data-testid` element, every WebSocket and how it
//! closed, every `RTCPeerConnection` and the states it went through, and the
//! `verifier` and `auth` values the page sent (so the log check can look for
//! them), and every safety-words message the page sent on a data channel
//! (`window.__e2eWords.sent`). It only listens, unless a test sets
//! `__e2eWords.drop` (safety-words messages are not sent) or
//! `__e2eWords.tamperReveal` (the nonce of a `safety_reveal` is changed), as
//! a server in the middle might.
//!
//! Every scenario ends with the privacy checks of [`Run::finish`].

use super::netns::{self, Gate};
use super::server::{Server, check_log};
use super::webdriver::{self, ChromeDriver, Session};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any one step (a match, a call, audio, a chat message) may take.
pub const STEP: Duration = Duration::from_secs(20);
/// Every server these tests start logs at trace level, so that the privacy
/// check at the end of each scenario sees all the server can log. Every
/// browser of a scenario comes from 127.0.0.1, where in life each would
/// have its own address, so the cap on TCP connections per client address
/// (HTTP keep-alive connections included) is raised to fit six of them.
pub const SERVER_ARGS: &[&str] = &["--log", "trace", "--max-connections-per-client", "200"];
/// Strings no server log may contain, besides the chat texts and other
/// secrets a scenario used (see [`Run::finish`]): ICE candidates and SDP
/// (`v=0`, and two lines every browser's SDP has).
pub const NEVER_LOGGED: &[&str] = &["candidate:", "v=0", "a=ice-ufrag", "a=fingerprint"];
/// How long a SIGTERM'd server may take to exit (it closes every socket with
/// 1012 and waits for the clients to answer, a second at most each).
pub const STOP: Duration = Duration::from_secs(10);
/// At most this many browsers at once across the scenarios that the test
/// harness runs in parallel: the machine this runs on may have two cores.
pub const MAX_BROWSERS: usize = 6;

/// Whether this WebRTC test runs here; prints why not when it does not.
pub fn should_run(test: &str) -> Result<bool> {
    should_run_with(test, false)
}

/// [`should_run`], for a test that also needs Firefox if `firefox`.
pub fn should_run_with(test: &str, firefox: bool) -> Result<bool> {
    match netns::gate()? {
        Gate::Skip(why) => {
            println!("note: {test} skipped: {why}");
            Ok(false)
        }
        Gate::Run { required } => match webdriver::missing_browser()
            .or_else(|| firefox.then(webdriver::missing_firefox).flatten())
        {
            Some(missing) if required => bail!("EARSHOT_E2E=1 but {missing}"),
            Some(missing) => {
                println!("note: {test} skipped: {missing}");
                Ok(false)
            }
            None => Ok(true),
        },
    }
}

/// Browsers in use by the scenarios running now, against [`MAX_BROWSERS`].
static BROWSERS_IN_USE: Mutex<usize> = Mutex::new(0);
static BROWSERS_FREED: Condvar = Condvar::new();

/// Some of the [`MAX_BROWSERS`], held until dropped.
pub struct BrowserSlots(usize);

impl BrowserSlots {
    /// Waits until `n` browsers (at most all of them) may start.
    pub fn reserve(n: usize) -> BrowserSlots {
        let n = n.min(MAX_BROWSERS);
        let mut in_use = BROWSERS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use + n > MAX_BROWSERS {
            in_use = BROWSERS_FREED
                .wait(in_use)
                .unwrap_or_else(|e| e.into_inner());
        }
        *in_use += n;
        BrowserSlots(n)
    }
}

impl Drop for BrowserSlots {
    fn drop(&mut self) {
        let mut in_use = BROWSERS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        *in_use -= self.0;
        BROWSERS_FREED.notify_all();
    }
}

/// What a scenario's world needs beyond the defaults of
/// [`Run::scenario_with`] (see [`Run::scenario_setup`]).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Flags for every server of the run, after [`SERVER_ARGS`] (say
    /// `--pow always`).
    pub server_args: Vec<String>,
    /// Whether chromedriver keeps each browser's performance log, the
    /// DevTools network events that [`Browser::network_events`] reads.
    pub network_log: bool,
    /// Where the first server listens for HTTP [default: `127.0.0.1:0`].
    pub listen: Option<String>,
    /// More flags for every Chromium of the run (say one that trusts a
    /// test certificate).
    pub chromium_args: Vec<String>,
    /// The browsers that are Firefox (by name); the others are Chromium.
    /// A scenario with any runs again, alone, in a network namespace of its
    /// own (see `netns::rerun_in_veth_namespace`), where ICE candidates
    /// also carry `netns::VETH_ADDRESS`.
    pub firefox: Vec<&'static str>,
    /// Runs alone in a namespace with a veth pair (as with Firefox), with
    /// Chromium offering no loopback candidates: calls go over the veth
    /// address, which the scenario may change (`netns::move_address`).
    pub roaming: bool,
}

/// One scenario's world: its browsers, its servers (the current one last),
/// every chat text it sent and the other secrets it used.
pub struct Run<'d> {
    pub browsers: Vec<Browser<'d>>,
    pub servers: RefCell<Vec<Server>>,
    said: RefCell<Vec<String>>,
    secrets: RefCell<Vec<String>>,
    log_shows: &'static [&'static str],
    /// Every flag the servers of this run get (also after a restart).
    server_args: Vec<String>,
}

impl Run<'_> {
    /// Starts a server, a chromedriver and one browser per name with the home
    /// page open, runs `scenario`, then `finish`, which also checks that the
    /// server's log shows every one of `log_shows` (proof that it saw the
    /// session). On failure, prints what every page shows, its console and
    /// the servers' output.
    pub fn scenario(
        test: &str,
        names: &[&'static str],
        log_shows: &'static [&'static str],
        scenario: impl FnOnce(&Run) -> Result<()>,
    ) -> Result<()> {
        Run::scenario_with(test, names, names.len(), log_shows, scenario)
    }

    /// [`Run::scenario`] where only the first `at_home` browsers open the
    /// home page; the others start with no page, for the scenario to open
    /// one ([`Browser::goto`]), as someone who was sent a link does.
    pub fn scenario_with(
        test: &str,
        names: &[&'static str],
        at_home: usize,
        log_shows: &'static [&'static str],
        scenario: impl FnOnce(&Run) -> Result<()>,
    ) -> Result<()> {
        Run::scenario_setup(test, names, at_home, log_shows, &Setup::default(), scenario)
    }

    /// [`Run::scenario_with`], with the servers and browsers set up as
    /// `setup` says.
    pub fn scenario_setup(
        test: &str,
        names: &[&'static str],
        at_home: usize,
        log_shows: &'static [&'static str],
        setup: &Setup,
        scenario: impl FnOnce(&Run) -> Result<()>,
    ) -> Result<()> {
        let firefox = !setup.firefox.is_empty();
        if !should_run_with(test, firefox)? {
            return Ok(());
        }
        if (firefox || setup.roaming) && !netns::in_veth_namespace() {
            // The browsers it starts there count against this process's
            // budget all the same.
            let _slots = BrowserSlots::reserve(names.len());
            let started = Instant::now();
            let output = netns::rerun_in_veth_namespace(test)?;
            println!("{output}");
            println!(
                "{test}: took {:.1?} in its own network namespace",
                started.elapsed()
            );
            return Ok(());
        }
        let waiting = Instant::now();
        let _slots = BrowserSlots::reserve(names.len());
        let waited = waiting.elapsed();
        if waited > Duration::from_millis(100) {
            println!("{test}: waited {waited:.1?} for other scenarios' browsers to close");
        }
        let server_args: Vec<String> = SERVER_ARGS
            .iter()
            .map(|a| a.to_string())
            .chain(setup.server_args.iter().cloned())
            .collect();
        let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
        let listen = setup.listen.as_deref().unwrap_or("127.0.0.1:0");
        let server = Server::start_on(&super::earshot_binary(), listen, &args)?;
        let driver = ChromeDriver::start()?;
        let browsers = Browser::open_all_with(&driver, names, at_home, &server.url, setup)
            .with_context(|| {
                format!(
                    "cannot open the page in a browser; earshot output:\n{}",
                    server.output_tail(40)
                )
            })?;
        let run = Run {
            browsers,
            servers: RefCell::new(vec![server]),
            said: RefCell::new(Vec::new()),
            secrets: RefCell::new(Vec::new()),
            log_shows,
            server_args,
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

    /// The browser called `name`.
    pub fn browser(&self, name: &str) -> Result<&Browser<'_>> {
        self.browsers
            .iter()
            .find(|b| b.name == name)
            .with_context(|| format!("no browser {name}"))
    }

    /// Something the server must never log (a passphrase, a room name),
    /// looked for by [`Run::finish`].
    pub fn secret(&self, text: &str) {
        self.secrets.borrow_mut().push(text.to_string());
    }

    /// A text that went between two clients some other way than the chat
    /// of [`Run::chat`] (say inside a `signal` a test client sent through
    /// the server): looked for by [`Run::finish`] like a chat text, and it
    /// counts as one for its check that the scenario sent something.
    pub fn relayed(&self, text: &str) {
        self.said.borrow_mut().push(text.to_string());
    }

    /// `earshot_NAME` in the current server's `/metrics`.
    pub fn metric(&self, name: &str) -> Result<u64> {
        self.servers
            .borrow()
            .last()
            .context("no server")?
            .metric(name)
    }

    /// `http://127.0.0.1:PORT/` of the current server.
    pub fn server_url(&self) -> Result<String> {
        Ok(self
            .servers
            .borrow()
            .last()
            .context("no server")?
            .url
            .clone())
    }

    /// The privacy checks that end every scenario. Every page: no cookie (as
    /// `document.cookie` and as WebDriver sees them, `HttpOnly` included),
    /// empty `localStorage` and `sessionStorage`, no IndexedDB database.
    /// Then the server is stopped (SIGTERM, so that its last lines are in)
    /// and the output of every server of the run is checked with
    /// `server::check_log`: no chat text the run sent, no other secret it
    /// registered, no room `verifier` or fingerprint `auth` any page sent,
    /// nothing of [`NEVER_LOGGED`], and proof that it was a trace log of the
    /// session.
    pub fn finish(&self) -> Result<()> {
        let mut sent = Vec::new();
        for b in &self.browsers {
            b.check_nothing_stored()?;
            let v = b.execute("return window.__e2eSent || null", json!([]))?;
            for key in ["verifiers", "auths"] {
                let values = v[key]
                    .as_array()
                    .with_context(|| format!("{}: no record of sent {key}: {v}", b.name))?;
                sent.extend(values.iter().filter_map(|s| s.as_str().map(String::from)));
            }
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
        let others = self.secrets.borrow();
        let mut secrets: Vec<&str> = NEVER_LOGGED.to_vec();
        secrets.extend(said.iter().map(String::as_str));
        secrets.extend(others.iter().map(String::as_str));
        secrets.extend(sent.iter().map(String::as_str));
        for (i, server) in self.servers.borrow().iter().enumerate() {
            check_log(&server.output(), &secrets, self.log_shows)
                .with_context(|| format!("privacy: the log of earshot #{}", i + 1))?;
        }
        Ok(())
    }

    /// Stops the current server with SIGTERM and waits for it to exit.
    pub fn stop_server(&self) -> Result<std::process::ExitStatus> {
        let mut servers = self.servers.borrow_mut();
        let server = servers.last_mut().context("no server")?;
        server.stop(STOP)
    }

    /// Starts a new server on the port of the last one (stopped by now).
    pub fn restart_server(&self) -> Result<()> {
        let port = self.servers.borrow().last().context("no server")?.port();
        let args: Vec<&str> = self.server_args.iter().map(String::as_str).collect();
        let server = Server::start_on(
            &super::earshot_binary(),
            &format!("127.0.0.1:{port}"),
            &args,
        )?;
        ensure!(
            server.port() == port,
            "the new server announced {} instead of port {port}",
            server.url
        );
        self.servers.borrow_mut().push(server);
        Ok(())
    }

    /// Starts one more server with the run's flags (another node sharing
    /// the same Redis, say) and returns its URL. It goes first in
    /// `servers`, so the current server stays the one [`Run::finish`] stops;
    /// its log is checked all the same.
    pub fn start_node(&self) -> Result<String> {
        let args: Vec<&str> = self.server_args.iter().map(String::as_str).collect();
        let server = Server::start(&super::earshot_binary(), &args)?;
        let url = server.url.clone();
        self.servers.borrow_mut().insert(0, server);
        Ok(url)
    }

    /// `from` types `text` into the chat and sends it; it must show up in the
    /// chat log of every one of `to`. The text is remembered for the log
    /// check.
    pub fn chat(&self, from: &Browser, to: &[&Browser], text: &str) -> Result<()> {
        self.said.borrow_mut().push(text.to_string());
        from.testid("chat-input")?.send_keys(text)?;
        from.click("chat-send")?;
        let names: Vec<&str> = to.iter().map(|b| b.name).collect();
        wait_for(
            &format!("{text:?} in the chat log of {}", names.join(", ")),
            to,
            |s| {
                s.iter()
                    .all(|s| s.chat.iter().any(|line| line.contains(text)))
            },
        )?;
        Ok(())
    }
}

/// The browsers close in parallel: a Firefox takes seconds to quit.
impl Drop for Run<'_> {
    fn drop(&mut self) {
        let browsers = std::mem::take(&mut self.browsers);
        std::thread::scope(|scope| {
            for b in browsers {
                scope.spawn(move || drop(b));
            }
        });
    }
}

/// Polls the pages of `browsers` until `ok` holds for their snapshots (in the
/// same order); fails after [`STEP`] with what every page shows.
pub fn wait_for(
    what: &str,
    browsers: &[&Browser],
    ok: impl FnMut(&[Snapshot]) -> bool,
) -> Result<Vec<Snapshot>> {
    wait_for_within(what, STEP, browsers, ok)
}

/// [`wait_for`] with its own time limit.
pub fn wait_for_within(
    what: &str,
    limit: Duration,
    browsers: &[&Browser],
    mut ok: impl FnMut(&[Snapshot]) -> bool,
) -> Result<Vec<Snapshot>> {
    let deadline = Instant::now() + limit;
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
                "timed out after {limit:?} waiting for {what}; the pages show:\n{}",
                pages.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Calls `check` until it gives `Ok(Ok(value))`; `Ok(Err(why))` means not
/// yet, and after `limit` the last `why` is the error.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Result<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match check()? {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() > deadline => {
                bail!("timed out after {limit:?} waiting for {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Checks that `ok` keeps holding for the page of every one of `browsers`
/// for `time`.
pub fn hold(
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

/// Between two audio statistics of one peer connection, `first` and `second`
/// (taken `when`; objects with `connectionState`, `inbound`, `bytes`,
/// `energy` and `candidates`, as the scenarios' stats scripts make them):
/// inbound audio kept flowing (bytes grew) on a connected peer connection,
/// carries sound (the fake microphone beeps), and every ICE candidate is a
/// loopback one (or, in a Firefox test's namespace, its veth address: see
/// `netns::is_inside`). `who` names the receiving side in errors.
/// The embedded TURN server's advertised relay address in the tests that
/// hide IPs: a documentation address on no interface of the test namespace,
/// so nothing can be sent to it. Relay candidates carry it; a browser
/// reaches them only through the TURN server on 127.0.0.1.
pub const TURN_PUBLIC_STANDIN: &str = "192.0.2.10";

pub fn check_audio(who: &str, first: &Value, second: &Value, when: &str) -> Result<()> {
    let bytes = |s: &Value| s["bytes"].as_f64().unwrap_or(0.0);
    ensure!(
        second["connectionState"] == json!("connected"),
        "{who}: peer connection not connected {when}: {second}"
    );
    ensure!(
        second["inbound"].as_u64() == Some(1),
        "{who}: expected one inbound audio stream: {second}"
    );
    ensure!(
        bytes(second) > bytes(first),
        "{who}: inbound audio bytes did not grow {when}: {first} then {second}"
    );
    ensure!(
        second["energy"].as_f64().unwrap_or(0.0) > 0.0,
        "{who}: inbound audio is silent: {second}"
    );
    let candidates = second["candidates"].as_array().cloned().unwrap_or_default();
    ensure!(!candidates.is_empty(), "{who}: no ICE candidates: {second}");
    for cand in &candidates {
        let address = cand["address"].as_str().unwrap_or_default();
        // A relay candidate, or the same learned from its checks before it
        // was signalled (peer-reflexive).
        let relay_standin =
            (cand["type"] == "relay" || cand["type"] == "prflx") && address == TURN_PUBLIC_STANDIN;
        // Chromium shows no address for a peer-reflexive remote candidate.
        let hidden = cand["type"] == "prflx" && address.is_empty();
        ensure!(
            netns::is_inside(address) || relay_standin || hidden,
            "{who}: ICE candidate from outside the test namespace {cand}"
        );
    }
    Ok(())
}

/// In every one of `browsers`, the stranger call first decodes audio with
/// energy (within [`STEP`]), then keeps receiving it over a second (see
/// [`check_audio`]).
pub fn check_call_audio(browsers: &[&Browser]) -> Result<()> {
    for x in browsers {
        poll(&format!("{}: first audio", x.name), STEP, || {
            let s = x.audio_stats(None)?;
            Ok(if s["energy"].as_f64().unwrap_or(0.0) > 0.0 {
                Ok(())
            } else {
                Err(s.to_string())
            })
        })?;
    }
    let first = browsers
        .iter()
        .map(|x| x.audio_stats(None))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    for (x, first) in browsers.iter().zip(&first) {
        check_audio(x.name, first, &x.audio_stats(None)?, "over 1 s")?;
    }
    Ok(())
}

/// The median of `values` (not empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Prints a figure, and appends it to `$EARSHOT_E2E_REPORT` when set
/// (scripts/test shows that file after the run).
pub fn report(line: &str) {
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

/// What a page shows, from one script call: the status line, the stranger
/// page's controls or the room page's, and the chat log.
pub struct Snapshot {
    pub name: &'static str,
    /// `data-mode` of `<body>`: `strangers` or `room` (empty before the page
    /// script has run).
    pub mode: String,
    /// `data-state` of the status element.
    pub state: String,
    pub status: String,
    /// `window.earshot.state`, as text.
    pub hook: String,
    pub has_pc: bool,
    pub start_enabled: Option<bool>,
    pub shared: String,
    pub chat: Vec<String>,
    /// Room page: `data-count` of the participants list.
    pub count: Option<u64>,
    /// Room page: `data-locked` of the lock state line.
    pub locked: Option<bool>,
    /// Room page: the passphrase field's form mode (`join`, `lock`,
    /// `verify`) while the field is shown.
    pub pass_mode: Option<String>,
    /// Room page: whether the passphrase field takes input (it does not
    /// while a key is being derived or checked).
    pub pass_enabled: bool,
    /// Room page: the passphrase error, while shown.
    pub pass_error: Option<String>,
    /// Room page: every `peer-refused` explanation shown.
    pub refused: Vec<String>,
    /// Room page: each tile as `peer:connection` (`self:connected`,
    /// `2:connecting`, `3:refused`, ...).
    pub tiles: Vec<String>,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: mode={:?} data-state={:?} status={:?} earshot.state={}",
            self.name, self.mode, self.state, self.status, self.hook,
        )?;
        if self.mode == "room" {
            write!(
                f,
                " count={:?} locked={:?} passphrase={:?} (enabled {}) error={:?} refused={:?} tiles={:?} chat={:?}",
                self.count,
                self.locked,
                self.pass_mode,
                self.pass_enabled,
                self.pass_error,
                self.refused,
                self.tiles,
                self.chat
            )
        } else {
            write!(
                f,
                " pc={} start_enabled={:?} shared={:?} chat={:?}",
                self.has_pc, self.start_enabled, self.shared, self.chat
            )
        }
    }
}

const SNAPSHOT_JS: &str = r#"
const q = id => document.querySelector(`[data-testid="${id}"]`);
const text = el => el ? el.textContent.replace(/\s+/g, ' ').trim() : '';
const shown = el => !!el && !el.closest('[hidden]');
const status = q('status'), start = q('start'), log = q('chat-log');
let hook;
try {
  const e = window.earshot;
  hook = e === undefined ? 'no window.earshot' : JSON.stringify(e.state);
} catch (err) { hook = 'unreadable: ' + err; }
const parts = q('participants'), lock = q('lock-state');
const pass = q('passphrase-input'), passError = q('passphrase-error');
return {
  mode: document.body ? document.body.dataset.mode || '' : '',
  state: status ? status.getAttribute('data-state') || '' : 'no status element',
  status: text(status),
  hook: String(hook),
  pc: !!(window.earshot && window.earshot.pc),
  startEnabled: start ? !start.disabled : null,
  shared: text(q('shared-interests')),
  chat: log ? Array.from(log.children, text) : [],
  count: parts ? Number(parts.dataset.count) : null,
  locked: lock ? lock.dataset.locked === 'true' : null,
  passMode: shown(pass) ? (pass.form && pass.form.dataset.mode) || '?' : null,
  passEnabled: !!pass && !pass.disabled,
  passError: shown(passError) ? text(passError) : null,
  refused: Array.from(document.querySelectorAll('[data-testid="peer-refused"]'))
    .filter(shown).map(text),
  tiles: parts ? Array.from(parts.querySelectorAll('[data-testid="participant"]'),
    li => `${li.dataset.peer}:${li.dataset.connection}`) : [],
};
"#;

/// Installed before the page's own scripts, in every document: the click
/// log (`window.__e2e.clicks`: `data-testid` → epoch ms of its last click),
/// the WebSocket log (`window.__e2eSockets`: each socket's URL, when it
/// opened, got a `welcome`, closed and how), the peer connection log
/// (`window.__e2ePcs`: each `RTCPeerConnection` with every connection state
/// it reported) and the record of `verifier` and `auth` values sent
/// (`window.__e2eSent`), and a timeline of the signalling message types and
/// peer connection states (`window.__e2e.timeline`: `[epoch ms, event]`,
/// message types only, never their content). All of
/// them only listen, with `addEventListener` or by passing the same data on,
/// so the page's own behaviour is untouched.
const INIT_JS: &str = r#"
(() => {
  const e2e = {clicks: {}, timeline: []};
  Object.defineProperty(window, '__e2e', {value: e2e});
  const mark = (event) => { if (e2e.timeline.length < 5000) e2e.timeline.push([Date.now(), event]); };
  const typeOf = (data) => {
    if (typeof data !== 'string') return null;
    try { const t = JSON.parse(data).type; return typeof t === 'string' ? t : null; } catch { return null; }
  };
  document.addEventListener('click', ev => {
    const el = ev.target && ev.target.closest && ev.target.closest('[data-testid]');
    if (el) e2e.clicks[el.getAttribute('data-testid')] = Date.now();
  }, true);

  const NativeSocket = window.WebSocket;
  if (typeof NativeSocket === 'function') {
    const sockets = [];
    Object.defineProperty(window, '__e2eSockets', {value: sockets});
    window.WebSocket = class extends NativeSocket {
      constructor(...args) {
        super(...args);
        let url = null;
        try { url = new URL(String(args[0]), location.href).href; } catch { url = String(args[0]); }
        const rec = {url, opened: Date.now(), open: null, welcome: null, close: null};
        sockets.push(rec);
        this.addEventListener('open', () => { rec.open = Date.now(); });
        this.addEventListener('message', (ev) => {
          const type = typeOf(ev.data);
          if (type) mark('ws<' + type);
          if (rec.welcome !== null || typeof ev.data !== 'string') return;
          try { if (JSON.parse(ev.data).type === 'welcome') rec.welcome = Date.now(); } catch {}
        });
        this.addEventListener('close', (ev) => {
          rec.close = {code: ev.code, reason: ev.reason, at: Date.now()};
        });
      }
    };
    const sent = {verifiers: [], auths: []};
    Object.defineProperty(window, '__e2eSent', {value: sent});
    const send = NativeSocket.prototype.send;
    NativeSocket.prototype.send = function (data) {
      const type = typeOf(data);
      if (type) mark('ws>' + type);
      if (typeof data === 'string' && (data.includes('"verifier"') || data.includes('"auth"'))) {
        try {
          const msg = JSON.parse(data);
          if (typeof msg.verifier === 'string') sent.verifiers.push(msg.verifier);
          if (typeof msg.auth === 'string' && sent.auths.length < 200) sent.auths.push(msg.auth);
        } catch {}
      }
      return send.call(this, data);
    };
  }

  const NativeDc = window.RTCDataChannel;
  if (typeof NativeDc === 'function') {
    const words = {sent: [], drop: false, tamperReveal: false, dropped: 0, tampered: 0};
    Object.defineProperty(window, '__e2eWords', {value: words});
    const dcSend = NativeDc.prototype.send;
    NativeDc.prototype.send = function (data) {
      let msg = null;
      if (typeof data === 'string' && data.includes('"safety_')) {
        try { msg = JSON.parse(data); } catch {}
      }
      if (msg && typeof msg.type === 'string' && msg.type.startsWith('safety_')) {
        if (words.drop) {
          words.dropped += 1;
          if (words.sent.length < 500) words.sent.push({...msg, at: Date.now(), dropped: true});
          return;
        }
        if (words.tamperReveal && msg.type === 'safety_reveal' && typeof msg.nonce === 'string') {
          msg.nonce = (msg.nonce[0] === '0' ? '1' : '0') + msg.nonce.slice(1);
          data = JSON.stringify(msg);
          words.tampered += 1;
        }
        mark('dc>' + msg.type);
        if (words.sent.length < 500) words.sent.push({...msg, at: Date.now()});
      }
      return dcSend.call(this, data);
    };
  }

  const NativePc = window.RTCPeerConnection;
  if (typeof NativePc === 'function') {
    const pcs = [];
    Object.defineProperty(window, '__e2ePcs', {value: pcs});
    window.RTCPeerConnection = class extends NativePc {
      constructor(...args) {
        super(...args);
        const rec = {pc: this, created: Date.now(), states: [this.connectionState]};
        pcs.push(rec);
        mark('pc:new');
        this.addEventListener('connectionstatechange', () => {
          rec.states.push(this.connectionState);
          mark('conn:' + this.connectionState);
        });
        this.addEventListener('iceconnectionstatechange', () => mark('ice:' + this.iceConnectionState));
        this.addEventListener('signalingstatechange', () => mark('sdp:' + this.signalingState));
      }
    };
  }
})();
"#;

/// Audio statistics of the page's stranger `RTCPeerConnection`
/// (`window.earshot.pc`) when `arguments[0]` is null, or of its room
/// connection to peer `arguments[0]` (`window.earshot.peers`): inbound audio
/// summed, every candidate and the selected pair, in the shape
/// [`check_audio`] reads. The selected pair is the transport's in Chromium;
/// Firefox has no `transport` stats, and flags its pair `selected` instead.
const AUDIO_STATS_JS: &str = r#"
const done = arguments[arguments.length - 1];
const e = window.earshot || {};
const pc = arguments[0] == null ? e.pc : (e.peers || {})[arguments[0]];
if (!pc) { done({error: 'no such peer connection'}); return; }
pc.getStats().then(stats => {
  const out = {inbound: 0, bytes: 0, packets: 0, energy: 0, candidates: [], selected: null,
               connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState};
  const cand = r => r ? {id: r.id, kind: r.type, type: r.candidateType, protocol: r.protocol,
                         relayProtocol: r.relayProtocol ?? null, address: r.address ?? r.ip ?? null,
                         port: r.port, url: r.url ?? null} : null;
  let pairId = null;
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.inbound += 1;
      out.bytes += r.bytesReceived || 0;
      out.packets += r.packetsReceived || 0;
      out.energy += r.totalAudioEnergy || 0;
    }
    if (r.type === 'local-candidate' || r.type === 'remote-candidate') out.candidates.push(cand(r));
    if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
  });
  if (!pairId) stats.forEach(r => { if (r.type === 'candidate-pair' && r.selected) pairId = r.id; });
  const pair = pairId ? stats.get(pairId) : null;
  if (pair) {
    out.selected = {state: pair.state, local: cand(stats.get(pair.localCandidateId)),
                    remote: cand(stats.get(pair.remoteCandidateId))};
  }
  done(out);
}, err => done({error: String(err)}));
"#;

/// See [`Browser::page_requests`].
const PAGE_REQUESTS_JS: &str = r#"
const names = type => performance.getEntriesByType(type).map(e => e.name);
return {href: location.href, navigation: names('navigation'), resources: names('resource'),
        sockets: (window.__e2eSockets || []).map(s => s.url), cookie: document.cookie};
"#;

/// What the page keeps on the device. Firefox's `indexedDB.databases()`
/// now and then fails with an `UnknownError` on a busy machine: it is asked
/// again (five times at most) before the error counts as an answer.
const STORED_JS: &str = r#"
const done = arguments[arguments.length - 1];
const out = {cookie: document.cookie, local: localStorage.length,
             session: sessionStorage.length, indexedDB: []};
const ask = tries => {
  const dbs = indexedDB.databases ? indexedDB.databases() : Promise.resolve([]);
  dbs.then(list => { out.indexedDB = list.map(d => d.name); done(out); },
           err => {
             if (tries > 1) { setTimeout(() => ask(tries - 1), 200); return; }
             out.indexedDB = ['(error: ' + err + ')']; done(out);
           });
};
ask(5);
"#;

/// One browser (Chromium or Firefox) with an Earshot page open.
pub struct Browser<'d> {
    pub name: &'static str,
    pub session: Session<'d>,
}

impl<'d> Browser<'d> {
    /// One browser per name, started in parallel; the first `with_url` of
    /// them open `url`.
    pub fn open_all(
        driver: &'d ChromeDriver,
        names: &[&'static str],
        with_url: usize,
        url: &str,
    ) -> Result<Vec<Browser<'d>>> {
        Browser::open_all_with(driver, names, with_url, url, &Setup::default())
    }

    /// [`Browser::open_all`], each browser set up as `setup` says: Firefox
    /// if named in `setup.firefox`, else Chromium with chromedriver's
    /// performance log if `setup.network_log` (see [`Browser::open_with`]).
    pub fn open_all_with(
        driver: &'d ChromeDriver,
        names: &[&'static str],
        with_url: usize,
        url: &str,
        setup: &Setup,
    ) -> Result<Vec<Browser<'d>>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, &name)| {
                    let url = (i < with_url).then_some(url);
                    if setup.firefox.contains(&name) {
                        scope.spawn(move || Browser::open_firefox(name, url))
                    } else {
                        let (log, loopback) = (setup.network_log, !setup.roaming);
                        let args = &setup.chromium_args;
                        scope.spawn(move || {
                            let session = driver.session_opts(log, loopback, args)?;
                            Browser::with_session(name, session, url)
                        })
                    }
                })
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

    /// A new Chromium with [`INIT_JS`] installed, showing `url` if given.
    pub fn open(
        driver: &'d ChromeDriver,
        name: &'static str,
        url: Option<&str>,
    ) -> Result<Browser<'d>> {
        Browser::open_with(driver, name, url, false)
    }

    /// [`Browser::open`]; with `network_log`, chromedriver also keeps the
    /// browser's DevTools network events, for [`Browser::network_events`].
    pub fn open_with(
        driver: &'d ChromeDriver,
        name: &'static str,
        url: Option<&str>,
        network_log: bool,
    ) -> Result<Browser<'d>> {
        Browser::with_session(name, driver.session_with(network_log)?, url)
    }

    /// A new Firefox with [`INIT_JS`] installed, showing `url` if given.
    pub fn open_firefox(name: &'static str, url: Option<&str>) -> Result<Browser<'d>> {
        let session = Session::firefox().with_context(|| format!("{name}: no Firefox"))?;
        Browser::with_session(name, session, url)
    }

    fn with_session(
        name: &'static str,
        session: Session<'d>,
        url: Option<&str>,
    ) -> Result<Browser<'d>> {
        session
            .add_init_script(INIT_JS)
            .with_context(|| format!("{name}: cannot install the page probes"))?;
        let browser = Browser { name, session };
        if let Some(url) = url {
            browser.goto(url)?;
        }
        Ok(browser)
    }

    /// Opens `url`, waits until the page script has started (the test hook
    /// exists and the body says which view it shows) and accepts the
    /// consent screen.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session
            .goto(url)
            .with_context(|| format!("{}: cannot open {url}", self.name))?;
        self.wait_ready(url, None)
    }

    /// Waits until the page script has started, showing the view `mode`
    /// (`strangers`, `room`) if given, after a navigation; then accepts the
    /// consent screen (shown on every page load, it keeps Start and Join
    /// disabled until accepted).
    pub fn wait_ready(&self, url: &str, mode: Option<&str>) -> Result<()> {
        poll(
            &format!("{}: the page at {url} to start", self.name),
            STEP,
            || {
                // Right after a navigation the script may have no context yet.
                Ok(match self.snapshot() {
                    Ok(s)
                        if !s.mode.is_empty()
                            && mode.is_none_or(|m| s.mode == m)
                            && !s.hook.starts_with("no ") =>
                    {
                        Ok(())
                    }
                    Ok(s) => Err(format!("it shows: {s}")),
                    Err(e) => Err(format!("{e:#}")),
                })
            },
        )?;
        let consent = || self.execute("return document.body.dataset.consent || null", json!([]));
        if consent()? == json!("pending") {
            self.click("consent-accept")?;
            let now = consent()?;
            ensure!(
                now == json!("accepted"),
                "{}: the consent screen is still {now} after accepting it",
                self.name
            );
        }
        Ok(())
    }

    pub fn testid(&self, id: &str) -> Result<webdriver::Element<'_, 'd>> {
        self.session
            .testid(id)
            .with_context(|| format!("{}: no [data-testid={id}]", self.name))
    }

    pub fn click(&self, id: &str) -> Result<()> {
        self.testid(id)?
            .click()
            .with_context(|| format!("{}: cannot click {id}", self.name))
    }

    /// Runs `script` in the page (see `Session::execute`).
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.session
            .execute(script, args)
            .with_context(|| format!("{}: script failed", self.name))
    }

    /// Runs an async `script` in the page (see `Session::execute_async`).
    pub fn execute_async(&self, script: &str, args: Value) -> Result<Value> {
        self.session
            .execute_async(script, args)
            .with_context(|| format!("{}: async script failed", self.name))
    }

    /// See [`AUDIO_STATS_JS`]: the stranger call's, or room peer `room_peer`'s.
    pub fn audio_stats(&self, room_peer: Option<u32>) -> Result<Value> {
        let stats = self.execute_async(AUDIO_STATS_JS, json!([room_peer]))?;
        if let Some(error) = stats["error"].as_str() {
            bail!("{}: no stats: {error}", self.name);
        }
        Ok(stats)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let v = self
            .session
            .execute(SNAPSHOT_JS, json!([]))
            .with_context(|| format!("{}: cannot read the page", self.name))?;
        let s = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| l.as_str().unwrap_or_default().into())
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Snapshot {
            name: self.name,
            mode: s("mode"),
            state: s("state"),
            status: s("status"),
            hook: s("hook"),
            has_pc: v["pc"] == json!(true),
            start_enabled: v["startEnabled"].as_bool(),
            shared: s("shared"),
            chat: strings("chat"),
            count: v["count"].as_u64(),
            locked: v["locked"].as_bool(),
            pass_mode: v["passMode"].as_str().map(String::from),
            pass_enabled: v["passEnabled"] == json!(true),
            pass_error: v["passError"].as_str().map(String::from),
            refused: strings("refused"),
            tiles: strings("tiles"),
        })
    }

    /// When the page saw its last click on `id`, in epoch milliseconds.
    pub fn clicked_at(&self, id: &str) -> Result<f64> {
        self.execute(
            "return window.__e2e.clicks[arguments[0]] ?? null",
            json!([id]),
        )?
        .as_f64()
        .with_context(|| format!("{}: no click on {id} recorded", self.name))
    }

    /// Every WebSocket the page opened, oldest first (see [`INIT_JS`]).
    pub fn sockets(&self) -> Result<Vec<Value>> {
        match self.execute("return window.__e2eSockets || null", json!([]))? {
            Value::Array(sockets) => Ok(sockets),
            other => bail!("{}: no WebSocket log: {other}", self.name),
        }
    }

    /// The DevTools events of chromedriver's performance log since the last
    /// call (the browser must have been opened with it, see
    /// [`Setup::network_log`]), oldest first: each `{method, params}`, such
    /// as `Network.requestWillBeSent`, `Network.responseReceived` or
    /// `Network.webSocketCreated`. They cover every page the browser loaded.
    pub fn network_events(&self) -> Result<Vec<Value>> {
        let entries = self
            .session
            .log("performance")
            .with_context(|| format!("{}: no performance log", self.name))?;
        entries
            .iter()
            .map(|e| {
                let text = e["message"].as_str().unwrap_or_default();
                let v: Value = serde_json::from_str(text).with_context(|| {
                    format!("{}: a performance log entry is not JSON: {e}", self.name)
                })?;
                Ok(v["message"].clone())
            })
            .collect()
    }

    /// How the current page loaded, from its navigation and resource timing:
    /// `{transfer, resources, largest, ready_ms}`: bytes over the network
    /// (headers included), resources fetched, the most bytes one of them
    /// took (a "not modified" answer is headers only), and the milliseconds
    /// from navigation to the signalling `welcome` (when Start works, once
    /// the consent screen is accepted).
    pub fn load_figures(&self) -> Result<Value> {
        self.execute(
            r#"const nav = performance.getEntriesByType('navigation')[0];
               const res = performance.getEntriesByType('resource')
                 .filter(r => r.initiatorType !== 'other' || r.name.startsWith(location.origin));
               const all = [nav, ...res];
               const socket = (window.__e2eSockets || [])[0];
               return {
                 transfer: all.reduce((n, r) => n + (r.transferSize || 0), 0),
                 resources: all.length,
                 largest: Math.max(...all.map(r => r.transferSize || 0)),
                 ready_ms: socket && socket.welcome ? socket.welcome - performance.timeOrigin : null,
               };"#,
            json!([]),
        )
    }

    /// What the current document says it loaded and opened, from the
    /// inside: `{href, navigation, resources, sockets, cookie}`, the URLs of
    /// its navigation and resource timing entries
    /// (`performance.getEntriesByType`) and of every WebSocket it opened
    /// (`harness::INIT_JS`), and `document.cookie`. Gone once the page
    /// navigates: read it before.
    pub fn page_requests(&self) -> Result<Value> {
        self.execute(PAGE_REQUESTS_JS, json!([]))
    }

    /// Privacy: no cookie (neither in `document.cookie` nor any the browser
    /// holds for the page), empty `localStorage` and `sessionStorage`, no
    /// IndexedDB database.
    pub fn check_nothing_stored(&self) -> Result<()> {
        let stored = self.execute_async(STORED_JS, json!([]))?;
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
}

/// One HTTP/1.0 `GET` of `url` (`http://HOST:PORT/PATH`), as a client other
/// than a page would make it (say a test reading `/metrics`): its status,
/// its header lines and its body. HTTP/1.0, so that the body is neither
/// chunked nor kept alive: it ends where the connection does.
pub fn http_get(url: &str) -> Result<(u16, Vec<String>, String)> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream =
        std::net::TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    stream.set_read_timeout(Some(STEP))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {url}: no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {url}: bad status line in {head:?}"))?;
    Ok((status, lines.map(String::from).collect(), body.to_string()))
}
