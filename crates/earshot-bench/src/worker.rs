//! `earshot-bench idle-worker`: one client process of the idle benchmark.
//!
//! Opens `count` WebSockets from `source` (an address in 127.0.0.0/8, so
//! several workers do not share one ephemeral port range), waits for each
//! one's greeting (see [`client`]), then keeps every socket idle: polling the
//! stream is what answers the server's pings.
//!
//! Talks to the parent in lines on stdout:
//!
//! - `ready N`: all N sockets got their welcome;
//! - `lost`: a socket closed before the parent asked to stop;
//! - `error MESSAGE`: setup failed (the worker then exits with status 1).
//!
//! Stdin reaching its end (the parent closed it, or died) means stop: each
//! socket sends a close frame and the worker exits within a few seconds.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol};

/// How long stopping may take: close frames out, the server's replies in.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Config {
    pub protocol: Protocol,
    pub url: String,
    pub count: usize,
    pub source: Ipv4Addr,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

pub fn run(config: Config) -> anyhow::Result<()> {
    if !config.source.is_loopback() {
        bail!("--source must be in 127.0.0.0/8");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(Arc::new(config)));
    if let Err(e) = &result {
        say(&format!("error {e:#}"));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// One line to the parent. A parent that has gone away is not an error here:
/// stdin's end will stop us.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::spawn(move || {
        let mut scratch = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut scratch), Ok(n) if n > 0) {}
        let _ = stop_tx.send(true);
    });

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for n in 0..config.count {
        tasks.spawn(connection(
            n,
            config.clone(),
            permits.clone(),
            done_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(done_tx);

    let mut ready = 0;
    let mut stop = stop_rx.clone();
    while ready < config.count {
        tokio::select! {
            done = done_rx.recv() => match done {
                Some(Ok(())) => ready += 1,
                Some(Err(e)) => bail!("{ready} of {} connected, then: {e}", config.count),
                None => bail!("{ready} of {} connected, then the rest ended", config.count),
            },
            _ = stop.wait_for(|s| *s) => bail!("asked to stop after {ready} of {} connected", config.count),
        }
    }
    say(&format!("ready {ready}"));

    let _ = stop.wait_for(|s| *s).await;
    let _ = timeout(CLOSE_TIMEOUT + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Opens one socket (retrying a little), reports it on `done`, then keeps it
/// idle until it closes or `stop` turns true.
async fn connection(
    n: usize,
    config: Arc<Config>,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = {
        let _permit = permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let [_, _, x, y] = config.source.octets();
        let id = format!("i{x}-{y}-{n}");
        let url = config.protocol.url(&config.url, &id);
        client::open(config.protocol, &url, config.source, config.connect_timeout)
            .await
            .map_err(|e| format!("{e:#}"))
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let _ = done.send(Ok(()));
    drop(done);

    let stopping = loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break false,
                Some(Ok(_)) => {}
            },
            _ = stop.wait_for(|s| *s) => break true,
        }
    };
    if stopping {
        let _ = timeout(CLOSE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    } else if !*stop.borrow() {
        say("lost");
    }
}
