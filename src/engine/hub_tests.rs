//! The hub's shapes (#15 §4): `fields=full` subscribers get the whole kline
//! on catch-up and live frames, everyone else the default bytes; one shared
//! frame per shape.

use super::*;
use crate::model::SeriesId;
use crate::engine::Input;
use crate::store::StoreQuery;

const S: &str = "binance:spot:BTC/USDT:1m";
/// A minute boundary (seconds), the engine time of the tests.
const NOW: i64 = 1_700_002_800;

fn candle(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 }
}

fn ext(t: i64) -> KlineExt {
    KlineExt { quote_volume: 4.5, trades: t as u64 % 1000, taker_buy_base_volume: 1.25, taker_buy_quote_volume: 2.25 }
}

struct World {
    hub: Hub,
    series: SeriesTable,
    idx: SeriesIdx,
    out: VecDeque<Output>,
    counters: Counters,
}

impl World {
    fn new(defer: bool) -> World {
        let mut series = SeriesTable::default();
        let idx = series.intern(&SeriesId::parse(S).unwrap());
        let cfg = HubConfig { defer_forming_fanout: defer, ..HubConfig::default() };
        World { hub: Hub::new(cfg, Default::default()), series, idx, out: VecDeque::new(), counters: Counters::default() }
    }

    /// Connects `client`, subscribes it and answers its catch-up with `page`.
    fn subscribe(&mut self, client: u64, since: Option<i64>, batch: bool, full: bool, page: &[i64]) {
        let client = ClientId(client);
        self.hub.connect(client);
        self.hub.subscribe(client, self.idx, since, batch, full, false, NOW, &self.series, &mut self.out).unwrap();
        let Some((op, query)) = self.reads().pop() else { return };
        let candles: Vec<Candle> = page.iter().map(|t| candle(*t)).collect();
        let result = match query {
            StoreQuery::AfterFull { .. } => StoreReadResult::FullCandles(
                candles.into_iter().map(|c| crate::kline_ext::FullCandle::new(c, Some(ext(c.candle_time)))).collect(),
            ),
            StoreQuery::After { .. } => StoreReadResult::Candles(candles),
            StoreQuery::TailStart { .. } if page.is_empty() => StoreReadResult::TailStart(None),
            other => panic!("unexpected read {other:?}"),
        };
        self.hub.on_store_read(op, result, NOW, &self.series, &mut self.out, &mut self.counters);
        assert!(self.reads().is_empty(), "the page was short: the catch-up is over");
    }

    fn reads(&mut self) -> Vec<(StoreOp, StoreQuery)> {
        self.out
            .drain(..)
            .filter_map(|o| match o {
                Output::ReadStore { op, query } => Some((op, query)),
                _ => None,
            })
            .collect()
    }

    fn take(&mut self, client: u64) -> Vec<Frame> {
        self.write(client, Input::WRITE_ALL)
    }

    /// `ClientWritable { client, budget }` then `poll_client` until `None`.
    fn write(&mut self, client: u64, budget: usize) -> Vec<Frame> {
        let client = ClientId(client);
        self.hub.writable(client, budget, &self.series, &mut self.out);
        std::iter::from_fn(|| self.hub.poll_client(client)).collect()
    }

    fn texts(&mut self, client: u64) -> Vec<String> {
        self.take(client).iter().map(|f| String::from_utf8(f.to_vec()).unwrap()).collect()
    }
}

fn default_closed(t: i64) -> String {
    let mut buf = Vec::new();
    wire::write_candle_frame(&mut buf, false, S, &candle(t));
    String::from_utf8(buf).unwrap()
}

fn full_closed(t: i64, e: Option<KlineExt>) -> String {
    let mut buf = Vec::new();
    wire::write_full_candle_frame(&mut buf, false, S, &candle(t), e);
    String::from_utf8(buf).unwrap()
}

#[test]
fn a_full_catchup_reads_the_fields_and_a_default_one_does_not() {
    let mut w = World::new(false);
    w.hub.connect(ClientId(1));
    w.hub.subscribe(ClientId(1), w.idx, Some(NOW - 600), false, true, false, NOW, &w.series, &mut w.out).unwrap();
    assert!(matches!(w.reads()[..], [(_, StoreQuery::AfterFull { .. })]), "a full subscription reads its fields");
    w.hub.connect(ClientId(2));
    w.hub.subscribe(ClientId(2), w.idx, Some(NOW - 600), false, false, false, NOW, &w.series, &mut w.out).unwrap();
    assert!(matches!(w.reads()[..], [(_, StoreQuery::After { .. })]), "the default read is unchanged");
}

#[test]
fn catchup_frames_single_and_batch_carry_the_fields_from_the_store() {
    let mut w = World::new(false);
    let t = NOW - 300;
    w.subscribe(1, Some(t - 60), false, true, &[t, t + 60]);
    assert_eq!(w.texts(1), vec![full_closed(t, Some(ext(t))), full_closed(t + 60, Some(ext(t + 60)))]);
    w.subscribe(2, Some(t - 60), true, true, &[t, t + 60]);
    let batch = w.texts(2);
    let v: serde_json::Value = serde_json::from_str(&batch[0]).unwrap();
    assert_eq!(v["type"], "candles_batch");
    assert_eq!(v["candles"][1]["trades"], ext(t + 60).trades);
    assert_eq!(v["candles"][1].as_object().unwrap().keys().count(), 10);
    w.subscribe(3, Some(t - 60), false, false, &[t, t + 60]);
    assert_eq!(w.texts(3), vec![default_closed(t), default_closed(t + 60)], "the default shape, byte for byte");
}

#[test]
fn live_closes_go_out_in_each_subscribers_shape_from_one_frame_per_shape() {
    let mut w = World::new(false);
    for (client, full) in [(1, false), (2, true), (3, true), (4, false)] {
        w.subscribe(client, None, false, full, &[]);
        w.take(client);
    }
    let t = NOW - 60;
    w.hub.publish_closed_ext(w.idx, &[candle(t)], &[Some(ext(t))], &w.series, &mut w.out, &mut w.counters);
    let frames: Vec<Frame> = (1..=4).flat_map(|c| w.take(c)).collect();
    assert_eq!(frames.len(), 4);
    assert_eq!(String::from_utf8(frames[0].to_vec()).unwrap(), default_closed(t));
    assert_eq!(String::from_utf8(frames[1].to_vec()).unwrap(), full_closed(t, Some(ext(t))));
    assert_eq!(frames[1].as_ptr(), frames[2].as_ptr(), "full subscribers share one buffer");
    assert_eq!(frames[0].as_ptr(), frames[3].as_ptr(), "default subscribers share one buffer");
    // Closes whose fields are unknown (a read node, a healed minute): `null`.
    w.hub.publish_closed_ext(w.idx, &[candle(NOW)], &[], &w.series, &mut w.out, &mut w.counters);
    assert_eq!(w.texts(2), vec![full_closed(NOW, None)]);
    assert_eq!(w.texts(1), vec![default_closed(NOW)]);
}

#[test]
fn a_live_batch_in_the_full_shape_for_a_batch_subscriber() {
    let mut w = World::new(false);
    w.subscribe(1, None, true, true, &[]);
    w.subscribe(2, None, true, false, &[]);
    let (a, b) = (NOW - 120, NOW - 60);
    let exts = [Some(ext(a)), None];
    w.hub.publish_closed_ext(w.idx, &[candle(a), candle(b)], &exts, &w.series, &mut w.out, &mut w.counters);
    let full: serde_json::Value = serde_json::from_slice(&w.take(1)[0]).unwrap();
    assert_eq!((full["candles"][0]["trades"].as_u64(), full["candles"][1]["trades"].is_null()), (Some(ext(a).trades), true));
    let mut plain = Vec::new();
    wire::write_batch_frame(&mut plain, S, &[candle(a), candle(b)]);
    assert_eq!(w.take(2)[0].to_vec(), plain);
}

#[test]
fn forming_frames_in_each_shape_also_when_the_fanout_is_deferred() {
    for defer in [false, true] {
        let mut w = World::new(defer);
        for (client, full) in [(1, true), (2, false), (3, true)] {
            w.subscribe(client, None, false, full, &[]);
            w.take(client);
        }
        let e = ext(NOW);
        w.hub.publish_forming_ext(w.idx, &candle(NOW), Some(e), &w.series, &mut w.out, &mut w.counters);
        w.hub.settle(&w.series, &mut w.out, &mut w.counters);
        let mut full = Vec::new();
        wire::write_full_candle_frame(&mut full, true, S, &candle(NOW), Some(e));
        let mut plain = Vec::new();
        wire::write_candle_frame(&mut plain, true, S, &candle(NOW));
        assert_eq!(w.take(1)[0].to_vec(), full, "defer={defer}");
        assert_eq!(w.take(2)[0].to_vec(), plain, "defer={defer}");
        assert_eq!(w.take(3)[0].to_vec(), full, "defer={defer}");
    }
}

#[test]
fn wants_full_follows_subscribes_resubscribes_and_departures() {
    let mut w = World::new(false);
    assert!(!w.hub.wants_full(w.idx));
    w.subscribe(1, None, false, false, &[]);
    assert!(!w.hub.wants_full(w.idx), "no full subscriber: no fields looked up");
    w.subscribe(2, None, false, true, &[]);
    w.subscribe(3, None, false, true, &[]);
    assert!(w.hub.wants_full(w.idx));
    w.hub.unsubscribe(ClientId(2), w.idx);
    assert!(w.hub.wants_full(w.idx));
    // A re-subscribe in the default shape.
    w.hub.subscribe(ClientId(3), w.idx, None, false, false, false, NOW, &w.series, &mut w.out).unwrap();
    assert!(!w.hub.wants_full(w.idx));
    w.hub.subscribe(ClientId(3), w.idx, None, false, true, false, NOW, &w.series, &mut w.out).unwrap();
    w.hub.subscribe(ClientId(3), w.idx, None, false, true, false, NOW, &w.series, &mut w.out).unwrap();
    assert!(w.hub.wants_full(w.idx));
    w.hub.disconnect(ClientId(3));
    assert!(!w.hub.wants_full(w.idx));
    // Without full subscribers a publish builds the default frames only.
    w.take(1);
    w.hub.publish_closed_ext(w.idx, &[candle(NOW)], &[Some(ext(NOW))], &w.series, &mut w.out, &mut w.counters);
    assert_eq!(w.texts(1), vec![default_closed(NOW)]);
}

fn forming_text(c: &Candle) -> String {
    let mut buf = Vec::new();
    wire::write_candle_frame(&mut buf, true, S, c);
    String::from_utf8(buf).unwrap()
}

fn utf8(frames: Vec<Frame>) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8(f.to_vec()).unwrap()).collect()
}

/// `ClientWritable` with a small budget moves frames from the front of the
/// queue, in order; what stays queued still coalesces (a forming update
/// replaces the queued one) and a frame already handed out is never replaced.
#[test]
fn a_partial_write_keeps_the_rest_queued_in_order_and_coalescing() {
    let mut w = World::new(false);
    w.subscribe(1, None, false, false, &[]);
    assert!(w.take(1).is_empty());
    w.hub.publish_closed(w.idx, &[candle(NOW - 120)], &w.series, &mut w.out, &mut w.counters);
    w.hub.publish_closed(w.idx, &[candle(NOW - 60)], &w.series, &mut w.out, &mut w.counters);
    let f1 = candle(NOW);
    w.hub.publish_forming(w.idx, &f1, &w.series, &mut w.out, &mut w.counters);
    assert_eq!(utf8(w.write(1, 1)), vec![default_closed(NOW - 120)], "one byte of budget: one frame");
    assert_eq!(w.hub.queued_bytes(ClientId(1)), default_closed(NOW - 60).len() + forming_text(&f1).len());
    // The forming frame is still queued: the next update replaces it in place.
    let f2 = Candle { close: 1.75, ..f1 };
    w.hub.publish_forming(w.idx, &f2, &w.series, &mut w.out, &mut w.counters);
    assert_eq!(w.counters.forming_coalesced, 1);
    assert_eq!(utf8(w.write(1, 1)), vec![default_closed(NOW - 60)]);
    assert_eq!(utf8(w.write(1, 0)), Vec::<String>::new(), "a zero budget moves nothing");
    assert_eq!(utf8(w.write(1, Input::WRITE_ALL)), vec![forming_text(&f2)]);
    // Handed out, it is never replaced: the next update is queued anew.
    let f3 = Candle { close: 1.8, ..f1 };
    w.hub.publish_forming(w.idx, &f3, &w.series, &mut w.out, &mut w.counters);
    assert_eq!(w.counters.forming_coalesced, 1);
    assert_eq!(utf8(w.take(1)), vec![forming_text(&f3)]);
    // A budget spans several frames; frames staged and not yet polled stay in order.
    w.hub.publish_closed(w.idx, &[candle(NOW)], &w.series, &mut w.out, &mut w.counters);
    w.hub.publish_closed(w.idx, &[candle(NOW + 60)], &w.series, &mut w.out, &mut w.counters);
    w.hub.publish_closed(w.idx, &[candle(NOW + 120)], &w.series, &mut w.out, &mut w.counters);
    let len = default_closed(NOW).len();
    w.hub.writable(ClientId(1), len + 1, &w.series, &mut w.out);
    w.hub.writable(ClientId(1), len + 1, &w.series, &mut w.out);
    let staged: Vec<Frame> = std::iter::from_fn(|| w.hub.poll_client(ClientId(1))).collect();
    assert_eq!(utf8(staged), vec![default_closed(NOW), default_closed(NOW + 60)], "bounded by the budget plus one frame");
    assert_eq!(utf8(w.take(1)), vec![default_closed(NOW + 120)]);
}

/// The slow-consumer limit applies to what a partial write left queued:
/// writing one frame per two published closes the client as soon as the
/// rest passes the limit, and a budget that keeps up never does.
#[test]
fn the_backlog_limit_counts_what_partial_writes_leave_queued() {
    let len = default_closed(NOW).len();
    let run = |frames_per_write: usize| -> (Vec<String>, u64, usize) {
        let mut w = World::new(false);
        w.hub.set_config(HubConfig { max_backlog_bytes: len * 5 / 2, ..HubConfig::default() });
        w.subscribe(1, None, false, false, &[]);
        w.take(1);
        w.out.clear();
        let mut written = Vec::new();
        let mut closed_at = usize::MAX;
        for round in 0..6 {
            for k in 0..2 {
                let t = NOW + 60 * (2 * round + k) as i64;
                w.hub.publish_closed(w.idx, &[candle(t)], &w.series, &mut w.out, &mut w.counters);
                if closed_at == usize::MAX && w.out.iter().any(|o| matches!(o, Output::ClientClose { .. })) {
                    closed_at = 2 * round + k;
                }
            }
            written.extend(utf8(w.write(1, len * frames_per_write)));
        }
        (written, w.counters.slow_consumer_closes, closed_at)
    };
    let (written, closes, closed_at) = run(1);
    assert_eq!(closes, 1, "one frame per two closes: slow");
    assert_eq!(closed_at, 3, "closed once 3 frames (> 2.5) were left queued");
    assert_eq!(written, vec![default_closed(NOW)], "what was written before, in order; nothing after the close");
    let (written, closes, _) = run(2);
    assert_eq!(closes, 0, "a budget that keeps up is never closed");
    let expected: Vec<String> = (0..12).map(|i| default_closed(NOW + 60 * i)).collect();
    assert_eq!(written, expected, "every close, in order");
}
