//! Synthetic journals: plays the exchange for many kline streams with a
//! realistic cadence and records the journal a live run against that traffic
//! would have written (`klinegate gen-journal`, the replay bench).
//!
//! Like [`crate::replay::capture`], the generator runs an engine alongside and answers
//! what it asks: every `UpstreamConnect` is opened and every `SUBSCRIBE` is
//! acknowledged with its own id, each after a fixed network latency, and frames
//! of a stream are sent on the connection that subscribed it, once acked. Each
//! stream gets a forming update every `60 s / forming_per_minute` (with jitter)
//! and one closing frame per minute, prices on a seeded random walk. A few
//! clients connect first and subscribe to some series (1m and 5m); their
//! frames are drained as a shell would. The journal uses `auto_timers`, and the
//! generator fires the engine's timers exactly as the replayer will (each at
//! its deadline, before the next record), so a replay sees the same engine.
//!
//! Deterministic: the same options write the same bytes. It never reads a
//! clock or the environment; randomness comes only from the seeded [`Rng`].

use crate::cli::settings::Settings;
use crate::engine::{ClientId, ConnId, Engine, Input, Output};
use crate::replay::exchange::{Answer, ExchangeModel, Reply, ReplyKind};
use crate::replay::journal::{Header, JournalWriter};
use crate::model::{Market, SeriesId, Timeframe};
use crate::rng::Rng;
use crate::store::MemoryStore;
use crate::time::{Duration, Timestamp};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Journal start: 30 s before a 5-minute boundary, time for the handshakes.
const START: Timestamp = Timestamp::from_secs(1_700_000_070);
/// Exchange round trip for a connect and for a control reply.
const CONNECT_LATENCY: Duration = Duration::from_millis(120);
const ACK_LATENCY: Duration = Duration::from_millis(40);
/// Every stream must be live this long after the start, or the options (or
/// the settings) keep the engine from subscribing them all.
const SETUP_LIMIT: Duration = Duration::from_secs(25);
/// After the last frame, so flush and throttle timers fire in the replay.
const TAIL: Duration = Duration::from_secs(2);
/// Subscriptions per client (each to a 1m series and its 5m).
const SERIES_PER_CLIENT: usize = 8;

/// Which markets the generated series belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarketMix {
    Spot,
    Futures,
    /// This share of the series (0-100) are futures, spread evenly.
    Mixed { futures_percent: u8 },
}

impl MarketMix {
    /// `spot`, `futures`, `mixed` (half each) or `mixed:N` (N % futures).
    pub fn parse(s: &str) -> Result<MarketMix, String> {
        match s.trim() {
            "spot" => Ok(MarketMix::Spot),
            "futures" => Ok(MarketMix::Futures),
            "mixed" => Ok(MarketMix::Mixed { futures_percent: 50 }),
            other => other
                .strip_prefix("mixed:")
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= 100)
                .map(|futures_percent| MarketMix::Mixed { futures_percent })
                .ok_or_else(|| format!("unknown market mix '{other}' (expected spot, futures, mixed or mixed:N with N in 0..=100)")),
        }
    }

    fn market_of(self, index: usize) -> Market {
        let pct = match self {
            MarketMix::Spot => 0,
            MarketMix::Futures => 100,
            MarketMix::Mixed { futures_percent } => futures_percent as usize,
        };
        // Bresenham-style spreading: series i is futures when the running share crosses a step.
        if (index + 1) * pct / 100 > index * pct / 100 {
            Market::Futures
        } else {
            Market::Spot
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Distinct 1m kline streams (each its own symbol).
    pub series: usize,
    /// Kline frames to send in total (forming and closing).
    pub frames: usize,
    /// Clients that connect at the start, each subscribed to a few series.
    pub clients: usize,
    pub seed: u64,
    pub markets: MarketMix,
    /// Forming updates per stream per minute (30 = one every ~2 s).
    pub forming_per_minute: usize,
    /// Engine settings for the header; `pins` is replaced by the series.
    pub settings: Settings,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            series: 500,
            frames: 1_000_000,
            clients: 4,
            seed: 1,
            markets: MarketMix::Mixed { futures_percent: 50 },
            forming_per_minute: 30,
            settings: Settings::default(),
        }
    }
}

/// What a generated journal holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStats {
    pub series: usize,
    /// Kline frames written (forming + closing).
    pub frames: u64,
    pub forming_frames: u64,
    pub closing_frames: u64,
    /// Connects, acks and client messages: every other input.
    pub other_inputs: u64,
    /// Journal lines after the header (inputs and the end marker).
    pub records: u64,
    pub clients: usize,
    /// Subscribe requests sent by the clients.
    pub subscriptions: usize,
    pub upstream_connections: u64,
    /// Frames the engine queued for clients during generation.
    pub client_frames: u64,
    /// Simulated time from the first to the last record.
    pub span: Duration,
}

impl fmt::Display for GenStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "series={} frames={} (forming={} closing={}) other_inputs={} records={} clients={} subscriptions={} \
             upstream_connections={} client_frames={} span_s={:.1}",
            self.series,
            self.frames,
            self.forming_frames,
            self.closing_frames,
            self.other_inputs,
            self.records,
            self.clients,
            self.subscriptions,
            self.upstream_connections,
            self.client_frames,
            self.span.as_secs_f64()
        )
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl GenOptions {
    fn validate(&self) -> io::Result<()> {
        if self.series == 0 {
            return Err(invalid("gen-journal: series must be at least 1".into()));
        }
        if self.series > 26usize.pow(4) {
            return Err(invalid(format!("gen-journal: at most {} series (symbols are 4 letters)", 26usize.pow(4))));
        }
        if !(1..=600).contains(&self.forming_per_minute) {
            return Err(invalid(format!(
                "gen-journal: forming_per_minute must be in 1..=600 (got {})",
                self.forming_per_minute
            )));
        }
        Ok(())
    }

    /// The series ids the journal pins, in generation order.
    pub fn series_ids(&self) -> Vec<String> {
        (0..self.series).map(|i| StreamSpec::new(i, self.markets.market_of(i)).series_id).collect()
    }
}

/// The symbol, series id and stream name of generated series `index`.
struct StreamSpec {
    series_id: String,
    stream: String,
    /// `k.s` as Binance sends it, e.g. `KAAB` + `USDT`.
    symbol: String,
    market: Market,
}

impl StreamSpec {
    fn new(index: usize, market: Market) -> StreamSpec {
        let mut base = String::with_capacity(4);
        let mut n = index;
        for _ in 0..4 {
            base.insert(0, (b'A' + (n % 26) as u8) as char);
            n /= 26;
        }
        StreamSpec {
            series_id: format!("binance:{}:{base}/USDT:1m", market.as_str()),
            stream: format!("{}usdt@kline_1m", base.to_ascii_lowercase()),
            symbol: format!("{base}USDT"),
            market,
        }
    }
}

/// One stream's state: its current candle and the next event.
struct StreamState {
    spec: StreamSpec,
    /// Open time of the current candle, seconds.
    minute: i64,
    /// Forming updates sent for the current candle.
    updates: usize,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    trades: i64,
    first_trade: i64,
    last_trade: i64,
}

impl StreamState {
    fn new(spec: StreamSpec, minute: i64, rng: &mut Rng) -> StreamState {
        // Prices from 0.01 to ~100,000, log-uniform.
        let decade = rng.below(7) as i32 - 2;
        let price = 10f64.powi(decade) * (1.0 + rng.below(9000) as f64 / 1000.0);
        let first_trade = rng.below(1_000_000_000) as i64;
        StreamState {
            spec,
            minute,
            updates: 0,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 0.0,
            trades: 0,
            first_trade,
            last_trade: first_trade,
        }
    }

    /// A trade or a few: the random walk moves the close.
    fn trade(&mut self, rng: &mut Rng) {
        let step = (rng.below(2001) as f64 - 1000.0) / 1000.0 * 0.0008;
        self.close = (self.close * (1.0 + step)).max(1e-8);
        self.high = self.high.max(self.close);
        self.low = self.low.min(self.close);
        let n = 1 + rng.below(20) as i64;
        self.trades += n;
        self.last_trade += n;
        self.volume += (1 + rng.below(100_000)) as f64 / 1000.0;
    }

    /// Next candle: opens at the previous close.
    fn roll(&mut self) {
        self.minute += 60;
        self.updates = 0;
        self.open = self.close;
        self.high = self.close;
        self.low = self.close;
        self.volume = 0.0;
        self.trades = 0;
        self.first_trade = self.last_trade + 1;
        self.last_trade = self.first_trade;
    }

    /// The combined-stream frame Binance sends, prices in the market's precision.
    fn frame(&self, event_ms: i64, is_final: bool) -> String {
        let digits = match self.spec.market {
            Market::Spot => 8,
            Market::Futures => 4,
        };
        let t = self.minute * 1000;
        let quote = self.volume * self.close;
        let mut s = String::with_capacity(420);
        let _ = write!(
            s,
            r#"{{"stream":"{stream}","data":{{"e":"kline","E":{event_ms},"s":"{sym}","k":{{"t":{t},"T":{tt},"s":"{sym}","i":"1m","f":{f},"L":{l},"o":"{o:.d$}","c":"{c:.d$}","h":"{h:.d$}","l":"{lo:.d$}","v":"{v:.3}","n":{n},"x":{x},"q":"{q:.4}","V":"{bv:.3}","Q":"{bq:.4}","B":"0"}}}}}}"#,
            stream = self.spec.stream,
            sym = self.spec.symbol,
            tt = t + 59_999,
            f = self.first_trade,
            l = self.last_trade,
            o = self.open,
            c = self.close,
            h = self.high,
            lo = self.low,
            v = self.volume,
            n = self.trades,
            x = is_final,
            q = quote,
            bv = self.volume / 2.0,
            bq = quote / 2.0,
            d = digits,
        );
        s
    }
}

/// What the peer will deliver at `at`.
struct Pending {
    at: Timestamp,
    due: Due,
}

enum Due {
    /// The exchange's answer, applied to its model when delivered.
    Exchange(Reply),
    /// The shell's own report (a client it closed is gone).
    Shell(Input),
}

/// The generator's shell around the [`ExchangeModel`]: exchange replies are
/// delivered after a latency; client frames are drained; store effects are
/// answered as the replay's own store will answer them.
struct Peer {
    exchange: ExchangeModel,
    /// Replies waiting to be delivered, in time order.
    pending: VecDeque<Pending>,
    client_frames: u64,
    frames: Vec<crate::engine::Frame>,
    store: MemoryStore,
}

impl Peer {
    fn schedule(&mut self, at: Timestamp, due: Due) {
        // After everything due at or before `at`: delivery order is time order, then FIFO.
        let pos = self.pending.partition_point(|p| p.at <= at);
        self.pending.insert(pos, Pending { at, due });
    }

    fn answer(&mut self, engine: &mut Engine, now: Timestamp) {
        while let Some(out) = engine.poll_output() {
            if let Some(replies) = self.exchange.on_output(&out, now) {
                for reply in replies {
                    let latency = match reply.kind {
                        ReplyKind::Connected => CONNECT_LATENCY,
                        ReplyKind::Ack | ReplyKind::Rest => ACK_LATENCY,
                    };
                    self.schedule(now.add(latency), Due::Exchange(reply));
                }
                continue;
            }
            match out {
                Output::ClientReady { client } => {
                    self.frames.clear();
                    crate::replay::hosted::write_all(engine, client, &mut self.frames);
                    self.client_frames += self.frames.len() as u64;
                }
                Output::ClientClose { client, .. } => {
                    self.schedule(now, Due::Shell(Input::ClientDisconnected { client }));
                }
                effect @ (Output::ReadStore { .. } | Output::Persist { .. }) => {
                    crate::replay::hosted::carry(engine, &mut self.store, &effect, now);
                }
                _ => {}
            }
        }
    }
}

/// The engine, the journal and the peer, stepped as the replayer will step them.
struct Run<W: Write> {
    engine: Engine,
    journal: JournalWriter<W>,
    peer: Peer,
    /// The last deadline fired did not move: hold timers until the next input
    /// (the replayer's guard against a deadline that never advances).
    timers_held: bool,
    records: u64,
    last: Timestamp,
}

impl<W: Write> Run<W> {
    /// Fires the earliest timer if it is due at or before `until`; whether it did.
    fn fire_one_timer(&mut self, until: Timestamp) -> bool {
        if self.timers_held {
            return false;
        }
        let Some(t) = self.engine.poll_timeout().filter(|t| *t <= until) else { return false };
        let at = t.max(self.engine.now());
        self.engine.handle_timeout(at);
        self.peer.answer(&mut self.engine, at);
        self.timers_held = self.engine.poll_timeout() == Some(t);
        true
    }

    /// Records and applies one input at `now`, after every timer due by then.
    fn input(&mut self, now: Timestamp, input: Input) -> io::Result<()> {
        self.journal.input(now, &input)?;
        self.records += 1;
        self.last = self.last.max(now);
        self.engine.handle(input, now);
        self.timers_held = false;
        self.peer.answer(&mut self.engine, now);
        Ok(())
    }

    /// Delivers every peer input due by `until` (and the timers between them).
    fn settle(&mut self, until: Timestamp) -> io::Result<()> {
        loop {
            let next = self.peer.pending.front().map(|p| p.at).filter(|t| *t <= until);
            if self.fire_one_timer(next.unwrap_or(until)) {
                continue;
            }
            if next.is_none() {
                return Ok(());
            }
            if let Some(p) = self.peer.pending.pop_front() {
                let input = match p.due {
                    // Dropped when its connection was closed meanwhile.
                    Due::Exchange(reply) => self.peer.exchange.deliver(reply),
                    Due::Shell(input) => Some(input),
                };
                if let Some(input) = input {
                    self.input(p.at, input)?;
                }
            }
        }
    }
}

/// Writes a journal of `opts.frames` kline frames over `opts.series` streams.
pub fn generate_journal<W: Write>(out: W, opts: &GenOptions) -> io::Result<GenStats> {
    opts.validate()?;
    let mut rng = Rng::new(opts.seed);
    let specs: Vec<StreamSpec> = (0..opts.series).map(|i| StreamSpec::new(i, opts.markets.market_of(i))).collect();
    let mut settings = opts.settings.clone();
    settings.pins = specs.iter().map(|s| s.series_id.clone()).collect();
    let cfg = settings.to_engine_config().map_err(|e| invalid(format!("gen-journal: {e}")))?;
    let header = Header::new(settings, START, true);
    let mut run = Run {
        engine: Engine::new(cfg.clone(), START),
        journal: JournalWriter::new(out, &header)?,
        peer: Peer {
            exchange: ExchangeModel::new(Answer::Auto),
            pending: VecDeque::new(),
            client_frames: 0,
            frames: Vec::new(),
            store: MemoryStore::new(),
        },
        timers_held: false,
        records: 0,
        last: START,
    };
    let mut stats = GenStats { series: opts.series, clients: opts.clients, ..GenStats::default() };

    // The engine starts its pinned jobs; clients connect and subscribe.
    run.input(START, Input::Start)?;
    let five = Timeframe::parse("5m").ok().filter(|tf| cfg.supervisor.derived.contains(tf));
    for c in 0..opts.clients {
        let client = c as u64 + 1;
        run.input(START, Input::ClientConnected { client: ClientId(client) })?;
        for k in 0..SERIES_PER_CLIENT.min(opts.series) {
            let spec = &specs[(c * 7 + k * 13 + rng.below(3) as usize) % opts.series];
            let mut ids = vec![spec.series_id.clone()];
            if let (Some(tf), Ok(id)) = (five, SeriesId::parse(&spec.series_id)) {
                ids.push(id.with_timeframe(tf).as_str().to_string());
            }
            for id in ids {
                let text = serde_json::json!({"type": "subscribe", "series_id": id, "supports_batch": k % 2 == 0})
                    .to_string();
                run.input(START, Input::ClientText { client: ClientId(client), text })?;
                stats.subscriptions += 1;
            }
        }
    }
    // Connections open and every stream is acknowledged before data flows.
    run.settle(START.add(SETUP_LIMIT))?;
    let missing = specs.iter().filter(|s| run.peer.exchange.live_conn(&s.stream).is_none()).count();
    if missing > 0 {
        return Err(io::Error::other(format!(
            "gen-journal: {missing} of {} streams were not subscribed within {} s; check the settings \
             (streams_per_connection, control rates, max_ondemand_jobs)",
            opts.series,
            SETUP_LIMIT.as_secs_f64()
        )));
    }

    // Data from the next minute boundary on.
    let first_minute = (run.last.as_secs() / 60 + 1) * 60;
    let slot = Duration(60_000_000_000 / opts.forming_per_minute as u64);
    let mut streams: Vec<StreamState> =
        specs.into_iter().map(|spec| StreamState::new(spec, first_minute, &mut rng)).collect();
    // (when, stream index); ties go to the lower index.
    let mut events: BinaryHeap<Reverse<(Timestamp, usize)>> = BinaryHeap::new();
    for (i, s) in streams.iter().enumerate() {
        events.push(Reverse((forming_time(s.minute, 0, slot, &mut rng), i)));
    }
    let mut skipped = 0u64;
    while stats.frames < opts.frames as u64 {
        let Some(Reverse((at, i))) = events.pop() else { break };
        run.settle(at)?;
        let s = &mut streams[i];
        // Binance stamps the event a few ms before it reaches us.
        let event_ms = (at.as_millis() - 3 - rng.below(20)) as i64;
        let closing = s.updates == opts.forming_per_minute;
        let text = if closing {
            let text = s.frame(event_ms.max(s.minute * 1000 + 59_999), true);
            s.roll();
            text
        } else {
            s.trade(&mut rng);
            s.updates += 1;
            s.frame(event_ms, false)
        };
        let next = if s.updates == opts.forming_per_minute {
            // The close follows the minute's end by a little, before the next candle's first update.
            Timestamp::from_secs((s.minute + 60) as u64).add(Duration(1_000_000 + rng.below(slot.0 / 5)))
        } else {
            forming_time(s.minute, s.updates, slot, &mut rng)
        };
        events.push(Reverse((next, i)));
        let Some(conn) = run.peer.exchange.live_conn(&s.spec.stream) else {
            // The connection was lost; the engine re-subscribes. Frames meanwhile are not delivered.
            skipped += 1;
            if skipped > opts.frames as u64 {
                return Err(io::Error::other("gen-journal: streams stopped being live; the engine lost its connections"));
            }
            continue;
        };
        run.input(at, Input::UpstreamText { conn: ConnId(conn), text })?;
        stats.frames += 1;
        if closing {
            stats.closing_frames += 1;
        } else {
            stats.forming_frames += 1;
        }
    }
    let end = run.last.add(TAIL);
    run.settle(end)?;
    run.journal.end(end)?;
    run.journal.flush()?;
    stats.records = run.records + 1;
    stats.other_inputs = run.records - stats.frames;
    stats.upstream_connections = run.peer.exchange.connects;
    stats.client_frames = run.peer.client_frames;
    stats.span = end.since(START);
    Ok(stats)
}

/// Update `k` of the candle opening at `minute`: inside its slot, jittered,
/// never in the slot's first fifth (where the previous close arrives).
fn forming_time(minute: i64, k: usize, slot: Duration, rng: &mut Rng) -> Timestamp {
    let slot_start = Timestamp::from_secs(minute as u64).add(slot.saturating_mul(k as u64));
    slot_start.add(Duration(slot.0 / 4 + rng.below(slot.0 / 2)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::journal;

    fn small(frames: usize) -> GenOptions {
        GenOptions { series: 6, frames, clients: 2, seed: 7, ..GenOptions::default() }
    }

    fn replay(text: &[u8]) -> (Engine, Vec<String>) {
        let mut out = Vec::new();
        let (replayer, _) = journal::replay(text, Box::new(MemoryStore::new()), &mut out).expect("journal replays");
        let (engine, _, _) = replayer.into_parts();
        let lines = String::from_utf8(out).expect("utf8").lines().map(str::to_string).collect();
        (engine, lines)
    }

    #[test]
    fn market_mix_spreads_futures_evenly() {
        let mix = MarketMix::Mixed { futures_percent: 30 };
        let futures = (0..100).filter(|i| mix.market_of(*i) == Market::Futures).count();
        assert_eq!(futures, 30);
        assert!((0..10).all(|i| MarketMix::Spot.market_of(i) == Market::Spot));
        assert!((0..10).all(|i| MarketMix::Futures.market_of(i) == Market::Futures));
        assert_eq!(MarketMix::parse("mixed:25"), Ok(MarketMix::Mixed { futures_percent: 25 }));
        assert!(MarketMix::parse("mixed:101").is_err());
    }

    #[test]
    fn journal_replays_every_frame_without_rejects() {
        let mut text = Vec::new();
        let stats = generate_journal(&mut text, &small(2_000)).unwrap();
        assert_eq!(stats.frames, 2_000);
        assert_eq!(stats.forming_frames + stats.closing_frames, 2_000);
        // 6 streams × (30 forming + 1 close) per minute: about 10 minutes.
        assert!(stats.closing_frames >= 6 * 9, "{stats}");
        assert_eq!(stats.upstream_connections, 2, "one spot and one futures connection");
        let (engine, lines) = replay(&text);
        let c = engine.counters();
        assert_eq!(c.kline_frames, 2_000);
        assert_eq!(c.upstream_rejects, 0, "{:?}", c.upstream_rejects_by_kind);
        assert_eq!(c.stale_closed + c.stale_forming, 0);
        assert_eq!(c.closed_accepted, stats.closing_frames);
        assert_eq!(engine.unpersisted_candles(), 0, "the tail lets the flush timers fire");
        let to_clients = lines.iter().filter(|l| l.contains("\"client\":")).count() as u64;
        assert_eq!(to_clients, stats.client_frames, "the replay delivers what generation delivered");
        assert!(stats.client_frames > 0);
    }

    #[test]
    fn same_options_same_bytes_and_seed_changes_them() {
        let gen = |opts: &GenOptions| {
            let mut v = Vec::new();
            generate_journal(&mut v, opts).unwrap();
            v
        };
        let a = gen(&small(500));
        assert_eq!(a, gen(&small(500)));
        assert_ne!(a, gen(&GenOptions { seed: 8, ..small(500) }));
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let err = generate_journal(io::sink(), &GenOptions { series: 0, ..small(10) }).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("series"));
        let err = generate_journal(io::sink(), &GenOptions { forming_per_minute: 0, ..small(10) }).unwrap_err();
        assert!(err.to_string().contains("forming_per_minute"));
    }

    #[test]
    fn frames_are_valid_binance_klines() {
        let mut rng = Rng::new(3);
        let mut s = StreamState::new(StreamSpec::new(27, Market::Futures), 1_700_000_100, &mut rng);
        s.trade(&mut rng);
        let text = s.frame(1_700_000_101_000, false);
        match crate::wire::binance::parse_frame(&text) {
            Ok(crate::wire::binance::Frame::Kline(k)) => {
                assert_eq!(k.stream, Some("aabbusdt@kline_1m"));
                assert_eq!(k.symbol, "AABBUSDT");
                assert_eq!(k.candle.candle_time, 1_700_000_100);
                assert!(k.candle.sanity_error().is_none());
                assert!(!k.is_final);
            }
            other => panic!("not a kline: {other:?}"),
        }
    }
}
