//! PeerJS server, the comparison: the npm package `peer` at a pinned
//! version, installed with `npm install --prefix DIR` into a cache directory
//! (by default `target/peerjs`) when missing, and started under node by
//! `scripts/bench-peerjs-server.js` on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// The `peer` release measured.
pub const VERSION: &str = "1.0.2";
const SCRIPT: &str = include_str!("../../../scripts/bench-peerjs-server.js");

/// Installs `peer@VERSION` into `dir` unless it is there already.
pub fn install(dir: &Path) -> anyhow::Result<()> {
    let manifest = dir.join("node_modules/peer/package.json");
    if let Ok(text) = std::fs::read_to_string(&manifest)
        && text.contains(&format!("\"version\": \"{VERSION}\""))
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("installing peer@{VERSION} into {}", dir.display());
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .arg(format!("peer@{VERSION}"))
        .status()
        .context("cannot run npm (node 20 and npm are needed for --against peerjs)")?;
    ensure!(
        status.success(),
        "npm install peer@{VERSION} failed: {status}"
    );
    Ok(())
}

/// Writes the start script into `dir` (next to its `node_modules`, so that
/// `require("peer")` finds the package) and returns its path.
pub fn script(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench-peerjs-server.js");
    std::fs::write(&path, SCRIPT).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
