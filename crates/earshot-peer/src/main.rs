//! `earshot-peer`: the command line of the headless peer. Parses its flags,
//! runs one [`Peer`] for `--duration`, prints events as they come and the
//! statistics at the end (as JSON lines with `--json`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use earshot_peer::audio::{self, Source};
use earshot_peer::{Peer, PeerConfig, PeerEvent, PeerStats};

/// A headless Earshot client: meets a stranger or joins a room, sends a tone
/// or a WAV file, and reports what it heard.
#[derive(Parser, Debug)]
#[command(name = "earshot-peer", version)]
struct Args {
    /// The Earshot server: http://host:port/ or ws://host:port/ws.
    #[arg(long, value_name = "URL")]
    server: String,
    /// Talk to strangers.
    #[arg(long, conflicts_with = "room", required_unless_present = "room")]
    strangers: bool,
    /// Shared interests for the stranger queue, comma separated.
    #[arg(long, value_delimiter = ',', requires = "strangers")]
    interests: Vec<String>,
    /// Join this room (the name in /r/NAME).
    #[arg(long, value_name = "NAME")]
    room: Option<String>,
    /// The passphrase of a locked room.
    #[arg(long, requires = "room")]
    passphrase: Option<String>,
    /// Lock the room with --passphrase once in it.
    #[arg(long, requires = "passphrase")]
    lock: bool,
    /// Send this WAV file (16-bit PCM, mono or stereo; looped).
    #[arg(long, value_name = "FILE", conflicts_with = "tone")]
    play: Option<PathBuf>,
    /// Send a sine tone of this frequency (default 440 Hz).
    #[arg(long, value_name = "HZ")]
    tone: Option<f64>,
    /// Write what the first remote sends to this WAV file (48 kHz mono).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Send this chat line to everyone once the chat channel opens.
    #[arg(long, value_name = "TEXT")]
    chat: Option<String>,
    /// How long to run, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    duration: f64,
    /// Print events and the final statistics as JSON lines.
    #[arg(long)]
    json: bool,
    /// The UDP address for WebRTC; its IP is the candidate offered.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

// One worker drives the peer while the main task prints.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("earshot-peer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if !(args.duration > 0.0 && args.duration <= 86_400.0) {
        bail!("--duration must be between 0 and 86400 seconds");
    }
    let source = match (&args.play, args.tone) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Source::Samples(
                audio::read_wav(&bytes)
                    .with_context(|| format!("cannot use {}", path.display()))?,
            )
        }
        (None, Some(hz)) if (20.0..=20_000.0).contains(&hz) => Source::Tone(hz),
        (None, Some(_)) => bail!("--tone must be between 20 and 20000 Hz"),
        (None, None) => Source::Tone(440.0),
    };
    let config = PeerConfig {
        bind: args.bind,
        source,
        record: args.record.is_some(),
    };
    let mut peer = Peer::connect(&args.server, config).await?;
    if let Some(room) = &args.room {
        peer.join_room(room, args.passphrase.as_deref()).await?;
    } else {
        let interests: Vec<&str> = args.interests.iter().map(String::as_str).collect();
        peer.search(&interests)?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    loop {
        let event = tokio::select! {
            e = peer.next_event() => e,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        print_event(&event, args.json);
        match &event {
            PeerEvent::ChatOpen { .. } => {
                if let Some(text) = &args.chat {
                    peer.send_chat(text).await?;
                }
            }
            PeerEvent::RoomJoined { .. } if args.lock => {
                let pass = args
                    .passphrase
                    .as_deref()
                    .expect("clap requires it with --lock");
                peer.lock_room(pass).await?;
            }
            PeerEvent::Error { code, .. } => {
                if let Some(why) = fatal(code) {
                    bail!("{why}");
                }
            }
            _ => {}
        }
    }
    let stats = peer.stats().await?;
    if let Some(path) = &args.record {
        let samples = peer.recording().await?.unwrap_or_default();
        std::fs::write(path, audio::wav_bytes(&samples))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    peer.end()?;
    print_stats(&stats, args.json);
    Ok(())
}

/// A person's explanation of an error that ends the run.
fn fatal(code: &str) -> Option<&'static str> {
    Some(match code {
        "passphrase_required" => "this room is locked: give its --passphrase",
        "wrong_passphrase" => "wrong passphrase for this room",
        "room_full" => "this room is full",
        "bad_room_name" => {
            "bad room name: 3 to 64 of a-z, 0-9 and -, not starting or ending with -"
        }
        "banned" => {
            "this address was reported by several people and may not meet strangers for a while"
        }
        "removed" => "the members of this room removed you",
        "bad_interests" => "bad --interests: at most 5, each 1-24 letters, digits, spaces or -",
        _ => return None,
    })
}

fn print_event(event: &PeerEvent, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(event).expect("events serialize")
        );
        return;
    }
    match event {
        PeerEvent::Error {
            code,
            message,
            retry_after_ms,
        } => match retry_after_ms {
            Some(ms) => println!(
                "server error {code}: {message} (retry in {:.1} s)",
                *ms as f64 / 1000.0
            ),
            None => println!("server error {code}: {message}"),
        },
        PeerEvent::Chat { remote, text } => println!("chat from {remote:?}: {text}"),
        other => println!("{other:?}"),
    }
}

fn print_stats(stats: &PeerStats, json: bool) {
    if json {
        println!("{}", serde_json::json!({"event": "stats", "stats": stats}));
        return;
    }
    println!("{} connection(s)", stats.connections.len());
    for c in &stats.connections {
        let hz = c
            .frequency_hz
            .map_or("-".to_string(), |f| format!("{f:.0} Hz"));
        println!(
            "  {:?}: connected {}, first audio after {} ms, {} packets / {} bytes in, {} packets out, \
             peak level {:.3}, tone {hz}, rtt {} ms, chat {} in / {} out",
            c.remote.expect("every connection has a remote"),
            c.connected,
            c.first_audio_ms.map_or("-".into(), |v| v.to_string()),
            c.packets_received,
            c.bytes_received,
            c.packets_sent,
            c.peak_level,
            c.rtt_ms.map_or("-".into(), |v| format!("{v:.1}")),
            c.chats_received,
            c.chats_sent,
        );
    }
}
