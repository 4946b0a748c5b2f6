//! Firefox (Debian's `firefox-esr`, through geckodriver) talks with Firefox
//! and with Chromium: as strangers, in either role; in a locked room; and
//! with "hide my IP", relayed through the embedded TURN server. The same
//! pages, hooks and checks as the Chromium scenarios (`strangers`, `rooms`,
//! `reach`), with some of their browsers Firefox.
//!
//! Each scenario runs again, alone, in a network namespace of its own: with
//! loopback only, Firefox finds no ICE candidates at all, so there is also a
//! veth pair that leads nowhere (`netns::rerun_in_veth_namespace`).
//! Candidates carry 127.0.0.1 or `netns::VETH_ADDRESS`, and every packet
//! stays inside the namespace.

use crate::reach::{
    EMBEDDED_RELAY_PORTS, LOG_SHOWS_TURN, call_stats, check_relay_only, check_relayed,
    check_safety_words, embedded_turn, hang_up, meet, open_pages, received_count,
    received_this_call, register_turn_secrets, set_hide_ip,
};
use crate::rooms::{
    LOCKED_LOG_SHOWS, PASSPHRASE, check_room_audio, check_room_words, enter_passphrase, join_alone,
    join_and_hear, lock, open_room, wait_chat_open, wait_count,
};
use crate::strangers::meet_and_chat;
use crate::support::harness::{Browser, Run, STEP, Setup, check_call_audio, wait_for};
use crate::support::netns::VETH_NETWORK;
use anyhow::{Result, ensure};
use serde_json::{Value, json};

/// What the server's trace log must mention to prove it saw a stranger call.
const LOG_SHOWS: &[&str] = &["matched"];

/// Strangers, each pair in both roles (the one who presses Start second is
/// the impolite side and makes the offer): Firefox F1 with Firefox F2, F2
/// offering then F1; then F1 with Chromium C, C offering then F1. Each call
/// has audio with energy both ways, kept flowing over a second on a
/// connected pair of in-namespace candidates, and chat both ways; the
/// offering page is the one whose local description is the offer; both show
/// the same safety words, the ones PROTOCOL.md gives for the call. Both
/// hang up between calls. Ends with the privacy checks of `Run::finish`.
#[test]
fn browser_firefox_strangers_with_firefox_and_chromium() -> Result<()> {
    let setup = Setup {
        firefox: vec!["F1", "F2"],
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_firefox_strangers_with_firefox_and_chromium",
        &["F1", "F2", "C"],
        3,
        LOG_SHOWS,
        &setup,
        |run| {
            let (f1, f2, c) = (run.browser("F1")?, run.browser("F2")?, run.browser("C")?);
            for (first, second) in [(f1, f2), (f2, f1), (f1, c), (c, f1)] {
                let time = meet_and_chat(run, first, second)?;
                check_offerer(second, first)?;
                let words = check_safety_words(first, second)?;
                println!(
                    "{} then {}: {} offered, time to audio {time:.0} ms, safety words {words:?}",
                    first.name, second.name, second.name
                );
                hang_up(first, second)?;
            }
            Ok(())
        },
    )
}

/// A room of two Firefox and a Chromium: F1 opens it and joins; C opens the
/// link, joins and hears F1 (C offers to F1). F1 locks the room and C, asked
/// for the passphrase to check newcomers with it, enters it. F2 opens the
/// link, is asked for the passphrase, enters it and hears both (F2 offers
/// to both). A full mesh with audio every way, chat from F2 and from C to
/// the two others, and every pair shows the same safety words; F2 leaves,
/// then C, and F1 is alone. Ends with the
/// privacy checks of `Run::finish`, the passphrase and room name among
/// the secrets.
#[test]
fn browser_firefox_locked_room_with_chromium() -> Result<()> {
    let setup = Setup {
        firefox: vec!["F1", "F2"],
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_firefox_locked_room_with_chromium",
        &["F1", "F2", "C"],
        1,
        LOCKED_LOG_SHOWS,
        &setup,
        |run| {
            let (f1, f2, c) = (run.browser("F1")?, run.browser("F2")?, run.browser("C")?);
            open_room(run, f1, &[c, f2])?;
            join_alone(f1)?;
            join_and_hear(c, 1, STEP)?;

            lock(run, f1, PASSPHRASE)?;
            wait_for("the room locked for F1 and C", &[f1, c], |s| {
                s.iter().all(|s| s.locked == Some(true)) && s[0].pass_mode.is_none()
            })?;
            enter_passphrase(c, "verify", PASSPHRASE)?;
            wait_for("C done with the passphrase", &[f1, c], |s| {
                s.iter()
                    .all(|s| s.pass_mode.is_none() && s.count == Some(2) && s.locked == Some(true))
            })?;

            f2.click("room-join")?;
            wait_for("F2 asked for the passphrase", &[f2], |s| {
                s[0].state == "joining" && s[0].pass_mode.as_deref() == Some("join")
            })?;
            f2.arm_room(2)?;
            enter_passphrase(f2, "join", PASSPHRASE)?;
            wait_count(&[f1, f2, c], 3, STEP)?;
            let (t, detail) = f2.time_to_hear_all("passphrase-submit", STEP)?;
            println!("F2 heard F1 and C {t:.0} ms after submitting the passphrase ({detail})");
            check_room_audio(&[f1, f2, c])?;
            check_room_words(&[f1, f2, c])?;
            for (x, others) in [(f2, [f1, c]), (c, [f1, f2])] {
                wait_chat_open(x, 2)?;
                run.chat(x, &others, &format!("{} to the locked room", x.name))?;
            }

            f2.click("leave")?;
            wait_for("F2 out of the room", &[f2], |s| {
                s[0].state == "idle" && s[0].count == Some(0)
            })?;
            wait_count(&[f1, c], 2, STEP)?;
            c.click("leave")?;
            wait_for("C out of the room", &[c], |s| {
                s[0].state == "idle" && s[0].count == Some(0)
            })?;
            wait_count(&[f1], 1, STEP)
        },
    )
}

/// "Hide my IP" between Firefox F and Chromium C, through the embedded TURN
/// server (on by default when it runs): a call where C offers, then one
/// where F offers. In each, only relay candidates on the embedded relay
/// ports, with no related address, reach either page; each page's stats
/// know relay candidates only, and select a relay-to-relay pair; audio
/// flows both ways and media goes relay to relay through the server; both
/// show the same safety words; chat both ways. Then C turns "hide my IP"
/// off and F keeps it: in a third call still only relay candidates reach
/// C, F uses nothing but relay candidates, and audio and chat go both
/// ways; the relay may send to the namespace's veth network
/// (`--turn-allow-peer`), where C's own candidates are. Ends with the
/// privacy checks of `Run::finish`, the TURN credentials among the
/// secrets.
#[test]
fn browser_firefox_hide_ip_relays_through_embedded_turn() -> Result<()> {
    let mut setup = embedded_turn();
    setup
        .server_args
        .extend(["--turn-allow-peer".into(), VETH_NETWORK.into()]);
    setup.firefox = vec!["F"];
    Run::scenario_setup(
        "browser_firefox_hide_ip_relays_through_embedded_turn",
        &["F", "C"],
        0,
        LOG_SHOWS_TURN,
        &setup,
        |run| {
            let (f, c) = (run.browser("F")?, run.browser("C")?);
            open_pages(run)?;
            for (first, second) in [(f, c), (c, f)] {
                let marks = [received_count(first)?, received_count(second)?];
                let time = meet(first, second)?;
                check_offerer(second, first)?;
                println!(
                    "hide my IP: {} then {}, {} offering: time to audio {time:.0} ms",
                    first.name, second.name, second.name
                );
                check_call_audio(&[first, second])?;
                for (x, mark) in [first, second].into_iter().zip(marks) {
                    check_relayed(x, mark, &EMBEDDED_RELAY_PORTS)?;
                }
                let relayed = run.metric("turn_relay_to_relay_total")?;
                ensure!(
                    relayed > 0,
                    "the call should flow relay to relay, through the server's memory"
                );
                let words = check_safety_words(first, second)?;
                println!("hide my IP: safety words {words:?} on both pages");
                for (from, to) in [(first, second), (second, first)] {
                    let text = format!("relayed, {} to {}", from.name, to.name);
                    run.chat(from, &[to], &text)?;
                }
                hang_up(first, second)?;
            }
            one_side_hides(run, f, c)?;
            register_turn_secrets(run)
        },
    )
}

/// `hider` keeps "hide my IP" on and `other` turns it off: `hider` presses
/// Start, then `other`. Only relay candidates reach `other`, `hider` uses
/// relay candidates only, audio and chat flow both ways.
fn one_side_hides(run: &Run, hider: &Browser, other: &Browser) -> Result<()> {
    set_hide_ip(other, false)?;
    let mark = received_count(other)?;
    let time = meet(hider, other)?;
    println!(
        "hide my IP on {} only: time to audio {time:.0} ms",
        hider.name
    );
    check_call_audio(&[hider, other])?;
    for (x, on) in [(hider, true), (other, false)] {
        let hide = x.execute("return window.earshot.hideIp", json!([]))?;
        ensure!(
            hide == json!(on),
            "{}: window.earshot.hideIp should be {on}: {hide}",
            x.name
        );
    }
    let got = received_this_call(other, mark)?;
    check_relay_only(&got, &EMBEDDED_RELAY_PORTS)
        .map_err(|e| e.context(format!("what reached {}", other.name)))?;
    let stats = call_stats(hider)?;
    let local: Vec<&Value> = stats["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == json!("local-candidate"))
        .collect();
    ensure!(
        !local.is_empty()
            && local.iter().all(|c| c["type"] == json!("relay"))
            && stats["selected"]["local"]["type"] == json!("relay"),
        "{}: local candidates other than relay ones: {stats}",
        hider.name
    );
    println!(
        "hide my IP on {} only: {} received relay candidates only; selected pair {}",
        hider.name, other.name, stats["selected"]
    );
    for (from, to) in [(hider, other), (other, hider)] {
        let text = format!("one side hidden, {} to {}", from.name, to.name);
        run.chat(from, &[to], &text)?;
    }
    hang_up(hider, other)
}

/// `offerer` made the offer of the current stranger call and `answerer`
/// the answer.
fn check_offerer(offerer: &Browser, answerer: &Browser) -> Result<()> {
    let kind = |x: &Browser| -> Result<Value> {
        x.execute(
            "const pc = window.earshot && window.earshot.pc;
             const d = pc && pc.currentLocalDescription;
             return d ? d.type : null;",
            json!([]),
        )
    };
    let (o, a) = (kind(offerer)?, kind(answerer)?);
    ensure!(
        o == json!("offer") && a == json!("answer"),
        "{} should have offered and {} answered; their local descriptions are {o} and {a}",
        offerer.name,
        answerer.name
    );
    Ok(())
}
