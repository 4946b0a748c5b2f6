//! earshot-peer with real Chromium (Debian's `chromium` and
//! `chromium-driver`, fake microphone) through the real `earshot` binary,
//! using earshot-server's browser harness: as strangers, and in a locked
//! room (the passphrase `auth` checked both ways). Chromium must receive the
//! peer's audio (`inbound-rtp` packets and `totalAudioEnergy` rising), the
//! peer must hear Chromium's fake microphone, and chat goes both ways over
//! the data channel, and the page and the peer show the same safety words
//! (commit-then-reveal, PROTOCOL.md). Gated like the browser tests: `EARSHOT_E2E=1` (as
//! scripts/test sets, inside a loopback-only namespace) makes them run.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::support::harness::{Browser, Run, check_audio, poll, wait_for};
use common::*;
use earshot_peer::{Peer, PeerEvent, PeerStats, Target};
use serde_json::Value;

fn page_stats(b: &Browser, room_peer: Option<u32>) -> Result<Value> {
    b.audio_stats(room_peer)
}

/// The page hears the peer (the stranger, or room member `room_peer`):
/// packets and energy rise over a second.
fn page_hears_peer(b: &Browser, room_peer: Option<u32>) -> Result<()> {
    let first = poll("the page receiving the peer's audio", STEP, || {
        let s = page_stats(b, room_peer)?;
        Ok(if s["packets"].as_f64().unwrap_or(0.0) > 0.0 {
            Ok(s)
        } else {
            Err(s.to_string())
        })
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    let second = page_stats(b, room_peer)?;
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
async fn peer_hears_page(p: &Peer, remote: Target) -> Result<PeerStats> {
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
    remote: Target,
    round: usize,
) -> Result<()> {
    let to_page = &format!("hello page, this is earshot-peer ({round})");
    let to_peer = &format!("hello peer, this is Chromium ({round})");
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

/// The safety words of the peer's connection to `remote`, once its
/// exchange is done (an error if it gave the warning instead).
async fn peer_words(p: &Peer, remote: Target) -> Result<String> {
    let stats = stats_until(p, "the peer's safety words", |s| {
        conn(s, remote).is_some_and(|c| c.safety_words.is_some() || c.safety_warning.is_some())
    })
    .await?;
    let c = conn(&stats, remote).context("no connection")?;
    ensure!(
        c.safety_warning.is_none(),
        "the peer warns instead of showing words: {:?}",
        c.safety_warning
    );
    c.safety_words.clone().context("no words")
}

/// The page shows the same safety words as the peer, for the stranger or
/// for room member `room_peer`, and no warning.
fn same_words(b: &Browser, room_peer: Option<u32>, peer: &str) -> Result<()> {
    let page = poll("the page's safety words", STEP, || {
        let v = b.execute(
            "const scope = arguments[0] == null ? document
               : document.querySelector(`li[data-peer=\"${arguments[0]}\"]`);
             const w = scope && scope.querySelector('[data-testid=\"safety-words\"]');
             const warn = scope && scope.querySelector('[data-testid=\"safety-warning\"]');
             if (warn && !warn.hidden && !warn.closest('[hidden]')) return {warning: warn.dataset.reason};
             return w && w.dataset.words && !w.closest('[hidden]') ? {words: w.dataset.words} : null;",
            serde_json::json!([room_peer]),
        )?;
        Ok(if v.is_null() {
            Err("none yet".to_string())
        } else {
            Ok(v)
        })
    })?;
    ensure!(
        page["words"].as_str() == Some(peer),
        "{}: the page shows {page}, the peer {peer:?}",
        b.name
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Chromium presses Start, the peer searches: they meet (Chromium polite,
/// the peer offering), each hears the other, they chat both ways. Chromium
/// presses End, so the peer goes back to the queue; Chromium presses Start
/// again and meets it with the roles the other way round (Chromium offers,
/// the peer answers): audio and chat both ways again. The peer's time to
/// first audio is printed for both.
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
            let mut figures = Vec::new();
            for round in 1..=2 {
                let (call, polite) =
                    rt.block_on(p.wait_for(STEP, "the peer matched", |e| match e {
                        PeerEvent::Matched { call, polite, .. } => Some((*call, *polite)),
                        _ => None,
                    }))?;
                ensure!(
                    polite == (round == 2),
                    "round {round}: the peer has polite={polite}"
                );
                let remote = Target::Call(call);
                wait_for("A connected", &[a], |s| s[0].state == "connected")?;
                page_hears_peer(a, None)?;
                let stats = rt.block_on(peer_hears_page(&p, remote))?;
                check_loopback_candidates("the peer", &stats)?;
                chat_both_ways(run, &rt, a, &mut p, remote, round)?;
                let words = rt.block_on(peer_words(&p, remote))?;
                same_words(a, None, &words)?;
                println!("round {round}: the page and the peer show {words:?}");
                let c = conn(&stats, remote).context("no connection")?;
                figures.push(format!(
                    "{} {} ms (connected after {} ms, rtt {:?} ms)",
                    if polite { "answering" } else { "offering" },
                    c.first_audio_ms.unwrap_or_default(),
                    c.connect_ms.unwrap_or_default(),
                    c.rtt_ms,
                ));
                if round == 1 {
                    a.click("end")?;
                    wait_for("A ended the call", &[a], |s| s[0].state == "ended")?;
                    let reason = rt.block_on(p.wait_for(STEP, "the call ended", |e| match e {
                        PeerEvent::CallEnded { reason, .. } => Some(reason.clone()),
                        _ => None,
                    }))?;
                    ensure!(reason == "partner_ended", "the peer was told {reason}");
                    rt.block_on(p.wait_for(STEP, "the peer searching", |e| {
                        matches!(e, PeerEvent::Searching { .. }).then_some(())
                    }))?;
                    a.click("start")?;
                }
            }
            report(&format!(
                "earshot-peer with Chromium, strangers: time to first audio packet at the peer \
                 (from matched): {}",
                figures.join(", ")
            ));
            Ok(())
        },
    )
}

/// A peer opens a room and locks it. Chromium opens the link, is asked for
/// the passphrase and joins with it: it offers to the peer with its `auth`,
/// which the peer checks, and checks the peer's. A second peer is refused
/// without the passphrase, then joins with it and offers to both. Chromium
/// hears both peers, both peers hear Chromium (and each other), and the
/// second peer and Chromium chat both ways. Ends with the privacy checks
/// (the room name and passphrase never in the server's log).
#[test]
fn browser_and_peers_in_a_locked_room() -> Result<()> {
    const PASSPHRASE: &str = "Otters juggle 7 stones";
    Run::scenario_with(
        "browser_and_peers_in_a_locked_room",
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

            let mut p0 = rt.block_on(peer(&url, 587.0))?;
            rt.block_on(p0.join_room(room, None))?;
            let id0 = rt.block_on(p0.wait_for(STEP, "the first peer in", |e| match e {
                PeerEvent::RoomJoined { peer, .. } => Some(*peer),
                _ => None,
            }))?;
            rt.block_on(p0.lock_room(PASSPHRASE))?;
            rt.block_on(p0.wait_for(STEP, "the room locked", |e| {
                matches!(e, PeerEvent::LockState { locked: true }).then_some(())
            }))?;

            a.goto(&format!("{url}r/{room}"))?;
            wait_for("A on the room page", &[a], |s| {
                s[0].mode == "room" && s[0].state == "idle"
            })?;
            a.click("room-join")?;
            wait_for("A asked for the passphrase", &[a], |s| {
                s[0].pass_mode.as_deref() == Some("join") && s[0].pass_enabled
            })?;
            a.testid("passphrase-input")?.send_keys(PASSPHRASE)?;
            a.click("passphrase-submit")?;
            let a_id = rt.block_on(p0.wait_for(STEP, "A joining", |e| match e {
                PeerEvent::PeerJoined { peer } => Some(*peer),
                _ => None,
            }))?;
            wait_for("A in the call with the peer", &[a], |s| {
                s[0].state == "joined" && s[0].count == Some(2)
            })?;
            page_hears_peer(a, Some(id0))?;
            let s0 = rt.block_on(peer_hears_page(&p0, Target::Peer(a_id)))?;

            let mut p1 = rt.block_on(peer(&url, 659.0))?;
            rt.block_on(p1.join_room(room, None))?;
            let code = rt.block_on(p1.wait_for(STEP, "the second peer refused", |e| match e {
                PeerEvent::Error { code, .. } => Some(code.clone()),
                _ => None,
            }))?;
            ensure!(code == "passphrase_required", "the second peer got {code}");
            rt.block_on(p1.join_room(room, Some(PASSPHRASE)))?;
            let (id1, peers) =
                rt.block_on(p1.wait_for(STEP, "the second peer in", |e| match e {
                    PeerEvent::RoomJoined { peer, peers, .. } => Some((*peer, peers.clone())),
                    _ => None,
                }))?;
            ensure!(
                peers.len() == 2 && peers.contains(&id0) && peers.contains(&a_id),
                "the second peer sees {peers:?}"
            );
            wait_for("A in the call with both", &[a], |s| s[0].count == Some(3))?;
            page_hears_peer(a, Some(id1))?;
            let s1 = rt.block_on(peer_hears_page(&p1, Target::Peer(a_id)))?;
            rt.block_on(stats_until(&p1, "the second peer hearing the first", |s| {
                hears(s, Target::Peer(id0), 587.0)
            }))?;
            for (who, s) in [("the first peer", &s0), ("the second peer", &s1)] {
                check_loopback_candidates(who, s)?;
            }
            let snap = a.snapshot()?;
            ensure!(
                snap.refused.iter().all(String::is_empty),
                "A refused someone: {snap}"
            );
            chat_both_ways(run, &rt, a, &mut p1, Target::Peer(a_id), 1)?;
            for (p, id) in [(&p0, id0), (&p1, id1)] {
                let words = rt.block_on(peer_words(p, Target::Peer(a_id)))?;
                same_words(a, Some(id), &words)?;
            }
            let (w01, w10) = (
                rt.block_on(peer_words(&p0, Target::Peer(id1)))?,
                rt.block_on(peer_words(&p1, Target::Peer(id0)))?,
            );
            ensure!(w01 == w10, "the two peers show {w01:?} and {w10:?}");
            let figure = |s: &PeerStats| {
                conn(s, Target::Peer(a_id))
                    .and_then(|c| c.first_audio_ms)
                    .unwrap_or_default()
            };
            report(&format!(
                "earshot-peer with Chromium, locked room: time to first audio packet from Chromium \
                 at the peer (from the connection's start): answering {} ms, offering {} ms",
                figure(&s0),
                figure(&s1)
            ));
            Ok(())
        },
    )
}
