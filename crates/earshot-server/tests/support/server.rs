//! The real `earshot` binary, started on loopback ports for a test.
//!
//! It listens on `127.0.0.1:0` (HTTP and STUN), or on a given HTTP address
//! to come back on the same port after a restart, and announces its URL on
//! stdout. Two threads drain stdout and stderr for as long as it runs, so a
//! chatty server never blocks on a full pipe, and keep every line: for
//! failure messages, and for [`check_log`], which looks through all of it for
//! things a log must never contain. [`Server::stop`] stops it the way an
//! operator would (SIGTERM); dropping the [`Server`] kills the process.

use anyhow::{Context, Result, bail, ensure};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server may take to print its URL.
const STARTUP: Duration = Duration::from_secs(20);

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT/` (or `https://` with a certificate), as the
    /// server announced it.
    pub url: String,
    output: Arc<Mutex<Vec<String>>>,
    /// The threads draining stdout and stderr; they end when the pipes close.
    drains: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts `binary --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0` plus
    /// `extra_args` (and `--no-turn` unless they name `--turn-listen`), and
    /// waits for the URL on its stdout.
    pub fn start(binary: &str, extra_args: &[&str]) -> Result<Server> {
        Server::start_on(binary, "127.0.0.1:0", extra_args)
    }

    /// `binary` as a node of several on the Redis at `redis_url`, without
    /// proof of work and logging at debug, plus `extra_args`.
    pub fn node(binary: &str, redis_url: &str, extra_args: &[&str]) -> Server {
        let mut args = vec!["--redis", redis_url, "--pow", "off", "--log", "debug"];
        args.extend_from_slice(extra_args);
        Server::start(binary, &args).unwrap()
    }

    /// Like [`Server::start`], with HTTP and the WebSocket on `listen`
    /// (`127.0.0.1:PORT`, e.g. the port of a server that was just stopped);
    /// STUN still gets a fresh port.
    pub fn start_on(binary: &str, listen: &str, extra_args: &[&str]) -> Result<Server> {
        let mut child = Command::new(binary)
            .args(["--listen", listen, "--stun-listen", "127.0.0.1:0"])
            // The embedded TURN server is on by default, on a fixed port:
            // tests that want it name a port of their own.
            .args((!extra_args.contains(&"--turn-listen")).then_some("--no-turn"))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout was piped above");
        let stderr = child.stderr.take().expect("stderr was piped above");
        let drains = vec![
            drain(stdout, "out", Arc::clone(&output), Some(url_tx)),
            drain(stderr, "err", Arc::clone(&output), None),
        ];
        let mut server = Server {
            child,
            url: String::new(),
            output,
            drains,
        };
        match url_rx.recv_timeout(STARTUP) {
            Ok(url) => server.url = url,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                bail!(
                    "earshot did not print http://127.0.0.1:PORT/ on stdout within {STARTUP:?} \
                     (exit status: {status:?}); its output:\n{}",
                    server.output_tail(60)
                );
            }
        }
        Ok(server)
    }

    /// The last `n` lines the server printed, prefixed `out|` or `err|`.
    pub fn output_tail(&self, n: usize) -> String {
        let lines = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    /// Everything the server printed so far, one line each, prefixed `out|`
    /// or `err|`.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of `earshot_NAME` in the server's `/metrics`.
    pub fn metric(&self, name: &str) -> Result<u64> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("earshot_{name} ")))
            .with_context(|| format!("no earshot_{name} in /metrics"))?;
        Ok(value.trim().parse()?)
    }

    /// The HTTP port, from the announced URL.
    pub fn port(&self) -> u16 {
        self.url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL was checked to end in :PORT/ at startup")
    }

    /// Stops the server gracefully: SIGTERM (with the `kill` program, so no
    /// libc), then waits up to `limit` for it to exit and for its output to be
    /// read to the end. Its exit status; an error if it outlives `limit` (it
    /// is then killed).
    pub fn stop(&mut self, limit: Duration) -> Result<ExitStatus> {
        // Only signal a child that has not been reaped: until then its pid
        // cannot belong to anyone else.
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run kill -TERM")?;
        ensure!(kill.success(), "kill -TERM {pid} failed: {kill}");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "earshot did not exit within {limit:?} of SIGTERM; its output:\n{}",
                    self.output_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process: wait for the last lines.
        while !self.drains.iter().all(JoinHandle::is_finished) {
            if Instant::now() > deadline {
                bail!("earshot exited ({status}) but its output pipes stayed open");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(status)
    }
}

/// Checks server `output` for privacy (README: logs never contain an IP
/// address, SDP, ICE candidate or chat text, at any level): none of
/// `secrets` may appear in it, as text or as lowercase hex (the way a
/// WebSocket library's trace of a frame would print a payload). ANSI colour
/// codes are removed first, so they cannot split a match.
///
/// Such a check passes trivially on an empty log, so the output must also
/// show that it was written at trace level and saw the session: a `TRACE`
/// line and every one of `expected`.
pub fn check_log(output: &str, secrets: &[&str], expected: &[&str]) -> Result<()> {
    let log = strip_ansi(output);
    ensure!(
        log.lines().any(|l| l.contains(" TRACE ")),
        "no TRACE line in the server output, so its privacy check proves nothing \
         (was it started with --log trace?):\n{log}"
    );
    for want in expected {
        ensure!(
            log.contains(want),
            "the server output never mentions {want:?}, so it did not see the session \
             and its privacy check proves nothing:\n{log}"
        );
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for needle in [secret.to_string(), hex] {
            if let Some(line) = log.lines().find(|l| l.contains(&needle)) {
                bail!("the server output contains {needle:?} (from {secret:?}): {line}");
            }
        }
    }
    Ok(())
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` line by line into `output` until it closes; sends the first
/// `http://127.0.0.1:PORT/` seen to `url_tx`.
fn drain(
    pipe: impl Read + Send + 'static,
    tag: &'static str,
    output: Arc<Mutex<Vec<String>>>,
    mut url_tx: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = url_tx.as_ref().and_then(|_| find_url(&line))
                && let Some(tx) = url_tx.take()
            {
                let _ = tx.send(url);
            }
            output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}| {line}"));
        }
    })
}

/// `http://127.0.0.1:PORT/` (or `https://`) out of a line such as
/// `earshot listening on http://127.0.0.1:41234/`.
fn find_url(line: &str) -> Option<String> {
    let (start, scheme) = ["http", "https"]
        .into_iter()
        .find_map(|s| Some((line.find(&format!("{s}://127.0.0.1:"))?, s)))?;
    let rest = &line[start + format!("{scheme}://127.0.0.1:").len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let port: u16 = digits.parse().ok()?;
    (port != 0).then(|| format!("{scheme}://127.0.0.1:{port}/"))
}

#[test]
fn check_log_needs_a_trace_log_that_saw_the_session_and_finds_secrets() {
    let log = "err| \u{1b}[2m2024\u{1b}[0m \u{1b}[35mTRACE\u{1b}[0m conn: relaying a signal\n\
               err| DEBUG matched call=1";
    assert!(check_log(log, &["v=0", "candidate:"], &["matched"]).is_ok());
    assert!(check_log(log, &["relaying"], &[]).is_err());
    assert!(check_log(log, &["v=0"], &["welcome"]).is_err());
    assert!(check_log("err| DEBUG matched", &["v=0"], &["matched"]).is_err());
    let hex = format!("{log}\nerr| TRACE frame payload: 0x{}", "763d300d0a");
    assert!(check_log(&hex, &["v=0"], &["matched"]).is_err());
    // A colour code inside a secret does not hide it.
    let split = format!("{log}\nerr| TRACE cand\u{1b}[1midate:1");
    assert!(check_log(&split, &["candidate:"], &["matched"]).is_err());
}
