//! A tiny blocking W3C WebDriver client, enough to drive Chromium through
//! chromedriver and Firefox through geckodriver: sessions, navigation,
//! elements, scripts.
//!
//! WebDriver is JSON over HTTP/1.1, so this is one `TcpStream` per command
//! (`Connection: close`) and serde_json, nothing more. Every response is
//! `{"value": ...}`; an error is a `value` with an `error` code, returned as
//! an `Err` naming the command.
//!
//! [`ChromeDriver`] owns the chromedriver process; each [`Session`] is its own
//! browser process with a fresh profile directory. Both clean up on drop, and
//! a Chromium session borrows its driver so it is always deleted before the
//! driver is killed (killing chromedriver first would orphan its Chromium).
//! geckodriver drives one session at a time, so each Firefox session
//! ([`Session::firefox`]) owns a geckodriver of its own, and a WebDriver BiDi
//! socket (`super::bidi`) for what chromedriver does with DevTools: scripts
//! before the page's own, and the console.

use super::TempDir;
use super::bidi::Bidi;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The browser: Debian's `chromium`, overridable with `EARSHOT_CHROMIUM`.
pub fn chromium_path() -> String {
    std::env::var("EARSHOT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// The driver: Debian's `chromium-driver`, overridable with `EARSHOT_CHROMEDRIVER`.
pub fn chromedriver_path() -> String {
    std::env::var("EARSHOT_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

/// What is missing to run browser tests, if anything.
pub fn missing_browser() -> Option<String> {
    missing(
        [chromium_path(), chromedriver_path()],
        "apt-get install chromium chromium-driver",
    )
}

/// Which of `paths` do not exist, and how to get them (`install`), if any.
fn missing(paths: [String; 2], install: &str) -> Option<String> {
    let missing: Vec<String> = paths
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found ({install}, or run scripts/test)",
            missing.join(" and ")
        )
    })
}

/// The other browser: Debian's `firefox-esr`, overridable with `EARSHOT_FIREFOX`.
pub fn firefox_path() -> String {
    std::env::var("EARSHOT_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into())
}

/// Its driver: `EARSHOT_GECKODRIVER`, else `geckodriver` on `PATH` or where
/// `cargo install geckodriver` puts it (Debian has no package of it).
pub fn geckodriver_path() -> String {
    if let Ok(path) = std::env::var("EARSHOT_GECKODRIVER") {
        return path;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin")))
        .map(|dir| dir.join("geckodriver"))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "geckodriver".into())
}

/// What is missing to run Firefox tests, if anything.
pub fn missing_firefox() -> Option<String> {
    missing(
        [firefox_path(), geckodriver_path()],
        "apt-get install firefox-esr, cargo install --locked geckodriver",
    )
}

/// The key of a web element reference in WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest a single command may take; `execute/async` has its own, shorter,
/// script timeout inside this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Chromium flags for a headless browser with a fake microphone that is
/// allowed to use it, and that talks WebRTC over loopback and nothing else.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
];

/// Firefox prefs for a headless browser with a fake microphone that it may
/// use without asking, that plays audio without a gesture, and that offers
/// its real addresses as ICE candidates, loopback included (the only
/// others where the tests run it are the namespace's veth, see `netns`).
fn firefox_prefs() -> Value {
    json!({
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": true,
        "media.peerconnection.ice.loopback": true,
        "media.peerconnection.ice.obfuscate_host_addresses": false,
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
    })
}

/// A running WebDriver server (chromedriver or geckodriver) on a loopback
/// port, killed on drop.
struct DriverProcess {
    child: Child,
    port: u16,
}

impl DriverProcess {
    /// Starts `binary` with `args` and waits until it says it is ready on
    /// `port`.
    fn start(binary: &str, args: &[String], port: u16) -> Result<DriverProcess> {
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let mut driver = DriverProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = driver.request("GET", "/status", None)
                && status["ready"] == json!(true)
            {
                return Ok(driver);
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                bail!("{binary} exited at startup with {exit}");
            }
            if Instant::now() > deadline {
                bail!("{binary} {args:?} not ready within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; the response's `value`, or its error.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        http_json(self.port, method, path, body)
            .with_context(|| format!("WebDriver {method} {path}"))
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running chromedriver on a loopback port.
pub struct ChromeDriver(DriverProcess);

impl ChromeDriver {
    pub fn start() -> Result<ChromeDriver> {
        let port = super::free_port()?;
        let driver = DriverProcess::start(&chromedriver_path(), &[format!("--port={port}")], port)?;
        Ok(ChromeDriver(driver))
    }

    /// A new Chromium with its own fresh profile.
    pub fn session(&self) -> Result<Session<'_>> {
        self.session_with(false)
    }

    /// [`ChromeDriver::session`], and with `network_log` chromedriver also
    /// keeps the browser's performance log (`goog:loggingPrefs`
    /// `performance`): the DevTools `Network.*` and `Page.*` events of every
    /// page the session loads, read with [`Session::log`]`("performance")`.
    pub fn session_with(&self, network_log: bool) -> Result<Session<'_>> {
        self.session_opts(network_log, true, &[])
    }

    /// [`ChromeDriver::session_with`], with `extra` flags for Chromium;
    /// without `loopback`, Chromium gets no
    /// `--allow-loopback-in-peer-connection`, so 127.0.0.1 is never one of
    /// its ICE candidates (STUN and TURN on loopback still work).
    pub fn session_opts(
        &self,
        network_log: bool,
        loopback: bool,
        extra: &[String],
    ) -> Result<Session<'_>> {
        let profile = TempDir::new("earshot-chromium")?;
        let mut args: Vec<String> = CHROMIUM_ARGS
            .iter()
            .filter(|a| loopback || **a != "--allow-loopback-in-peer-connection")
            .map(|a| a.to_string())
            .collect();
        args.extend_from_slice(extra);
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let logging = if network_log {
            json!({"browser": "ALL", "performance": "ALL"})
        } else {
            json!({"browser": "ALL"})
        };
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
                    "goog:chromeOptions": {"binary": chromium_path(), "args": args},
                    "goog:loggingPrefs": logging,
                }
            }
        });
        let value = self
            .0
            .request("POST", "/session", Some(&caps))
            .context("cannot create a Chromium session")?;
        Ok(Session {
            port: self.0.port,
            id: session_id(&value)?,
            firefox: None,
            _profile: profile,
            _driver: PhantomData,
        })
    }
}

/// What a Firefox session has beyond a Chromium one.
struct Firefox {
    /// Its WebDriver BiDi socket.
    bidi: Mutex<Bidi>,
    /// The browser's process id (`moz:processID`), killed on drop if
    /// deleting the session left it running.
    pid: Option<u64>,
    /// Its own geckodriver, dropped (killed) after the session is deleted.
    _driver: DriverProcess,
}

/// One browser (one Chromium or Firefox process), deleted on drop.
pub struct Session<'d> {
    /// The port of its WebDriver server.
    port: u16,
    id: String,
    firefox: Option<Firefox>,
    _profile: TempDir,
    /// A Chromium session borrows its chromedriver.
    _driver: PhantomData<&'d ChromeDriver>,
}

fn session_id(value: &Value) -> Result<String> {
    Ok(value["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("new session without sessionId: {value}"))?
        .to_string())
}

impl Session<'_> {
    /// A new Firefox with its own fresh profile and its own geckodriver,
    /// and a BiDi socket to it.
    pub fn firefox() -> Result<Session<'static>> {
        let profile = TempDir::new("earshot-firefox")?;
        let (port, bidi_port) = (super::free_port()?, super::free_port()?);
        let driver = DriverProcess::start(
            &geckodriver_path(),
            &[
                format!("--port={port}"),
                format!("--websocket-port={bidi_port}"),
            ],
            port,
        )?;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "firefox",
                    "pageLoadStrategy": "normal",
                    "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
                    "webSocketUrl": true,
                    "moz:firefoxOptions": {
                        "binary": firefox_path(),
                        "args": ["-headless", "-profile", profile.path().display().to_string()],
                        "prefs": firefox_prefs(),
                    },
                }
            }
        });
        let value = driver
            .request("POST", "/session", Some(&caps))
            .context("cannot create a Firefox session")?;
        let mut session = Session {
            port,
            id: session_id(&value)?,
            firefox: None,
            _profile: profile,
            _driver: PhantomData,
        };
        let url = value["capabilities"]["webSocketUrl"]
            .as_str()
            .with_context(|| format!("no webSocketUrl in the new session: {value}"))?;
        // On failure `session` is deleted (it quits Firefox) before
        // `driver` is killed: they drop in that order.
        let bidi = Bidi::connect(url, COMMAND_TIMEOUT)?;
        session.firefox = Some(Firefox {
            bidi: Mutex::new(bidi),
            pid: value["capabilities"]["moz:processID"].as_u64(),
            _driver: driver,
        });
        Ok(session)
    }
}

impl<'d> Session<'d> {
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        http_json(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
        .with_context(|| format!("WebDriver {method} /session/{}{path}", self.id))
    }

    /// Whether this is a Firefox.
    pub fn is_firefox(&self) -> bool {
        self.firefox.is_some()
    }

    /// The BiDi socket of a Firefox session.
    fn bidi(&self) -> Result<std::sync::MutexGuard<'_, Bidi>> {
        let firefox = self
            .firefox
            .as_ref()
            .context("WebDriver BiDi: not a Firefox session")?;
        Ok(firefox.bidi.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))?;
        Ok(())
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element<'_, 'd>> {
        let value = self
            .cmd(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            )
            .with_context(|| format!("no element {css}"))?;
        Ok(Element {
            session: self,
            id: element_id(&value)?,
        })
    }

    /// The element with `data-testid="{id}"`.
    pub fn testid(&self, id: &str) -> Result<Element<'_, 'd>> {
        self.find(&format!("[data-testid=\"{id}\"]"))
    }

    /// Runs `script` as a function body with `args`; its return value.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Runs `script` with a callback as its last argument; what it passed.
    pub fn execute_async(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Runs a Chrome DevTools Protocol command through chromedriver (its
    /// `goog/cdp/execute` extension); the command's result.
    pub fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(&json!({"cmd": cmd, "params": params})),
        )
    }

    /// Runs `source` in every document this session loads from now on,
    /// before any of the page's own scripts. Firefox runs it as the body
    /// of a function, so names it declares stay its own.
    pub fn add_init_script(&self, source: &str) -> Result<()> {
        if self.is_firefox() {
            return self
                .bidi()?
                .add_preload_script(&format!("() => {{\n{source}\n}}"));
        }
        self.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )?;
        Ok(())
    }

    /// A PNG of the current page's viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.cmd("GET", "/screenshot", None)?;
        let text = value.as_str().context("the screenshot is not a string")?;
        // Standard base64 with padding, as WebDriver sends screenshots.
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("the screenshot is not base64")
    }

    /// Every cookie the browser holds for the current page, `HttpOnly` ones
    /// included (which `document.cookie` does not show).
    pub fn cookies(&self) -> Result<Vec<Value>> {
        match self.cmd("GET", "/cookie", None)? {
            Value::Array(cookies) => Ok(cookies),
            other => bail!("GET /cookie: not an array: {other}"),
        }
    }

    /// The entries of one of chromedriver's logs (`browser`, `performance`
    /// when the session was made with it) since the last read of that log.
    pub fn log(&self, kind: &str) -> Result<Vec<Value>> {
        match self.cmd("POST", "/se/log", Some(&json!({ "type": kind })))? {
            Value::Array(entries) => Ok(entries),
            other => bail!("POST /se/log {kind}: not an array: {other}"),
        }
    }

    /// The page's console messages since the last call (a chromedriver
    /// extension, or BiDi `log.entryAdded` events in Firefox; for failure
    /// messages), one per line.
    pub fn console_log(&self) -> String {
        if self.is_firefox() {
            return match self.bidi().and_then(|mut b| b.take_log()) {
                Ok(lines) => lines.join("\n"),
                Err(e) => format!("(no console log: {e:#})"),
            };
        }
        match self.cmd("POST", "/se/log", Some(&json!({"type": "browser"}))) {
            Ok(Value::Array(entries)) => entries
                .iter()
                .map(|e| format!("{} {}", e["level"], e["message"]))
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(other) => other.to_string(),
            Err(e) => format!("(no console log: {e:#})"),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        // geckodriver waits for its Firefox to quit; should it not have,
        // killing geckodriver next would orphan it.
        if let Some(pid) = self.firefox.as_ref().and_then(|f| f.pid) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("firefox") {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// A reference to an element of a session's current page.
pub struct Element<'s, 'd> {
    session: &'s Session<'d>,
    id: String,
}

impl Element<'_, '_> {
    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value> {
        self.session
            .cmd(method, &format!("/element/{}{what}", self.id), body)
    }

    pub fn click(&self) -> Result<()> {
        self.cmd("POST", "/click", Some(&json!({})))?;
        Ok(())
    }

    /// Types `text` into the element, as keystrokes.
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.cmd("POST", "/value", Some(&json!({ "text": text })))?;
        Ok(())
    }

    pub fn clear(&self) -> Result<()> {
        self.cmd("POST", "/clear", Some(&json!({})))?;
        Ok(())
    }

    pub fn text(&self) -> Result<String> {
        let value = self.cmd("GET", "/text", None)?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    pub fn attribute(&self, name: &str) -> Result<Option<String>> {
        let value = self.cmd("GET", &format!("/attribute/{name}"), None)?;
        Ok(value.as_str().map(str::to_string))
    }

    /// A DOM property (such as `value`), as JSON.
    pub fn property(&self, name: &str) -> Result<Value> {
        self.cmd("GET", &format!("/property/{name}"), None)
    }

    pub fn enabled(&self) -> Result<bool> {
        Ok(self.cmd("GET", "/enabled", None)? == json!(true))
    }
}

fn element_id(value: &Value) -> Result<String> {
    value[ELEMENT_KEY]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("not an element reference: {value}"))
}

/// One HTTP/1.1 exchange with 127.0.0.1:`port`; the `value` of the JSON body.
fn http_json(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    let body = body.map(Value::to_string);
    if let Some(body) = &body {
        request.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(body) = &body {
        request.push_str(body);
    }
    stream.write_all(request.as_bytes())?;
    let (status, payload) = read_response(&mut stream)?;

    let mut json: Value = serde_json::from_slice(&payload).with_context(|| {
        format!(
            "HTTP {status}, body not JSON: {}",
            String::from_utf8_lossy(&payload)
        )
    })?;
    let value = json["value"].take();
    if let Some(error) = value["error"].as_str() {
        bail!(
            "HTTP {status} {error}: {}",
            value["message"].as_str().unwrap_or_default()
        );
    }
    if status != 200 {
        bail!("HTTP {status}: {value}");
    }
    Ok(value)
}

/// Reads one HTTP response: its status and body. chromedriver keeps the
/// connection open despite `Connection: close`, so the body ends where
/// `Content-Length` (or the last chunk) says, not at end of stream.
fn read_response(stream: &mut TcpStream) -> Result<(u16, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut fill = |raw: &mut Vec<u8>| -> Result<bool> {
        // A signal (a child exiting) may interrupt the read: not an error.
        let n = loop {
            match stream.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(&mut raw)? {
            bail!("connection closed before the end of the response headers");
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body_start = split + 4;
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&raw[body_start..])? {
                return Ok((status, body));
            }
            if !fill(&mut raw)? {
                bail!("connection closed inside a chunked body");
            }
        }
    }
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while raw.len() < body_start + len {
            if !fill(&mut raw)? {
                bail!("connection closed inside the body");
            }
        }
        return Ok((status, raw[body_start..body_start + len].to_vec()));
    }
    while fill(&mut raw)? {}
    Ok((status, raw[body_start..].to_vec()))
}

/// The body of a `Transfer-Encoding: chunked` payload, or `None` while the
/// last chunk has not arrived yet.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
