//! `earshot`: parse flags, set up logging, serve until SIGINT or SIGTERM.

#![forbid(unsafe_code)]

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use earshot_server::config::{Args, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::try_from(&args)?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Listen for signals before anyone can know we are up.
    let shutdown = shutdown_signal()?;
    let running = earshot_server::start(settings).await?;
    let stun = match running.stun_addr {
        Some(addr) => format!("STUN on udp {addr}"),
        None => "no embedded STUN".to_string(),
    };
    let turn = match (running.turn_addr, running.app.settings.turn.unavailable) {
        (Some(addr), _) => match running.turn_tls_addr {
            Some(tls) => format!("TURN on udp and tcp {addr}, and over tls on {tls}"),
            None => format!("TURN on udp and tcp {addr}"),
        },
        (None, Some(why)) => format!("no TURN, so no \"hide my IP\": {why}"),
        (None, None) => "no embedded TURN".to_string(),
    };
    // The first stdout line names the URL: tests and scripts read it. A
    // closed stdout is no reason to stop serving.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Earshot is running at {} ({stun}; {turn})",
        running.url()
    );
    let _ = writeln!(
        out,
        "Open it in two browser tabs to talk to yourself. Ctrl-C stops it."
    );
    if let (Some(tls), earshot_server::config::TlsSetup::SelfSigned { .. }) =
        (&running.tls, &running.app.settings.tls)
    {
        let _ = writeln!(
            out,
            "Self-signed certificate; browsers will warn. Its SHA-256 fingerprint is\n  {}",
            tls.fingerprint()
        );
    }
    let _ = out.flush();
    drop(out);
    shutdown.await;
    tracing::info!("shutting down; calls in progress carry on peer to peer");
    running.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
