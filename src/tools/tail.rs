//! `klinegate tail SERIES`: a terminal client of a running server's
//! `/ws/market`. It subscribes to one series and prints every candle as it
//! comes — catch-up first, then live closes and forming updates — one line
//! each, or the raw frames with `--json`. A quick way to check a server.
//!
//! A tool, not part of the engine: it blocks on its one socket. It exits 0
//! after `--count` closed candles, 1 when the server answers with an error or
//! the connection ends, 2 on a bad argument or a failed connect.

use crate::calendar::rfc3339;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub struct TailOptions<'a> {
    pub series: &'a str,
    /// `ws://HOST:PORT/ws/market` or `wss://…`.
    pub url: &'a str,
    pub since: Option<i64>,
    pub token: Option<&'a str>,
    /// Extra roots for `wss://` (a self-signed server's certificate).
    pub cacert: Option<&'a Path>,
    pub json: bool,
    pub closed_only: bool,
    /// Stop after this many closed candles.
    pub count: Option<u64>,
}

/// Why tail stopped: the exit code and, for 1 and 2, the one line to print.
pub enum TailEnd {
    Done,
    Failed(String),
    Refused(String),
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

pub fn tail(opts: &TailOptions<'_>, out: &mut dyn Write) -> TailEnd {
    let mut ws = match connect(opts) {
        Ok(ws) => ws,
        Err(e) => return TailEnd::Refused(e),
    };
    let mut subscribe = json!({"type": "subscribe", "series_id": opts.series, "supports_batch": true});
    if let Some(since) = opts.since {
        subscribe["since"] = json!(since);
    }
    if let Err(e) = ws.send(Message::text(subscribe.to_string())) {
        return TailEnd::Failed(format!("sending the subscription: {e}"));
    }
    let mut closed = 0u64;
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(frame)) => {
                let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                return TailEnd::Failed(format!("the server closed the connection {why}").trim_end().to_string());
            }
            Ok(_) => continue,
            Err(e) => return TailEnd::Failed(format!("connection lost: {e}")),
        };
        let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
        let kind = msg["type"].as_str().unwrap_or("");
        if kind == "error" {
            let code = msg["code"].as_str().unwrap_or("?");
            let message = msg["message"].as_str().unwrap_or("");
            return TailEnd::Failed(format!("server error {code}: {message}"));
        }
        // With --count, never more closed candles than asked for (a batch is cut).
        let room = opts.count.map_or(usize::MAX, |n| n.saturating_sub(closed) as usize);
        let lines: Vec<String> = match kind {
            "candle_closed" => vec![candle_line("closed", &msg["series_id"], &msg["candle"])],
            "candle_forming" if !opts.closed_only => vec![candle_line("forming", &msg["series_id"], &msg["candle"])],
            "candles_batch" => msg["candles"]
                .as_array()
                .map(|cs| cs.iter().take(room).map(|c| candle_line("closed", &msg["series_id"], c)).collect())
                .unwrap_or_default(),
            "gap" => vec![format!(
                "gap      {}  expected_next_time={} actual_time={}",
                msg["series_id"].as_str().unwrap_or(""),
                msg["expected_next_time"],
                msg["actual_time"]
            )],
            _ => Vec::new(),
        };
        let closes = match kind {
            "candle_closed" => 1,
            "candles_batch" => msg["candles"].as_array().map_or(0, |c| c.len().min(room) as u64),
            _ => 0,
        };
        let printed = if opts.json {
            if kind == "candle_forming" && opts.closed_only {
                Ok(())
            } else {
                writeln!(out, "{text}")
            }
        } else {
            lines.iter().try_for_each(|l| writeln!(out, "{l}"))
        };
        if printed.and_then(|_| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing left to do.
            return TailEnd::Done;
        }
        closed += closes;
        if opts.count.is_some_and(|n| closed >= n) {
            let _ = ws.close(None);
            return TailEnd::Done;
        }
    }
}

fn candle_line(kind: &str, series: &Value, c: &Value) -> String {
    let time = c["candle_time"].as_i64().map(rfc3339).unwrap_or_else(|| "?".into());
    format!(
        "{time}  {kind:<7}  {}  o={} h={} l={} c={} v={}",
        series.as_str().unwrap_or(""),
        c["open"],
        c["high"],
        c["low"],
        c["close"],
        c["volume"]
    )
}

fn connect(opts: &TailOptions<'_>) -> Result<WebSocket<Box<dyn Stream>>, String> {
    let url = opts.url;
    let tls = match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(format!("--url {url:?} must start with ws:// or wss://")),
    };
    let mut request = url.into_client_request().map_err(|e| format!("--url {url:?}: {e}"))?;
    if let Some(token) = opts.token {
        let value = format!("Bearer {token}").parse().map_err(|_| "--token has characters a header cannot carry".to_string())?;
        request.headers_mut().insert("Authorization", value);
    }
    let host = request.uri().host().unwrap_or("").trim_matches(['[', ']']).to_string();
    if host.is_empty() {
        return Err(format!("--url {url:?} has no host"));
    }
    let port = request.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let stream: Box<dyn Stream> = if tls {
        let config = tls_config(opts.cacert)?;
        let name = ServerName::try_from(host.clone()).map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| format!("TLS: {e}"))?;
        Box::new(StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(format!("{url}: HTTP {} {}", resp.status().as_u16(), body.trim()))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

fn tls_config(cacert: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = cacert {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("--cacert {}: no certificate in the file", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS: {e}"))
}

/// Prints `end`'s line (if any) and gives its exit code.
pub fn exit_code(end: TailEnd) -> u8 {
    match end {
        TailEnd::Done => 0,
        TailEnd::Failed(msg) => {
            let _ = writeln!(io::stderr(), "klinegate tail: {msg}");
            1
        }
        TailEnd::Refused(msg) => {
            let _ = writeln!(io::stderr(), "klinegate tail: {msg}");
            2
        }
    }
}
