//! The hub: client sessions, their subscriptions and cursors, catch-up from the
//! store, live fan-out, gap notices, and each client's bounded outbound queue.
//!
//! Ordering rules it guarantees by construction (everything runs inside one
//! engine step, so there is no race to lose):
//! - a subscription's catch-up frames are queued before any live frame for it;
//! - per (client, series), closed candles are strictly increasing and never
//!   repeated; a cursor only moves forward except by the client's own re-subscribe;
//! - a forming candle at or before the cursor is never sent.
//!
//! Broadcast frames are serialized once per publish and shared (`Bytes`, a
//! reference-counted buffer the shell hands to the WebSocket layer without a copy).
//! Forming frames coalesce per series while still queued. A client whose
//! queued bytes pass `max_backlog_bytes` is closed with [`SLOW_CONSUMER_CLOSE`];
//! it can reconnect and resume with `since`.
//!
//! Never reads a clock: the catch-up clamp uses the engine time passed in.

use super::rate::MessageRate;
use super::series::{SeriesIdx, SeriesTable};
use super::{Counters, Output};
use crate::model::{Candle, Timeframe};
use crate::wire::client as wire;
use crate::store::Store;
use super::fasthash::FastMap;
use std::collections::{BTreeMap, VecDeque};

/// Close code and reason for a client whose backlog passed its limit.
pub const SLOW_CONSUMER_CLOSE: (u16, &str) =
    (1008, "slow_consumer: backlog limit exceeded; reconnect and resubscribe with since");
/// Close code and reason on shutdown (as the reference).
pub const SHUTDOWN_CLOSE: (u16, &str) = (1001, "server_shutdown");

pub type Frame = bytes::Bytes;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub catchup_limit: usize,
    pub max_backlog_bytes: usize,
    pub max_subscriptions_per_client: usize,
    /// Messages a client may send per second (bursts of twice that); 0 = no limit.
    pub max_messages_per_s: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            catchup_limit: 5000,
            max_backlog_bytes: 4 << 20,
            max_subscriptions_per_client: 256,
            max_messages_per_s: 0,
        }
    }
}

#[derive(Debug)]
struct Subscription {
    cursor: Option<i64>,
    supports_batch: bool,
    /// Queue sequence number of this series' forming frame while it is still
    /// queued and nothing else for the series was queued after it.
    forming_seq: Option<u64>,
    /// Waiting for healed history: `Some(since)`; nothing is sent meanwhile.
    held: Option<Option<i64>>,
}

#[derive(Debug)]
struct QueuedFrame {
    bytes: Frame,
}

#[derive(Debug)]
struct ClientSession {
    id: u64,
    subs: BTreeMap<SeriesIdx, Subscription>,
    queue: VecDeque<QueuedFrame>,
    /// Sequence number of `queue.front()`.
    front_seq: u64,
    queued_bytes: usize,
    /// A `ClientReady` was emitted and the queue has not been drained since.
    ready_signalled: bool,
    /// A close was requested (slow consumer); nothing more is queued.
    closing: bool,
    rate: MessageRate,
    /// When the last `rate_limited` error was queued: refused messages are
    /// answered at most once per [`RATE_ERROR_EVERY`], so a flood cannot grow
    /// the queue (and the answer does not depend on when the shell drains it).
    rate_error_at: Option<crate::time::Timestamp>,
}

/// Refused messages of one client get at most one `rate_limited` answer this often.
pub const RATE_ERROR_EVERY: crate::time::Duration = crate::time::Duration::from_secs(1);

impl ClientSession {
    fn push(&mut self, bytes: Frame) -> u64 {
        let seq = self.front_seq + self.queue.len() as u64;
        self.queued_bytes += bytes.len();
        self.queue.push_back(QueuedFrame { bytes });
        seq
    }

    fn replace(&mut self, seq: u64, bytes: Frame) -> bool {
        let Some(pos) = seq.checked_sub(self.front_seq) else { return false };
        match self.queue.get_mut(pos as usize) {
            Some(slot) => {
                self.queued_bytes = self.queued_bytes - slot.bytes.len() + bytes.len();
                slot.bytes = bytes;
                true
            }
            None => false,
        }
    }
}

/// What a subscribe did, for the engine's bookkeeping and logs.
#[derive(Debug, Default, PartialEq)]
pub struct SubscribeReport {
    /// The catch-up waits for healing.
    pub held: bool,
    pub catchup_count: usize,
    pub gap_emitted: bool,
    pub cursor: Option<i64>,
}

#[derive(Debug, PartialEq)]
pub enum SubscribeError {
    UnknownClient,
    TooManySubscriptions(usize),
}

#[derive(Default)]
pub struct Hub {
    cfg: HubConfig,
    slots: Vec<Option<ClientSession>>,
    free: Vec<usize>,
    // Lookup only, never iterated.
    by_id: FastMap<u64, usize>,
    scratch: Vec<u8>,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Self {
        Hub { cfg, ..Hub::default() }
    }

    pub fn client_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.slots.iter().flatten().map(|c| c.subs.len()).sum()
    }

    pub fn contains(&self, client: u64) -> bool {
        self.by_id.contains_key(&client)
    }

    /// Registers a client. Returns false when the id is already in use.
    pub fn connect(&mut self, client: u64) -> bool {
        if self.by_id.contains_key(&client) {
            return false;
        }
        let session = ClientSession {
            id: client,
            subs: BTreeMap::new(),
            queue: VecDeque::new(),
            front_seq: 0,
            queued_bytes: 0,
            ready_signalled: false,
            closing: false,
            rate: MessageRate::new(self.cfg.max_messages_per_s),
            rate_error_at: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(session);
                slot
            }
            None => {
                self.slots.push(Some(session));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(client, slot);
        true
    }

    /// Removes a client and every subscription it held; returns those series
    /// so the engine can release their supervisor references.
    pub fn disconnect(&mut self, client: u64, series: &mut SeriesTable) -> Vec<SeriesIdx> {
        let Some(slot) = self.by_id.remove(&client) else { return Vec::new() };
        let Some(session) = self.slots[slot].take() else { return Vec::new() };
        self.free.push(slot);
        let released: Vec<SeriesIdx> = session.subs.keys().copied().collect();
        for idx in &released {
            series.get_mut(*idx).subscribers.retain(|s| *s != slot);
        }
        released
    }

    /// Whether a new subscription would pass the per-connection limit.
    pub fn at_subscription_limit(&self, client: u64) -> bool {
        self.session(client).is_some_and(|s| s.subs.len() >= self.cfg.max_subscriptions_per_client)
    }

    /// Whether the client holds a subscription to `idx`.
    pub fn is_subscribed(&self, client: u64, idx: SeriesIdx) -> bool {
        self.session(client).is_some_and(|s| s.subs.contains_key(&idx))
    }

    fn session(&self, client: u64) -> Option<&ClientSession> {
        self.by_id.get(&client).and_then(|slot| self.slots[*slot].as_ref())
    }

    /// Whether a message of the client is within its rate. One over it is
    /// refused (the caller drops it) and answered with a `rate_limited` error,
    /// at most once per [`RATE_ERROR_EVERY`]. An unknown client is let through
    /// (the message handler ignores it).
    pub fn admit_message(&mut self, client: u64, now: crate::time::Timestamp, out: &mut VecDeque<Output>) -> bool {
        let Some(slot) = self.by_id.get(&client).copied() else { return true };
        let Some(session) = self.slots[slot].as_mut() else { return true };
        if session.rate.allow(now) {
            return true;
        }
        if session.rate_error_at.is_none_or(|at| now.since(at) >= RATE_ERROR_EVERY) {
            session.rate_error_at = Some(now);
            let message = format!("too many messages: limit {} per second", session.rate.per_s());
            self.enqueue(slot, wire::error_frame("rate_limited", &message, None).into(), out);
        }
        false
    }

    /// Queues a frame addressed to one client (errors, replies).
    pub fn send_to(&mut self, client: u64, bytes: Vec<u8>, out: &mut VecDeque<Output>) {
        let Some(slot) = self.by_id.get(&client).copied() else { return };
        self.enqueue(slot, bytes.into(), out);
    }

    /// Queues a frame; `None` when the client is over its backlog limit (the
    /// caller then closes it) — frames for a closing client are dropped silently.
    fn enqueue(&mut self, slot: usize, bytes: Frame, out: &mut VecDeque<Output>) -> Option<u64> {
        let max = self.cfg.max_backlog_bytes;
        let session = self.slots[slot].as_mut()?;
        if session.closing {
            return Some(u64::MAX);
        }
        let seq = session.push(bytes);
        if !session.ready_signalled {
            session.ready_signalled = true;
            out.push_back(Output::ClientReady { client: session.id });
        }
        if session.queued_bytes > max {
            return None;
        }
        Some(seq)
    }

    /// Subscribes (or re-subscribes) a client and queues its catch-up (§2.4-2.6).
    /// With `hold`, the catch-up waits (and live frames are not sent) until
    /// [`Hub::release_held`]: the engine is healing history the client asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        client: u64,
        idx: SeriesIdx,
        since: Option<i64>,
        supports_batch: bool,
        hold: bool,
        now_s: i64,
        series: &mut SeriesTable,
        store: &dyn Store,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) -> Result<SubscribeReport, SubscribeError> {
        let slot = *self.by_id.get(&client).ok_or(SubscribeError::UnknownClient)?;
        let max_subs = self.cfg.max_subscriptions_per_client;
        {
            let session = self.slots[slot].as_mut().ok_or(SubscribeError::UnknownClient)?;
            if !session.subs.contains_key(&idx) && session.subs.len() >= max_subs {
                return Err(SubscribeError::TooManySubscriptions(max_subs));
            }
        }
        let (frames, report) = if hold {
            (Vec::new(), SubscribeReport { held: true, ..SubscribeReport::default() })
        } else {
            self.catchup(idx, since, supports_batch, now_s, series, store, counters)
        };
        let session = self.slots[slot].as_mut().ok_or(SubscribeError::UnknownClient)?;
        let held = hold.then_some(since);
        let sub = Subscription { cursor: report.cursor, supports_batch, forming_seq: None, held };
        if session.subs.insert(idx, sub).is_none() {
            series.get_mut(idx).subscribers.push(slot);
        }
        self.queue_frames(slot, frames, out, counters);
        Ok(report)
    }

    /// Runs the catch-up of every held subscription to `idx` (healing ended).
    pub fn release_held(
        &mut self,
        idx: SeriesIdx,
        now_s: i64,
        series: &SeriesTable,
        store: &dyn Store,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        let slots: Vec<usize> = series.get(idx).subscribers.clone();
        for slot in slots {
            let Some((since, batch)) =
                self.slots[slot].as_ref().and_then(|s| s.subs.get(&idx)).and_then(|sub| sub.held.map(|h| (h, sub.supports_batch)))
            else {
                continue;
            };
            let (frames, report) = self.catchup(idx, since, batch, now_s, series, store, counters);
            if let Some(sub) = self.sub_mut(slot, idx) {
                sub.held = None;
                sub.cursor = report.cursor;
            }
            self.queue_frames(slot, frames, out, counters);
        }
    }

    fn queue_frames(&mut self, slot: usize, frames: Vec<Vec<u8>>, out: &mut VecDeque<Output>, counters: &mut Counters) {
        for f in frames {
            if self.enqueue(slot, f.into(), out).is_none() {
                self.close_slow(slot, out, counters);
                break;
            }
        }
    }

    /// The catch-up frames for a subscription from `since` (clamped), and the
    /// cursor they leave.
    #[allow(clippy::too_many_arguments)]
    fn catchup(
        &self,
        idx: SeriesIdx,
        since: Option<i64>,
        supports_batch: bool,
        now_s: i64,
        series: &SeriesTable,
        store: &dyn Store,
        counters: &mut Counters,
    ) -> (Vec<Vec<u8>>, SubscribeReport) {
        let entry = series.get(idx);
        let tf = entry.tf_s;
        let name = entry.id.as_str();
        let window = ClosedWindow::new(now_s, entry.id.timeframe(), entry.last_closed);
        let effective = since.map(|s| window.clamp(s));
        let read = match effective {
            None => store.read_tail(name, self.cfg.catchup_limit),
            Some(s) => store.read_after(name, s, self.cfg.catchup_limit),
        };
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut report = SubscribeReport::default();
        let candles = match read {
            Ok(c) => window.filter_ahead(c),
            Err(e) => {
                counters.store_read_errors += 1;
                frames.push(wire::error_frame(
                    "unavailable",
                    &format!("history unavailable ({e}); live data continues"),
                    Some(name),
                ));
                Vec::new()
            }
        };
        if let (Some(eff), Some(first)) = (effective, candles.first()) {
            let expected = eff + tf;
            if eff > 0 && first.candle_time > expected {
                let mut buf = Vec::with_capacity(96);
                wire::write_gap_frame(&mut buf, name, expected, first.candle_time);
                frames.push(buf);
                report.gap_emitted = true;
                counters.gaps_sent += 1;
            }
        }
        if !candles.is_empty() {
            if supports_batch {
                let mut buf = Vec::with_capacity(64 + candles.len() * 120);
                wire::write_batch_frame(&mut buf, name, &candles);
                frames.push(buf);
            } else {
                for c in &candles {
                    let mut buf = Vec::with_capacity(160);
                    wire::write_candle_frame(&mut buf, false, name, c);
                    frames.push(buf);
                }
            }
        }
        report.catchup_count = candles.len();
        report.cursor = candles.last().map(|c| c.candle_time).or(effective);
        counters.catchup_candles += candles.len() as u64;
        (frames, report)
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client: u64, idx: SeriesIdx, series: &mut SeriesTable) -> bool {
        let Some(slot) = self.by_id.get(&client).copied() else { return false };
        let Some(session) = self.slots[slot].as_mut() else { return false };
        if session.subs.remove(&idx).is_none() {
            return false;
        }
        series.get_mut(idx).subscribers.retain(|s| *s != slot);
        true
    }

    /// Fans a forming candle out to every subscriber whose cursor is behind it.
    pub fn publish_forming(
        &mut self,
        idx: SeriesIdx,
        candle: &Candle,
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        let entry = series.get(idx);
        let mut frame: Option<Frame> = None;
        let mut slow = Vec::new();
        for &slot in &entry.subscribers {
            let Some(session) = self.slots[slot].as_mut() else { continue };
            let Some(sub) = session.subs.get_mut(&idx) else { continue };
            if sub.held.is_some() || sub.cursor.is_some_and(|c| candle.candle_time <= c) {
                continue;
            }
            let bytes = frame
                .get_or_insert_with(|| {
                    self.scratch.clear();
                    wire::write_candle_frame(&mut self.scratch, true, entry.id.as_str(), candle);
                    Frame::copy_from_slice(&self.scratch)
                })
                .clone();
            counters.frames_forming += 1;
            if let Some(seq) = sub.forming_seq {
                if session.replace(seq, bytes.clone()) {
                    counters.forming_coalesced += 1;
                    if session.queued_bytes > self.cfg.max_backlog_bytes {
                        slow.push(slot);
                    }
                    continue;
                }
            }
            match self.enqueue(slot, bytes, out) {
                Some(seq) => {
                    if let Some(sub) = self.sub_mut(slot, idx) {
                        sub.forming_seq = Some(seq);
                    }
                }
                None => slow.push(slot),
            }
        }
        for slot in slow {
            self.close_slow(slot, out, counters);
        }
    }

    fn sub_mut(&mut self, slot: usize, idx: SeriesIdx) -> Option<&mut Subscription> {
        self.slots[slot].as_mut()?.subs.get_mut(&idx)
    }

    /// Fans closed candles (ascending, unique times) out to every subscriber,
    /// with per-subscriber cursor filtering and gap notices (§3.2).
    pub fn publish_closed(
        &mut self,
        idx: SeriesIdx,
        candles: &[Candle],
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        if candles.is_empty() {
            return;
        }
        let entry = series.get(idx);
        let name = entry.id.as_str();
        let tf = entry.tf_s;
        // Frames shared between subscribers: one per candle, one batch per start index.
        let mut singles: Vec<Option<Frame>> = vec![None; candles.len()];
        let mut batches: Vec<(usize, Frame)> = Vec::new();
        let mut slow = Vec::new();
        // One subscriber's frames at a time; the buffer is reused, not reallocated.
        let mut frames: Vec<Frame> = Vec::new();
        for &slot in &entry.subscribers {
            let Some(sub) = self.slots[slot].as_ref().and_then(|s| s.subs.get(&idx)) else {
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
            let sendable = &candles[start..];
            let batch = sub.supports_batch && sendable.len() > 1;
            frames.clear();
            let mut cursor = sub.cursor;
            if batch {
                if let Some(gap) = gap_frame(name, tf, cursor, sendable[0].candle_time) {
                    frames.push(gap);
                    counters.gaps_sent += 1;
                }
                let shared = match batches.iter().find(|(s, _)| *s == start) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let mut buf = Vec::with_capacity(64 + sendable.len() * 120);
                        wire::write_batch_frame(&mut buf, name, sendable);
                        let f: Frame = buf.into();
                        batches.push((start, f.clone()));
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
                    let shared = singles[start + i]
                        .get_or_insert_with(|| {
                            let mut buf = Vec::with_capacity(160);
                            wire::write_candle_frame(&mut buf, false, name, c);
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
                if self.enqueue(slot, f, out).is_none() {
                    slow.push(slot);
                    break;
                }
            }
        }
        for slot in slow {
            self.close_slow(slot, out, counters);
        }
    }

    fn close_slow(&mut self, slot: usize, out: &mut VecDeque<Output>, counters: &mut Counters) {
        let Some(session) = self.slots[slot].as_mut() else { return };
        if session.closing {
            return;
        }
        session.closing = true;
        counters.slow_consumer_closes += 1;
        counters.queue_drops += session.queue.len() as u64;
        session.queue.clear();
        session.queued_bytes = 0;
        let (code, reason) = SLOW_CONSUMER_CLOSE;
        out.push_back(Output::ClientClose { client: session.id, code, reason: reason.to_string() });
        // The engine releases the subscriptions when the shell reports the close;
        // until then nothing more is queued for this client (`closing`).
    }

    /// Moves every queued frame of a client into `dst` (one write per loop turn).
    pub fn take_frames(&mut self, client: u64, dst: &mut Vec<Frame>) {
        let Some(slot) = self.by_id.get(&client).copied() else { return };
        let Some(session) = self.slots[slot].as_mut() else { return };
        session.front_seq += session.queue.len() as u64;
        dst.extend(session.queue.drain(..).map(|q| q.bytes));
        session.queued_bytes = 0;
        session.ready_signalled = false;
        for sub in session.subs.values_mut() {
            sub.forming_seq = None;
        }
    }

    pub fn queued_bytes(&self, client: u64) -> usize {
        self.session(client).map_or(0, |s| s.queued_bytes)
    }

    /// The clients subscribed to `idx`, ascending (to end a series' subscriptions).
    pub fn subscribers(&self, idx: SeriesIdx, series: &SeriesTable) -> Vec<u64> {
        let mut ids: Vec<u64> =
            series.get(idx).subscribers.iter().filter_map(|slot| self.slots.get(*slot)?.as_ref().map(|s| s.id)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every connected client id, ascending (for shutdown).
    pub fn client_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.slots.iter().flatten().map(|s| s.id).collect();
        ids.sort_unstable();
        ids
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

/// The "latest closed" window of §2.5, computed from engine time and extended
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
