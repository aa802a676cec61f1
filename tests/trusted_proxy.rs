//! Per-address connection limits behind a reverse proxy, against the real
//! binary over loopback. Every browser behind a proxy shares its address: by
//! default that address may hold as many connections as the server takes in
//! total, and with `--trusted-proxy` the limit counts the client the proxy
//! forwards (`X-Forwarded-For` / `Forwarded`), never what an untrusted peer
//! claims.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::live::Live;

const SEC: Duration = Duration::from_secs(1);

/// A TCP connection from `source`, with a read timeout.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let s = support::live::connect_from(source, addr);
    s.set_read_timeout(Some(5 * SEC)).unwrap();
    s
}

/// One keep-alive request on `s`; the status and JSON body. The connection stays open.
fn request(s: &mut TcpStream, target: &str, headers: &str) -> (u16, Value) {
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (status, serde_json::from_str(&body[..len]).unwrap_or(Value::Null));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, Value::Null),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn open_connections(live: &Live) -> f64 {
    live.metric("klinegate_connections_open")
}

/// Waits (bounded) until the server counts `n` open client connections
/// besides the one asking.
fn wait_open(live: &Live, n: f64) {
    let end = Instant::now() + 10 * SEC;
    while open_connections(live) != n + 1.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_connections(live), n + 1.0, "the server never counted {n} connections");
}

#[test]
fn behind_a_trusted_proxy_the_limit_counts_the_forwarded_client() {
    let live = Live::start(&["--trusted-proxy", "127.0.0.1, 10.0.0.0/8", "--max-connections-per-ip", "2"]);
    // The proxy (127.0.0.1) opens connections for three clients; each holds its connection.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", live.addr);
        assert_eq!(request(&mut s, "/health", "X-Forwarded-For: 198.51.100.7\r\n").0, 200);
        held.push(s);
    }
    // A third connection of the same client is refused; the proxy's own address is not the limit.
    let mut third = connect_from("127.0.0.1", live.addr);
    let (status, body) = request(&mut third, "/health", "X-Forwarded-For: 203.0.113.1, 198.51.100.7, 10.1.1.1\r\n");
    assert_eq!((status, body), (503, json!({"detail": "too many connections from this address"})));
    for client in ["198.51.100.8", "198.51.100.9"] {
        let mut s = connect_from("127.0.0.1", live.addr);
        assert_eq!(request(&mut s, "/health", &format!("Forwarded: for=\"{client}:4711\";proto=https\r\n")).0, 200, "{client}");
        held.push(s);
    }
    // A proxy connection that names nobody is not charged to anyone.
    let mut plain = connect_from("127.0.0.1", live.addr);
    assert_eq!(request(&mut plain, "/health", "").0, 200);
    held.push(plain);
    assert_eq!(live.metric("klinegate_connections_rejected_per_ip_total"), 1.0);
    // When the client's connections close, it gets in again.
    drop(held.remove(0));
    wait_open(&live, held.len() as f64);
    let mut again = connect_from("127.0.0.1", live.addr);
    assert_eq!(request(&mut again, "/health", "X-Forwarded-For: 198.51.100.7\r\n").0, 200);
}

#[test]
fn an_untrusted_peer_cannot_speak_for_other_clients() {
    // 127.0.0.1 is the only trusted proxy; 127.0.0.2 is an ordinary client.
    let live = Live::start(&["--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "2"]);
    let mut held = Vec::new();
    for forged in ["198.51.100.1", "198.51.100.2"] {
        let mut s = connect_from("127.0.0.2", live.addr);
        assert_eq!(request(&mut s, "/health", &format!("X-Forwarded-For: {forged}\r\n")).0, 200);
        held.push(s);
    }
    wait_open(&live, 2.0);
    // Its own address is what counts, whatever it claims: refused at accept.
    let mut third = connect_from("127.0.0.2", live.addr);
    let (status, body) = request(&mut third, "/health", "X-Forwarded-For: 198.51.100.3\r\n");
    assert_eq!((status, body), (503, json!({"detail": "too many connections from this address"})));
}

#[test]
fn by_default_one_address_may_hold_more_than_a_thousand_connections() {
    // A proxy or NAT in front of 1,200 browsers: all of them from one address.
    let live = Live::start(&[]);
    let conns: Vec<TcpStream> = (0..1_200).map(|_| connect_from("127.0.0.3", live.addr)).collect();
    wait_open(&live, conns.len() as f64);
    let mut last = connect_from("127.0.0.3", live.addr);
    assert_eq!(request(&mut last, "/health", "").0, 200);
    assert_eq!(live.metric("klinegate_connections_rejected_total"), 0.0);
}

#[test]
fn a_bad_trusted_proxy_range_stops_start_up_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klinegate"))
        .args(["run", "--listen", "127.0.0.1:0", "--trusted-proxy", "10.0.0.0/40"])
        .output()
        .expect("run klinegate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trusted-proxy") && err.contains("prefix length"), "{err}");
}
