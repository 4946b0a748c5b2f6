//! A call survives a network change: the browsers' address changes in the
//! middle of a call (a phone moving from Wi-Fi to mobile data) and the call
//! comes back by ICE restart, in the same peer connection, without a new
//! `matched` or `room_joined`. As strangers, in a room, and with "hide my
//! IP" (the restart makes a new relay allocation).
//!
//! Each scenario runs alone in a namespace with a veth pair
//! (`Setup::roaming`), Chromium without `--allow-loopback-in-peer-connection`:
//! the browsers' only candidates are on the veth end's address, while the
//! server (signalling, STUN, TURN) stays on 127.0.0.1, so the signalling
//! socket outlives the change. The scenario then moves the veth end to
//! another address of its network (`netns::move_address`) [`ROAMS`] times.
//! The time for the call to come back runs from the change to the first
//! growth of inbound audio bytes after they stalled, as each page sampled
//! its own stats every 50 ms ([`ROAM_JS`]); the slowest side of the call
//! counts. Each scenario's median and times go to the report
//! (`harness::report`).

use crate::reach::{
    EMBEDDED_RELAY_PORTS, LOG_SHOWS_TURN, check_relay_only, embedded_turn, hang_up, meet,
    open_pages, received_count, received_this_call, register_turn_secrets,
};
use crate::rooms::{check_room_audio, join_alone, join_and_hear, open_room, wait_count};
use crate::support::harness::{
    Browser, Run, STEP, Setup, check_call_audio, median, poll, report, wait_for_within,
};
use crate::support::netns::{self, VETH_ADDRESS, VETH_NETWORK};
use anyhow::{Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Address changes per scenario.
const ROAMS: usize = 3;
/// No inbound audio growth for this long counts as audio stopped.
const STALL_MS: f64 = 300.0;
/// How long the call may take to come back (generous: a busy machine).
const COME_BACK: Duration = Duration::from_secs(60);
/// Without a stall, audio that keeps flowing this long after the change,
/// on a pair of the new address, counts as never having stopped.
const NO_GAP_AFTER_MS: f64 = 8000.0;
const LOG_SHOWS: &[&str] = &["matched"];
const ROOM_LOG_SHOWS: &[&str] = &["joined a room", "relaying a room signal"];

/// Strangers A and B, direct (no TURN offered): the call runs over the veth
/// address; it moves [`ROAMS`] times. Each time both pages hear each other
/// again, on the same peer connection, now on a pair of the new address,
/// with no new `matched`, and the page said "Reconnecting…" meanwhile if
/// its connection dropped; chat still goes both ways. Then the server
/// restarts (the call goes on) and the network goes for good: both say
/// "Reconnecting…", then, once they give up, that the call could not be
/// restored; back on a network, they meet again.
#[test]
fn browser_roaming_strangers_call_survives_an_address_change() -> Result<()> {
    let setup = Setup {
        roaming: true,
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_roaming_strangers_call_survives_an_address_change",
        &["A", "B"],
        0,
        LOG_SHOWS,
        &setup,
        |run| {
            let [a, b] = &run.browsers[..] else {
                anyhow::bail!("expected two browsers")
            };
            open_pages(run)?;
            let time = meet(a, b)?;
            println!("roaming: strangers connected, time to audio {time:.0} ms");
            check_call_audio(&[a, b])?;
            roam_and_check(run, "strangers", &[a, b], false)?;
            give_up(run, a, b)
        },
    )
}

/// The same in a room of two (A joins, B joins and offers to A).
#[test]
fn browser_roaming_room_call_survives_an_address_change() -> Result<()> {
    let setup = Setup {
        roaming: true,
        ..Setup::default()
    };
    Run::scenario_setup(
        "browser_roaming_room_call_survives_an_address_change",
        &["A", "B"],
        1,
        ROOM_LOG_SHOWS,
        &setup,
        |run| {
            let [a, b] = &run.browsers[..] else {
                anyhow::bail!("expected two browsers")
            };
            open_room(run, a, &[b])?;
            join_alone(a)?;
            join_and_hear(b, 1, STEP)?;
            wait_count(&[a, b], 2, STEP)?;
            check_room_audio(&[a, b])?;
            roam_and_check(run, "room", &[a, b], false)
        },
    )
}

/// Strangers with "hide my IP" through the embedded TURN server: after each
/// change the call comes back through a new relay allocation, both pages
/// still use relay candidates only and only relay candidates reach them.
#[test]
fn browser_roaming_hidden_ip_call_survives_an_address_change() -> Result<()> {
    let mut setup = embedded_turn();
    setup.server_args.extend([
        "--turn-allow-peer".into(),
        VETH_NETWORK.into(),
        // Every restart allocates anew while the old allocations live on.
        "--turn-user-quota".into(),
        "40".into(),
    ]);
    setup.roaming = true;
    Run::scenario_setup(
        "browser_roaming_hidden_ip_call_survives_an_address_change",
        &["A", "B"],
        0,
        LOG_SHOWS_TURN,
        &setup,
        |run| {
            let [a, b] = &run.browsers[..] else {
                anyhow::bail!("expected two browsers")
            };
            open_pages(run)?;
            let time = meet(a, b)?;
            println!("roaming: hidden IP call connected, time to audio {time:.0} ms");
            check_call_audio(&[a, b])?;
            roam_and_check(run, "hide my IP", &[a, b], true)?;
            register_turn_secrets(run)
        },
    )
}

// ---------------------------------------------------------------- helpers

/// The server restarts (the call goes on, but the new server knows
/// nothing of it, so no restart can be signalled), then the network goes
/// for good: both pages say "Reconnecting…", then give up and say so
/// plainly.
fn give_up(run: &Run, a: &Browser, b: &Browser) -> Result<()> {
    let status = run.stop_server()?;
    ensure!(
        status.success(),
        "earshot exited with {status} after SIGTERM"
    );
    run.restart_server()?;
    check_call_audio(&[a, b])?;
    let t0 = epoch_ms();
    netns::cut_off(&format!("10.99.0.{}", ROAMS + 1))?;
    let snaps = wait_for_within(
        "both pages to give up on the call",
        COME_BACK,
        &[a, b],
        |s| s.iter().all(|s| s.state == "ended"),
    )?;
    for (x, snap) in [a, b].into_iter().zip(&snaps) {
        ensure!(
            snap.status.contains("could not be restored"),
            "{}: the page should say plainly that the call could not be restored: {snap}",
            x.name
        );
        let shown = reconnecting_shown(x, t0)?;
        ensure!(
            !shown.starts_with("no "),
            "{}: no \"Reconnecting…\" before giving up",
            x.name
        );
    }
    println!(
        "roaming: cut off, both pages gave up after {:.0} s: {:?}",
        (epoch_ms() - t0) / 1000.0,
        snaps[0].status
    );
    // Back on a network, Start works again (through the new server).
    netns::bring_back(&format!("10.99.0.{}", ROAMS + 2))?;
    meet(a, b)?;
    check_call_audio(&[a, b])?;
    run.chat(b, &[a], "a new call after giving up")?;
    hang_up(a, b)
}

/// Moves the veth address [`ROAMS`] times (10.99.0.1 to .2, .3, ...) and
/// checks that the call of `pages` comes back each time; the times go to
/// the report. With `hidden`, the call must stay relay only.
fn roam_and_check(run: &Run, label: &'static str, pages: &[&Browser], hidden: bool) -> Result<()> {
    for x in pages {
        x.execute(ROAM_JS, json!([]))?;
    }
    if !hidden {
        check_selected_on(pages, VETH_ADDRESS)?;
    }
    let mut times = Vec::new();
    for i in 0..ROAMS {
        let (from, to) = (format!("10.99.0.{}", i + 1), format!("10.99.0.{}", i + 2));
        // What reached each page so far (REACH_JS, installed when `hidden`).
        let marks = if hidden {
            pages
                .iter()
                .map(|x| received_count(x))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        std::thread::sleep(Duration::from_millis(500));
        let t0 = epoch_ms();
        netns::move_address(&from, &to)?;
        let back = come_back(pages, t0)?;
        let time = back.iter().map(|(_, t)| *t).fold(0.0, f64::max);
        let shown: Vec<String> = pages
            .iter()
            .map(|x| reconnecting_shown(x, t0).map(|s| format!("{}: {s}", x.name)))
            .collect::<Result<_>>()?;
        println!(
            "roaming ({label}): {from} -> {to}: the call came back after {time:.0} ms \
             ({back:?}); the pages said {shown:?}"
        );
        for x in pages {
            println!("  {}: {}", x.name, timeline(x, t0)?);
        }
        ensure!(
            time == 0.0 || shown.iter().any(|s| !s.contains("no \"Reconnecting")),
            "no page said \"Reconnecting…\" while its audio was gone: {shown:?}"
        );
        times.push(time);
        check_same_call(pages, t0)?;
        if pages[0].execute("return !!window.earshot.pc", json!([]))? == json!(true) {
            check_call_audio(pages)?;
        } else {
            check_room_audio(pages)?;
        }
        if hidden {
            for (x, mark) in pages.iter().zip(marks) {
                let got = received_this_call(x, mark)?;
                check_relay_only(&got, &EMBEDDED_RELAY_PORTS)
                    .map_err(|e| e.context(format!("what reached {} after the change", x.name)))?;
                check_selected_type(x, "relay")?;
            }
        } else {
            check_selected_on(pages, &to)?;
        }
        let text = format!("{label}: still talking after moving to {to}");
        run.chat(pages[0], &pages[1..], &text)?;
    }
    report(&format!(
        "network change ({label}): call back in {:.0} ms median over {} changes {:?}",
        median(&times),
        times.len(),
        times.iter().map(|t| t.round()).collect::<Vec<_>>()
    ));
    Ok(())
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Waits until every peer connection of every page in `pages` receives
/// audio again after the change at `t0` (epoch ms); for each page, the
/// milliseconds from `t0` to that (its slowest connection).
fn come_back(pages: &[&Browser], t0: f64) -> Result<Vec<(&'static str, f64)>> {
    poll("the call to come back after the change", COME_BACK, || {
        let mut out = Vec::new();
        for x in pages {
            let samples = x.execute(
                "return (window.__e2eRoam.samples || []).filter(s => s[0] >= arguments[0])",
                json!([t0]),
            )?;
            match page_back(&samples, t0) {
                Ok(t) => out.push((x.name, t)),
                Err(why) => return Ok(Err(format!("{}: {why}", x.name))),
            }
        }
        Ok(Ok(out))
    })
}

/// From one page's samples `[t, key, bytes, state, selected]` since `t0`:
/// when every connection got audio again after stopping (or 0 when its
/// audio never stopped), in ms from `t0`; or why not yet.
fn page_back(samples: &Value, t0: f64) -> Result<f64, String> {
    let rows = samples.as_array().cloned().unwrap_or_default();
    let mut keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r[1].as_str().map(String::from))
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Err("no samples yet".into());
    }
    let mut slowest: f64 = 0.0;
    for key in keys {
        let mine: Vec<&Value> = rows.iter().filter(|r| r[1] == json!(key)).collect();
        let (mut last_t, mut last_bytes) = (t0, None::<f64>);
        let (mut stopped, mut back) = (false, None);
        for r in &mine {
            let (t, bytes) = (r[0].as_f64().unwrap_or(0.0), r[2].as_f64().unwrap_or(0.0));
            let connected = r[3] == json!("connected");
            if !connected || t - last_t >= STALL_MS {
                stopped = true;
            }
            match last_bytes {
                Some(b) if bytes > b => {
                    if stopped && connected {
                        back = Some(t - t0);
                        break;
                    }
                    last_t = t;
                    last_bytes = Some(bytes);
                }
                None => last_bytes = Some(bytes),
                _ => {}
            }
        }
        let span = mine
            .last()
            .and_then(|r| r[0].as_f64())
            .map_or(0.0, |t| t - t0);
        match back {
            Some(t) => slowest = slowest.max(t),
            None if !stopped && span >= NO_GAP_AFTER_MS => {}
            None => return Err(format!("{key} not back yet: last {:?}", mine.last())),
        }
    }
    Ok(slowest)
}

/// The texts the page's status line and tiles showed since `t0` that say
/// it is reconnecting, or that it showed none.
fn reconnecting_shown(x: &Browser, t0: f64) -> Result<String> {
    let texts = x.execute(
        "return (window.__e2eRoam.texts || []).filter(t => t[0] >= arguments[0]).map(t => t[1])",
        json!([t0]),
    )?;
    let said: Vec<&str> = texts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| t.contains("Reconnecting…"))
        .collect();
    Ok(if said.is_empty() {
        "no \"Reconnecting…\"".into()
    } else {
        format!("\"Reconnecting…\" {} times", said.len())
    })
}

/// The page's signalling messages and connection states since `t0`, in
/// ms from `t0` (message types only: `harness::INIT_JS`).
fn timeline(x: &Browser, t0: f64) -> Result<String> {
    let v = x.execute(
        "return window.__e2e.timeline.filter(([t]) => t >= arguments[0])
           .map(([t, e]) => `+${Math.round(t - arguments[0])} ${e}`).join(', ')",
        json!([t0]),
    )?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// Since `t0`: every page kept the same peer connections (no new call) and
/// received no `matched` or `room_joined`.
fn check_same_call(pages: &[&Browser], t0: f64) -> Result<()> {
    for x in pages {
        let v = x.execute(
            "const w = window.__e2eRoam, now = w.pcs();
             const same = Object.keys(now).length === Object.keys(w.first).length
               && Object.entries(now).every(([k, pc]) => w.first[k] === pc);
             const news = window.__e2e.timeline.filter(([t, e]) => t >= arguments[0]
               && (e === 'ws<matched' || e === 'ws<room_joined' || e === 'pc:new')).map(e => e[1]);
             return {same, news, keys: Object.keys(now)};",
            json!([t0]),
        )?;
        ensure!(
            v["same"] == json!(true) && v["news"] == json!([]),
            "{}: the call did not stay the same peer connections, or a new one began: {v}",
            x.name
        );
    }
    Ok(())
}

/// Every connection of every page of `pages` selected a local candidate on
/// `address`.
fn check_selected_on(pages: &[&Browser], address: &str) -> Result<()> {
    for x in pages {
        let selected = selected_locals(x)?;
        ensure!(
            !selected.is_empty()
                && selected.iter().all(|s| s
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!(" {address}")))),
            "{}: the selected local candidates should be on {address}: {selected:?}",
            x.name
        );
    }
    Ok(())
}

/// Every connection of `x` selected a local candidate of type `typ`.
fn check_selected_type(x: &Browser, typ: &str) -> Result<()> {
    let selected = selected_locals(x)?;
    ensure!(
        !selected.is_empty()
            && selected.iter().all(|s| s
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{typ} ")))),
        "{}: the selected local candidates should be {typ}: {selected:?}",
        x.name
    );
    Ok(())
}

/// `"type address"` of the selected local candidate of each connection of
/// `x`, from its latest sample (taken within the last 50 ms).
fn selected_locals(x: &Browser) -> Result<Vec<Value>> {
    std::thread::sleep(Duration::from_millis(200));
    let v = x.execute(
        "const w = window.__e2eRoam, last = {};
         for (const s of w.samples) last[s[1]] = s[4];
         return Object.values(last);",
        json!([]),
    )?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Samples the page's peer connections (the stranger call's, or a room's)
/// every 50 ms: `window.__e2eRoam.samples` holds `[epoch ms, key, inbound
/// audio bytes, connection state, "type address" of the selected local
/// candidate]`; `texts` every change of the status line and tile states;
/// `first` the peer connections at the start, and `pcs()` those now.
const ROAM_JS: &str = r#"
if (window.__e2eRoam) return;
const pcs = () => {
  const e = window.earshot, out = {};
  if (e.pc) out.call = e.pc;
  for (const [k, pc] of Object.entries(e.peers || {})) out['peer' + k] = pc;
  return out;
};
const w = {samples: [], texts: [], pcs, first: pcs()};
Object.defineProperty(window, '__e2eRoam', {value: w});
const texts = () => [document.querySelector('[data-testid="status"]'),
  ...document.querySelectorAll('[data-testid="participant"] .tile-state')]
  .map(n => n ? n.textContent : '').join(' | ');
let last = '';
setInterval(() => {
  const now = Date.now();
  const t = texts();
  if (t !== last && w.texts.length < 5000) { last = t; w.texts.push([now, t]); }
  for (const [k, pc] of Object.entries(pcs())) {
    pc.getStats().then(stats => {
      let bytes = 0, pairId = null;
      stats.forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') bytes += r.bytesReceived || 0;
        if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      });
      const pair = pairId ? stats.get(pairId) : null;
      const lc = pair ? stats.get(pair.localCandidateId) : null;
      if (w.samples.length < 100000) {
        w.samples.push([now, k, bytes, pc.connectionState,
                        lc ? `${lc.candidateType} ${lc.address ?? lc.ip}` : null]);
      }
    }, () => {});
  }
}, 50);
"#;
