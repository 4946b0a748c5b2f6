//! earshot-peer with real Chromium (Debian's `chromium` and
//! `chromium-driver`, fake microphone) through the real `earshot` binary,
//! using earshot-server's browser harness: as strangers, and in a locked
//! room (the passphrase `auth` checked both ways). Chromium must receive the
//! peer's audio (`inbound-rtp` packets and `totalAudioEnergy` rising), the
//! peer must hear Chromium's fake microphone, and chat goes both ways over
//! the data channel. Gated like the browser tests: `EARSHOT_E2E=1` (as
//! scripts/test sets, inside a loopback-only namespace) makes them run.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::support::harness::{Browser, Run, check_audio, poll, wait_for};
use common::*;
use earshot_peer::{Event, Peer, Remote, Stats};
use serde_json::{Value, json};

/// Stats of the page's stranger `RTCPeerConnection` (`window.earshot.pc`) or
/// of every room connection (`window.earshot.peers`), summed over inbound
/// audio, with every candidate's address, in the shape `check_audio` reads.
const STATS_JS: &str = r#"
const done = arguments[arguments.length - 1];
const e = window.earshot || {};
const pcs = e.pc ? [e.pc] : Object.values(e.peers || {});
if (pcs.length !== 1) { done({error: `${pcs.length} peer connections`}); return; }
const pc = pcs[0];
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
      out.candidates.push({kind: r.type, address: r.address ?? r.ip ?? null});
    }
  });
  done(out);
}, err => done({error: String(err)}));
"#;

fn page_stats(b: &Browser) -> Result<Value> {
    b.execute_async(STATS_JS, json!([]))
}

/// The page hears the peer: packets and energy rise over a second.
fn page_hears_peer(b: &Browser) -> Result<()> {
    let first = poll("the page receiving the peer's audio", STEP, || {
        let s = page_stats(b)?;
        Ok(if s["packets"].as_f64().unwrap_or(0.0) > 0.0 {
            Ok(s)
        } else {
            Err(s.to_string())
        })
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    let second = page_stats(b)?;
    check_audio(b.name, &first, &second, "over 1 s")?;
    ensure!(
        second["packets"].as_f64() > first["packets"].as_f64()
            && second["energy"].as_f64() > first["energy"].as_f64(),
        "{}: packets or energy did not rise: {first} then {second}",
        b.name
    );
    Ok(())
}

/// The peer hears the page's fake microphone (it beeps: level above silence).
async fn peer_hears_page(p: &Peer, remote: Remote) -> Result<Stats> {
    stats_until(p, "the peer hearing Chromium", |s| {
        conn(s, remote).is_some_and(|c| c.packets_received > 50 && c.peak_level > 0.01)
    })
    .await
}

/// Chat both ways between the page and the peer.
fn chat_both_ways(
    run: &Run,
    rt: &tokio::runtime::Runtime,
    b: &Browser,
    p: &mut Peer,
    remote: Remote,
) -> Result<()> {
    let to_page = "hello page, this is earshot-peer";
    let to_peer = "hello peer, this is Chromium";
    run.relayed(to_page);
    run.relayed(to_peer);
    rt.block_on(chat_open(p, "the peer", remote))?;
    rt.block_on(async {
        // The page's side of the channel may open a moment after ours.
        let deadline = tokio::time::Instant::now() + STEP;
        while p.send_chat(to_page).await? == 0 {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the chat never went out"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })?;
    wait_for("the page showing the peer's chat", &[b], |s| {
        s[0].chat.iter().any(|l| l.contains(to_page))
    })?;
    wait_for("the page's chat open", &[b], |_| {
        b.testid("chat-input")
            .and_then(|i| i.enabled())
            .unwrap_or(false)
    })?;
    b.testid("chat-input")?.send_keys(to_peer)?;
    b.click("chat-send")?;
    rt.block_on(chat_from(p, "the peer", remote, to_peer))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Chromium presses Start, the peer searches: they meet, each hears the
/// other, they chat both ways; the peer's time to first audio is printed.
#[test]
fn browser_and_peer_meet_as_strangers() -> Result<()> {
    Run::scenario(
        "browser_and_peer_meet_as_strangers",
        &["A"],
        &["matched"],
        |run| {
            let rt = runtime()?;
            let a = run.browser("A")?;
            a.click("start")?;
            wait_for("A searching", &[a], |s| s[0].state == "searching")?;
            let url = run.server_url()?;
            let mut p = rt.block_on(peer(&url, 523.0))?;
            p.search(&[])?;
            let call = rt.block_on(p.wait_for(STEP, "the peer matched", |e| match e {
                Event::Matched { call, .. } => Some(*call),
                _ => None,
            }))?;
            let remote = Remote::Call(call);
            wait_for("A connected", &[a], |s| s[0].state == "connected")?;
            page_hears_peer(a)?;
            let stats = rt.block_on(peer_hears_page(&p, remote))?;
            check_loopback_candidates("the peer", &stats)?;
            chat_both_ways(run, &rt, a, &mut p, remote)?;
            let c = conn(&stats, remote).context("no connection")?;
            report(&format!(
                "earshot-peer with Chromium, strangers: time to first audio packet at the peer \
                 (from matched) {} ms, connected after {} ms",
                c.first_audio_ms.unwrap_or_default(),
                c.connect_ms.unwrap_or_default()
            ));
            Ok(())
        },
    )
}

/// Chromium opens a room, joins and locks it with a passphrase; the peer is
/// refused without it, then joins with it: Chromium checks the peer's `auth`
/// and the peer Chromium's, they hear each other and chat both ways.
#[test]
fn browser_and_peer_in_a_locked_room() -> Result<()> {
    const PASSPHRASE: &str = "Otters juggle 7 stones";
    Run::scenario_with(
        "browser_and_peer_in_a_locked_room",
        &["A"],
        0,
        &[
            "joined a room",
            "relaying a room signal",
            "room lock changed",
        ],
        |run| {
            let rt = runtime()?;
            let a = run.browser("A")?;
            let url = run.server_url()?;
            let room = "peer-meets-chromium-here";
            run.secret(room);
            run.secret(PASSPHRASE);
            a.goto(&format!("{url}r/{room}"))?;
            wait_for("A on the room page", &[a], |s| {
                s[0].mode == "room" && s[0].state == "idle"
            })?;
            a.click("room-join")?;
            wait_for("A alone in the room", &[a], |s| {
                s[0].state == "joined" && s[0].count == Some(1)
            })?;
            a.click("room-lock")?;
            wait_for("A asking for the passphrase", &[a], |s| {
                s[0].pass_mode.as_deref() == Some("lock") && s[0].pass_enabled
            })?;
            a.testid("passphrase-input")?.send_keys(PASSPHRASE)?;
            a.click("passphrase-submit")?;
            wait_for("A's room locked", &[a], |s| {
                s[0].locked == Some(true) && s[0].pass_mode.is_none()
            })?;

            let mut p = rt.block_on(peer(&url, 587.0))?;
            rt.block_on(p.join_room(room, None))?;
            let code = rt.block_on(p.wait_for(STEP, "the peer refused", |e| match e {
                Event::Error { code, .. } => Some(code.clone()),
                _ => None,
            }))?;
            ensure!(code == "passphrase_required", "the peer got {code}");
            rt.block_on(p.join_room(room, Some(PASSPHRASE)))?;
            let peers = rt.block_on(p.wait_for(STEP, "the peer in the room", |e| match e {
                Event::RoomJoined { peers, .. } => Some(peers.clone()),
                _ => None,
            }))?;
            let [id] = peers[..] else {
                anyhow::bail!("the peer sees {peers:?} in the room, not just A");
            };
            let remote = Remote::Peer(id);
            wait_for("A with the peer in the call", &[a], |s| {
                s[0].count == Some(2)
            })?;
            page_hears_peer(a)?;
            let stats = rt.block_on(peer_hears_page(&p, remote))?;
            check_loopback_candidates("the peer", &stats)?;
            ensure!(
                !a.snapshot()?.refused.iter().any(|r| !r.is_empty()),
                "A refused the peer"
            );
            chat_both_ways(run, &rt, a, &mut p, remote)?;
            let c = conn(&stats, remote).context("no connection")?;
            report(&format!(
                "earshot-peer with Chromium, locked room: time to first audio packet at the peer \
                 (from room_joined) {} ms, connected after {} ms",
                c.first_audio_ms.unwrap_or_default(),
                c.connect_ms.unwrap_or_default()
            ));
            Ok(())
        },
    )
}
