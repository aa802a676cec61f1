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
    let mut ex = FakeExchange::start(FakeOptions::default().with_tls());
    let _a = connect(&ex);
    let _idle = TcpStream::connect(ex.addr()).unwrap(); // never handshakes
    ex.start_cadence(&[BTC], Duration::from_millis(10));
    assert!(ex.wait_for_connections(1, WAIT));
    let started = Instant::now();
    ex.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
