//! Deferred forming fan-out (`HubConfig::defer_forming_fanout`) delivers the
//! same bytes to every client as the immediate one: the same exchange frames,
//! subscribes, unsubscribes, disconnects and stalled clients go through two
//! engines, one forming every fan-out at once and read the way the shell used
//! to (take every ready client after the outputs are drained), one deferring
//! and read the way the shell does now (take each client the moment it is
//! ready). Each client's concatenated frames, and the clients closed as slow
//! consumers, must be equal. Derived timeframes are on, so one exchange frame
//! publishes several series (each publish settles the one before).

#[path = "../benches/support/engine.rs"]
mod engine_support;

use std::collections::BTreeMap;

use klinegate::cli::settings::Settings;
use klinegate::engine::{ClientId, ConnId, Engine, Input, Output};
use klinegate::replay::hosted;
use klinegate::store::MemoryStore;
use klinegate::time::Timestamp;

const BASE: &str = "binance:spot:BTC/USDT:1m";
const DERIVED: &str = "binance:spot:BTC/USDT:5m";
const STREAM: &str = "btcusdt@kline_1m";
/// A minute boundary (seconds).
const T0: u64 = 1_700_002_800;
/// Clients that never take their frames (closed as slow consumers).
const STALLED: [u64; 2] = [7, 31];

/// How the test plays the shell.
#[derive(Clone, Copy)]
enum Reader {
    /// Take each ready client after every output of the step is out.
    AfterDrain,
    /// Take a client as soon as its `ClientReady` comes out.
    AtOnce,
}

#[derive(Default, Debug, PartialEq)]
struct Received {
    bytes: BTreeMap<u64, Vec<u8>>,
    closed: Vec<u64>,
}

fn kline(open_s: u64, event_ms: u64, close: f64, trades: u64, is_final: bool) -> String {
    let t = open_s * 1000;
    format!(
        r#"{{"stream":"{STREAM}","data":{{"e":"kline","E":{event_ms},"s":"BTCUSDT","k":{{"t":{t},"T":{tt},"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"36500.00000000","c":"{close:.8}","h":"36900.00000000","l":"36100.00000000","v":"12.50000000","n":{trades},"x":{is_final},"q":"1.0","V":"1.0","Q":"1.0","B":"0"}}}}}}"#,
        tt = t + 59_999,
    )
}

fn subscribe(series: &str) -> String {
    format!(r#"{{"type":"subscribe","series_id":"{series}"}}"#)
}

struct Driver {
    e: Engine,
    /// The store's effects are carried out at once (`replay::hosted`).
    store: MemoryStore,
    reader: Reader,
    got: Received,
    frames: Vec<klinegate::engine::Frame>,
}

impl Driver {
    fn new(defer: bool, reader: Reader, now: Timestamp) -> (Driver, u64) {
        let settings = Settings {
            pins: vec![BASE.into()],
            derived: "5m".into(),
            heal: false,
            client_max_backlog_bytes: 1500,
            ..Settings::default()
        };
        let mut cfg = settings.to_engine_config().expect("valid settings");
        cfg.hub.defer_forming_fanout = defer;
        let mut e = Engine::new(cfg, now);
        let mut store = MemoryStore::new();
        let conn = engine_support::start_live(&mut e, &mut store, now);
        (Driver { e, store, reader, got: Received::default(), frames: Vec::new() }, conn)
    }

    fn take(&mut self, client: u64) {
        if STALLED.contains(&client) {
            return;
        }
        self.frames.clear();
        klinegate::replay::hosted::write_all(&mut self.e, ClientId(client), &mut self.frames);
        let bytes = self.got.bytes.entry(client).or_default();
        for f in &self.frames {
            bytes.extend_from_slice(f);
        }
    }

    /// Carries out every output, like the shell, reading clients as `reader` says.
    fn drain(&mut self) {
        loop {
            let mut ready = Vec::new();
            while let Some(out) = self.e.poll_output() {
                match out {
                    Output::ClientReady { client } => match self.reader {
                        Reader::AtOnce => self.take(client.0),
                        Reader::AfterDrain => ready.push(client),
                    },
                    Output::ClientClose { client, .. } => self.got.closed.push(client.0),
                    other => {
                        let now = self.e.now();
                        hosted::carry(&mut self.e, &mut self.store, &other, now);
                    }
                }
            }
            if ready.is_empty() {
                return;
            }
            // A take may ask for a catch-up page: drain again after the takes.
            ready.sort_unstable();
            ready.dedup();
            for client in ready {
                self.take(client.0);
            }
        }
    }

    fn input(&mut self, input: Input, now: Timestamp) {
        self.e.handle(input, now);
        self.drain();
    }

    fn timers(&mut self, now: Timestamp) {
        if self.e.poll_timeout().is_some_and(|t| t <= now) {
            self.e.handle_timeout(now);
            self.drain();
        }
    }
}

/// The same script through one engine; what every client received.
fn run(defer: bool, reader: Reader) -> Received {
    let start = Timestamp::from_secs(T0 - 2);
    let (mut d, conn) = Driver::new(defer, reader, start);
    for client in 1..=40u64 {
        d.input(Input::ClientConnected { client: ClientId(client) }, start);
        let series = if client % 3 == 0 { DERIVED } else { BASE };
        d.input(Input::ClientText { client: ClientId(client), text: subscribe(series) }, start);
        if client % 5 == 0 {
            d.input(Input::ClientText { client: ClientId(client), text: subscribe(DERIVED) }, start);
        }
    }
    let mut trades = 0;
    for minute in 0..7u64 {
        let open_s = T0 + minute * 60;
        for step in 0..8u64 {
            trades += 1;
            let now = Timestamp::from_millis((open_s * 1000) + step * 7_000 + 100);
            d.timers(now);
            let event_ms = open_s * 1000 + step * 7_000 + 50;
            let close = 36_500.0 + (trades as f64) * 1.25;
            d.input(Input::UpstreamText { conn: ConnId(conn), text: kline(open_s, event_ms, close, trades, false) }, now);
            // Clients come, go and change subscriptions between exchange frames.
            let client = 100 + minute * 10 + step;
            if step == 2 {
                d.input(Input::ClientConnected { client: ClientId(client) }, now);
                d.input(Input::ClientText { client: ClientId(client), text: subscribe(BASE) }, now);
            }
            if step == 4 {
                let gone = 2 + minute * 4;
                d.input(Input::ClientDisconnected { client: ClientId(gone) }, now);
                let text = format!(r#"{{"type":"unsubscribe","series_id":"{BASE}"}}"#);
                d.input(Input::ClientText { client: ClientId(gone + 1), text }, now);
            }
        }
        let end = Timestamp::from_millis((open_s + 60) * 1000 + 20);
        let text = kline(open_s, (open_s + 60) * 1000 + 5, 36_600.0, trades, true);
        d.input(Input::UpstreamText { conn: ConnId(conn), text }, end);
        d.timers(end);
    }
    d.timers(Timestamp::from_secs(T0 + 7 * 60 + 30));
    d.got
}

#[test]
fn deferred_fanout_delivers_the_same_bytes_as_the_immediate_one() {
    let immediate = run(false, Reader::AfterDrain);
    assert!(immediate.bytes.values().all(|b| !b.is_empty()), "every reading client got frames");
    assert!(immediate.bytes.len() >= 30, "{} clients read", immediate.bytes.len());
    assert!(!immediate.closed.is_empty(), "the stalled clients were closed as slow consumers");
    let mut closed = immediate.closed.clone();
    closed.sort_unstable();
    for (defer, reader) in [(true, Reader::AtOnce), (true, Reader::AfterDrain), (false, Reader::AtOnce)] {
        let mut got = run(defer, reader);
        got.closed.sort_unstable();
        assert_eq!(got.closed, closed, "slow-consumer closes (defer {defer})");
        for (client, bytes) in &immediate.bytes {
            let other = got.bytes.get(client).map(Vec::as_slice).unwrap_or_default();
            assert!(
                other == bytes.as_slice(),
                "client {client} (defer {defer}): {} bytes vs {} immediate\n{}\n---\n{}",
                other.len(),
                bytes.len(),
                String::from_utf8_lossy(other),
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(got.bytes.len(), immediate.bytes.len());
    }
}
