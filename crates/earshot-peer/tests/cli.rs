//! The `earshot-peer` command line through the real `earshot` binary: two
//! processes meet as strangers, one sending a tone and the other a WAV file,
//! chat, and print JSON events and statistics; the recording holds the other
//! side's tone. And the errors a person sees. Loopback candidates only (the
//! default `--bind 127.0.0.1:0`).

mod common;

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, ensure};
use common::support::harness::{SERVER_ARGS, STOP};
use common::support::server::Server;
use common::support::{TempDir, earshot_binary};
use earshot_peer::audio;
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_earshot-peer");

fn run(args: &[&str]) -> Result<Output> {
    Ok(Command::new(PEER)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// The JSON lines of a run's stdout.
fn json_lines(out: &Output) -> Result<Vec<Value>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// A 24 kHz stereo WAV file of a 660 Hz tone: read, mixed down and resampled.
fn tone_wav(hz: f64) -> Vec<u8> {
    let mono: Vec<i16> = (0..24_000)
        .map(|i| {
            ((2.0 * std::f64::consts::PI * hz * f64::from(i) / 24_000.0).sin() * 8000.0) as i16
        })
        .collect();
    let mut wav = audio::wav_bytes(&mono.iter().flat_map(|&s| [s, s]).collect::<Vec<_>>());
    wav[22] = 2; // channels
    wav[24..28].copy_from_slice(&24_000u32.to_le_bytes());
    wav
}

#[test]
fn cli_peers_meet_chat_and_report_statistics() -> Result<()> {
    let mut server = Server::start(&earshot_binary(), SERVER_ARGS)?;
    let dir = TempDir::new("earshot-peer-cli")?;
    let wav = dir.path().join("tone.wav");
    std::fs::write(&wav, tone_wav(660.0))?;
    let recording = dir.path().join("heard.wav");
    let (url, wav_s, rec_s) = (
        server.url.clone(),
        wav.display().to_string(),
        recording.display().to_string(),
    );
    let a = {
        let url = url.clone();
        std::thread::spawn(move || {
            run(&[
                "--server",
                &url,
                "--strangers",
                "--tone",
                "440",
                "--chat",
                "from A",
                "--duration",
                "6",
                "--json",
                "--record",
                &rec_s,
            ])
        })
    };
    let b = run(&[
        "--server",
        &url,
        "--strangers",
        "--play",
        &wav_s,
        "--chat",
        "from B",
        "--duration",
        "6",
        "--json",
    ])?;
    let a = a.join().expect("the thread running A does not panic")?;
    for (name, out, hears, chat) in [("A", &a, 660.0, "from B"), ("B", &b, 440.0, "from A")] {
        ensure!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(out)?;
        let has = |event: &str| lines.iter().any(|l| l["event"] == event);
        ensure!(
            has("matched") && has("connected") && has("audio_started"),
            "{name}: {lines:?}"
        );
        ensure!(
            lines
                .iter()
                .any(|l| l["event"] == "chat" && l["text"] == chat),
            "{name} did not print the chat {chat:?}: {lines:?}"
        );
        let stats = lines
            .iter()
            .find(|l| l["event"] == "stats")
            .context("no stats line")?;
        let c = &stats["stats"]["connections"][0];
        ensure!(c["packets_received"].as_u64() > Some(100), "{name}: {c}");
        let f = c["frequency_hz"].as_f64().context("no frequency")?;
        ensure!(
            (f - hears).abs() <= 15.0,
            "{name} heard {f} Hz, not {hears}"
        );
        println!(
            "cli {name}: first audio after {} ms, {} packets, {f:.0} Hz",
            c["first_audio_ms"], c["packets_received"]
        );
    }
    let heard = audio::read_wav(&std::fs::read(&recording)?)?;
    ensure!(heard.len() > 48_000, "A recorded {} samples", heard.len());
    let f = audio::dominant_frequency(&heard[heard.len() - 24_000..]).context("silence")?;
    ensure!((f - 660.0).abs() <= 15.0, "A recorded {f} Hz");
    server.stop(STOP)?;
    Ok(())
}

#[test]
fn cli_errors_speak_to_a_person() -> Result<()> {
    let out = run(&["--server", "http://127.0.0.1:9/", "--strangers"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("cannot reach the server"),
        "{err}"
    );

    let out = run(&["--server", "ftp://x/", "--strangers"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("bad server URL"),
        "{err}"
    );

    let mut server = Server::start(&earshot_binary(), SERVER_ARGS)?;
    let out = run(&[
        "--server",
        &server.url,
        "--room",
        "no_underscores",
        "--duration",
        "10",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("bad room name"),
        "{err}"
    );

    let out = run(&[
        "--server",
        &server.url,
        "--strangers",
        "--play",
        "/nonexistent.wav",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("cannot read"),
        "{err}"
    );
    server.stop(STOP)?;
    Ok(())
}
