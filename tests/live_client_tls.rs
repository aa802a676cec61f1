//! TLS for clients against the real binary (`--tls-cert`/`--tls-key`): a CA and a
//! server certificate made with rcgen, clients that trust that CA (rustls over a
//! blocking std socket, tungstenite on top). HTTPS and WSS work end to end; plain
//! text, garbage, untrusting clients and silent sockets on the TLS port are closed
//! promptly and counted without disturbing the TLS clients; large output arrives
//! complete through a slow reader; close paths (1001 on shutdown, 1008 slow consumer)
//! end with a close frame then `close_notify`. Loopback only, every wait bounded.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::closed_times;
use support::live::Live;
use tungstenite::{Message, WebSocket};

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const SEC: Duration = Duration::from_secs(1);

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

// ------------------------------------------------------------------ certificates

/// A CA and a server certificate for `localhost` / `127.0.0.1` signed by it, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "klinegate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The chain file holds the leaf then the CA, as a real deployment's would.
        std::fs::write(dir.path().join("server.crt"), format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir, ca: ca_cert.der().clone() }
    }

    fn cert(&self) -> String {
        self.path("server.crt").display().to_string()
    }

    fn key(&self) -> String {
        self.path("server.key").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        client_config_trusting(self.ca.clone())
    }
}

fn client_config_trusting(ca: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

// ------------------------------------------------------------------------ clients

/// TCP connect with an optional small receive buffer (to make the server's socket
/// fill up), then a TLS session for `localhost` over it; the handshake happens on the
/// first read or write.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>, recv_buffer: Option<usize>) -> TlsStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).unwrap();
    }
    sock.connect_timeout(&addr.into(), 5 * SEC).unwrap();
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let session = ClientConnection::new(Arc::clone(config), ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(session, tcp)
}

/// One HTTPS request with `Connection: close`: status, body, and whether the server
/// ended the stream with `close_notify` (a clean TLS end, not a truncation).
fn https(addr: SocketAddr, config: &Arc<ClientConfig>, method: &str, path: &str, body: &str) -> (u16, String, bool) {
    let mut s = tls_connect(addr, config, None);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s.flush().unwrap();
    let (bytes, clean) = read_to_end(&mut s, 20 * SEC);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body, clean)
}

/// Reads until the stream ends (bounded): the bytes, and true for a clean end.
fn read_to_end(s: &mut impl Read, timeout: Duration) -> (Vec<u8>, bool) {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while Instant::now() < end {
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (out, false),
        }
    }
    panic!("the stream did not end within {timeout:?} ({} bytes read)", out.len());
}

fn get_json(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> Value {
    let (status, body, _) = https(addr, config, "GET", path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

fn metric(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> f64 {
    let (_, body, _) = https(addr, config, "GET", "/metrics", "");
    support::live::metric_value(&body, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Polls the metric until it reaches `at_least` (bounded).
fn wait_metric(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str, at_least: f64) -> f64 {
    let end = Instant::now() + 10 * SEC;
    loop {
        let v = metric(addr, config, name);
        if v >= at_least || Instant::now() >= end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking `wss://` client with read timeouts.
struct Wss {
    ws: WebSocket<TlsStream>,
}

impl Wss {
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, recv_buffer: Option<usize>) -> Wss {
        let stream = tls_connect(addr, config, recv_buffer);
        let url = format!("wss://localhost:{}/ws/market", addr.port());
        let (ws, _) = tungstenite::client::client(url.as_str(), stream).expect("websocket handshake over TLS");
        Wss { ws }
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).expect("send");
    }

    /// The next message within `timeout`, or None (timeout, close, error).
    fn next(&mut self, timeout: Duration) -> Option<Message> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(m) => return Some(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// JSON frames until `pred` matches one (returned last) or the timeout passes.
    fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    let hit = pred(&v);
                    got.push(v);
                    if hit {
                        break;
                    }
                }
                Some(Message::Close(_)) | None => break,
                Some(_) => {}
            }
        }
        got
    }

    /// Reads (and counts the frames before it) until the close frame: its code and reason.
    fn close_frame(&mut self, timeout: Duration) -> (usize, Option<(u16, String)>) {
        let end = Instant::now() + timeout;
        let mut frames = 0;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(Message::Close(Some(f))) => return (frames, Some((f.code.into(), f.reason.to_string()))),
                Some(Message::Close(None)) => return (frames, Some((1005, String::new()))),
                Some(_) => frames += 1,
                None => break,
            }
        }
        (frames, None)
    }

    /// After the close frame: how the stream ends. `Ok(())` when tungstenite reports
    /// the connection closed, which over TLS needs the server's `close_notify` (a bare
    /// TCP FIN is a truncation: rustls reports `UnexpectedEof`).
    fn clean_end(&mut self, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("no end within the timeout".into())
    }
}

// -------------------------------------------------------------------------- setup

fn start(ex: &FakeExchange, pki: &Pki, extra: &[&str]) -> Live {
    let url = ex.ws_url();
    let (cert, key) = (pki.cert(), pki.key());
    let mut args = vec![
        "--spot-ws-url", &url, "--futures-ws-url", &url, "--tls-cert", &cert, "--tls-key", &key,
        "--pin", S1, "--derived", "", "--heal", "false",
    ];
    args.extend_from_slice(extra);
    Live::start(&args)
}

/// A candle open time (ms) aligned to the minute, `minutes_ago` minutes back.
fn minute_ms(minutes_ago: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now / 60 - minutes_ago) * 60_000
}

/// Stores `n` consecutive closed 1m candles from `t0_s` through the dev API, in
/// batches of `batch` (each a few hundred KB at most).
fn ingest_history(addr: SocketAddr, config: &Arc<ClientConfig>, t0_s: i64, n: i64, batch: i64) {
    for start in (0..n).step_by(batch as usize) {
        let candles: Vec<Value> = (start..(start + batch).min(n))
            .map(|k| json!({"candle_time": t0_s + 60 * k, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0}))
            .collect();
        let body = json!({"series_id": S1, "candles": candles}).to_string();
        let (status, reply, _) = https(addr, config, "POST", "/api/dev/market/ingest/candles_closed_batch", &body);
        assert_eq!(status, 200, "{reply}");
    }
}

// -------------------------------------------------------------------------- tests

#[test]
fn https_and_wss_serve_health_and_live_candles_and_shutdown_closes_with_1001() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let pki = Pki::new();
    let mut live = start(&ex, &pki, &[]);
    let started = live.wait_log("server_started", SEC).unwrap();
    assert!(started.contains(" tls=true "), "{started}");
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC), "pinned stream subscribed");
    let config = pki.client_config();

    let (status, body, clean) = https(live.addr, &config, "GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["tls"], true, "{health}");
    assert!(clean, "a Connection: close reply ends with close_notify");

    // Handshake + WebSocket upgrade time, for the report.
    let t = Instant::now();
    let mut c = Wss::connect(live.addr, &config, None);
    eprintln!("TLS handshake + WebSocket upgrade on loopback: {:?}", t.elapsed());
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = minute_ms(10);
    ex.push_kline(STREAM, t0, 100.0, 101.0, 99.0, 100.5, 2.0, true);
    let got = c.until(5 * SEC, |f| f["type"] == "candle_closed");
    assert_eq!(closed_times(&got), vec![t0 / 1000], "{got:?}");
    assert_eq!(got.last().unwrap()["candle"]["close"], 100.5);

    support::live::signal(live.child.id(), "TERM");
    let (_, close) = c.close_frame(10 * SEC);
    assert_eq!(close.map(|(code, _)| code), Some(1001), "shutdown close over TLS");
    assert_eq!(c.clean_end(5 * SEC), Ok(()), "close frame, then close_notify");
    drop(c);
    assert_eq!(live.wait_exit(10 * SEC), Some(0));
}

#[test]
fn plain_text_garbage_and_untrusting_clients_are_closed_and_counted_without_disturbing_tls_clients() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let pki = Pki::new();
    let mut live = start(&ex, &pki, &[]);
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let config = pki.client_config();
    let mut c = Wss::connect(live.addr, &config, None);
    c.send(json!({"type":"subscribe","series_id":S1}));
    let before = metric(live.addr, &config, "klinegate_tls_handshake_failures_total");
    assert_eq!(before, 0.0);

    // Plain HTTP to the TLS port: no HTTP answer, the connection ends at once.
    let t = Instant::now();
    let mut plain = TcpStream::connect(live.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_to_end(&mut plain, 3 * SEC);
    assert!(!answer.starts_with(b"HTTP/"), "no plain-text answer: {:?}", String::from_utf8_lossy(&answer));
    let plain_closed_in = t.elapsed();

    // Garbage bytes: the same.
    let mut garbage = TcpStream::connect(live.addr).unwrap();
    garbage.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]).unwrap();
    let _ = read_to_end(&mut garbage, 3 * SEC);

    // A TLS client that does not trust our certificate gives up; the server sees its alert.
    let other_ca = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).unwrap();
    let untrusting = client_config_trusting(other_ca.cert.der().clone());
    let mut s = tls_connect(live.addr, &untrusting, None);
    let err = s.write_all(b"GET /health HTTP/1.1\r\n\r\n").and_then(|_| s.flush()).and_then(|_| s.read(&mut [0u8; 64]));
    assert!(err.is_err(), "the untrusting client must fail its handshake");
    drop(s);

    let counted = wait_metric(live.addr, &config, "klinegate_tls_handshake_failures_total", 3.0);
    assert_eq!(counted, 3.0, "plain text, garbage and the untrusting client are counted");
    eprintln!("plain HTTP on the TLS port closed in {plain_closed_in:?}");
    let line = live.wait_log("client_tls_handshake_failed", 5 * SEC).expect("logged");
    assert!(line.contains("reason="), "{line}");
    live.wait_log("UnknownCA", 5 * SEC).or_else(|| live.wait_log("certificate", SEC)).expect("the alert is logged");

    // The TLS client is untouched.
    let t0 = minute_ms(10);
    ex.push_kline(STREAM, t0, 1.0, 2.0, 0.5, 1.5, 1.0, true);
    let got = c.until(5 * SEC, |f| f["type"] == "candle_closed");
    assert_eq!(closed_times(&got), vec![t0 / 1000], "{got:?}");
    assert_eq!(get_json(live.addr, &config, "/health")["tls"], true);
}

#[test]
fn clients_that_never_finish_the_handshake_are_dropped_by_the_idle_timeout() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let pki = Pki::new();
    let mut live = start(&ex, &pki, &["--client-idle-timeout-s", "1"]);
    let config = pki.client_config();
    let t = Instant::now();
    // One only opens TCP; the other sends the start of a TLS record and stalls.
    let mut silent = TcpStream::connect(live.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut stalled = TcpStream::connect(live.addr).unwrap();
    stalled.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let (bytes, _) = read_to_end(&mut silent, 5 * SEC);
    assert!(bytes.is_empty());
    let _ = read_to_end(&mut stalled, 5 * SEC);
    let dropped_in = t.elapsed();
    assert!(dropped_in >= Duration::from_millis(900), "not before the timeout: {dropped_in:?}");
    eprintln!("silent TLS sockets dropped after {dropped_in:?} (idle timeout 1 s, housekeeping every 0.5 s)");
    let line = live.wait_log("no TLS handshake within 1s", 5 * SEC).expect("the timeout is logged");
    assert!(line.contains("client_tls_handshake_failed"), "{line}");
    assert_eq!(wait_metric(live.addr, &config, "klinegate_tls_handshake_failures_total", 2.0), 2.0);
    assert_eq!(metric(live.addr, &config, "klinegate_connections_open"), 1.0, "only the /metrics request itself");
}

#[test]
fn a_large_catch_up_and_a_large_http_reply_arrive_complete_through_a_slow_tls_reader() {
    const N: i64 = 5000;
    let ex = FakeExchange::start(FakeOptions::spot());
    let pki = Pki::new();
    let live = start(&ex, &pki, &["--enable-dev-api", "true", "--catchup-limit", "6000"]);
    let config = pki.client_config();
    let t0_s = minute_ms(N + 100) / 1000;
    ingest_history(live.addr, &config, t0_s, N, 1000);
    let want: Vec<i64> = (0..N).map(|k| t0_s + 60 * k).collect();

    // 5000 catch-up frames, one per candle, to a client with a 4 KiB receive buffer
    // that does not read for a second: the server's socket and rustls' buffer fill up.
    let mut c = Wss::connect(live.addr, &config, Some(4096));
    c.send(json!({"type":"subscribe","series_id":S1,"since":t0_s - 60}));
    std::thread::sleep(SEC);
    let t = Instant::now();
    let got = c.until(30 * SEC, |f| f["type"] == "candle_closed" && f["candle"]["candle_time"] == *want.last().unwrap());
    let elapsed = t.elapsed();
    assert_eq!(closed_times(&got), want, "every catch-up candle, in order, once");
    let bytes: usize = got.iter().map(|f| f.to_string().len()).sum();
    eprintln!(
        "catch-up over TLS: {N} frames, {} KiB in {elapsed:?} ({:.1} MiB/s, debug build, 4 KiB receive buffer)",
        bytes / 1024,
        bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );

    // The same history as one HTTP reply (~0.5 MB) read slowly through HTTPS.
    let mut s = tls_connect(live.addr, &config, Some(4096));
    let path = format!("/api/market/candles?series_id={}&limit=5000", S1.replace('/', "%2F"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    s.flush().unwrap();
    std::thread::sleep(SEC);
    let (reply, clean) = read_to_end(&mut s, 30 * SEC);
    assert!(clean, "the reply ends with close_notify");
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: Value = serde_json::from_str(body).expect("complete JSON body");
    let times: Vec<i64> = v["candles"].as_array().unwrap().iter().map(|c| c["candle_time"].as_i64().unwrap()).collect();
    assert_eq!(times, want);
    eprintln!("HTTPS reply of {} KiB read completely after a 1 s stall", reply.len() / 1024);
}

#[test]
fn a_slow_tls_consumer_is_closed_with_1008_then_close_notify() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let pki = Pki::new();
    let mut live = start(&ex, &pki, &["--enable-dev-api", "true", "--client-max-backlog-bytes", "65536"]);
    let config = pki.client_config();
    let mut c = Wss::connect(live.addr, &config, Some(4096));
    c.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(300));
    // 40 000 live closes (~7 MB) published while the client does not read: they are
    // written until the kernel's buffers and rustls' are full, then the backlog grows
    // in the engine past its limit.
    let addr = live.addr;
    let ingest_config = Arc::clone(&config);
    let ingest = std::thread::spawn(move || ingest_history(addr, &ingest_config, minute_ms(50_000) / 1000, 40_000, 400));
    let line = live.wait_log("code=1008", 30 * SEC).expect("the slow consumer is closed");
    assert!(line.contains("slow_consumer"), "{line}");
    // The server waits 2 s for the close handshake: read everything before it now.
    let t = Instant::now();
    let (frames, close) = c.close_frame(10 * SEC);
    assert_eq!(close.map(|(code, _)| code), Some(1008), "after {frames} frames");
    eprintln!("slow consumer: {frames} frames drained in {:?}, then the 1008 close frame", t.elapsed());
    assert!(frames > 0, "what was already written arrives before the close frame");
    assert_eq!(c.clean_end(5 * SEC), Ok(()), "close frame, then close_notify, then the half-close");
    ingest.join().unwrap();
}

#[test]
fn unusable_tls_files_stop_start_up_with_one_line_and_exit_2() {
    let pki = Pki::new();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(pki.path("other.key"), other.signing_key.serialize_pem()).unwrap();
    std::fs::write(pki.path("empty.pem"), "not a certificate\n").unwrap();
    let db = pki.path("k.db").display().to_string();
    let other_key = pki.path("other.key").display().to_string();
    let empty = pki.path("empty.pem").display().to_string();
    let (cert, key) = (pki.cert(), pki.key());
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &cert], "--tls-key must be given too"),
        (&["--tls-cert", &cert, "--tls-key", &other_key], "does not match"),
        (&["--tls-cert", &empty, "--tls-key", &key], "holds no certificate"),
        (&["--tls-cert", &cert, "--tls-key", &empty], "holds no private key"),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
            .args(["run", "--db", &db, "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("KLINEGATE_TLS_CERT")
            .env_remove("KLINEGATE_TLS_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `SIGHUP` (#15 §3): a renewed certificate written over the files is served
/// to new connections without a restart; an unusable one keeps the running
/// certificate and logs one line.
#[test]
fn sighup_serves_a_renewed_certificate_and_keeps_the_old_one_when_the_new_is_bad() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let old = Pki::new();
    let mut live = start(&ex, &old, &[]);
    let (status, _, _) = https(live.addr, &old.client_config(), "GET", "/health", "");
    assert_eq!(status, 200);

    let renewed = Pki::new();
    std::fs::copy(renewed.path("server.crt"), old.path("server.crt")).unwrap();
    std::fs::copy(renewed.path("server.key"), old.path("server.key")).unwrap();
    support::live::signal(live.child.id(), "HUP");
    let line = live.wait_log("config_reload ", 10 * SEC).expect("reloaded");
    assert!(line.contains("tls_reloaded=true"), "{line}");
    let (status, _, _) = https(live.addr, &renewed.client_config(), "GET", "/health", "");
    assert_eq!(status, 200, "a new connection gets the renewed certificate");
    let mut s = tls_connect(live.addr, &old.client_config(), None);
    let refused = s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").and_then(|()| s.flush());
    assert!(refused.is_err(), "the old CA no longer verifies the server");

    std::fs::write(old.path("server.key"), "not a key\n").unwrap();
    support::live::signal(live.child.id(), "HUP");
    let line = live.wait_log("config_reload_failed", 10 * SEC).expect("one line saying why");
    assert!(line.contains("server.key") || line.contains("tls"), "{line}");
    let (status, _, _) = https(live.addr, &renewed.client_config(), "GET", "/health", "");
    assert_eq!(status, 200, "the running certificate stays");
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
