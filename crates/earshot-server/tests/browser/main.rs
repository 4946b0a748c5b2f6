//! Browser end-to-end tests: real Chromium browsers (Debian's `chromium` and
//! `chromium-driver`, fake microphone), and Firefox (Debian's `firefox-esr`
//! through geckodriver), meet, talk and chat through the real `earshot`
//! binary. One test binary, so that every scenario shares the harness
//! (`support::harness`) and the budget of browsers running at once.
//!
//! - `strangers`: two strangers meet, hear each other and chat (and the time
//!   to audio); a call survives a server restart.
//! - `rooms`: rooms by link: a room of three talks, locks, keeps out a wrong
//!   passphrase and lets the right one in; a member refuses a peer whose
//!   DTLS fingerprint was tampered with; a room of six (and the time to hear
//!   everyone); a full room says so, then lets the page in once a seat frees.
//!   Every pair of the room of three shows the same safety words.
//! - `safety`: the page talks to its own origin only and sets no cookie
//!   (DevTools network events, resource timing, CSP violations); Report
//!   ends a call at once for both; three reports from three addresses ban a
//!   page, whose ban notice counts down; proof of work shows its progress,
//!   then the page works.
//! - `multinode`: strangers on two nodes that share a real `redis-server`
//!   (or a three-primary Redis Cluster) meet, hear each other and chat.
//! - `reach`: "hide my IP" relays a call through TURN (the embedded server,
//!   or a real coturn) with nothing but relay candidates reaching either
//!   side; safety words match, and change when a fingerprint is swapped;
//!   fresh TURN credentials keep a relayed call going; the time to audio,
//!   relayed and direct.
//! - `roaming`: a call survives a network change: the browsers' address
//!   changes mid-call and the call comes back by ICE restart, as strangers,
//!   in a room and with "hide my IP" (and the time it takes).
//! - `phone`: what phones need, shown in Chromium: "Tap to hear" when
//!   `play()` is refused, a microphone that ends mid-call replaced without
//!   a new call, the page hidden and shown again, the call controls on a
//!   390×844 screen.
//! - `round_trips`: (ignored by default, a benchmark) the time to audio
//!   with latency added in user space between the pages and both the server
//!   and the relay, beside the in-page limit under the same latency.
//! - `firefox`: Firefox with Firefox and with Chromium: strangers in both
//!   roles, a locked room of two Firefox and a Chromium, and "hide my IP"
//!   relayed through the embedded TURN server; matching safety words.
//! - `turns`: a Chromium call relayed over TURN over TLS only, the page
//!   served over HTTPS with a certificate made for the test.
//! - `words`: safety words by commit-then-reveal: they match and are the
//!   ones PROTOCOL.md gives for the call's fingerprints and nonces (and the
//!   page's module gives its test vector); a suppressed exchange gives the
//!   warning on both pages; a tampered reveal is caught.
//!
//! WebRTC tests only run in a loopback-only network namespace, so every ICE
//! candidate and every packet stays on 127.0.0.1 (see `support::netns`);
//! scenarios with Firefox run again, each alone, in a namespace of their
//! own that also has a veth pair leading nowhere, without which Firefox
//! gathers no candidates.
//! `scripts/test` runs them that way with `EARSHOT_E2E=1`, which makes them
//! mandatory; a plain `cargo test` on a machine with a network skips them with
//! a notice.
//!
//! Each scenario (`Run::scenario`) starts its own server, at trace level, and
//! its own browsers. The scenarios drive the page only through its
//! `data-testid` elements and read `window.earshot` (`pc`, the stranger
//! call's `RTCPeerConnection`; `peers`, a room's) for stats; a script
//! installed before the page's own records clicks, WebSockets, peer
//! connections, the passphrase-derived values and the safety-words messages
//! the page sends (`harness::INIT_JS`). Times to audio are measured inside the pages with
//! `Date.now()`, from a click to decoded audio with energy, so that WebDriver
//! round trips do not count; they go to `$EARSHOT_E2E_REPORT`, which
//! `scripts/test` prints.
//!
//! Every scenario ends with privacy checks (`Run::finish`): nothing stored
//! in any page (cookies, Web Storage, IndexedDB), and no chat text, SDP, ICE
//! candidate, passphrase, verifier or fingerprint `auth` anywhere in the
//! server's trace-level output.

#[path = "../support/mod.rs"]
mod support;

mod firefox;
mod multinode;
mod phone;
mod reach;
mod roaming;
mod rooms;
mod round_trips;
mod safety;
mod strangers;
mod turns;
mod words;

use anyhow::{Result, ensure};
use serde_json::json;
use support::harness::{BrowserSlots, should_run, should_run_with};
use support::webdriver::{ChromeDriver, Session};

/// The WebDriver client against a static page: if this fails, the harness is
/// broken, not Earshot.
#[test]
fn browser_webdriver_client_drives_chromium() -> Result<()> {
    if !should_run("browser_webdriver_client_drives_chromium")? {
        return Ok(());
    }
    let _slot = BrowserSlots::reserve(1);
    let driver = ChromeDriver::start()?;
    drive_a_static_page(&driver.session()?)
}

/// The same with Firefox, through its geckodriver and BiDi socket.
#[test]
fn browser_webdriver_client_drives_firefox() -> Result<()> {
    if !should_run_with("browser_webdriver_client_drives_firefox", true)? {
        return Ok(());
    }
    let _slot = BrowserSlots::reserve(1);
    drive_a_static_page(&Session::firefox()?)
}

/// Clicks, typing, attributes, scripts, a script installed before the
/// page's own, and the console.
fn drive_a_static_page(session: &Session) -> Result<()> {
    session.add_init_script("window.__early = 'before the page'; console.log('early ' + 42);")?;
    let page = "<title>t</title>\
        <button data-testid=\"go\" onclick=\"this.dataset.clicks = +(this.dataset.clicks || 0) + 1\">Go</button>\
        <button data-testid=\"off\" disabled>Off</button>\
        <input data-testid=\"text\">\
        <script>document.title = window.__early || 'no init script'</script>";
    session.goto(&format!(
        "data:text/html;charset=utf-8,{}",
        percent_encode(page)
    ))?;
    let title = session.execute("return document.title", json!([]))?;
    assert_eq!(title, json!("before the page"));
    let go = session.testid("go")?;
    go.click()?;
    go.click()?;
    assert_eq!(go.attribute("data-clicks")?.as_deref(), Some("2"));
    assert_eq!(go.text()?, "Go");
    assert!(go.enabled()?);
    assert!(!session.testid("off")?.enabled()?);
    let input = session.testid("text")?;
    input.send_keys("héllo, wörld")?;
    let typed = session.execute(
        "return document.querySelector('[data-testid=text]').value + arguments[0]",
        json!(["!"]),
    )?;
    assert_eq!(typed, json!("héllo, wörld!"));
    input.clear()?;
    assert_eq!(input.property("value")?, json!(""));
    assert_eq!(input.attribute("value")?, None);
    let later = session.execute_async(
        "const done = arguments[arguments.length - 1]; setTimeout(() => done({n: arguments[0] * 2}), 50)",
        json!([21]),
    )?;
    assert_eq!(later, json!({"n": 42}));
    assert!(session.find("#missing").is_err());
    let console = session.console_log();
    ensure!(
        console.contains("early 42"),
        "the console lacks the init script's line: {console:?}"
    );
    Ok(())
}

/// `text` with everything but ASCII letters and digits percent-encoded, for a
/// `data:` URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
