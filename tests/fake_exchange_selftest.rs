//! Self-test of the fake Binance exchange (tests/support/fake_exchange.rs) with
//! a plain tungstenite client, over plain TCP and over TLS trusting the CA the
//! fake generates. Each test runs in well under a few seconds.

#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_exchange::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const BTC: &str = "btcusdt@kline_1m";
const ETH: &str = "ethusdt@kline_1m";
const WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// A small blocking test client
// ---------------------------------------------------------------------------

enum ClientStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(s) => s.flush(),
        }
    }
}

type Client = WebSocket<ClientStream>;

fn tls_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects to `url` on the fake exchange; TLS when it has a CA.
fn try_connect(ex: &FakeExchange, url: &str) -> Result<Client, String> {
    let tcp = TcpStream::connect(ex.addr()).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let stream = match ex.ca_pem() {
        Some(pem) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let conn = ClientConnection::new(tls_config(&pem), name).unwrap();
            ClientStream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
        None => ClientStream::Plain(tcp),
    };
    tungstenite::client(url, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn connect(ex: &FakeExchange) -> Client {
    try_connect(ex, &ex.ws_url()).unwrap()
}

fn send(ws: &mut Client, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next text message (pings are answered by tungstenite on the way).
fn next_text(ws: &mut Client) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server's close frame and sends our close reply; returns
/// (code, reason).
fn next_close(ws: &mut Client) -> (u16, String) {
    let closed = loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                break (u16::from(frame.code), frame.reason.as_str().to_string())
            }
            Ok(Message::Close(None)) => break (0, String::new()),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    };
    // tungstenite queues the close reply; it goes out on the next flush.
    let _ = ws.flush();
    closed
}

fn subscribe(ws: &mut Client, ex: &FakeExchange, streams: &[&str], id: u64) {
    send(ws, json!({"method":"SUBSCRIBE","params":streams,"id":id}));
    assert_eq!(next_text(ws), json!({"result":null,"id":id}));
    assert!(ex.wait_for_subscriptions(streams, WAIT));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn subscribe_push_list_and_errors_over_plain_ws() {
    let ex = FakeExchange::start(FakeOptions::default());
    assert!(ex.ws_url().starts_with("ws://127.0.0.1:") && ex.ws_url().ends_with("/stream"));
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);

    assert_eq!(
        ex.push_kline(ETH, 1_617_566_580_000, 1.0, 1.0, 1.0, 1.0, 1.0, false),
        0,
        "not subscribed"
    );
    assert_eq!(
        ex.push_kline(
            BTC,
            1_617_566_580_000,
            57994.6,
            58008.75,
            57994.59,
            58001.03,
            6.453895,
            true
        ),
        1
    );
    let frame = next_text(&mut ws);
    assert_eq!(frame["stream"], BTC);
    let data = &frame["data"];
    assert_eq!(data["e"], "kline");
    assert_eq!(data["s"], "BTCUSDT");
    let k = &data["k"];
    for key in [
        "t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B",
    ] {
        assert!(k.get(key).is_some(), "missing k.{key} in {k}");
    }
    assert_eq!(k["t"], 1_617_566_580_000i64);
    assert_eq!(k["T"], 1_617_566_639_999i64);
    assert_eq!(k["o"], "57994.60000000");
    assert_eq!(k["c"], "58001.03000000");
    assert_eq!(k["x"], true);
    assert!(data["E"].as_i64().unwrap() > k["T"].as_i64().unwrap());

    send(&mut ws, json!({"method":"LIST_SUBSCRIPTIONS","id":2}));
    assert_eq!(next_text(&mut ws), json!({"result":[BTC],"id":2}));

    ws.send(Message::text("{not json")).unwrap();
    let err = next_text(&mut ws);
    assert_eq!(err["error"]["code"], 3);
    assert!(err["error"]["msg"]
        .as_str()
        .unwrap()
        .starts_with("Invalid JSON: "));
    assert_eq!(err["id"], Value::Null);

    assert_eq!(ex.connections(), 1);
    assert_eq!(ex.connect_count(), 1);
    assert_eq!(ex.subscriptions(), vec![BTC.to_string()]);
    assert_eq!(ex.subscriptions_per_connection(), vec![1]);
    let kinds: Vec<ViolationKind> = ex.violations().iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        vec![ViolationKind::InvalidRequest],
        "only the bad JSON"
    );
    assert_eq!(ex.control_messages().len(), 3);
}

#[test]
fn unsubscribe_stops_frames_and_properties_work() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC, ETH], 1);
    send(
        &mut ws,
        json!({"method":"UNSUBSCRIBE","params":[ETH],"id":2}),
    );
    assert_eq!(next_text(&mut ws), json!({"result":null,"id":2}));
    assert!(ex.wait_until(WAIT, |ex| ex.subscriptions() == vec![BTC.to_string()]));
    assert_eq!(ex.push_kline(ETH, 0, 1.0, 1.0, 1.0, 1.0, 1.0, false), 0);

    send(
        &mut ws,
        json!({"method":"GET_PROPERTY","params":["combined"],"id":3}),
    );
    assert_eq!(next_text(&mut ws), json!({"result":true,"id":3}));
    send(
        &mut ws,
        json!({"method":"SET_PROPERTY","params":["combined",false],"id":4}),
    );
    assert_eq!(next_text(&mut ws), json!({"result":null,"id":4}));
    ex.push_kline(BTC, 60_000, 1.0, 2.0, 0.5, 1.5, 3.0, false);
    let raw = next_text(&mut ws);
    assert_eq!(raw["e"], "kline", "raw payload after combined=false: {raw}");
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn tls_client_trusting_generated_ca_receives_frames() {
    let ex = FakeExchange::start(FakeOptions::default().with_tls());
    assert!(ex.ws_url().starts_with("wss://127.0.0.1:"));
    let pem = ex.ca_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let dir = tempfile::tempdir().unwrap();
    let written = ex.write_ca_pem(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(written).unwrap(), pem);

    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 7);
    ex.forming_update(BTC);
    let frame = next_text(&mut ws);
    assert_eq!(frame["stream"], BTC);
    assert_eq!(frame["data"]["k"]["x"], false);
}

#[test]
fn tls_without_the_ca_is_refused() {
    let ex = FakeExchange::start(FakeOptions::default().with_tls());
    let other = FakeExchange::start(FakeOptions::default().with_tls());
    let tcp = TcpStream::connect(ex.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn = ClientConnection::new(
        tls_config(&other.ca_pem().unwrap()),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let stream = ClientStream::Tls(Box::new(StreamOwned::new(conn, tcp)));
    assert!(tungstenite::client(ex.ws_url(), stream).is_err());
}

#[test]
fn six_messages_in_a_second_close_with_1008() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    for id in 1..=6 {
        send(&mut ws, json!({"method":"LIST_SUBSCRIPTIONS","id":id}));
    }
    let mut replies = 0;
    let close = loop {
        match ws.read() {
            Ok(Message::Text(_)) => replies += 1,
            Ok(Message::Close(Some(frame))) => break frame,
            other => panic!("expected replies then a close, got {other:?}"),
        }
    };
    let _ = ws.flush(); // our close reply, so the fake need not wait out its linger
    assert_eq!(replies, 5);
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "Too many requests");
    let violations = ex.violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].kind, ViolationKind::TooManyMessages);
    assert!(ex.wait_until(WAIT, |ex| ex.connections() == 0));
}

#[test]
fn paced_messages_and_pongs_stay_within_the_limit() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    // 4 messages, one of them an unsolicited pong, then 4 more after the window.
    for round in 0..2u64 {
        for i in 0..3 {
            send(
                &mut ws,
                json!({"method":"LIST_SUBSCRIPTIONS","id":round * 10 + i}),
            );
            next_text(&mut ws);
        }
        ws.send(Message::Pong(Default::default())).unwrap();
        std::thread::sleep(Duration::from_millis(if round == 0 { 1_050 } else { 50 }));
    }
    assert!(ex.wait_until(WAIT, |ex| ex.incoming().len() == 8));
    assert_eq!(ex.violation_count(), 0);
    let conn = ex.connection_infos()[0].id;
    assert_eq!(ex.max_messages_in_window(conn, Duration::from_secs(1)), 4);
    assert_eq!(ex.unmatched_pongs(), 2);
}

#[test]
fn too_many_streams_gives_code_4_then_close() {
    let ex = FakeExchange::start(FakeOptions {
        max_streams: 3,
        ..FakeOptions::default()
    });
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC, ETH], 1);
    send(
        &mut ws,
        json!({"method":"SUBSCRIBE","params":["dotusdt@kline_1m","adausdt@kline_1m"],"id":2}),
    );
    assert_eq!(
        next_text(&mut ws),
        json!({"error":{"code":4,"msg":"Too many subscriptions"},"id":2})
    );
    let (code, _) = next_close(&mut ws);
    assert_eq!(code, 1008);
    assert!(ex
        .violations()
        .iter()
        .any(|v| v.kind == ViolationKind::TooManySubscriptions));
    assert!(ex.wait_until(WAIT, |ex| ex.connections() == 0
        && ex.subscriptions().is_empty()));
}

#[test]
fn drop_all_resets_and_clients_can_reconnect() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
    ex.drop_all();
    assert_eq!(ex.connections(), 0);
    match ws.read() {
        Err(tungstenite::Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }
    let mut again = connect(&ex);
    subscribe(&mut again, &ex, &[BTC], 1);
    assert_eq!(ex.connect_count(), 2);
}

#[test]
fn close_all_sends_the_given_code() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    assert!(ex.wait_for_connections(1, WAIT));
    ex.close_all(1001, "maintenance");
    let (code, reason) = next_close(&mut ws);
    assert_eq!((code, reason.as_str()), (1001, "maintenance"));
    assert!(ex.wait_until(WAIT, |ex| ex.connections() == 0));
}

#[test]
fn reject_modes_and_silence() {
    let ex = FakeExchange::start(FakeOptions::default());
    ex.reject_connections(true);
    assert!(try_connect(&ex, &ex.ws_url()).is_err());
    ex.set_reject_mode(RejectMode::HttpStatus(503));
    let Err(err) = try_connect(&ex, &ex.ws_url()) else {
        panic!("connected despite 503")
    };
    assert!(err.contains("503"), "{err}");
    assert!(ex.wait_until(WAIT, |ex| ex.rejected_count() == 2));
    ex.reject_connections(false);
    assert!(
        try_connect(&ex, "ws://127.0.0.1/nope").is_err(),
        "unknown path is a 404"
    );

    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
    ex.set_silent(true);
    ex.forming_update(BTC);
    ws.get_mut().set_timeout(Duration::from_millis(200));
    assert!(ws.read().is_err(), "nothing arrives while silent");
    assert_eq!(ex.connect_count(), 1);
}

impl ClientStream {
    fn set_timeout(&mut self, t: Duration) {
        let tcp = match self {
            ClientStream::Plain(s) => &*s,
            ClientStream::Tls(s) => &s.sock,
        };
        tcp.set_read_timeout(Some(t)).unwrap();
    }
}

#[test]
fn server_pings_are_recorded_with_their_pongs() {
    let opts = FakeOptions {
        ping_interval: Some(Duration::from_millis(300)),
        ..FakeOptions::default()
    };
    let ex = FakeExchange::start(opts);
    let mut ws = connect(&ex);
    ws.get_mut().set_timeout(Duration::from_millis(50));
    let until = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < until {
        let _ = ws.read(); // tungstenite answers each ping with the same payload
    }
    assert!(ex.wait_until(WAIT, |ex| ex
        .pings()
        .iter()
        .filter(|p| p.pong_at.is_some())
        .count()
        >= 2));
    let pings = ex.pings();
    assert!(
        pings[0].payload.parse::<i64>().is_ok(),
        "payload is a ms timestamp"
    );
    assert_eq!(ex.unmatched_pongs(), 0);
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn missing_pong_drops_the_connection() {
    let opts = FakeOptions {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Some(Duration::from_millis(200)),
        ..FakeOptions::default()
    };
    let ex = FakeExchange::start(opts);
    let _ws = connect(&ex); // never reads, so never pongs
    assert!(ex.wait_for_connections(1, WAIT));
    assert!(ex.wait_until(WAIT, |ex| ex.connections() == 0));
    assert!(ex
        .violations()
        .iter()
        .any(|v| v.kind == ViolationKind::PongTimeout));
}

#[test]
fn cadence_forms_and_closes_on_the_fake_clock() {
    let ex = FakeExchange::start(FakeOptions {
        clock_start_ms: Some(1_700_000_010_000),
        ..FakeOptions::default()
    });
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
    ex.start_cadence(&[BTC], Duration::from_millis(20));
    let t0 = ex.current_open_time(BTC).unwrap();
    assert_eq!(t0, 1_699_999_980_000, "aligned to the minute");
    let first = next_text(&mut ws);
    assert_eq!(first["data"]["k"]["t"], t0);
    assert_eq!(first["data"]["k"]["x"], false);

    ex.advance_clock(Duration::from_secs(60));
    let mut saw_close = false;
    loop {
        let k = next_text(&mut ws)["data"]["k"].clone();
        if k["x"] == true {
            assert_eq!(k["t"], t0);
            saw_close = true;
        } else if k["t"] == t0 + 60_000 {
            break;
        }
    }
    assert!(
        saw_close,
        "the close comes before the next candle's first frame"
    );

    ex.stop_cadence();
    let t1 = ex.current_open_time(BTC).unwrap();
    assert_eq!(ex.close_candle(BTC, t1), 1);
    loop {
        let k = next_text(&mut ws)["data"]["k"].clone();
        if k["x"] == true {
            assert_eq!(k["t"], t1);
            break;
        }
    }
    assert_eq!(ex.current_open_time(BTC), Some(t1 + 60_000));
}

#[test]
fn raw_and_routed_paths_with_url_subscriptions() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut raw = try_connect(&ex, &format!("{}/ws/{BTC}", ex.base_url())).unwrap();
    let mut routed = try_connect(
        &ex,
        &format!("{}/market/stream?streams={BTC}/{ETH}", ex.base_url()),
    )
    .unwrap();
    assert!(ex.wait_until(WAIT, |ex| ex.subscriptions_per_connection() == vec![1, 2]));
    assert_eq!(ex.push_kline(BTC, 0, 1.0, 1.0, 1.0, 1.0, 0.0, false), 2);
    let r = next_text(&mut raw);
    assert_eq!(r["e"], "kline");
    assert_eq!(r["k"]["n"], 0);
    assert_eq!(r["k"]["f"], -1);
    let c = next_text(&mut routed);
    assert_eq!(c["stream"], BTC);
    let paths: Vec<String> = ex.connection_infos().into_iter().map(|c| c.path).collect();
    assert!(paths[1].starts_with("/market/stream"));
    assert_eq!(ex.violation_count(), 0);
}

#[test]
fn bad_stream_names_are_acked_but_recorded() {
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &["BTCUSDT@kline_1m"], 1);
    let v = ex.violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::BadStreamName);
}

#[test]
#[cfg_attr(shared_data_absent, ignore = "../shared/data absent (set KLINEGATE_SHARED_DATA to its path)")]
fn capture_replays_to_subscribers() {
    let Some(path) = derived_capture("BINANCE-ee25be.0.kline_frames.jsonl") else {
        eprintln!("skipping: shared/data/cryptofeed/derived not present");
        return;
    };
    let streams = capture_streams(&path).unwrap();
    assert_eq!(
        streams,
        vec!["btcusdt@kline_1m", "dotusdt@kline_1m", "ethusdt@kline_1m"]
    );
    let ex = FakeExchange::start(FakeOptions::default());
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
    let shift = 1_000_000;
    let opts = PlayOptions {
        speed: None,
        shift_ms: shift,
        max_frames: None,
    };
    let report = ex.play_capture(&path, &opts).unwrap();
    assert_eq!(report.frames, 118);
    assert_eq!(report.skipped_lines, 0);
    assert!(report.delivered > 10 && report.delivered < report.frames);

    let original = std::fs::read_to_string(&path).unwrap();
    let first_btc: Value = original
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["stream"] == BTC)
        .unwrap();
    let got = next_text(&mut ws);
    assert_eq!(got["data"]["k"]["c"], first_btc["data"]["k"]["c"]);
    assert_eq!(
        got["data"]["E"].as_i64().unwrap(),
        first_btc["data"]["E"].as_i64().unwrap() + shift
    );
    assert_eq!(
        got["data"]["k"]["t"].as_i64().unwrap(),
        first_btc["data"]["k"]["t"].as_i64().unwrap() + shift
    );
    for _ in 1..report.delivered {
        assert_eq!(next_text(&mut ws)["stream"], BTC);
    }
}

#[test]
fn shutdown_is_bounded_with_open_connections() {
    let ex = FakeExchange::start(FakeOptions::default().with_tls());
    let _a = connect(&ex);
    let _idle = TcpStream::connect(ex.addr()).unwrap(); // never handshakes
    ex.start_cadence(&[BTC], Duration::from_millis(10));
    assert!(ex.wait_for_connections(1, WAIT));
    shutdown_returns(ex);
}

/// Shuts `ex` down on a helper thread and checks that it returns at all: a
/// shutdown that waits on a connection which never ends would hang. The bound
/// only keeps a broken build from hanging the suite; it measures nothing.
fn shutdown_returns(mut ex: FakeExchange) {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        ex.shutdown();
        let _ = done_tx.send(());
    });
    assert!(done.recv_timeout(Duration::from_secs(60)).is_ok(), "shutdown never returned");
}

// ---------------------------------------------------------------------------
// REST on the same port: a tiny blocking HTTP/1.1 client
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

/// 2023-11-14T22:13:50Z: 50 s into a minute, so a few seconds of test run
/// time never cross a minute boundary of the fake clock.
const CLOCK: i64 = 1_700_000_030_000;
const MINUTE: i64 = 60_000;

fn rest_exchange() -> FakeExchange {
    FakeExchange::start(FakeOptions {
        clock_start_ms: Some(CLOCK),
        ..FakeOptions::default()
    })
}

struct HttpReply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl HttpReply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn used_weight(&self) -> u32 {
        self.header("x-mbx-used-weight-1m")
            .unwrap()
            .parse()
            .unwrap()
    }

    fn retry_after(&self) -> i64 {
        self.header("retry-after").unwrap().parse().unwrap()
    }
}

/// Sends one GET and reads the reply by its Content-Length.
fn request<S: Read + Write>(
    conn: &mut BufReader<S>,
    target: &str,
    close: bool,
) -> io::Result<HttpReply> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        conn.get_mut(),
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n"
    )?;
    conn.get_mut().flush()?;
    let mut status_line = String::new();
    if conn.read_line(&mut status_line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(HttpReply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

fn open_http(ex: &FakeExchange) -> BufReader<TcpStream> {
    let tcp = TcpStream::connect(ex.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    BufReader::new(tcp)
}

fn get(ex: &FakeExchange, target: &str) -> HttpReply {
    request(&mut open_http(ex), target, true).unwrap()
}

fn klines(ex: &FakeExchange, query: &str) -> Vec<Value> {
    let reply = get(ex, &format!("/api/v3/klines?{query}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json().as_array().unwrap().clone()
}

fn open_times(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r[0].as_i64().unwrap()).collect()
}

/// The open time of the fake clock's current minute.
fn this_minute(ex: &FakeExchange) -> i64 {
    let now = ex.now_ms();
    now - now.rem_euclid(MINUTE)
}

/// A thousand closed minutes of BTCUSDT up to the current one, plus ten that
/// have not opened yet (the fake must not serve those).
fn btc_history(ex: &FakeExchange, market: &str) -> i64 {
    let current = this_minute(ex);
    let from = current - 1000 * MINUTE;
    let added = ex.fill_history(market, "BTCUSDT", "1m", from, current + 11 * MINUTE, |t| {
        30_000.0 + ((t / MINUTE) % 100) as f64
    });
    assert_eq!(added, 1011);
    from
}

// ---------------------------------------------------------------------------
// REST tests
// ---------------------------------------------------------------------------

#[test]
fn klines_follow_binance_ordering_and_limits() {
    let ex = rest_exchange();
    let from = btc_history(&ex, "spot");
    let current = this_minute(&ex);

    // startTime: oldest first from startTime (an unaligned start rounds up).
    let rows = klines(
        &ex,
        &format!("symbol=BTCUSDT&interval=1m&startTime={}&limit=5", from + 1),
    );
    let expected: Vec<i64> = (1..=5).map(|i| from + i * MINUTE).collect();
    assert_eq!(open_times(&rows), expected);
    // The row format: 12 fields, numbers for times and trades, strings elsewhere.
    let row = rows[0].as_array().unwrap();
    assert_eq!(row.len(), 12);
    assert_eq!(row[6].as_i64().unwrap(), from + 2 * MINUTE - 1);
    assert!(row[8].is_u64());
    for i in [1, 2, 3, 4, 5, 7, 9, 10] {
        assert!(
            row[i].as_str().unwrap().parse::<f64>().is_ok(),
            "field {i}: {}",
            row[i]
        );
    }
    assert_eq!(row[11], "0");

    // endTime only: the most recent up to endTime, still ascending.
    let end = from + 100 * MINUTE + 30_000;
    let rows = klines(
        &ex,
        &format!("symbol=BTCUSDT&interval=1m&endTime={end}&limit=3"),
    );
    let expected: Vec<i64> = (98..=100).map(|i| from + i * MINUTE).collect();
    assert_eq!(open_times(&rows), expected);

    // Both: from startTime, never past endTime.
    let rows = klines(
        &ex,
        &format!(
            "symbol=BTCUSDT&interval=1m&startTime={from}&endTime={}&limit=1000",
            from + 9 * MINUTE
        ),
    );
    assert_eq!(rows.len(), 10);

    // Neither: the most recent, ending with the candle open now; nothing from the future.
    let rows = klines(&ex, "symbol=BTCUSDT&interval=1m&limit=4");
    let expected: Vec<i64> = (-3..=0).map(|i| current + i * MINUTE).collect();
    assert_eq!(open_times(&rows), expected);
    let after_now = klines(
        &ex,
        &format!("symbol=BTCUSDT&interval=1m&startTime={}", current + MINUTE),
    );
    assert!(
        after_now.is_empty(),
        "candles that have not opened are not served"
    );

    // Default limit 500; spot max 1000; 1001 is an error.
    assert_eq!(klines(&ex, "symbol=BTCUSDT&interval=1m").len(), 500);
    assert_eq!(
        klines(&ex, "symbol=BTCUSDT&interval=1m&limit=1000").len(),
        1000
    );
    let too_many = get(&ex, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1001");
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.json()["code"], -1130);
    let backwards = get(
        &ex,
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={}&endTime={from}",
            from + MINUTE
        ),
    );
    assert_eq!(backwards.json()["code"], -1023);

    // USD-M: max 1500.
    btc_history(&ex, "futures");
    let ok = get(&ex, "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1500");
    assert_eq!(
        ok.json().as_array().unwrap().len(),
        1001,
        "all there is up to now"
    );
    let too_many = get(&ex, "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1501");
    assert_eq!(
        (too_many.status, too_many.json()["code"].clone()),
        (400, json!(-1130))
    );
}

#[test]
fn the_last_row_is_forming_until_the_clock_passes_its_close() {
    let ex = rest_exchange();
    btc_history(&ex, "spot");
    let current = this_minute(&ex);
    let final_values = ex.history_candle("spot", "BTCUSDT", "1m", current).unwrap();

    let rows = klines(&ex, "symbol=BTCUSDT&interval=1m&limit=2");
    let (closed, forming) = (&rows[0], &rows[1]);
    assert_eq!(forming[0], current);
    assert!(
        forming[6].as_i64().unwrap() >= ex.now_ms(),
        "closeTime is still ahead"
    );
    assert_ne!(
        forming[4],
        json!(final_values.close),
        "forming close is not the final close"
    );
    let vol = |r: &Value| r[5].as_str().unwrap().parse::<f64>().unwrap();
    assert!(vol(forming) < final_values.volume.parse::<f64>().unwrap());
    let previous = ex
        .history_candle("spot", "BTCUSDT", "1m", current - MINUTE)
        .unwrap();
    assert_eq!(
        closed.to_string(),
        previous.row_json(),
        "closed rows are exact"
    );

    // Once the clock passes closeTime the same row is final, and the next one forms.
    ex.advance_clock(Duration::from_secs(60));
    let rows = klines(&ex, "symbol=BTCUSDT&interval=1m&limit=2");
    assert_eq!(rows[0].to_string(), final_values.row_json());
    assert_eq!(rows[1][0], current + MINUTE);

    // A scripted forming row is served as given.
    let mut scripted = ex
        .history_candle("spot", "BTCUSDT", "1m", current + MINUTE)
        .unwrap();
    scripted.close = "12345.00000000".into();
    ex.set_forming_row("spot", "BTCUSDT", "1m", scripted.clone());
    let rows = klines(&ex, "symbol=BTCUSDT&interval=1m&limit=1");
    assert_eq!(rows[0].to_string(), scripted.row_json());
}

#[test]
fn generated_history_and_the_stream_agree() {
    let ex = rest_exchange();
    let current = this_minute(&ex);
    ex.set_history_fn("futures", "ETHUSDT", "5m", 0, |t| {
        let p = 2000.0 + (t / 300_000 % 50) as f64;
        RestCandle::new(t, "5m", p, p + 2.0, p - 1.0, p + 1.0, 3.0)
    });
    let reply = get(&ex, "/fapi/v1/klines?symbol=ETHUSDT&interval=5m&limit=3");
    let rows = reply.json();
    let times = open_times(rows.as_array().unwrap());
    let five = current - current.rem_euclid(300_000);
    assert_eq!(times, vec![five - 600_000, five - 300_000, five]);
    // A spot market with a scripted list that lacks ETHUSDT, and no spot history of it.
    ex.set_markets("spot", vec![FakeSymbol::new("BTC", "USDT")]);
    assert!(
        get(&ex, "/api/v3/klines?symbol=ETHUSDT&interval=5m").status == 400,
        "spot does not know it"
    );

    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &["ethusdt@kline_5m"], 1);
    assert_eq!(
        ex.push_history_candle("futures", "ethusdt@kline_5m", five - 300_000, true),
        1
    );
    let k = next_text(&mut ws)["data"]["k"].clone();
    assert_eq!(
        (k["x"].clone(), k["c"].clone()),
        (json!(true), rows[1][4].clone())
    );
    assert_eq!(
        ex.push_history_candle("futures", "ethusdt@kline_5m", five, false),
        1
    );
    let k = next_text(&mut ws)["data"]["k"].clone();
    assert_eq!(k["x"], false);
    let served = ex.served_candle("futures", "ETHUSDT", "5m", five).unwrap();
    assert_eq!(
        k["c"],
        json!(served.close),
        "the stream shows what REST shows"
    );
}

#[test]
fn unknown_symbols_and_bad_parameters_get_binance_errors() {
    let ex = rest_exchange();
    btc_history(&ex, "spot");
    // With a scripted symbol list, what it lacks (and has no history of) is unknown.
    ex.set_markets("spot", vec![FakeSymbol::new("ETH", "USDT")]);
    let cases = [
        ("/api/v3/klines?symbol=NOPEUSDT&interval=1m", -1121),
        ("/api/v3/klines?symbol=btcusdt&interval=1m", -1121),
        ("/api/v3/klines?interval=1m", -1102),
        ("/api/v3/klines?symbol=BTCUSDT", -1102),
        ("/api/v3/klines?symbol=BTCUSDT&interval=2m", -1120),
        ("/fapi/v1/klines?symbol=BTCUSDT&interval=1s", -1120),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=ten", -1100),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=0", -1130),
    ];
    for (target, code) in cases {
        let reply = get(&ex, target);
        assert_eq!(reply.status, 400, "{target}");
        assert_eq!(reply.json()["code"], code, "{target}: {}", reply.body);
    }
    let invalid = get(&ex, "/api/v3/klines?symbol=NOPEUSDT&interval=1m");
    assert_eq!(invalid.body, r#"{"code":-1121,"msg":"Invalid symbol."}"#);
    assert_eq!(get(&ex, "/api/v3/nothing").status, 404);
    // A known symbol with no history for an interval is an empty list.
    assert_eq!(
        klines(&ex, "symbol=BTCUSDT&interval=1h"),
        Vec::<Value>::new()
    );
    // A listed symbol without history too.
    ex.set_markets("spot", vec![FakeSymbol::new("DOT", "USDT")]);
    assert!(klines(&ex, "symbol=DOTUSDT&interval=1m").is_empty());
}

#[test]
fn weight_is_counted_per_minute_then_429_then_418() {
    let ex = rest_exchange();
    btc_history(&ex, "spot");
    ex.set_rest_limits(
        "spot",
        RestLimits {
            weight_per_minute: 10,
            ban_after_429s: Some(2),
            ban: Duration::from_secs(120),
        },
    );
    let target = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1";
    let used: Vec<u32> = (0..5).map(|_| get(&ex, target).used_weight()).collect();
    assert_eq!(used, vec![2, 4, 6, 8, 10]);
    assert_eq!(ex.rest_used_weight("spot"), 10);

    for _ in 0..2 {
        let limited = get(&ex, target);
        assert_eq!(limited.status, 429);
        assert_eq!(limited.used_weight(), 10);
        assert_eq!(limited.json()["code"], -1003);
        let left = limited.retry_after();
        assert!(
            (9..=10).contains(&left),
            "seconds to the next minute: {left}"
        );
    }
    let banned = get(&ex, target);
    assert_eq!(banned.status, 418);
    assert_eq!(banned.retry_after(), 120);

    // A new minute does not lift the ban; its end does.
    ex.advance_clock(Duration::from_secs(60));
    assert_eq!(get(&ex, target).status, 418);
    ex.advance_clock(Duration::from_secs(61));
    let back = get(&ex, target);
    assert_eq!((back.status, back.used_weight()), (200, 2));

    // The futures budget is separate, and its klines weight follows `limit`.
    btc_history(&ex, "futures");
    let weights: Vec<u32> = [
        "&limit=99",
        "&limit=100",
        "&limit=101",
        "&limit=500",
        "&limit=1000",
        "&limit=1500",
        "",
    ]
    .iter()
    .map(|l| {
        get(
            &ex,
            &format!("/fapi/v1/klines?symbol=BTCUSDT&interval=1m{l}"),
        );
        ex.rest_requests().last().unwrap().weight
    })
    .collect();
    assert_eq!(weights, vec![1, 1, 2, 2, 5, 10, 5]);
    assert_eq!(ex.rest_used_weight("futures"), 26);
    assert_eq!(ex.rest_used_weight("spot"), 2);
    let log = ex.rest_requests();
    assert_eq!(log.len(), 17);
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 2);
    assert_eq!(log[0].param("limit"), Some("1"));
    assert_eq!(log[0].market(), Some("spot"));
}

#[test]
fn injected_failures_delays_and_drops() {
    let ex = rest_exchange();
    btc_history(&ex, "spot");
    ex.set_markets("spot", vec![FakeSymbol::new("BTC", "USDT")]);
    let target = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1";

    ex.rest_fail_next(2, 503, r#"{"code":-1001,"msg":"Internal error; unable to process your request. Please try again."}"#);
    ex.rest_fail_next(1, 429, r#"{"code":-1003,"msg":"Too many requests."}"#);
    assert_eq!(get(&ex, target).status, 503);
    assert_eq!(get(&ex, target).status, 503);
    let limited = get(&ex, target);
    assert_eq!(limited.status, 429);
    assert!(limited.retry_after() >= 1);
    assert_eq!(get(&ex, target).status, 200);
    assert_eq!(
        ex.rest_used_weight("spot"),
        2,
        "injected failures cost no weight"
    );

    ex.rest_fail_next_on("exchangeInfo", 1, 500, "{}");
    assert_eq!(get(&ex, target).status, 200, "only exchangeInfo fails");
    assert_eq!(get(&ex, "/api/v3/exchangeInfo").status, 500);
    assert_eq!(get(&ex, "/api/v3/exchangeInfo").status, 200);

    ex.rest_fail_symbol("BTCUSDT");
    let failed = get(&ex, target);
    assert_eq!(
        (failed.status, failed.json()["code"].clone()),
        (500, json!(-1000))
    );
    ex.rest_unfail_symbol("BTCUSDT");
    assert_eq!(get(&ex, target).status, 200);

    ex.rest_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&ex, target).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    ex.rest_delay(Duration::ZERO);

    ex.rest_drop_connections(true);
    assert!(
        request(&mut open_http(&ex), target, true).is_err(),
        "reset, no reply"
    );
    ex.rest_drop_connections(false);
    assert_eq!(get(&ex, target).status, 200);

    let statuses: Vec<u16> = ex.rest_requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![503, 503, 429, 200, 200, 500, 200, 500, 200, 200, 0, 200]
    );
    assert_eq!(ex.rest_request_count(), 12);
    assert_eq!(ex.rest_requests_to("/klines").len(), 10);
}

#[test]
fn exchange_info_and_tickers_have_binance_shapes_and_weights() {
    let ex = rest_exchange();
    ex.set_markets(
        "spot",
        vec![
            FakeSymbol::new("BTC", "USDT").with_ticker(
                "37000.01000000",
                "1500000000.12345678",
                "2.500",
            ),
            FakeSymbol::new("LUNA", "USDT").with_status("BREAK"),
        ],
    );
    ex.set_markets(
        "futures",
        vec![
            FakeSymbol::perpetual("BTC", "USDT").with_ticker("36990.10", "9000000000.00", "-1.250"),
            FakeSymbol::perpetual("ETH", "USDT").with_contract_type("CURRENT_QUARTER"),
        ],
    );

    let info = get(&ex, "/api/v3/exchangeInfo");
    assert_eq!(info.used_weight(), 20);
    let info = info.json();
    assert_eq!(info["timezone"], "UTC");
    assert!(info["serverTime"].as_i64().unwrap() >= CLOCK);
    assert_eq!(info["rateLimits"][0]["limit"], 6000);
    let symbols = info["symbols"].as_array().unwrap();
    assert_eq!(symbols.len(), 2);
    assert_eq!(
        (
            &symbols[0]["symbol"],
            &symbols[0]["status"],
            &symbols[0]["baseAsset"],
            &symbols[0]["quoteAsset"]
        ),
        (
            &json!("BTCUSDT"),
            &json!("TRADING"),
            &json!("BTC"),
            &json!("USDT")
        )
    );
    assert_eq!(symbols[1]["status"], "BREAK");
    assert!(symbols[0].get("contractType").is_none());
    let one = get(&ex, "/api/v3/exchangeInfo?symbol=LUNAUSDT").json();
    assert_eq!(one["symbols"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&ex, "/api/v3/exchangeInfo?symbol=NOPE").json()["code"],
        -1121
    );

    let tickers = get(&ex, "/api/v3/ticker/24hr");
    assert_eq!(tickers.used_weight(), 20 + 20 + 20 + 80);
    let tickers = tickers.json();
    let btc = &tickers[0];
    assert_eq!(btc["symbol"], "BTCUSDT");
    assert_eq!(btc["lastPrice"], "37000.01000000");
    assert_eq!(btc["quoteVolume"], "1500000000.12345678");
    assert_eq!(btc["priceChangePercent"], "2.500");
    for key in [
        "openPrice",
        "highPrice",
        "lowPrice",
        "volume",
        "prevClosePrice",
        "bidPrice",
    ] {
        assert!(btc[key].as_str().unwrap().parse::<f64>().is_ok(), "{key}");
    }
    let one = get(&ex, "/api/v3/ticker/24hr?symbol=BTCUSDT");
    assert_eq!(one.json()["symbol"], "BTCUSDT", "one symbol is an object");
    assert_eq!(ex.rest_requests().last().unwrap().weight, 2);
    let listed = get(&ex, "/api/v3/ticker/24hr?symbols=%5B%22LUNAUSDT%22%5D").json();
    assert_eq!(listed[0]["symbol"], "LUNAUSDT");

    let info = get(&ex, "/fapi/v1/exchangeInfo");
    assert_eq!(info.used_weight(), 1);
    let info = info.json();
    assert_eq!(info["rateLimits"][0]["limit"], 2400);
    assert_eq!(info["symbols"][0]["contractType"], "PERPETUAL");
    assert_eq!(info["symbols"][1]["contractType"], "CURRENT_QUARTER");
    assert_eq!(info["symbols"][0]["status"], "TRADING");
    let tickers = get(&ex, "/fapi/v1/ticker/24hr");
    assert_eq!(tickers.used_weight(), 41);
    let tickers = tickers.json();
    assert_eq!(tickers.as_array().unwrap().len(), 2);
    assert_eq!(tickers[0]["lastPrice"], "36990.10");
    assert_eq!(tickers[0]["priceChangePercent"], "-1.250");
    assert!(
        tickers[0].get("bidPrice").is_none(),
        "USD-M tickers have no book fields"
    );
    assert_eq!(
        get(&ex, "/fapi/v1/time").json()["serverTime"]
            .as_i64()
            .unwrap()
            / 1000,
        ex.now_ms() / 1000
    );
}

#[test]
fn rest_and_websocket_share_the_port_with_keep_alive() {
    let ex = rest_exchange();
    btc_history(&ex, "spot");
    assert_eq!(
        ex.http_base_url(),
        format!("http://127.0.0.1:{}", ex.port())
    );
    let mut conn = open_http(&ex);
    for _ in 0..3 {
        let reply = request(
            &mut conn,
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2",
            false,
        )
        .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("keep-alive"));
    }
    let last = request(&mut conn, "/api/v3/ping", true).unwrap();
    assert_eq!((last.status, last.body.as_str()), (200, "{}"));
    assert_eq!(last.header("connection"), Some("close"));
    let mut rest = String::new();
    assert_eq!(
        conn.read_to_string(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
    assert_eq!(ex.rest_connection_count(), 1);
    assert_eq!(ex.rest_request_count(), 4);
    assert!(ex
        .rest_requests()
        .iter()
        .all(|r| r.conn == ex.rest_requests()[0].conn));

    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
    ex.forming_update(BTC);
    assert_eq!(next_text(&mut ws)["stream"], BTC);
    assert_eq!(
        get(&ex, "/api/v3/time").status,
        200,
        "REST still answers with a socket open"
    );
    assert_eq!(ex.connect_count(), 1);
    assert_eq!(ex.connections(), 1);
}

#[test]
fn rest_over_tls_with_the_generated_ca() {
    let ex = FakeExchange::start(FakeOptions {
        clock_start_ms: Some(CLOCK),
        ..FakeOptions::default().with_tls()
    });
    assert!(ex
        .rest_base_url("futures")
        .starts_with("https://127.0.0.1:"));
    ex.set_markets("futures", vec![FakeSymbol::perpetual("BTC", "USDT")]);
    let tcp = TcpStream::connect(ex.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let tls = ClientConnection::new(
        tls_config(&ex.ca_pem().unwrap()),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut conn = BufReader::new(StreamOwned::new(tls, tcp));
    let reply = request(&mut conn, "/fapi/v1/exchangeInfo", false).unwrap();
    assert_eq!(reply.json()["symbols"][0]["symbol"], "BTCUSDT");
    let reply = request(&mut conn, "/fapi/v1/ticker/24hr?symbol=BTCUSDT", true).unwrap();
    assert_eq!((reply.status, reply.used_weight()), (200, 2));
    let mut ws = connect(&ex);
    subscribe(&mut ws, &ex, &[BTC], 1);
}

#[test]
fn shutdown_is_bounded_with_a_slow_rest_request_in_flight() {
    let ex = rest_exchange();
    // An hour: against the 60 s guard of `shutdown_returns`, a shutdown that
    // waited for the delay cannot pass, however slow the machine.
    ex.rest_delay(Duration::from_secs(3600));
    let addr = ex.addr();
    let client = std::thread::spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        request(&mut BufReader::new(tcp), "/api/v3/ping", false).map(|r| r.status).map_err(|e| e.kind())
    });
    assert!(ex.wait_until(WAIT, |ex| ex.rest_request_count() == 1));
    shutdown_returns(ex);
    // The client's request ended with the shutdown (cut short or closed), not by its own timeout.
    let outcome = client.join().unwrap();
    assert!(
        !matches!(outcome, Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "the slow request ended with the shutdown: {outcome:?}"
    );
}
