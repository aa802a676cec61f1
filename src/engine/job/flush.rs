//! Persist, then publish. A flush writes every series of one job's batch (base
//! and derived) in ONE store transaction — an `Output::Persist` effect — and
//! publishes it only when its `Input::Persisted` says it is stored. The
//! [`WriteQueue`] keeps every flush from the moment it is made until it is
//! published, in order: writes are emitted at once (the shell carries store
//! effects out in order, pipelined), and a flush stored early waits for the
//! ones before it, so clients see closes in order.
//!
//! When the store fails, the unstored flushes stay queued — frozen, in order —
//! and one retry write is sent with exponential backoff; later flushes queue
//! behind it without being sent. The queue is bounded in candles: past the
//! bound, newly closed candles are dropped and counted (the decision: keep
//! what is oldest and already accepted; newer holes are healed from the
//! exchange's REST history once the store is back).

use crate::engine::series::{FlushSet, SeriesIdx};
use crate::engine::store_ops::WriteFor;
use crate::engine::TimerKey;
use super::{Ctx, Jobs};
use crate::engine::{LogLevel};
use crate::store::{KeptRows, PersistOutcome, SeriesBatch, StoreWrite};
use crate::time::{Duration, Timestamp};
use std::collections::VecDeque;

const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// One write carries at most this many candles (more flushes go in the next):
/// the shell's store slice per loop turn stays small.
pub const MAX_WRITE_CANDLES: usize = 5_000;

#[derive(Debug, PartialEq)]
enum State {
    /// Not sent: the store is failing and a retry is due later.
    Waiting,
    InFlight,
    /// Stored; the rows an insert-if-absent batch left alone (by set index).
    Stored(Vec<KeptRows>),
}

struct Entry {
    seq: u64,
    set: FlushSet,
    state: State,
}

pub struct WriteQueue {
    entries: VecDeque<Entry>,
    candles: usize,
    max_candles: usize,
    next_seq: u64,
    failing: bool,
    retry_at: Option<Timestamp>,
    backoff: Duration,
}

fn candles_of(set: &FlushSet) -> usize {
    set.iter().map(|(_, c)| c.len()).sum()
}

impl WriteQueue {
    pub fn new(max_candles: usize) -> Self {
        WriteQueue {
            entries: VecDeque::new(),
            candles: 0,
            max_candles,
            next_seq: 0,
            failing: false,
            retry_at: None,
            backoff: RETRY_INITIAL,
        }
    }

    /// A write was sent and its answer has not come.
    pub fn awaiting_answer(&self) -> bool {
        self.entries.iter().any(|e| e.state == State::InFlight)
    }

    /// Candles accepted and not yet published (sent, stored early, or waiting).
    pub fn candles(&self) -> usize {
        self.candles
    }

    /// Candles the store has refused so far and that wait for a retry.
    pub fn backlog_candles(&self) -> usize {
        self.entries.iter().filter(|e| e.state == State::Waiting).map(|e| candles_of(&e.set)).sum()
    }

    pub fn retry_at(&self) -> Option<Timestamp> {
        self.retry_at
    }

    /// Queues a set; `false` when the bound is reached (dropped).
    fn push(&mut self, set: FlushSet) -> bool {
        let n = candles_of(&set);
        if self.candles + n > self.max_candles {
            return false;
        }
        self.candles += n;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry { seq, set, state: State::Waiting });
        true
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.seq == seq)
    }

    /// The next writes to send: every waiting entry (in chunks of at most
    /// `MAX_WRITE_CANDLES`), or, while the store fails, one retry chunk once
    /// it is due and nothing is in flight.
    fn next_chunk(&mut self, now: Timestamp) -> Option<Vec<u64>> {
        if self.failing {
            let in_flight = self.entries.iter().any(|e| e.state == State::InFlight);
            if in_flight || self.retry_at.is_some_and(|t| t > now) {
                return None;
            }
        }
        let mut seqs = Vec::new();
        let mut n = 0;
        for e in self.entries.iter_mut().filter(|e| e.state == State::Waiting) {
            let c = candles_of(&e.set);
            if !seqs.is_empty() && n + c > MAX_WRITE_CANDLES {
                break;
            }
            n += c;
            e.state = State::InFlight;
            seqs.push(e.seq);
        }
        if seqs.is_empty() {
            return None;
        }
        if self.failing {
            self.retry_at = None;
        }
        Some(seqs)
    }

    /// A write failed: its entries wait for a retry. Returns whether the
    /// store was healthy until now.
    fn failed(&mut self, seqs: &[u64], now: Timestamp) -> bool {
        for &seq in seqs {
            if let Some(e) = self.entry_mut(seq) {
                e.state = State::Waiting;
            }
        }
        let first = !self.failing;
        self.failing = true;
        if self.retry_at.is_none() {
            self.retry_at = Some(now.add(self.backoff));
            self.backoff = Duration((self.backoff.0.saturating_mul(2)).min(RETRY_MAX.0));
        }
        first
    }

    /// A write succeeded. Returns whether the store was failing until now.
    fn stored(&mut self, seqs: &[u64], mut kept: Vec<KeptRows>) -> bool {
        let mut offset = 0;
        for &seq in seqs {
            let Some(e) = self.entry_mut(seq) else { continue };
            let len = e.set.len();
            let mine: Vec<KeptRows> = kept
                .iter_mut()
                .filter(|k| k.batch >= offset && k.batch < offset + len)
                .map(|k| KeptRows { batch: k.batch - offset, times: std::mem::take(&mut k.times) })
                .collect();
            e.state = State::Stored(mine);
            offset += len;
        }
        let recovered = self.failing;
        self.failing = false;
        self.retry_at = None;
        self.backoff = RETRY_INITIAL;
        recovered
    }

    /// The front entries that are stored, in order, ready to publish (rows
    /// the store kept are taken out: they were published when first stored).
    fn pop_stored(&mut self) -> Option<FlushSet> {
        if !matches!(self.entries.front()?.state, State::Stored(_)) {
            return None;
        }
        let e = self.entries.pop_front()?;
        self.candles -= candles_of(&e.set);
        let mut set = e.set;
        if let State::Stored(kept) = e.state {
            for k in kept {
                if let Some((_, candles)) = set.get_mut(k.batch) {
                    candles.retain(|c| !k.times.contains(&c.candle_time));
                }
            }
        }
        set.retain(|(_, c)| !c.is_empty());
        Some(set)
    }

    /// Shutdown: a retry waiting for its backoff goes now.
    fn retry_now(&mut self, now: Timestamp) {
        if self.retry_at.is_some() {
            self.retry_at = Some(now);
        }
    }
}

impl Jobs {
    /// The write of `set`: base series upsert; a derived series writes
    /// insert-if-absent unless every candle is newer than its newest known
    /// close (a derived bucket, once stored, is never written over — the
    /// first closed value stands, whichever path wrote it).
    pub(super) fn to_write(&self, cx: &Ctx<'_>, sets: &[&FlushSet]) -> StoreWrite {
        let mut write = StoreWrite::default();
        for set in sets {
            for (idx, candles) in set.iter() {
                let entry = cx.series.get(*idx);
                let first = candles.iter().map(|c| c.candle_time).min().unwrap_or(i64::MIN);
                let derived = cx.supervisor.normalize(&entry.id) != entry.id;
                if derived && !entry.last_closed.is_some_and(|known| first > known) {
                    write.keep_existing.push(write.batches.len());
                }
                write.batches.push(SeriesBatch { series_id: entry.id.as_str().to_string(), candles: candles.clone() });
            }
        }
        write
    }

    /// Queues a flush set: written now (or after the store recovers), then
    /// published in order.
    pub(in crate::engine) fn persist_and_publish(&mut self, cx: &mut Ctx<'_>, mut set: FlushSet) {
        set.retain(|(_, c)| !c.is_empty());
        if set.is_empty() {
            return;
        }
        set.sort_by(|a, b| cx.series.get(a.0).id.as_str().cmp(cx.series.get(b.0).id.as_str()));
        let n = candles_of(&set);
        if !self.writes.push(set) {
            cx.counters.closed_dropped_backlog_full += n as u64;
            cx.log(LogLevel::Error, format!("store_backlog_full dropped_candles={n}"));
            return;
        }
        self.pump_writes(cx);
    }

    /// Sends the writes the queue allows (see [`WriteQueue::next_chunk`]).
    pub(in crate::engine) fn pump_writes(&mut self, cx: &mut Ctx<'_>) {
        while let Some(seqs) = self.writes.next_chunk(cx.now) {
            let sets: Vec<&FlushSet> =
                self.writes.entries.iter().filter(|e| seqs.contains(&e.seq)).map(|e| &e.set).collect();
            let mut write = self.to_write(cx, &sets);
            self.attach_kline_ext(cx, &mut write);
            cx.write_store(write, WriteFor::Flush(seqs));
            if self.writes.failing {
                break;
            }
        }
    }

    pub(in crate::engine) fn on_flush_persisted(&mut self, cx: &mut Ctx<'_>, seqs: Vec<u64>, result: PersistOutcome) {
        match result {
            PersistOutcome::Stored { kept, .. } => {
                if self.writes.stored(&seqs, kept) {
                    let left = self.writes.backlog_candles();
                    cx.log(LogLevel::Info, format!("store_recovered backlog_candles={left}"));
                }
                while let Some(set) = self.writes.pop_stored() {
                    self.publish_set(cx, &set, true);
                }
                self.pump_writes(cx);
            }
            PersistOutcome::Failed(e) => {
                cx.counters.store_write_errors += 1;
                if self.writes.failed(&seqs, cx.now) {
                    cx.log(LogLevel::Error, format!("store_write_failed error={e:?} action=retry"));
                } else {
                    let left = self.writes.backlog_candles();
                    cx.log(LogLevel::Warn, format!("store_retry_failed error={e:?} backlog_candles={left}"));
                }
            }
        }
    }

    /// Shutdown: a retry waiting for its backoff is sent now.
    pub(in crate::engine) fn retry_writes_now(&mut self, cx: &mut Ctx<'_>) {
        self.writes.retry_now(cx.now);
        self.pump_writes(cx);
    }

    /// Publishes a persisted set. Only exchange-confirmed closes widen the
    /// series' "latest closed" window; a tool's HTTP ingest does not.
    pub(in crate::engine) fn publish_set(&mut self, cx: &mut Ctx<'_>, set: &FlushSet, from_exchange: bool) {
        cx.counters.flushes += 1;
        for (idx, candles) in set {
            cx.counters.candles_persisted += candles.len() as u64;
            if let (true, Some(last)) = (from_exchange, candles.last()) {
                cx.series.note_closed(*idx, last.candle_time);
            }
            let queued_before = cx.frames_queued();
            // The whole kline's fields only for `fields=full` subscribers (#15 §4).
            let ext = if cx.hub.wants_full(*idx) { self.published_ext(cx, *idx, candles) } else { Vec::new() };
            cx.hub.publish_closed_ext(*idx, candles, &ext, cx.series, cx.outputs, cx.counters);
            cx.bus_publish_closed(*idx, candles);
            if from_exchange {
                // Base series are jobs; a derived series' frames count with its base's.
                self.observe_queue_latency(cx, *idx, queued_before);
            }
        }
    }

    /// Flushes a job's closed buffer: dedupe, fold into derived timeframes,
    /// persist in one transaction, then publish (or keep for retry).
    pub(in crate::engine) fn flush_job(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx) {
        let set = self.collect_flush(cx, job_idx);
        if !set.is_empty() {
            self.persist_and_publish(cx, set);
        }
    }

    /// Flushes every job that asked for it during this step, in ONE store
    /// transaction: the closes of many series arriving in one loop turn (they
    /// bunch up right after each minute boundary) cost one commit, not one each.
    pub(in crate::engine) fn flush_pending_jobs(&mut self, cx: &mut Ctx<'_>) {
        let jobs = std::mem::take(&mut self.flush_pending);
        let mut set = Vec::new();
        for job in jobs {
            set.extend(self.collect_flush(cx, job));
        }
        if !set.is_empty() {
            self.persist_and_publish(cx, set);
        }
    }

    /// Asks for the job's buffer to be flushed at the end of this step.
    pub(super) fn request_flush(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx) {
        // The first request of a step arms the one FlushAll timer.
        if self.flush_pending.is_empty() {
            cx.timers.insert(cx.now, TimerKey::FlushAll);
        }
        self.flush_pending.insert(job_idx);
    }

    /// Takes a job's buffer for a flush: dedupe, fold into derived timeframes;
    /// empty while a heal gates it (then a flush timer is armed for the gate).
    pub(super) fn collect_flush(&mut self, cx: &mut Ctx<'_>, job_idx: SeriesIdx) -> FlushSet {
        let now = cx.now;
        let Some(job) = self.jobs.get_mut(&job_idx) else { return Vec::new() };
        if let Some(t) = job.flush_timer.take() {
            cx.timers.cancel(t);
        }
        if let Some(until) = job.gated(now) {
            // A heal is running: live candles wait for it (bounded by the gate).
            if job.buffered() > 0 && !cx.shut_down {
                job.flush_timer = Some(cx.timers.insert(until, TimerKey::Flush(job_idx)));
                return Vec::new();
            }
        } else if let Some(h) = job.heal.as_mut() {
            h.gate_until = None; // the gate timed out: live data flows again
        }
        let base = job.take_flush(now);
        if base.is_empty() {
            return Vec::new();
        }
        let mut set = vec![(job.base, Vec::new())];
        if let Some(fold) = job.fold.as_mut() {
            self.scratch.clear();
            fold.on_base_closed(&base, &mut self.scratch);
            for (target, candle) in self.scratch.drain(..) {
                let idx = job.derived[target];
                if let Some(th) = job.throttles.get_mut(target + 1) {
                    th.closed(candle.candle_time);
                }
                match set.iter_mut().find(|(s, _)| *s == idx) {
                    Some((_, v)) => v.push(candle),
                    None => set.push((idx, vec![candle])),
                }
            }
        }
        set[0].1 = base;
        // Derived candles from a restore may arrive out of order: keep each sorted.
        for (_, v) in set.iter_mut() {
            v.sort_by_key(|c| c.candle_time);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::series::SeriesIdx;
    use crate::model::Candle;

    fn set(t: i64) -> FlushSet {
        vec![(SeriesIdx(0), vec![Candle { candle_time: t, ..Candle::default() }])]
    }

    #[test]
    fn a_flush_stored_early_waits_for_the_one_before_it() {
        let mut q = WriteQueue::new(100);
        assert!(q.push(set(60)) && q.push(set(120)));
        let sent = q.next_chunk(Timestamp(0));
        assert_eq!(sent, Some(vec![0, 1]), "both go in one chunk");
        assert!(!q.stored(&[1], vec![]));
        assert!(q.pop_stored().is_none(), "the first is not stored yet");
        q.stored(&[0], vec![]);
        assert_eq!(q.pop_stored().map(|s| s[0].1[0].candle_time), Some(60));
        assert_eq!(q.pop_stored().map(|s| s[0].1[0].candle_time), Some(120));
        assert_eq!(q.candles(), 0);
    }

    #[test]
    fn a_failing_store_gets_one_retry_at_a_time_with_backoff() {
        let mut q = WriteQueue::new(100);
        q.push(set(60));
        let seqs = q.next_chunk(Timestamp(0)).unwrap_or_default();
        assert!(q.failed(&seqs, Timestamp(0)));
        q.push(set(120));
        assert_eq!(q.next_chunk(Timestamp(0)), None, "nothing is sent before the retry is due");
        let due = q.retry_at().unwrap_or(Timestamp(u64::MAX));
        assert_eq!(due, Timestamp(0).add(RETRY_INITIAL));
        assert_eq!(q.next_chunk(due), Some(vec![0, 1]));
        assert!(!q.failed(&[0, 1], due), "still failing");
        assert_eq!(q.retry_at(), Some(due.add(Duration(RETRY_INITIAL.0 * 2))), "backoff doubled");
        assert_eq!(q.backlog_candles(), 2);
    }

    #[test]
    fn the_bound_drops_new_sets_and_keeps_old_ones() {
        let mut q = WriteQueue::new(1);
        assert!(q.push(set(60)));
        assert!(!q.push(set(120)), "over the bound: dropped");
        assert_eq!(q.candles(), 1);
    }

    #[test]
    fn kept_rows_are_not_published_again() {
        let mut q = WriteQueue::new(100);
        let two = vec![Candle { candle_time: 0, ..Candle::default() }, Candle { candle_time: 60, ..Candle::default() }];
        q.push(vec![(SeriesIdx(0), two)]);
        let seqs = q.next_chunk(Timestamp(0)).unwrap_or_default();
        q.stored(&seqs, vec![KeptRows { batch: 0, times: vec![0] }]);
        let published = q.pop_stored().unwrap_or_default();
        assert_eq!(published[0].1.iter().map(|c| c.candle_time).collect::<Vec<_>>(), vec![60]);
    }
}
