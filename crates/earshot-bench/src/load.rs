//! What the load workers (`match-worker`, `soak-worker`, `relay-worker`)
//! share: their runtime, their command lines from stdin, opening many
//! greeted sockets, and a task per user that answers each step.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{self, Protocol, Ws};
use crate::worker::say;

/// Runs a worker's body on a single-threaded runtime (one worker process
/// is one core's worth of client); an error is also told to the parent.
pub fn block_on(body: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(body);
    if let Err(e) = &result {
        say(&format!("error {e:#}"));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The parent's command lines; the channel closes when stdin ends.
pub fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
            line.clear();
        }
    });
    rx
}

/// Where client `i` of a worker connects, and as whom.
pub struct Fanout {
    pub protocol: Protocol,
    /// Server URLs; clients go round-robin over them by global index.
    pub urls: Vec<String>,
    /// Global index of this worker's first client.
    pub first: usize,
    pub source: Ipv4Addr,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

impl Fanout {
    /// The server URL of client `i` (PeerJS: with its id).
    pub fn url(&self, i: usize) -> String {
        let global = self.first + i;
        self.protocol
            .url(&self.urls[global % self.urls.len()], &peer_id(global))
    }

    /// Opens `count` greeted sockets, in index order.
    pub async fn open_all(self: &Arc<Self>, count: usize) -> anyhow::Result<Vec<Ws>> {
        ensure!(self.source.is_loopback(), "--source must be in 127.0.0.0/8");
        ensure!(!self.urls.is_empty(), "no server URL");
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for i in 0..count {
            let (me, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire().await.expect("never closed");
                let ws = client::open(me.protocol, &me.url(i), me.source, me.connect_timeout).await;
                (i, ws)
            });
        }
        let mut opened: Vec<Option<Ws>> = (0..count).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (i, ws) = done.context("a connection task failed")?;
            match ws {
                Ok(ws) => opened[i] = Some(ws),
                Err(e) => bail!("client {i}: {e:#}"),
            }
        }
        Ok(opened
            .into_iter()
            .map(|ws| ws.expect("every task reported"))
            .collect())
    }
}

/// The PeerJS id of client `global` (also what a peer addresses it by).
pub fn peer_id(global: usize) -> String {
    format!("c{global}")
}

/// Where a user task reports each step's outcome.
pub type Done<T> = mpsc::UnboundedSender<Result<T, String>>;

/// Opens `count` greeted sockets and runs `user(i, socket, steps, done)` as
/// a task on each, then tells the parent `ready`. Returns where to post
/// steps (starting at `initial`) and where the users answer.
pub async fn start_users<S, T, Fut>(
    fanout: &Arc<Fanout>,
    count: usize,
    initial: S,
    mut user: impl FnMut(usize, Ws, watch::Receiver<S>, Done<T>) -> Fut,
) -> anyhow::Result<(watch::Sender<S>, mpsc::UnboundedReceiver<Result<T, String>>)>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let sockets = fanout.open_all(count).await?;
    let (step_tx, step_rx) = watch::channel(initial);
    let (done_tx, done) = mpsc::unbounded_channel();
    for (i, ws) in sockets.into_iter().enumerate() {
        tokio::spawn(user(i, ws, step_rx.clone(), done_tx.clone()));
    }
    say(&format!("ready {count}"));
    Ok((step_tx, done))
}

/// One answer from each of `count` users, or the first error.
pub async fn answers<T>(
    done: &mut mpsc::UnboundedReceiver<Result<T, String>>,
    count: usize,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        match done.recv().await {
            Some(Ok(answer)) => out.push(answer),
            Some(Err(e)) => bail!("{e}"),
            None => bail!("every user ended"),
        }
    }
    Ok(out)
}
