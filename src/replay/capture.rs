//! Converts a recorded Binance WebSocket capture (cryptofeed's raw format:
//! `<url> <-> <connect time>` then `<receive time>: <frame>` per line) into a
//! klinegate journal, using the receive times as `now`.
//!
//! The converter plays the exchange: it runs an engine alongside and answers
//! what the engine asks (the connection opens, SUBSCRIBE requests are
//! acknowledged with their own ids), then feeds every recorded frame on that
//! connection. So the journal contains exactly the inputs a live run against
//! that traffic would record. Optionally one client subscribes to every kline
//! series (and its derived timeframes) at the start.
//! This is a tool: it reads files, but never a clock.

use crate::cli::settings::Settings;
use crate::engine::{ClientId, ConnId, Engine, Input, Output};
use crate::replay::exchange::{Answer, ExchangeModel};
use crate::replay::journal::{Header, JournalWriter};
use crate::model::Market;
use crate::wire::binance;
use crate::store::MemoryStore;
use crate::time::{Duration, Timestamp};
use std::collections::VecDeque;
use std::fmt;
use std::io::Write;

/// Quote assets tried, longest first, to split `btcusdt` into `BTC/USDT`.
const QUOTES: &[&str] = &["FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY"];

#[derive(Debug)]
pub enum CaptureError {
    Io(std::io::Error),
    Format(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Io(e) => write!(f, "capture i/o error: {e}"),
            CaptureError::Format(m) => write!(f, "capture format: {m}"),
        }
    }
}

impl std::error::Error for CaptureError {}

impl From<std::io::Error> for CaptureError {
    fn from(e: std::io::Error) -> Self {
        CaptureError::Io(e)
    }
}

/// The parsed capture: where it connected, when, and every frame with its time.
pub struct Capture {
    pub url: String,
    pub market: Market,
    pub connect_at: Timestamp,
    pub frames: Vec<(Timestamp, String)>,
}

fn secs_to_ts(s: &str) -> Option<Timestamp> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Timestamp((v * 1e9).round() as u64))
}

pub fn parse_capture(text: &str) -> Result<Capture, CaptureError> {
    let mut lines = text.lines();
    let first = lines.next().ok_or_else(|| CaptureError::Format("empty capture".into()))?;
    let (url, at) = first
        .split_once(" <-> ")
        .ok_or_else(|| CaptureError::Format("first line must be '<url> <-> <connect time>'".into()))?;
    let connect_at =
        secs_to_ts(at).ok_or_else(|| CaptureError::Format(format!("bad connect time {at:?}")))?;
    let market = if url.contains("fstream") { Market::Futures } else { Market::Spot };
    let mut frames = Vec::new();
    for line in lines {
        // REST lines look like `<url> -> <time>: <body>`; sent frames `<x> <- …`.
        if line.contains(" -> ") || line.contains(" <- ") {
            continue;
        }
        let Some((ts, frame)) = line.split_once(": ") else { continue };
        let Some(t) = secs_to_ts(ts) else { continue };
        frames.push((t, frame.to_string()));
    }
    Ok(Capture { url: url.to_string(), market, connect_at, frames })
}

/// `btcusdt@kline_1m` → `binance:spot:BTC/USDT:1m`.
pub fn series_for_stream(stream: &str, market: Market) -> Option<String> {
    let (sym, tf) = stream.split_once("@kline_")?;
    let upper = sym.to_ascii_uppercase();
    let quote = QUOTES.iter().find(|q| upper.len() > q.len() && upper.ends_with(*q))?;
    let base = &upper[..upper.len() - quote.len()];
    Some(format!("binance:{}:{base}/{quote}:{tf}", market.as_str()))
}

/// Kline streams named in the capture URL (`?streams=a/b/c`).
pub fn kline_streams(url: &str) -> Vec<String> {
    let Some((_, query)) = url.split_once("streams=") else { return Vec::new() };
    query
        .split(['/', '&'])
        .filter(|s| s.contains("@kline_"))
        .map(str::to_string)
        .collect()
}

/// Options for [`capture_to_journal`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub settings: Settings,
    /// Subscribe one client (id 1) to every kline series and its derived timeframes.
    pub subscribe_client: bool,
    /// Extra time after the last frame, so flush and throttle timers fire.
    pub tail: Duration,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { settings: Settings::default(), subscribe_client: true, tail: Duration::from_secs(2) }
    }
}

/// Writes a journal for `capture`; returns the pinned series ids.
pub fn capture_to_journal<W: Write>(
    capture: &Capture,
    mut opts: ConvertOptions,
    out: W,
) -> Result<Vec<String>, CaptureError> {
    let series: Vec<String> = kline_streams(&capture.url)
        .iter()
        .filter_map(|s| series_for_stream(s, capture.market))
        .collect();
    if series.is_empty() {
        return Err(CaptureError::Format(format!("no kline streams in {}", capture.url)));
    }
    opts.settings.pins = series.clone();
    let header = Header::new(opts.settings.clone(), capture.connect_at, true);
    let cfg = opts.settings.to_engine_config().map_err(|e| CaptureError::Format(e.to_string()))?;
    let mut engine = Engine::new(cfg.clone(), capture.connect_at);
    let mut journal = JournalWriter::new(out, &header)?;
    let mut sim = Sim { exchange: ExchangeModel::new(Answer::Auto), pending: VecDeque::new(), store: MemoryStore::new() };

    // The replay answers store effects from its own store; so does the converter.
    let step = |engine: &mut Engine, journal: &mut JournalWriter<W>, sim: &mut Sim, now: Timestamp, input: Input| {
        run_timers(engine, sim, now);
        journal.input(now, &input)?;
        engine.handle(input, now);
        Ok::<(), std::io::Error>(())
    };

    let t0 = capture.connect_at;
    step(&mut engine, &mut journal, &mut sim, t0, Input::Start)?;
    sim.answer(&mut engine);
    if opts.subscribe_client {
        step(&mut engine, &mut journal, &mut sim, t0, Input::ClientConnected { client: ClientId(1) })?;
        for s in &series {
            let mut ids = vec![s.clone()];
            if let Ok(id) = crate::model::SeriesId::parse(s) {
                for tf in &cfg.supervisor.derived {
                    ids.push(id.with_timeframe(*tf).as_str().to_string());
                }
            }
            for id in ids {
                let text = serde_json::json!({"type":"subscribe","series_id":id,"supports_batch":true}).to_string();
                step(&mut engine, &mut journal, &mut sim, t0, Input::ClientText { client: ClientId(1), text })?;
            }
        }
    }
    // Answer the connection and the subscriptions, then play the frames.
    loop {
        sim.answer(&mut engine);
        let Some(input) = sim.pending.pop_front() else { break };
        step(&mut engine, &mut journal, &mut sim, t0, input)?;
    }
    let conn = sim.exchange.conns.keys().next_back().copied().ok_or_else(|| CaptureError::Format("engine opened no upstream connection".into()))?;
    let mut last = t0;
    for (t, frame) in &capture.frames {
        let now = (*t).max(last);
        last = now;
        step(&mut engine, &mut journal, &mut sim, now, Input::UpstreamText { conn: ConnId(conn), text: frame.clone() })?;
        sim.answer(&mut engine);
        while let Some(input) = sim.pending.pop_front() {
            step(&mut engine, &mut journal, &mut sim, now, input)?;
            sim.answer(&mut engine);
        }
    }
    journal.end(last.add(opts.tail))?;
    journal.flush()?;
    Ok(series)
}

/// Fires every timer due by `until`, each at its deadline; what a timer asks
/// of the exchange (a reconnect, a REST fetch) is answered by the model like
/// any other output, its replies delivered with the next input.
fn run_timers(engine: &mut Engine, sim: &mut Sim, until: Timestamp) {
    while let Some(t) = engine.poll_timeout() {
        if t > until {
            break;
        }
        let at = t.max(engine.now());
        engine.handle_timeout(at);
        sim.answer(engine);
        if engine.poll_timeout() == Some(t) {
            break;
        }
    }
}

/// The converter's shell around the [`ExchangeModel`]: every exchange reply
/// is delivered at once (the capture holds no REST history: every heal finds
/// none), client frames are drained, store effects answered as a replay
/// without recorded answers answers them.
struct Sim {
    exchange: ExchangeModel,
    pending: VecDeque<Input>,
    store: MemoryStore,
}

impl Sim {
    fn answer(&mut self, engine: &mut Engine) {
        while let Some(out) = engine.poll_output() {
            let now = engine.now();
            if let Some(replies) = self.exchange.on_output(&out, now) {
                let inputs = replies.into_iter().filter_map(|r| self.exchange.deliver(r));
                self.pending.extend(inputs);
                continue;
            }
            match out {
                Output::ClientReady { client } => {
                    let mut frames = Vec::new();
                    crate::replay::hosted::write_all(engine, client, &mut frames);
                }
                other => {
                    crate::replay::hosted::carry(engine, &mut self.store, &other, now);
                }
            }
        }
    }
}

/// Kept for symmetry with the stream-name builder: the stream for a series.
pub fn stream_for_series(series: &crate::model::SeriesId) -> Option<String> {
    binance::stream_name(series.symbol(), series.timeframe()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_map_to_series() {
        assert_eq!(
            series_for_stream("btcusdt@kline_1m", Market::Spot).as_deref(),
            Some("binance:spot:BTC/USDT:1m")
        );
        assert_eq!(
            series_for_stream("keepusdt@kline_1m", Market::Futures).as_deref(),
            Some("binance:futures:KEEP/USDT:1m")
        );
        assert_eq!(series_for_stream("btcusdt@depth", Market::Spot), None);
    }

    #[test]
    fn capture_header_and_frames_parse() {
        let text = "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/btcusdt@depth <-> 1617566591.5\n\
                    1617566591.776: {\"stream\":\"x\"}\n\
                    https://www.binance.com/api/v1/depth?symbol=BTCUSDT -> 1617566592.0: {}\n";
        let c = parse_capture(text).unwrap();
        assert_eq!(c.market, Market::Spot);
        assert_eq!(c.frames.len(), 1);
        assert_eq!(kline_streams(&c.url), vec!["btcusdt@kline_1m".to_string()]);
    }
}
