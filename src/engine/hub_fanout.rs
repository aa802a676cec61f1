//! The hub's live fan-out: forming and closed candles to every subscriber of
//! a series, each frame serialized once per shape (default, and `fields=full`
//! only when some subscriber asked for it) and shared; per-subscriber cursor
//! filtering, gap notices, forming coalescing and the deferred forming
//! fan-out (see the module comment of [`super`]). Never reads a clock or the
//! store; a subscriber over its backlog is closed as a slow consumer.

use super::*;

/// The rest of a forming fan-out: subscribers of `idx` from position `next`
/// of the hub's subscriber list for the series on.
#[derive(Debug)]
pub(super) struct DeferredForming {
    pub(super) idx: SeriesIdx,
    frames: FormingFrames,
    pub(super) next: usize,
}

/// One forming publish's shared frames, each serialized on its first use.
#[derive(Debug)]
struct FormingFrames {
    candle: Candle,
    ext: Option<KlineExt>,
    plain: Option<Frame>,
    full: Option<Frame>,
}

impl FormingFrames {
    fn new(candle: Candle, ext: Option<KlineExt>) -> Self {
        FormingFrames { candle, ext, plain: None, full: None }
    }

    #[inline]
    fn get(&mut self, full: bool, name: &str, scratch: &mut Vec<u8>) -> Frame {
        let (candle, ext) = (&self.candle, self.ext);
        let slot = if full { &mut self.full } else { &mut self.plain };
        slot.get_or_insert_with(|| {
            scratch.clear();
            if full {
                wire::write_full_candle_frame(scratch, true, name, candle, ext);
            } else {
                wire::write_candle_frame(scratch, true, name, candle);
            }
            Frame::copy_from_slice(scratch)
        })
        .clone()
    }
}

/// What queueing a forming frame for one subscriber did.
#[derive(PartialEq)]
enum FormingStep {
    /// Nothing queued (not subscribed, held, behind its cursor, or catching up).
    Skipped,
    /// Queued or coalesced; `ready` when it emitted `ClientReady`.
    Queued { ready: bool },
    /// Queued past the backlog limit: the client must be closed.
    Slow,
}

impl Hub {
    /// Fans a forming candle out to every subscriber whose cursor is behind it
    /// (with deferral on: up to the first that becomes ready; the rest as
    /// outputs are polled). Full-shape subscribers get its fields unknown.
    pub fn publish_forming(
        &mut self,
        idx: SeriesIdx,
        candle: &Candle,
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        self.publish_forming_ext(idx, candle, None, series, out, counters)
    }

    /// [`Hub::publish_forming`] with the candle's extra fields so far, for
    /// full-shape subscribers.
    pub fn publish_forming_ext(
        &mut self,
        idx: SeriesIdx,
        candle: &Candle,
        ext: Option<KlineExt>,
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        self.settle(series, out, counters);
        let entry = series.get(idx);
        let mut frames = FormingFrames::new(*candle, ext);
        let mut slow = Vec::new();
        // Out of the index while the loop mutates sessions (nothing below
        // changes who is subscribed); put back after.
        let subscribers = self.take_subscribers(idx);
        for (pos, &slot) in subscribers.iter().enumerate() {
            let shape = self.slots[slot].as_ref().and_then(|s| s.subs.get(&idx)).and_then(|sub| {
                (sub.held.is_none() && !sub.cursor.is_some_and(|c| candle.candle_time <= c)).then_some(sub.full)
            });
            let Some(full) = shape else { continue };
            let bytes = frames.get(full, entry.id.as_str(), &mut self.scratch);
            match self.forming_to(slot, idx, candle.candle_time, bytes, out, counters) {
                FormingStep::Slow => slow.push(slot),
                FormingStep::Queued { ready: true } if self.cfg.defer_forming_fanout => {
                    self.deferred = Some(DeferredForming { idx, frames, next: pos + 1 });
                    break;
                }
                _ => {}
            }
        }
        self.put_subscribers(idx, subscribers);
        for slot in slow {
            self.close_slow(slot, out, counters);
        }
    }

    /// Queues (or coalesces) a forming frame for one subscriber.
    fn forming_to(
        &mut self,
        slot: usize,
        idx: SeriesIdx,
        candle_time: i64,
        bytes: Frame,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) -> FormingStep {
        let max = self.cfg.max_backlog_bytes;
        let Some(session) = self.slots[slot].as_mut() else { return FormingStep::Skipped };
        let Some(sub) = session.subs.get_mut(&idx) else { return FormingStep::Skipped };
        if sub.held.is_some() || sub.cursor.is_some_and(|c| candle_time <= c) {
            return FormingStep::Skipped;
        }
        if let Some(catchup) = sub.catchup.as_mut() {
            // Sent when the catch-up ends (the newest only), if still ahead.
            catchup.forming = Some((candle_time, bytes));
            return FormingStep::Skipped;
        }
        counters.frames_forming += 1;
        if let Some(seq) = sub.forming_seq {
            if session.replace(seq, bytes.clone()) {
                counters.forming_coalesced += 1;
                if session.live_bytes() > max {
                    return FormingStep::Slow;
                }
                return FormingStep::Queued { ready: false };
            }
        }
        let was_ready = session.ready_signalled;
        match self.enqueue(slot, bytes, false, out) {
            Some(seq) => {
                if let Some(sub) = self.sub_mut(slot, idx) {
                    sub.forming_seq = Some(seq);
                }
                FormingStep::Queued { ready: !was_ready }
            }
            None => FormingStep::Slow,
        }
    }

    /// Continues a pending forming fan-out until one more client becomes ready
    /// (or it ends). Returns whether some of it is still pending.
    pub fn step_deferred(&mut self, series: &SeriesTable, out: &mut VecDeque<Output>, counters: &mut Counters) -> bool {
        let Some(mut d) = self.deferred.take() else { return false };
        let entry = series.get(d.idx);
        let subscribers = self.take_subscribers(d.idx);
        while let Some(&slot) = subscribers.get(d.next) {
            d.next += 1;
            let full = self.sub_mut(slot, d.idx).is_some_and(|sub| sub.full);
            let bytes = d.frames.get(full, entry.id.as_str(), &mut self.scratch);
            match self.forming_to(slot, d.idx, d.frames.candle.candle_time, bytes, out, counters) {
                FormingStep::Slow => {
                    self.close_slow(slot, out, counters);
                    break;
                }
                FormingStep::Queued { ready: true } => break,
                _ => {}
            }
        }
        let pending = d.next < subscribers.len();
        self.put_subscribers(d.idx, subscribers);
        if pending {
            self.deferred = Some(d);
        }
        pending
    }

    /// `idx`'s subscriber list, taken out of the index for a fan-out that
    /// mutates sessions meanwhile; [`Hub::put_subscribers`] puts it back.
    fn take_subscribers(&mut self, idx: SeriesIdx) -> Vec<usize> {
        self.index.get_mut(idx.0 as usize).map(std::mem::take).unwrap_or_default()
    }

    fn put_subscribers(&mut self, idx: SeriesIdx, subscribers: Vec<usize>) {
        if let Some(slot) = self.index.get_mut(idx.0 as usize) {
            *slot = subscribers;
        }
    }

    /// Finishes a pending forming fan-out.
    pub fn settle(&mut self, series: &SeriesTable, out: &mut VecDeque<Output>, counters: &mut Counters) {
        while self.step_deferred(series, out, counters) {}
    }


    /// Fans closed candles (ascending, unique times) out to every subscriber,
    /// with per-subscriber cursor filtering and gap notices (`gap` in
    /// `docs/ws-market.asyncapi.json`).
    pub fn publish_closed(
        &mut self,
        idx: SeriesIdx,
        candles: &[Candle],
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        self.publish_closed_ext(idx, candles, &[], series, out, counters)
    }

    /// [`Hub::publish_closed`] with the candles' extra fields for full-shape
    /// subscribers: `ext[i]` is `candles[i]`'s (missing entries: unknown).
    pub fn publish_closed_ext(
        &mut self,
        idx: SeriesIdx,
        candles: &[Candle],
        ext: &[Option<KlineExt>],
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        self.settle(series, out, counters);
        if candles.is_empty() {
            return;
        }
        let entry = series.get(idx);
        let name = entry.id.as_str();
        let tf = entry.tf_s;
        // Frames shared between subscribers: one per candle, one batch per
        // start index; per shape (`[default, full]`).
        let mut singles: [Vec<Option<Frame>>; 2] = [vec![None; candles.len()], Vec::new()];
        if self.wants_full(idx) {
            singles[1] = vec![None; candles.len()];
        }
        let mut batches: [Vec<(usize, Frame)>; 2] = [Vec::new(), Vec::new()];
        let mut slow = Vec::new();
        // One subscriber's frames at a time; the buffer is reused, not reallocated.
        let mut frames: Vec<Frame> = Vec::new();
        let subscribers = self.take_subscribers(idx);
        for &slot in &subscribers {
            let Some(sub) = self.slots[slot].as_mut().and_then(|s| s.subs.get_mut(&idx)) else {
                continue;
            };
            if sub.held.is_some() {
                continue; // its catch-up, read from the store later, will include these
            }
            let start = match sub.cursor {
                None => 0,
                Some(c) => candles.partition_point(|x| x.candle_time <= c),
            };
            if start == candles.len() {
                continue;
            }
            if let Some(catchup) = sub.catchup.as_mut() {
                // Persisted before this publish: a catch-up page reads them.
                catchup.skipped_live(candles[start].candle_time);
                continue;
            }
            let sendable = &candles[start..];
            let shape = usize::from(sub.full);
            let batch = sub.supports_batch && sendable.len() > 1;
            frames.clear();
            let mut cursor = sub.cursor;
            if batch {
                if let Some(gap) = gap_frame(name, tf, cursor, sendable[0].candle_time) {
                    frames.push(gap);
                    counters.gaps_sent += 1;
                }
                let shared = match batches[shape].iter().find(|(s, _)| *s == start) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let mut buf = Vec::with_capacity(64 + sendable.len() * 120);
                        if sub.full {
                            wire::write_full_batch_frame(&mut buf, name, sendable, ext.get(start..).unwrap_or(&[]));
                        } else {
                            wire::write_batch_frame(&mut buf, name, sendable);
                        }
                        let f: Frame = buf.into();
                        batches[shape].push((start, f.clone()));
                        f
                    }
                };
                frames.push(shared);
                cursor = sendable.last().map(|c| c.candle_time);
            } else {
                for (i, c) in sendable.iter().enumerate() {
                    if let Some(gap) = gap_frame(name, tf, cursor, c.candle_time) {
                        frames.push(gap);
                        counters.gaps_sent += 1;
                    }
                    let Some(single) = singles[shape].get_mut(start + i) else { continue };
                    let shared = single
                        .get_or_insert_with(|| {
                            let mut buf = Vec::with_capacity(160);
                            if sub.full {
                                let e = ext.get(start + i).copied().flatten();
                                wire::write_full_candle_frame(&mut buf, false, name, c, e);
                            } else {
                                wire::write_candle_frame(&mut buf, false, name, c);
                            }
                            buf.into()
                        })
                        .clone();
                    frames.push(shared);
                    cursor = Some(c.candle_time);
                }
            }
            counters.frames_closed += frames.len() as u64;
            if let Some(sub) = self.sub_mut(slot, idx) {
                sub.cursor = cursor;
                sub.forming_seq = None;
            }
            for f in frames.drain(..) {
                if self.enqueue(slot, f, false, out).is_none() {
                    slow.push(slot);
                    break;
                }
            }
        }
        self.put_subscribers(idx, subscribers);
        for slot in slow {
            self.close_slow(slot, out, counters);
        }
    }

}

fn gap_frame(name: &str, tf: i64, cursor: Option<i64>, next: i64) -> Option<Frame> {
    let expected = cursor? + tf;
    (next > expected).then(|| {
        let mut buf = Vec::with_capacity(96);
        wire::write_gap_frame(&mut buf, name, expected, next);
        buf.into()
    })
}
