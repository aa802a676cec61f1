//! Runs the real `klinegate` binary for tests: a temp directory for its
//! database, the listening address read from its `server_started` log line,
//! a bounded-time WebSocket client, and plain HTTP requests. Loopback only;
//! every wait is bounded.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub struct Live {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub logs: Receiver<String>,
    pub seen_logs: Vec<String>,
}

impl Live {
    /// Starts `klinegate run` with `args` (plus `--listen 127.0.0.1:0` and a
    /// temp `--db` unless given) and waits for it to listen.
    pub fn start(args: &[&str]) -> Live {
        let dir = tempfile::tempdir().expect("temp dir");
        Live::start_in(dir, args)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Live {
        Live::start_with(dir, args, |_| {})
    }

    /// Like [`Live::start_in`] (the database is `dir/klinegate.db`, which may
    /// be prepared beforehand); `adjust` may change the command before it is
    /// spawned (e.g. run it as another user).
    pub fn start_with(dir: tempfile::TempDir, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Live {
        let db = dir.path().join("klinegate.db");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_klinegate"));
        cmd.arg("run");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--db") && !args.contains(&"--store-url") {
            cmd.arg("--db").arg(&db);
        }
        // REST goes to the same fake exchange as the streams (never the real one).
        if let Some(i) = args.iter().position(|a| *a == "--spot-ws-url") {
            if !args.contains(&"--spot-rest-url") {
                let ws = args.get(i + 1).copied().unwrap_or("");
                let base = ws.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
                let base = base.split('/').take(3).collect::<Vec<_>>().join("/");
                cmd.args(["--spot-rest-url", &base, "--futures-rest-url", &base]);
            }
        }
        cmd.args(args).args(["--log-level", "debug"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        // Settings come from the flags only, never from the test's environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("KLINEGATE_") {
                cmd.env_remove(k);
            }
        }
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn klinegate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut live = Live { child, addr: "127.0.0.1:0".parse().unwrap(), dir, logs: rx, seen_logs: Vec::new() };
        let line = live.wait_log("server_started", Duration::from_secs(20)).expect("server started");
        let listen = line.split_whitespace().find_map(|kv| kv.strip_prefix("listen=")).expect("listen=");
        live.addr = listen.parse().expect("listen address");
        live
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("klinegate.db")
    }

    /// Waits for a log line containing `needle` (lines seen so far count too).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen_logs.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen_logs.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for the REST fetches every start makes: each market's symbol
    /// list and the default pin's first-visit heal (the fake exchange has no
    /// history for it: one empty page). A test that scripts a REST failure
    /// for its own request waits for these first, or one of them may take it.
    pub fn wait_startup_fetches(&mut self) {
        assert!(self.wait_log("symbols_listed market=spot", Duration::from_secs(10)).is_some(), "spot symbols listed");
        assert!(self.wait_log("market=futures", Duration::from_secs(10)).is_some(), "futures symbols fetched");
        assert!(self.wait_log("heal_done", Duration::from_secs(10)).is_some(), "the pinned series' first heal ended");
    }

    pub fn drain_logs(&mut self) {
        while let Ok(line) = self.logs.try_recv() {
            self.seen_logs.push(line);
        }
    }

    pub fn ws(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(self.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http_request(
            self.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// One metric from `/metrics` (panics, showing the page, when it is missing).
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {text}");
        metric_value(&text, name).unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    /// SIGTERM, then wait (bounded) for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        signal(self.child.id(), "TERM");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain_logs();
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// The value of the metric `name` in a Prometheus text exposition.
pub fn metric_value(metrics_text: &str, name: &str) -> Option<f64> {
    metrics_text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http_request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A blocking WebSocket client with read timeouts.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let url = format!("ws://{addr}/ws/market");
        let (ws, _) = tungstenite::client::client(url.as_str(), stream).expect("websocket handshake");
        Client { ws }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).expect("send");
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_string().into())).expect("send");
    }

    /// The next JSON frame within `timeout`, or None.
    pub fn next(&mut self, timeout: Duration) -> Option<Value> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Frames until `pred` matches one (returned last) or the timeout passes.
    pub fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next(left.min(Duration::from_millis(250))) {
                Some(v) => {
                    let hit = pred(&v);
                    got.push(v);
                    if hit {
                        break;
                    }
                }
                None if Instant::now() >= end => break,
                None => {}
            }
        }
        got
    }

    /// Reads until the server closes; returns the close code and reason.
    pub fn close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return Some((f.code.into(), f.reason.to_string())),
                Ok(Message::Close(None)) => return Some((1005, String::new())),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// The current minute's open time in unix milliseconds (live tests script the
/// fake exchange around the real clock's minute).
/// A WebSocket client that subscribes to `series_id` and then never reads: its
/// socket has a 4 KiB receive buffer, so the server-side backlog grows at once.
pub fn stalled_client(addr: SocketAddr, series_id: &str) -> WebSocket<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
    let stream: TcpStream = sock.into();
    let url = format!("ws://{addr}/ws/market");
    let (mut ws, _) = tungstenite::client::client(url.as_str(), stream).expect("handshake");
    let subscribe = serde_json::json!({"type":"subscribe","series_id":series_id}).to_string();
    ws.send(Message::Text(subscribe.into())).unwrap();
    ws
}

pub fn now_minute_ms() -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    ms / 60_000 * 60_000
}

/// A TCP connection to `addr` from `source` (any 127.0.0.0/8 address is loopback).
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}
