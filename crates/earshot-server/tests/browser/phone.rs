//! Phones, as far as Chromium can show them (Safari cannot run here): the
//! page of browser P is a phone's, 390×844 CSS pixels (DevTools device
//! metrics), and [`PHONE_JS`], installed before the page's own scripts,
//! does what a phone's browser would: `play()` refuses once with
//! `NotAllowedError` (Safari outside a gesture), `navigator.audioSession`
//! exists (Chromium has none), and the test can say the page is hidden.
//! D is an ordinary desktop page.

use crate::reach::{hang_up, meet, open_pages};
use crate::rooms::{join_alone, join_and_hear, open_room, wait_count};
use crate::support::harness::{Browser, Run, STEP, poll};
use anyhow::{Context, Result, ensure};
use serde_json::json;
use std::time::Duration;

const LOG_SHOWS: &[&str] = &["matched", "joined a room"];
/// The phone's screen, in CSS pixels (an iPhone 12 to 15).
const WIDTH: u32 = 390;
const HEIGHT: u32 = 844;

/// P (a phone) meets D as strangers. (1) P's first `play()` of D's audio is
/// refused: P shows "Tap to hear", and a tap (a WebDriver click, which
/// counts as a gesture) plays it and hides the button. (2) P asked for a
/// `play-and-record` audio session. (3) At 390×844 every call control is
/// inside the viewport without scrolling (the screenshot is saved). (4) P's
/// microphone track says `ended` mid-call: P gets the microphone again and
/// sends the new track in the same call (no new `matched`), and D hears P
/// again. (5) P is hidden (its microphone stopped and its audio paused, as
/// a phone does in the background), then shown: the microphone is taken
/// again, the audio plays again, both hear each other in the same call.
/// (6) The same controls check and screenshot in a room. Chat both ways;
/// ends with the privacy checks of `Run::finish`.
#[test]
fn browser_phone_tap_to_hear_mic_recovery_and_small_screen() -> Result<()> {
    Run::scenario_with(
        "browser_phone_tap_to_hear_mic_recovery_and_small_screen",
        &["D", "P"],
        0,
        LOG_SHOWS,
        |run| {
            let [d, p] = &run.browsers[..] else {
                anyhow::bail!("expected two browsers")
            };
            p.session
                .add_init_script(PHONE_JS)
                .context("P: cannot install the phone stand-ins")?;
            p.session.cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 2, "mobile": true}),
            )?;
            open_pages(run)?;
            let time = meet(d, p)?;
            println!("phone: P and D connected, time to audio {time:.0} ms");

            // (1) Tap to hear.
            wait_shown(p, "tap-to-hear", true)?;
            let before = p.execute(PLAYBACK_JS, json!([]))?;
            ensure!(
                before["refused"] == json!(1),
                "P: play() should have been refused once: {before}"
            );
            p.click("tap-to-hear")?;
            wait_shown(p, "tap-to-hear", false)?;
            poll("P: the stranger's audio playing", STEP, || {
                let v = p.execute(PLAYBACK_JS, json!([]))?;
                Ok(if v["playing"] == json!(true) {
                    Ok(())
                } else {
                    Err(v.to_string())
                })
            })?;
            println!("phone: \"Tap to hear\" shown after a refused play(), gone after a tap");

            // (2) The audio session of a call.
            let session = p.execute(
                "return navigator.audioSession ? navigator.audioSession.type : null",
                json!([]),
            )?;
            ensure!(
                session == json!("play-and-record"),
                "P: navigator.audioSession.type should be play-and-record: {session}"
            );

            // (3) The controls fit.
            check_controls_fit(p, &["start", "skip", "end", "mute", "report"], "call")?;

            // (4) The microphone ends mid-call.
            let first = sender_track(p)?;
            p.execute(
                "const s = window.earshot.pc.getSenders().find(s => s.track && s.track.kind === 'audio');
                 s.track.dispatchEvent(new Event('ended'));",
                json!([]),
            )?;
            let second = wait_new_track(p, &first)?;
            check_same_call(p)?;
            check_hears(d, "P's new microphone")?;
            println!("phone: microphone track {first} ended, {second} sent in the same call");

            // (5) Hidden, then shown again.
            p.execute(
                "window.__e2ePhone.hidden = true;
                 document.dispatchEvent(new Event('visibilitychange'));
                 const s = window.earshot.pc.getSenders().find(s => s.track && s.track.kind === 'audio');
                 s.track.stop();
                 document.querySelectorAll('audio').forEach(a => a.pause());",
                json!([]),
            )?;
            std::thread::sleep(Duration::from_millis(1000));
            p.execute(
                "window.__e2ePhone.hidden = false;
                 document.dispatchEvent(new Event('visibilitychange'));",
                json!([]),
            )?;
            let third = wait_new_track(p, &second)?;
            poll("P: audio playing again once shown", STEP, || {
                let v = p.execute(PLAYBACK_JS, json!([]))?;
                Ok(if v["playing"] == json!(true) {
                    Ok(())
                } else {
                    Err(v.to_string())
                })
            })?;
            check_same_call(p)?;
            check_hears(d, "P after it was shown again")?;
            check_hears(p, "D after P was shown again")?;
            println!("phone: hidden and shown: microphone {third}, audio playing, same call");

            for (from, to) in [(p, d), (d, p)] {
                run.chat(from, &[to], &format!("from the {} side", from.name))?;
            }
            hang_up(d, p)?;

            // (6) A room on the phone.
            open_room(run, d, &[p])?;
            join_alone(d)?;
            join_and_hear(p, 1, STEP)?;
            wait_count(&[d, p], 2, STEP)?;
            check_controls_fit(p, &["mute", "camera", "leave"], "room")
        },
    )
}

/// Waits until `[data-testid=id]` of `x` is shown (`true`) or hidden.
fn wait_shown(x: &Browser, id: &str, shown: bool) -> Result<()> {
    poll(
        &format!(
            "{}: {id} {}",
            x.name,
            if shown { "shown" } else { "hidden" }
        ),
        STEP,
        || {
            let v = x.execute(
                "const b = document.querySelector(`[data-testid=\"${arguments[0]}\"]`);
                 return !!b && !b.closest('[hidden]');",
                json!([id]),
            )?;
            Ok(if v == json!(shown) {
                Ok(())
            } else {
                Err(v.to_string())
            })
        },
    )
}

/// At the phone's size, every control `ids` of `x` is shown and inside the
/// viewport, the page unscrolled; saves a screenshot as
/// `phone-{what}-390x844.png` in the test's temporary directory.
fn check_controls_fit(x: &Browser, ids: &[&str], what: &str) -> Result<()> {
    let v = x.execute(
        "window.scrollTo(0, 0);
         const out = {width: innerWidth, height: innerHeight, scrollY, controls: {}};
         for (const id of arguments[0]) {
           const b = document.querySelector(`[data-testid=\"${id}\"]`);
           const r = b && b.getBoundingClientRect();
           out.controls[id] = r ? {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
                                   shown: !b.closest('[hidden]')} : null;
         }
         return out;",
        json!([ids]),
    )?;
    ensure!(
        v["width"] == json!(WIDTH) && v["height"] == json!(HEIGHT),
        "{}: the viewport should be {WIDTH}×{HEIGHT}: {v}",
        x.name
    );
    let (w, h) = (WIDTH as f64, HEIGHT as f64);
    for id in ids {
        let r = &v["controls"][id];
        let n = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        ensure!(
            r["shown"] == json!(true)
                && n("top") >= 0.0
                && n("left") >= 0.0
                && n("bottom") <= h
                && n("right") <= w
                && n("bottom") > n("top"),
            "{}: the {what} control {id} is not inside the {WIDTH}×{HEIGHT} viewport: {v}",
            x.name
        );
    }
    let png = x.session.screenshot()?;
    ensure!(
        png.starts_with(b"\x89PNG"),
        "{}: the screenshot is not a PNG",
        x.name
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("phone-{what}-{WIDTH}x{HEIGHT}.png"));
    std::fs::write(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "phone: the {what} controls {ids:?} fit {WIDTH}×{HEIGHT} unscrolled; screenshot {}",
        path.display()
    );
    Ok(())
}

/// The id of the audio track the call sends, once it is live.
fn sender_track(x: &Browser) -> Result<String> {
    let v = x.execute(SENDER_JS, json!([]))?;
    ensure!(
        v["state"] == json!("live"),
        "{}: the call sends no live microphone track: {v}",
        x.name
    );
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

/// Waits until the call sends a live audio track other than `old`; its id.
fn wait_new_track(x: &Browser, old: &str) -> Result<String> {
    poll(
        &format!("{}: a new microphone track in the call", x.name),
        STEP,
        || {
            let v = x.execute(SENDER_JS, json!([]))?;
            Ok(match v["id"].as_str() {
                Some(id) if id != old && v["state"] == json!("live") => Ok(id.to_string()),
                _ => Err(v.to_string()),
            })
        },
    )
}

/// Since the call began, the page's peer connection stayed the same and
/// no second `matched` came: the first `pc:new` and `ws<matched` of the
/// timeline after the last `ws>search` are the only ones.
fn check_same_call(x: &Browser) -> Result<()> {
    let v = x.execute(
        "const t = window.__e2e.timeline.map(e => e[1]);
         const from = t.lastIndexOf('ws>search');
         const since = t.slice(from);
         return {matched: since.filter(e => e === 'ws<matched').length,
                 pcs: since.filter(e => e === 'pc:new').length,
                 state: window.earshot.state};",
        json!([]),
    )?;
    ensure!(
        v == json!({"matched": 1, "pcs": 1, "state": "connected"}),
        "{}: the call should be the one it was (one matched, one peer connection): {v}",
        x.name
    );
    Ok(())
}

/// Over a second, `x`'s stranger call receives audio whose bytes and
/// energy both grow (someone is heard, not merely connected).
fn check_hears(x: &Browser, what: &str) -> Result<()> {
    let first = x.audio_stats(None)?;
    poll(&format!("{}: hearing {what}", x.name), STEP, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = x.audio_stats(None)?;
        let grew = |k: &str| now[k].as_f64().unwrap_or(0.0) > first[k].as_f64().unwrap_or(0.0);
        Ok(
            if grew("bytes") && grew("energy") && now["connectionState"] == json!("connected") {
                Ok(())
            } else {
                Err(format!("{first} then {now}"))
            },
        )
    })
}

/// The call's audio sender: `{id, state}` of its track.
const SENDER_JS: &str = "
const pc = window.earshot.pc;
const s = pc && pc.getSenders().find(s => s.track && s.track.kind === 'audio');
return s ? {id: s.track.id, state: s.track.readyState} : null;";

/// Whether the stranger's audio element plays, and how many `play()`s the
/// stand-in refused.
const PLAYBACK_JS: &str = "
const a = document.getElementById('remote-audio');
return {refused: window.__e2ePhone.refused,
        playing: !!a && !!a.srcObject && !a.paused};";

/// What a phone's browser does, in Chromium: the first `play()` of a
/// media element with a stream is refused (`NotAllowedError`); there is a
/// `navigator.audioSession` whose `type` can be set; the page's
/// `visibilityState` is `hidden` while `window.__e2ePhone.hidden`.
const PHONE_JS: &str = r#"
(() => {
  const phone = {refused: 0, hidden: false};
  Object.defineProperty(window, '__e2ePhone', {value: phone});
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (phone.refused === 0 && this.srcObject) {
      phone.refused += 1;
      return Promise.reject(new DOMException('play() needs a gesture', 'NotAllowedError'));
    }
    return play.call(this);
  };
  if (!navigator.audioSession) {
    Object.defineProperty(navigator, 'audioSession', {value: {type: 'auto'}, configurable: true});
  }
  Object.defineProperty(Document.prototype, 'visibilityState', {
    get() { return phone.hidden ? 'hidden' : 'visible'; }, configurable: true});
  Object.defineProperty(Document.prototype, 'hidden', {
    get() { return phone.hidden; }, configurable: true});
})();
"#;
