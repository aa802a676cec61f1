//! [`Counters`]: what the engine has seen, in items (never time), for
//! `/metrics`, `/health` and tests.
//!
//! Each plain counter is declared once, in the [`counters!`] list below,
//! with its Prometheus name and help; the struct and [`Counters::each`] are
//! generated from that list, so a counter cannot be added without its
//! metric. The shell's exposition (`shell::api::metrics`) walks `each`; the
//! labelled rejects and the latency histogram are the two families written
//! by hand. Owns the counting; never formats text and never reads a clock.

use super::histogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// One plain counter as `/metrics` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSample {
    /// The family name without `klinegate_` (families may repeat, with labels).
    pub metric: &'static str,
    pub help: &'static str,
    /// One label, for families split by a dimension (`frames_sent_total{kind}`).
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
}

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident => $metric:literal $([$lk:literal = $lv:literal])?, $help:literal; )*) => {
        /// Monotonic counters, in items (never time), for metrics and tests.
        #[derive(Clone, Debug, Default, PartialEq, Serialize)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $field: u64, )*
            /// Rejected exchange frames by `FrameError::kind()` (plus
            /// `unknown_stream`): `upstream_rejects_total{kind}`.
            pub upstream_rejects_by_kind: BTreeMap<&'static str, u64>,
            /// Exchange event time (`E`) of a kline frame → the first client
            /// frame it caused being queued (see `Engine::observe_queue_latency`).
            pub exchange_to_queue: Histogram,
        }

        impl Counters {
            /// Every plain counter, in declaration order (a family's samples
            /// are adjacent).
            pub fn each(&self) -> Vec<CounterSample> {
                vec![$( CounterSample {
                    metric: $metric,
                    help: $help,
                    label: counters!(@label $($lk, $lv)?),
                    value: self.$field,
                }, )*]
            }
        }
    };
    (@label) => { None };
    (@label $k:literal, $v:literal) => { Some(($k, $v)) };
}

counters! {
    inputs => "engine_inputs_total", "Inputs handled by the engine.";
    upstream_frames => "upstream_frames_total", "Exchange frames the engine handled.";
    kline_frames => "upstream_kline_frames_total", "Exchange kline frames parsed.";
    /// Every rejected exchange frame (by kind: `upstream_rejects_by_kind`).
    upstream_rejects => "upstream_frames_rejected_total", "Exchange frames rejected, whatever the reason.";
    stream_stalls => "stream_stalls_total", "Live kline streams resubscribed after no frame for --stream-stall-s.";
    stale_forming => "stale_forming_total", "Forming updates older than what was already sent.";
    stale_closed => "stale_closed_total", "Closed candles at or before the series head, dropped.";
    closed_accepted => "closed_accepted_total", "Closed candles accepted for persistence.";
    flushes => "flushes_total", "Closed-buffer flushes to the store.";
    candles_persisted => "candles_persisted_total", "Candles written to the store.";
    store_write_errors => "store_write_errors_total", "Failed store writes (retried from the backlog).";
    store_read_errors => "store_read_errors_total", "Failed store reads.";
    closed_dropped_backlog_full => "closed_dropped_backlog_full_total", "Closed candles dropped because the store backlog was full.";
    frames_forming => "frames_sent_total" ["kind" = "forming"], "Candle frames queued to clients, by kind.";
    frames_closed => "frames_sent_total" ["kind" = "closed"], "Candle frames queued to clients, by kind.";
    forming_coalesced => "forming_coalesced_total", "Forming updates replaced by a newer one before sending.";
    gaps_sent => "gaps_sent_total", "Gap notices sent to clients.";
    catchup_candles => "catchup_candles_total", "Candles sent as subscribe catch-up.";
    subscribes => "subscribes_total", "Subscriptions handled.";
    client_bad_requests => "client_bad_requests_total", "Client messages refused as malformed.";
    client_limit_rejects => "client_limit_rejects_total", "Subscribes refused by the per-connection limit.";
    /// Client messages refused for going over the per-client message rate.
    client_messages_rate_limited => "client_messages_rate_limited_total", "WebSocket client messages dropped for exceeding --max-client-messages-per-s.";
    capacity_rejects => "capacity_rejects_total", "Subscribes refused for on-demand job capacity.";
    slow_consumer_closes => "slow_consumer_closes_total", "Clients closed for falling too far behind.";
    queue_drops => "queue_drops_total", "Frames dropped from client queues.";
    jobs_started => "jobs_started_total", "Ingest jobs started.";
    jobs_stopped => "jobs_stopped_total", "Ingest jobs stopped.";
    heals_started => "heals_started_total", "History heals started (first visit, restart, reconnect, late close, catch-up).";
    /// Heals that ended with every page fetched / with an error.
    heals_succeeded => "heals_done_total", "History heals that ended with every page fetched.";
    heals_failed => "heals_failed_total", "History heals that ended with an error (the range is retried later).";
    candles_healed => "candles_healed_total", "Candles filled by healing.";
    late_close_fetches => "late_close_fetches_total", "REST fetches for a closing frame that came late.";
    late_closes_upserted => "late_closes_upserted_total", "Closed candles filled in by a late-close fetch.";
    rest_requests => "rest_requests_total", "Exchange REST requests sent (healing, late closes).";
    rest_failures => "rest_failures_total", "Exchange REST requests that got no answer (connect, DNS, TLS, timeout).";
    rest_rows_skipped => "rest_rows_skipped_total", "Exchange REST kline rows skipped as malformed.";
    /// Subscribes and reads refused because the market does not list the symbol.
    unknown_symbol_rejects => "unknown_symbol_rejects_total", "Subscribes and candle reads refused because the market does not list the symbol.";
    /// Jobs ended because their symbol turned out not to be listed (`-1121` or the list).
    jobs_ended_unlisted => "jobs_ended_unlisted_total", "Ingest jobs ended because the exchange does not list their symbol.";
    /// Closed candles handed to the bus (ingest).
    bus_closed_out => "bus_closed_published_total", "Closed candles handed to the bus after they were stored.";
    /// Closed candles taken from the bus and published (read).
    bus_closed_in => "bus_closed_received_total", "Closed candles taken from the bus and published.";
    /// Bus candles dropped as already delivered (read).
    bus_closed_dropped => "bus_closed_duplicates_total", "Closed candles from the bus dropped as already delivered.";
    bus_forming_out => "bus_forming_emitted_total", "Forming updates the core handed to the bus host.";
    bus_resyncs => "bus_resyncs_total", "Times the subscriptions read what the bus lost from the store.";
    bus_remote_demands => "bus_remote_demands_total", "Read-node demands the leader admitted or refused.";
    bus_remote_refusals => "bus_remote_refusals_total", "Read-node demands refused for capacity.";
}

impl Counters {
    pub fn count_reject(&mut self, kind: &'static str) -> u64 {
        self.upstream_rejects += 1;
        let n = self.upstream_rejects_by_kind.entry(kind).or_insert(0);
        *n += 1;
        *n
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_counter_field_has_one_sample_and_families_are_adjacent_with_one_help() {
        let c = Counters { flushes: 7, frames_closed: 3, ..Counters::default() };
        let each = c.each();
        // Every u64 field of the JSON view (the struct) is in `each`.
        let fields = c.to_json().as_object().unwrap().iter().filter(|(_, v)| v.is_u64()).count();
        assert_eq!(each.len(), fields);
        assert_eq!(each.iter().find(|s| s.metric == "flushes_total").unwrap().value, 7);
        let closed = each.iter().find(|s| s.label == Some(("kind", "closed"))).unwrap();
        assert_eq!((closed.metric, closed.value), ("frames_sent_total", 3));
        // A family's samples are adjacent and share one help text.
        let mut seen = BTreeSet::new();
        for (i, s) in each.iter().enumerate() {
            let continues = i > 0 && each[i - 1].metric == s.metric;
            if continues {
                assert_eq!(each[i - 1].help, s.help, "{}", s.metric);
            } else {
                assert!(seen.insert(s.metric), "{} is split in two runs", s.metric);
            }
            assert!(s.metric.ends_with("_total"), "{} is a counter", s.metric);
        }
    }
}
