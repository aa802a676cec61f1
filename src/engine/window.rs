//! [`ClosedWindow`]: which closed candles exist at a given engine time, for
//! one series. Used by subscribe (clamping `since`), catch-up paging and the
//! HTTP candle reads (hiding "ahead" rows). Pure arithmetic on its inputs:
//! never reads a clock or the store.

use crate::model::{Candle, Timeframe};

/// The "latest closed" window (how far back `since` may reach), computed from engine time and extended
/// by the newest closed candle the exchange confirmed (so a lagging local clock
/// never hides a candle the exchange already closed).
#[derive(Clone, Copy, Debug)]
pub struct ClosedWindow {
    latest: i64,
    tf: i64,
}

impl ClosedWindow {
    pub fn new(now_s: i64, tf: Timeframe, known_closed: Option<i64>) -> Self {
        let by_clock = tf.expected_latest_closed(now_s);
        ClosedWindow { latest: known_closed.map_or(by_clock, |k| k.max(by_clock)), tf: tf.seconds() }
    }

    pub fn latest(&self) -> i64 {
        self.latest
    }

    fn plausible(&self, t: i64) -> bool {
        t <= self.latest.saturating_add(2 * self.tf)
    }

    /// A plausible future cursor is clamped down to the latest closed candle;
    /// an implausibly far one is kept (nothing is sent until candles pass it).
    pub fn clamp(&self, since: i64) -> i64 {
        if self.plausible(since) {
            since.min(self.latest)
        } else {
            since
        }
    }

    /// Hides candles that are not closed yet ("ahead" rows).
    pub fn filter_ahead(&self, mut candles: Vec<Candle>) -> Vec<Candle> {
        if let Some(last) = candles.last() {
            if self.plausible(last.candle_time) {
                candles.retain(|c| c.candle_time <= self.latest);
            }
        }
        candles
    }
}
