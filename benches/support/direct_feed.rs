//! The loopback bench's direct feed: a minimal Binance combined-stream
//! endpoint for klinegate's upstream that acknowledges every control request
//! (`{"result":null,"id":N}`), answers pings, and lets the bench write
//! pre-encoded kline frames straight into the socket (no queue, no polling
//! thread in between), like the raw servers' control trigger.
//!
//! Owns that endpoint's thread and its one connection. Never builds frames
//! (the bench hands them over encoded), never reaches beyond 127.0.0.1; every
//! blocking read has a timeout.

use crate::support::{scan_server_frames, server_text_frame};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};


/// A minimal Binance combined-stream endpoint for klinegate's upstream: it
/// acknowledges every control request (`{"result":null,"id":N}`), answers
/// pings, and lets the bench write pre-encoded kline frames straight into the
/// socket (no queue, no polling thread in between). One connection at a time.
pub struct DirectFeed {
    addr: SocketAddr,
    writer: Arc<Mutex<Option<TcpStream>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DirectFeed {
    pub fn start() -> io::Result<DirectFeed> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let writer = Arc::new(Mutex::new(None));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (writer, requests, stop) = (writer.clone(), requests.clone(), stop.clone());
            thread::Builder::new()
                .name("direct-feed".into())
                .spawn(move || direct_feed_loop(listener, &writer, &requests, &stop))?
        };
        Ok(DirectFeed { addr, writer, requests, stop, thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// A SUBSCRIBE naming `stream` arrived (and was acknowledged).
    pub fn wait_subscribed(&self, stream: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let seen = self.requests.lock().map(|r| r.iter().any(|m| m.contains("SUBSCRIBE") && m.contains(stream)));
            if seen.unwrap_or(false) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Writes one encoded frame to the connected klinegate (dropped if none).
    pub fn push(&self, frame: &[u8]) {
        if let Ok(mut w) = self.writer.lock() {
            if let Some(s) = w.as_mut() {
                let _ = s.write_all(frame);
            }
        }
    }
}

impl Drop for DirectFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn direct_feed_loop(
    listener: TcpListener,
    writer: &Mutex<Option<TcpStream>>,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut chunk = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((s, _)) = listener.accept() {
            if let Some(stream) = direct_feed_handshake(s) {
                if let (Ok(w), Ok(mut slot)) = (stream.try_clone(), writer.lock()) {
                    *slot = Some(w);
                    conn = Some((stream, Vec::new()));
                }
            }
        }
        let Some((stream, inbox)) = conn.as_mut() else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        match stream.read(&mut chunk) {
            Ok(0) => conn = None,
            Ok(got) => {
                inbox.extend_from_slice(&chunk[..got]);
                let used = scan_client_frames(inbox, |opcode, payload| {
                    let reply = match opcode {
                        1 => {
                            let text = String::from_utf8_lossy(&payload).into_owned();
                            let reply = request_id(&text).map(|id| format!(r#"{{"result":null,"id":{id}}}"#));
                            if let Ok(mut r) = requests.lock() {
                                r.push(text);
                            }
                            reply.map(|r| server_text_frame(r.as_bytes()))
                        }
                        9 => {
                            let mut pong = server_text_frame(&payload);
                            pong[0] = 0x8a;
                            Some(pong)
                        }
                        _ => None,
                    };
                    if let (Some(bytes), Ok(mut w)) = (reply, writer.lock()) {
                        if let Some(s) = w.as_mut() {
                            let _ = s.write_all(&bytes);
                        }
                    }
                });
                inbox.drain(..used);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => conn = None,
        }
    }
}

fn direct_feed_handshake(s: TcpStream) -> Option<TcpStream> {
    s.set_nonblocking(false).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let stream = tungstenite::accept(s).ok()?.into_inner();
    stream.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
    Some(stream)
}

/// `"id":N` of a control request.
fn request_id(text: &str) -> Option<u64> {
    let at = text.find("\"id\":")? + 5;
    let digits: String = text[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Splits masked client frames out of `data`, unmasking each payload; returns
/// the bytes consumed.
fn scan_client_frames(data: &[u8], mut on_frame: impl FnMut(u8, Vec<u8>)) -> usize {
    let mut spans = Vec::new();
    let used = scan_server_frames(data, |opcode, payload| spans.push((opcode, payload.to_vec())));
    // `scan_server_frames` skips the mask key; find it again to unmask.
    let mut at = 0;
    for (opcode, mut payload) in spans {
        let b1 = data[at + 1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mut header = 2 + ext;
        if b1 & 0x80 != 0 {
            let key = [data[at + header], data[at + header + 1], data[at + header + 2], data[at + header + 3]];
            header += 4;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        at += header + payload.len();
        on_frame(opcode, payload);
    }
    used
}
