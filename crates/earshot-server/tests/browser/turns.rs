//! TURN over TLS: a Chromium call relayed through the embedded server's
//! `turns:` and nothing else, as on a network that lets only TLS through,
//! on the HTTPS port itself (as on 443 in production, where the server
//! tells TURN from HTTP by the first bytes).
//!
//! The server gets a certificate for `127.0.0.1` made here (rcgen), as PEM
//! files (`--tls-cert`, `--tls-key`), so the page is served over HTTPS and
//! the `turns:` URL names the host the page was loaded from. Chromium checks
//! a TURN server's certificate as it does a web page's: it trusts this one
//! through `--ignore-certificate-errors-spki-list` (the SHA-256 of its
//! public key), which its TURN client honours too.
//!
//! [`TURNS_ONLY_JS`] keeps only the `turns:` URLs of the page's ICE servers
//! and sets `iceTransportPolicy: 'relay'`, so the call can only be relayed
//! over TLS; the test then asks each page's `getStats()` what its selected
//! pair's local candidate is.
//!
//! Does Chromium check a TURN server's certificate at all? After the call,
//! the page gathers candidates from two more TURN servers run in this
//! process: one presenting the same certificate gives a TLS relay
//! candidate, one presenting a certificate Chromium was not told to trust
//! gives none, only an `icecandidateerror`. So it does, with the same trust
//! as for pages (`--ignore-certificate-errors` would let both through).

use crate::reach::{
    EMBEDDED_RELAY_PORTS, LOG_SHOWS_TURN, call_stats, embedded_turn, hang_up, meet, open_pages,
    register_turn_secrets,
};
use crate::support::TempDir;
use crate::support::harness::{Browser, Run, check_call_audio};
use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use earshot_server::tls::Tls;
use earshot_server::turn::{TurnLimits, TurnListener, TurnSettings};
use rcgen::PublicKeyData;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Chromium with only the embedded server's `turns:` URL and relay-only
/// ICE: A and B meet as strangers, hear each other and chat. On both
/// pages, the peer connection was given nothing but the `turns:` URL on
/// the page's own host and HTTPS port (after the UDP and TCP ones in the
/// welcome), every
/// local candidate is a relay candidate over TLS (`relayProtocol` `tls`)
/// on the relay ports, and the selected pair's local candidate is one of
/// them. Then A's page shows that Chromium checks TURN certificates (see
/// the module docs).
#[test]
fn browser_relays_a_call_over_turns_only() -> Result<()> {
    let test = "browser_relays_a_call_over_turns_only";
    if !crate::support::harness::should_run(test)? {
        return Ok(());
    }
    let dir = TempDir::new("earshot-turns")?;
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .context("cannot make a certificate")?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    let spki = STANDARD.encode(Sha256::digest(made.signing_key.subject_public_key_info()));
    let mut setup = embedded_turn();
    let listen = format!("127.0.0.1:{}", crate::support::free_port()?);
    setup.listen = Some(listen.clone());
    setup.server_args.extend([
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--turn-tls-listen".into(),
        listen,
    ]);
    setup
        .chromium_args
        .push(format!("--ignore-certificate-errors-spki-list={spki}"));
    let trusted = Tls::from_pem_files(&cert, &key)?;
    Run::scenario_setup(test, &["A", "B"], 0, LOG_SHOWS_TURN, &setup, |run| {
        turns_scenario(run)?;
        certificate_is_checked(&run.browsers[0], &trusted)
    })
}

fn turns_scenario(run: &Run) -> Result<()> {
    let [a, b] = &run.browsers[..] else {
        bail!("expected two browsers")
    };
    for x in [a, b] {
        x.session
            .add_init_script(TURNS_ONLY_JS)
            .with_context(|| format!("{}: cannot install the turns-only script", x.name))?;
    }
    open_pages(run)?;
    let url = run.server_url()?;
    ensure!(url.starts_with("https://127.0.0.1:"), "not HTTPS: {url}");
    let https_port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or_default();
    meet(a, b)?;
    check_call_audio(&[a, b])?;
    for x in [a, b] {
        let config = x.execute(CONFIG_JS, json!([]))?;
        let urls: Vec<&str> = config["urls"]
            .as_array()
            .map(|u| u.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let offered: Vec<&str> = config["offered"]
            .as_array()
            .map(|u| u.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        ensure!(
            config["policy"] == json!("relay")
                && !urls.is_empty()
                && urls
                    .iter()
                    .all(|u| **u == format!("turns:127.0.0.1:{https_port}?transport=tcp")),
            "{}: the peer connection should have only turns: on the HTTPS port, relay policy: {config}",
            x.name
        );
        ensure!(
            offered.len() == 3
                && offered[0].starts_with("turn:")
                && offered[1].starts_with("turn:")
                && offered[2] == urls[0],
            "{}: the welcome should offer turns: after the UDP and TCP URLs: {config}",
            x.name
        );
        let stats = call_stats(x)?;
        check_tls_relay(&stats).with_context(|| format!("{}: {stats}", x.name))?;
        println!(
            "turns: {} selected pair {}",
            x.name, stats["selected"]["local"]
        );
    }
    run.chat(a, &[b], "hello over turns from A")?;
    hang_up(a, b)?;
    register_turn_secrets(run)
}

/// A page gathers relay candidates from an in-process TURN server over TLS
/// presenting `trusted` (the certificate Chromium trusts), then from one
/// presenting a certificate of its own: a TLS relay candidate from the
/// first, none and an error from the second.
fn certificate_is_checked(x: &Browser, trusted: &Tls) -> Result<()> {
    let untrusted = Tls::self_signed(&["127.0.0.1".parse()?], &[])?;
    let good = gather(x, trusted)?;
    println!("turns: a TURN server with the trusted certificate: {good}");
    ensure!(
        good["candidates"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == json!("relay") && c["relayProtocol"] == json!("tls"))),
        "{}: no TLS relay candidate from a TURN server with the trusted certificate: {good}",
        x.name
    );
    let bad = gather(x, &untrusted)?;
    println!("turns: a TURN server with an untrusted certificate: {bad}");
    ensure!(
        bad["candidates"].as_array().is_some_and(Vec::is_empty)
            && bad["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{}: a TURN server with an untrusted certificate should give no candidate and an error: {bad}",
        x.name
    );
    Ok(())
}

/// The candidates and candidate errors `x` gathers, relay only, from a TURN
/// server run here over TLS with `tls`, on 127.0.0.1.
fn gather(x: &Browser, tls: &Tls) -> Result<Value> {
    const SECRET: &[u8] = b"turns certificate check";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = rt.block_on(async {
        TurnListener::bind(TurnSettings {
            listen: "127.0.0.1:0".parse()?,
            public_ip: None,
            relay_ports: 53000..=53099,
            secret: SECRET.to_vec(),
            realm: "earshot".into(),
            limits: TurnLimits::default(),
        })
        .await?
        .with_tls("127.0.0.1:0".parse()?, tls.turn_acceptor.clone())
        .await
    })?;
    let addr = listener.tls_addr()?.context("no TLS listener")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    rt.spawn(listener.serve(shutdown.clone()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (username, credential) = earshot_core::turn::rest_credentials(
        SECRET,
        std::time::Duration::from_secs(600),
        now,
        "check",
    );
    let url = format!("turns:127.0.0.1:{}?transport=tcp", addr.port());
    let result = x.execute_async(GATHER_JS, json!([url, username, credential]));
    shutdown.cancel();
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let result = result?;
    if let Some(error) = result["error"].as_str() {
        bail!("{}: gathering failed: {error}", x.name);
    }
    Ok(result)
}

/// Every local candidate is a relay candidate over TLS on the relay
/// ports, and the selected pair's local candidate is one.
fn check_tls_relay(stats: &Value) -> Result<()> {
    let candidates = stats["candidates"].as_array().cloned().unwrap_or_default();
    let local: Vec<&Value> = candidates
        .iter()
        .filter(|c| c["kind"] == json!("local-candidate"))
        .collect();
    ensure!(!local.is_empty(), "no local candidate");
    for c in local {
        let port = c["port"].as_u64().unwrap_or(0);
        ensure!(
            c["type"] == json!("relay")
                && c["relayProtocol"] == json!("tls")
                && EMBEDDED_RELAY_PORTS.contains(&u16::try_from(port).unwrap_or(0)),
            "a local candidate that is not a TLS relay on the relay ports: {c}"
        );
    }
    let selected = &stats["selected"]["local"];
    ensure!(
        selected["type"] == json!("relay") && selected["relayProtocol"] == json!("tls"),
        "the selected pair's local candidate is not a TLS relay: {selected}"
    );
    Ok(())
}

/// Installed before the page's own scripts: every `RTCPeerConnection` gets
/// only the `turns:` URLs of its ICE servers (same credentials) and relay
/// policy, also through `setConfiguration` (a credential refresh). What the
/// page asked for is kept in `window.__e2eTurns.offered`.
const TURNS_ONLY_JS: &str = r#"
(() => {
  const rec = {offered: []};
  Object.defineProperty(window, '__e2eTurns', {value: rec});
  const Base = window.RTCPeerConnection;
  if (typeof Base !== 'function') return;
  const only = config => {
    const c = Object.assign({}, config || {});
    const servers = (c.iceServers || []).map(s => {
      const urls = Array.isArray(s.urls) ? s.urls : [s.urls];
      rec.offered.push(...urls);
      return Object.assign({}, s, {urls: urls.filter(u => String(u).startsWith('turns:'))});
    });
    c.iceServers = servers.filter(s => s.urls.length > 0);
    c.iceTransportPolicy = 'relay';
    return c;
  };
  window.RTCPeerConnection = class extends Base {
    constructor(config, ...rest) { super(only(config), ...rest); }
    setConfiguration(config) { return super.setConfiguration(only(config)); }
  };
})();
"#;

/// Gathers relay candidates from one TURN URL (arguments: URL, username,
/// credential) until gathering completes or 15 s pass: their types and
/// relay protocols, and the candidate errors.
const GATHER_JS: &str = r#"
const [url, username, credential, done] = arguments;
const out = {candidates: [], errors: []};
const pc = new RTCPeerConnection({iceServers: [{urls: url, username, credential}],
                                  iceTransportPolicy: 'relay'});
let finished = false;
const finish = () => { if (!finished) { finished = true; pc.close(); done(out); } };
pc.onicecandidate = e => {
  if (e.candidate) out.candidates.push({type: e.candidate.type,
                                        relayProtocol: e.candidate.relayProtocol ?? null});
  else finish();
};
pc.onicecandidateerror = e => out.errors.push({code: e.errorCode, text: e.errorText});
pc.createDataChannel('check');
pc.setLocalDescription().catch(err => { finished = true; done({error: String(err)}); });
setTimeout(finish, 15000);
"#;

/// The current call's ICE configuration, and the TURN URLs the page
/// offered the peer connection (the welcome's, in order, first offer).
const CONFIG_JS: &str = r#"
const pc = window.earshot && window.earshot.pc;
if (!pc) return null;
const conf = pc.getConfiguration();
const urls = (conf.iceServers || []).flatMap(s => Array.isArray(s.urls) ? s.urls : [s.urls]);
const offered = window.__e2eTurns.offered.filter(u => String(u).startsWith('turn'));
return {policy: conf.iceTransportPolicy, urls, offered: offered.slice(0, 3)};
"#;
