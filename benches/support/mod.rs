//! Shared pieces of the loopback benches (`loopback.rs`, `memory.rs`): the
//! flag set the server under test runs with, bare WebSocket client sockets
//! (a real tungstenite handshake, then the plain socket so thousands of
//! clients cost the bench process almost nothing), a minimal frame codec for
//! the client side, `VmRSS` of another process, and percentiles.
//!
//! Bench code only: threads and blocking I/O are fine here; nothing in it may
//! reach beyond loopback, and every blocking call has a timeout.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The pinned series every fan-out client subscribes to, and its Binance stream.
pub const SERIES: &str = "binance:spot:BTC/USDT:1m";
pub const STREAM: &str = "btcusdt@kline_1m";

/// Forming updates carry `close = PRICE_BASE + seq`, so a client finds which
/// update a frame is from its close price alone.
pub const PRICE_BASE: f64 = 20_000.0;

/// `KLINEGATE_BENCH_QUICK=1` shrinks every bench to a smoke run.
pub fn quick() -> bool {
    std::env::var("KLINEGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The flags of the issue's fan-out setup (listen and db are added by `Live`).
pub fn server_args(exchange_ws_url: &str) -> Vec<String> {
    [
        "--spot-ws-url",
        exchange_ws_url,
        "--futures-ws-url",
        exchange_ws_url,
        "--pin",
        SERIES,
        "--derived",
        "",
        "--heal",
        "false",
        "--forming-interval-ms",
        "0",
        "--max-connections",
        "20000",
        "--max-connections-per-ip",
        "20000",
        "--client-max-backlog-bytes",
        "16777216",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Candle open time (ms) of the current minute.
pub fn current_minute_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now / 60_000 * 60_000
}

// ------------------------------------------------------------------ clients

/// Connects and upgrades `ws://addr/ws/market` with tungstenite, then returns
/// the bare socket (blocking, 5 s timeouts, no Nagle, RST on close so ten
/// thousand closed clients leave no TIME_WAIT behind). Servers under test send
/// nothing unasked, so no frame bytes are lost behind the 101 response.
pub fn connect_ws(addr: SocketAddr) -> io::Result<TcpStream> {
    connect_ws_from(addr, None)
}

/// `connect_ws` from the local address `source` (a loopback address other
/// than 127.0.0.1, so clients come from several addresses); `None`: any.
pub fn connect_ws_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
        Some(ip) => {
            let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            socket.into()
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    let url = format!("ws://{addr}/ws/market");
    let (ws, _) = tungstenite::client::client(url.as_str(), stream)
        .map_err(|e| io::Error::other(format!("websocket handshake with {addr}: {e}")))?;
    Ok(ws.into_inner())
}

/// `KLINEGATE_BENCH_SOURCES=N`: clients connect from 127.0.0.1 … 127.0.0.N in
/// turn (issue #14 §4: many source addresses); default 1 (127.0.0.1 only).
pub fn source_addresses() -> usize {
    std::env::var("KLINEGATE_BENCH_SOURCES").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 250)
}

/// Connects `n` clients one after the other (the servers accept in order),
/// spread over `source_addresses()` loopback addresses.
pub fn connect_many(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpStream>> {
    let sources = source_addresses();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let source = (sources > 1).then(|| std::net::IpAddr::from([127, 0, 0, 1 + (i % sources) as u8]));
        let s = connect_ws_from(addr, source).map_err(|e| io::Error::other(format!("client {i} of {n}: {e}")))?;
        out.push(s);
    }
    Ok(out)
}

/// A masked client text frame (RFC 6455 §5.3: clients always mask).
pub fn client_text_frame(text: &str) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let payload = text.as_bytes();
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x81);
    push_length(&mut out, payload.len(), 0x80);
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// An unmasked server text frame, as a server writes it.
pub fn server_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    push_length(&mut out, payload.len(), 0);
    out.extend_from_slice(payload);
    out
}

fn push_length(out: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// `{"type":"subscribe","series_id":S}` as a client frame.
pub fn subscribe_frame(series_id: &str) -> Vec<u8> {
    client_text_frame(&format!(r#"{{"type":"subscribe","series_id":"{series_id}"}}"#))
}

/// Splits unmasked server frames out of `data`: calls `on_frame(opcode,
/// payload)` for each complete one and returns how many bytes were consumed
/// (the rest is a partial frame the caller keeps for the next read).
pub fn scan_server_frames(data: &[u8], mut on_frame: impl FnMut(u8, &[u8])) -> usize {
    let mut at = 0;
    loop {
        let rest = &data[at..];
        if rest.len() < 2 {
            return at;
        }
        let opcode = rest[0] & 0x0f;
        let masked = rest[1] & 0x80 != 0;
        let (len, header) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return at,
            short => (short as usize, 2),
        };
        let header = header + if masked { 4 } else { 0 };
        if rest.len() < header + len {
            return at;
        }
        on_frame(opcode, &rest[header..header + len]);
        at += header + len;
    }
}

/// The update number in a `candle_forming` frame (close = PRICE_BASE + seq),
/// or None for any other frame.
pub fn forming_seq(payload: &[u8]) -> Option<i64> {
    if !payload.starts_with(br#"{"type":"candle_forming""#) {
        return None;
    }
    let key = br#""close":"#;
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let end = payload[at..].iter().position(|b| *b == b',' || *b == b'}')? + at;
    let close: f64 = std::str::from_utf8(&payload[at..end]).ok()?.parse().ok()?;
    Some((close - PRICE_BASE).round() as i64)
}

/// The payload klinegate writes for a forming candle (same field order and
/// number formatting), for the raw baseline to send byte-for-byte alike frames.
pub fn forming_payload(open_time_ms: i64, seq: i64) -> Vec<u8> {
    let (o, h, l, c, v) = forming_prices(seq);
    format!(
        r#"{{"type":"candle_forming","series_id":"{SERIES}","candle":{{"candle_time":{},"open":{o:?},"high":{h:?},"low":{l:?},"close":{c:?},"volume":{v:?}}}}}"#,
        open_time_ms / 1000
    )
    .into_bytes()
}

/// (open, high, low, close, volume) of update `seq`.
pub fn forming_prices(seq: i64) -> (f64, f64, f64, f64, f64) {
    let c = PRICE_BASE + seq as f64;
    (PRICE_BASE, c + 1.0, PRICE_BASE - 1.0, c, 2.0)
}

/// Writes all of `bytes` to a blocking socket.
pub fn send_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)
}

/// Reads and drops whatever is waiting on a socket, without blocking.
pub fn drain_nonblocking(stream: &mut TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let _ = stream.set_nonblocking(false);
}

// ------------------------------------------------------------------ figures

/// `VmRSS` of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `VmRSS` once it stops moving: sampled every 100 ms until three samples
/// in a row agree within 64 KiB, or `limit` passes (the last sample then).
pub fn settled_rss(pid: u32, limit: Duration) -> u64 {
    let end = std::time::Instant::now() + limit;
    let mut last = vm_rss_bytes(pid).unwrap_or(0);
    let mut steady = 0;
    while std::time::Instant::now() < end && steady < 3 {
        std::thread::sleep(Duration::from_millis(100));
        let now = vm_rss_bytes(pid).unwrap_or(0);
        steady = if now.abs_diff(last) <= 64 << 10 { steady + 1 } else { 0 };
        last = now;
    }
    last
}

/// The `p`-th percentile (0..=100, nearest rank) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ------------------------------------------------------------------ CPU pinning

/// Whether servers and the receiver thread get their own CPU
/// (`KLINEGATE_BENCH_PIN=1`, with two or more CPUs). Off by default: on a
/// machine shared with other work, a pinned server cannot move away from a
/// busy CPU, which measured worse (~12 µs per socket write instead of ~7)
/// than letting the scheduler place it; on a quiet machine pinning keeps the
/// server and the receiver from taking turns on one core.
pub fn pinning() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus >= 2 && std::env::var("KLINEGATE_BENCH_PIN").is_ok_and(|v| v == "1")
}

/// Pins every thread of process `pid` to `cpu` (with `taskset`; a failure
/// only costs repeatability, so it is reported, not fatal).
pub fn pin_process(pid: u32, cpu: usize) {
    if pinning() {
        run_taskset(&["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()]);
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) {
    if !pinning() {
        return;
    }
    // /proc/thread-self -> "<pid>/task/<tid>"
    let Ok(link) = std::fs::read_link("/proc/thread-self") else { return };
    if let Some(tid) = link.file_name().and_then(|t| t.to_str()) {
        run_taskset(&["-p", "-c", &cpu.to_string(), tid]);
    }
}

fn run_taskset(args: &[&str]) {
    let status = std::process::Command::new("taskset")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("note: taskset {args:?} failed; running unpinned");
    }
}

// ------------------------------------------------------------------ load bench helpers

/// User plus system CPU time of process `pid` in clock ticks (fields 14 and
/// 15 of `/proc/<pid>/stat`, counted after the parenthesised command name).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th token, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for `cpu_ticks` (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of an unlabelled Prometheus sample `name` in `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A tiny seeded generator (splitmix64) for reproducible bench choices.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant at bench sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
