//! Helpers shared by the integration tests that drive real processes.
//!
//! - [`webdriver`]: a tiny blocking W3C WebDriver client (std `TcpStream` +
//!   serde_json) and the chromedriver or geckodriver process it talks to.
//! - [`bidi`]: the WebDriver BiDi socket of a Firefox session, for scripts
//!   before the page's own and for its console.
//! - [`server`]: the real `earshot` binary on loopback ports, stopped with
//!   SIGTERM or killed, with its output kept for failure messages and for
//!   the log privacy check (`server::check_log`).
//! - [`delay`]: TCP and UDP proxies on loopback that add latency each way,
//!   for figures in round trips.
//! - [`netns`]: the loopback-only network guard that every WebRTC test runs
//!   behind, so no candidate or packet ever leaves 127.0.0.1.
//! - [`redis`]: a real `redis-server` on a loopback port, for several
//!   Earshot nodes to share, and looks at what they keep in it.
//! - [`turn_client`]: a TURN client of our own over UDP or TCP.
//! - [`ws`]: a signalling client over WebSocket, for the multi-node tests.
//! - [`harness`]: the browser scenario harness on top of those three: a
//!   `Run` (servers, browsers, the closing privacy checks), a `Browser` (one
//!   page, its probes and snapshots), polling, audio checks and the report.
//!
//! Everything that starts a process or makes a directory hands back a guard
//! that undoes it on drop, so a failing test leaves nothing behind.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod bidi;
pub mod delay;
pub mod harness;
pub mod netns;
pub mod redis;
pub mod server;
pub mod turn_client;
pub mod webdriver;
pub mod ws;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a child process
/// that can only be told a port number (chromedriver has no `--port=0`).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `earshot` binary: `$EARSHOT_BIN` if set (scripts/test points it at
/// the one unpacked from the Debian package), else cargo's own for this
/// crate's tests, or for another crate's tests (earshot-peer's include this
/// module) the one `cargo build -p earshot-server` left in the same target
/// directory.
pub fn earshot_binary() -> String {
    if let Ok(bin) = std::env::var("EARSHOT_BIN") {
        return bin;
    }
    if let Some(bin) = option_env!("CARGO_BIN_EXE_earshot") {
        return bin.to_string();
    }
    // A test binary lives in target/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("earshot")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "earshot".into())
}
