//! Rooms by link (PROTOCOL.md "Rooms" and "Locked rooms"), in real
//! browsers: a room of three talks, chats, locks, keeps out a wrong
//! passphrase and lets the right one in; a member refuses a peer whose DTLS
//! fingerprint was changed on the way (as a server in the middle would have
//! to); a room of six; a full room says so, and lets the page in once a
//! seat is free. The time each joiner takes to hear everyone already there
//! goes to the report.
//!
//! Every browser opens the room the way people do: the first one takes the
//! name the home page suggests and presses Create room, the others, started
//! with no page, open the link its room page shows. Pages are read through
//! `window.earshot.peers` (peer id → `RTCPeerConnection`) and the
//! `data-testid` elements of the room view; `harness::INIT_JS` also logs
//! every peer connection a page makes, so that one closed and dropped from
//! `peers` can still be looked at.

use crate::safety::RawClient;
use crate::support::harness::{
    Browser, Run, STEP, Setup, TURN_PUBLIC_STANDIN, check_audio, hold, median, poll, report,
    wait_for, wait_for_within,
};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// What the server's trace log must mention to prove it saw the rooms.
const LOG_SHOWS: &[&str] = &["joined a room", "relaying a room signal"];
/// The same, for a room that was locked.
pub(crate) const LOCKED_LOG_SHOWS: &[&str] = &[
    "joined a room",
    "relaying a room signal",
    "room lock changed",
];
pub(crate) const PASSPHRASE: &str = "Seven quiet otters 42";
const WRONG_PASSPHRASE: &str = "seven quiet otters 42";
/// How often C leaves the room of three and joins again, for the figure.
const REJOIN_ROUNDS: usize = 3;
/// The room of six: how long a joiner may take to hear everyone, and how
/// long any other step there may take. Six Chromiums on two cores, one of
/// them encoding its voice five times and decoding five voices, are slow:
/// the sixth joiner usually hears everyone within a few seconds, but took
/// 74 s once on a machine other jobs kept busy (load average 50).
const SIX_STEP: Duration = Duration::from_secs(120);
/// How long a refused peer is watched not to connect after all.
const REFUSED_HOLD: Duration = Duration::from_secs(5);

/// A room of two (`--room-size 2`) that two raw WebSocket clients are in:
/// A opens its link and presses Join room, and the page says the room is
/// full, with its size, from the `room_full` error that answers its
/// `room_join` (`re`). One of the two leaves; Join room again, and A is in,
/// with a tile for the one still there.
#[test]
fn browser_room_full_is_told_then_a_seat_frees() -> Result<()> {
    let setup = Setup {
        server_args: vec!["--room-size".into(), "2".into()],
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_room_full_is_told_then_a_seat_frees",
        &["A"],
        1,
        LOG_SHOWS_FULL,
        &setup,
        room_full_scenario,
    )
}

/// What the server's trace log must mention for the full room.
const LOG_SHOWS_FULL: &[&str] = &["joined a room", "relaying a room signal"];

fn room_full_scenario(run: &Run) -> Result<()> {
    let a = run.browser("A")?;
    let url = run.server_url()?;
    let server: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("no address in {url}"))?;
    let name = "nine-full-seats-test";
    run.secret(name);
    let mut members = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        let mut raw = RawClient::connect(source, server)?;
        raw.send(json!({"type": "hello", "version": 1}))?;
        raw.expect("welcome")?;
        raw.send(json!({"type": "room_join", "room": name}))?;
        raw.expect("room_joined")?;
        members.push(raw);
    }
    a.goto(&format!("{url}r/{name}"))?;
    a.wait_ready(&format!("/r/{name}"), Some("room"))?;
    wait_room_page(a)?;
    a.click("room-join")?;
    let snap = wait_for("A told the room is full", &[a], |s| s[0].state == "error")?;
    ensure!(
        snap[0].status == "This room is full (max 2). Try again later.",
        "a full room of 2 should say so: {:?}",
        snap[0].status
    );
    ensure!(
        a.testid("room-join")?.enabled()?,
        "Join room should work again after a full room"
    );

    let mut leaving = members.pop().context("two members")?;
    leaving.send(json!({"type": "end"}))?;
    leaving.expect("idle")?;
    a.click("room-join")?;
    wait_for("A in the room beside the one left", &[a], |s| {
        s[0].state == "joined" && s[0].tiles.len() == 2
    })?;
    // Something relayed through the server, for the log check: a candidate
    // A cannot use (it has no remote description from this member).
    let mut staying = members.pop().context("one member stays")?;
    let joined = staying.expect("peer_joined")?;
    let marker = format!("e2efullroom{}", std::process::id());
    run.relayed(&marker);
    staying.send(
        json!({"type": "signal", "to": joined["peer"], "candidate": {
        "candidate": format!("candidate:{marker} 1 udp 1 127.0.0.1 9 typ host"),
        "sdpMid": "0", "sdpMLineIndex": 0}}),
    )?;
    staying.expect("signal")?; // A's own offer reached it: the room works
    leaving.close();
    staying.close();
    Ok(())
}

/// A, B and C open the link and join in turn; each hears everyone who was
/// there, the three form a full mesh (each page holds two peer connections,
/// to the other two) with audio flowing every way, and A's chat reaches B
/// and C. A locks the room: every page says so, and B and C, asked for the
/// passphrase so they can check newcomers, enter it. D opens the link,
/// presses Join room, is asked for the passphrase, enters a wrong one: an
/// error says so and nobody sees D. With the right one D joins: four in the
/// room, each hearing the three others. A unlocks; every page says so. D
/// leaves, and C leaves and joins again a few times, for the "room of 3"
/// figure (the time from C's click on Join room to audio with energy from
/// both others). Ends with the privacy checks of `Run::finish`, which also
/// look for both passphrases and the room name in the server's log.
///
/// Everyone hides their IP ("hide my IP" starts on: the embedded TURN
/// server runs), and the relay advertises 192.0.2.10, an address in a range
/// the relay refuses and on no interface of the test namespace: media can
/// only flow relay to relay through the server's memory, which its counter
/// shows.
#[test]
fn browser_room_of_three_talks_and_locks() -> Result<()> {
    let setup = Setup {
        server_args: [
            "--turn-listen",
            "127.0.0.1:0",
            "--turn-public-ip",
            TURN_PUBLIC_STANDIN,
            "--turn-relay-ports",
            "50000-50999",
        ]
        .map(String::from)
        .to_vec(),
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_room_of_three_talks_and_locks",
        &["A", "B", "C", "D"],
        1,
        LOCKED_LOG_SHOWS,
        &setup,
        |run| {
            let mut times = Vec::new();
            let result = room_of_three_scenario(run, &mut times);
            let samples: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
            if !times.is_empty() {
                report(&format!(
                    "room of 3: time to hear everyone: median {:.0} ms over {} joins of the third \
                     member (samples: {} ms)",
                    median(&times),
                    times.len(),
                    samples.join(", ")
                ));
            }
            result
        },
    )
}

/// A locks a room; B joins with the right passphrase, but B's page has a
/// script, installed before the page's own, that changes the
/// `a=fingerprint:` of every description B sends while keeping the `auth`
/// B computed (what a server that put its own certificate in the middle
/// would have to do). A refuses B: a `peer-refused` explanation shows, the
/// connection is closed and dropped from `window.earshot.peers` without ever
/// having been connected, and so no audio of B's reaches A; B's page never
/// connects to anyone either. The control: E joins with the same passphrase
/// through the same page, untouched, and connects to A, with audio both
/// ways and chat; and E refuses B too (B's answer to E is changed the same
/// way). Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_room_refuses_a_tampered_fingerprint() -> Result<()> {
    Run::scenario_with(
        "browser_room_refuses_a_tampered_fingerprint",
        &["A", "B", "E"],
        1,
        LOCKED_LOG_SHOWS,
        tamper_scenario,
    )
}

/// Six browsers join a room one after the other, each once everyone before
/// it is connected; each must hear everyone already there within
/// [`SIX_STEP`]. Then the six form a full mesh (five peer connections each,
/// audio flowing all thirty ways) and F's chat reaches the five others. The
/// "room of 6" figure is the median over the five joiners of the time from
/// the click on Join room to audio with energy from every member already
/// there. Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_room_of_six_time_to_hear_everyone() -> Result<()> {
    Run::scenario_with(
        "browser_room_of_six_time_to_hear_everyone",
        &["A", "B", "C", "D", "E", "F"],
        1,
        LOG_SHOWS,
        |run| {
            let mut times = Vec::new();
            let before = CpuTimes::read();
            let result = room_of_six_scenario(run, &mut times);
            if !times.is_empty() {
                let values: Vec<f64> = times.iter().map(|&(_, _, t)| t).collect();
                let samples: Vec<String> = times
                    .iter()
                    .map(|(name, others, t)| format!("{name} hearing {others}: {t:.0}"))
                    .collect();
                report(&format!(
                    "room of 6: time to hear everyone: median {:.0} ms over {} joiners, each \
                     joining in turn (samples: {} ms); {}",
                    median(&values),
                    times.len(),
                    samples.join(", "),
                    CpuTimes::load_since(before)
                ));
            }
            result
        },
    )
}

fn room_of_three_scenario(run: &Run, times: &mut Vec<f64>) -> Result<()> {
    let (a, b, c, d) = (
        run.browser("A")?,
        run.browser("B")?,
        run.browser("C")?,
        run.browser("D")?,
    );
    open_room(run, a, &[b, c, d])?;

    // 1. A, B and C join in turn; each hears everyone there before it.
    join_alone(a)?;
    join_and_hear(b, 1, STEP)?;
    times.push(join_and_hear(c, 2, STEP)?);
    wait_count(&[a, b, c], 3, STEP)?;
    check_room_audio(&[a, b, c])?;
    check_room_words(&[a, b, c])?;
    let relayed = run.metric("turn_relay_to_relay_total")?;
    ensure!(
        relayed > 0,
        "the room's media should flow relay to relay, through the server's memory"
    );
    wait_chat_open(a, 2)?;
    run.chat(a, &[b, c], "hello room, this is A")?;

    // 2. A locks the room: every page says so. B and C are asked for the
    //    passphrase, to check newcomers with it, and enter it.
    lock(run, a, PASSPHRASE)?;
    wait_for("the room locked for A, B and C", &[a, b, c], |s| {
        s.iter().all(|s| s.locked == Some(true)) && s[0].pass_mode.is_none()
    })?;
    for x in [b, c] {
        enter_passphrase(x, "verify", PASSPHRASE)?;
    }
    wait_for(
        "B and C done with the passphrase, still three",
        &[a, b, c],
        |s| {
            s.iter()
                .all(|s| s.pass_mode.is_none() && s.count == Some(3) && s.locked == Some(true))
        },
    )?;

    // 3. D opens the link and is asked for the passphrase; a wrong one is
    //    refused with an error, and nobody in the room sees D.
    d.click("room-join")?;
    wait_for("D asked for the passphrase", &[d], |s| {
        s[0].state == "joining" && s[0].pass_mode.as_deref() == Some("join")
    })?;
    run.secret(WRONG_PASSPHRASE);
    enter_passphrase(d, "join", WRONG_PASSPHRASE)?;
    let snap = wait_for("D told the passphrase is wrong", &[d], |s| {
        s[0].pass_error
            .as_deref()
            .is_some_and(|e| e.contains("passphrase"))
    })?;
    println!(
        "room of 3: D, with a wrong passphrase, is told: {:?}",
        snap[0].pass_error.as_deref().unwrap_or_default()
    );
    hold(
        "A, B and C still three, with no tile for D",
        &[a, b, c],
        Duration::from_millis(1500),
        |s| s.count == Some(3) && s.tiles.len() == 3,
    )?;
    let snap = d.snapshot()?;
    ensure!(
        snap.state == "joining"
            && snap.count == Some(0)
            && snap.tiles.is_empty()
            && snap.pass_mode.as_deref() == Some("join")
            && snap.locked == Some(true),
        "D should be outside the locked room, asked for the passphrase again: {snap}"
    );
    ensure!(
        d.peer_ids()?.is_empty(),
        "D has peer connections without the right passphrase"
    );

    // 4. The right passphrase: D joins, hears A, B and C, and they hear D.
    d.arm_room(3)?;
    enter_passphrase(d, "join", PASSPHRASE)?;
    wait_count(&[a, b, c, d], 4, STEP)?;
    let (t, _) = d.time_to_hear_all("passphrase-submit", STEP)?;
    println!(
        "locked room of 4: D heard A, B and C {t:.0} ms after submitting the passphrase \
         (key derivation included)"
    );
    check_room_audio(&[a, b, c, d])?;
    for x in [a, b, c, d] {
        let s = x.snapshot()?;
        ensure!(
            s.refused.is_empty(),
            "nobody should be refused in the locked room: {s}"
        );
    }
    wait_chat_open(d, 3)?;
    run.chat(d, &[a, b, c], "D here, with the passphrase")?;
    // The log check of `Run::finish` has verifiers and auths to look for.
    check_sent(a, 1, 1)?;
    check_sent(d, 2, 3)?;

    // 5. A unlocks the room: every page says so.
    a.click("room-unlock")?;
    wait_for("the room unlocked for all four", &[a, b, c, d], |s| {
        s.iter()
            .all(|s| s.locked == Some(false) && s.count == Some(4))
    })?;

    // 6. D leaves; C leaves and joins again, for the figure.
    d.click("leave")?;
    wait_for("D out of the room", &[d], |s| {
        s[0].state == "idle" && s[0].count == Some(0)
    })?;
    wait_count(&[a, b, c], 3, STEP)?;
    for round in 1..=REJOIN_ROUNDS {
        c.click("leave")?;
        wait_for(
            &format!("round {round}: C out, A and B by themselves"),
            &[a, b, c],
            |s| {
                s[2].state == "idle"
                    && s[..2]
                        .iter()
                        .all(|s| s.count == Some(2) && s.tiles.len() == 2)
            },
        )?;
        times.push(join_and_hear(c, 2, STEP)?);
        wait_count(&[a, b, c], 3, STEP)?;
    }
    check_room_audio(&[a, b, c])?;
    Ok(())
}

fn tamper_scenario(run: &Run) -> Result<()> {
    let (a, b, e) = (run.browser("A")?, run.browser("B")?, run.browser("E")?);
    let link = open_room(run, a, &[e])?;
    b.session
        .add_init_script(TAMPER_JS)
        .context("B: cannot install the fingerprint tamperer")?;
    b.goto(&link)?;
    wait_room_page(b)?;

    join_alone(a)?;
    lock(run, a, PASSPHRASE)?;
    wait_for("A's room locked", &[a], |s| {
        s[0].locked == Some(true) && s[0].pass_mode.is_none()
    })?;

    // B gets past the server with the right passphrase, but its offer
    // reaches A with another fingerprint: A refuses it.
    b.click("room-join")?;
    enter_passphrase(b, "join", PASSPHRASE)?;
    wait_for("B in the room (as far as the server goes)", &[b], |s| {
        s[0].state == "joined" && s[0].pass_mode.is_none()
    })?;
    let snap = wait_for("A refusing B", &[a], |s| {
        s[0].refused.iter().any(|r| r.contains("passphrase"))
    })?;
    println!(
        "tampered fingerprint: A says {:?}",
        snap[0].refused.join(" / ")
    );
    ensure!(
        snap[0].tiles.iter().any(|t| t.ends_with(":refused")),
        "A's tile for B should say refused: {}",
        snap[0]
    );
    let tamper = b.execute("return window.__e2eTamper || null", json!([]))?;
    let rewritten = tamper["rewritten"].as_u64().unwrap_or(0);
    ensure!(
        rewritten >= 1 && tamper["withAuth"].as_u64() == Some(rewritten),
        "B's tamperer should have changed the fingerprint of at least one description, each \
         with B's own auth left in: {tamper}"
    );
    hold(
        "A and B each alone in the call",
        &[a, b],
        REFUSED_HOLD,
        |s| s.count == Some(1),
    )?;
    ensure!(
        a.peer_ids()?.is_empty(),
        "A still holds a peer connection after refusing B"
    );
    let a_pcs = a.pc_log()?;
    ensure!(
        a_pcs.len() == 1 && never_connected(&a_pcs[0]) && a_pcs[0]["now"] == json!("closed"),
        "A's one peer connection (to B) should have been closed without ever connecting: {a_pcs:?}"
    );
    for (i, pc) in b.pc_log()?.iter().enumerate() {
        ensure!(
            never_connected(pc),
            "B's peer connection #{i} connected: {pc}"
        );
    }

    // The control: E, with the same passphrase and an untouched page, gets
    // in and talks with A; and refuses B, whose answer is changed too.
    e.click("room-join")?;
    enter_passphrase(e, "join", PASSPHRASE)?;
    wait_for("A and E connected", &[a, e], |s| {
        s.iter().all(|s| s.state == "joined" && s.count == Some(2))
    })?;
    wait_for("E refusing B", &[e], |s| {
        s[0].refused.iter().any(|r| r.contains("passphrase"))
    })?;
    check_room_audio(&[a, e])?;
    let a_pcs = a.pc_log()?;
    ensure!(
        a_pcs.len() == 2
            && never_connected(&a_pcs[0])
            && !never_connected(&a_pcs[1])
            && a_pcs[1]["live"] == json!(true),
        "A: the connection to B should never have connected, the one to E should be up: {a_pcs:?}"
    );
    wait_chat_open(a, 1)?;
    run.chat(a, &[e], "E, B cannot read this")?;
    check_sent(b, 1, 2)?;
    check_sent(e, 1, 2)?;
    let snap = b.snapshot()?;
    // B's own tiles may briefly show ICE progress towards E before E's
    // refusal closes it (seen under load); what matters is that no DTLS
    // connection ever completed and no chat reached B.
    ensure!(snap.chat.is_empty(), "B should have no chat: {snap}");
    for (i, pc) in b.pc_log()?.iter().enumerate() {
        ensure!(
            never_connected(pc),
            "B's peer connection #{i} connected: {pc}"
        );
    }
    Ok(())
}

fn room_of_six_scenario(run: &Run, times: &mut Vec<(&'static str, usize, f64)>) -> Result<()> {
    let all: Vec<&Browser> = run.browsers.iter().collect();
    open_room(run, all[0], &all[1..])?;
    join_alone(all[0])?;
    for k in 1..all.len() {
        let t = join_and_hear(all[k], k, SIX_STEP)?;
        times.push((all[k].name, k, t));
        wait_count(&all[..=k], k as u64 + 1, SIX_STEP)?;
    }
    check_room_audio(&all)?;
    for x in &all {
        let sockets = x.sockets()?;
        if sockets.len() != 1 {
            println!(
                "room of 6: {} opened {} signalling sockets (reconnected): {sockets:?}",
                x.name,
                sockets.len()
            );
        }
    }
    let (f, others) = all.split_last().context("no browsers")?;
    wait_chat_open(f, others.len())?;
    run.chat(f, others, "hello all five, this is F")?;
    Ok(())
}

/// `first` takes the room name the home page suggests and presses Create
/// room; every one of `others` opens the link the room page then shows. The
/// link. The name is registered as a secret: the server never logs it.
pub(crate) fn open_room(run: &Run, first: &Browser, others: &[&Browser]) -> Result<String> {
    let name = poll("a room name suggested on the home page", STEP, || {
        let v = first.execute(
            "const i = document.querySelector('[data-testid=\"room-name-input\"]'); \
             return i ? i.value : null",
            json!([]),
        )?;
        Ok(match v.as_str() {
            Some(name) if !name.is_empty() => Ok(name.to_string()),
            _ => Err(format!("room-name-input holds {v}")),
        })
    })?;
    let words: Vec<&str> = name.split('-').collect();
    ensure!(
        words.len() == 4
            && words
                .iter()
                .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())),
        "the suggested room name {name:?} is not four words"
    );
    run.secret(&name);
    first.click("room-create")?;
    first.wait_ready(&format!("/r/{name}"), Some("room"))?;
    wait_room_page(first)?;
    let shown = first.execute(
        "const q = id => document.querySelector(`[data-testid=\"${id}\"]`); \
         return [location.pathname, q('room-link').value, q('room-name').textContent]",
        json!([]),
    )?;
    ensure!(
        shown[0] == json!(format!("/r/{name}")) && shown[2] == json!(name),
        "Create room with {name:?} should open /r/{name} titled {name:?}: {shown}"
    );
    let link = shown[1]
        .as_str()
        .filter(|l| l.ends_with(&format!("/r/{name}")))
        .with_context(|| format!("the room link is not /r/{name}: {shown}"))?
        .to_string();
    for x in others {
        x.goto(&link)?;
        wait_room_page(x)?;
    }
    Ok(link)
}

/// Waits for the room page, outside the room: idle, nobody shown, unlocked
/// as far as it knows, Join room enabled.
fn wait_room_page(x: &Browser) -> Result<()> {
    wait_for(&format!("{} on the room page", x.name), &[x], |s| {
        s[0].mode == "room"
            && s[0].state == "idle"
            && s[0].count == Some(0)
            && s[0].locked == Some(false)
    })?;
    ensure!(
        x.testid("room-join")?.enabled()?,
        "{}: Join room is disabled on a fresh room page",
        x.name
    );
    Ok(())
}

/// `x` joins an empty room.
pub(crate) fn join_alone(x: &Browser) -> Result<()> {
    x.click("room-join")?;
    wait_for(&format!("{} alone in the room", x.name), &[x], |s| {
        s[0].state == "joined" && s[0].count == Some(1) && s[0].tiles.len() == 1
    })?;
    Ok(())
}

/// `x` presses Join room while `others` people are in the (unlocked) room,
/// and must hear every one of them within `limit`. Milliseconds from the
/// click to audio with energy from the last of them, as the page saw it.
pub(crate) fn join_and_hear(x: &Browser, others: usize, limit: Duration) -> Result<f64> {
    x.arm_room(others)?;
    x.click("room-join")?;
    let (ms, detail) = x.time_to_hear_all("room-join", limit)?;
    println!("{}: heard {others} after {ms:.0} ms ({detail})", x.name);
    Ok(ms)
}

/// Every one of `browsers` in the room, showing `n` people in the call.
pub(crate) fn wait_count(browsers: &[&Browser], n: u64, limit: Duration) -> Result<()> {
    let names: Vec<&str> = browsers.iter().map(|b| b.name).collect();
    wait_for_within(
        &format!("{} all in the call, {n} people", names.join(", ")),
        limit,
        browsers,
        |s| {
            s.iter()
                .all(|s| s.state == "joined" && s.count == Some(n) && s.tiles.len() == n as usize)
        },
    )?;
    Ok(())
}

/// `x` locks the room with `passphrase` (registered as a secret).
pub(crate) fn lock(run: &Run, x: &Browser, passphrase: &str) -> Result<()> {
    run.secret(passphrase);
    x.click("room-lock")?;
    enter_passphrase(x, "lock", passphrase)
}

/// Waits for `x` to ask for the passphrase (the form in `mode`: `join`,
/// `lock` or `verify`), types `passphrase` and submits it.
pub(crate) fn enter_passphrase(x: &Browser, mode: &str, passphrase: &str) -> Result<()> {
    wait_for(
        &format!("{} asking for the passphrase ({mode})", x.name),
        &[x],
        |s| s[0].pass_mode.as_deref() == Some(mode) && s[0].pass_enabled,
    )?;
    let input = x.testid("passphrase-input")?;
    input.clear()?;
    input.send_keys(passphrase)?;
    x.click("passphrase-submit")
}

/// Waits until `x`'s peer connections (`n` of them) all have their SCTP
/// transport, which carries the chat channel, connected.
pub(crate) fn wait_chat_open(x: &Browser, n: usize) -> Result<()> {
    poll(
        &format!("{}: chat transport connected to {n} peers", x.name),
        STEP,
        || {
            let stats = x.room_stats()?;
            let ready = stats.len() == n && stats.values().all(|s| s["sctp"] == json!("connected"));
            Ok(if ready {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            })
        },
    )
}

/// The room's peer id of each of `browsers`, in order, once they are
/// checked to form a full mesh: each page's `window.earshot.peers` holds
/// exactly one live connection to each of the others and nothing else.
fn mesh_ids(browsers: &[&Browser]) -> Result<Vec<u64>> {
    let keys = browsers
        .iter()
        .map(|x| x.peer_ids())
        .collect::<Result<Vec<_>>>()?;
    let all: BTreeSet<u64> = keys.iter().flatten().copied().collect();
    let describe = || {
        browsers
            .iter()
            .zip(&keys)
            .map(|(x, k)| format!("{}: {k:?}", x.name))
            .collect::<Vec<_>>()
            .join("; ")
    };
    ensure!(
        all.len() == browsers.len() && keys.iter().all(|k| k.len() == browsers.len() - 1),
        "not a full mesh of {} (window.earshot.peers of each: {})",
        browsers.len(),
        describe()
    );
    let ids: Vec<u64> = keys
        .iter()
        .map(|k| {
            *all.difference(k)
                .next()
                .expect("one id is missing from each")
        })
        .collect();
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    ensure!(
        distinct.len() == ids.len(),
        "two pages are missing the same peer: {}",
        describe()
    );
    Ok(ids)
}

/// In the full mesh of `browsers`, each pair shows the same safety words on
/// the tile of the other (each connection has its own exchange, so the three
/// pairs' words differ), and no tile shows the warning.
pub(crate) fn check_room_words(browsers: &[&Browser]) -> Result<()> {
    let ids = mesh_ids(browsers)?;
    let tiles = |x: &Browser| -> Result<Value> {
        x.execute(
            "const out = {};
             for (const li of document.querySelectorAll('li[data-peer]')) {
               const w = li.querySelector('[data-testid=\"safety-words\"]');
               const warn = li.querySelector('[data-testid=\"safety-warning\"]');
               out[li.dataset.peer] = {words: w && !w.closest('[hidden]') ? w.dataset.words || null : null,
                                       warning: warn && !warn.hidden ? warn.dataset.reason || 'shown' : null};
             }
             return out;",
            json!([]),
        )
    };
    let shown = poll("safety words on every tile", STEP, || {
        let all = browsers
            .iter()
            .map(|x| tiles(x))
            .collect::<Result<Vec<_>>>()?;
        let ready = browsers.iter().enumerate().all(|(i, _)| {
            ids.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .all(|(_, id)| all[i][id.to_string()]["words"].is_string())
        });
        let warned = all.iter().any(|t| {
            t.as_object()
                .is_some_and(|o| o.values().any(|v| !v["warning"].is_null()))
        });
        Ok(if ready || warned {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        })
    })?;
    let mut pairs = BTreeSet::new();
    for i in 0..browsers.len() {
        for j in i + 1..browsers.len() {
            let mine = &shown[i][ids[j].to_string()];
            let theirs = &shown[j][ids[i].to_string()];
            ensure!(
                mine["warning"].is_null() && theirs["warning"].is_null(),
                "{} and {}: a safety warning: {mine} / {theirs}",
                browsers[i].name,
                browsers[j].name
            );
            ensure!(
                mine["words"].is_string() && mine["words"] == theirs["words"],
                "{} shows {} for {}, who shows {} for {}",
                browsers[i].name,
                mine["words"],
                browsers[j].name,
                theirs["words"],
                browsers[i].name
            );
            pairs.insert(mine["words"].to_string());
        }
    }
    let n = browsers.len() * (browsers.len() - 1) / 2;
    ensure!(
        pairs.len() == n,
        "{n} pairs share only {} sets of words: {pairs:?}",
        pairs.len()
    );
    println!("room safety words, one set per pair: {pairs:?}");
    Ok(())
}

/// The pages of `browsers` form a full mesh (see [`mesh_ids`]) and, over a
/// second, every one of them receives audio with energy from every other on
/// a connected, loopback-only peer connection (see `harness::check_audio`).
pub(crate) fn check_room_audio(browsers: &[&Browser]) -> Result<()> {
    let ids = mesh_ids(browsers)?;
    let first = browsers
        .iter()
        .map(|x| x.room_stats())
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    for (i, x) in browsers.iter().enumerate() {
        let second = x.room_stats()?;
        ensure!(
            second.len() == browsers.len() - 1,
            "{}: expected {} peer connections: {second:?}",
            x.name,
            browsers.len() - 1
        );
        for (j, y) in browsers.iter().enumerate().filter(|&(j, _)| j != i) {
            let who = format!("{} hearing {} (peer {})", x.name, y.name, ids[j]);
            let (Some(before), Some(after)) = (first[i].get(&ids[j]), second.get(&ids[j])) else {
                bail!("{who}: no peer connection: {:?} then {second:?}", first[i]);
            };
            check_audio(&who, before, after, "over 1 s")?;
        }
    }
    Ok(())
}

/// `x` sent at least `verifiers` room verifiers (locking or joining) and
/// `auths` fingerprint `auth` values, as recorded by `harness::INIT_JS`: so
/// the log check of `Run::finish` has them to look for.
fn check_sent(x: &Browser, verifiers: usize, auths: usize) -> Result<()> {
    let sent = x.execute("return window.__e2eSent", json!([]))?;
    let count = |key: &str| sent[key].as_array().map_or(0, Vec::len);
    ensure!(
        count("verifiers") >= verifiers && count("auths") >= auths,
        "{}: expected at least {verifiers} verifiers and {auths} auths sent, recorded {} and {}",
        x.name,
        count("verifiers"),
        count("auths")
    );
    Ok(())
}

/// Whether a record of `harness::INIT_JS`'s peer connection log never
/// reported `connected`.
fn never_connected(pc: &Value) -> bool {
    pc["states"]
        .as_array()
        .is_some_and(|s| !s.contains(&json!("connected")))
        && pc["now"] != json!("connected")
}

/// Starts a probe for the next join: from now on, every peer connection in
/// `window.earshot.peers` that was not there yet is polled every 50 ms until
/// it has inbound audio with energy; `allAt` is when the last of
/// `arguments[0]` such connections first had it. (The stranger probe polls
/// its one connection every 10 ms; polling five that often slowed the very
/// page it measures, on two busy cores, from about 2.5 s to 4 to 9 s.)
const ROOM_ARM_JS: &str = r#"
const expect = arguments[0];
const e2e = window.__e2e;
if (e2e.roomTimer) clearInterval(e2e.roomTimer);
const peersNow = () => (window.earshot && window.earshot.peers) || {};
const old = new Set(Object.values(peersNow()));
const probe = {expect, heard: {}, bytes: {}, allAt: null, busy: false};
e2e.room = probe;
e2e.roomTimer = setInterval(() => {
  if (probe.busy) return;
  const fresh = Object.entries(peersNow()).filter(([, pc]) => !old.has(pc));
  if (fresh.length === 0) return;
  probe.busy = true;
  Promise.all(fresh.map(([id, pc]) => pc.getStats().then(stats => {
    const now = Date.now();
    stats.forEach(r => {
      if (r.type !== 'inbound-rtp' || r.kind !== 'audio' || !(r.bytesReceived > 0)) return;
      if (!(id in probe.bytes)) probe.bytes[id] = now;
      if (!(id in probe.heard) && r.totalAudioEnergy > 0) probe.heard[id] = now;
    });
  }, () => {}))).finally(() => {
    probe.busy = false;
    const live = new Set(Object.keys(peersNow()));
    const heard = Object.keys(probe.heard).filter(id => live.has(id));
    if (probe.allAt === null && heard.length >= probe.expect) {
      probe.allAt = Math.max(...heard.map(id => probe.heard[id]));
      clearInterval(e2e.roomTimer);
      e2e.roomTimer = null;
    }
  });
}, 50);
"#;

const ROOM_PROBE_JS: &str = r#"
const p = window.__e2e.room;
return p ? {expect: p.expect, heard: p.heard, bytes: p.bytes, allAt: p.allAt} : null;
"#;

/// Audio statistics of every peer connection in `window.earshot.peers`, as
/// `{peers: [{peer, connectionState, sctp, inbound, bytes, packets, energy,
/// candidates}]}`.
const ROOM_STATS_JS: &str = r#"
const done = arguments[arguments.length - 1];
const peers = (window.earshot && window.earshot.peers) || {};
Promise.all(Object.entries(peers).map(([id, pc]) => pc.getStats().then(stats => {
  const out = {peer: Number(id), connectionState: pc.connectionState,
               sctp: pc.sctp ? pc.sctp.state : null,
               inbound: 0, bytes: 0, packets: 0, energy: 0, candidates: []};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.inbound += 1;
      out.bytes += r.bytesReceived || 0;
      out.packets += r.packetsReceived || 0;
      out.energy += r.totalAudioEnergy || 0;
    }
    if (r.type === 'local-candidate' || r.type === 'remote-candidate') {
      out.candidates.push({kind: r.type, type: r.candidateType, protocol: r.protocol,
                           address: r.address ?? r.ip ?? null, port: r.port});
    }
  });
  return out;
}))).then(list => done({peers: list}), err => done({error: String(err)}));
"#;

/// Every peer connection the page ever made (from `harness::INIT_JS`), oldest
/// first: every connection state it reported, its state now, and whether it
/// is in `window.earshot.peers`.
const PC_LOG_JS: &str = r#"
const live = new Set(Object.values((window.earshot && window.earshot.peers) || {}));
return (window.__e2ePcs || []).map(r => ({created: r.created, states: r.states,
  now: r.pc.connectionState, live: live.has(r.pc)}));
"#;

/// Installed in B's page before the page's own scripts, in the tampered
/// fingerprint scenario: every `signal` with a `description` that the page
/// sends over its WebSocket has the first byte of each `a=fingerprint:`
/// changed, the way a server that answers the DTLS handshake with its own
/// certificate would have to change it, while the `auth` the page computed
/// for its real fingerprints is left as it is. `window.__e2eTamper` counts
/// the descriptions changed, and those of them that carried an `auth`.
const TAMPER_JS: &str = r#"
(() => {
  const log = {rewritten: 0, withAuth: 0};
  Object.defineProperty(window, '__e2eTamper', {value: log});
  const send = WebSocket.prototype.send;
  const flip = hex => (255 - parseInt(hex, 16)).toString(16).padStart(2, '0').toUpperCase();
  WebSocket.prototype.send = function (data) {
    if (typeof data === 'string' && data.includes('"description"')) {
      try {
        const msg = JSON.parse(data);
        const d = msg && msg.type === 'signal' ? msg.description : null;
        if (d && typeof d.sdp === 'string') {
          const sdp = d.sdp.replace(/^(a=fingerprint:\S+ )([0-9A-Fa-f]{2})/gm,
                                    (_, head, hex) => head + flip(hex));
          if (sdp !== d.sdp) {
            log.rewritten += 1;
            if (typeof msg.auth === 'string') log.withAuth += 1;
            d.sdp = sdp;
            data = JSON.stringify(msg);
          }
        }
      } catch {}
    }
    return send.call(this, data);
  };
})();
"#;

/// The room page's probes.
impl Browser<'_> {
    /// The keys of `window.earshot.peers`: the peer ids this page has a live
    /// connection to.
    fn peer_ids(&self) -> Result<BTreeSet<u64>> {
        let v = self.execute(
            "return Object.keys((window.earshot && window.earshot.peers) || {}).map(Number)",
            json!([]),
        )?;
        v.as_array()
            .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
            .with_context(|| format!("{}: window.earshot.peers unreadable: {v}", self.name))
    }

    /// Audio statistics of each live peer connection, by peer id (see
    /// `ROOM_STATS_JS`).
    fn room_stats(&self) -> Result<BTreeMap<u64, Value>> {
        let v = self.execute_async(ROOM_STATS_JS, json!([]))?;
        let Some(peers) = v["peers"].as_array() else {
            bail!("{}: no room stats: {v}", self.name);
        };
        Ok(peers
            .iter()
            .filter_map(|p| Some((p["peer"].as_u64()?, p.clone())))
            .collect())
    }

    /// Starts the time-to-hear-everyone probe for `others` new peer
    /// connections (see `ROOM_ARM_JS`).
    pub(crate) fn arm_room(&self, others: usize) -> Result<()> {
        self.execute(ROOM_ARM_JS, json!([others]))?;
        Ok(())
    }

    /// Waits (up to `limit`) until the probe of [`Browser::arm_room`] has
    /// heard everyone; milliseconds from the last click on `since` to then,
    /// and for each peer when its first audio bytes and its first sound
    /// came (in words).
    pub(crate) fn time_to_hear_all(&self, since: &str, limit: Duration) -> Result<(f64, String)> {
        let (at, probe) = poll(
            &format!("{} to hear everyone in the room", self.name),
            limit,
            || {
                let probe = self.execute(ROOM_PROBE_JS, json!([]))?;
                Ok(match probe["allAt"].as_f64() {
                    Some(at) => Ok((at, probe)),
                    None => Err(format!(
                        "probe {probe}; stats {:?}; page {}",
                        self.room_stats()?,
                        self.snapshot()?
                    )),
                })
            },
        )?;
        let since = self.clicked_at(since)?;
        let mut peers: Vec<(u64, f64, f64)> = probe["heard"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(peer, heard)| {
                let bytes = probe["bytes"][peer].as_f64()?;
                Some((peer.parse().ok()?, bytes - since, heard.as_f64()? - since))
            })
            .collect();
        peers.sort_by(|x, y| x.2.total_cmp(&y.2));
        let detail: Vec<String> = peers
            .iter()
            .map(|(peer, bytes, heard)| {
                format!("peer {peer}: audio bytes at {bytes:.0} ms, sound at {heard:.0} ms")
            })
            .collect();
        Ok((at - since, detail.join("; ")))
    }

    /// The page's peer connection log (see `PC_LOG_JS`).
    fn pc_log(&self) -> Result<Vec<Value>> {
        match self.execute(PC_LOG_JS, json!([]))? {
            Value::Array(pcs) => Ok(pcs),
            other => bail!("{}: no peer connection log: {other}", self.name),
        }
    }
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, to
/// print how busy the machine was beside a figure: six Chromiums on two
/// shared cores can make a slow run look like a slow protocol.
#[derive(Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = ticks.iter().sum();
        // idle and iowait
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some(CpuTimes {
            busy: total - idle,
            total,
        })
    }

    /// "CPU busy N % of C cores over the run, load average L" since `before`.
    fn load_since(before: Option<CpuTimes>) -> String {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let busy = match (before, CpuTimes::read()) {
            (Some(a), Some(b)) if b.total > a.total => format!(
                "{:.0} %",
                100.0 * (b.busy - a.busy) as f64 / (b.total - a.total) as f64
            ),
            _ => "-".to_string(),
        };
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "-".to_string());
        format!(
            "machine CPU busy {busy} of {cores} cores over the run, load average {load} at its end"
        )
    }
}
