//! A TCP proxy in front of a host's sshd, to make the network misbehave:
//! cut the connection after some bytes, add latency each way, or refuse new
//! connections while the open ones go on (a host that stopped letting
//! anyone in).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to the connections through it.
#[derive(Clone, Debug)]
pub enum Link {
    /// Drops every connection once the client has sent this many bytes.
    CutAfter(u64),
    /// Delays every chunk this long, each way.
    Delay(Duration),
    /// Delays as `Delay`, and lets at most `bytes_per_second` through each
    /// way: a slow uplink.
    Shaped { delay: Duration, bytes_per_second: u64 },
    /// Delays as `Delay`; what the client sends goes through `uplink`,
    /// which proxies may share: one deployer's uplink to many hosts.
    Uplink { delay: Duration, uplink: Arc<Uplink> },
}

/// A client's uplink shared by the proxies given it: at most
/// `bytes_per_second` for all of them together, and a count of the bytes.
#[derive(Debug)]
pub struct Uplink {
    bytes_per_second: u64,
    line_free: Mutex<Instant>,
    sent: AtomicU64,
}

impl Uplink {
    pub fn new(bytes_per_second: u64) -> Arc<Uplink> {
        Arc::new(Uplink { bytes_per_second, line_free: Mutex::new(Instant::now()), sent: AtomicU64::new(0) })
    }

    /// The bytes clients sent through it so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// When `n` bytes that arrived now have gone out on the line.
    fn send(&self, n: usize) -> Instant {
        self.sent.fetch_add(n as u64, Ordering::SeqCst);
        let mut free = self.line_free.lock().unwrap();
        *free = (*free).max(Instant::now()) + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
        *free
    }
}

/// Listens on a free loopback port and forwards to `upstream`.
pub struct Proxy {
    pub port: u16,
    stopping: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16, link: Link) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopping = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let (stop, refuse) = (stopping.clone(), refusing.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed before a word
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                forward(client, server, link.clone());
            }
        });
        Proxy { port, stopping, refusing }
    }

    /// From now on, new connections are closed at once.
    pub fn refuse_new_connections(&self) {
        self.refusing.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn forward(client: TcpStream, server: TcpStream, link: Link) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    match link {
        Link::CutAfter(limit) => {
            let (c3, s3) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || {
                pump(client, server, limit);
                // The cut: both sides at once, as a dropped link looks.
                let _ = c3.shutdown(Shutdown::Both);
                let _ = s3.shutdown(Shutdown::Both);
            });
            thread::spawn(move || pump(s2, c2, u64::MAX));
        }
        Link::Delay(delay) => {
            thread::spawn(move || delayed(client, server, delay, Line::Free));
            thread::spawn(move || delayed(s2, c2, delay, Line::Free));
        }
        Link::Shaped { delay, bytes_per_second } => {
            thread::spawn(move || delayed(client, server, delay, Line::Own(Uplink::new(bytes_per_second))));
            thread::spawn(move || delayed(s2, c2, delay, Line::Own(Uplink::new(bytes_per_second))));
        }
        Link::Uplink { delay, uplink } => {
            thread::spawn(move || delayed(client, server, delay, Line::Own(uplink)));
            thread::spawn(move || delayed(s2, c2, delay, Line::Free));
        }
    }
}

/// Copies `from` to `to` until EOF or `limit` bytes.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: u64) {
    let mut buf = vec![0; 64 * 1024];
    let mut moved = 0u64;
    while moved < limit {
        let want = (limit - moved).min(buf.len() as u64) as usize;
        match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                moved += n as u64;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The line a direction of a connection goes out on.
enum Line {
    Free,
    Own(Arc<Uplink>),
}

/// Copies `from` to `to`, each chunk leaving `delay` after it went out on
/// `line`.
fn delayed(mut from: TcpStream, mut to: TcpStream, delay: Duration, line: Line) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        let out = match &line {
            Line::Free => Instant::now(),
            Line::Own(uplink) => uplink.send(n),
        };
        if tx.send((out + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}
