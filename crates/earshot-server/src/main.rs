//! `earshot`: parse flags, set up logging, serve until SIGINT or SIGTERM.

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
    let running = earshot_server::start(settings).await?;
    let stun = match running.stun_addr {
        Some(addr) => format!("STUN on udp {addr}"),
        None => "no embedded STUN".to_string(),
    };
    // The first stdout line names the URL: tests and scripts read it.
    println!("Earshot is running at {} ({stun})", running.url());
    println!("Open it in two browser tabs to talk to yourself. Ctrl-C stops it.");
    shutdown_signal().await;
    tracing::info!("shutting down; calls in progress carry on peer to peer");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
