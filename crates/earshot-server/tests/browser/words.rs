//! Safety words by commit-then-reveal (PROTOCOL.md "Safety words"), between
//! two Chromium pages in a stranger call: they match and are the ones the
//! protocol gives for the call's fingerprints and nonces (and the page's
//! own module gives PROTOCOL.md's test vector); a suppressed exchange gives
//! both pages the warning and no words; a tampered reveal is caught. The
//! faults are made by `harness::INIT_JS` in the page, on the data channel,
//! where a server in the middle would make them. The room of three is in
//! `rooms.rs`, Firefox in `firefox.rs`, earshot-peer in its own crate.

use crate::reach::{
    VECTOR_WORDS, check_safety_words, hang_up, meet, open_pages, safety_words, vector_nonces,
};
use crate::support::harness::{Browser, Run, STEP, Setup, poll};
use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LOG_SHOWS: &[&str] = &["matched"];
/// The exchange's time limit (`web/wordsexchange.js`), and some slack.
const WORDS_TIMEOUT: Duration = Duration::from_secs(10);

/// A and B meet: the same words on both pages, from the nonces they sent
/// (checked against a reference implementation of PROTOCOL.md); no warning.
/// A second call between the same two pages has fresh nonces, so other
/// words. The page's own `safetywords.js` gives PROTOCOL.md's test vector.
#[test]
fn browser_safety_words_match_by_commit_then_reveal() -> Result<()> {
    Run::scenario_setup(
        "browser_safety_words_match_by_commit_then_reveal",
        &["A", "B"],
        0,
        LOG_SHOWS,
        &Setup::default(),
        |run| {
            let [a, b] = &run.browsers[..] else {
                bail!("expected two browsers")
            };
            open_pages(run)?;
            check_page_vector(a)?;
            meet(a, b)?;
            let first = check_safety_words(a, b)?;
            for x in [a, b] {
                ensure!(
                    safety_warning(x)?.is_none(),
                    "{}: a warning as well as words",
                    x.name
                );
            }
            hang_up(a, b)?;
            meet(a, b)?;
            let second = check_safety_words(a, b)?;
            ensure!(
                first != second,
                "two calls gave the same words {first:?}: the nonces are not fresh"
            );
            println!("safety words: {first:?}, then {second:?}");
            run.chat(a, &[b], "hello after the safety words")?;
            hang_up(a, b)
        },
    )
}

/// B's page sends no safety-words message (a server in the middle that
/// drops them): the call connects, but after the time limit both pages show
/// the warning (`timeout`), never words.
#[test]
fn browser_safety_words_warn_when_the_exchange_is_suppressed() -> Result<()> {
    Run::scenario_setup(
        "browser_safety_words_warn_when_the_exchange_is_suppressed",
        &["A", "B"],
        0,
        LOG_SHOWS,
        &Setup::default(),
        |run| {
            let [a, b] = &run.browsers[..] else {
                bail!("expected two browsers")
            };
            open_pages(run)?;
            b.execute("window.__e2eWords.drop = true", json!([]))?;
            meet(a, b)?;
            let connected = Instant::now();
            let warnings = poll("the warning on both pages", STEP + WORDS_TIMEOUT, || {
                Ok(match (safety_warning(a)?, safety_warning(b)?) {
                    (Some(wa), Some(wb)) => Ok((wa, wb)),
                    other => Err(format!("{other:?}")),
                })
            })?;
            println!(
                "suppressed exchange: warnings after {:?}: {warnings:?}",
                connected.elapsed()
            );
            for (x, w) in [(a, &warnings.0), (b, &warnings.1)] {
                // What each page sent of the exchange (dropped or not), to
                // tell which side broke the turn order if this fails.
                let sent = |p: &Browser| p.execute("return window.__e2eWords.sent", json!([]));
                ensure!(
                    w["reason"] == json!("timeout"),
                    "{}: expected the timeout warning: {w}; A sent {}, B sent {}",
                    x.name,
                    sent(a)?,
                    sent(b)?
                );
                ensure!(
                    w["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("Safety check failed")),
                    "{}: the warning does not say what happened: {w}",
                    x.name
                );
                ensure!(
                    safety_words(x)?.is_none(),
                    "{}: words shown with the warning",
                    x.name
                );
            }
            let dropped = b.execute("return window.__e2eWords.dropped", json!([]))?;
            ensure!(
                dropped.as_u64().unwrap_or(0) >= 1,
                "B's page dropped nothing: {dropped}"
            );
            // The channel itself still works: only the exchange was dropped.
            run.chat(a, &[b], "hello without safety words")?;
            hang_up(a, b)
        },
    )
}

/// Both pages change the nonce of any `safety_reveal` they send (only the
/// committer sends one): the responder finds that it does not match the
/// commitment and shows the warning (`mismatch`), not words.
#[test]
fn browser_safety_words_catch_a_tampered_reveal() -> Result<()> {
    Run::scenario_setup(
        "browser_safety_words_catch_a_tampered_reveal",
        &["A", "B"],
        0,
        LOG_SHOWS,
        &Setup::default(),
        |run| {
            let [a, b] = &run.browsers[..] else {
                bail!("expected two browsers")
            };
            open_pages(run)?;
            for x in [a, b] {
                x.execute("window.__e2eWords.tamperReveal = true", json!([]))?;
            }
            meet(a, b)?;
            let (responder, warning) = poll("the responder's warning", STEP, || {
                for x in [a, b] {
                    if let Some(w) = safety_warning(x)? {
                        return Ok(Ok((x, w)));
                    }
                }
                Ok(Err(format!(
                    "words A {:?}, B {:?}",
                    safety_words(a)?,
                    safety_words(b)?
                )))
            })?;
            ensure!(
                warning["reason"] == json!("mismatch"),
                "{}: expected the mismatch warning: {warning}",
                responder.name
            );
            ensure!(
                safety_words(responder)?.is_none(),
                "{}: words shown with the warning",
                responder.name
            );
            let tampered: u64 = [a, b]
                .iter()
                .map(|x| {
                    x.execute("return window.__e2eWords.tampered", json!([]))
                        .map(|v| v.as_u64().unwrap_or(0))
                })
                .sum::<Result<u64>>()?;
            ensure!(tampered == 1, "{tampered} reveals were changed, not one");
            println!("tampered reveal: {} shows {warning}", responder.name);
            run.chat(a, &[b], "hello after a tampered reveal")?;
            hang_up(a, b)
        },
    )
}

/// The warning the page shows instead of words (`safety-warning` of the
/// strangers page): `{reason, text}`, or None.
pub(crate) fn safety_warning(x: &Browser) -> Result<Option<Value>> {
    let v = x.execute(
        "const w = document.querySelector('[data-testid=\"safety-warning\"]');
         return w && !w.hidden && !w.closest('[hidden]')
           ? {reason: w.dataset.reason || null, text: w.textContent} : null;",
        json!([]),
    )?;
    Ok((!v.is_null()).then_some(v))
}

/// The page's own `safetywords.js` gives PROTOCOL.md's test vector, the
/// same as the Rust implementations.
fn check_page_vector(x: &Browser) -> Result<()> {
    let (nc, nr) = vector_nonces();
    let v = x.execute_async(
        "const [nc, nr, done] = arguments;
         import('/safetywords.js').then(async (m) => {
           const c = Uint8Array.from(nc), r = Uint8Array.from(nr);
           done({commit: await m.commitment(c),
                 words: await m.deriveWords('sha-256 01:23:45', 'sha-256 ab:cd:ef', c, r)});
         }).catch((e) => done({error: String(e)}));",
        json!([nc.to_vec(), nr.to_vec()]),
    )?;
    ensure!(
        v["words"] == json!(VECTOR_WORDS)
            && v["commit"]
                == json!("630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"),
        "{}: the page's safetywords.js gives {v} for PROTOCOL.md's test vector",
        x.name
    );
    Ok(())
}
