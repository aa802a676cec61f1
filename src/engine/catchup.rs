//! One subscription's catch-up from the store, a page at a time: which read
//! comes next, and what an answer means — the frames it gives, the cursor it
//! leaves, whether the catch-up is over. The hub asks for a page only when the
//! client's queue has drained below its low-water mark (one read in flight per
//! client), so a catch-up is never held in memory whole, whatever the history.
//!
//! Ordering (catch-up before live, no duplicates, no spurious `gap`):
//! - live closed candles of a subscription in catch-up are not queued: they
//!   were persisted before being published, so a later page reads them from
//!   the store. A page that reaches the end of the history is read again when
//!   live candles were skipped while it was in flight (it may predate them);
//! - when the catch-up limit is spent and live candles were skipped, the
//!   catch-up jumps to them, with a `gap` from the cursor as live delivery
//!   would have sent (the old one-step catch-up did exactly that);
//! - forming updates are held back (the newest only) and sent after it.
//!
//! A full-shape subscription (`"fields":"full"`, #15 §4) reads its pages with
//! their extra fields ([`StoreQuery::AfterFull`]) and writes its frames in
//! that shape; the reads, cursor and ordering are the same.
//!
//! Pure: it never reads the store (the hub emits each read as an effect), a
//! clock or anything else.

use super::window::ClosedWindow;
use super::Frame;
use super::{Counters, StoreOp};
use crate::kline_ext::KlineExt;
use crate::model::Candle;
use crate::store::{StoreQuery, StoreReadResult};
use crate::wire::client as wire;

/// The next read of a catch-up.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Next {
    /// Where the tail of `remaining` candles starts (a subscribe without `since`).
    TailStart,
    /// Candles after this time.
    After(i64),
}

#[derive(Debug)]
pub(super) struct CatchUp {
    next: Next,
    /// Candles this pass may still send (the catch-up limit).
    remaining: usize,
    /// The limit of the read in flight.
    asked: usize,
    /// The next page's first candle is checked against the cursor for a `gap`.
    gap_check: bool,
    /// The read in flight, if any; an answer to any other is stale.
    pub pending: Option<StoreOp>,
    /// The earliest live closed candle skipped during the catch-up.
    live_from: Option<i64>,
    /// A live closed candle was skipped since the read in flight was asked for.
    live_since_read: bool,
    /// The newest forming update skipped: its open time and frame.
    pub forming: Option<(i64, Frame)>,
    /// Candles sent so far, and whether a `gap` was (for the log line).
    pub sent: usize,
    pub gap_emitted: bool,
    /// Pages are read and written in the full shape.
    full: bool,
}

/// What the series looks like when a page is answered.
pub(super) struct PageCtx<'a> {
    pub name: &'a str,
    pub tf: i64,
    pub supports_batch: bool,
    pub window: ClosedWindow,
}

/// After an answer: more pages to read, or the catch-up is over.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    More,
    Done,
}

impl CatchUp {
    /// From `effective` (the clamped `since`; none: the tail), at most `limit` candles.
    pub fn new(effective: Option<i64>, limit: usize, full: bool) -> CatchUp {
        CatchUp {
            next: effective.map_or(Next::TailStart, Next::After),
            remaining: limit,
            asked: 0,
            gap_check: effective.is_some(),
            pending: None,
            live_from: None,
            live_since_read: false,
            forming: None,
            sent: 0,
            gap_emitted: false,
            full,
        }
    }

    /// The next read, now in flight as `op`.
    pub fn query(&mut self, op: StoreOp, series_id: &str, page: usize) -> StoreQuery {
        self.pending = Some(op);
        self.live_since_read = false;
        let series_id = series_id.to_string();
        match self.next {
            Next::TailStart => StoreQuery::TailStart { series_id, count: self.remaining },
            Next::After(after) => {
                self.asked = page.min(self.remaining);
                let limit = self.asked;
                if self.full {
                    StoreQuery::AfterFull { series_id, after, limit }
                } else {
                    StoreQuery::After { series_id, after, limit }
                }
            }
        }
    }

    /// Live closed candles from `first` on were published and not queued.
    pub fn skipped_live(&mut self, first: i64) {
        self.live_from = Some(self.live_from.map_or(first, |t| t.min(first)));
        self.live_since_read = true;
    }

    /// Applies the answer to the read in flight: pushes the frames to queue and
    /// moves `cursor` past the candles they carry.
    pub fn answer(
        &mut self,
        result: StoreReadResult,
        ctx: &PageCtx<'_>,
        cursor: &mut Option<i64>,
        frames: &mut Vec<Frame>,
        counters: &mut Counters,
    ) -> Step {
        self.pending = None;
        let (read, ext): (Vec<Candle>, Vec<Option<KlineExt>>) = match (result, self.next) {
            (StoreReadResult::Failed(e), _) => {
                counters.store_read_errors += 1;
                let message = format!("history unavailable ({e}); live data continues");
                frames.push(wire::error_frame("unavailable", &message, Some(ctx.name)).into());
                return Step::Done;
            }
            (StoreReadResult::TailStart(None), Next::TailStart) => return self.caught_up(*cursor),
            (StoreReadResult::TailStart(Some(t)), Next::TailStart) => {
                self.next = Next::After(t.saturating_sub(1));
                return Step::More;
            }
            (StoreReadResult::Candles(read), Next::After(_)) => (read, Vec::new()),
            (StoreReadResult::FullCandles(rows), Next::After(_)) => rows.into_iter().map(|r| (r.candle, r.ext())).unzip(),
            // An answer of the wrong kind is treated as an empty page.
            _ => (Vec::new(), Vec::new()),
        };
        let read_len = read.len();
        // The window drops a tail (candles are ascending): `ext` stays aligned.
        let candles = ctx.window.filter_ahead(read);
        let full = read_len == self.asked && candles.len() == read_len && read_len > 0;
        if let (true, Some(first), Some(c)) = (self.gap_check, candles.first(), *cursor) {
            if c > 0 && first.candle_time > c + ctx.tf {
                let mut buf = Vec::with_capacity(96);
                wire::write_gap_frame(&mut buf, ctx.name, c + ctx.tf, first.candle_time);
                frames.push(buf.into());
                self.gap_emitted = true;
                counters.gaps_sent += 1;
            }
        }
        if !candles.is_empty() {
            self.gap_check = false;
            if ctx.supports_batch {
                let mut buf = Vec::with_capacity(64 + candles.len() * 120);
                if self.full {
                    wire::write_full_batch_frame(&mut buf, ctx.name, &candles, &ext);
                } else {
                    wire::write_batch_frame(&mut buf, ctx.name, &candles);
                }
                frames.push(buf.into());
            } else {
                for (i, c) in candles.iter().enumerate() {
                    let mut buf = Vec::with_capacity(160);
                    if self.full {
                        wire::write_full_candle_frame(&mut buf, false, ctx.name, c, ext.get(i).copied().flatten());
                    } else {
                        wire::write_candle_frame(&mut buf, false, ctx.name, c);
                    }
                    frames.push(buf.into());
                }
            }
        }
        if let Some(last) = candles.last() {
            *cursor = Some(last.candle_time);
        }
        self.remaining = self.remaining.saturating_sub(candles.len());
        self.sent += candles.len();
        counters.catchup_candles += candles.len() as u64;
        if self.remaining == 0 {
            return self.limit_spent(*cursor);
        }
        if full {
            self.next = Next::After(cursor.unwrap_or(i64::MIN));
            return Step::More;
        }
        self.caught_up(*cursor)
    }

    /// The history is read to its end: over, unless live candles were skipped
    /// while the last read was in flight (read again from the cursor).
    fn caught_up(&mut self, cursor: Option<i64>) -> Step {
        if self.live_since_read {
            self.next = Next::After(cursor.unwrap_or(i64::MIN));
            return Step::More;
        }
        Step::Done
    }

    /// The catch-up limit is spent: over, unless live candles were skipped
    /// meanwhile; then they are read from the store, after a `gap` notice.
    fn limit_spent(&mut self, cursor: Option<i64>) -> Step {
        let Some(from) = self.live_from.take() else { return Step::Done };
        let after = from.saturating_sub(1);
        self.next = Next::After(cursor.map_or(after, |c| c.max(after)));
        self.remaining = usize::MAX;
        self.gap_check = true;
        Step::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::Settings;
    use crate::engine::{ClientId, Engine, Input, Output};
    use crate::model::{Candle, Timeframe};
    use crate::time::Timestamp;

    fn candles(times: &[i64]) -> StoreReadResult {
        StoreReadResult::Candles(
            times.iter().map(|t| Candle { candle_time: *t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 }).collect(),
        )
    }

    fn ctx() -> PageCtx<'static> {
        PageCtx { name: "binance:spot:BTC/USDT:1m", tf: 60, supports_batch: false, window: ClosedWindow::new(1_000_000, Timeframe::M1, None) }
    }

    fn after(q: &StoreQuery) -> Option<(i64, usize)> {
        match q {
            StoreQuery::After { after, limit, .. } => Some((*after, *limit)),
            _ => None,
        }
    }

    /// The race the effect opens: a live candle is published (and skipped)
    /// while a page is in flight; the short page predates it, so it is read again.
    #[test]
    fn a_page_in_flight_when_a_live_candle_was_skipped_is_read_again() {
        let (mut cursor, mut frames, mut counters) = (Some(0), Vec::new(), Counters::default());
        let mut c = CatchUp::new(Some(0), 5000, false);
        assert_eq!(after(&c.query(StoreOp(0), "s", 500)), Some((0, 500)));
        c.skipped_live(180);
        assert_eq!(c.answer(candles(&[60, 120]), &ctx(), &mut cursor, &mut frames, &mut counters), Step::More);
        assert_eq!((cursor, frames.len()), (Some(120), 2));
        assert_eq!(after(&c.query(StoreOp(1), "s", 500)), Some((120, 500)), "read again from the cursor");
        assert_eq!(c.answer(candles(&[180]), &ctx(), &mut cursor, &mut frames, &mut counters), Step::Done);
        assert_eq!((cursor, frames.len(), c.sent), (Some(180), 3, 3));
    }

    #[test]
    fn pages_continue_while_full_and_the_tail_starts_where_the_store_says() {
        let (mut cursor, mut frames, mut counters) = (None, Vec::new(), Counters::default());
        let mut c = CatchUp::new(None, 5, false);
        assert!(matches!(c.query(StoreOp(0), "s", 2), StoreQuery::TailStart { count: 5, .. }));
        assert_eq!(c.answer(StoreReadResult::TailStart(Some(600)), &ctx(), &mut cursor, &mut frames, &mut counters), Step::More);
        assert_eq!(after(&c.query(StoreOp(1), "s", 2)), Some((599, 2)));
        assert_eq!(c.answer(candles(&[600, 660]), &ctx(), &mut cursor, &mut frames, &mut counters), Step::More);
        assert_eq!(after(&c.query(StoreOp(2), "s", 2)), Some((660, 2)));
        assert_eq!(c.answer(candles(&[720, 780]), &ctx(), &mut cursor, &mut frames, &mut counters), Step::More);
        assert_eq!(after(&c.query(StoreOp(3), "s", 2)), Some((780, 1)), "the limit caps the last page");
        assert_eq!(c.answer(candles(&[840]), &ctx(), &mut cursor, &mut frames, &mut counters), Step::Done);
        assert_eq!((cursor, frames.len(), counters.catchup_candles), (Some(840), 5, 5));
    }

    #[test]
    fn a_failed_read_ends_the_catchup_with_an_unavailable_error() {
        let (mut cursor, mut frames, mut counters) = (Some(0), Vec::new(), Counters::default());
        let mut c = CatchUp::new(Some(0), 5000, false);
        c.query(StoreOp(0), "s", 500);
        let failed = StoreReadResult::Failed("store read_after failed: disk I/O error".into());
        assert_eq!(c.answer(failed, &ctx(), &mut cursor, &mut frames, &mut counters), Step::Done);
        let text = String::from_utf8(frames[0].to_vec()).unwrap();
        assert!(text.contains("\"unavailable\"") && text.contains("disk I/O error"), "{text}");
        assert_eq!(counters.store_read_errors, 1);
    }

    /// An answer to a read made for an earlier subscription (the client
    /// re-subscribed meanwhile) is dropped; the new catch-up reads for itself.
    #[test]
    fn a_stale_answer_after_a_resubscribe_is_dropped() {
        let settings = Settings { pins: vec![], heal: false, ..Settings::default() };
        let now = Timestamp::from_secs(10_000);
        let mut e = Engine::new(settings.to_engine_config().unwrap(), now);
        let sub = |since: i64| Input::ClientText {
            client: ClientId(1),
            text: format!(r#"{{"type":"subscribe","series_id":"binance:spot:BTC/USDT:1m","since":{since}}}"#),
        };
        let reads = |e: &mut Engine| -> Vec<(StoreOp, StoreQuery)> {
            std::iter::from_fn(|| e.poll_output())
                .filter_map(|o| match o {
                    // Catch-up pages only: the job's start reads its own history too.
                    Output::ReadStore { op, query: query @ (StoreQuery::After { .. } | StoreQuery::TailStart { .. }) } => Some((op, query)),
                    _ => None,
                })
                .collect()
        };
        e.handle(Input::ClientConnected { client: ClientId(1) }, now);
        e.handle(sub(60), now);
        let first = reads(&mut e);
        assert_eq!(first.len(), 1);
        e.handle(sub(600), now);
        assert_eq!(reads(&mut e), vec![], "one read in flight per client");
        e.handle(Input::StoreRead { op: first[0].0, result: candles(&[120, 180]) }, now);
        let next = reads(&mut e);
        assert_eq!(next.len(), 1);
        assert_eq!(after(&next[0].1), Some((600, 500)), "the new subscription's own read");
        e.handle(Input::ClientWritable { client: ClientId(1), budget: Input::WRITE_ALL }, now);
        assert_eq!(e.poll_client(ClientId(1)), None, "nothing from the stale page");
    }
}
