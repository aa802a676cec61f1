//! Derived timeframes checked against candles written out as literal numbers.
//!
//! The expected 5m/15m/1h candles below were computed outside klinegate (a
//! short Python fold over the rows: open of the first minute, max high, min
//! low, close of the last, sum of volumes) and pasted in. Nothing here calls
//! the production merge or rollup to get an expectation, so a wrong merge rule
//! fails these tests instead of agreeing with itself.
//!
//! The 1m rows are one real hour of XRP/ETH, 2019-10-11 00:00–01:14 UTC, from
//! freqtrade's test data (`tests/testdata/XRP_ETH-1m.json`, see
//! `../shared/data/SOURCES.md`): zero-volume minutes, flat minutes, one
//! 38,071-volume spike, highs and lows that fall inside buckets.

mod support;

use klinegate::engine::derived::DerivedFold;
use klinegate::model::{Candle, SeriesId, Timeframe};
use serde_json::{json, Value};
use support::{ack, frames_for, replay_text, JournalBuilder};

/// `[open time (s), open, high, low, close, volume]`, 2019-10-11 00:00 UTC on.
const XRP_ETH_1M: [(i64, f64, f64, f64, f64, f64); 65] = [
    (1570752000, 0.00141342, 0.00141557, 0.00141266, 0.00141418, 1482.0),
    (1570752060, 0.00141597, 0.00141658, 0.00141597, 0.00141658, 522.0),
    (1570752120, 0.00141438, 0.0014158, 0.00141438, 0.0014158, 163.0),
    (1570752180, 0.0014158, 0.0014158, 0.0014158, 0.0014158, 0.0),
    (1570752240, 0.00141266, 0.00141266, 0.00141192, 0.00141192, 1311.0),
    (1570752300, 0.00141331, 0.00141469, 0.00141192, 0.00141192, 2392.0),
    (1570752360, 0.00141192, 0.00141192, 0.00141192, 0.00141192, 0.0),
    (1570752420, 0.00141179, 0.00141266, 0.00141179, 0.00141266, 221.0),
    (1570752480, 0.00141266, 0.00141266, 0.00141266, 0.00141266, 0.0),
    (1570752540, 0.00141162, 0.00141162, 0.00141159, 0.00141161, 565.0),
    (1570752600, 0.00141327, 0.00141328, 0.00141327, 0.00141328, 33.0),
    (1570752660, 0.00141226, 0.00141226, 0.00141222, 0.00141222, 32.0),
    (1570752720, 0.00141284, 0.00141284, 0.00141222, 0.00141222, 2823.0),
    (1570752780, 0.00141428, 0.00141428, 0.00141428, 0.00141428, 33.0),
    (1570752840, 0.00141428, 0.00141428, 0.00141428, 0.00141428, 0.0),
    (1570752900, 0.00141458, 0.00141728, 0.00141458, 0.00141728, 380.0),
    (1570752960, 0.00141792, 0.00141794, 0.00141782, 0.00141794, 810.0),
    (1570753020, 0.00141794, 0.00141794, 0.00141794, 0.00141794, 0.0),
    (1570753080, 0.00141794, 0.00141794, 0.00141794, 0.00141794, 0.0),
    (1570753140, 0.00141536, 0.00141536, 0.00141478, 0.00141478, 53.0),
    (1570753200, 0.00141478, 0.00141478, 0.00141478, 0.00141478, 42.0),
    (1570753260, 0.00141478, 0.00141478, 0.00141478, 0.00141478, 0.0),
    (1570753320, 0.00141665, 0.00141683, 0.00141661, 0.00141662, 1126.0),
    (1570753380, 0.00141733, 0.00141733, 0.00141565, 0.00141675, 471.0),
    (1570753440, 0.00141565, 0.00141565, 0.00141536, 0.00141536, 121.0),
    (1570753500, 0.00141458, 0.00141458, 0.00141329, 0.00141436, 56.0),
    (1570753560, 0.00141433, 0.00141433, 0.00141312, 0.00141312, 40.0),
    (1570753620, 0.00141312, 0.00141312, 0.00141312, 0.00141312, 23.0),
    (1570753680, 0.00141495, 0.00141495, 0.00141495, 0.00141495, 22.0),
    (1570753740, 0.00141485, 0.00141612, 0.00141485, 0.00141612, 78.0),
    (1570753800, 0.00141542, 0.00141668, 0.00141542, 0.00141602, 170.0),
    (1570753860, 0.00141602, 0.00141602, 0.00141597, 0.00141597, 293.0),
    (1570753920, 0.00141733, 0.00141746, 0.00141733, 0.00141746, 163.0),
    (1570753980, 0.00141746, 0.00141746, 0.00141746, 0.00141746, 0.0),
    (1570754040, 0.00141798, 0.00141815, 0.00141647, 0.00141647, 123.0),
    (1570754100, 0.00141817, 0.00141817, 0.00141817, 0.00141817, 141.0),
    (1570754160, 0.00141651, 0.00141886, 0.0014158, 0.00141884, 38071.0),
    (1570754220, 0.00141847, 0.00141951, 0.00141847, 0.00141951, 102.0),
    (1570754280, 0.00141954, 0.00141954, 0.00141849, 0.00141849, 1319.0),
    (1570754340, 0.0014185, 0.00141916, 0.00141844, 0.00141844, 3385.0),
    (1570754400, 0.00141883, 0.00141883, 0.00141753, 0.00141753, 420.0),
    (1570754460, 0.00141909, 0.00141909, 0.00141907, 0.00141907, 932.0),
    (1570754520, 0.00141965, 0.00141965, 0.00141965, 0.00141965, 22.0),
    (1570754580, 0.00141965, 0.00141965, 0.00141873, 0.00141873, 1100.0),
    (1570754640, 0.00141873, 0.00141873, 0.00141873, 0.00141873, 0.0),
    (1570754700, 0.00141792, 0.00141792, 0.00141792, 0.00141792, 77.0),
    (1570754760, 0.00141783, 0.00141783, 0.00141715, 0.00141715, 28.0),
    (1570754820, 0.00141863, 0.00141909, 0.00141769, 0.00141909, 1689.0),
    (1570754880, 0.00141854, 0.00141854, 0.00141769, 0.00141769, 208.0),
    (1570754940, 0.00141741, 0.00141741, 0.0014161, 0.0014161, 834.0),
    (1570755000, 0.0014161, 0.0014161, 0.0014161, 0.0014161, 0.0),
    (1570755060, 0.00141609, 0.00141609, 0.00141609, 0.00141609, 983.0),
    (1570755120, 0.00141511, 0.00141511, 0.00141511, 0.00141511, 11.0),
    (1570755180, 0.00141484, 0.00141484, 0.00141458, 0.00141462, 156.0),
    (1570755240, 0.00141402, 0.00141452, 0.00141402, 0.00141402, 192.0),
    (1570755300, 0.00141402, 0.00141402, 0.00141402, 0.00141402, 95.0),
    (1570755360, 0.00141402, 0.00141402, 0.00141333, 0.00141333, 63.0),
    (1570755420, 0.00141333, 0.00141333, 0.00141333, 0.00141333, 53.0),
    (1570755480, 0.00141333, 0.00141333, 0.00141333, 0.00141333, 0.0),
    (1570755540, 0.00141573, 0.00141574, 0.00141573, 0.00141573, 55.0),
    (1570755600, 0.00141505, 0.00141525, 0.00141457, 0.00141457, 2234.0),
    (1570755660, 0.00141568, 0.00141568, 0.00141568, 0.00141568, 68.0),
    (1570755720, 0.00141458, 0.00141458, 0.00141458, 0.00141458, 45.0),
    (1570755780, 0.00141573, 0.00141573, 0.00141573, 0.00141573, 95.0),
    (1570755840, 0.00141467, 0.00141674, 0.00141467, 0.00141674, 372.0),
];

const HOUR: i64 = 1570752000;

/// The twelve 5m buckets of the hour, computed outside klinegate.
const EXPECTED_5M: [(i64, f64, f64, f64, f64, f64); 12] = [
    (1570752000, 0.00141342, 0.00141658, 0.00141192, 0.00141192, 3478.0),
    (1570752300, 0.00141331, 0.00141469, 0.00141159, 0.00141161, 3178.0),
    (1570752600, 0.00141327, 0.00141428, 0.00141222, 0.00141428, 2921.0),
    (1570752900, 0.00141458, 0.00141794, 0.00141458, 0.00141478, 1243.0),
    (1570753200, 0.00141478, 0.00141733, 0.00141478, 0.00141536, 1760.0),
    (1570753500, 0.00141458, 0.00141612, 0.00141312, 0.00141612, 219.0),
    (1570753800, 0.00141542, 0.00141815, 0.00141542, 0.00141647, 749.0),
    (1570754100, 0.00141817, 0.00141954, 0.0014158, 0.00141844, 43018.0),
    (1570754400, 0.00141883, 0.00141965, 0.00141753, 0.00141873, 2474.0),
    (1570754700, 0.00141792, 0.00141909, 0.0014161, 0.0014161, 2836.0),
    (1570755000, 0.0014161, 0.0014161, 0.00141402, 0.00141402, 1342.0),
    (1570755300, 0.00141402, 0.00141574, 0.00141333, 0.00141573, 266.0),
];

const EXPECTED_15M: [(i64, f64, f64, f64, f64, f64); 4] = [
    (1570752000, 0.00141342, 0.00141658, 0.00141159, 0.00141428, 9577.0),
    (1570752900, 0.00141458, 0.00141794, 0.00141312, 0.00141612, 3222.0),
    (1570753800, 0.00141542, 0.00141965, 0.00141542, 0.00141873, 46241.0),
    (1570754700, 0.00141792, 0.00141909, 0.00141333, 0.00141573, 4444.0),
];

const EXPECTED_1H: (i64, f64, f64, f64, f64, f64) =
    (1570752000, 0.00141342, 0.00141965, 0.00141159, 0.00141573, 63484.0);

fn candle((t, open, high, low, close, volume): (i64, f64, f64, f64, f64, f64)) -> Candle {
    Candle { candle_time: t, open, high, low, close, volume }
}

fn minutes(range: std::ops::Range<usize>) -> Vec<Candle> {
    XRP_ETH_1M[range].iter().copied().map(candle).collect()
}

fn fold() -> DerivedFold {
    let base = SeriesId::parse("binance:spot:XRP/ETH:1m").unwrap();
    let targets: Vec<Timeframe> = ["5m", "15m", "1h"].iter().map(|s| Timeframe::parse(s).unwrap()).collect();
    DerivedFold::new(&base, &targets)
}

/// The candles `fold` emitted for target `index`, in emission order.
fn of_target(out: &[(usize, Candle)], index: usize) -> Vec<Candle> {
    out.iter().filter(|(i, _)| *i == index).map(|(_, c)| *c).collect()
}

// ------------------------------------------------------------ the fold itself

#[test]
fn one_real_hour_folds_to_the_literal_5m_15m_and_1h_candles() {
    let mut f = fold();
    let mut out = Vec::new();
    // Delivered in uneven batches, as flushes do.
    let base = minutes(0..60);
    for chunk in base.chunks(7) {
        f.on_base_closed(chunk, &mut out);
    }
    assert_eq!(of_target(&out, 0), EXPECTED_5M.map(candle));
    assert_eq!(of_target(&out, 1), EXPECTED_15M.map(candle));
    assert_eq!(of_target(&out, 2), vec![candle(EXPECTED_1H)]);
}

#[test]
fn forming_candle_merges_the_held_minutes_of_its_bucket() {
    let mut f = fold();
    let mut out = Vec::new();
    // 00:35, 00:36 closed; 00:37 forming (its latest values) → 5m bucket 00:35.
    f.on_base_closed(&minutes(0..37), &mut out);
    let mut forming = Vec::new();
    f.on_base_forming(&candle(XRP_ETH_1M[37]), &mut forming);
    let five = forming.iter().find(|(i, _)| *i == 0).map(|(_, c)| *c);
    assert_eq!(five, Some(candle((1570754100, 0.00141817, 0.00141951, 0.0014158, 0.00141951, 38314.0))));
    // 15m bucket 00:30: seven closed minutes and the forming one.
    let fifteen = forming.iter().find(|(i, _)| *i == 1).map(|(_, c)| *c);
    assert_eq!(fifteen, Some(candle((1570753800, 0.00141542, 0.00141951, 0.00141542, 0.00141951, 39063.0))));
    // 1h bucket: 37 closed minutes and the forming one.
    let hour = forming.iter().find(|(i, _)| *i == 2).map(|(_, c)| *c);
    assert_eq!(hour, Some(candle((HOUR, 0.00141342, 0.00141951, 0.00141159, 0.00141951, 51862.0))));
}

#[test]
fn a_missing_minute_holds_its_buckets_until_it_is_healed() {
    let mut f = fold();
    let mut out = Vec::new();
    // 00:07 is missing: the 5m bucket 00:05 and the 15m bucket 00:00 cannot close.
    let mut base = minutes(0..15);
    let late = base.remove(7);
    f.on_base_closed(&base, &mut out);
    assert_eq!(of_target(&out, 0), [EXPECTED_5M[0], EXPECTED_5M[2]].map(candle));
    assert!(of_target(&out, 1).is_empty(), "15m 00:00 waits for 00:07");
    out.clear();
    f.on_base_closed(&[late], &mut out);
    assert_eq!(of_target(&out, 0), vec![candle(EXPECTED_5M[1])]);
    assert_eq!(of_target(&out, 1), vec![candle(EXPECTED_15M[0])]);
    // The same minutes again change nothing.
    out.clear();
    f.on_base_closed(&minutes(0..15), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_redelivered_minute_with_new_values_replaces_the_old_one_before_the_bucket_closes() {
    let mut f = fold();
    let mut out = Vec::new();
    f.on_base_closed(&minutes(60..63), &mut out);
    // 01:01 delivered again with a higher high and more volume (a REST heal of a
    // minute the stream had reported early): the later delivery wins.
    let corrected = candle((1570755660, 0.00141568, 0.00141999, 0.00141568, 0.00141568, 100.0));
    f.on_base_closed(&[corrected], &mut out);
    f.on_base_closed(&minutes(63..65), &mut out);
    assert_eq!(of_target(&out, 0), vec![candle((1570755600, 0.00141505, 0.00141999, 0.00141457, 0.00141674, 2846.0))]);
}

// ------------------------------------------------------------ through the engine

const SPOT_1M: &str = "binance:spot:XRP/ETH:1m";
const STREAM: &str = "xrpeth@kline_1m";

/// A Binance combined-stream 1m kline frame carrying the row's values.
fn kline_frame(row: (i64, f64, f64, f64, f64, f64), is_final: bool) -> String {
    let (t, o, h, l, c, v) = row;
    let t = t * 1000;
    json!({"stream": STREAM, "data": {"e": "kline", "E": t + 59_999, "s": "XRPETH", "k": {
        "t": t, "T": t + 59_999, "s": "XRPETH", "i": "1m", "f": 1, "L": 2,
        "o": o.to_string(), "c": c.to_string(), "h": h.to_string(), "l": l.to_string(),
        "v": v.to_string(), "n": 2, "x": is_final, "q": "0", "V": "0", "Q": "0", "B": "0"}}})
    .to_string()
}

fn literal(v: &Value) -> (i64, f64, f64, f64, f64, f64) {
    let c = &v["candle"];
    let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
    (c["candle_time"].as_i64().unwrap_or(-1), f("open"), f("high"), f("low"), f("close"), f("volume"))
}

#[test]
fn the_engine_publishes_the_literal_derived_candles_of_a_real_hour() {
    // Subscribed to the 1m series and every derived one before the hour
    // starts; the stream sends one forming update and the close of each minute.
    let before = HOUR as f64 - 2.0;
    let mut j = JournalBuilder::new(before, json!({"upstream_silence_s": 600}));
    j.input(before, json!({"type": "start"})).connect(before, 1);
    for tf in ["1m", "5m", "15m", "1h"] {
        j.client_text(before, 1, json!({"type": "subscribe", "series_id": SPOT_1M.replace("1m", tf)}));
    }
    j.input(before + 0.1, json!({"type": "upstream_connected", "conn": 1})).upstream(before + 0.2, 1, ack(1));
    for row in &XRP_ETH_1M[..60] {
        j.upstream(row.0 as f64 + 30.0, 1, kline_frame(*row, false));
        j.upstream(row.0 as f64 + 60.1, 1, kline_frame(*row, true));
    }
    j.end(HOUR as f64 + 3_700.0);
    let frames = frames_for(&replay_text(&j.text()), 1);
    let closed = |tf: &str| -> Vec<(i64, f64, f64, f64, f64, f64)> {
        let id = SPOT_1M.replace("1m", tf);
        frames.iter().filter(|f| f["type"] == "candle_closed" && f["series_id"] == id).map(literal).collect()
    };
    assert_eq!(closed("1m").len(), 60, "every minute closed once");
    assert_eq!(closed("5m"), EXPECTED_5M.to_vec());
    assert_eq!(closed("15m"), EXPECTED_15M.to_vec());
    assert_eq!(closed("1h"), vec![EXPECTED_1H]);
}
