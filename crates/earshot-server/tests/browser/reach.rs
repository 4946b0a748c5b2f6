//! Reaching the other side: "hide my IP" relays a stranger call through
//! TURN (the embedded server, or a real coturn), so that neither page ever
//! learns the other's own address; the safety words match, and change when
//! someone in the middle swaps a DTLS fingerprint; fresh TURN credentials
//! keep a relayed call going; and the time to audio, relayed and direct.
//! See the crate docs in `main.rs`.
//!
//! Every page of these scenarios gets [`REACH_JS`] before the page's own
//! scripts (so they start with no page and open the server's afterwards):
//! it records every `welcome`, `ice_servers` and `signal` the page receives
//! and every `signal` it sends, and can change the `a=fingerprint:` of the
//! descriptions it sends (test 3). What reached a partner is judged from
//! those records and from `getStats()`, never from what the page says of
//! itself.
//!
//! In the loopback-only namespace every address is 127.0.0.1, so whether a
//! candidate would give someone's address away is told by its type (`host`,
//! `srflx`, `prflx` carry the browser's own address; `relay` the TURN
//! server's) and by its related address (`raddr`, which for a relay
//! candidate is the browser's address as the TURN server saw it, unless the
//! browser blanks it to `0.0.0.0`).

use crate::support::harness::{
    Browser, Run, STEP, Setup, Snapshot, TURN_PUBLIC_STANDIN, check_call_audio, median, poll,
    report, wait_for,
};
use crate::support::{TempDir, free_port};
use anyhow::{Context, Result, bail, ensure};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the server's trace log must mention to prove it saw a stranger call.
const LOG_SHOWS: &[&str] = &["matched"];
/// The same, for a server running the embedded TURN server (its shutdown
/// line: proof that it ran).
pub(crate) const LOG_SHOWS_TURN: &[&str] = &["matched", "turn: stopped"];
/// Relay ports of the embedded TURN server in these scenarios.
pub(crate) const EMBEDDED_RELAY_PORTS: RangeInclusive<u16> = 50000..=50999;
/// Relay ports of the coturn of [`browser_relays_through_a_real_coturn`].
const COTURN_RELAY_PORTS: RangeInclusive<u16> = 51000..=51999;
/// Calls of each kind (relayed, direct) for the time-to-audio figure.
const TIMED_CALLS: usize = 5;

/// Server flags for the embedded TURN server on loopback (STUN stays on).
pub(crate) fn embedded_turn() -> Setup {
    Setup {
        server_args: vec![
            "--turn-listen".into(),
            "127.0.0.1:0".into(),
            // A documentation address on no interface here: the relay
            // refuses its range, so relay-to-relay media can only pass
            // through the server's memory.
            "--turn-public-ip".into(),
            TURN_PUBLIC_STANDIN.into(),
            "--turn-relay-ports".into(),
            format!(
                "{}-{}",
                EMBEDDED_RELAY_PORTS.start(),
                EMBEDDED_RELAY_PORTS.end()
            ),
        ],
        ..Setup::default()
    }
}

// ------------------------------------------------------------------ tests

/// With the embedded TURN server offered, "hide my IP" starts checked (the
/// welcome says `hide_ip_default`). A and B press Start and talk: (a) every
/// ICE candidate that reached each page, trickled or inside a description,
/// is a `relay` candidate on one of the embedded server's relay ports, with
/// its related address blanked (nothing of the partner's own address); (b)
/// each page's `getStats()` knows only relay candidates, local and remote,
/// and the selected pair is relay to relay; (c) both pages show the same
/// three safety words from the list, the ones PROTOCOL.md "Safety words"
/// gives for the two DTLS fingerprints. Then both uncheck "hide my IP"
/// (the note says it applies to the next call), A ends and starts again and
/// meets B in a direct call: host candidates reach both pages, and the
/// checks of (a) and (b) fail on it, proof that they can. Chat both ways;
/// ends with the privacy checks of `Run::finish`, the TURN credentials
/// the pages got counting as secrets.
#[test]
fn browser_hide_ip_relays_through_embedded_turn() -> Result<()> {
    Run::scenario_setup(
        "browser_hide_ip_relays_through_embedded_turn",
        &["A", "B"],
        0,
        LOG_SHOWS_TURN,
        &embedded_turn(),
        hide_ip_scenario,
    )
}

/// Earshot without its own TURN server, pointing its pages at a real coturn
/// on loopback (`--turn-url`, `--turn-secret`: TURN REST credentials that
/// coturn checks with the same shared secret). A and B, "hide my IP" on by
/// default, talk through coturn: only relay candidates on coturn's relay
/// ports reach either page, both select relay pairs through coturn's URL,
/// audio flows both ways, the safety words match, and coturn's log shows
/// an allocation for each page's username (none before the call) and,
/// once both hang up, sessions that relayed packets to and from their
/// peer. coturn is killed at the end.
#[test]
fn browser_relays_through_a_real_coturn() -> Result<()> {
    let test = "browser_relays_through_a_real_coturn";
    if !crate::support::harness::should_run(test)? {
        return Ok(());
    }
    let secret = format!("earshot-e2e-{:016x}", nonce());
    let coturn = Coturn::start(&secret)?;
    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let setup = Setup {
        server_args: vec![
            "--turn-url".into(),
            url.clone(),
            "--turn-secret".into(),
            secret.clone(),
        ],
        ..Setup::default()
    };
    let result = Run::scenario_setup(test, &["A", "B"], 0, LOG_SHOWS, &setup, |run| {
        run.secret(&secret);
        coturn_scenario(run, &coturn, &url)
    });
    if result.is_err() {
        eprintln!("--- coturn log ---\n{}", tail(&coturn.log(), 60));
    }
    result
}

/// A strangers call in which something in the middle swaps B's DTLS
/// fingerprint on the way (B's page changes the first byte of every
/// `a=fingerprint:` it sends, as a server answering B's handshake with its
/// own certificate would have to). A receives the swapped fingerprint; then
/// either the call fails (DTLS cannot verify B's certificate against it),
/// with no safety words shown, or, if it connects, the two pages show
/// different words. The control: the same two pages, the swap turned off,
/// meet again, connect, hear each other and show the same words.
#[test]
fn browser_safety_words_change_when_a_fingerprint_is_tampered() -> Result<()> {
    Run::scenario_setup(
        "browser_safety_words_change_when_a_fingerprint_is_tampered",
        &["A", "B"],
        0,
        LOG_SHOWS,
        &Setup::default(),
        tamper_scenario,
    )
}

/// Time to audio, relayed through the embedded TURN server and direct, in
/// the same run and alternating, so that both see the same machine: B
/// waits in the queue, A presses Start, and the time runs from that click
/// to audio with energy on both sides; then A presses End (B is queued
/// again). Each call is checked to be what it is counted as (relay pair or
/// host pair, `window.earshot.hideIp`). The medians go to the report.
#[test]
fn browser_time_to_audio_relay_vs_direct() -> Result<()> {
    Run::scenario_setup(
        "browser_time_to_audio_relay_vs_direct",
        &["A", "B"],
        0,
        LOG_SHOWS_TURN,
        &embedded_turn(),
        |run| {
            let mut relay = Vec::new();
            let mut direct = Vec::new();
            let result = timing_scenario(run, &mut relay, &mut direct);
            if !relay.is_empty() && relay.len() == direct.len() {
                let (r, d) = (median(&relay), median(&direct));
                report(&format!(
                    "time to audio: relay (embedded TURN) median {r:.0} ms vs direct median {d:.0} ms \
                     over {} calls each (ratio {:.2})",
                    relay.len(),
                    r / d
                ));
            }
            result
        },
    )
}

/// In a call relayed through the embedded TURN server, A asks for fresh
/// TURN credentials (`window.earshot.refreshIce()`, what its timer does at
/// 80% of their lifetime): the peer connection's TURN username changes to
/// the one the server's `ice_servers` gave, ICE restarts (new ufrags) onto
/// a new relay allocation, only relay candidates of the new generation
/// reach either page, the call stays the same peer connection, never out
/// of `connected`, and audio keeps flowing both ways. (Only A refreshes:
/// every allocation of the old generations lives on for a while, and both
/// browsers come from 127.0.0.1, so a second restart right after would run
/// into the embedded server's 10 allocations per address.)
#[test]
fn browser_refresh_ice_keeps_a_relayed_call_going() -> Result<()> {
    Run::scenario_setup(
        "browser_refresh_ice_keeps_a_relayed_call_going",
        &["A", "B"],
        0,
        LOG_SHOWS_TURN,
        &embedded_turn(),
        refresh_scenario,
    )
}

// -------------------------------------------------------------- scenarios

fn hide_ip_scenario(run: &Run) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    open_pages(run)?;
    for x in [a, b] {
        let welcome = last_welcome(x)?;
        ensure!(
            welcome["hideIpDefault"] == json!(true),
            "{}: the welcome should say hide_ip_default with TURN offered: {welcome}",
            x.name
        );
        let turn = turn_entries(&welcome["iceServers"]);
        ensure!(
            turn.len() == 1
                && turn[0]["urls"].as_array().is_some_and(|u| u
                    .iter()
                    .all(|u| u.as_str().is_some_and(|u| u.starts_with("turn:127.0.0.1:")))),
            "{}: expected one TURN entry (the embedded server, on 127.0.0.1) in the welcome: {welcome}",
            x.name
        );
        let check = hide_ip_box(x)?;
        ensure!(
            check == json!({"shown": true, "checked": true, "disabled": false}),
            "{}: \"hide my IP\" should be shown, usable and checked by default: {check}",
            x.name
        );
    }

    // The relayed call.
    let time = meet(a, b)?;
    println!("hide my IP: relayed call, time to audio {time:.0} ms");
    check_call_audio(&[a, b])?;
    for x in [a, b] {
        ensure!(
            x.execute("return window.earshot.hideIp", json!([]))? == json!(true),
            "{}: window.earshot.hideIp should be true for a relayed call",
            x.name
        );
        check_relayed(x, 0, &EMBEDDED_RELAY_PORTS)?;
    }
    let relayed = run.metric("turn_relay_to_relay_total")?;
    ensure!(
        relayed > 0,
        "the call should flow relay to relay, through the server's memory"
    );
    let words = check_safety_words(a, b)?;
    println!("hide my IP: safety words {words:?} on both pages");
    for (from, to) in [(a, b), (b, a)] {
        run.chat(
            from,
            &[to],
            &format!("relayed hello from {} to {}", from.name, to.name),
        )?;
    }

    // Both turn it off: that applies from the next call on.
    for x in [a, b] {
        x.click("hide-ip")?;
        let check = hide_ip_box(x)?;
        ensure!(
            check["checked"] == json!(false),
            "{}: \"hide my IP\" still checked after a click: {check}",
            x.name
        );
        let note = x.testid("hide-ip-note")?.text()?;
        ensure!(
            note.contains("next call")
                && x.execute("return window.earshot.hideIp", json!([]))? == json!(true),
            "{}: unchecked during a relayed call, the note should say it applies from the next \
             call (it says {note:?}) and the call stay relayed",
            x.name
        );
    }

    // The control: a direct call. Its candidates fail the checks above.
    let marks = [received_count(a)?, received_count(b)?];
    for x in [a, b] {
        arm(x)?;
    }
    a.click("end")?;
    wait_for("A ended, B searching", &[a, b], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    a.click("start")?;
    wait_for("A and B in a new, direct call", &[a, b], |_| {
        newly_connected(a).unwrap_or(false) && newly_connected(b).unwrap_or(false)
    })?;
    let time = time_to_audio(a, b, a.clicked_at("start")?)?;
    println!("hide my IP off: direct call, time to audio {time:.0} ms");
    check_call_audio(&[a, b])?;
    for (x, mark) in [a, b].into_iter().zip(marks) {
        ensure!(
            x.execute("return window.earshot.hideIp", json!([]))? == json!(false),
            "{}: window.earshot.hideIp should be false for the direct call",
            x.name
        );
        let got = received_this_call(x, mark)?;
        let hosts = candidates_in(&got)
            .iter()
            .filter(|c| c.typ == "host")
            .count();
        ensure!(
            hosts > 0,
            "{}: no host candidate reached the page in the direct call: {:?}",
            x.name,
            candidates_in(&got)
        );
        let refused = check_relay_only(&got, &EMBEDDED_RELAY_PORTS);
        ensure!(
            refused.is_err(),
            "{}: the relay-only check of (a) passed on a direct call",
            x.name
        );
        let stats = call_stats(x)?;
        let refused_stats = check_relay_stats(&stats, &EMBEDDED_RELAY_PORTS);
        ensure!(
            refused_stats.is_err(),
            "{}: the relay-only check of (b) passed on a direct call: {stats}",
            x.name
        );
        ensure!(
            stats["selected"]["local"]["type"] == json!("host"),
            "{}: the direct call's selected pair is not from a host candidate: {}",
            x.name,
            stats["selected"]
        );
        println!(
            "hide my IP off: {} received {hosts} host candidates; the relay checks say: {:#} / {:#}",
            x.name,
            refused.err().map(|e| format!("{e:#}")).unwrap_or_default(),
            refused_stats
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default(),
        );
    }
    check_safety_words(a, b)?;
    run.chat(a, &[b], "direct hello from A to B")?;
    hang_up(a, b)?;
    register_turn_secrets(run)
}

fn coturn_scenario(run: &Run, coturn: &Coturn, url: &str) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    open_pages(run)?;
    for x in [a, b] {
        let welcome = last_welcome(x)?;
        let turn = turn_entries(&welcome["iceServers"]);
        ensure!(
            welcome["hideIpDefault"] == json!(true)
                && turn.len() == 1
                && turn[0]["urls"] == json!([url]),
            "{}: the welcome should offer exactly coturn ({url}) as TURN, hide_ip_default on: {welcome}",
            x.name
        );
        let check = hide_ip_box(x)?;
        ensure!(
            check == json!({"shown": true, "checked": true, "disabled": false}),
            "{}: \"hide my IP\" should be shown, usable and checked by default: {check}",
            x.name
        );
    }
    let before = coturn.allocations();
    ensure!(
        before.is_empty(),
        "coturn allocated before any call: {before:?}"
    );
    let time = meet(a, b)?;
    println!("coturn: relayed call, time to audio {time:.0} ms");
    check_call_audio(&[a, b])?;
    for x in [a, b] {
        let got = received_this_call(x, 0)?;
        let n = check_relay_only(&got, &COTURN_RELAY_PORTS)
            .with_context(|| format!("what reached {}", x.name))?;
        let stats = call_stats(x)?;
        check_relay_stats(&stats, &COTURN_RELAY_PORTS)
            .with_context(|| format!("getStats of {}", x.name))?;
        let via = stats["selected"]["local"]["url"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            via == url,
            "{}: the selected local relay candidate should come from {url}, not {via:?}: {}",
            x.name,
            stats["selected"]
        );
        println!(
            "coturn: {} received {n} relay candidates on coturn's ports; selected pair {}",
            x.name, stats["selected"]
        );
    }
    check_safety_words(a, b)?;
    for (from, to) in [(a, b), (b, a)] {
        run.chat(
            from,
            &[to],
            &format!("hello through coturn from {} to {}", from.name, to.name),
        )?;
    }
    let allocations = poll("coturn to log both allocations", STEP, || {
        let found = coturn.allocations();
        Ok(if found.len() >= 2 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        })
    })?;
    println!(
        "coturn: {} allocation lines in its log, e.g.:\n  {}",
        allocations.len(),
        allocations
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // Each page's allocation was made with the credentials Earshot gave it.
    for x in [a, b] {
        let welcome = last_welcome(x)?;
        let user = turn_entries(&welcome["iceServers"])
            .first()
            .and_then(|t| t["username"].as_str().map(String::from))
            .with_context(|| format!("{}: no TURN username in the welcome", x.name))?;
        ensure!(
            allocations
                .iter()
                .any(|l| l.contains(&format!("user <{user}>"))),
            "{}: coturn logged no allocation for the page's username {user}: {allocations:?}",
            x.name
        );
    }
    hang_up(a, b)?;
    // The peer connections closed: coturn ends the two sessions and logs
    // what each relayed to and from its peer.
    let usage = poll("coturn to log both sessions' peer usage", STEP, || {
        let found = coturn.peer_usage();
        let both_ways = found
            .iter()
            .filter(|(_, rp, sp)| *rp > 0 && *sp > 0)
            .count();
        Ok(if both_ways >= 2 {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        })
    })?;
    for (line, _, _) in &usage {
        println!("coturn: {line}");
    }
    register_turn_secrets(run)
}

fn tamper_scenario(run: &Run) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    open_pages(run)?;
    b.execute("window.__e2eReach.tamper.on = true", json!([]))?;
    arm(a)?;
    arm(b)?;
    a.click("start")?;
    wait_for("A searching", &[a], |s| s[0].state == "searching")?;
    b.click("start")?;
    // Either the call fails, or both pages connect and show words.
    let outcome = poll(
        "the tampered call to fail or show safety words",
        STEP,
        || {
            let words = [safety_words(a)?, safety_words(b)?];
            if let [Some(wa), Some(wb)] = &words {
                return Ok(Ok(Outcome::Connected(wa.clone(), wb.clone())));
            }
            let (pa, pb) = (last_pc(a)?, last_pc(b)?);
            let failed = |p: &Value| {
                p["states"]
                    .as_array()
                    .is_some_and(|s| s.contains(&json!("failed")))
            };
            let (sa, sb) = (a.snapshot()?, b.snapshot()?);
            let ended = |s: &Snapshot| s.state == "ended" || s.state == "idle";
            if (failed(&pa) || failed(&pb)) && (ended(&sa) || ended(&sb)) {
                return Ok(Ok(Outcome::Failed(pa, pb, sa.status, sb.status)));
            }
            Ok(Err(format!("A: {sa} {pa}; B: {sb} {pb}; words {words:?}")))
        },
    )?;
    match outcome {
        Outcome::Connected(wa, wb) => {
            ensure!(
                wa != wb,
                "the fingerprint was swapped, yet both pages show the same safety words {wa:?}"
            );
            println!("tampered call connected; the words differ: A {wa:?}, B {wb:?}");
        }
        Outcome::Failed(pa, pb, sa, sb) => {
            let connected = |p: &Value| {
                p["states"]
                    .as_array()
                    .is_some_and(|s| s.contains(&json!("connected")))
            };
            ensure!(
                !connected(&pa) && !connected(&pb),
                "the tampered call's peer connections reached connected before failing: A {pa}, B {pb}"
            );
            let words = [safety_words(a)?, safety_words(b)?];
            ensure!(
                words == [None, None],
                "a page shows safety words for a call that failed: {words:?}"
            );
            println!(
                "tampered call failed: A's peer connection went {}, B's {}; A says {sa:?}, B says {sb:?}",
                pa["states"], pb["states"]
            );
        }
    }

    let tamper = b.execute("return window.__e2eReach.tamper", json!([]))?;
    ensure!(
        tamper["rewritten"].as_u64().unwrap_or(0) >= 1,
        "B's page changed no fingerprint: {tamper}"
    );
    // What A got as B's fingerprint is not B's.
    let (da, db) = (descriptions(a)?, descriptions(b)?);
    let b_own = fingerprint(&db["local"]);
    let a_sees = fingerprint(&da["remote"]);
    ensure!(
        b_own.is_some() && a_sees.is_some() && b_own != a_sees,
        "A should have received another fingerprint than B's own: B has {b_own:?}, A got {a_sees:?}"
    );

    // The control: the same pages, nothing swapped.
    b.execute("window.__e2eReach.tamper.on = false", json!([]))?;
    wait_for("both pages done with the tampered call", &[a, b], |s| {
        s.iter().all(|s| is_ended(s) || s.state == "searching")
    })?;
    for x in [a, b] {
        arm(x)?;
    }
    let rewritten = tamper["rewritten"].clone();
    for x in [a, b] {
        if is_ended(&x.snapshot()?) {
            x.click("start")?;
        }
    }
    wait_for("A and B in an untampered call", &[a, b], |_| {
        newly_connected(a).unwrap_or(false) && newly_connected(b).unwrap_or(false)
    })?;
    check_call_audio(&[a, b])?;
    let words = check_safety_words(a, b)?;
    let after = b.execute("return window.__e2eReach.tamper.rewritten", json!([]))?;
    ensure!(
        after == rewritten,
        "B's page changed fingerprints in the control call: {rewritten} then {after}"
    );
    println!("control call: the same safety words {words:?} on both pages");
    for (from, to) in [(a, b), (b, a)] {
        run.chat(
            from,
            &[to],
            &format!("untampered hello from {} to {}", from.name, to.name),
        )?;
    }
    hang_up(a, b)
}

fn timing_scenario(run: &Run, relay: &mut Vec<f64>, direct: &mut Vec<f64>) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    open_pages(run)?;
    for x in [a, b] {
        hide_ip_box(x)?;
    }
    b.click("start")?;
    wait_for("B searching", &[b], |s| s[0].state == "searching")?;
    for round in 0..2 * TIMED_CALLS {
        let relayed = round % 2 == 0;
        for x in [a, b] {
            set_hide_ip(x, relayed)?;
            arm(x)?;
        }
        a.click("start")?;
        wait_for(
            &format!("round {round}: A and B connected"),
            &[a, b],
            |_| newly_connected(a).unwrap_or(false) && newly_connected(b).unwrap_or(false),
        )?;
        let time = time_to_audio(a, b, a.clicked_at("start")?)?;
        for x in [a, b] {
            let hide = x.execute("return window.earshot.hideIp", json!([]))?;
            let stats = call_stats(x)?;
            let selected = &stats["selected"];
            let want = if relayed { "relay" } else { "host" };
            ensure!(
                hide == json!(relayed)
                    && selected["local"]["type"] == json!(want)
                    && selected["remote"]["type"] == json!(want),
                "round {round}: {}: expected a {want} call (hideIp {relayed}), got hideIp {hide}, \
                 selected pair {selected}",
                x.name
            );
        }
        if round == 0 {
            run.chat(a, &[b], "hello from A, timing calls")?;
        }
        if relayed {
            relay.push(time);
        } else {
            direct.push(time);
        }
        a.click("end")?;
        wait_for(
            &format!("round {round}: A ended, B searching"),
            &[a, b],
            |s| is_ended(&s[0]) && s[1].state == "searching",
        )?;
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "time to audio samples: relay {} ms; direct {} ms",
        show(relay),
        show(direct)
    );
    b.click("end")?;
    wait_for("B idle", &[b], |s| is_ended(&s[0]))?;
    register_turn_secrets(run)
}

fn refresh_scenario(run: &Run) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    open_pages(run)?;
    for x in [a, b] {
        let check = hide_ip_box(x)?;
        ensure!(
            check["checked"] == json!(true),
            "{}: hide my IP is off: {check}",
            x.name
        );
    }
    meet(a, b)?;
    check_call_audio(&[a, b])?;
    run.chat(a, &[b], "hello from A before the refresh")?;
    for x in [a, b] {
        watch_call(x)?;
    }
    let before = descriptions(a)?;
    let stats_before = call_stats(a)?;
    let marks = [received_count(a)?, received_count(b)?];
    let updated = a.execute_async(
        "const done = arguments[arguments.length - 1];
         window.earshot.refreshIce().then(n => done({n}), e => done({error: String(e)}));",
        json!([]),
    )?;
    ensure!(
        updated == json!({"n": 1}),
        "A: refreshIce() should have updated the one peer connection: {updated}"
    );
    let user = |d: &Value| {
        turn_entries(&d["iceServers"])
            .first()
            .and_then(|s| s["username"].as_str().map(String::from))
    };
    let (old_user, new_user) = (user(&before), user(&descriptions(a)?));
    ensure!(
        old_user.is_some() && new_user.is_some() && old_user != new_user,
        "A: the TURN username in pc.getConfiguration() should have changed: \
         {old_user:?} then {new_user:?}"
    );
    let fresh = a.execute(
        "const m = window.__e2eReach.iceServers; return m.length ? m[m.length - 1] : null",
        json!([]),
    )?;
    ensure!(
        user(&json!({"iceServers": fresh["iceServers"]})) == new_user,
        "A: the new username is not the one the server's ice_servers gave: {fresh}"
    );
    // ICE restarts: new ufrags in both of A's descriptions, candidates of
    // the new generation reach both pages, and A settles on a pair with a
    // new local relay candidate (an allocation made with the new
    // credentials).
    let old_ufrag = (ufrag(&before["local"]), ufrag(&before["remote"]));
    let old_local = stats_before["selected"]["local"]["id"].clone();
    let settled = poll("A: the ICE restart to settle", STEP, || {
        let d = descriptions(a)?;
        let s = call_stats(a)?;
        let new_ufrag = (ufrag(&d["local"]), ufrag(&d["remote"]));
        let trickled = [
            candidates_in(&received_since(a, marks[0])?).len(),
            candidates_in(&received_since(b, marks[1])?).len(),
        ];
        Ok(
            if d["signalingState"] == json!("stable")
                && new_ufrag.0 != old_ufrag.0
                && new_ufrag.1 != old_ufrag.1
                && !s["selected"]["local"].is_null()
                && s["selected"]["local"]["id"] != old_local
                && trickled.iter().all(|n| *n > 0)
            {
                Ok(s)
            } else {
                Err(format!(
                    "ufrags {old_ufrag:?} -> {new_ufrag:?}, signalling {}, selected {}, \
                     new candidates received by A and B {trickled:?}",
                    d["signalingState"], s["selected"]
                ))
            },
        )
    })?;
    check_relay_stats(&settled, &EMBEDDED_RELAY_PORTS).context("A after the refresh")?;
    for (z, mark) in [a, b].into_iter().zip(marks) {
        let got = received_this_call(z, mark)?;
        check_relay_only(&got, &EMBEDDED_RELAY_PORTS)
            .with_context(|| format!("what reached {} after the refresh", z.name))?;
    }
    check_call_audio(&[a, b])?;
    for z in [a, b] {
        check_call_unbroken(z)?;
    }
    println!(
        "refresh: A got new TURN credentials ({} then {}); ICE restarted from local relay \
         candidate {} (port {}) to {} (port {}), remote now {} port {}; audio flows both ways",
        old_user.as_deref().unwrap_or_default(),
        new_user.as_deref().unwrap_or_default(),
        old_local,
        stats_before["selected"]["local"]["port"],
        settled["selected"]["local"]["id"],
        settled["selected"]["local"]["port"],
        settled["selected"]["remote"]["type"],
        settled["selected"]["remote"]["port"],
    );
    run.chat(b, &[a], "hello from B after the refresh")?;
    hang_up(a, b)?;
    register_turn_secrets(run)
}

enum Outcome {
    Connected(String, String),
    Failed(Value, Value, String, String),
}

// ---------------------------------------------------------------- helpers

/// Installs [`REACH_JS`] in every browser of the run and opens the
/// server's home page in each (consent accepted), then waits for each
/// page's `welcome`.
pub(crate) fn open_pages(run: &Run) -> Result<()> {
    let url = run
        .servers
        .borrow()
        .last()
        .context("no server")?
        .url
        .clone();
    for x in &run.browsers {
        x.session
            .add_init_script(REACH_JS)
            .with_context(|| format!("{}: cannot install the reach probes", x.name))?;
        x.goto(&url)?;
    }
    for x in &run.browsers {
        last_welcome(x)?;
    }
    Ok(())
}

/// The page's last `welcome`, as [`REACH_JS`] recorded it (waits for one).
fn last_welcome(x: &Browser) -> Result<Value> {
    poll(&format!("{}: a welcome", x.name), STEP, || {
        let w = x.execute(
            "const w = window.__e2eReach.welcomes; return w.length ? w[w.length - 1] : null",
            json!([]),
        )?;
        Ok(if w.is_null() {
            Err("none yet".into())
        } else {
            Ok(w)
        })
    })
}

/// The entries of an `ice_servers` list with a `turn:` URL.
fn turn_entries(servers: &Value) -> Vec<Value> {
    servers
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|s| {
                    s["urls"].as_array().is_some_and(|u| {
                        u.iter()
                            .any(|u| u.as_str().is_some_and(|u| u.starts_with("turn")))
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Every TURN username and credential the pages got (welcome and
/// `ice_servers`) must stay out of the server's log.
pub(crate) fn register_turn_secrets(run: &Run) -> Result<()> {
    let mut n = 0;
    for x in &run.browsers {
        let lists = x.execute(
            "const r = window.__e2eReach;
             return r.welcomes.map(w => w.iceServers).concat(r.iceServers.map(m => m.iceServers));",
            json!([]),
        )?;
        for list in lists.as_array().into_iter().flatten() {
            for entry in turn_entries(list) {
                for key in ["username", "credential"] {
                    if let Some(s) = entry[key].as_str() {
                        run.secret(s);
                        n += 1;
                    }
                }
            }
        }
    }
    ensure!(
        n >= 4,
        "expected TURN credentials in both pages' welcomes, found {n} values"
    );
    Ok(())
}

/// The "hide my IP" checkbox: `{shown, checked, disabled}`, once shown
/// (the page shows it after a welcome that offers TURN).
fn hide_ip_box(x: &Browser) -> Result<Value> {
    poll(
        &format!("{}: the hide-my-IP checkbox", x.name),
        STEP,
        || {
            let v = x.execute(
                "const i = document.querySelector('[data-testid=\"hide-ip\"]');
             if (!i) return null;
             return {shown: !i.closest('[hidden]'), checked: i.checked, disabled: i.disabled};",
                json!([]),
            )?;
            Ok(if v["shown"] == json!(true) {
                Ok(v)
            } else {
                Err(v.to_string())
            })
        },
    )
}

/// Checks or unchecks "hide my IP" (with a click, as a person would).
pub(crate) fn set_hide_ip(x: &Browser, on: bool) -> Result<()> {
    if hide_ip_box(x)?["checked"] != json!(on) {
        x.click("hide-ip")?;
    }
    let now = hide_ip_box(x)?;
    ensure!(
        now["checked"] == json!(on),
        "{}: \"hide my IP\" should be {on}: {now}",
        x.name
    );
    Ok(())
}

/// The state after End or a failed call: `idle` or `ended`, Start enabled.
fn is_ended(snap: &Snapshot) -> bool {
    (snap.state == "idle" || snap.state == "ended") && snap.start_enabled == Some(true)
}

/// `a` presses Start, then `b`: both connected, hearing each other. The
/// time to audio from the later click.
pub(crate) fn meet(a: &Browser, b: &Browser) -> Result<f64> {
    for x in [a, b] {
        let snap = x.snapshot()?;
        ensure!(
            is_ended(&snap),
            "{}: expected idle (or ended) with Start enabled: {snap}",
            x.name
        );
        arm(x)?;
    }
    a.click("start")?;
    wait_for(&format!("{} searching", a.name), &[a], |s| {
        s[0].state == "searching"
    })?;
    b.click("start")?;
    wait_for(
        &format!("{} and {} connected", a.name, b.name),
        &[a, b],
        |s| s.iter().all(|s| s.state == "connected" && s.has_pc),
    )?;
    let since = a.clicked_at("start")?.max(b.clicked_at("start")?);
    time_to_audio(a, b, since)
}

/// A presses End (B is queued again), then B.
pub(crate) fn hang_up(a: &Browser, b: &Browser) -> Result<()> {
    a.click("end")?;
    wait_for("A ended, B searching", &[a, b], |s| {
        is_ended(&s[0]) && s[1].state == "searching"
    })?;
    b.click("end")?;
    wait_for("B idle", &[b], |s| is_ended(&s[0]))?;
    Ok(())
}

/// Starts recording for the next call: every `data-state` from now on, and
/// when the first peer connection other than the current one first has
/// inbound audio with energy (as `strangers.rs` does).
fn arm(x: &Browser) -> Result<()> {
    x.execute(ARM_JS, json!([]))?;
    Ok(())
}

fn probe(x: &Browser) -> Result<Value> {
    x.execute(
        "const a = window.__e2eReach.armed || {};
         return {audioAt: a.audioAt ?? null, states: a.states || []};",
        json!([]),
    )
}

/// Connected now, after some other state since [`arm`]: a new call.
fn newly_connected(x: &Browser) -> Result<bool> {
    let probe = probe(x)?;
    let states = probe["states"].as_array().cloned().unwrap_or_default();
    Ok(states.last() == Some(&json!("connected"))
        && states.iter().any(|s| s != &json!("connected")))
}

/// Waits until both sides of a call decode audio with energy; milliseconds
/// from `since` (an epoch time from a page) to the later of the two.
fn time_to_audio(x: &Browser, y: &Browser, since: f64) -> Result<f64> {
    poll(
        &format!("audio both ways between {} and {}", x.name, y.name),
        STEP,
        || {
            let (px, py) = (probe(x)?, probe(y)?);
            Ok(match (px["audioAt"].as_f64(), py["audioAt"].as_f64()) {
                (Some(tx), Some(ty)) => Ok(tx.max(ty) - since),
                _ => Err(format!("{}: {px}; {}: {py}", x.name, y.name)),
            })
        },
    )
}

/// The current call's statistics (see `Browser::audio_stats`).
pub(crate) fn call_stats(x: &Browser) -> Result<Value> {
    x.audio_stats(None)
}

/// Starts watching the current peer connection's states.
fn watch_call(x: &Browser) -> Result<()> {
    let error = x.execute(
        "const pc = window.earshot && window.earshot.pc;
         if (!pc) return 'window.earshot.pc is null';
         const w = {pc, conn: [pc.connectionState]};
         pc.addEventListener('connectionstatechange', () => w.conn.push(pc.connectionState));
         window.__e2eReach.watch = w;
         return null;",
        json!([]),
    )?;
    ensure!(
        error.is_null(),
        "{}: cannot watch the call: {error}",
        x.name
    );
    Ok(())
}

/// Since [`watch_call`]: the same peer connection, never out of `connected`.
fn check_call_unbroken(x: &Browser) -> Result<()> {
    let w = x.execute(
        "const w = window.__e2eReach.watch;
         return w ? {same: window.earshot.pc === w.pc, conn: w.conn} : null;",
        json!([]),
    )?;
    ensure!(
        w["same"] == json!(true)
            && w["conn"]
                .as_array()
                .is_some_and(|c| c.iter().all(|s| s == "connected")),
        "{}: the call did not stay up: {w}",
        x.name
    );
    Ok(())
}

/// How many `signal`s the page has received so far.
pub(crate) fn received_count(x: &Browser) -> Result<usize> {
    x.execute("return window.__e2eReach.received.length", json!([]))?
        .as_u64()
        .map(|n| n as usize)
        .with_context(|| format!("{}: no record of received signals", x.name))
}

/// The `signal`s the page received since the first `from`, of the latest
/// call among them (by `call` id); at least one.
pub(crate) fn received_this_call(x: &Browser, from: usize) -> Result<Vec<Value>> {
    let this = received_since(x, from)?;
    ensure!(
        !this.is_empty(),
        "{}: received no signal for the call",
        x.name
    );
    Ok(this)
}

/// [`received_this_call`], possibly none.
fn received_since(x: &Browser, from: usize) -> Result<Vec<Value>> {
    let all = x.execute(
        "return window.__e2eReach.received.slice(arguments[0])",
        json!([from]),
    )?;
    let all = all.as_array().cloned().unwrap_or_default();
    let call = all.iter().filter_map(|s| s["call"].as_u64()).max();
    Ok(all
        .into_iter()
        .filter(|s| s["call"].as_u64() == call)
        .collect())
}

/// One ICE candidate, from a trickled `candidate` or an SDP `a=candidate:`.
#[derive(Debug, Clone)]
struct Candidate {
    line: String,
    typ: String,
    address: Option<String>,
    port: Option<u16>,
    raddr: Option<String>,
}

fn parse_candidate(line: &str) -> Option<Candidate> {
    let line = line.trim();
    let body = line.strip_prefix("a=").unwrap_or(line);
    body.strip_prefix("candidate:")?;
    let words: Vec<&str> = body.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    Some(Candidate {
        line: body.to_string(),
        typ: after("typ")?,
        address: words.get(4).map(|a| a.to_string()),
        port: words.get(5).and_then(|p| p.parse().ok()),
        raddr: after("raddr"),
    })
}

/// Every candidate in received `signal`s: trickled ones, and those in the
/// SDP of descriptions.
fn candidates_in(signals: &[Value]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for s in signals {
        if let Some(c) = s["candidate"]["candidate"].as_str() {
            match parse_candidate(c) {
                Some(c) => out.push(c),
                None => out.push(Candidate {
                    line: c.to_string(),
                    typ: "(unparsed)".into(),
                    address: None,
                    port: None,
                    raddr: None,
                }),
            }
        }
        if let Some(sdp) = s["description"]["sdp"].as_str() {
            out.extend(
                sdp.lines()
                    .filter(|l| l.starts_with("a=candidate:"))
                    .map(|l| {
                        parse_candidate(l).unwrap_or(Candidate {
                            line: l.to_string(),
                            typ: "(unparsed)".into(),
                            address: None,
                            port: None,
                            raddr: None,
                        })
                    }),
            );
        }
    }
    out
}

/// What reached a page gives nothing of the partner's own address away:
/// every candidate (at least one) is `typ relay`, on one of `relay_ports`,
/// with no related address but `0.0.0.0` (Chromium) or the relay address
/// itself (Firefox). The number of candidates.
pub(crate) fn check_relay_only(
    signals: &[Value],
    relay_ports: &RangeInclusive<u16>,
) -> Result<usize> {
    let candidates = candidates_in(signals);
    ensure!(
        !candidates.is_empty(),
        "no candidate at all in {} signals",
        signals.len()
    );
    for c in &candidates {
        ensure!(c.typ == "relay", "a {} candidate: {}", c.typ, c.line);
        ensure!(
            c.port.is_some_and(|p| relay_ports.contains(&p)),
            "a relay candidate not on the relay ports {relay_ports:?}: {}",
            c.line
        );
        ensure!(
            c.raddr
                .as_deref()
                .is_none_or(|a| a == "0.0.0.0" || a == "::" || Some(a) == c.address.as_deref()),
            "a relay candidate with a related address (the sender's own): {}",
            c.line
        );
    }
    Ok(candidates.len())
}

/// In `x`'s current call: (a) what reached the page since its `from`th
/// signal is relay candidates only (see [`check_relay_only`]) and (b) its
/// `getStats()` knows only relay candidates, relay to relay (see
/// [`check_relay_stats`]).
pub(crate) fn check_relayed(
    x: &Browser,
    from: usize,
    relay_ports: &RangeInclusive<u16>,
) -> Result<()> {
    let got = received_this_call(x, from)?;
    let n = check_relay_only(&got, relay_ports)
        .with_context(|| format!("(a) what reached {}", x.name))?;
    let stats = call_stats(x)?;
    check_relay_stats(&stats, relay_ports)
        .with_context(|| format!("(b) getStats of {}", x.name))?;
    println!(
        "hide my IP: {} received {n} relay candidates and nothing else ({}); selected pair {}",
        x.name,
        candidates_in(&got)
            .iter()
            .map(|c| c.line.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        stats["selected"]
    );
    Ok(())
}

/// A page's `getStats()` of a relayed call: only relay candidates, local
/// and remote (at least one each), on `relay_ports`; the selected pair
/// relay to relay. A remote candidate may also be peer-reflexive on the
/// relay ports: the partner's relay candidate, learned from its checks
/// before it was signalled (Firefox does), so neither would it give the
/// partner's own address away.
fn check_relay_stats(stats: &Value, relay_ports: &RangeInclusive<u16>) -> Result<()> {
    let candidates = stats["candidates"].as_array().cloned().unwrap_or_default();
    for kind in ["local-candidate", "remote-candidate"] {
        let of_kind: Vec<&Value> = candidates
            .iter()
            .filter(|c| c["kind"] == json!(kind))
            .collect();
        ensure!(!of_kind.is_empty(), "no {kind} in the stats: {stats}");
        for c in of_kind {
            let prflx = kind == "remote-candidate" && c["type"] == json!("prflx");
            ensure!(
                c["type"] == json!("relay") || prflx,
                "a {kind} of type {}: {c}",
                c["type"]
            );
            ensure!(
                c["port"]
                    .as_u64()
                    .is_some_and(|p| relay_ports.contains(&(p as u16))),
                "a relay {kind} not on the relay ports {relay_ports:?}: {c}"
            );
        }
    }
    // Every remote candidate is the partner's relay by now.
    let selected = &stats["selected"];
    ensure!(
        selected["local"]["type"] == json!("relay")
            && (selected["remote"]["type"] == json!("relay")
                || selected["remote"]["type"] == json!("prflx")),
        "the selected pair is not relay to relay: {selected}"
    );
    Ok(())
}

/// The safety words a page shows (`data-words` of `safety-words`), if any.
pub(crate) fn safety_words(x: &Browser) -> Result<Option<String>> {
    let v = x.execute(
        "const w = document.querySelector('[data-testid=\"safety-words\"]');
         return w && w.dataset.words && !w.closest('[hidden]') ? w.dataset.words : null;",
        json!([]),
    )?;
    Ok(v.as_str().map(String::from))
}

/// Both pages show the same three words from the list, each page has the
/// other's own fingerprint as its remote one, and the words are the ones
/// PROTOCOL.md "Safety words" gives for those fingerprints and the nonces
/// the two pages sent each other (`harness::INIT_JS` records them): the
/// page whose fingerprint sorts first committed, and its reveal matches its
/// commitment. The words.
pub(crate) fn check_safety_words(a: &Browser, b: &Browser) -> Result<Vec<String>> {
    let list = word_list()?;
    let shown = poll("safety words on both pages", STEP, || {
        Ok(match (safety_words(a)?, safety_words(b)?) {
            (Some(wa), Some(wb)) => Ok((wa, wb)),
            // With the warnings, if any: why there are no words.
            other => Err(format!(
                "{other:?}, warnings {:?} and {:?}",
                crate::words::safety_warning(a)?,
                crate::words::safety_warning(b)?
            )),
        })
    })?;
    ensure!(
        shown.0 == shown.1,
        "A and B show different safety words: {:?} and {:?}",
        shown.0,
        shown.1
    );
    let words: Vec<String> = shown.0.split(' ').map(String::from).collect();
    ensure!(
        words.len() == 3 && words.iter().all(|w| list.contains(&w.as_str())),
        "the safety words {words:?} are not three words from the list"
    );
    let (da, db) = (descriptions(a)?, descriptions(b)?);
    let fp =
        |d: &Value, k: &str| fingerprint(&d[k]).with_context(|| format!("no fingerprint in {k}"));
    let (a_local, a_remote) = (fp(&da, "local")?, fp(&da, "remote")?);
    ensure!(
        a_local == fp(&db, "remote")? && a_remote == fp(&db, "local")?,
        "the pages do not have each other's fingerprints: A {a_local} / {a_remote}, B {:?} / {:?}",
        fingerprint(&db["local"]),
        fingerprint(&db["remote"])
    );
    let (committer, responder, fp_c, fp_r) = if a_local.as_bytes() < a_remote.as_bytes() {
        (a, b, a_local, a_remote)
    } else {
        (b, a, a_remote, a_local)
    };
    let hash = last_sent(committer, "safety_commit", "hash")?;
    let nonce_c = last_sent(committer, "safety_reveal", "nonce")?;
    let nonce_r = last_sent(responder, "safety_nonce", "nonce")?;
    ensure!(
        Sha256::digest(nonce_c)[..] == hash[..],
        "{}'s reveal does not match its commitment",
        committer.name
    );
    let expected = reference_words(&fp_c, &fp_r, &nonce_c, &nonce_r, &list);
    ensure!(
        words == expected,
        "the pages show {words:?}, PROTOCOL.md gives {expected:?} for these fingerprints and nonces"
    );
    Ok(words)
}

/// The `field` (64 hex digits) of the last `kind` safety-words message the
/// page sent.
pub(crate) fn last_sent(x: &Browser, kind: &str, field: &str) -> Result<[u8; 32]> {
    let v = x.execute(
        "const m = window.__e2eWords.sent.filter(m => m.type === arguments[0]);
         return m.length ? m[m.length - 1][arguments[1]] : null;",
        json!([kind, field]),
    )?;
    let text = v
        .as_str()
        .with_context(|| format!("{}: sent no {kind}", x.name))?;
    ensure!(
        text.len() == 64,
        "{}: {kind}.{field} is not 64 hex digits: {text}",
        x.name
    );
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{}: {kind}.{field} is not hex: {text}", x.name))?;
    }
    Ok(out)
}

/// The 2048 words of `web/safetywords.js`; checks the reference
/// implementation against PROTOCOL.md's test vector first.
pub(crate) fn word_list() -> Result<Vec<&'static str>> {
    const SOURCE: &str = include_str!("../../../../web/safetywords.js");
    let start = SOURCE
        .find("const LIST = `")
        .context("no LIST in web/safetywords.js")?
        + "const LIST = `".len();
    let end = start + SOURCE[start..].find('`').context("LIST does not end")?;
    let list: Vec<&str> = SOURCE[start..end].split_whitespace().collect();
    ensure!(
        list.len() == 2048,
        "web/safetywords.js lists {} words",
        list.len()
    );
    let (nc, nr) = vector_nonces();
    let vector = reference_words("sha-256 01:23:45", "sha-256 ab:cd:ef", &nc, &nr, &list);
    ensure!(
        vector == VECTOR_WORDS,
        "the reference implementation gives {vector:?} for PROTOCOL.md's test vector"
    );
    Ok(list)
}

/// PROTOCOL.md's test vector: the nonces (bytes 0..32 and 32..64) and the
/// words they give with committer `sha-256 01:23:45`, responder
/// `sha-256 ab:cd:ef`.
pub(crate) fn vector_nonces() -> ([u8; 32], [u8; 32]) {
    (
        std::array::from_fn(|i| i as u8),
        std::array::from_fn(|i| 32 + i as u8),
    )
}
pub(crate) const VECTOR_WORDS: [&str; 3] = ["fizz", "shelter", "fix"];

/// PROTOCOL.md "Safety words": HKDF-SHA-256 over the committer's and
/// responder's fingerprint strings and nonces, then three 11-bit indices.
fn reference_words(
    fp_c: &str,
    fp_r: &str,
    nonce_c: &[u8; 32],
    nonce_r: &[u8; 32],
    list: &[&str],
) -> Vec<String> {
    type HmacSha256 = Hmac<Sha256>;
    let mut extract = HmacSha256::new_from_slice(b"earshot/v2/safety-words").expect("any key");
    extract.update(nonce_c);
    extract.update(nonce_r);
    let prk = extract.finalize().into_bytes();
    let mut expand = HmacSha256::new_from_slice(&prk).expect("any key");
    expand.update(format!("{fp_c}\n{fp_r}").as_bytes());
    expand.update(&[1]);
    let okm = expand.finalize().into_bytes();
    let bits = u64::from_be_bytes(okm[..8].try_into().expect("8 bytes"));
    (0..3)
        .map(|i| list[((bits >> (64 - 11 * (i + 1))) & 0x7ff) as usize].to_string())
        .collect()
}

/// PROTOCOL.md "Safety words", step 1: a description's fingerprint string.
fn fingerprint(sdp: &Value) -> Option<String> {
    let mut values: Vec<String> = sdp
        .as_str()?
        .lines()
        .filter_map(|l| l.strip_prefix("a=fingerprint:"))
        .map(|v| v.trim().to_lowercase())
        .collect();
    values.sort();
    values.dedup();
    (!values.is_empty()).then(|| values.join(","))
}

/// The `a=ice-ufrag:` of an SDP.
fn ufrag(sdp: &Value) -> Option<String> {
    sdp.as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}

/// The current (or, once the call is gone, the last) peer connection's
/// descriptions and configuration (see [`DESCRIPTIONS_JS`]).
fn descriptions(x: &Browser) -> Result<Value> {
    let v = x.execute(DESCRIPTIONS_JS, json!([]))?;
    ensure!(!v.is_null(), "{}: no peer connection", x.name);
    Ok(v)
}

/// The last peer connection the page made: its states (`harness::INIT_JS`).
fn last_pc(x: &Browser) -> Result<Value> {
    x.execute(
        "const p = window.__e2ePcs || [];
         const r = p[p.length - 1];
         return r ? {states: r.states, now: r.pc.connectionState} : {states: []};",
        json!([]),
    )
}

fn nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ----------------------------------------------------------------- coturn

/// A coturn (`turnserver`, Debian's coturn package) on 127.0.0.1 with the
/// TURN REST shared secret, relaying on [`COTURN_RELAY_PORTS`], loopback
/// peers allowed (coturn refuses them otherwise); its output goes to a file
/// in its own directory. Killed on drop.
struct Coturn {
    child: Child,
    log: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Coturn {
    fn start(secret: &str) -> Result<Coturn> {
        let dir = TempDir::new("earshot-coturn")?;
        let port = free_port()?;
        // coturn's own log goes to this file line by line; its stdout (a
        // few lines, block-buffered) to the other.
        let log = dir.path().join("turnserver.log");
        let out = std::fs::File::create(dir.path().join("turnserver.out"))?;
        let child = Command::new("turnserver")
            // No config file; moderately verbose, so sessions and
            // allocations are logged.
            .args(["-n", "--verbose"])
            .args([
                "--listening-ip=127.0.0.1".to_string(),
                "--relay-ip=127.0.0.1".to_string(),
                format!("--listening-port={port}"),
                format!("--min-port={}", COTURN_RELAY_PORTS.start()),
                format!("--max-port={}", COTURN_RELAY_PORTS.end()),
                "--use-auth-secret".to_string(),
                format!("--static-auth-secret={secret}"),
                "--realm=earshot".to_string(),
                "--no-tls".to_string(),
                "--no-dtls".to_string(),
                "--no-cli".to_string(),
                "--allow-loopback-peers".to_string(),
                format!("--log-file={}", log.display()),
                "--simple-log".to_string(),
                format!("--userdb={}", dir.path().join("turndb").display()),
                format!("--pidfile={}", dir.path().join("turnserver.pid").display()),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context(
                "cannot start turnserver (Debian package coturn): run scripts/test, which installs it",
            )?;
        let mut coturn = Coturn {
            child,
            log,
            port,
            _dir: dir,
        };
        // Ready once it answers a STUN Binding request on its UDP port.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(&nonce().to_be_bytes());
        request.extend_from_slice(&[0x65, 0x61, 0x72, 0x73]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            probe.send_to(&request, ("127.0.0.1", port))?;
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = probe.recv_from(&mut buf)
                && n >= 20
                && buf[0..2] == [0x01, 0x01]
                && buf[8..20] == request[8..20]
            {
                return Ok(coturn);
            }
            if let Ok(Some(status)) = coturn.child.try_wait() {
                bail!("turnserver exited at startup ({status}):\n{}", coturn.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "turnserver does not answer STUN on 127.0.0.1:{port} within 10 s:\n{}",
                    coturn.log()
                );
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines of successful allocations.
    fn allocations(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("ALLOCATE processed, success"))
            .map(String::from)
            .collect()
    }
}

impl Coturn {
    /// What each session that ended relayed to and from its peer, from
    /// coturn's `peer usage:` lines: the line, packets received from the
    /// peer (`rp`), packets sent to it (`sp`).
    fn peer_usage(&self) -> Vec<(String, u64, u64)> {
        let field = |line: &str, key: &str| {
            line.split([',', ' '])
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        self.log()
            .lines()
            .filter(|l| l.contains("peer usage:"))
            .map(|l| (l.to_string(), field(l, "rp="), field(l, "sp=")))
            .collect()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------------------- JS

/// Installed in every page of these scenarios, after `harness::INIT_JS` and
/// before the page's own scripts. `window.__e2eReach` holds every `welcome`
/// (its `ice_servers`, `hide_ip_default`), every `ice_servers` message,
/// every `signal` received and sent (`{at, call, description, candidate}`),
/// and the fingerprint tamperer: while `tamper.on`, every outgoing `signal`
/// with a `description` has the first byte of each `a=fingerprint:` value
/// changed (`tamper.rewritten` counts them), as a server in the middle with
/// its own certificate would have to. Otherwise it only listens.
pub(crate) const REACH_JS: &str = r#"
(() => {
  const rec = {welcomes: [], iceServers: [], received: [], sent: [],
               tamper: {on: false, rewritten: 0}};
  Object.defineProperty(window, '__e2eReach', {value: rec});
  const Base = window.WebSocket;
  if (typeof Base !== 'function') return;
  const parse = data => {
    if (typeof data !== 'string') return null;
    try { const m = JSON.parse(data); return m && typeof m === 'object' ? m : null; } catch { return null; }
  };
  window.WebSocket = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', ev => {
        const m = parse(ev.data);
        if (!m) return;
        const at = Date.now();
        if (m.type === 'welcome') {
          rec.welcomes.push({at, iceServers: m.ice_servers ?? null, hideIpDefault: m.hide_ip_default ?? null});
        } else if (m.type === 'ice_servers') {
          rec.iceServers.push({at, iceServers: m.ice_servers ?? null});
        } else if (m.type === 'signal') {
          rec.received.push({at, call: m.call ?? null, description: m.description ?? null,
                             candidate: m.candidate ?? null});
        }
      });
    }
  };
  const flip = hex => (255 - parseInt(hex, 16)).toString(16).padStart(2, '0').toUpperCase();
  const send = Base.prototype.send;
  Base.prototype.send = function (data) {
    const m = parse(data);
    if (m && m.type === 'signal') {
      const d = m.description;
      if (rec.tamper.on && d && typeof d.sdp === 'string') {
        const sdp = d.sdp.replace(/^(a=fingerprint:\S+ )([0-9A-Fa-f]{2})/gm,
                                  (_, head, hex) => head + flip(hex));
        if (sdp !== d.sdp) {
          rec.tamper.rewritten += 1;
          d.sdp = sdp;
          data = JSON.stringify(m);
        }
      }
      rec.sent.push({at: Date.now(), call: m.call ?? null, description: m.description ?? null,
                     candidate: m.candidate ?? null});
    }
    return send.call(this, data);
  };
})();
"#;

/// See [`arm`].
const ARM_JS: &str = r#"
const r = window.__e2eReach;
if (r.armed && r.armed.timer) clearInterval(r.armed.timer);
if (r.armed && r.armed.observer) r.armed.observer.disconnect();
const stateNow = () => {
  const s = document.querySelector('[data-testid="status"]');
  return s ? s.getAttribute('data-state') : null;
};
const a = {old: (window.earshot && window.earshot.pc) || null, audioAt: null,
           states: [stateNow()], busy: false};
r.armed = a;
a.observer = new MutationObserver(() => {
  const s = stateNow();
  if (s !== a.states[a.states.length - 1]) a.states.push(s);
});
a.observer.observe(document.documentElement,
  {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
a.timer = setInterval(() => {
  const pc = window.earshot && window.earshot.pc;
  if (a.busy || !pc || pc === a.old) return;
  a.busy = true;
  pc.getStats().then(stats => {
    stats.forEach(s => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio' && s.bytesReceived > 0
          && s.totalAudioEnergy > 0 && a.audioAt === null) a.audioAt = Date.now();
    });
    if (a.audioAt !== null) { clearInterval(a.timer); a.timer = null; }
  }).catch(() => {}).finally(() => { a.busy = false; });
}, 10);
"#;

/// The descriptions, signalling state and ICE configuration of the current
/// peer connection, or of the last one the page made once it has none.
const DESCRIPTIONS_JS: &str = r#"
const pcs = window.__e2ePcs || [];
const pc = (window.earshot && window.earshot.pc) || (pcs.length ? pcs[pcs.length - 1].pc : null);
if (!pc) return null;
const sdp = d => d ? d.sdp : null;
const conf = pc.getConfiguration();
return {local: sdp(pc.currentLocalDescription || pc.localDescription),
        remote: sdp(pc.currentRemoteDescription || pc.remoteDescription),
        signalingState: pc.signalingState, policy: conf.iceTransportPolicy,
        iceServers: (conf.iceServers || []).map(s => ({
          urls: Array.isArray(s.urls) ? s.urls : [s.urls], username: s.username ?? null}))};
"#;
