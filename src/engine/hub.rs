//! The hub: client sessions, their subscriptions and cursors, catch-up from the
//! store, live fan-out, gap notices, and each client's bounded outbound queue.
//!
//! Ordering rules it guarantees by construction:
//! - a subscription's catch-up frames are queued before any live frame for it
//!   (the catch-up is read from the store a page at a time, see [`super::catchup`];
//!   live frames wait for it to end);
//! - per (client, series), closed candles are strictly increasing and never
//!   repeated; a cursor only moves forward except by the client's own re-subscribe;
//! - a forming candle at or before the cursor is never sent.
//!
//! Catch-up pages are store reads the hub emits as effects (`Output::ReadStore`,
//! answered by `Input::StoreRead`): at most one in flight per client, asked for
//! only while the client's queue is below `catchup_low_water_bytes` — so the
//! shell's writes (`Input::ClientWritable`), made as the socket drains, pace
//! it, and a client's catch-up bytes in memory stay under the low-water mark
//! plus one page.
//!
//! Writing is an input: `Input::ClientWritable { client, budget }` releases
//! frames from the front of the client's queue, in order, until `budget`
//! bytes are staged (at least one frame when none is), and `poll_client`
//! hands them out. What is not released still coalesces and still counts
//! against the backlog limit; a released frame no longer does. `ClientReady` is emitted when an empty queue gets a frame:
//! after a partial write the shell asks again ([`Hub::queued_bytes`] > 0).
//!
//! The hub owns its subscriber index: the client slots subscribed to each
//! series, in subscription order (the order of every fan-out).
//!
//! Broadcast frames are serialized once per publish and shared (`Bytes`, a
//! reference-counted buffer the shell hands to the WebSocket layer without a copy).
//! Forming frames coalesce per series while still queued. A client whose
//! queued live bytes (catch-up bytes, which the hub chose to produce, do not
//! count) pass `max_backlog_bytes` is closed with [`SLOW_CONSUMER_CLOSE`]; it
//! can reconnect and resume with `since`. A closed client gets no second close.
//!
//! Deferred forming fan-out (`HubConfig::defer_forming_fanout`, the live shell
//! turns it on): a forming publish queues the frame for subscribers only up to
//! the first one that becomes ready, and keeps the rest as one pending fan-out,
//! continued a client at a time as the engine's outputs are polled
//! ([`Hub::step_deferred`]), so the shell writes the first client before the
//! fan-out to every other is formed. Anything else that queues frames or
//! changes who is subscribed settles it first ([`Hub::settle`]), and so does
//! the engine before each input, so every client's queue holds the same frames
//! in the same order as without deferral; only the order of `ClientReady`
//! outputs between clients differs.
//!
//! Shapes (#15 §4): a subscription made with `"fields":"full"` gets its
//! candles with the whole kline's extra fields (catch-up pages read them from
//! the store, live publishes bring them). Each publish serializes at most one
//! shared frame per shape: the full one only when some subscriber of the
//! series asked for it (and its fields are looked up only then:
//! [`Hub::wants_full`]); every other subscriber gets the default bytes.
//!
//! The live fan-out (forming, closed, deferral, shapes) is in `hub_fanout.rs`,
//! a child module; the catch-up pages in [`super::catchup`].
//!
//! Never reads a clock or the store: the catch-up clamp uses the engine time passed in.

use super::catchup::{CatchUp, PageCtx, Step};
use super::rate::MessageRate;
use super::series::{SeriesIdx, SeriesTable};
use super::window::ClosedWindow;
use super::{ClientId, Counters, Frame, LogLevel, Output, StoreOp};
use crate::kline_ext::KlineExt;
use crate::model::Candle;
use crate::store::StoreReadResult;
use crate::wire::client as wire;
use super::fasthash::FastMap;
use std::collections::{BTreeMap, VecDeque};

#[path = "hub_fanout.rs"]
mod fanout;
use fanout::DeferredForming;

/// Close code and reason for a client whose backlog passed its limit.
pub const SLOW_CONSUMER_CLOSE: (u16, &str) =
    (1008, "slow_consumer: backlog limit exceeded; reconnect and resubscribe with since");
/// Close code and reason on shutdown (as the reference).
pub const SHUTDOWN_CLOSE: (u16, &str) = (1001, "server_shutdown");

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub catchup_limit: usize,
    pub max_backlog_bytes: usize,
    pub max_subscriptions_per_client: usize,
    /// Messages a client may send per second (bursts of twice that); 0 = no limit.
    pub max_messages_per_s: u32,
    /// Candles per catch-up read (one page).
    pub catchup_page_candles: usize,
    /// The next catch-up page is read only while the client's queue holds
    /// fewer bytes than this.
    pub catchup_low_water_bytes: usize,
    /// Forming fan-out continues as outputs are polled (see the module comment).
    pub defer_forming_fanout: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            catchup_limit: 5000,
            max_backlog_bytes: 4 << 20,
            max_subscriptions_per_client: 256,
            max_messages_per_s: 0,
            catchup_page_candles: 500,
            catchup_low_water_bytes: 64 << 10,
            defer_forming_fanout: false,
        }
    }
}

#[derive(Debug)]
struct Subscription {
    cursor: Option<i64>,
    supports_batch: bool,
    /// `"fields":"full"`: candles in the full shape.
    full: bool,
    /// Queue sequence number of this series' forming frame while it is still
    /// queued and nothing else for the series was queued after it.
    forming_seq: Option<u64>,
    /// Waiting for healed history: `Some(since)`; nothing is sent meanwhile.
    held: Option<Option<i64>>,
    /// Catching up from the store; live frames wait until it is over.
    catchup: Option<CatchUp>,
    /// The `since` the client gave (for the log line).
    since: Option<i64>,
}

#[derive(Debug)]
struct QueuedFrame {
    bytes: Frame,
    /// Produced by a catch-up page (not counted against the backlog limit).
    catchup: bool,
}

#[derive(Debug)]
struct ClientSession {
    id: ClientId,
    subs: BTreeMap<SeriesIdx, Subscription>,
    queue: VecDeque<QueuedFrame>,
    /// The first `staged` frames of `queue` were released by `ClientWritable`
    /// for `poll_client` (`staged_bytes` of them: one write budget plus one
    /// frame at most); they are never replaced, dropped or counted again.
    staged: usize,
    staged_bytes: usize,
    /// Sequence number of `queue.front()`.
    front_seq: u64,
    queued_bytes: usize,
    /// The part of `queued_bytes` that catch-up pages queued.
    catchup_bytes: usize,
    /// The catch-up read in flight for this client (at most one).
    reading: Option<(StoreOp, SeriesIdx)>,
    /// A `ClientReady` was emitted and the queue has not been drained since.
    ready_signalled: bool,
    /// A close was requested (slow consumer); nothing more is queued, and
    /// no other close is sent (not even at shutdown).
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
    fn push(&mut self, bytes: Frame, catchup: bool) -> u64 {
        let seq = self.front_seq + self.queue.len() as u64;
        self.queued_bytes += bytes.len();
        if catchup {
            self.catchup_bytes += bytes.len();
        }
        self.queue.push_back(QueuedFrame { bytes, catchup });
        seq
    }

    /// Queued bytes the backlog limit applies to.
    fn live_bytes(&self) -> usize {
        self.queued_bytes - self.catchup_bytes
    }

    fn replace(&mut self, seq: u64, bytes: Frame) -> bool {
        let Some(pos) = seq.checked_sub(self.front_seq) else { return false };
        if (pos as usize) < self.staged {
            return false; // released to the shell
        }
        match self.queue.get_mut(pos as usize) {
            Some(slot) => {
                self.queued_bytes = self.queued_bytes - slot.bytes.len() + bytes.len();
                if slot.catchup {
                    self.catchup_bytes = self.catchup_bytes - slot.bytes.len() + bytes.len();
                }
                slot.bytes = bytes;
                true
            }
            None => false,
        }
    }
}

/// What a subscribe did, for the engine's bookkeeping and logs (the catch-up
/// itself is logged when it ends: `market_ws_catchup_done`).
#[derive(Debug, Default, PartialEq)]
pub struct SubscribeReport {
    /// The catch-up waits for healing.
    pub held: bool,
    /// Where the catch-up starts (the clamped `since`).
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
    by_id: FastMap<ClientId, usize>,
    scratch: Vec<u8>,
    /// Op ids, shared with the rest of the engine (one sequence for every store effect).
    ops: super::store_ops::OpIds,
    /// Catch-up reads in flight: op → client. Lookup only, never iterated.
    reads: FastMap<StoreOp, ClientId>,
    /// Frames of one catch-up page (reused).
    page: Vec<Frame>,
    /// A forming fan-out not yet queued for every subscriber (deferral on).
    deferred: Option<DeferredForming>,
    /// Subscriptions in the full shape, per series (absent: none).
    full_subs: BTreeMap<SeriesIdx, usize>,
    /// The subscriber index: client slots subscribed to each series (by
    /// series index), in subscription order. Grows with the series table.
    index: Vec<Vec<usize>>,
}

impl Hub {
    pub fn new(cfg: HubConfig, ops: super::store_ops::OpIds) -> Self {
        Hub { cfg, ops, ..Hub::default() }
    }

    /// New limits (`SIGHUP`), for every later decision; a connected client
    /// keeps the message rate it started with.
    pub fn set_config(&mut self, cfg: HubConfig) {
        self.cfg = cfg;
    }

    pub fn client_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.slots.iter().flatten().map(|c| c.subs.len()).sum()
    }

    pub fn contains(&self, client: ClientId) -> bool {
        self.by_id.contains_key(&client)
    }

    /// Registers a client. Returns false when the id is already in use.
    pub fn connect(&mut self, client: ClientId) -> bool {
        if self.by_id.contains_key(&client) {
            return false;
        }
        let session = ClientSession {
            id: client,
            subs: BTreeMap::new(),
            queue: VecDeque::new(),
            staged: 0,
            staged_bytes: 0,
            front_seq: 0,
            queued_bytes: 0,
            catchup_bytes: 0,
            reading: None,
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
    pub fn disconnect(&mut self, client: ClientId) -> Vec<SeriesIdx> {
        let Some(slot) = self.by_id.remove(&client) else { return Vec::new() };
        let Some(session) = self.slots[slot].take() else { return Vec::new() };
        self.free.push(slot);
        for (idx, _) in session.subs.iter().filter(|(_, sub)| sub.full) {
            self.count_full(*idx, false);
        }
        let released: Vec<SeriesIdx> = session.subs.keys().copied().collect();
        for idx in &released {
            self.remove_subscriber(*idx, slot);
        }
        released
    }

    /// Whether a new subscription would pass the per-connection limit.
    /// Whether one more subscription would pass the per-client limit, with
    /// `pending` more still waiting for their store read.
    pub fn at_subscription_limit(&self, client: ClientId, pending: usize) -> bool {
        self.session(client).is_some_and(|s| s.subs.len() + pending >= self.cfg.max_subscriptions_per_client)
    }

    /// Whether some subscriber of `idx` asked for the full shape: only then
    /// does a publish need the candles' extra fields.
    pub fn wants_full(&self, idx: SeriesIdx) -> bool {
        self.full_subs.contains_key(&idx)
    }

    fn count_full(&mut self, idx: SeriesIdx, add: bool) {
        let n = self.full_subs.entry(idx).or_default();
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            self.full_subs.remove(&idx);
        }
    }

    /// Whether the client holds a subscription to `idx`.
    pub fn is_subscribed(&self, client: ClientId, idx: SeriesIdx) -> bool {
        self.session(client).is_some_and(|s| s.subs.contains_key(&idx))
    }

    fn session(&self, client: ClientId) -> Option<&ClientSession> {
        self.by_id.get(&client).and_then(|slot| self.slots[*slot].as_ref())
    }

    /// Whether a message of the client is within its rate. One over it is
    /// refused (the caller drops it) and answered with a `rate_limited` error,
    /// at most once per [`RATE_ERROR_EVERY`]. An unknown client is let through
    /// (the message handler ignores it).
    pub fn admit_message(&mut self, client: ClientId, now: crate::time::Timestamp, out: &mut VecDeque<Output>) -> bool {
        let Some(slot) = self.by_id.get(&client).copied() else { return true };
        let Some(session) = self.slots[slot].as_mut() else { return true };
        if session.rate.allow(now) {
            return true;
        }
        if session.rate_error_at.is_none_or(|at| now.since(at) >= RATE_ERROR_EVERY) {
            session.rate_error_at = Some(now);
            let message = format!("too many messages: limit {} per second", session.rate.per_s());
            self.enqueue(slot, wire::error_frame("rate_limited", &message, None).into(), false, out);
        }
        false
    }

    /// Queues a frame addressed to one client (errors, replies).
    pub fn send_to(&mut self, client: ClientId, bytes: Vec<u8>, out: &mut VecDeque<Output>) {
        let Some(slot) = self.by_id.get(&client).copied() else { return };
        self.enqueue(slot, bytes.into(), false, out);
    }

    /// Queues a frame; `None` when the client's live backlog is over its limit
    /// (the caller then closes it) — frames for a closing client are dropped
    /// silently. Catch-up frames are not counted against the limit.
    fn enqueue(&mut self, slot: usize, bytes: Frame, catchup: bool, out: &mut VecDeque<Output>) -> Option<u64> {
        let max = self.cfg.max_backlog_bytes;
        let session = self.slots[slot].as_mut()?;
        if session.closing {
            return Some(u64::MAX);
        }
        let seq = session.push(bytes, catchup);
        if !session.ready_signalled {
            session.ready_signalled = true;
            out.push_back(Output::ClientReady { client: session.id });
        }
        if session.live_bytes() > max {
            return None;
        }
        Some(seq)
    }

    /// Subscribes (or re-subscribes) a client and starts its catch-up
    /// (`docs/ws-market.asyncapi.json`: `since`, batch frames), read from the store a page at a time as the client drains.
    /// With `hold`, the catch-up waits (and live frames are not sent) until
    /// [`Hub::release_held`]: the engine is healing history the client asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        client: ClientId,
        idx: SeriesIdx,
        since: Option<i64>,
        supports_batch: bool,
        full: bool,
        hold: bool,
        now_s: i64,
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
    ) -> Result<SubscribeReport, SubscribeError> {
        let slot = *self.by_id.get(&client).ok_or(SubscribeError::UnknownClient)?;
        let max_subs = self.cfg.max_subscriptions_per_client;
        let session = self.slots[slot].as_mut().ok_or(SubscribeError::UnknownClient)?;
        if !session.subs.contains_key(&idx) && session.subs.len() >= max_subs {
            return Err(SubscribeError::TooManySubscriptions(max_subs));
        }
        let (held, effective, catchup) = if hold {
            (Some(since), None, None)
        } else {
            let effective = effective_since(since, now_s, series, idx);
            (None, effective, Some(CatchUp::new(effective, self.cfg.catchup_limit, full)))
        };
        let sub = Subscription { cursor: effective, supports_batch, full, forming_seq: None, held, catchup, since };
        let was_full = match session.subs.insert(idx, sub) {
            None => {
                let at = idx.0 as usize;
                if self.index.len() <= at {
                    self.index.resize_with(at + 1, Vec::new);
                }
                self.index[at].push(slot);
                false
            }
            Some(old) => old.full,
        };
        if was_full != full {
            self.count_full(idx, full);
        }
        self.pump(slot, series, out);
        Ok(SubscribeReport { held: hold, cursor: effective })
    }

    /// Starts the catch-up of every held subscription to `idx` (healing ended).
    pub fn release_held(&mut self, idx: SeriesIdx, now_s: i64, series: &SeriesTable, out: &mut VecDeque<Output>) {
        let limit = self.cfg.catchup_limit;
        for slot in self.subscriber_slots(idx).to_vec() {
            let Some(sub) = self.sub_mut(slot, idx) else { continue };
            let Some(since) = sub.held.take() else { continue };
            let effective = effective_since(since, now_s, series, idx);
            sub.cursor = effective;
            sub.catchup = Some(CatchUp::new(effective, limit, sub.full));
            self.pump(slot, series, out);
        }
    }

    /// Bus resync (read role): every live subscription to `idx` (not held,
    /// not already catching up) catches up from the store again from its
    /// cursor, so entries the bus lost are read there (no gap, no duplicate).
    pub fn resync(&mut self, idx: SeriesIdx, series: &SeriesTable, out: &mut VecDeque<Output>) {
        let limit = self.cfg.catchup_limit;
        for slot in self.subscriber_slots(idx).to_vec() {
            let Some(sub) = self.sub_mut(slot, idx) else { continue };
            if sub.held.is_some() || sub.catchup.is_some() {
                continue;
            }
            sub.catchup = Some(CatchUp::new(sub.cursor, limit, sub.full));
            self.pump(slot, series, out);
        }
    }

    /// Asks for the client's next catch-up page if it has none in flight, its
    /// queue is below the low-water mark and a subscription is catching up.
    fn pump(&mut self, slot: usize, series: &SeriesTable, out: &mut VecDeque<Output>) {
        let Some(session) = self.slots[slot].as_mut() else { return };
        if session.closing || session.reading.is_some() || session.queued_bytes >= self.cfg.catchup_low_water_bytes {
            return;
        }
        let client = session.id;
        let waiting = session.subs.iter_mut().find(|(_, sub)| sub.held.is_none() && sub.catchup.is_some());
        let Some((&idx, sub)) = waiting else { return };
        let Some(catchup) = sub.catchup.as_mut() else { return };
        let op = self.ops.next();
        let query = catchup.query(op, series.get(idx).id.as_str(), self.cfg.catchup_page_candles);
        session.reading = Some((op, idx));
        self.reads.insert(op, client);
        out.push_back(Output::ReadStore { op, query });
    }

    /// A catch-up page (or tail start) read from the store: queues its frames,
    /// ends the catch-up or asks for the next page. A stale answer (the client
    /// left, re-subscribed or unsubscribed meanwhile) is dropped.
    pub fn on_store_read(
        &mut self,
        op: StoreOp,
        result: StoreReadResult,
        now_s: i64,
        series: &SeriesTable,
        out: &mut VecDeque<Output>,
        counters: &mut Counters,
    ) {
        self.settle(series, out, counters);
        let Some(client) = self.reads.remove(&op) else { return };
        let Some(slot) = self.by_id.get(&client).copied() else { return };
        let Some(session) = self.slots[slot].as_mut() else { return };
        let Some((_, idx)) = session.reading.filter(|(o, _)| *o == op) else { return };
        session.reading = None;
        if session.closing {
            return;
        }
        let entry = series.get(idx);
        let mut page = std::mem::take(&mut self.page);
        let mut done = None;
        if let Some(sub) = session.subs.get_mut(&idx) {
            if let Some(catchup) = sub.catchup.as_mut().filter(|c| c.pending == Some(op)) {
                let ctx = PageCtx {
                    name: entry.id.as_str(),
                    tf: entry.tf_s,
                    supports_batch: sub.supports_batch,
                    window: ClosedWindow::new(now_s, entry.id.timeframe(), entry.last_closed),
                };
                if catchup.answer(result, &ctx, &mut sub.cursor, &mut page, counters) == Step::Done {
                    done = sub.catchup.take().map(|c| (c, sub.since, sub.supports_batch, sub.cursor));
                }
            }
        }
        for f in page.drain(..) {
            self.enqueue(slot, f, true, out);
        }
        self.page = page;
        if let Some((catchup, since, batch, cursor)) = done {
            // The newest forming update held back meanwhile, if still ahead.
            if let Some((_, frame)) = catchup.forming.filter(|(t, _)| cursor.is_none_or(|c| *t > c)) {
                counters.frames_forming += 1;
                match self.enqueue(slot, frame, false, out) {
                    Some(seq) => {
                        if let Some(sub) = self.sub_mut(slot, idx) {
                            sub.forming_seq = Some(seq);
                        }
                    }
                    None => self.close_slow(slot, out, counters),
                }
            }
            out.push_back(Output::Log {
                level: LogLevel::Debug,
                line: format!(
                    "market_ws_catchup_done client={client} series_id={} since={since:?} supports_batch={batch} catchup_count={} gap_emitted={} last_sent={cursor:?}",
                    entry.id, catchup.sent, catchup.gap_emitted
                ),
            });
        }
        self.pump(slot, series, out);
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client: ClientId, idx: SeriesIdx) -> bool {
        let Some(slot) = self.by_id.get(&client).copied() else { return false };
        let Some(session) = self.slots[slot].as_mut() else { return false };
        let Some(sub) = session.subs.remove(&idx) else { return false };
        if sub.full {
            self.count_full(idx, false);
        }
        self.remove_subscriber(idx, slot);
        true
    }

    /// Takes `slot` out of `idx`'s subscribers; a pending fan-out over them
    /// keeps its place (the subscribers after the removed one move up).
    fn remove_subscriber(&mut self, idx: SeriesIdx, slot: usize) {
        let Some(subscribers) = self.index.get_mut(idx.0 as usize) else { return };
        if let Some(d) = self.deferred.as_mut().filter(|d| d.idx == idx) {
            let before = subscribers[..d.next.min(subscribers.len())].iter().filter(|s| **s == slot).count();
            d.next -= before;
        }
        subscribers.retain(|s| *s != slot);
    }

    fn sub_mut(&mut self, slot: usize, idx: SeriesIdx) -> Option<&mut Subscription> {
        self.slots[slot].as_mut()?.subs.get_mut(&idx)
    }

    fn close_slow(&mut self, slot: usize, out: &mut VecDeque<Output>, counters: &mut Counters) {
        let Some(session) = self.slots[slot].as_mut() else { return };
        if session.closing {
            return;
        }
        session.closing = true;
        counters.slow_consumer_closes += 1;
        counters.queue_drops += (session.queue.len() - session.staged) as u64;
        session.queue.truncate(session.staged);
        session.queued_bytes = 0;
        session.catchup_bytes = 0;
        let (code, reason) = SLOW_CONSUMER_CLOSE;
        out.push_back(Output::ClientClose { client: session.id, code, reason: reason.to_string() });
        // The engine releases the subscriptions when the shell reports the close;
        // until then nothing more is queued for this client (`closing`).
    }

    /// `Input::ClientWritable`: releases frames from the front of the
    /// client's queue, in order, while fewer than `budget` bytes are staged
    /// (so one frame at least when none is and `budget > 0`). What is not
    /// released keeps coalescing and counting against the backlog limit. A
    /// drained queue may ask for the next catch-up page.
    pub fn writable(&mut self, client: ClientId, budget: usize, series: &SeriesTable, out: &mut VecDeque<Output>) {
        let Some(slot) = self.by_id.get(&client).copied() else { return };
        let Some(session) = self.slots[slot].as_mut() else { return };
        while session.staged_bytes < budget {
            let Some(q) = session.queue.get(session.staged) else { break };
            let len = q.bytes.len();
            if q.catchup {
                session.catchup_bytes -= len;
            }
            session.queued_bytes -= len;
            session.staged += 1;
            session.staged_bytes += len;
        }
        if session.staged == session.queue.len() {
            session.ready_signalled = false;
            for sub in session.subs.values_mut() {
                sub.forming_seq = None;
            }
        }
        self.pump(slot, series, out);
    }

    /// The next frame `writable` released for the client, in queue order.
    pub fn poll_client(&mut self, client: ClientId) -> Option<Frame> {
        let slot = *self.by_id.get(&client)?;
        let session = self.slots[slot].as_mut()?;
        if session.staged == 0 {
            return None;
        }
        let q = session.queue.pop_front()?;
        session.staged -= 1;
        session.staged_bytes -= q.bytes.len();
        session.front_seq += 1;
        Some(q.bytes)
    }

    pub fn queued_bytes(&self, client: ClientId) -> usize {
        self.session(client).map_or(0, |s| s.queued_bytes)
    }

    /// The client slots subscribed to `idx`, in subscription order.
    pub(super) fn subscriber_slots(&self, idx: SeriesIdx) -> &[usize] {
        self.index.get(idx.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// How many subscriptions `idx` has.
    pub fn subscriber_count(&self, idx: SeriesIdx) -> usize {
        self.subscriber_slots(idx).len()
    }

    /// The clients subscribed to `idx`, ascending (to end a series' subscriptions).
    pub fn subscribers(&self, idx: SeriesIdx) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> =
            self.subscriber_slots(idx).iter().filter_map(|slot| self.slots.get(*slot)?.as_ref().map(|s| s.id)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every connected client not already being closed, ascending (for
    /// shutdown: a client closed as a slow consumer gets no second close).
    pub fn open_client_ids(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.slots.iter().flatten().filter(|s| !s.closing).map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }
}

/// `since` clamped to the series' closed window ([`ClosedWindow`]).
fn effective_since(since: Option<i64>, now_s: i64, series: &SeriesTable, idx: SeriesIdx) -> Option<i64> {
    let entry = series.get(idx);
    let window = ClosedWindow::new(now_s, entry.id.timeframe(), entry.last_closed);
    since.map(|s| window.clamp(s))
}



#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
