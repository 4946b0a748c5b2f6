//! Latency in user space, for figures in round trips (the kernel here has no
//! `netem`): a TCP proxy and a UDP proxy on 127.0.0.1 that hold everything
//! they pass on, each way, for a delay that can change between rounds.
//!
//! The delay is the same for every packet of a direction, so a FIFO queue
//! per direction keeps them in order and on time; a packet queued just
//! before the delay changes may leave early or late, which is why a
//! scenario changes it only between calls. Both stop on drop.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often idle threads look at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// The delay (one way, microseconds) and the stop flag shared by a proxy's threads.
#[derive(Clone, Default)]
struct Shared {
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn due(&self) -> Instant {
        Instant::now() + Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Sleeps until `due` (a delay of zero passes at once).
fn wait_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

/// A TCP proxy from a local port to `upstream`, holding every chunk it
/// passes on, each way, for the delay.
pub struct DelayedTcp {
    pub addr: SocketAddr,
    shared: Shared,
}

impl DelayedTcp {
    pub fn start(upstream: SocketAddr) -> Result<DelayedTcp> {
        let listener = TcpListener::bind("127.0.0.1:0").context("delayed TCP: bind")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let s = shared.clone();
        thread::spawn(move || {
            while !s.stopped() {
                match listener.accept() {
                    Ok((client, _)) => {
                        let s = s.clone();
                        thread::spawn(move || {
                            let _ = tcp_pair(client, upstream, s);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(TICK),
                }
            }
        });
        Ok(DelayedTcp { addr, shared })
    }

    /// The delay each way from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayedTcp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn tcp_pair(client: TcpStream, upstream: SocketAddr, s: Shared) -> Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TICK))?;
    }
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let s1 = s.clone();
    thread::spawn(move || tcp_direction(client, s2, s1));
    tcp_direction(server, c2, s);
    Ok(())
}

/// Reads `from`, and writes what it read to `to` once the delay has passed;
/// an end of stream is passed on as a shutdown, just as late.
fn tcp_direction(mut from: TcpStream, mut to: TcpStream, s: Shared) {
    let (tx, rx) = channel::<(Instant, Option<Vec<u8>>)>();
    let writer = thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            wait_until(due);
            match chunk {
                Some(bytes) if to.write_all(&bytes).is_ok() => {}
                _ => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send((s.due(), Some(buf[..n].to_vec()))).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if s.stopped() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = tx.send((s.due(), None));
    let _ = writer.join();
}

/// A UDP proxy from a local port to `upstream`: each client address gets a
/// socket of its own towards `upstream` (so the server tells clients apart
/// as it would without the proxy), and every datagram waits for the delay,
/// each way.
pub struct DelayedUdp {
    pub addr: SocketAddr,
    shared: Shared,
}

type Datagram = (Instant, Arc<UdpSocket>, Option<SocketAddr>, Vec<u8>);

impl DelayedUdp {
    pub fn start(upstream: SocketAddr) -> Result<DelayedUdp> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").context("delayed UDP: bind")?);
        front.set_read_timeout(Some(TICK))?;
        let addr = front.local_addr()?;
        let shared = Shared::default();
        let (tx, rx) = channel::<Datagram>();
        let s = shared.clone();
        thread::spawn(move || udp_sender(rx, s));
        let s = shared.clone();
        thread::spawn(move || {
            let sockets: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>> = Mutex::default();
            let mut buf = vec![0u8; 65536];
            while !s.stopped() {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let mut map = sockets.lock().unwrap_or_else(|e| e.into_inner());
                let back = match map.get(&client) {
                    Some(back) => back.clone(),
                    None => {
                        let Ok(back) = udp_back(upstream, client, &front, &tx, &s) else {
                            continue;
                        };
                        map.insert(client, back.clone());
                        back
                    }
                };
                drop(map);
                let _ = tx.send((s.due(), back, None, buf[..n].to_vec()));
            }
        });
        Ok(DelayedUdp { addr, shared })
    }

    /// The delay each way from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayedUdp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The socket towards `upstream` for `client`, and the thread that passes
/// what comes back to `client` through the front socket, delayed.
fn udp_back(
    upstream: SocketAddr,
    client: SocketAddr,
    front: &Arc<UdpSocket>,
    tx: &Sender<Datagram>,
    s: &Shared,
) -> Result<Arc<UdpSocket>> {
    let back = UdpSocket::bind("127.0.0.1:0")?;
    back.connect(upstream)?;
    back.set_read_timeout(Some(TICK))?;
    let back = Arc::new(back);
    let (reader, front, tx, s) = (back.clone(), front.clone(), tx.clone(), s.clone());
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !s.stopped() {
            if let Ok(n) = reader.recv(&mut buf)
                && tx
                    .send((s.due(), front.clone(), Some(client), buf[..n].to_vec()))
                    .is_err()
            {
                return;
            }
        }
    });
    Ok(back)
}

/// Sends every datagram when it is due: to its client through the front
/// socket, or upstream through the client's own socket.
fn udp_sender(rx: Receiver<Datagram>, s: Shared) {
    while !s.stopped() {
        match rx.recv_timeout(TICK) {
            Ok((due, socket, to, bytes)) => {
                wait_until(due);
                let _ = match to {
                    Some(to) => socket.send_to(&bytes, to),
                    None => socket.send(&bytes),
                };
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
