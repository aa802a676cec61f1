//! What a `/ws/market` client asks of the engine: the per-client message
//! rate, subscribe (admission by the supervisor, then the subscription's
//! bounds read from the store before the hub takes it), unsubscribe, and a
//! client's departure. Answers go to the client's queue in the hub; nothing
//! here writes a socket.

use super::*;

impl Engine {

    /// The per-client message rate: a message over it is dropped unread (the
    /// hub answers `rate_limited`) and counted.
    pub(super) fn admit_client_message(&mut self, client: ClientId) -> bool {
        let admitted = self.hub.admit_message(client, self.now, &mut self.outputs);
        if !admitted {
            self.counters.client_messages_rate_limited += 1;
        }
        admitted
    }

    pub(super) fn reject_client(&mut self, client: ClientId, err: &RequestError) {
        self.counters.client_bad_requests += 1;
        self.hub.send_to(client, wire::bad_request_frame(err), &mut self.outputs);
    }

    pub(super) fn on_client_text(&mut self, client: ClientId, text: &str) {
        if !self.hub.contains(client) {
            return;
        }
        let max = self.cfg.max_client_message_bytes;
        if text.len() > max {
            return self.reject_client(client, &RequestError::TooLarge { len: text.len(), max });
        }
        match wire::parse_request(text) {
            Err(e) => self.reject_client(client, &e),
            Ok(ClientRequest::Subscribe { series_id, since, supports_batch, full }) => {
                self.subscribe(client, &series_id, since, supports_batch, full)
            }
            Ok(ClientRequest::Unsubscribe { series_id: Some(s) }) => self.unsubscribe(client, &s),
            Ok(ClientRequest::Unsubscribe { series_id: None }) => {}
        }
    }

    pub(super) fn subscribe(&mut self, client: ClientId, raw: &str, since: Option<i64>, supports_batch: bool, full: bool) {
        let id = match SeriesId::parse(raw) {
            Ok(id) => id,
            Err(e) => {
                self.counters.client_bad_requests += 1;
                let frame = wire::error_frame("bad_request", &e.to_string(), None);
                return self.hub.send_to(client, frame, &mut self.outputs);
            }
        };
        let idx = self.series.intern(&id);
        if self.store_ops.pending_subs().any(|(_, p)| p.client == client && p.idx == idx) {
            return; // the same subscription is waiting for its store read
        }
        let (mut unsupported, mut counted) = (None, false);
        if !self.hub.is_subscribed(client, idx) {
            let pending = self.store_ops.pending_subs().filter(|(_, p)| p.client == client).count();
            if self.hub.at_subscription_limit(client, pending) {
                self.counters.client_limit_rejects += 1;
                let max = self.cfg.hub.max_subscriptions_per_client;
                let msg = format!("too many subscriptions on this connection (max {max})");
                let frame = wire::error_frame("limit", &msg, Some(raw));
                return self.hub.send_to(client, frame, &mut self.outputs);
            }
            match self.admit_series(&id) {
                SubscribeOutcome::Accepted => {
                    counted = true;
                    self.bus_demand_add(&id);
                }
                SubscribeOutcome::Capacity => {
                    self.counters.capacity_rejects += 1;
                    self.log(LogLevel::Info, format!("market_ws_subscribe_rejected series_id={raw} reason=capacity"));
                    let frame = wire::error_frame("capacity", "ondemand_ingest_capacity", Some(raw));
                    self.apply_effects();
                    return self.hub.send_to(client, frame, &mut self.outputs);
                }
                SubscribeOutcome::Unsupported(msg) => {
                    // Series seeded by a tool (HTTP ingest) stay subscribable
                    // without a job, when the store has rows of them.
                    if self.series.get(idx).last_closed.is_none() {
                        unsupported = Some(msg);
                    }
                }
            }
            self.apply_effects();
        }
        let p = PendingSub { client, idx, id, since, supports_batch, full, unsupported, counted };
        // Whether to hold for a heal depends on what the store holds.
        let needs_bounds = p.unsupported.is_some()
            || super::job::native::applies(&self.cfg, &self.supervisor, &p.id)
            || (self.cfg.heal.enabled && since.is_some_and(|s| s > 0));
        if needs_bounds {
            let query = crate::store::StoreQuery::Bounds { series_id: p.id.as_str().to_string() };
            self.read_store(query, ReadFor::Subscribe(p));
        } else {
            self.finish_subscribe(p, None);
        }
    }

    /// The second half of a subscribe, once the series' stored bounds
    /// (`(first, head)`) are known, when they matter.
    pub(super) fn finish_subscribe(&mut self, p: PendingSub, bounds: Option<(Option<i64>, Option<i64>)>) {
        let PendingSub { client, idx, id, since, supports_batch, full, unsupported, counted } = p;
        if !self.hub.contains(client) {
            if counted {
                self.release_series(&id);
            }
            return;
        }
        if let Some(msg) = unsupported {
            if !bounds.is_some_and(|(_, head)| head.is_some()) {
                self.counters.client_bad_requests += 1;
                let frame = wire::error_frame("bad_request", &msg, None);
                return self.hub.send_to(client, frame, &mut self.outputs);
            }
        }
        let first = bounds.and_then(|(first, _)| first);
        // A derived series' own history comes from the exchange's klines of
        // its interval; anything else heals its base series.
        let hold = if super::job::native::applies(&self.cfg, &self.supervisor, &id) {
            self.with_jobs(|jobs, cx| jobs.native_fill(cx, &id, since, first))
        } else {
            self.with_jobs(|jobs, cx| jobs.catchup_heal(cx, &id, since, first))
        };
        let result = self.hub.subscribe(
            client,
            idx,
            since,
            supports_batch,
            full,
            hold,
            self.now.as_secs(),
            &self.series,
            &mut self.outputs,
        );
        match result {
            Ok(report) => {
                self.counters.subscribes += 1;
                self.log(
                    LogLevel::Debug,
                    format!(
                        "market_ws_subscribe_handled client={client} series_id={} since={since:?} supports_batch={supports_batch}{} effective_since={:?} held_for_heal={}",
                        id,
                        if full { " fields=full" } else { "" },
                        report.cursor,
                        report.held
                    ),
                );
            }
            Err(SubscribeError::UnknownClient) => {}
            Err(SubscribeError::TooManySubscriptions(_)) => {}
        }
    }

    /// A new subscriber or reader for `id`: refused when it can never be
    /// ingested (unsupported, or a symbol its market does not list, which then
    /// costs no job, stream or REST), else the supervisor's answer.
    pub(super) fn admit_series(&mut self, id: &SeriesId) -> SubscribeOutcome {
        if let Err(msg) = self.supervisor.validate(id) {
            return SubscribeOutcome::Unsupported(msg);
        }
        if let Err(msg) = self.listings.check(id) {
            self.counters.unknown_symbol_rejects += 1;
            return SubscribeOutcome::Unsupported(msg);
        }
        self.supervisor.subscribe(id, self.now, &mut self.effects)
    }

    /// `Some(detail)` when `series_id`'s market is known not to list its
    /// symbol (`GET /api/market/candles` answers 404 with it).
    pub fn unlisted_symbol(&self, series_id: &str) -> Option<String> {
        let id = SeriesId::parse(series_id).ok()?;
        self.listings.check(&id).err()
    }

    pub(super) fn unsubscribe(&mut self, client: ClientId, raw: &str) {
        let Ok(id) = SeriesId::parse(raw) else { return };
        let Some(idx) = self.series.lookup(id.as_str()) else { return };
        self.drop_pending_subs(|p| p.client == client && p.idx == idx);
        if self.hub.unsubscribe(client, idx) {
            self.release_series(&id);
        }
    }

    /// Subscriptions still waiting for a store read that their client gave
    /// up: the answer is ignored, the supervisor's count released.
    pub(super) fn drop_pending_subs(&mut self, which: impl Fn(&PendingSub) -> bool) {
        let ops: Vec<StoreOp> = self.store_ops.pending_subs().filter(|(_, p)| which(p)).map(|(op, _)| *op).collect();
        for op in ops {
            if let Some(ReadFor::Subscribe(p)) = self.store_ops.take_read(op) {
                if p.counted {
                    self.release_series(&p.id);
                }
            }
        }
    }

    pub(super) fn on_client_gone(&mut self, client: ClientId) {
        self.drop_pending_subs(|p| p.client == client);
        let released = self.hub.disconnect(client);
        for idx in released {
            let id = self.series.get(idx).id.clone();
            self.release_series(&id);
        }
    }
}
