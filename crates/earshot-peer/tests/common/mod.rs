//! What earshot-peer's integration tests share: the server test support of
//! earshot-server (the real `earshot` binary, the netns guard, the browser
//! harness), included by path, and helpers around [`Peer`].

#![allow(dead_code)]

#[path = "../../../earshot-server/tests/support/mod.rs"]
pub mod support;

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use earshot_peer::audio::Source;
use earshot_peer::{ConnStats, Peer, PeerConfig, PeerEvent, PeerStats, Target};

/// How long any one step (a match, a connection, audio, a chat line) may take.
pub const STEP: Duration = Duration::from_secs(20);

/// A peer on 127.0.0.1 sending a tone of `hz`.
pub async fn peer(url: &str, hz: f64) -> Result<Peer> {
    let config = PeerConfig {
        source: Source::Tone(hz),
        ..PeerConfig::default()
    };
    Ok(Peer::connect(url, config).await?)
}

/// Polls `peer`'s stats until `ok` holds; fails after [`STEP`] with the last ones.
pub async fn stats_until(
    peer: &Peer,
    what: &str,
    ok: impl Fn(&PeerStats) -> bool,
) -> Result<PeerStats> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let stats = peer.stats().await?;
        if ok(&stats) {
            return Ok(stats);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no {what} within {STEP:?}: {stats:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live connection to `remote` in `stats`.
pub fn conn(stats: &PeerStats, remote: Target) -> Option<&ConnStats> {
    stats
        .connections
        .iter()
        .rev()
        .find(|c| c.remote == Some(remote))
}

/// Whether the audio from `remote` has the frequency `hz` (±15 Hz) and sound.
pub fn hears(stats: &PeerStats, remote: Target, hz: f64) -> bool {
    conn(stats, remote).is_some_and(|c| {
        c.peak_level > 0.05 && c.frequency_hz.is_some_and(|f| (f - hz).abs() <= 15.0)
    })
}

/// Every candidate the peer offered is a 127.0.0.1 one, and there was one.
pub fn check_loopback_candidates(who: &str, stats: &PeerStats) -> Result<()> {
    ensure!(
        !stats.offered_candidates.is_empty(),
        "{who} offered no candidate"
    );
    for c in &stats.offered_candidates {
        // candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
        let address = c.split_whitespace().nth(4).unwrap_or_default();
        ensure!(
            address == "127.0.0.1",
            "{who} offered a non-loopback candidate: {c}"
        );
    }
    Ok(())
}

/// Waits for the chat channel to `remote` to open, skipping other events.
pub async fn chat_open(peer: &mut Peer, who: &str, remote: Target) -> Result<()> {
    Ok(peer
        .wait_for(STEP, &format!("{who}: chat open to {remote:?}"), |e| {
            matches!(e, PeerEvent::ChatOpen { remote: r } if *r == remote).then_some(())
        })
        .await?)
}

/// Waits for `text` from `remote`.
pub async fn chat_from(peer: &mut Peer, who: &str, remote: Target, text: &str) -> Result<()> {
    Ok(peer
        .wait_for(
            STEP,
            &format!("{who}: chat {text:?} from {remote:?}"),
            |e| {
                matches!(e, PeerEvent::Chat { remote: r, text: t } if *r == remote && t == text)
                    .then_some(())
            },
        )
        .await?)
}

/// Prints a figure, and appends it to `$EARSHOT_E2E_REPORT` (scripts/test
/// shows that file at the end).
pub fn report(line: &str) {
    support::harness::report(line);
}
