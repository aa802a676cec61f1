//! Tests of one upstream connection: a real mio::Poll loop against tiny WebSocket
//! servers on loopback threads; the URL grammar and the TLS setup errors.

use super::*;
use std::io::{Read, Write};
use crate::shell::test_support::{
    closed_port, spawn_tcp_server, spawn_tls_server, ServerTls, TlsServer, TEST_TIMEOUT,
};
use mio::{Events, Poll};
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TOKEN: Token = Token(7);

type ServerWs = WebSocket<StdTcpStream>;

// --- the client side: the shell loop in miniature -----------------------------------------

struct Driver {
    poll: Poll,
    events: Events,
    conn: UpstreamConn,
    seen: Vec<UpstreamEvent>,
    /// Largest number of Text events produced by one `on_event` call.
    max_texts_per_call: usize,
}

impl Driver {
    fn connect(url: &str, tls: &TlsSetup, config: UpstreamConfig) -> Driver {
        let poll = Poll::new().unwrap();
        let mut conn = UpstreamConn::connect_with_config(url, tls, config, poll.registry(), TOKEN)
            .unwrap();
        // `localhost` (the TLS tests' certificate name) as the shell's hosts lookup has it.
        if let Some(host) = conn.resolving_host() {
            let addrs = crate::shell::dns::Hosts::default().lookup(host).expect("only localhost");
            let mut out = Vec::new();
            conn.on_resolved(Ok(&addrs), poll.registry(), &mut out);
            assert!(out.is_empty(), "{out:?}");
        }
        Driver::with_conn(poll, conn)
    }

    fn with_conn(poll: Poll, conn: UpstreamConn) -> Driver {
        Driver {
            poll,
            events: Events::with_capacity(16),
            conn,
            seen: Vec::new(),
            max_texts_per_call: 0,
        }
    }

    /// Runs the loop until `done(events so far)`; panics after TEST_TIMEOUT.
    fn run_until(&mut self, mut done: impl FnMut(&[UpstreamEvent]) -> bool) {
        let deadline = Instant::now() + TEST_TIMEOUT;
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "timed out; events: {:?}",
                self.seen
            );
            self.turn();
        }
    }

    fn run_until_closed(&mut self) -> String {
        self.run_until(|seen| closed_reason(seen).is_some());
        closed_reason(&self.seen).unwrap().to_owned()
    }

    /// One loop turn: poll, dispatch, re-dispatch a connection that wants to read more,
    /// bring the registration up to date.
    fn turn(&mut self) {
        let wait = if self.conn.wants_read() {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        self.poll.poll(&mut self.events, Some(wait)).unwrap();
        let ours = self.events.iter().any(|e| e.token() == TOKEN);
        if ours || self.conn.wants_read() {
            let mut out = Vec::new();
            self.conn.on_event(true, true, &mut out);
            let texts = out
                .iter()
                .filter(|e| matches!(e, UpstreamEvent::Text(_)))
                .count();
            self.max_texts_per_call = self.max_texts_per_call.max(texts);
            self.seen.extend(out);
        }
        self.conn.reregister(self.poll.registry(), TOKEN).unwrap();
    }

    fn texts(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                UpstreamEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    /// After Closed, more turns and spurious events report nothing.
    fn assert_silent_after_close(&mut self) {
        let before = self.seen.len();
        for _ in 0..3 {
            self.turn();
            let mut out = Vec::new();
            self.conn.on_event(true, true, &mut out);
            assert!(out.is_empty(), "events after Closed: {out:?}");
        }
        assert_eq!(self.seen.len(), before);
        assert!(!self.conn.is_open());
        let closes = self
            .seen
            .iter()
            .filter(|e| matches!(e, UpstreamEvent::Closed { .. }))
            .count();
        assert_eq!(closes, 1, "{:?}", self.seen);
    }
}

fn closed_reason(seen: &[UpstreamEvent]) -> Option<&str> {
    seen.iter().find_map(|e| match e {
        UpstreamEvent::Closed { reason } => Some(reason.as_str()),
        _ => None,
    })
}

fn connected(seen: &[UpstreamEvent]) -> bool {
    seen.contains(&UpstreamEvent::Connected)
}

fn plain_tls() -> TlsSetup {
    TlsSetup::new(None).unwrap()
}

// --- the server side ---------------------------------------------------------------------

/// Accepts one WebSocket on a loopback port and runs `script` on it in a thread.
fn spawn_ws_server<F>(script: F) -> (u16, thread::JoinHandle<()>)
where
    F: FnOnce(ServerWs) + Send + 'static,
{
    spawn_tcp_server(move |stream| script(tungstenite::accept(stream).unwrap()))
}

/// Reads until the client's close arrives (or the socket dies); returns the close frame.
fn read_until_close<S: Read + Write>(ws: &mut WebSocket<S>) -> Option<CloseFrame> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame,
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn read_text<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            return t.as_str().to_owned();
        }
    }
}

fn close_from_server<S: Read + Write>(ws: &mut WebSocket<S>, code: CloseCode, reason: &str) {
    ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
    .unwrap();
    // Drain until the client's reply (or EOF) so the close handshake completes.
    while ws.read().is_ok() {}
}

// --- URL parsing -------------------------------------------------------------------------

#[test]
fn parse_ws_url_accepts_the_usual_forms() {
    let cases = [
        (
            "wss://stream.binance.com:9443/stream",
            true,
            "stream.binance.com",
            9443,
            "/stream",
        ),
        (
            "wss://fstream.binance.com/market/stream?streams=a/b",
            true,
            "fstream.binance.com",
            443,
            "/market/stream?streams=a/b",
        ),
        (
            "ws://127.0.0.1:9000/stream",
            false,
            "127.0.0.1",
            9000,
            "/stream",
        ),
        ("ws://example.org", false, "example.org", 80, "/"),
        ("ws://example.org?x=1", false, "example.org", 80, "/?x=1"),
        ("ws://[::1]:9000/ws", false, "::1", 9000, "/ws"),
        ("wss://[2001:db8::1]/", true, "2001:db8::1", 443, "/"),
    ];
    for (text, secure, host, port, path) in cases {
        let url = parse_ws_url(text).unwrap();
        assert_eq!(
            url,
            WsUrl {
                secure,
                host: host.into(),
                port,
                path: path.into()
            },
            "{text}"
        );
    }
}

#[test]
fn parse_ws_url_rejects_with_a_reason() {
    let cases = [
        ("http://x/", "ws://"),
        ("ws://", "missing host"),
        ("ws://:80/", "missing host"),
        ("ws://host:0/", "port"),
        ("ws://host:99999/", "port"),
        ("ws://host:abc/", "port"),
        ("ws://::1/", "brackets"),
        ("ws://[::1/", "']'"),
        ("ws://[nothex]/", "IPv6"),
        ("ws://user@host/", "user info"),
        ("ws://host/#frag", "fragment"),
    ];
    for (text, needle) in cases {
        let err = parse_ws_url(text).unwrap_err();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn authority_omits_default_port_and_brackets_ipv6() {
    assert_eq!(
        parse_ws_url("wss://a.com:443/").unwrap().authority(),
        "a.com"
    );
    assert_eq!(
        parse_ws_url("wss://a.com:9443/").unwrap().authority(),
        "a.com:9443"
    );
    assert_eq!(
        parse_ws_url("ws://[::1]:81/").unwrap().authority(),
        "[::1]:81"
    );
}

#[test]
fn close_reason_is_truncated_on_a_char_boundary() {
    let long = "é".repeat(100); // 200 bytes
    let cut = truncate_utf8(&long);
    assert!(cut.len() <= MAX_CLOSE_REASON_BYTES);
    assert_eq!(cut.len(), 122);
    assert_eq!(truncate_utf8("short"), "short");
}

// --- TlsSetup ----------------------------------------------------------------------------

#[test]
fn tls_setup_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = TlsSetup::new(Some(&missing)).unwrap_err();
    assert!(
        err.contains("missing.pem") && err.contains("cannot read"),
        "{err}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = TlsSetup::new(Some(&empty)).unwrap_err();
    assert!(
        err.contains("empty.pem") && err.contains("no certificate"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = TlsSetup::new(Some(&garbage)).unwrap_err();
    assert!(err.contains("garbage.pem"), "{err}");
}

// --- plain ws:// behaviour ---------------------------------------------------------------

#[test]
fn receives_text_skips_binary_and_sends_text() {
    let (tx, rx) = mpsc::channel();
    let (port, server) = spawn_ws_server(move |mut ws| {
        ws.send(Message::text("one")).unwrap();
        ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
        ws.send(Message::text("two")).unwrap();
        ws.send(Message::text("three")).unwrap();
        tx.send(read_text(&mut ws)).unwrap();
        close_from_server(&mut ws, CloseCode::Normal, "bye");
    });
    let url = format!("ws://127.0.0.1:{port}/stream?streams=btcusdt@kline_1m");
    let mut d = Driver::connect(&url, &plain_tls(), UpstreamConfig::default());
    d.run_until(|seen| seen.len() >= 4);
    assert_eq!(d.seen[0], UpstreamEvent::Connected);
    assert!(d.conn.is_open());
    assert_eq!(d.texts(), ["one", "two", "three"]);
    assert_eq!(d.conn.binary_frames_ignored(), 1);

    d.conn
        .send_text("{\"method\":\"SUBSCRIBE\",\"params\":[],\"id\":1}".to_owned())
        .unwrap();
    let reason = d.run_until_closed();
    assert!(
        reason.contains("1000") && reason.contains("bye"),
        "{reason}"
    );
    assert_eq!(
        rx.recv_timeout(TEST_TIMEOUT).unwrap(),
        "{\"method\":\"SUBSCRIBE\",\"params\":[],\"id\":1}"
    );
    d.assert_silent_after_close();
    server.join().unwrap();
}

#[test]
fn server_ping_is_answered_with_the_same_payload() {
    let (tx, rx) = mpsc::channel();
    let (port, server) = spawn_ws_server(move |mut ws| {
        ws.send(Message::Ping(b"1700000000123".to_vec().into()))
            .unwrap();
        let pong = loop {
            if let Message::Pong(payload) = ws.read().unwrap() {
                break payload;
            }
        };
        tx.send(pong.to_vec()).unwrap();
        close_from_server(&mut ws, CloseCode::Normal, "");
    });
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/stream"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    d.run_until(|seen| seen.contains(&UpstreamEvent::Ping));
    let pong = rx.recv_timeout(TEST_TIMEOUT).unwrap();
    assert_eq!(pong, b"1700000000123");
    d.run_until_closed();
    server.join().unwrap();
}

#[test]
fn server_close_frame_reports_code_and_reason_and_gets_a_reply() {
    let (tx, rx) = mpsc::channel();
    let (port, server) = spawn_ws_server(move |mut ws| {
        ws.close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "Too many requests".into(),
        }))
        .unwrap();
        // tungstenite reports the peer's close reply as ConnectionClosed.
        let reply = loop {
            match ws.read() {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        tx.send(matches!(reply, tungstenite::Error::ConnectionClosed))
            .unwrap();
    });
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    let reason = d.run_until_closed();
    assert!(
        reason.contains("1008") && reason.contains("Too many requests"),
        "{reason}"
    );
    assert!(
        rx.recv_timeout(TEST_TIMEOUT).unwrap(),
        "server did not get our close reply"
    );
    d.assert_silent_after_close();
    server.join().unwrap();
}

#[test]
fn local_close_sends_a_close_frame_and_reports_nothing() {
    let (tx, rx) = mpsc::channel();
    let (port, server) = spawn_ws_server(move |mut ws| {
        let frame = read_until_close(&mut ws);
        tx.send(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
            .unwrap();
    });
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    d.run_until(connected);
    d.conn.close("rotating connection");
    d.conn.reregister(d.poll.registry(), TOKEN).unwrap();
    assert!(!d.conn.is_open());
    let got = rx.recv_timeout(TEST_TIMEOUT).unwrap();
    assert_eq!(got, Some((1000, "rotating connection".to_owned())));
    for _ in 0..3 {
        d.turn();
    }
    assert_eq!(d.seen, [UpstreamEvent::Connected]);
    assert!(d.conn.send_text("late".into()).is_err());
    d.conn.deregister(d.poll.registry()).unwrap();
    server.join().unwrap();
}

#[test]
fn eof_without_close_frame_is_reported() {
    let (port, server) = spawn_ws_server(drop);
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    let reason = d.run_until_closed();
    assert!(reason.contains("without a close frame"), "{reason}");
    assert!(connected(&d.seen));
    server.join().unwrap();
}

#[test]
fn host_name_waits_for_the_resolver_without_a_socket_then_connects() {
    let (port, server) = spawn_ws_server(|mut ws| {
        ws.send(Message::text("after dns")).unwrap();
        close_from_server(&mut ws, CloseCode::Normal, "");
    });
    let poll = Poll::new().unwrap();
    let url = format!("ws://Exchange.Test:{port}/stream");
    let mut conn = UpstreamConn::connect(&url, &plain_tls(), poll.registry(), TOKEN).unwrap();
    assert_eq!(conn.resolving_host(), Some("Exchange.Test"));
    assert_eq!(conn.wanted_interest(), None, "no socket while resolving");
    let mut out = Vec::new();
    conn.on_event(true, true, &mut out);
    conn.reregister(poll.registry(), TOKEN).unwrap();
    assert!(out.is_empty() && !conn.is_open());
    assert_eq!(conn.send_text("early".into()).unwrap_err().kind(), io::ErrorKind::NotConnected);
    let addrs = [IpAddr::from([127, 0, 0, 1])];
    conn.on_resolved(Ok(&addrs), poll.registry(), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(conn.resolving_host(), None);
    let mut d = Driver::with_conn(poll, conn);
    d.run_until(|seen| closed_reason(seen).is_some());
    assert!(connected(&d.seen));
    assert_eq!(d.texts(), ["after dns"]);
    // A second answer (a stale waiter) changes nothing.
    let mut late = Vec::new();
    d.conn.on_resolved(Err("late".into()), d.poll.registry(), &mut late);
    assert!(late.is_empty());
    server.join().unwrap();
}

#[test]
fn failed_resolution_is_closed_with_the_resolver_reason() {
    let poll = Poll::new().unwrap();
    let mut conn = UpstreamConn::connect("wss://nowhere.test/stream", &plain_tls(), poll.registry(), TOKEN).unwrap();
    let mut out = Vec::new();
    let reason = "resolving nowhere.test: no such name (NXDOMAIN)".to_owned();
    conn.on_resolved(Err(reason.clone()), poll.registry(), &mut out);
    assert_eq!(out, [UpstreamEvent::Closed { reason }]);
    let mut d = Driver::with_conn(poll, conn);
    d.seen = out;
    d.assert_silent_after_close();
}

#[test]
fn connecting_to_a_closed_port_closes_quickly() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/stream");
    let poll = Poll::new().unwrap();
    let conn = UpstreamConn::connect(&url, &plain_tls(), poll.registry(), TOKEN);
    // Loopback may refuse at once (an Err) or report it as an event (a Closed).
    let reason = match conn {
        Err(e) => e.to_string(),
        Ok(conn) => Driver::with_conn(poll, conn).run_until_closed(),
    };
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    assert!(reason.contains(&port.to_string()), "{reason}");
}

#[test]
fn falls_back_to_the_next_address() {
    let (port, server) = spawn_ws_server(|mut ws| {
        ws.send(Message::text("via fallback")).unwrap();
        close_from_server(&mut ws, CloseCode::Normal, "");
    });
    let dead: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let live: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = parse_ws_url(&format!("ws://localhost:{port}/")).unwrap();
    let poll = Poll::new().unwrap();
    let conn = UpstreamConn::connect_to_addrs(
        url,
        VecDeque::from([dead, live]),
        &plain_tls(),
        UpstreamConfig::default(),
        poll.registry(),
        TOKEN,
    );
    // If the kernel refused `dead` synchronously, connect_first already skipped it.
    let mut d = Driver::with_conn(poll, conn.unwrap());
    d.run_until(|seen| seen.len() >= 2);
    assert_eq!(
        d.seen[..2],
        [
            UpstreamEvent::Connected,
            UpstreamEvent::Text("via fallback".into())
        ]
    );
    d.run_until_closed();
    server.join().unwrap();
}

#[test]
fn http_error_instead_of_101_reports_the_status() {
    let (port, server) = spawn_tcp_server(|mut stream| {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "client hung up before sending the request");
            request.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&request).to_string();
        assert!(
            text.starts_with("GET /stream?streams=x HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.to_lowercase().contains(&format!(
            "host: 127.0.0.1:{}",
            stream.local_addr().unwrap().port()
        )));
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    });
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/stream?streams=x"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    let reason = d.run_until_closed();
    assert!(reason.contains("404"), "{reason}");
    assert!(!connected(&d.seen));
    d.assert_silent_after_close();
    server.join().unwrap();
}

#[test]
fn oversized_message_closes_the_connection() {
    let (port, server) = spawn_ws_server(|mut ws| {
        // The client hangs up mid-send; that error is expected.
        let _ = ws.send(Message::text("x".repeat(4096)));
    });
    let config = UpstreamConfig {
        max_message_size: 1024,
        ..UpstreamConfig::default()
    };
    let mut d = Driver::connect(&format!("ws://127.0.0.1:{port}/"), &plain_tls(), config);
    let reason = d.run_until_closed();
    assert!(reason.contains("size limit"), "{reason}");
    server.join().unwrap();
}

#[test]
fn message_budget_bounds_each_call_and_loses_nothing() {
    const COUNT: usize = 300;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (port, server) = spawn_ws_server(move |mut ws| {
        go_rx.recv_timeout(TEST_TIMEOUT).unwrap();
        for i in 0..COUNT {
            ws.write(Message::text(format!("m{i}"))).unwrap();
        }
        ws.flush().unwrap();
        sent_tx.send(()).unwrap();
        assert_eq!(read_text(&mut ws), "done");
        close_from_server(&mut ws, CloseCode::Normal, "");
    });
    let config = UpstreamConfig {
        max_messages_per_event: 10,
        ..UpstreamConfig::default()
    };
    let mut d = Driver::connect(&format!("ws://127.0.0.1:{port}/"), &plain_tls(), config);
    d.run_until(connected);
    // Let every frame reach our socket buffer before the loop reads, so the budget binds.
    go_tx.send(()).unwrap();
    sent_rx.recv_timeout(TEST_TIMEOUT).unwrap();
    d.run_until(|seen| seen.len() > COUNT);
    let expected: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    assert_eq!(d.texts(), expected);
    assert_eq!(
        d.max_texts_per_call, 10,
        "the budget should bind and never be exceeded"
    );
    d.conn.send_text("done".into()).unwrap();
    d.run_until_closed();
    server.join().unwrap();
}

#[test]
fn pending_output_wants_writable_and_is_flushed_later() {
    const CHUNK: usize = 64 * 1024;
    let (go_tx, go_rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let (port, server) = spawn_ws_server(move |mut ws| {
        // Read nothing until the client has filled every buffer on the way.
        let expected = go_rx.recv_timeout(TEST_TIMEOUT).unwrap();
        let mut received = 0;
        while received < expected {
            if let Message::Text(t) = ws.read().unwrap() {
                assert_eq!(t.len(), CHUNK);
                received += 1;
            }
        }
        done_tx.send(received).unwrap();
        close_from_server(&mut ws, CloseCode::Normal, "");
    });
    let mut d = Driver::connect(
        &format!("ws://127.0.0.1:{port}/"),
        &plain_tls(),
        UpstreamConfig::default(),
    );
    d.run_until(connected);
    assert_eq!(d.conn.registered, Some(Interest::READABLE));
    let mut sent = 0;
    while !d.conn.output_pending {
        assert!(sent < 4096, "socket never pushed back");
        match d.conn.send_text("x".repeat(CHUNK)) {
            Ok(()) => sent += 1,
            Err(e) => panic!("send_text: {e}"),
        }
    }
    d.conn.reregister(d.poll.registry(), TOKEN).unwrap();
    assert_eq!(
        d.conn.registered,
        Some(Interest::READABLE | Interest::WRITABLE)
    );
    go_tx.send(sent).unwrap();
    // Only writable events can move the rest: the server sends nothing meanwhile.
    let deadline = Instant::now() + TEST_TIMEOUT;
    while d.conn.output_pending {
        assert!(Instant::now() < deadline, "pending output never flushed");
        d.turn();
    }
    assert_eq!(d.conn.registered, Some(Interest::READABLE));
    assert_eq!(done_rx.recv_timeout(TEST_TIMEOUT).unwrap(), sent);
    d.run_until_closed();
    server.join().unwrap();
}

#[test]
fn send_before_open_is_not_connected() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let poll = Poll::new().unwrap();
    let mut conn = UpstreamConn::connect(
        &format!("ws://127.0.0.1:{port}/"),
        &plain_tls(),
        poll.registry(),
        TOKEN,
    )
    .unwrap();
    let err = conn.send_text("early".into()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    assert!(!conn.is_open());
    conn.deregister(poll.registry()).unwrap();
}

// --- wss:// ------------------------------------------------------------------------------

/// A rustls + tungstenite server with a fresh self-signed certificate for localhost.
/// `script` gets `None` when the handshake fails (the untrusted-client test).
fn spawn_tls_ws_server<F>(script: F) -> TlsServer
where
    F: FnOnce(Option<WebSocket<ServerTls>>) + Send + 'static,
{
    spawn_tls_server(move |tls| script(tungstenite::accept(tls).ok()))
}

#[test]
fn wss_with_a_trusted_self_signed_certificate() {
    let (tx, rx) = mpsc::channel();
    let server = spawn_tls_ws_server(move |ws| {
        let mut ws = ws.expect("TLS/WebSocket handshake failed on the server");
        ws.send(Message::text("tls-hello")).unwrap();
        ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
        tx.send(read_text(&mut ws)).unwrap();
        close_from_server(&mut ws, CloseCode::Away, "rotate");
    });
    let tls = TlsSetup::new(Some(&server.ca_pem)).unwrap();
    let url = format!("wss://localhost:{}/stream", server.port);
    let mut d = Driver::connect(&url, &tls, UpstreamConfig::default());
    d.run_until(|seen| seen.contains(&UpstreamEvent::Ping));
    assert_eq!(
        d.seen[..2],
        [
            UpstreamEvent::Connected,
            UpstreamEvent::Text("tls-hello".into())
        ]
    );
    d.conn.send_text("over tls".into()).unwrap();
    let reason = d.run_until_closed();
    assert!(
        reason.contains("1001") && reason.contains("rotate"),
        "{reason}"
    );
    assert_eq!(rx.recv_timeout(TEST_TIMEOUT).unwrap(), "over tls");
    d.assert_silent_after_close();
    server.handle.join().unwrap();
}

#[test]
fn wss_with_an_untrusted_certificate_reports_a_tls_error() {
    let server =
        spawn_tls_ws_server(|ws| assert!(ws.is_none(), "handshake should have failed"));
    let url = format!("wss://localhost:{}/stream", server.port);
    let mut d = Driver::connect(&url, &plain_tls(), UpstreamConfig::default());
    let reason = d.run_until_closed();
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "{reason}"
    );
    assert!(!connected(&d.seen));
    d.assert_silent_after_close();
    server.handle.join().unwrap();
}
