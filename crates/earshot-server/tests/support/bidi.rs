//! A tiny blocking WebDriver BiDi client: the WebSocket that geckodriver
//! opens to Firefox for a session made with `webSocketUrl: true`.
//!
//! Classic WebDriver drives the page; this socket only does what classic
//! WebDriver cannot and what chromedriver does through its DevTools
//! extension: scripts that run in every new document before the page's own
//! (`script.addPreloadScript`), and the page's console (`log.entryAdded`
//! events, kept until read). One command at a time: a command waits for the
//! answer with its id, and the events read meanwhile are kept.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Console entries kept until read, the oldest dropped first.
const MAX_LOG: usize = 500;

pub struct Bidi {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    log: VecDeque<String>,
}

impl Bidi {
    /// Connects to `url` (`ws://127.0.0.1:PORT/session/ID`, as the new
    /// session's `webSocketUrl` capability says) and subscribes to the
    /// console.
    pub fn connect(url: &str, timeout: Duration) -> Result<Bidi> {
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("not a ws:// URL: {url}"))?;
        let stream =
            TcpStream::connect(host).with_context(|| format!("cannot connect to {url}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let (socket, _) = tungstenite::client(url, stream)
            .map_err(|e| anyhow!("WebSocket handshake with {url}: {e}"))?;
        let mut bidi = Bidi {
            socket,
            next_id: 1,
            log: VecDeque::new(),
        };
        bidi.command("session.subscribe", json!({"events": ["log.entryAdded"]}))?;
        Ok(bidi)
    }

    /// Sends one command and waits for its result.
    pub fn command(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::text(text))
            .with_context(|| format!("BiDi {method}: cannot send"))?;
        loop {
            let message = self
                .socket
                .read()
                .with_context(|| format!("BiDi {method}: no answer"))?;
            let Message::Text(text) = message else {
                continue;
            };
            let mut value: Value = serde_json::from_str(text.as_str())
                .with_context(|| format!("BiDi {method}: not JSON: {text}"))?;
            if value["id"] == json!(id) {
                if value["type"] == json!("error") {
                    bail!(
                        "BiDi {method}: {} {}",
                        value["error"].as_str().unwrap_or_default(),
                        value["message"].as_str().unwrap_or_default()
                    );
                }
                return Ok(value["result"].take());
            }
            if value["method"] == json!("log.entryAdded") {
                let entry = &value["params"];
                if self.log.len() == MAX_LOG {
                    self.log.pop_front();
                }
                self.log.push_back(format!(
                    "{} {}",
                    entry["level"].as_str().unwrap_or("?"),
                    entry["text"].as_str().unwrap_or_default()
                ));
            }
        }
    }

    /// Runs the function `declaration` (say `() => { ... }`) in every
    /// document loaded from now on, before any of the page's own scripts.
    pub fn add_preload_script(&mut self, declaration: &str) -> Result<()> {
        self.command(
            "script.addPreloadScript",
            json!({ "functionDeclaration": declaration }),
        )?;
        Ok(())
    }

    /// The console entries since the last call, oldest first.
    pub fn take_log(&mut self) -> Result<Vec<String>> {
        // Every entry logged before this command is read before its answer.
        self.command("browsingContext.getTree", json!({"maxDepth": 0}))?;
        Ok(self.log.drain(..).collect())
    }
}
