//! permessage-deflate (RFC 7692) on `/ws/market` against the real binary,
//! with a hand-rolled client (tungstenite's client has no deflate): the
//! offer and the answer, compressed client messages (the RFC's "Hello"),
//! compressed catch-up batches and broadcasts shared byte for byte between
//! clients, an uncompressed client beside them, a declined offer, the
//! decompression bomb closed with 1009, and the `ws_deflate_*` metrics.

mod support;

use klinegate::wire::ws::deflate::{inflate, Compressor, ANSWER};
use klinegate::wire::ws::frame::{write_masked_frame, OP_CLOSE, OP_TEXT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const SEC: Duration = Duration::from_secs(1);
const NO_EXCHANGE: &str = "ws://127.0.0.1:9/stream";
const MAX_FRAME: usize = 4096;
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn start() -> Live {
    let max = MAX_FRAME.to_string();
    Live::start(&[
        "--spot-ws-url", NO_EXCHANGE, "--futures-ws-url", NO_EXCHANGE, "--pin", S1, "--ondemand", "false",
        "--enable-dev-api", "true", "--max-frame-bytes", &max,
    ])
}

/// One server frame: its first byte (FIN, RSV1, opcode) and payload.
struct Frame {
    b0: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn compressed(&self) -> bool {
        self.b0 & 0x40 != 0
    }
    fn text(&self) -> String {
        let bytes = if self.compressed() { inflate(&self.payload, 1 << 24).expect("valid deflate") } else { self.payload.clone() };
        String::from_utf8(bytes).expect("UTF-8")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("JSON")
    }
}

struct RawClient {
    s: TcpStream,
    buf: Vec<u8>,
    /// The handshake's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

impl RawClient {
    fn connect(addr: SocketAddr, offer: Option<&str>) -> RawClient {
        let mut s = TcpStream::connect_timeout(&addr, 5 * SEC).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let ext = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let req = format!(
            "GET /ws/market HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut c = RawClient { s, buf: Vec::new(), extensions: None };
        let end = Instant::now() + 5 * SEC;
        let head_end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(Instant::now() < end, "no 101");
            c.fill();
        };
        let head = String::from_utf8(c.buf.drain(..head_end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c.extensions = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")))
            .map(|(_, v)| v.trim().to_string());
        c
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => true,
            Err(_) => false,
        }
    }

    fn send_raw(&mut self, rsv1: bool, opcode: u8, payload: &[u8]) {
        let mut f = Vec::new();
        write_masked_frame(&mut f, true, rsv1, opcode, MASK, payload);
        let _ = self.s.write_all(&f);
    }

    /// A text message, compressed when `compress`.
    fn send_text(&mut self, text: &str, compress: bool) {
        if compress {
            let mut c = Vec::new();
            Compressor::new(6).compress(text.as_bytes(), &mut c);
            self.send_raw(true, OP_TEXT, &c);
        } else {
            self.send_raw(false, OP_TEXT, text.as_bytes());
        }
    }

    /// The next whole server frame, within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let end = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(Frame { b0, payload });
                }
            }
            if Instant::now() >= end || !self.fill() {
                return None;
            }
        }
    }

    /// Frames until one whose JSON satisfies `pred` (or the time is up).
    fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Frame> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(f) = self.next(end.saturating_duration_since(Instant::now())) {
            let done = f.b0 & 0x0f == OP_TEXT && pred(&f.json());
            got.push(f);
            if done {
                break;
            }
        }
        got
    }

    fn close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let end = Instant::now() + timeout;
        while let Some(f) = self.next(end.saturating_duration_since(Instant::now())) {
            if f.b0 & 0x0f == OP_CLOSE {
                let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                return Some((code, String::from_utf8_lossy(&f.payload[2..]).into_owned()));
            }
        }
        None
    }
}

fn candle(t: i64, close: f64) -> Value {
    json!({"candle_time": t, "open": 10.125, "high": 12.375, "low": 9.5625, "close": close, "volume": 3.25})
}

#[test]
fn compressed_catch_up_and_broadcasts_are_shared_and_plain_clients_are_unaffected() {
    let live = start();
    let t0 = 1_700_000_040i64;
    let batch: Vec<Value> = (0..20).map(|k| candle(t0 + 60 * k, 11.0 + k as f64 / 8.0)).collect();
    let (status, body) = live.post("/api/dev/market/ingest/candles_closed_batch", &json!({"series_id": S1, "candles": batch}).to_string());
    assert_eq!(status, 200, "{body}");

    // The browsers' offer: accepted with the one answer we always give.
    let mut a = RawClient::connect(live.addr, Some("permessage-deflate; client_max_window_bits"));
    assert_eq!(a.extensions.as_deref(), Some(ANSWER));
    // RFC 7692 §7.2.3.1: "Hello" compressed is f2 48 cd c9 c9 07 00; as a
    // server frame c1 07 f2 48 cd c9 c9 07 00. Our compressor writes the same.
    let mut hello = Vec::new();
    Compressor::new(1).compress(b"Hello", &mut hello);
    assert_eq!(hello, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let mut server_frame = Vec::new();
    klinegate::wire::ws::frame::write_frame(&mut server_frame, OP_TEXT, true, &hello);
    assert_eq!(server_frame, [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    // Sent by the client (masked), the server inflates it: "Hello" is not JSON.
    a.send_raw(true, OP_TEXT, &hello);
    let answer = a.next(5 * SEC).expect("an answer to Hello");
    assert_eq!(answer.json()["code"], "bad_request", "{}", answer.text());
    // A compressed subscribe: the catch-up batch comes back compressed.
    a.send_text(&json!({"type":"subscribe","series_id":S1,"since":t0 - 60,"supports_batch":true}).to_string(), true);
    let got = a.until(5 * SEC, |f| f["type"] == "candles_batch");
    let page = got.last().expect("a batch");
    assert_eq!(page.json()["candles"].as_array().map(Vec::len), Some(20), "{}", page.text());
    assert!(page.compressed(), "a catch-up page is compressed");
    let ratio = page.payload.len() as f64 / page.text().len() as f64;
    eprintln!("catch-up page of 20 candles: {} B compressed of {} B ({ratio:.2})", page.payload.len(), page.text().len());
    assert!(ratio < 0.5, "{ratio}");

    // Live subscribers: two compressing, one plain, one that offered
    // nothing we can honour (declined: it stays plain).
    let mut b = RawClient::connect(live.addr, Some("permessage-deflate"));
    let mut plain = RawClient::connect(live.addr, None);
    let mut declined = RawClient::connect(live.addr, Some("permessage-deflate; server_max_window_bits=7, x-webkit-deflate-frame"));
    assert_eq!(declined.extensions, None);
    assert_eq!(b.extensions.as_deref(), Some(ANSWER));
    for c in [&mut b, &mut plain, &mut declined] {
        c.send_text(&json!({"type":"subscribe","series_id":S1}).to_string(), false);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t_new = t0 + 60 * 20;
    let (status, body) = live.post("/api/market/ingest/candle_closed", &json!({"series_id": S1, "candle": candle(t_new, 99.125)}).to_string());
    assert_eq!(status, 200, "{body}");
    let is_new = |f: &Value| f["type"] == "candle_closed" && f["candle"]["candle_time"] == t_new;
    let fa = a.until(5 * SEC, is_new).pop().expect("a's frame");
    let fb = b.until(5 * SEC, is_new).pop().expect("b's frame");
    let fp = plain.until(5 * SEC, is_new).pop().expect("plain frame");
    let fd = declined.until(5 * SEC, is_new).pop().expect("declined frame");
    assert!(is_new(&fa.json()) && is_new(&fp.json()));
    assert!(fa.compressed() && fb.compressed(), "{} B frame", fp.payload.len());
    assert_eq!(fa.payload, fb.payload, "one compressed form shared byte for byte");
    assert!(!fp.compressed() && !fd.compressed());
    assert_eq!(fa.text().as_bytes(), &fp.payload[..], "the same frame, inflated");
    assert_eq!(fd.payload, fp.payload);
    eprintln!("closed-candle broadcast: {} B compressed, {} B plain", fa.payload.len(), fp.payload.len());

    assert!(live.metric("klinegate_ws_deflate_frames_compressed_total") >= 2.0);
    assert!(live.metric("klinegate_ws_deflate_cache_hits_total") >= 1.0);
    assert!(live.metric("klinegate_ws_deflate_frames_sent_total") >= 3.0);
    assert!(live.metric("klinegate_ws_deflate_bytes_saved_total") > 0.0);
    assert!(live.metric("klinegate_ws_bytes_out_total") > 0.0);
}

#[test]
fn a_decompression_bomb_is_closed_with_1009_and_rsv1_without_deflate_with_1002() {
    let live = start();
    let mut bomb = RawClient::connect(live.addr, Some("permessage-deflate"));
    let mut small = Vec::new();
    Compressor::new(9).compress(&vec![b' '; 1 << 20], &mut small);
    assert!(small.len() < MAX_FRAME, "the compressed bomb itself is under the limit: {}", small.len());
    bomb.send_raw(true, OP_TEXT, &small);
    assert_eq!(bomb.close_frame(5 * SEC), Some((1009, format!("message too big (max {MAX_FRAME} bytes)"))));

    let mut plain = RawClient::connect(live.addr, None);
    plain.send_raw(true, OP_TEXT, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    assert_eq!(plain.close_frame(5 * SEC).map(|c| c.0), Some(1002));

    // A compressed message that is not deflate data: 1007.
    let mut garbage = RawClient::connect(live.addr, Some("permessage-deflate"));
    garbage.send_raw(true, OP_TEXT, &[0xff; 16]);
    assert_eq!(garbage.close_frame(5 * SEC).map(|c| c.0), Some(1007));
    assert!(live.metric("klinegate_ws_messages_too_big_total") >= 1.0);
}
