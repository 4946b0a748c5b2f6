//! The real `earshot` binary, started on loopback ports for a test.
//!
//! It listens on `127.0.0.1:0` (HTTP and STUN) and announces its URL on
//! stdout. Two threads drain stdout and stderr for as long as it runs, so a
//! chatty server never blocks on a full pipe, and keep the lines for failure
//! messages. Dropping the [`Server`] kills the process.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the server may take to print its URL.
const STARTUP: Duration = Duration::from_secs(20);

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT/`, as the server announced it.
    pub url: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `binary --listen 127.0.0.1:0 --stun-listen 127.0.0.1:0` plus
    /// `extra_args`, and waits for the URL on its stdout.
    pub fn start(binary: &str, extra_args: &[&str]) -> Result<Server> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0"])
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
        drain(stdout, "out", Arc::clone(&output), Some(url_tx));
        drain(stderr, "err", Arc::clone(&output), None);
        let mut server = Server {
            child,
            url: String::new(),
            output,
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
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
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = url_tx.as_ref().and_then(|_| find_url(&line)) {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(url);
                }
            }
            output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}| {line}"));
        }
    });
}

/// `http://127.0.0.1:PORT/` out of a line such as
/// `earshot listening on http://127.0.0.1:41234/`.
fn find_url(line: &str) -> Option<String> {
    let start = line.find("http://127.0.0.1:")?;
    let rest = &line[start + "http://127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let port: u16 = digits.parse().ok()?;
    (port != 0).then(|| format!("http://127.0.0.1:{port}/"))
}
