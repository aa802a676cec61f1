//! Retention through the engine (#15 §3), deterministic — time is an input:
//! a pass at start prunes each timeframe's old candles in batches of the
//! configured size (one store effect each, the next only after the previous
//! is answered), recent candles stay, the next pass runs `every` later, a
//! store failure ends the pass and is retried at the next one, and a reload
//! that changes the rules starts a pass at once.

use klinegate::cli::settings::Settings;
use klinegate::engine::reload::Reloadable;
use klinegate::engine::retention::RetentionRule;
use klinegate::engine::{Engine, Input, Output};
use klinegate::model::Candle;
use klinegate::replay::hosted;
use klinegate::store::{MemoryStore, Prune, SeriesBatch, Store};
use klinegate::time::{Duration, Timestamp};

const BTC1: &str = "binance:spot:BTC/USDT:1m";
const ETH1: &str = "binance:spot:ETH/USDT:1m";
const BTC5: &str = "binance:spot:BTC/USDT:5m";
const T0: i64 = 1_700_000_040; // a whole minute

fn at(s: i64) -> Timestamp {
    Timestamp::from_secs(s as u64)
}

fn candle(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 }
}

fn seeded() -> MemoryStore {
    let mut s = MemoryStore::new();
    s.write_batches(&[
        // 181 minutes up to T0: the 120 before T0 - 1 h are old.
        SeriesBatch { series_id: BTC1.into(), candles: (0..=180).map(|i| candle(T0 - 10_800 + 60 * i)).collect() },
        // 50 minutes, all older than an hour.
        SeriesBatch { series_id: ETH1.into(), candles: (0..50).map(|i| candle(T0 - 7_200 + 60 * i)).collect() },
        // 5m candles over 8 h: all within their day.
        SeriesBatch { series_id: BTC5.into(), candles: (0..96).map(|i| candle(T0 - 28_800 + 300 * i)).collect() },
    ])
    .unwrap();
    s
}

fn engine(retention: &str) -> Engine {
    let settings = Settings { pins: vec![], retention: retention.into(), heal: false, ..Settings::default() };
    let mut cfg = settings.to_engine_config().unwrap();
    cfg.retention.batch = 100;
    cfg.retention.every = Duration::from_secs(600);
    Engine::new(cfg, at(T0))
}

/// Drains the engine, carrying store effects out at once; returns the
/// prunes asked for and the log lines.
fn drain(e: &mut Engine, store: &mut MemoryStore, now: Timestamp) -> (Vec<Prune>, Vec<String>) {
    let (mut prunes, mut logs) = (Vec::new(), Vec::new());
    while let Some(o) = e.poll_output() {
        match &o {
            Output::Persist { write, .. } => {
                if let Some(p) = &write.prune {
                    prunes.push(p.clone());
                    // One batch at a time: nothing else is queued behind it.
                    assert!(e.poll_output().is_none(), "the next batch waits for this one's answer");
                }
            }
            Output::Log { line, .. } => logs.push(line.clone()),
            _ => {}
        }
        hosted::carry(e, store, &o, now);
    }
    (prunes, logs)
}

fn count(s: &MemoryStore, id: &str) -> u64 {
    s.count_range(id, i64::MIN, i64::MAX).unwrap()
}

#[test]
fn a_pass_at_start_prunes_in_batches_and_keeps_recent_candles() {
    let mut store = seeded();
    let mut e = engine("1m=1h,5m=1d");
    e.handle(Input::Start, at(T0));
    assert_eq!(e.poll_timeout(), Some(at(T0)), "the first pass is due at start");
    e.handle_timeout(at(T0));
    let (prunes, logs) = drain(&mut e, &mut store, at(T0));
    let cutoff = T0 - 3600;
    assert_eq!(
        prunes,
        vec![
            Prune { timeframe: "1m".into(), before: cutoff, limit: 100 },
            Prune { timeframe: "1m".into(), before: cutoff, limit: 100 },
            Prune { timeframe: "5m".into(), before: T0 - 86_400, limit: 100 },
        ],
        "a full batch is followed by another of its timeframe; a short one moves on"
    );
    assert_eq!(count(&store, BTC1), 61, "the last hour stays");
    assert_eq!(store.first_time(BTC1).unwrap(), Some(cutoff));
    assert_eq!(count(&store, ETH1), 0);
    assert_eq!(count(&store, BTC5), 96);
    assert!(logs.iter().any(|l| l == "retention_pass_done pruned_candles=170"), "{logs:?}");
    let f = e.retention_figures();
    assert_eq!((f.pruned_candles, f.batches, f.failures, f.last_pass_at), (170, 3, 0, Some(at(T0))));
    assert_eq!(e.poll_timeout(), Some(at(T0 + 600)), "the next pass");
}

#[test]
fn the_next_pass_runs_every_interval_and_a_failure_is_retried_at_the_next() {
    let mut store = seeded();
    let mut e = engine("1m=1h");
    e.handle(Input::Start, at(T0));
    e.handle_timeout(at(T0));
    drain(&mut e, &mut store, at(T0));
    e.handle_timeout(at(T0 + 599));
    assert!(drain(&mut e, &mut store, at(T0 + 599)).0.is_empty(), "not before the interval");
    e.handle_timeout(at(T0 + 600));
    let (prunes, _) = drain(&mut e, &mut store, at(T0 + 600));
    assert_eq!(prunes.len(), 1);
    assert_eq!(count(&store, BTC1), 51, "ten more minutes aged out");
    store.fail_writes(true);
    e.handle_timeout(at(T0 + 1200));
    let (_, logs) = drain(&mut e, &mut store, at(T0 + 1200));
    assert!(logs.iter().any(|l| l.starts_with("retention_prune_failed timeframe=1m")), "{logs:?}");
    assert_eq!(e.retention_figures().failures, 1);
    assert_eq!(e.poll_timeout(), Some(at(T0 + 1800)));
    store.fail_writes(false);
    e.handle_timeout(at(T0 + 1800));
    drain(&mut e, &mut store, at(T0 + 1800));
    assert_eq!(count(&store, BTC1), 31);
    assert_eq!(e.retention_figures().pruned_candles, 170 + 10 + 20);
}

#[test]
fn no_rules_no_pass_and_a_reload_with_rules_starts_one_at_once() {
    let mut store = seeded();
    let mut e = engine("");
    e.handle(Input::Start, at(T0));
    assert!(drain(&mut e, &mut store, at(T0)).0.is_empty());
    assert_eq!(e.poll_timeout(), None);
    let settings = Settings { pins: vec![], heal: false, ..Settings::default() }.to_engine_config().unwrap();
    let mut r = Reloadable::of(&settings);
    r.retention = vec![RetentionRule { timeframe: "1m".into(), keep_s: 3600 }];
    e.handle(Input::Reload { settings: r }, at(T0 + 5));
    e.handle_timeout(at(T0 + 5));
    let (prunes, _) = drain(&mut e, &mut store, at(T0 + 5));
    assert_eq!(prunes.len(), 2);
    assert_eq!(count(&store, ETH1), 0);
}

#[test]
fn the_read_role_leaves_pruning_to_ingesting_nodes() {
    let mut store = seeded();
    let settings = Settings { pins: vec![], retention: "1m=1h".into(), role: "read".into(), ..Settings::default() };
    let mut e = Engine::new(settings.to_engine_config().unwrap(), at(T0));
    e.handle(Input::Start, at(T0));
    e.handle_timeout(at(T0));
    assert!(drain(&mut e, &mut store, at(T0)).0.is_empty());
    assert_eq!(count(&store, ETH1), 50);
}
