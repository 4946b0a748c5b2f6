//! One pipelined connection to one Redis server (a standalone server, or
//! one primary of a cluster).
//!
//! [`Link::send`] writes a command into the connection's queue at once and
//! hands back its reply as a future: commands go out, and are run by Redis,
//! in the order they were sent on one link, with no wait for the replies of
//! earlier ones. The driver task writes whatever is queued in one write and
//! reads replies as they come, matching them to commands in order, so a
//! busy link costs Redis one read and one write for many commands.
//!
//! A link that breaks fails every command in flight and those sent while
//! it is down, and connects again in the background; each connection gets
//! a new [`Link::generation`], so the backplane can tell that what it wrote
//! on an earlier one may be gone (a restarted Redis). Every connection
//! starts by loading the backplane's scripts, before any command sent on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

use super::resp::{self, Cmd, Value};

/// How long connecting (with its set-up commands) and any one reply may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broken link waits before connecting again.
const RETRY: Duration = Duration::from_millis(200);
/// Most bytes written in one go.
const BATCH: usize = 256 * 1024;

/// Where a link connects, and how it logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: Addr,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `SELECT`ed after connecting (standalone only; a cluster has one).
    pub db: i64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // May hold a password: print where, never how.
        write!(f, "{:?}", self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not connected, or the connection broke before the reply.
    #[error("no connection to Redis")]
    Down,
    /// No reply within [`TIMEOUT`]: the connection is dropped.
    #[error("Redis did not answer in time")]
    Timeout,
}

struct Job {
    bytes: Vec<u8>,
    reply: oneshot::Sender<Value>,
}

struct Shared {
    target: Target,
    /// Scripts loaded on every new connection (`SCRIPT LOAD`).
    scripts: Vec<String>,
    up: AtomicBool,
    generation: AtomicU64,
    /// Asks the driver to drop the connection (a reply timed out).
    reset: Notify,
    /// Commands sent after the link came up; `None` while it is down.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

/// A handle on one connection; clones share it.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

impl Link {
    /// A link to `target`, connecting in the background until `stop`.
    pub fn open(
        target: Target,
        scripts: Vec<String>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Link {
        let shared = Arc::new(Shared {
            target,
            scripts,
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            reset: Notify::new(),
            queue: Mutex::new(None),
        });
        tokio::spawn(drive(shared.clone(), stop));
        Link { shared }
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Counts connections made: a new one may face a Redis that lost
    /// everything.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Queues `cmd` now (so commands on one link run in the order sent);
    /// the future is its reply.
    pub fn send(&self, cmd: &Cmd) -> impl Future<Output = Result<Value, LinkError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|q| {
                q.send(Job {
                    bytes: cmd.pack(),
                    reply: tx,
                })
                .is_ok()
            });
        let shared = self.shared.clone();
        async move {
            if !queued {
                return Err(LinkError::Down);
            }
            match tokio::time::timeout(TIMEOUT, rx).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(_)) => Err(LinkError::Down),
                Err(_) => {
                    shared.reset.notify_waiters();
                    Err(LinkError::Timeout)
                }
            }
        }
    }

    /// Waits (bounded) until the link is up.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A connection's byte stream (TCP or a Unix socket).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Connects over TCP or a Unix socket.
async fn dial(addr: &Addr) -> std::io::Result<Box<dyn Stream>> {
    Ok(match addr {
        Addr::Tcp(host, port) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
        #[cfg(unix)]
        Addr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        #[cfg(not(unix))]
        Addr::Unix(_) => {
            return Err(std::io::Error::other("no Unix sockets here"));
        }
    })
}

/// Sends one command and reads its reply, on a connection not yet shared.
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cmd: &Cmd,
) -> std::io::Result<Value> {
    stream.write_all(&cmd.pack()).await?;
    read_reply(stream, buf).await
}

/// Reads one reply, keeping what follows it in `buf`.
pub async fn read_reply<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Value> {
    loop {
        match resp::decode(buf) {
            Ok(Some((v, used))) => {
                buf.drain(..used);
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Connects and logs in (`AUTH`, `SELECT`): a stream ready for commands.
pub async fn connect(target: &Target, select: bool) -> std::io::Result<(Box<dyn Stream>, Vec<u8>)> {
    let mut stream = dial(&target.addr).await?;
    let mut buf = Vec::new();
    if let Some(password) = &target.password {
        let mut auth = Cmd::new("AUTH");
        if let Some(user) = &target.username {
            auth.arg(user.as_str());
        }
        auth.arg(password.as_str());
        check(ask(&mut stream, &mut buf, &auth).await?)?;
    }
    if select && target.db != 0 {
        let mut c = Cmd::new("SELECT");
        c.arg(target.db);
        check(ask(&mut stream, &mut buf, &c).await?)?;
    }
    Ok((stream, buf))
}

fn check(v: Value) -> std::io::Result<Value> {
    match v {
        Value::Error(e) => Err(std::io::Error::other(format!("Redis refused: {e}"))),
        v => Ok(v),
    }
}

async fn drive(shared: Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let session = async {
            let (mut stream, buf) = tokio::time::timeout(TIMEOUT, setup(&shared))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out")
                })??;
            let (tx, rx) = mpsc::unbounded_channel();
            *shared.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            shared.generation.fetch_add(1, Ordering::AcqRel);
            shared.up.store(true, Ordering::Release);
            let result = serve(&mut stream, buf, rx, &shared.reset).await;
            shared.up.store(false, Ordering::Release);
            *shared.queue.lock().unwrap_or_else(|e| e.into_inner()) = None;
            result
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = session => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, target = ?shared.target, "Redis link down");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Connects, logs in and loads the scripts.
async fn setup(shared: &Shared) -> std::io::Result<(Box<dyn Stream>, Vec<u8>)> {
    let (mut stream, mut buf) = connect(&shared.target, true).await?;
    for script in &shared.scripts {
        let mut c = Cmd::new("SCRIPT");
        c.arg("LOAD").arg(script.as_str());
        check(ask(&mut stream, &mut buf, &c).await?)?;
    }
    Ok((stream, buf))
}

/// Writes queued commands in batches and hands out replies in order, until
/// the connection breaks or a reset is asked for.
async fn serve(
    stream: &mut Box<dyn Stream>,
    mut buf: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    reset: &Notify,
) -> std::io::Result<()> {
    let (mut read, mut write) = tokio::io::split(stream);
    let waiting: Mutex<VecDeque<oneshot::Sender<Value>>> = Mutex::new(VecDeque::new());
    let writer = async {
        let mut out = Vec::with_capacity(4096);
        while let Some(job) = rx.recv().await {
            let push = |job: Job, out: &mut Vec<u8>| {
                out.extend_from_slice(&job.bytes);
                waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(job.reply);
            };
            push(job, &mut out);
            // Let the tasks that are about to send run first: one write,
            // and one read for Redis, carries them all.
            tokio::task::yield_now().await;
            while out.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => push(job, &mut out),
                    Err(_) => break,
                }
            }
            write.write_all(&out).await?;
            out.clear();
            if out.capacity() > BATCH {
                out.shrink_to(4096);
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let reader = async {
        loop {
            let mut at = 0;
            while let Some((v, used)) = resp::decode(&buf[at..]).map_err(std::io::Error::other)? {
                at += used;
                let next = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                match next {
                    // The caller may have given up waiting: fine.
                    Some(tx) => {
                        let _ = tx.send(v);
                    }
                    None => return Err(std::io::Error::other("a reply nobody asked for")),
                }
            }
            buf.drain(..at);
            if read.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
        () = reset.notified() => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "a reply timed out")),
    }
    // Dropping `waiting` fails every command in flight.
}
