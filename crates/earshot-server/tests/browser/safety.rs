//! Privacy and safety in real browsers: the page talks to its own origin and
//! nothing else, sets no cookie; Report ends a call at once for both sides;
//! three reports from three networks ban a page from matching, and its ban
//! notice counts down; a server that asks for proof of work gets it, with the
//! progress shown, and the page is usable afterwards. See the crate docs in
//! `main.rs`.
//!
//! The ban needs reports from three different networks, and every browser
//! comes from 127.0.0.1 (one key): so the reporters are raw WebSocket
//! clients speaking PROTOCOL.md, each bound to a loopback address of its
//! own /24 (127.0.2.2, 127.0.3.2, 127.0.4.2), as `tests/abuse.rs` does. The
//! server runs with `--test-unweighed-reports`: fresh reporters weigh
//! nothing toward a ban otherwise (see `earshot_core::moderation`), and a
//! browser test cannot wait ten minutes for them to be trusted.

use crate::support::harness::{
    Browser, Run, STEP, Setup, Snapshot, check_audio, check_call_audio, hold, http_get, poll,
    report, wait_for,
};
use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

/// What the server's trace log must mention to prove it saw the session.
const LOG_SHOWS_CALL: &[&str] = &["matched"];
const LOG_SHOWS_CALL_AND_ROOM: &[&str] = &["matched", "joined a room", "relaying a room signal"];
const LOG_SHOWS_REPORT: &[&str] = &["matched", "report recorded"];
const LOG_SHOWS_BAN: &[&str] = &["matched", "a report completed a ban"];

// ------------------------------------------------------------------ origin

/// The page talks only to its own origin. Three sources: DevTools network
/// events (chromedriver's performance log: `Network.requestWillBeSent`,
/// `Network.webSocketCreated`, responses and their headers, navigations);
/// what each document says it loaded (navigation and resource timing
/// entries, and the URL of every WebSocket it opened, from
/// `harness::INIT_JS`); and every `securitypolicyviolation` (what the
/// page tried and its CSP stopped before any request, [`CSP_WATCH_JS`]).
/// Two browsers go through a whole stranger session (consent, Start,
/// connected with audio both ways, chat both ways, Skip, End) and a room
/// session (A creates a room from the home page, B opens its link, both
/// join and hear each other, both leave). Every URL seen must be of the
/// server's own origin (`ws://` to the same host and port counts; `data:`,
/// `blob:` and `about:` are fine), the CSP must have refused nothing, every
/// ICE server the page was given must be on the server's own host, no
/// response may carry `Set-Cookie`, no request may carry a cookie, and
/// `document.cookie` stays empty. DevTools events from before the first
/// request for the server's page are the fresh browser's own start page
/// (`chrome://new-tab-page-third-party/`) and are only counted. Ends with
/// the privacy checks of `Run::finish`.
#[test]
fn browser_page_talks_only_to_its_own_origin() -> Result<()> {
    let setup = Setup {
        network_log: true,
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_page_talks_only_to_its_own_origin",
        &["A", "B"],
        0,
        LOG_SHOWS_CALL_AND_ROOM,
        &setup,
        origin_scenario,
    )
}

/// Everything one browser was seen to ask for.
#[derive(Default)]
struct Seen {
    /// The server's origin: DevTools events before the first request for a
    /// document there are the fresh browser's own start page
    /// (`chrome://new-tab-page...`), not anything Earshot's page did, and
    /// are only counted.
    own: String,
    started: bool,
    skipped: usize,
    /// (source, URL): `devtools request <type>`, `devtools websocket`,
    /// `devtools navigation`, `page navigation`, `page resource`,
    /// `page websocket`.
    urls: Vec<(String, String)>,
    /// Responses whose headers were looked at (`Network.responseReceived`,
    /// `...ExtraInfo`, WebSocket handshakes).
    responses: usize,
    /// Requests whose headers were looked at.
    requests: usize,
    /// What is wrong: a `Set-Cookie`, a cookie sent, a `document.cookie`.
    cookie_problems: Vec<String>,
    /// ICE server URLs the page's peer connections were given.
    ice_urls: BTreeSet<String>,
    /// What the page's Content Security Policy refused: the page tried to
    /// load or connect to something it must not.
    csp_violations: Vec<String>,
}

/// Installed before the page's own scripts: `window.__e2eCsp`, every
/// `securitypolicyviolation` of the document (what it tried and the
/// policy refused, which no request log shows since it never left).
const CSP_WATCH_JS: &str = r#"
(() => {
  const log = [];
  Object.defineProperty(window, '__e2eCsp', {value: log});
  document.addEventListener('securitypolicyviolation', e => {
    log.push({blocked: e.blockedURI, directive: e.effectiveDirective, source: e.sourceFile || ''});
  }, true);
})();
"#;

impl Seen {
    /// Takes in the DevTools events read since the last call.
    fn add_events(&mut self, events: &[Value]) {
        for e in events {
            let p = &e["params"];
            let method = e["method"].as_str().unwrap_or_default();
            let url = |v: &Value| v.as_str().unwrap_or_default().to_string();
            if !self.started {
                let ours = method == "Network.requestWillBeSent"
                    && p["type"] == json!("Document")
                    && origin(&url(&p["request"]["url"])).ok().flatten().as_deref()
                        == Some(self.own.as_str());
                if !ours {
                    self.skipped += 1;
                    continue;
                }
                self.started = true;
            }
            match method {
                "Network.requestWillBeSent" => {
                    self.requests += 1;
                    let kind = p["type"].as_str().unwrap_or("?");
                    self.urls.push((
                        format!("devtools request {kind}"),
                        url(&p["request"]["url"]),
                    ));
                    if let Some(redirect) = p["redirectResponse"].as_object() {
                        self.check_response_headers(
                            "redirect",
                            &Value::Object(redirect.clone())["headers"],
                        );
                    }
                    self.check_request_headers(
                        &p["request"]["headers"],
                        &url(&p["request"]["url"]),
                    );
                }
                "Network.requestWillBeSentExtraInfo" => {
                    self.check_request_headers(&p["headers"], "(extra info)");
                    if p["associatedCookies"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty())
                    {
                        self.cookie_problems
                            .push(format!("a request had cookies: {}", p["associatedCookies"]));
                    }
                }
                "Network.webSocketCreated" => {
                    self.urls
                        .push(("devtools websocket".into(), url(&p["url"])));
                }
                "Network.webSocketWillSendHandshakeRequest" => {
                    self.requests += 1;
                    self.check_request_headers(&p["request"]["headers"], "(websocket)");
                }
                "Network.responseReceived" => {
                    self.responses += 1;
                    self.urls
                        .push(("devtools response".into(), url(&p["response"]["url"])));
                    self.check_response_headers(
                        &url(&p["response"]["url"]),
                        &p["response"]["headers"],
                    );
                }
                "Network.responseReceivedExtraInfo" => {
                    self.responses += 1;
                    self.check_response_headers("(extra info)", &p["headers"]);
                    if p["blockedCookies"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty())
                    {
                        self.cookie_problems
                            .push(format!("a response set cookies: {}", p["blockedCookies"]));
                    }
                }
                "Network.webSocketHandshakeResponseReceived" => {
                    self.responses += 1;
                    self.check_response_headers("(websocket)", &p["response"]["headers"]);
                }
                "Page.frameNavigated" => {
                    self.urls
                        .push(("devtools navigation".into(), url(&p["frame"]["url"])));
                }
                _ => {}
            }
        }
    }

    fn check_response_headers(&mut self, url: &str, headers: &Value) {
        for (name, value) in headers.as_object().into_iter().flatten() {
            if name.eq_ignore_ascii_case("set-cookie") {
                self.cookie_problems
                    .push(format!("{url}: response header Set-Cookie: {value}"));
            }
        }
    }

    fn check_request_headers(&mut self, headers: &Value, url: &str) {
        for (name, value) in headers.as_object().into_iter().flatten() {
            if name.eq_ignore_ascii_case("cookie") {
                self.cookie_problems
                    .push(format!("{url}: request header Cookie: {value}"));
            }
        }
    }

    /// Takes in what the current document of a page says it loaded (see
    /// `Browser::page_requests`), and what its Content Security Policy
    /// stopped it from loading (see [`CSP_WATCH_JS`]).
    fn add_page(&mut self, page: &Value, csp: &Value) {
        for v in csp.as_array().into_iter().flatten() {
            self.urls.push((
                "page blocked by CSP".into(),
                v["blocked"].as_str().unwrap_or("?").into(),
            ));
            self.csp_violations.push(v.to_string());
        }
        let list = |key: &str| -> Vec<String> {
            page[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or("(not a string)").to_string())
                .collect()
        };
        for (key, source) in [
            ("navigation", "page navigation"),
            ("resources", "page resource"),
            ("sockets", "page websocket"),
        ] {
            for url in list(key) {
                self.urls.push((source.into(), url));
            }
        }
        let cookie = page["cookie"].as_str().unwrap_or("(unreadable)");
        if !cookie.is_empty() {
            self.cookie_problems
                .push(format!("{}: document.cookie = {cookie:?}", page["href"]));
        }
    }

    /// Reads both sources for `x` now: its DevTools events since the last
    /// read, and what its current document says (to be called before it
    /// navigates away).
    fn read(&mut self, x: &Browser) -> Result<()> {
        let csp = x.execute("return window.__e2eCsp || null", json!([]))?;
        ensure!(csp.is_array(), "{}: no CSP violation log: {csp}", x.name);
        self.add_page(&x.page_requests()?, &csp);
        self.add_events(&x.network_events()?);
        Ok(())
    }
}

/// `scheme://host:port` of a URL, with the default port filled in and
/// `ws`/`wss` mapped to `http`/`https` (a WebSocket to the page's own host
/// and port is same-origin traffic); `None` for URLs with no network origin
/// (`data:`, `blob:`, `about:`).
fn origin(url: &str) -> Result<Option<String>> {
    let (scheme, rest) = url
        .split_once(':')
        .with_context(|| format!("not a URL: {url:?}"))?;
    let scheme = scheme.to_ascii_lowercase();
    let (scheme, default_port) = match scheme.as_str() {
        "data" | "blob" | "about" => return Ok(None),
        "http" | "ws" => ("http", 80),
        "https" | "wss" => ("https", 443),
        other => return Ok(Some(format!("{other}:{rest}"))),
    };
    let authority = rest
        .strip_prefix("//")
        .with_context(|| format!("no authority in {url:?}"))?;
    let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    // `[::1]:8080`, `127.0.0.1:8080`, or no port (`[::1]`, `example.org`).
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() => {
            (h.to_string(), p.parse().unwrap_or(default_port))
        }
        _ => (host_port.to_string(), default_port),
    };
    Ok(Some(format!(
        "{scheme}://{}:{port}",
        host.to_ascii_lowercase()
    )))
}

fn origin_scenario(run: &Run) -> Result<()> {
    let (a, b) = (run.browser("A")?, run.browser("B")?);
    let own = origin(&run.server_url()?)?.context("the server URL has no origin")?;
    let own_host = own
        .trim_start_matches("http://")
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .context("no host in the server origin")?;
    let fresh = || Seen {
        own: own.clone(),
        ..Seen::default()
    };
    let mut seen: BTreeMap<&str, Seen> = [("A", fresh()), ("B", fresh())].into();
    let home = run.server_url()?;
    for x in [a, b] {
        x.session.add_init_script(CSP_WATCH_JS)?;
        x.goto(&home)?;
    }

    // 1. A stranger session: consent (accepted on opening), Start, connected
    //    with audio both ways, chat both ways, Skip, End.
    meet(a, b)?;
    for x in [a, b] {
        seen.get_mut(x.name)
            .context("no record")?
            .ice_urls
            .extend(ice_urls(x)?);
    }
    run.chat(a, &[b], "origin check, A to B")?;
    run.chat(b, &[a], "origin check, B to A")?;
    a.click("skip")?;
    wait_for("A and B searching after A skipped", &[a, b], |s| {
        s.iter().all(|s| s.state == "searching" && !s.has_pc)
    })?;
    a.click("end")?;
    b.click("end")?;
    wait_for("A and B idle after End", &[a, b], |s| {
        s.iter().all(is_ended)
    })?;
    for x in [a, b] {
        seen.get_mut(x.name).context("no record")?.read(x)?;
    }

    // 2. A room session: A takes the name the home page suggests and
    //    presses Create room; B opens the link A's room page shows; both
    //    join and hear each other; both leave.
    let name = poll("a room name suggested on the home page", STEP, || {
        let v = a.testid("room-name-input")?.property("value")?;
        Ok(match v.as_str() {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err(format!("room-name-input holds {v}")),
        })
    })?;
    run.secret(&name);
    a.click("room-create")?;
    a.wait_ready(&format!("/r/{name}"), Some("room"))?;
    let link = poll("A's room page to show the link", STEP, || {
        let v = a.testid("room-link")?.property("value")?;
        Ok(match v.as_str() {
            Some(l) if l.ends_with(&format!("/r/{name}")) => Ok(l.to_string()),
            _ => Err(format!("room-link holds {v}")),
        })
    })?;
    b.goto(&link)?;
    wait_for("A and B on the room page", &[a, b], |s| {
        s.iter().all(|s| s.mode == "room" && s.state == "idle")
    })?;
    a.click("room-join")?;
    wait_for("A alone in the room", &[a], |s| {
        s[0].state == "joined" && s[0].count == Some(1)
    })?;
    b.click("room-join")?;
    wait_for("A and B in the room, two people", &[a, b], |s| {
        s.iter().all(|s| s.state == "joined" && s.count == Some(2))
    })?;
    check_room_audio(&[a, b])?;
    for x in [a, b] {
        seen.get_mut(x.name)
            .context("no record")?
            .ice_urls
            .extend(ice_urls(x)?);
    }
    for x in [a, b] {
        x.click("leave")?;
    }
    wait_for("A and B out of the room", &[a, b], |s| {
        s.iter().all(|s| s.state == "idle")
    })?;
    // Late events (the socket's last frames) have had their chance.
    std::thread::sleep(Duration::from_millis(300));
    for x in [a, b] {
        seen.get_mut(x.name).context("no record")?.read(x)?;
    }

    // 3. What was seen.
    let mut problems = Vec::new();
    for (who, s) in &seen {
        let mut origins: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
        for (source, url) in &s.urls {
            *by_source.entry(source.as_str()).or_default() += 1;
            let o = origin(url)?
                .unwrap_or_else(|| format!("({})", url.split(':').next().unwrap_or_default()));
            *origins.entry(o.clone()).or_default() += 1;
            if !o.starts_with('(') && o != own {
                problems.push(format!("{who}: {source} to another origin: {url}"));
            }
        }
        for url in &s.ice_urls {
            if ice_host(url) != own_host {
                problems.push(format!("{who}: an ICE server not on {own_host}: {url}"));
            }
        }
        problems.extend(s.cookie_problems.iter().map(|p| format!("{who}: {p}")));
        problems.extend(
            s.csp_violations
                .iter()
                .map(|v| format!("{who}: the page tried something its CSP refused: {v}")),
        );
        let paths: BTreeSet<String> = s
            .urls
            .iter()
            .map(|(source, url)| {
                let kind = source.rsplit(' ').next().unwrap_or_default();
                format!(
                    "{}{}",
                    url.strip_prefix(&own).unwrap_or(url),
                    match kind {
                        "Image" | "Other" | "Font" => format!(" ({kind})"),
                        _ => String::new(),
                    }
                )
            })
            .collect();
        println!("network capture, {who}: distinct URLs: {paths:?}");
        report(&format!(
            "network capture, {who}: {} URLs seen ({}); origins {:?}; {} requests and {} \
             responses with headers checked; ICE servers {:?}; {} DevTools events of the \
             browser's start page skipped",
            s.urls.len(),
            by_source
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            origins,
            s.requests,
            s.responses,
            s.ice_urls,
            s.skipped,
        ));
    }
    ensure!(
        problems.is_empty(),
        "the page talked to something other than {own}, or kept a cookie:\n  {}",
        problems.join("\n  ")
    );

    // 4. Both sources saw what they must have (else the checks above prove
    //    nothing): A's two documents, B's two, the module scripts, and the
    //    WebSockets.
    let room_doc = format!("{own}/r/{name}");
    for (who, s) in &seen {
        let count = |source: &str, pred: &dyn Fn(&str) -> bool| {
            s.urls
                .iter()
                .filter(|(src, url)| src == source && pred(url))
                .count()
        };
        let document = |url: &str| url == format!("{own}/") || url == room_doc;
        let checks = [
            (
                "devtools request Document",
                count("devtools request Document", &document),
            ),
            (
                "devtools request Script",
                count("devtools request Script", &|u| u.ends_with("/app.js")),
            ),
            (
                "devtools websocket",
                count("devtools websocket", &|u| u.ends_with("/ws")),
            ),
            ("page navigation", count("page navigation", &document)),
            (
                "page resource",
                count("page resource", &|u| u.ends_with("/app.js")),
            ),
            (
                "page websocket",
                count("page websocket", &|u| u.ends_with("/ws")),
            ),
        ];
        for (what, n) in checks {
            ensure!(
                n >= 2,
                "{who}: expected to see both documents' {what} (the home page and the room), \
                 saw {n}: {:?}",
                s.urls
            );
        }
        ensure!(
            s.responses >= 4 && s.requests >= 4,
            "{who}: too few headers looked at ({} requests, {} responses)",
            s.requests,
            s.responses
        );
        ensure!(!s.ice_urls.is_empty(), "{who}: no ICE server seen");
    }
    Ok(())
}

/// The host of an ICE server URL (`stun:HOST:PORT`,
/// `turn:HOST:PORT?transport=udp`), lower-cased.
fn ice_host(url: &str) -> String {
    let rest = url.split_once(':').map_or("", |(_, r)| r);
    let rest = rest.trim_start_matches("//");
    let rest = rest.split('?').next().unwrap_or_default();
    let host = match rest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => rest,
    };
    host.to_ascii_lowercase()
}

/// The `urls` of every ICE server the page's peer connections use now.
fn ice_urls(x: &Browser) -> Result<Vec<String>> {
    let v = x.execute(
        "const pcs = [];
         if (window.earshot && window.earshot.pc) pcs.push(window.earshot.pc);
         pcs.push(...Object.values((window.earshot && window.earshot.peers) || {}));
         return pcs.flatMap(pc => pc.getConfiguration().iceServers || [])
                   .flatMap(s => Array.isArray(s.urls) ? s.urls : [s.urls]);",
        json!([]),
    )?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|u| u.as_str().unwrap_or("(not a string)").to_string())
        .collect())
}

// ------------------------------------------------------------------ report

/// A and B talk; A presses Report, picks a reason and submits: A's call
/// ends at once (no peer connection, the one it had is closed, Start
/// enabled, a message that says it was reported), B sees the call end
/// ("Stranger ended the call") and is back in the queue, searching; A is
/// not put back in the queue. The server's `/metrics` counts one report.
/// (A and B share 127.0.0.1, so the server counts the report but, as for
/// any two people behind one address, records no strike and no block.)
/// Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_report_ends_the_call_and_shows_thanks() -> Result<()> {
    Run::scenario(
        "browser_report_ends_the_call_and_shows_thanks",
        &["A", "B"],
        LOG_SHOWS_REPORT,
        report_scenario,
    )
}

fn report_scenario(run: &Run) -> Result<()> {
    let (a, b) = (run.browser("A")?, run.browser("B")?);
    let metrics_url = format!("{}metrics", run.server_url()?);
    ensure!(
        metric(&metrics_url, "earshot_reports_total")? == 0,
        "reports counted before anyone reported"
    );
    meet(a, b)?;
    run.chat(a, &[b], "before the report, A to B")?;
    run.chat(b, &[a], "before the report, B to A")?;

    ensure!(
        a.testid("report")?.enabled()?,
        "A: Report is disabled during a call"
    );
    a.click("report")?;
    poll("A's report dialog to open", STEP, || {
        let open = a.execute(
            "return document.querySelector('[data-testid=\"report-dialog\"]').open",
            json!([]),
        )?;
        Ok(if open == json!(true) {
            Ok(())
        } else {
            Err(format!("open: {open}"))
        })
    })?;
    a.session
        .find("[data-testid=\"report-reason\"] option[value=\"harassment\"]")?
        .click()?;
    let reason = a.testid("report-reason")?.property("value")?;
    ensure!(
        reason == json!("harassment"),
        "A: the reason picked is {reason}, not harassment"
    );
    let submitted = Instant::now();
    a.click("report-submit")?;
    // At once: the first look after the click must already show it.
    let snap = a.snapshot()?;
    let looked = submitted.elapsed();
    ensure!(
        snap.state == "ended" && !snap.has_pc && snap.start_enabled == Some(true),
        "A's call did not end at once on Report (looked {looked:?} after the click): {snap}"
    );
    ensure!(
        snap.status.contains("Reported"),
        "A is not told the report was made: {snap}"
    );
    let dialog_open = a.execute(
        "return document.querySelector('[data-testid=\"report-dialog\"]').open",
        json!([]),
    )?;
    ensure!(
        dialog_open == json!(false),
        "A: the report dialog is still open"
    );
    let pcs = last_pc_state(a)?;
    ensure!(
        pcs == json!("closed"),
        "A: the peer connection of the reported call is {pcs}, not closed"
    );
    let snap = wait_for("B told the call ended, searching again", &[b], |s| {
        s[0].state == "searching" && !s[0].has_pc && s[0].status.contains("ended the call")
    })?;
    let b_ended = submitted.elapsed();
    println!(
        "report: A ended the call {looked:?} after the click and shows {:?}; B searching again \
         {b_ended:?} after it, showing {:?}",
        a.snapshot()?.status,
        snap[0].status
    );
    let pcs = last_pc_state(b)?;
    ensure!(
        pcs == json!("closed"),
        "B: the peer connection of the reported call is {pcs}, not closed"
    );
    hold(
        "A ended (not searching), B searching",
        &[a, b],
        Duration::from_millis(1000),
        |s| {
            if s.name == "A" {
                s.state == "ended" && s.start_enabled == Some(true)
            } else {
                s.state == "searching"
            }
        },
    )?;
    let reports = poll("/metrics to count the report", STEP, || {
        let n = metric(&metrics_url, "earshot_reports_total")?;
        Ok(if n == 1 {
            Ok(n)
        } else {
            Err(format!("earshot_reports_total {n}"))
        })
    })?;
    report(&format!(
        "report: earshot_reports_total {reports} after A's report; A's call ended {looked:?} \
         after the click, B back in the queue {b_ended:?} after it"
    ));
    b.click("end")?;
    wait_for("B idle", &[b], |s| is_ended(&s[0]))?;
    Ok(())
}

/// The connection state of the page's last `RTCPeerConnection` (from
/// `harness::INIT_JS`'s log).
fn last_pc_state(x: &Browser) -> Result<Value> {
    x.execute(
        "const p = window.__e2ePcs || []; \
         return p.length ? p[p.length - 1].pc.connectionState : null",
        json!([]),
    )
}

/// The value of an unlabelled metric on the server's `/metrics`.
fn metric(url: &str, name: &str) -> Result<u64> {
    let (status, _, body) = http_get(url)?;
    ensure!(status == 200, "GET {url}: HTTP {status}: {body}");
    metric_in(&body, name).with_context(|| format!("no {name} in {url}:\n{body}"))
}

fn metric_in(body: &str, name: &str) -> Option<u64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

// --------------------------------------------------------------------- ban

/// A browser is banned from matching and its ban notice counts down. A
/// presses Start; three raw WebSocket clients, from three /24s
/// (127.0.2.2, 127.0.3.2, 127.0.4.2: three client keys and three
/// networks), each search, are matched with A, pass a candidate
/// along (relayed to A, and looked for in the log) and report A. After the
/// first two A is back in the queue on its own ("Stranger ended the call");
/// the third completes the ban, and the server's answer to A's automatic
/// return to the queue is `banned`: A is idle, the ban notice shows about
/// 60 minutes, its time left goes down second by second, and Start is
/// disabled. `/metrics`: three reports, one ban. Then A reloads the page,
/// which remembers nothing (Start enabled, no notice), and presses Start:
/// the server says `banned` again and the notice is back. Ends with the
/// privacy checks of `Run::finish`.
#[test]
fn browser_ban_notice_counts_down() -> Result<()> {
    let setup = Setup {
        server_args: vec!["--test-unweighed-reports".into()],
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_ban_notice_counts_down",
        &["A"],
        1,
        LOG_SHOWS_BAN,
        &setup,
        ban_scenario,
    )
}

type Ws = WebSocketStream<TcpStream>;

/// A test client of the signalling protocol from `source`, on a runtime of
/// its own (the browser tests are synchronous).
pub(crate) struct RawClient {
    rt: tokio::runtime::Runtime,
    ws: Ws,
    source: &'static str,
}

impl RawClient {
    pub(crate) fn connect(source: &'static str, server: SocketAddr) -> Result<RawClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ws = rt.block_on(async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(format!("{source}:0").parse()?)?;
            let tcp = socket
                .connect(server)
                .await
                .with_context(|| format!("{source}: cannot connect to {server}"))?;
            let (ws, _) =
                tokio::time::timeout(STEP, client_async(format!("ws://{server}/ws"), tcp))
                    .await
                    .context("WebSocket handshake timed out")??;
            anyhow::Ok(ws)
        })?;
        Ok(RawClient { rt, ws, source })
    }

    pub(crate) fn send(&mut self, v: Value) -> Result<()> {
        let RawClient { rt, ws, source } = self;
        rt.block_on(ws.send(Message::text(v.to_string())))
            .with_context(|| format!("{source}: cannot send {v}"))
    }

    /// Reads messages until one of type `kind` (others are skipped, as a
    /// client that ignores the browser's signals would); fails on a close
    /// or after [`STEP`].
    pub(crate) fn expect(&mut self, kind: &str) -> Result<Value> {
        let RawClient { rt, ws, source } = self;
        let mut skipped = Vec::new();
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + STEP;
            loop {
                let next = tokio::time::timeout_at(deadline, ws.next()).await;
                match next {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t)?;
                        if v["type"] == json!(kind) {
                            return Ok(v);
                        }
                        skipped.push(v["type"].clone());
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => bail!("{source}: socket ended waiting for {kind}: {other:?}"),
                    Err(_) => bail!("{source}: no {kind} within {STEP:?} (got only {skipped:?})"),
                }
            }
        })
    }

    pub(crate) fn close(mut self) {
        let RawClient { rt, ws, .. } = &mut self;
        let _ = rt.block_on(ws.close(None));
    }
}

fn ban_scenario(run: &Run) -> Result<()> {
    let a = run.browser("A")?;
    let url = run.server_url()?;
    let server: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("no address in {url}"))?;
    let metrics_url = format!("{url}metrics");

    a.click("start")?;
    wait_for("A searching", &[a], |s| s[0].state == "searching")?;
    let mut reporters = Vec::new();
    for (i, source) in ["127.0.2.2", "127.0.3.2", "127.0.4.2"]
        .into_iter()
        .enumerate()
    {
        let mut raw = RawClient::connect(source, server)?;
        raw.send(json!({"type": "hello", "version": 1}))?;
        raw.expect("welcome")?;
        raw.send(json!({"type": "search"}))?;
        let matched = raw.expect("matched")?;
        let call = matched["call"].as_u64().context("matched without a call")?;
        wait_for(
            &format!("A in a call with the client from {source}"),
            &[a],
            |s| matches!(s[0].state.as_str(), "connecting" | "connected") && s[0].has_pc,
        )?;
        // Something relayed through the server, for the log check: a
        // candidate A cannot use (it has no remote description from us).
        let marker = format!("e2erelayed{i}x{}", std::process::id());
        run.relayed(&marker);
        raw.send(json!({"type": "signal", "call": call, "candidate": {
            "candidate": format!("candidate:{marker} 1 udp 1 127.0.0.1 9 typ host"),
            "sdpMid": "0", "sdpMLineIndex": 0}}))?;
        raw.send(json!({"type": "report", "reason": "harassment"}))?;
        raw.expect("idle")?;
        reporters.push(raw);
        if i < 2 {
            wait_for(
                &format!("A back in the queue after report {}", i + 1),
                &[a],
                |s| {
                    s[0].state == "searching"
                        && !s[0].has_pc
                        && s[0].status.contains("ended the call")
                },
            )?;
        }
    }

    // The third report completed the ban: A, put back in the queue by the
    // server, was refused with `banned`.
    let notice = wait_ban_notice(a)?;
    let snap = a.snapshot()?;
    ensure!(
        snap.state == "idle" && snap.start_enabled == Some(false) && !snap.has_pc,
        "A: banned, but the page is not idle with Start disabled: {snap}"
    );
    println!("ban: A shows {:?}, notice {notice:?}", snap.status);
    let first = notice.1;
    std::thread::sleep(Duration::from_millis(2200));
    let later = wait_ban_notice(a)?;
    ensure!(
        later.1 <= first - 1000.0 && later.1 > first - 10_000.0,
        "A: the ban notice does not count down: {first} ms left, then {} ms 2.2 s later",
        later.1
    );
    ensure!(
        a.snapshot()?.start_enabled == Some(false),
        "A: Start enabled while banned"
    );
    let body = http_get(&metrics_url)?.2;
    let (reports, bans) = (
        metric_in(&body, "earshot_reports_total"),
        metric_in(&body, "earshot_bans_total"),
    );
    ensure!(
        reports == Some(3) && bans == Some(1),
        "/metrics after three reports: reports {reports:?}, bans {bans:?}:\n{body}"
    );

    // A fresh page knows nothing of the ban; Start asks the server, which
    // still says `banned`.
    a.goto(&url)?;
    let snap = a.snapshot()?;
    let shown = ban_notice(a)?;
    ensure!(
        snap.state == "idle" && snap.start_enabled == Some(true) && shown.is_none(),
        "A: a reloaded page should know nothing of the ban: {snap}, notice {shown:?}"
    );
    a.click("start")?;
    let again = wait_ban_notice(a)?;
    let snap = wait_for(
        "A idle, Start disabled, after Start while banned",
        &[a],
        |s| s[0].state == "idle" && s[0].start_enabled == Some(false),
    )?;
    report(&format!(
        "ban: after 3 reports from 3 addresses A shows {:?} ({:.0} s left), {:.0} s left 2.2 s \
         later; after a reload and Start: {:?}, status {:?}",
        notice.0,
        first / 1000.0,
        later.1 / 1000.0,
        again.0,
        snap[0].status
    ));
    for raw in reporters {
        raw.close();
    }
    Ok(())
}

/// The ban notice's text and time left (`data-retry-after-ms`), while shown.
fn ban_notice(x: &Browser) -> Result<Option<(String, f64)>> {
    let v = x.execute(
        "const n = document.querySelector('[data-testid=\"ban-notice\"]'); \
         if (!n || n.hidden || n.closest('[hidden]')) return null; \
         return [n.textContent, Number(n.dataset.retryAfterMs)]",
        json!([]),
    )?;
    if v.is_null() {
        return Ok(None);
    }
    let text = v[0].as_str().unwrap_or_default().to_string();
    let left = v[1]
        .as_f64()
        .context("ban notice without data-retry-after-ms")?;
    Ok(Some((text, left)))
}

/// Waits for the ban notice to show about an hour ("60 minutes" or "59
/// minutes", 59 to 60 minutes left).
fn wait_ban_notice(x: &Browser) -> Result<(String, f64)> {
    poll(&format!("{}: the ban notice", x.name), STEP, || {
        Ok(match ban_notice(x)? {
            Some((text, left))
                if (59.0 * 60_000.0..=60.0 * 60_000.0).contains(&left)
                    && (text.contains("60 minutes") || text.contains("59 minutes")) =>
            {
                Ok((text, left))
            }
            other => Err(format!("notice {other:?}; page {}", x.snapshot()?)),
        })
    })
}

// ------------------------------------------------------------ proof of work

/// The server asks every `hello` for proof of work (`--pow always
/// --pow-difficulty 20000`). Each page shows `pow-progress` while it solves
/// (`data-state` `solving`, shown), then `solved`, gets its `welcome` after
/// that, and hides the progress; then it works: A and B press Start, meet,
/// hear each other and chat. A script installed before the page's own
/// records every change of the progress element, so that a fast solve is
/// not missed between two looks. Ends with the privacy checks of
/// `Run::finish`.
#[test]
fn browser_pow_progress_then_welcome() -> Result<()> {
    let setup = Setup {
        server_args: ["--pow", "always", "--pow-difficulty", "20000"]
            .map(String::from)
            .to_vec(),
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_pow_progress_then_welcome",
        &["A", "B"],
        0,
        LOG_SHOWS_CALL,
        &setup,
        pow_scenario,
    )
}

/// Installed before the page's own scripts: `window.__e2ePow`, every
/// distinct look of the proof-of-work progress (`state` = its
/// `data-state`, `now` = `aria-valuenow`, `shown`, `at` = epoch ms), and
/// `window.__e2ePowWire`: the `maxnumber` of each `challenge` the page got
/// and the `number` of each `hello` with `pow` it sent. Only listens.
const POW_WATCH_JS: &str = r#"
(() => {
  const log = [];
  Object.defineProperty(window, '__e2ePow', {value: log});
  const wire = {challenges: [], answers: []};
  Object.defineProperty(window, '__e2ePowWire', {value: wire});
  const Socket = window.WebSocket;
  window.WebSocket = class extends Socket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', ev => {
        try {
          const m = JSON.parse(ev.data);
          if (m.type === 'challenge') wire.challenges.push({maxnumber: m.maxnumber, at: Date.now()});
        } catch {}
      });
    }
  };
  const send = Socket.prototype.send;
  Socket.prototype.send = function (data) {
    try {
      const m = JSON.parse(data);
      if (m.type === 'hello' && m.pow) wire.answers.push({number: m.pow.number, at: Date.now()});
    } catch {}
    return send.call(this, data);
  };
  const look = () => {
    const bar = document.getElementById('pow-progress');
    if (!bar) return;
    const rec = {state: bar.dataset.state || '', now: bar.getAttribute('aria-valuenow'),
                 shown: !bar.closest('[hidden]'), at: Date.now()};
    const last = log[log.length - 1];
    if (!last || last.state !== rec.state || last.now !== rec.now || last.shown !== rec.shown) {
      log.push(rec);
    }
  };
  new MutationObserver(look).observe(document,
    {subtree: true, childList: true, attributes: true, characterData: true});
})();
"#;

fn pow_scenario(run: &Run) -> Result<()> {
    let (a, b) = (run.browser("A")?, run.browser("B")?);
    let url = run.server_url()?;
    for x in [a, b] {
        x.session.add_init_script(POW_WATCH_JS)?;
        x.goto(&url)?;
    }
    let mut figures = Vec::new();
    for x in [a, b] {
        // Welcomed: the socket got its `welcome`, and the progress is gone.
        let (log, welcome) = poll(
            &format!("{}: welcome after proof of work", x.name),
            STEP,
            || {
                let log = x.execute("return window.__e2ePow", json!([]))?;
                let sockets = x.sockets()?;
                let welcome = sockets.iter().find_map(|s| s["welcome"].as_f64());
                let last = log.as_array().and_then(|l| l.last()).cloned();
                Ok(match (welcome, last) {
                    (Some(w), Some(last)) if last["shown"] == json!(false) => Ok((log, w)),
                    _ => Err(format!("progress log {log}; sockets {sockets:?}")),
                })
            },
        )?;
        let log = log.as_array().cloned().unwrap_or_default();
        let solving = log
            .iter()
            .filter(|r| r["state"] == json!("solving") && r["shown"] == json!(true))
            .collect::<Vec<_>>();
        let solved = log
            .iter()
            .find(|r| r["state"] == json!("solved") && r["shown"] == json!(true));
        let (Some(first), Some(solved)) = (solving.first(), solved) else {
            bail!(
                "{}: pow-progress was never shown solving and then solved: {log:?}",
                x.name
            );
        };
        let at = |r: &Value| r["at"].as_f64().unwrap_or(f64::NAN);
        ensure!(
            at(first) <= at(solved) && at(solved) <= welcome,
            "{}: expected solving, then solved, then welcome: {log:?}, welcome at {welcome}",
            x.name
        );
        let pow = x.execute("return window.earshot.pow", json!([]))?;
        ensure!(
            pow["state"] == json!("solved"),
            "{}: window.earshot.pow is {pow}, not solved",
            x.name
        );
        let wire = x.execute("return window.__e2ePowWire", json!([]))?;
        let (challenges, answers) = (&wire["challenges"], &wire["answers"]);
        ensure!(
            challenges.as_array().map(Vec::len) == Some(1)
                && challenges[0]["maxnumber"] == json!(20000)
                && answers.as_array().map(Vec::len) == Some(1),
            "{}: expected one challenge (maxnumber 20000) and one answer: {wire}",
            x.name
        );
        let steps: Vec<String> = solving
            .iter()
            .map(|r| r["now"].as_str().unwrap_or("?").to_string())
            .collect();
        figures.push(format!(
            "{}: number {} of 0..=20000, solving shown for {:.0} ms (at {}%), welcome {:.0} ms \
             after solved",
            x.name,
            answers[0]["number"],
            at(solved) - at(first),
            steps.join("/"),
            welcome - at(solved)
        ));
    }
    report(&format!(
        "proof of work (--pow-difficulty 20000): {}",
        figures.join("; ")
    ));
    meet(a, b)?;
    run.chat(a, &[b], "after proof of work, A to B")?;
    run.chat(b, &[a], "after proof of work, B to A")?;
    a.click("end")?;
    wait_for("A idle, B searching", &[a, b], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    b.click("end")?;
    wait_for("B idle", &[b], |s| is_ended(&s[0]))?;
    Ok(())
}

// ----------------------------------------------------------------- shared

/// The state after End or Report: `idle` or `ended`, with Start enabled.
fn is_ended(snap: &Snapshot) -> bool {
    (snap.state == "idle" || snap.state == "ended") && snap.start_enabled == Some(true)
}

/// `a` presses Start, then `b`: both connected, hearing each other.
fn meet(a: &Browser, b: &Browser) -> Result<()> {
    for x in [a, b] {
        let snap = x.snapshot()?;
        ensure!(
            snap.state == "idle" && snap.start_enabled == Some(true),
            "{}: expected idle with Start enabled: {snap}",
            x.name
        );
    }
    a.click("start")?;
    wait_for(&format!("{} searching", a.name), &[a], |s| {
        s[0].state == "searching"
    })?;
    b.click("start")?;
    wait_for(
        &format!("{} and {} connected", a.name, b.name),
        &[a, b],
        |s| s.iter().all(|s| s.state == "connected" && s.has_pc),
    )?;
    check_call_audio(&[a, b])
}

/// Each of the two pages in a room has one peer connection, connected,
/// with audio with energy coming in (see `harness::check_audio`).
fn check_room_audio(browsers: &[&Browser]) -> Result<()> {
    let stats = |x: &Browser| -> Result<Value> {
        let v = x.execute_async(ROOM_STATS_JS, json!([]))?;
        if let Some(e) = v["error"].as_str() {
            bail!("{}: no room stats: {e}", x.name);
        }
        Ok(v)
    };
    for x in browsers {
        poll(&format!("{}: audio from the room", x.name), STEP, || {
            let s = stats(x)?;
            Ok(
                if s["connectionState"] == json!("connected")
                    && s["energy"].as_f64().unwrap_or(0.0) > 0.0
                {
                    Ok(())
                } else {
                    Err(s.to_string())
                },
            )
        })?;
    }
    let first = browsers
        .iter()
        .map(|x| stats(x))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    for (x, first) in browsers.iter().zip(&first) {
        check_audio(
            &format!("{} in the room", x.name),
            first,
            &stats(x)?,
            "over 1 s",
        )?;
    }
    Ok(())
}

/// The one peer connection of a room page of two, in the shape of `Browser::audio_stats`.
const ROOM_STATS_JS: &str = r#"
const done = arguments[arguments.length - 1];
const pcs = Object.values((window.earshot && window.earshot.peers) || {});
if (pcs.length !== 1) { done({error: `${pcs.length} peer connections`}); return; }
const pc = pcs[0];
pc.getStats().then(stats => {
  const out = {inbound: 0, bytes: 0, energy: 0, candidates: [],
               connectionState: pc.connectionState};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.inbound += 1;
      out.bytes += r.bytesReceived || 0;
      out.energy += r.totalAudioEnergy || 0;
    }
    if (r.type === 'local-candidate' || r.type === 'remote-candidate') {
      out.candidates.push({kind: r.type, address: r.address ?? r.ip ?? null, port: r.port});
    }
  });
  done(out);
}, err => done({error: String(err)}));
"#;
