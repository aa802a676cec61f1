//! Tests of one REST request: the response parser on its own, then a real mio::Poll
//! loop against tiny loopback servers.

use super::*;
use crate::shell::test_support::{closed_port, spawn_tcp_server, spawn_tls_server, TEST_TIMEOUT};
use mio::{Events, Poll};
use crate::wire::http::response::tests::frame;
use std::net::TcpStream as StdTcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const TOKEN: Token = Token(3);

// --- the outcome of a parsed response (the codec's own tests are in wire::http::response)

/// Feeds `pieces` in order, then EOF if the response is not complete by then.
fn parse_pieces(pieces: &[&[u8]], limits: RestLimits) -> RestOutcome {
    let mut reader = ResponseReader::new(limits);
    let done = |r: Result<Received, String>| {
        r.and_then(outcome).unwrap_or_else(|reason| RestOutcome::Failed { reason })
    };
    for piece in pieces {
        match reader.feed(piece) {
            Ok(Some(received)) => return done(Ok(received)),
            Ok(None) => {}
            Err(reason) => return RestOutcome::Failed { reason },
        }
    }
    done(reader.finish_at_eof())
}

fn parse(raw: &[u8]) -> RestOutcome {
    parse_pieces(&[raw], RestLimits::default())
}

fn status_and_body(outcome: &RestOutcome) -> (u16, &str) {
    match outcome {
        RestOutcome::Response { status, body, .. } => (*status, body.as_str()),
        RestOutcome::Failed { reason } => panic!("expected a response, got: {reason}"),
    }
}

/// `(retry_after_s, used_weight_1m)` of a response.
fn rate_fields(outcome: &RestOutcome) -> (Option<u64>, Option<u32>) {
    match outcome {
        RestOutcome::Response {
            retry_after_s,
            used_weight_1m,
            ..
        } => (*retry_after_s, *used_weight_1m),
        RestOutcome::Failed { reason } => panic!("expected a response, got: {reason}"),
    }
}

fn failure(outcome: &RestOutcome) -> &str {
    match outcome {
        RestOutcome::Failed { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn rate_limited_response_reports_retry_after_and_weight() {
    let body = r#"{"code":-1003,"msg":"Too many requests."}"#;
    let raw = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n\
         Retry-After: 7\r\nX-MBX-USED-WEIGHT-1M: 6042\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let outcome = parse(raw.as_bytes());
    assert_eq!(status_and_body(&outcome), (429, body));
    assert_eq!(rate_fields(&outcome), (Some(7), Some(6042)));
    let RestOutcome::Response { headers, .. } = outcome else {
        unreachable!()
    };
    let content_type = ("content-type".into(), "application/json".into());
    assert_eq!(headers[0], content_type);
    assert_eq!(headers[2], ("x-mbx-used-weight-1m".into(), "6042".into()));
}

#[test]
fn absent_or_unparsable_rate_headers_are_none() {
    let raw = b"HTTP/1.1 418 I'm a teapot\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n\
                Content-Length: 2\r\n\r\n{}";
    let outcome = parse(raw);
    assert_eq!(status_and_body(&outcome), (418, "{}"));
    assert_eq!(rate_fields(&outcome), (None, None));
}

#[test]
fn a_body_that_is_not_utf8_fails() {
    let outcome = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe");
    assert!(failure(&outcome).contains("(HTTP 200) is not valid UTF-8"), "{outcome:?}");
    let outcome = parse(b"HTTP/1.0 200 OK\r\n\r\n\xff");
    assert!(failure(&outcome).contains("not valid UTF-8"), "{outcome:?}");
}

#[test]
fn request_target_joins_the_base_path_and_refuses_bad_paths() {
    let base = parse_url_with_schemes("http://h/prefix/", "http://", "https://").unwrap();
    assert_eq!(
        request_target(&base, "/api/v3/klines?a=1").unwrap(),
        "/prefix/api/v3/klines?a=1"
    );
    let root = parse_url_with_schemes("https://h", "http://", "https://").unwrap();
    assert_eq!(request_target(&root, "/x").unwrap(), "/x");
    assert!(request_target(&root, "x")
        .unwrap_err()
        .contains("start with '/'"));
    assert!(request_target(&root, "/a b")
        .unwrap_err()
        .contains("percent-encode"));
    assert!(request_target(&root, "/a\r\nX: y")
        .unwrap_err()
        .contains("percent-encode"));
    let with_query = parse_url_with_schemes("http://h/?q=1", "http://", "https://").unwrap();
    assert!(request_target(&with_query, "/x")
        .unwrap_err()
        .contains("query"));
}

// --- the client side: the shell loop in miniature ---------------------------------------

struct Driver {
    poll: Poll,
    events: Events,
    conn: RestConn,
    /// The interest after every turn, to check the registration rules.
    interests: Vec<Option<Interest>>,
    /// Leave a reusable socket open after the outcome (for `into_idle`).
    keep_alive: bool,
}

impl Driver {
    fn start(base: &str, path: &str, tls: &TlsSetup, limits: RestLimits) -> Driver {
        let poll = Poll::new().unwrap();
        let mut conn = RestConn::start(base, path, tls, poll.registry(), TOKEN)
            .unwrap()
            .with_limits(limits);
        // `localhost` (the TLS tests' certificate name) as the shell's hosts lookup has it.
        if let Some(host) = conn.resolving_host() {
            let addrs = crate::shell::dns::Hosts::default().lookup(host).expect("only localhost");
            assert_eq!(conn.on_resolved(Ok(&addrs), poll.registry()), None);
        }
        Driver::with_conn(poll, conn)
    }

    fn with_conn(poll: Poll, conn: RestConn) -> Driver {
        let interests = vec![conn.registered];
        Driver {
            poll,
            events: Events::with_capacity(8),
            conn,
            interests,
            keep_alive: false,
        }
    }

    /// Turns the loop until the outcome; `on_event` only on our readiness events.
    fn run(&mut self) -> RestOutcome {
        let deadline = Instant::now() + TEST_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no outcome: {:?}", self.conn);
            let wait = Some(Duration::from_millis(50));
            self.poll.poll(&mut self.events, wait).unwrap();
            let ours = self.events.iter().any(|e| e.token() == TOKEN);
            let outcome = if ours {
                self.conn.on_event(true, true)
            } else {
                None
            };
            self.conn.reregister(self.poll.registry(), TOKEN).unwrap();
            self.interests.push(self.conn.registered);
            if let Some(outcome) = outcome {
                self.assert_finished();
                return outcome;
            }
        }
    }

    fn assert_finished(&mut self) {
        assert!(self.conn.is_finished());
        assert_eq!(self.conn.registered, None);
        assert_eq!(
            self.conn.on_event(true, true),
            None,
            "outcome reported twice"
        );
        self.conn.deregister(self.poll.registry()).unwrap();
        if !self.keep_alive {
            // A kept-alive socket is closed here, as the shell closes one it does not pool.
            if let Some(mut transport) = self.conn.transport.take() {
                transport.shut_down();
            }
        }
    }
}

fn plain_tls() -> TlsSetup {
    TlsSetup::new(None).unwrap()
}

// --- the server side ---------------------------------------------------------------------

/// Reads up to the end of the request head; `None` if the client (or TLS) failed first.
fn read_request_head<S: Read>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Waits until the client hangs up: proves the client finished without our EOF.
fn wait_for_client_close<S: Read>(stream: &mut S) {
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Answers one request with `response`, then `after` (e.g. wait for the client's close).
/// The request head comes back through the channel.
fn spawn_http_server(
    response: Vec<u8>,
    after: fn(&mut StdTcpStream),
) -> (u16, thread::JoinHandle<()>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let (port, handle) = spawn_tcp_server(move |mut stream| {
        let head = read_request_head(&mut stream).expect("no request");
        // Tests that ignore the request drop the receiver.
        let _ = tx.send(head);
        // The client may hang up early on purpose (size limit): ignore write errors.
        let _ = stream.write_all(&response);
        after(&mut stream);
    });
    (port, handle, rx)
}

fn hang_up(_: &mut StdTcpStream) {}

#[test]
fn host_name_waits_for_the_resolver_then_fetches() {
    let body = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let (port, server, heads) = spawn_http_server(body.into(), hang_up);
    let poll = Poll::new().unwrap();
    let base = format!("http://api.exchange.test:{port}/v1");
    let mut conn = RestConn::start(&base, "/ping", &plain_tls(), poll.registry(), TOKEN).unwrap();
    assert_eq!(conn.resolving_host(), Some("api.exchange.test"));
    assert_eq!(conn.on_event(true, true), None, "nothing to do while resolving");
    conn.reregister(poll.registry(), TOKEN).unwrap();
    assert_eq!(conn.registered, None);
    assert!(!conn.is_finished());
    let addrs = [IpAddr::from([127, 0, 0, 1])];
    assert_eq!(conn.on_resolved(Ok(&addrs), poll.registry()), None);
    assert_eq!(conn.resolving_host(), None);
    let outcome = Driver::with_conn(poll, conn).run();
    assert!(matches!(outcome, RestOutcome::Response { status: 200, .. }), "{outcome:?}");
    let head = heads.recv().unwrap();
    assert!(head.starts_with("GET /v1/ping HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Host: api.exchange.test:{port}\r\n")), "{head}");
    server.join().unwrap();
}

#[test]
fn failed_resolution_is_the_failed_outcome() {
    let poll = Poll::new().unwrap();
    let mut conn = RestConn::start("https://fapi.example", "/x", &plain_tls(), poll.registry(), TOKEN).unwrap();
    let reason = "resolving fapi.example: timed out after 10.0 s".to_owned();
    let outcome = conn.on_resolved(Err(reason), poll.registry());
    assert_eq!(
        outcome,
        Some(RestOutcome::Failed { reason: "GET https://fapi.example/x: resolving fapi.example: timed out after 10.0 s".into() })
    );
    assert!(conn.is_finished());
    assert_eq!(conn.on_resolved(Err("again".into()), poll.registry()), None);
}

fn base(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Serves `response` once (then `after`) and runs `GET path` against it to the outcome.
fn fetch(
    response: impl Into<Vec<u8>>,
    after: fn(&mut StdTcpStream),
    path: &str,
    limits: RestLimits,
) -> RestOutcome {
    let (port, server, _) = spawn_http_server(response.into(), after);
    let outcome = Driver::start(&base(port), path, &plain_tls(), limits).run();
    server.join().unwrap();
    outcome
}

#[test]
fn content_length_response_arrives_without_waiting_for_eof() {
    let body = r#"[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]"#;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n\
         X-MBX-USED-WEIGHT-1M: 2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (port, server, requests) =
        spawn_http_server(response.into_bytes(), wait_for_client_close);
    let path = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1";
    let mut d = Driver::start(&base(port), path, &plain_tls(), RestLimits::default());
    assert_eq!(d.conn.url(), format!("http://127.0.0.1:{port}{path}"));
    let outcome = d.run();
    let RestOutcome::Response {
        status,
        body: got,
        used_weight_1m,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        (*status, got.as_str(), *used_weight_1m),
        (200, body, Some(2))
    );

    let request = requests.recv_timeout(TEST_TIMEOUT).unwrap();
    let expected = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: klinegate/{}\r\n\
         Accept: application/json\r\nAccept-Encoding: identity\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(request, expected);
    server.join().unwrap();

    // Both directions while connecting/writing, then READABLE only, then nothing.
    let both = Some(Interest::READABLE | Interest::WRITABLE);
    assert_eq!(d.interests.first(), Some(&both));
    assert_eq!(d.interests.last(), Some(&None));
    assert!(d
        .interests
        .iter()
        .all(|i| [both, Some(Interest::READABLE), None].contains(i)));
}

#[test]
fn chunked_response_over_loopback() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     b\r\n{\"symbols\":\r\n4\r\n[]}\n\r\n0\r\n\r\n";
    let path = "/api/v3/exchangeInfo";
    let outcome = fetch(
        *response,
        wait_for_client_close,
        path,
        RestLimits::default(),
    );
    assert_eq!(status_and_body(&outcome), (200, "{\"symbols\":[]}\n"));
}

#[test]
fn body_until_eof_over_loopback() {
    let response = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[\"1.5\"]";
    let path = "/api/v3/ticker/24hr?symbol=X";
    let outcome = fetch(*response, hang_up, path, RestLimits::default());
    assert_eq!(status_and_body(&outcome), (200, "[\"1.5\"]"));
}

#[test]
fn rate_limit_answer_over_loopback() {
    let body = r#"{"code":-1003,"msg":"Way too much request weight used."}"#;
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 31\r\nx-mbx-used-weight-1m: 2401\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let path = "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1500";
    let outcome = fetch(response, wait_for_client_close, path, RestLimits::default());
    assert_eq!(status_and_body(&outcome), (429, body));
    assert_eq!(rate_fields(&outcome), (Some(31), Some(2401)));
}

#[test]
fn connection_refused_fails_quickly() {
    let port = closed_port();
    let poll = Poll::new().unwrap();
    let conn = RestConn::start(
        &base(port),
        "/api/v3/klines",
        &plain_tls(),
        poll.registry(),
        TOKEN,
    );
    // Loopback may refuse at once (an Err) or report it as an event (a Failed).
    let reason = match conn {
        Err(e) => e.to_string(),
        Ok(conn) => failure(&Driver::with_conn(poll, conn).run()).to_owned(),
    };
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    assert!(reason.contains(&port.to_string()), "{reason}");
}

#[test]
fn server_closing_mid_body_fails() {
    let response = *b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,2,3";
    let outcome = fetch(response, hang_up, "/x", RestLimits::default());
    let reason = failure(&outcome);
    assert!(reason.contains("/x: the server closed"), "{reason}");
    assert!(reason.contains("after 6 of 100 body bytes"), "{reason}");
    assert!(reason.starts_with("GET http://127.0.0.1:"), "{reason}");
}

#[test]
fn oversized_bodies_fail() {
    // Declared too large for the default 8 MiB limit: refused from the head alone.
    let declared = *b"HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n";
    let outcome = fetch(
        declared,
        wait_for_client_close,
        "/big",
        RestLimits::default(),
    );
    assert!(
        failure(&outcome).contains("8388608-byte limit"),
        "{outcome:?}"
    );

    // Streamed past a small limit with no length announced.
    let mut streamed = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    streamed.extend(std::iter::repeat_n(b'x', 256 * 1024));
    let limits = RestLimits {
        max_body_bytes: 100_000,
        ..RestLimits::default()
    };
    let outcome = fetch(streamed, hang_up, "/big", limits);
    assert!(
        failure(&outcome).contains("100000-byte limit"),
        "{outcome:?}"
    );
}

#[test]
fn slow_server_sending_small_pieces() {
    let body: String = (0..40).map(|i| format!("[{i},\"{i}.5\"],")).collect();
    let response = frame(&body, 1, &[7, 1, 13]);
    let (port, server) = spawn_tcp_server(move |mut stream| {
        read_request_head(&mut stream).expect("no request");
        stream.set_nodelay(true).unwrap();
        for piece in response.chunks(5) {
            stream.write_all(piece).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        wait_for_client_close(&mut stream);
    });
    let mut d = Driver::start(&base(port), "/slow", &plain_tls(), RestLimits::default());
    assert_eq!(status_and_body(&d.run()), (200, body.as_str()));
    // Many readable turns while reading, never WRITABLE then.
    let reading = d
        .interests
        .iter()
        .filter(|i| **i == Some(Interest::READABLE))
        .count();
    assert!(reading > 10, "{:?}", d.interests);
    server.join().unwrap();
}

#[test]
fn falls_back_to_the_next_address() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let (port, server, _) = spawn_http_server(response, wait_for_client_close);
    let dead: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let live: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url =
        parse_url_with_schemes(&format!("http://localhost:{port}"), "http://", "https://")
            .unwrap();
    let poll = Poll::new().unwrap();
    let dest = Destination {
        url,
        target: "/".to_owned(),
        addrs: VecDeque::from([dead, live]),
    };
    let conn = RestConn::start_to(dest, &plain_tls(), poll.registry(), TOKEN).unwrap();
    // If the kernel refused `dead` synchronously, start already skipped it.
    let outcome = Driver::with_conn(poll, conn).run();
    assert_eq!(status_and_body(&outcome), (200, "ok"));
    server.join().unwrap();
}

#[test]
fn bad_input_is_refused_at_start() {
    let poll = Poll::new().unwrap();
    let cases = [
        ("ftp://h", "/x", "http://"),
        ("http://h:0", "/x", "port"),
        ("http://127.0.0.1:1", "x", "start with '/'"),
    ];
    for (base, path, needle) in cases {
        let err =
            RestConn::start(base, path, &plain_tls(), poll.registry(), TOKEN).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(needle), "{base} {path}: {err}");
    }
}

// --- https:// ----------------------------------------------------------------------------

#[test]
fn https_with_a_trusted_self_signed_certificate() {
    let (tx, rx) = mpsc::channel();
    let server = spawn_tls_server(move |mut tls| {
        let head = read_request_head(&mut tls).expect("TLS handshake or request failed");
        tx.send(head).unwrap();
        let body = "[1,2,3]";
        let response = format!(
            "HTTP/1.1 200 OK\r\nX-MBX-USED-WEIGHT-1M: 5\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(response.as_bytes()).unwrap();
        tls.flush().unwrap();
        wait_for_client_close(&mut tls);
    });
    let tls = TlsSetup::new(Some(&server.ca_pem)).unwrap();
    let base = format!("https://localhost:{}", server.port);
    let mut d = Driver::start(
        &base,
        "/fapi/v1/klines?symbol=BTCUSDT",
        &tls,
        RestLimits::default(),
    );
    let outcome = d.run();
    assert_eq!(status_and_body(&outcome), (200, "[1,2,3]"));
    let request = rx.recv_timeout(TEST_TIMEOUT).unwrap();
    assert!(
        request.contains(&format!("\r\nHost: localhost:{}\r\n", server.port)),
        "{request}"
    );
    server.handle.join().unwrap();
}

#[test]
fn https_with_an_untrusted_certificate_fails_with_a_tls_error() {
    let server = spawn_tls_server(|mut tls| {
        assert!(
            read_request_head(&mut tls).is_none(),
            "handshake should have failed"
        );
    });
    let base = format!("https://localhost:{}", server.port);
    let mut d = Driver::start(&base, "/api/v3/klines", &plain_tls(), RestLimits::default());
    let outcome = d.run();
    let reason = failure(&outcome);
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "{reason}"
    );
    server.handle.join().unwrap();
}

// --- keep-alive ---------------------------------------------------------------------------

const PAGE: &str = "HTTP/1.1 200 OK\r\nX-MBX-USED-WEIGHT-1M: 2\r\nContent-Length: 2\r\n\r\n[]";

/// Runs `GET path` through `pool` (reusing an idle connection when one is open) with a
/// fresh poll; the connection goes back into the pool when its answer allows.
fn fetch_pooled(base: &str, path: &str, tls: &TlsSetup, pool: &mut RestPool) -> RestOutcome {
    let poll = Poll::new().unwrap();
    let conn = RestConn::start_pooled(base, path, tls, pool, poll.registry(), TOKEN).unwrap();
    let mut d = Driver::with_conn(poll, conn);
    d.keep_alive = true;
    let outcome = d.run();
    if let Some(idle) = d.conn.into_idle(Instant::now()) {
        pool.put(idle);
    }
    outcome
}

#[test]
fn a_kept_alive_connection_carries_the_next_requests() {
    let (tx, rx) = mpsc::channel();
    let (port, server) = spawn_tcp_server(move |mut stream| {
        // One connection, three requests on it, then the client hangs up.
        for _ in 0..3 {
            let head = read_request_head(&mut stream).expect("the next request on the same connection");
            tx.send(head).unwrap();
            stream.write_all(PAGE.as_bytes()).unwrap();
        }
        wait_for_client_close(&mut stream);
    });
    let mut pool = RestPool::default();
    for page in 0..3 {
        let outcome = fetch_pooled(&base(port), &format!("/api/v3/klines?page={page}"), &plain_tls(), &mut pool);
        assert_eq!(status_and_body(&outcome), (200, "[]"));
        let head = rx.recv_timeout(TEST_TIMEOUT).unwrap();
        assert!(head.starts_with(&format!("GET /api/v3/klines?page={page} HTTP/1.1\r\n")), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(pool.len(), 1);
    }
    assert_eq!(pool.reused, 2, "pages 2 and 3 went over page 1's connection");
    // Another host (the same address under another name) never shares it.
    let other = format!("http://localhost:{port}");
    let to = IdleDestination { secure: false, host: "localhost".into(), port };
    assert!(pool.take(&to, Instant::now()).is_none(), "{other}");
    drop(pool);
    server.join().unwrap();
}

#[test]
fn connection_close_http10_and_until_eof_answers_are_not_kept() {
    for response in [
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]",
        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        "HTTP/1.1 200 OK\r\n\r\n[]",
    ] {
        let (port, server, _) = spawn_http_server(response.into(), hang_up);
        let mut pool = RestPool::default();
        let outcome = fetch_pooled(&base(port), "/x", &plain_tls(), &mut pool);
        assert_eq!(status_and_body(&outcome), (200, "[]"), "{response}");
        assert!(pool.is_empty(), "{response}");
        server.join().unwrap();
    }
}

#[test]
fn an_idle_connection_the_server_closed_is_not_handed_out() {
    let (port, server) = spawn_tcp_server(move |mut stream| {
        read_request_head(&mut stream).expect("request");
        stream.write_all(PAGE.as_bytes()).unwrap();
        // The server's idle timeout: it closes the kept-alive connection.
    });
    let mut pool = RestPool::default();
    let outcome = fetch_pooled(&base(port), "/x", &plain_tls(), &mut pool);
    assert_eq!(status_and_body(&outcome), (200, "[]"));
    assert_eq!(pool.len(), 1);
    server.join().unwrap();
    // The server's FIN reaches our socket (a bounded wait for it), then the probe
    // on `take` finds the connection closed and drops it.
    let deadline = Instant::now() + TEST_TIMEOUT;
    while pool.open_count() > 0 {
        assert!(Instant::now() < deadline, "the server's close never arrived");
        thread::sleep(Duration::from_millis(5));
    }
    let to = IdleDestination { secure: false, host: "127.0.0.1".into(), port };
    assert!(pool.take(&to, Instant::now()).is_none(), "a closed connection was handed out");
    assert!(pool.is_empty());
    assert_eq!(pool.reused, 0);
}

#[test]
fn a_request_on_a_reused_connection_closed_under_it_redials_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        first.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        read_request_head(&mut first).expect("first request");
        first.write_all(PAGE.as_bytes()).unwrap();
        // The second request arrives on the kept-alive connection: closed unanswered,
        // as a server whose idle timeout fired as the request was on its way.
        read_request_head(&mut first).expect("second request, first try");
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        second.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        let head = read_request_head(&mut second).expect("second request, on a new connection");
        second.write_all(PAGE.as_bytes()).unwrap();
        // A third connection is never made: the redial happens once.
        listener.set_nonblocking(true).unwrap();
        wait_for_client_close(&mut second);
        assert!(listener.accept().is_err(), "no third connection");
        head
    });
    let mut pool = RestPool::default();
    assert_eq!(status_and_body(&fetch_pooled(&base(port), "/one", &plain_tls(), &mut pool)), (200, "[]"));
    assert_eq!(status_and_body(&fetch_pooled(&base(port), "/two", &plain_tls(), &mut pool)), (200, "[]"));
    assert_eq!(pool.reused, 1);
    drop(pool);
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /two HTTP/1.1\r\n"), "{head}");
}

#[test]
fn a_reused_connection_that_fails_again_is_the_failed_outcome() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        first.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        read_request_head(&mut first).expect("first request");
        first.write_all(PAGE.as_bytes()).unwrap();
        read_request_head(&mut first).expect("second request");
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        second.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        read_request_head(&mut second).expect("second request, on a new connection");
        // Closed unanswered again: no more tries.
    });
    let mut pool = RestPool::default();
    assert_eq!(status_and_body(&fetch_pooled(&base(port), "/one", &plain_tls(), &mut pool)), (200, "[]"));
    let outcome = fetch_pooled(&base(port), "/two", &plain_tls(), &mut pool);
    assert!(failure(&outcome).contains("closed the connection without answering"), "{outcome:?}");
    assert!(pool.is_empty());
    server.join().unwrap();
}

#[test]
fn https_keeps_its_connection_and_handshakes_once() {
    let (tx, rx) = mpsc::channel();
    let server = spawn_tls_server(move |mut tls| {
        for _ in 0..2 {
            let head = read_request_head(&mut tls).expect("a request over the one TLS session");
            tx.send(head).unwrap();
            tls.write_all(PAGE.as_bytes()).unwrap();
            tls.flush().unwrap();
        }
        wait_for_client_close(&mut tls);
    });
    let tls = TlsSetup::new(Some(&server.ca_pem)).unwrap();
    let base = format!("https://127.0.0.1:{}", server.port);
    let mut pool = RestPool::default();
    for path in ["/fapi/v1/klines?a=1", "/fapi/v1/klines?a=2"] {
        assert_eq!(status_and_body(&fetch_pooled(&base, path, &tls, &mut pool)), (200, "[]"));
        assert!(rx.recv_timeout(TEST_TIMEOUT).unwrap().starts_with(&format!("GET {path} ")));
    }
    assert_eq!(pool.reused, 1);
    drop(pool);
    server.handle.join().unwrap();
}
