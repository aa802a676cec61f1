//! One ingest job per base series: the forming throttle (with a trailing edge,
//! so the latest forming value is always delivered when the interval ends), the
//! closed-candle buffer with its flush triggers, and the dedupe/monotonic filter.
//! The job decides; `Jobs` carries out (store writes, publishing, timers).
//! Never reads a clock: `now` comes in with every call.

use crate::engine::derived::DerivedFold;
use crate::engine::series::SeriesIdx;
use crate::model::{Candle, Market, SeriesId};
use crate::time::{Duration, Timestamp};
use crate::timer::TimerId;

/// Throttle state of one published series (the base or one derived target).
#[derive(Debug, Default)]
pub struct Throttle {
    last_emit_at: Option<Timestamp>,
    last_candle_time: Option<i64>,
    /// A newer value than the last emitted one is waiting for the trailing edge.
    pending: bool,
    pub timer: Option<TimerId>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ThrottleDecision {
    /// Publish the current value now.
    Emit,
    /// Hold it; publish at this time unless a newer decision comes first.
    Defer(Timestamp),
    /// A trailing-edge timer is already armed; the new value replaces the old.
    Coalesced,
}

impl Throttle {
    /// Offers a new forming value for candle `t` at `now`.
    pub fn offer(&mut self, t: i64, now: Timestamp, min: Duration) -> ThrottleDecision {
        let new_candle = self.last_candle_time != Some(t);
        let due = match self.last_emit_at {
            None => true,
            Some(at) => now.since(at) >= min,
        };
        if new_candle || due || min == Duration::ZERO {
            self.last_emit_at = Some(now);
            self.last_candle_time = Some(t);
            self.pending = false;
            return ThrottleDecision::Emit;
        }
        let was_pending = self.pending;
        self.pending = true;
        match (was_pending, self.last_emit_at) {
            (true, _) if self.timer.is_some() => ThrottleDecision::Coalesced,
            (_, Some(at)) => ThrottleDecision::Defer(at.add(min)),
            (_, None) => ThrottleDecision::Emit,
        }
    }

    /// The trailing-edge timer fired: whether a pending value must be published.
    pub fn fire(&mut self, now: Timestamp) -> bool {
        self.timer = None;
        if !self.pending {
            return false;
        }
        self.pending = false;
        self.last_emit_at = Some(now);
        true
    }

    /// The candle closed: a pending forming value for it is obsolete.
    pub fn closed(&mut self, t: i64) {
        if self.last_candle_time.is_some_and(|x| x <= t) {
            self.pending = false;
        }
    }
}

/// A heal in progress (see `heal.rs`): candles opening in `[from, to]`.
#[derive(Debug)]
pub struct HealTask {
    pub from: i64,
    pub to: i64,
    /// First open time not fetched yet.
    pub next_from: i64,
    /// The REST request in flight.
    pub request: Option<crate::engine::RestId>,
    pub attempts: u32,
    pub retry_at: Option<Timestamp>,
    /// Live closed candles wait for this heal until then (`None`: no gate).
    pub gate_until: Option<Timestamp>,
    pub reason: &'static str,
    /// Closed candles fetched so far.
    pub rows: Vec<Candle>,
    /// Their whole-kline fields, where the exchange sent them (`kline_ext`).
    pub ext: Vec<(i64, crate::kline_ext::KlineExt)>,
}

/// What a job's healing did last, for health and debug views.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HealState {
    /// `idle`, `running`, `succeeded` or `failed`.
    pub state: &'static str,
    pub reason: &'static str,
    pub started_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub wanted: i64,
    pub healed: i64,
    pub error: Option<String>,
}

impl HealState {
    pub fn begin(&mut self, now: Timestamp, reason: &'static str, wanted: i64) {
        *self = HealState {
            state: "running",
            reason,
            started_at: Some(now),
            updated_at: Some(now),
            wanted,
            healed: 0,
            error: None,
        };
    }

    pub fn progress(&mut self, now: Timestamp, healed: i64) {
        self.updated_at = Some(now);
        self.healed = healed;
    }

    pub fn succeed(&mut self, now: Timestamp, healed: i64) {
        self.state = "succeeded";
        self.progress(now, healed);
    }

    pub fn fail(&mut self, now: Timestamp, error: String) {
        self.state = "failed";
        self.updated_at = Some(now);
        self.error = Some(error);
    }
}

/// An ingest job for one base series.
pub struct Job {
    pub base: SeriesIdx,
    pub base_id: SeriesId,
    pub market: Market,
    /// Binance stream name, e.g. `btcusdt@kline_1m`.
    pub stream: String,
    pub fold: Option<DerivedFold>,
    /// Series index of each derived target, in the fold's target order.
    pub derived: Vec<SeriesIdx>,
    /// Newest closed candle persisted (or being persisted) for the base series.
    pub last_emitted: i64,
    buffer: Vec<Candle>,
    last_flush_at: Timestamp,
    pub flush_timer: Option<TimerId>,
    /// Latest forming base candle, the source of every trailing-edge publish.
    pub latest_forming: Option<Candle>,
    /// `throttles[0]` is the base series, `throttles[1 + i]` derived target `i`.
    pub throttles: Vec<Throttle>,
    pub frames_seen: u64,
    pub heal: Option<HealTask>,
    pub heal_state: HealState,
    /// Late-close watchdog timer.
    pub watchdog: Option<TimerId>,
    /// The last kline frame (or the acknowledgement) of the live stream;
    /// `None` while the stream is not live. See `engine/job/stall.rs`.
    pub last_frame_at: Option<Timestamp>,
    /// The clock-armed late-close check (`heal.rs`) and the newest open time
    /// it has checked (candles up to it closed or were fetched).
    pub close_timer: Option<TimerId>,
    pub close_checked: i64,
    /// The stream was lost; heal when it is live again.
    pub lost: bool,
    /// A range a heal could not fill: retried later, ungated, with backoff.
    pub hole: Option<Hole>,
    /// Exchange event time (ms) of the newest kline frame not yet reflected
    /// in a frame queued for clients (taken by the first publish that is).
    pub pending_event_ms: Option<i64>,
}

/// Candles opening in `[from, to]` that healing has not filled yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Hole {
    pub from: i64,
    pub to: i64,
    pub attempts: u32,
    pub retry_at: Timestamp,
    pub error: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClosedDecision {
    /// The candle is at or before what was already persisted: dropped.
    Stale,
    /// Buffered; flush now (batch full or the last flush is old enough).
    FlushNow,
    /// Buffered; flush at this deadline.
    FlushAt(Timestamp),
}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: SeriesIdx,
        base_id: SeriesId,
        market: Market,
        stream: String,
        fold: Option<DerivedFold>,
        derived: Vec<SeriesIdx>,
        head: Option<i64>,
        now: Timestamp,
    ) -> Job {
        let throttles = (0..=derived.len()).map(|_| Throttle::default()).collect();
        Job {
            base,
            base_id,
            market,
            stream,
            fold,
            derived,
            last_emitted: head.unwrap_or(0),
            buffer: Vec::new(),
            last_flush_at: now,
            flush_timer: None,
            latest_forming: None,
            throttles,
            frames_seen: 0,
            heal: None,
            heal_state: HealState { state: "idle", ..HealState::default() },
            watchdog: None,
            last_frame_at: None,
            close_timer: None,
            close_checked: i64::MIN,
            lost: false,
            hole: None,
            pending_event_ms: None,
        }
    }

    /// The newest closed candle accepted (persisted or buffered); `i64::MIN`
    /// while the series has no history at all.
    pub fn newest_closed(&self) -> i64 {
        let head = if self.last_emitted == 0 { i64::MIN } else { self.last_emitted };
        self.buffer.iter().map(|c| c.candle_time).max().unwrap_or(i64::MIN).max(head)
    }

    /// Whether live closed candles must wait for a running heal at `now`.
    pub fn gated(&self, now: Timestamp) -> Option<Timestamp> {
        self.heal.as_ref().and_then(|h| h.gate_until).filter(|t| now < *t)
    }

    /// Healed rows: those after the published head join the buffer (flushed in
    /// order with the live ones); older ones are returned for a direct write.
    pub fn absorb_healed(&mut self, rows: Vec<Candle>) -> (usize, Vec<Candle>) {
        let (ahead, behind): (Vec<Candle>, Vec<Candle>) =
            rows.into_iter().partition(|c| c.candle_time > self.last_emitted);
        let n = ahead.len();
        // Live frames win over REST rows for the same candle: they go last.
        let live = std::mem::take(&mut self.buffer);
        self.buffer = ahead;
        self.buffer.extend(live);
        (n, behind)
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Accepts a closed (`x:true`) candle into the buffer.
    pub fn accept_closed(
        &mut self,
        candle: Candle,
        now: Timestamp,
        batch_max: usize,
        flush_every: Duration,
    ) -> ClosedDecision {
        if candle.candle_time <= self.last_emitted {
            return ClosedDecision::Stale;
        }
        for th in &mut self.throttles {
            th.closed(candle.candle_time);
        }
        if self.latest_forming.is_some_and(|f| f.candle_time <= candle.candle_time) {
            self.latest_forming = None;
        }
        self.buffer.push(candle);
        if self.buffer.len() >= batch_max || now.since(self.last_flush_at) >= flush_every {
            ClosedDecision::FlushNow
        } else {
            ClosedDecision::FlushAt(self.last_flush_at.add(flush_every))
        }
    }

    /// Takes the buffer for a flush: sorted, last duplicate wins, nothing at or
    /// before `last_emitted`. Advances `last_emitted`: the caller owns
    /// the returned candles until they are persisted (it retries on failure).
    pub fn take_flush(&mut self, now: Timestamp) -> Vec<Candle> {
        self.last_flush_at = now;
        let deduped = dedupe_closed(std::mem::take(&mut self.buffer), self.last_emitted);
        if let Some(last) = deduped.last() {
            self.last_emitted = self.last_emitted.max(last.candle_time);
        }
        deduped
    }
}

/// Sorts by time (stable), keeps the last received of equal times, drops
/// anything at or before `after`.
pub fn dedupe_closed(mut candles: Vec<Candle>, after: i64) -> Vec<Candle> {
    candles.sort_by_key(|c| c.candle_time);
    let mut out: Vec<Candle> = Vec::with_capacity(candles.len());
    for c in candles {
        if c.candle_time <= after {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.candle_time == c.candle_time => *last = c,
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: i64, close: f64) -> Candle {
        Candle { candle_time: t, open: 1.0, high: 10.0, low: 0.5, close, volume: 1.0 }
    }

    #[test]
    fn dedupe_keeps_last_duplicate_and_drops_old() {
        let out = dedupe_closed(vec![c(160, 1.0), c(100, 1.0), c(100, 2.0), c(40, 9.0)], 60);
        assert_eq!(out.iter().map(|x| (x.candle_time, x.close)).collect::<Vec<_>>(), vec![
            (100, 2.0),
            (160, 1.0)
        ]);
    }

    #[test]
    fn throttle_new_candle_is_immediate_same_candle_is_rate_limited_with_trailing_edge() {
        let min = Duration::from_millis(250);
        let mut th = Throttle::default();
        let t0 = Timestamp::from_millis(1_000);
        assert_eq!(th.offer(60, t0, min), ThrottleDecision::Emit);
        let d = th.offer(60, Timestamp::from_millis(1_100), min);
        assert_eq!(d, ThrottleDecision::Defer(Timestamp::from_millis(1_250)));
        let mut wheel = crate::timer::TimerWheel::new(t0);
        th.timer = Some(wheel.insert(Timestamp::from_millis(1_250), ()));
        assert_eq!(th.offer(60, Timestamp::from_millis(1_200), min), ThrottleDecision::Coalesced);
        // Trailing edge: the newest value goes out when the interval ends.
        assert!(th.fire(Timestamp::from_millis(1_250)));
        assert!(!th.fire(Timestamp::from_millis(1_500)));
        // A new candle is never held back.
        assert_eq!(th.offer(120, Timestamp::from_millis(1_260), min), ThrottleDecision::Emit);
    }

    #[test]
    fn closing_a_candle_cancels_its_pending_forming() {
        let min = Duration::from_millis(250);
        let mut th = Throttle::default();
        th.offer(60, Timestamp::from_millis(0), min);
        th.offer(60, Timestamp::from_millis(10), min);
        th.closed(60);
        assert!(!th.fire(Timestamp::from_millis(250)));
    }

    #[test]
    fn closed_buffer_flush_triggers() {
        let id = SeriesId::parse("binance:spot:BTC/USDT:1m").unwrap();
        let t0 = Timestamp::from_secs(1_000);
        let mut job = Job::new(SeriesIdx(0), id, Market::Spot, "btcusdt@kline_1m".into(), None, vec![], Some(60), t0);
        let every = Duration::from_millis(500);
        assert_eq!(job.accept_closed(c(60, 1.0), t0, 200, every), ClosedDecision::Stale);
        assert_eq!(
            job.accept_closed(c(120, 1.0), t0, 200, every),
            ClosedDecision::FlushAt(t0.add(every))
        );
        assert_eq!(job.accept_closed(c(180, 1.0), t0, 2, every), ClosedDecision::FlushNow);
        let flushed = job.take_flush(t0);
        assert_eq!(flushed.len(), 2);
        assert_eq!(job.last_emitted, 180);
        let later = t0.add(Duration::from_secs(1));
        assert_eq!(job.accept_closed(c(240, 1.0), later, 200, every), ClosedDecision::FlushNow);
    }
}
