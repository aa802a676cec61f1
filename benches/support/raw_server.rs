//! The loopback bench's raw baselines: a minimal single-threaded mio server
//! (the bench binary re-executed as a child process) that accepts a control
//! connection and N WebSocket clients, then writes each frame the control
//! connection sends to every client and answers with how long that took.
//! Two writers: epoll (one `write` per socket, the baseline klinegate is
//! held to) and io_uring (`uring_send`: the sends of one broadcast in one
//! submission or in batches), chosen by the parent through the environment.
//!
//! Owns spawning the child, its accept/handshake/broadcast loop and the
//! leftover bytes of short writes. Never parses what it sends, never reads
//! from a client after the handshake, never reaches beyond 127.0.0.1.

use crate::uring_send::{UringMode, UringSender};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::{AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Set on the re-executed bench binary: serve as the raw baseline for N clients.
const RAW_SERVER_ENV: &str = "KLINEGATE_BENCH_RAW_SERVER";
/// Which writer that child uses (`Writer::env_value`).
const RAW_WRITER_ENV: &str = "KLINEGATE_BENCH_RAW_WRITER";

/// How the raw server writes one broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// One `write(2)` per socket, woken by mio (epoll).
    Epoll,
    /// `IORING_OP_SEND` entries beside the same mio poll.
    Uring(UringMode),
}

impl Writer {
    /// Short name for tables and logs.
    pub fn label(&self) -> String {
        match self {
            Writer::Epoll => "raw epoll".into(),
            Writer::Uring(m) => {
                let how = m.batch.map_or("one submission".to_string(), |b| format!("batches of {b}"));
                if m.first_direct {
                    format!("uring 1st write + {how}")
                } else {
                    format!("uring {how}")
                }
            }
        }
    }

    fn env_value(&self) -> String {
        match self {
            Writer::Epoll => "epoll".into(),
            Writer::Uring(m) => format!(
                "uring:{}:{}",
                m.batch.map_or("all".to_string(), |b| b.to_string()),
                if m.first_direct { "first" } else { "ring" }
            ),
        }
    }

    fn from_env_value(v: &str) -> Writer {
        let mut parts = v.split(':');
        match parts.next() {
            Some("uring") => {
                let batch = parts.next().and_then(|b| b.parse().ok());
                let first_direct = parts.next() == Some("first");
                Writer::Uring(UringMode { batch, first_direct })
            }
            _ => Writer::Epoll,
        }
    }
}

/// In the re-executed child: serves and returns true; in the bench itself: false.
pub fn serve_if_asked() -> bool {
    let Ok(n) = std::env::var(RAW_SERVER_ENV) else { return false };
    let n: usize = n.parse().unwrap_or(0);
    let writer = Writer::from_env_value(&std::env::var(RAW_WRITER_ENV).unwrap_or_default());
    if let Err(e) = raw_server(n, writer) {
        eprintln!("raw baseline server failed: {e}");
        std::process::exit(1);
    }
    true
}

/// Starts the child serving `n` clients with `writer`; returns it and its address.
pub fn spawn_raw_server(n: usize, writer: Writer) -> io::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(RAW_SERVER_ENV, n.to_string())
        .env(RAW_WRITER_ENV, writer.env_value())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("listen="))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::other(format!("raw server said {line:?}")))?;
    Ok((child, addr))
}

/// Waits up to `timeout` for the child to exit, then kills it.
pub fn wait_child(child: &mut Child, timeout: Duration) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The raw server answers each broadcast with its duration (u64 LE ns);
/// the last `updates` answers are the measured ones.
pub fn read_write_loop_times(control: &mut std::net::TcpStream, updates: usize) -> Vec<f64> {
    let _ = control.set_read_timeout(Some(Duration::from_millis(200)));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(got) = control.read(&mut chunk) {
        if got == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..got]);
        if got < chunk.len() {
            break;
        }
    }
    let all: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64 / 1e6)
        .collect();
    all[all.len().saturating_sub(updates)..].to_vec()
}

struct RawClient {
    stream: mio::net::TcpStream,
    /// Bytes the socket did not take (registered for WRITABLE while non-empty).
    pending: Vec<u8>,
}

const CONTROL: Token = Token(usize::MAX - 1);

/// Accepts a control connection and `n` WebSocket clients (tungstenite
/// server handshake), then on each control message (u32 LE length + one
/// encoded frame) writes those bytes to every client and answers with how
/// long that took (u64 LE ns). Exits when the control connection closes.
/// An io_uring writer that cannot start falls back to epoll, and says so.
fn raw_server(n: usize, writer: Writer) -> io::Result<()> {
    let mut uring = match writer {
        Writer::Epoll => None,
        Writer::Uring(mode) => match UringSender::new(mode, n) {
            Ok(s) => Some((s, mode)),
            Err(e) => {
                eprintln!("note: io_uring unavailable ({e}); this raw server falls back to epoll writes");
                None
            }
        },
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("raw_started listen={}", listener.local_addr()?);
    io::stdout().flush()?;
    let (control, _) = listener.accept()?;
    control.set_nodelay(true)?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let ws = tungstenite::accept(s).map_err(|e| io::Error::other(format!("handshake: {e}")))?;
        let s = ws.into_inner();
        s.set_nonblocking(true)?;
        clients.push(RawClient { stream: mio::net::TcpStream::from_std(s), pending: Vec::new() });
    }
    drop(listener);
    control.set_nonblocking(true)?;
    let mut control = mio::net::TcpStream::from_std(control);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut control, CONTROL, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut inbox: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut scratch = UringScratch { targets: Vec::with_capacity(n), short: Vec::new() };
    loop {
        // io_uring's task work can end a wait early (EINTR): poll again.
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == CONTROL {
                loop {
                    match control.read(&mut chunk) {
                        Ok(0) => return Ok(()),
                        Ok(got) => inbox.extend_from_slice(&chunk[..got]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                while let Some(frame) = take_message(&mut inbox) {
                    let started = Instant::now();
                    match uring.as_mut() {
                        None => broadcast(&poll, &mut clients, &frame),
                        Some((sender, mode)) => {
                            broadcast_uring(&poll, &mut clients, &frame, sender, *mode, &mut scratch)?
                        }
                    }
                    let took = started.elapsed().as_nanos() as u64;
                    // Told after the clock stopped: the answer is not part of the loop.
                    let _ = control.write(&took.to_le_bytes());
                }
            } else if let Some(c) = clients.get_mut(ev.token().0) {
                flush_pending(&poll, c);
            }
        }
    }
}

fn take_message(inbox: &mut Vec<u8>) -> Option<Vec<u8>> {
    if inbox.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes([inbox[0], inbox[1], inbox[2], inbox[3]]) as usize;
    if inbox.len() < 4 + len {
        return None;
    }
    let frame = inbox[4..4 + len].to_vec();
    inbox.drain(..4 + len);
    Some(frame)
}

/// One `write` per socket; what a socket does not take waits for WRITABLE.
fn broadcast(poll: &Poll, clients: &mut [RawClient], frame: &[u8]) {
    for (i, c) in clients.iter_mut().enumerate() {
        write_one(poll, c, i, frame);
    }
}

fn write_one(poll: &Poll, c: &mut RawClient, i: usize, frame: &[u8]) {
    if !c.pending.is_empty() {
        c.pending.extend_from_slice(frame);
        return;
    }
    let wrote = match c.stream.write(frame) {
        Ok(k) => k,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return,
    };
    keep_rest(poll, c, i, &frame[wrote..]);
}

fn keep_rest(poll: &Poll, c: &mut RawClient, i: usize, rest: &[u8]) {
    if !rest.is_empty() {
        c.pending.extend_from_slice(rest);
        let _ = poll.registry().register(&mut c.stream, Token(i), Interest::WRITABLE);
    }
}

/// Reused per broadcast so the io_uring writer allocates nothing per frame.
struct UringScratch {
    targets: Vec<(usize, RawFd)>,
    short: Vec<(usize, usize)>,
}

/// The io_uring writer: clients with bytes still pending queue the frame
/// behind them (order kept); every other client gets one send entry.
fn broadcast_uring(
    poll: &Poll,
    clients: &mut [RawClient],
    frame: &[u8],
    sender: &mut UringSender,
    mode: UringMode,
    scratch: &mut UringScratch,
) -> io::Result<()> {
    scratch.targets.clear();
    scratch.short.clear();
    let mut skip_first = false;
    if mode.first_direct {
        if let Some(c) = clients.first_mut() {
            write_one(poll, c, 0, frame);
            skip_first = true;
        }
    }
    for (i, c) in clients.iter_mut().enumerate().skip(usize::from(skip_first)) {
        if c.pending.is_empty() {
            scratch.targets.push((i, c.stream.as_raw_fd()));
        } else {
            c.pending.extend_from_slice(frame);
        }
    }
    sender.broadcast(&scratch.targets, frame, &mut scratch.short)?;
    for &(i, took) in &scratch.short {
        if let Some(c) = clients.get_mut(i) {
            keep_rest(poll, c, i, &frame[took.min(frame.len())..]);
        }
    }
    Ok(())
}

fn flush_pending(poll: &Poll, c: &mut RawClient) {
    while !c.pending.is_empty() {
        match c.stream.write(&c.pending) {
            Ok(k) if k > 0 => {
                c.pending.drain(..k);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
    let _ = poll.registry().deregister(&mut c.stream);
}
