//! earshot-peer with earshot-peer through the real `earshot` binary (built by
//! `cargo build -p earshot-server`, which scripts/test does first): strangers
//! meet, hear each other's tones and chat, skip, end and report; a room of
//! three locks itself and keeps out a wrong passphrase. Every peer binds
//! 127.0.0.1 and the tests check that every candidate offered is a loopback
//! one, so they need no network namespace (scripts/test runs them in one
//! anyway). Each ends with the server-log privacy check.

mod common;

use anyhow::{Result, ensure};
use common::support::earshot_binary;
use common::support::harness::{NEVER_LOGGED, SERVER_ARGS, STOP};
use common::support::server::{Server, check_log};
use common::*;
use earshot_peer::{Peer, PeerEvent, Target};

async fn matched(peer: &mut Peer, who: &str) -> Result<u64> {
    Ok(peer
        .wait_for(STEP, &format!("{who} matched"), |e| match e {
            PeerEvent::Matched { call, .. } => Some(*call),
            _ => None,
        })
        .await?)
}

async fn searching(peer: &mut Peer, who: &str) -> Result<()> {
    Ok(peer
        .wait_for(STEP, &format!("{who} searching"), |e| {
            matches!(e, PeerEvent::Searching { .. }).then_some(())
        })
        .await?)
}

/// A and B meet as strangers, each hears the other's tone (440 and 660 Hz)
/// and they chat both ways; A skips and both are searching again; C comes,
/// meets one of them (X), who reports C; C meets the other (Y), who ends;
/// then X searches again and two newcomers arrive: X and C, both waiting,
/// are each matched with a newcomer, never with each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_meet_talk_chat_skip_end_and_report() -> Result<()> {
    let mut server = Server::start(&earshot_binary(), SERVER_ARGS)?;
    let url = server.url.clone();
    let chats = ["hello from A", "hello from B"];

    let mut a = peer(&url, 440.0).await?;
    let mut b = peer(&url, 660.0).await?;
    a.search(&[])?;
    searching(&mut a, "A").await?;
    b.search(&[])?;
    let call = matched(&mut a, "A").await?;
    ensure!(
        matched(&mut b, "B").await? == call,
        "A and B in different calls"
    );
    let them = Target::Call(call);

    let sa = stats_until(&a, "A hearing 660 Hz", |s| hears(s, them, 660.0)).await?;
    let sb = stats_until(&b, "B hearing 440 Hz", |s| hears(s, them, 440.0)).await?;
    chat_open(&mut a, "A", them).await?;
    chat_open(&mut b, "B", them).await?;
    ensure!(a.send_chat(chats[0]).await? == 1, "A's chat did not go out");
    chat_from(&mut b, "B", them, chats[0]).await?;
    ensure!(b.send_chat(chats[1]).await? == 1, "B's chat did not go out");
    chat_from(&mut a, "A", them, chats[1]).await?;
    check_loopback_candidates("A", &sa)?;
    check_loopback_candidates("B", &sb)?;
    let first = |s: &earshot_peer::PeerStats| conn(s, them).and_then(|c| c.first_audio_ms);
    report(&format!(
        "earshot-peer strangers: time to first audio packet (from matched) A {} ms, B {} ms; \
         rtt {:?} ms",
        first(&sa).unwrap_or_default(),
        first(&sb).unwrap_or_default(),
        conn(&sa, them).and_then(|c| c.rtt_ms),
    ));

    // Skip: both back in the queue (and not matched with each other again).
    a.skip()?;
    searching(&mut a, "A after skipping").await?;
    let reason = b
        .wait_for(STEP, "B told the call ended", |e| match e {
            PeerEvent::CallEnded { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await?;
    ensure!(reason == "partner_skipped", "B was told {reason}");
    searching(&mut b, "B after the skip").await?;

    // C meets one of the two; that one (X) reports C.
    let mut c = peer(&url, 880.0).await?;
    c.search(&[])?;
    let c_call = matched(&mut c, "C").await?;
    // Whichever of A and B waited longest meets C: call it X, the other Y.
    let a_met_c = tokio::select! {
        call = matched(&mut a, "A") => call? == c_call,
        call = matched(&mut b, "B") => call? != c_call,
    };
    let (mut x, mut y) = if a_met_c { (a, b) } else { (b, a) };
    x.report(Some(earshot_core::protocol::ReportReason::Spam))?;
    x.wait_for(STEP, "the reporter idle", |e| {
        matches!(e, PeerEvent::Idle).then_some(())
    })
    .await?;
    // C goes back to the queue and meets Y, who ends the call.
    let c_call = c
        .wait_for(STEP, "C matched again", |e| match e {
            PeerEvent::Matched { call, .. } => Some(*call),
            _ => None,
        })
        .await?;
    ensure!(
        matched(&mut y, "Y").await? == c_call,
        "C was not matched with the other one"
    );
    y.end()?;
    y.wait_for(STEP, "Y idle after End", |e| {
        matches!(e, PeerEvent::Idle).then_some(())
    })
    .await?;
    let reason = c
        .wait_for(STEP, "C told the call ended", |e| match e {
            PeerEvent::CallEnded { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await?;
    ensure!(reason == "partner_ended", "C was told {reason}");
    searching(&mut c, "C after the end").await?;

    // X and C are both waiting; were they matchable they would meet now.
    x.search(&[])?;
    searching(&mut x, "X searching again").await?;
    let mut d = peer(&url, 300.0).await?;
    let mut e = peer(&url, 350.0).await?;
    d.search(&[])?;
    let d_call = matched(&mut d, "D").await?;
    e.search(&[])?;
    let e_call = matched(&mut e, "E").await?;
    let x_call = matched(&mut x, "X").await?;
    let c_call = matched(&mut c, "C").await?;
    ensure!(
        x_call != c_call,
        "the reporter was matched with the reported again"
    );
    ensure!(
        [d_call, e_call].contains(&x_call) && [d_call, e_call].contains(&c_call),
        "X and C were not matched with the newcomers"
    );

    drop((x, y, c, d, e));
    server.stop(STOP)?;
    let mut secrets = NEVER_LOGGED.to_vec();
    secrets.extend(chats);
    check_log(&server.output(), &secrets, &["matched", "report recorded"])?;
    Ok(())
}

/// Three peers in a room hear each other and chat; they lock it (all three
/// know the passphrase); a fourth is refused without the passphrase and with
/// a wrong one, gets in with the right one, and hears all three (each
/// member's `auth` checked by the newcomer and the newcomer's by each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_in_a_locked_room() -> Result<()> {
    let mut server = Server::start(&earshot_binary(), SERVER_ARGS)?;
    let url = server.url.clone();
    let room = "peer-test-quiet-otters";
    let passphrase = "correct horse battery";
    let chat = "hello room";
    let tones = [400.0, 600.0, 800.0, 1000.0];

    let mut members = Vec::new();
    let mut ids = Vec::new();
    for (i, hz) in tones[..3].iter().enumerate() {
        let mut p = peer(&url, *hz).await?;
        p.join_room(room, None).await?;
        let id = p
            .wait_for(STEP, &format!("member {i} joined"), |e| match e {
                PeerEvent::RoomJoined { peer, .. } => Some(*peer),
                _ => None,
            })
            .await?;
        ids.push(id);
        members.push(p);
    }
    for (i, p) in members.iter().enumerate() {
        for (j, hz) in tones[..3].iter().enumerate() {
            if i != j {
                let remote = Target::Peer(ids[j]);
                stats_until(p, &format!("member {i} hearing member {j}"), |s| {
                    hears(s, remote, *hz)
                })
                .await?;
            }
        }
    }
    for (i, p) in members.iter_mut().enumerate().skip(1) {
        chat_open(p, &format!("member {i}"), Target::Peer(ids[0])).await?;
    }
    let sent = members[0].send_chat(chat).await?;
    ensure!(sent == 2, "the chat line went to {sent} members, not 2");
    for (i, p) in members.iter_mut().enumerate().skip(1) {
        chat_from(p, &format!("member {i}"), Target::Peer(ids[0]), chat).await?;
    }

    for p in &members {
        p.lock_room(passphrase).await?;
    }
    for (i, p) in members.iter_mut().enumerate() {
        p.wait_for(STEP, &format!("member {i} sees the lock"), |e| {
            matches!(e, PeerEvent::LockState { locked: true }).then_some(())
        })
        .await?;
    }

    let mut d = peer(&url, tones[3]).await?;
    for (pass, want) in [
        (None, "passphrase_required"),
        (Some("wrong horse"), "wrong_passphrase"),
    ] {
        d.join_room(room, pass).await?;
        let code = d
            .wait_for(STEP, "the newcomer refused", |e| match e {
                PeerEvent::Error { code, .. } => Some(code.clone()),
                _ => None,
            })
            .await?;
        ensure!(code == want, "expected {want}, got {code}");
    }
    d.join_room(room, Some(passphrase)).await?;
    let peers = d
        .wait_for(STEP, "the newcomer in", |e| match e {
            PeerEvent::RoomJoined { peers, locked, .. } if *locked => Some(peers.clone()),
            _ => None,
        })
        .await?;
    ensure!(peers.len() == 3, "the newcomer sees {peers:?}");
    let mut firsts = Vec::new();
    for (j, hz) in tones[..3].iter().enumerate() {
        let remote = Target::Peer(ids[j]);
        let s = stats_until(&d, &format!("the newcomer hearing member {j}"), |s| {
            hears(s, remote, *hz)
        })
        .await?;
        firsts.push(
            conn(&s, remote)
                .and_then(|c| c.first_audio_ms)
                .unwrap_or_default(),
        );
    }
    let sd = d.stats().await?;
    check_loopback_candidates("the newcomer", &sd)?;
    ensure!(
        !sd.connections.iter().any(|c| c.remote.is_none()),
        "a connection without a remote"
    );
    for (i, p) in members.iter().enumerate() {
        let s = p.stats().await?;
        check_loopback_candidates(&format!("member {i}"), &s)?;
    }
    report(&format!(
        "earshot-peer locked room: time to first audio packet of the newcomer from each member \
         (from room_joined): {firsts:?} ms"
    ));

    drop((members, d));
    server.stop(STOP)?;
    let mut secrets = NEVER_LOGGED.to_vec();
    secrets.extend([room, passphrase, chat]);
    check_log(
        &server.output(),
        &secrets,
        &["joined a room", "relaying a room signal"],
    )?;
    Ok(())
}

/// With proof of work always asked, a peer solves the challenge and is let
/// in (its `hello` carries the solution), then meets another as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_solve_proof_of_work() -> Result<()> {
    let mut args = SERVER_ARGS.to_vec();
    args.extend(["--pow", "always"]);
    let mut server = Server::start(&earshot_binary(), &args)?;
    let mut a = peer(&server.url, 440.0).await?;
    let mut b = peer(&server.url, 660.0).await?;
    a.search(&[])?;
    searching(&mut a, "A").await?;
    b.search(&[])?;
    ensure!(
        matched(&mut a, "A").await? == matched(&mut b, "B").await?,
        "A and B in different calls"
    );
    drop((a, b));
    server.stop(STOP)?;
    Ok(())
}

/// A call survives the loss of signalling: the server stops (SIGTERM, 1012
/// to both), both peers are told, and audio and chat keep going peer to peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_call_survives_a_server_stop() -> Result<()> {
    let mut server = Server::start(&earshot_binary(), SERVER_ARGS)?;
    let mut a = peer(&server.url, 440.0).await?;
    let mut b = peer(&server.url, 660.0).await?;
    a.search(&[])?;
    searching(&mut a, "A").await?;
    b.search(&[])?;
    let call = matched(&mut a, "A").await?;
    let them = Target::Call(call);
    chat_open(&mut a, "A", them).await?;
    chat_open(&mut b, "B", them).await?;
    stats_until(&b, "B hearing A", |s| hears(s, them, 440.0)).await?;

    server.stop(STOP)?;
    for (p, who) in [(&mut a, "A"), (&mut b, "B")] {
        p.wait_for(STEP, &format!("{who} told signalling is gone"), |e| {
            matches!(e, PeerEvent::Disconnected).then_some(())
        })
        .await?;
    }
    let before = conn(&b.stats().await?, them).map_or(0, |c| c.packets_received);
    stats_until(&b, "B still receiving A's audio", |s| {
        conn(s, them).is_some_and(|c| c.packets_received > before + 50)
    })
    .await?;
    ensure!(
        a.send_chat("still here").await? == 1,
        "A's chat did not go out"
    );
    chat_from(&mut b, "B", them, "still here").await?;
    Ok(())
}
