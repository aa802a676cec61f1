//! The shell's bus host (issue #13): the node's Redis connections, in the
//! loop's own `Poll`, for its role.
//! - `ingest`: [`publisher::Publisher`] — the leader lease and the fenced
//!   closed-candle stream (plus forming updates).
//! - `read`: [`reader::Reader`] — `XREAD` of both streams from the last id,
//!   hole detection, handing entries to the core as inputs.
//!
//! Keys, under `--bus-prefix P`: `P:closed`, `P:forming` and `P:control`
//! (streams: closes, forming updates, the leader's refusals), `P:leader` and
//! `P:leader:fence` (the lease), `P:demand` (the read nodes' names) and
//! `P:demand:NODE` (a read node's wanted series, newline-separated, with a
//! TTL of three lease periods it renews every period: a dead node's demand
//! lapses). Entry fields: [`codec`].
//!
//! Owns the choice of side and the status views. Never decides what an
//! entry means (the core does) and never blocks.

pub mod codec;
pub mod link;
pub mod publisher;
pub mod reader;

use link::BusSide;

use crate::cli::run_config::BusSettings;
use crate::engine::supervisor::Role;
use crate::engine::{Input, LogLevel, Output};
use mio::{Registry, Token};
use std::time::Instant;

/// The bus connection's token in the loop's `Poll`.
pub const BUS_TOKEN: Token = Token(usize::MAX - 20);

pub enum BusHost {
    Ingest(Box<publisher::Publisher>),
    Read(Box<reader::Reader>),
}

impl BusHost {
    /// The host for `role` (`None` for hybrid). Resolves the Redis host once.
    pub fn new(role: Role, bus: &BusSettings, node: &str, now: Instant) -> Result<Option<BusHost>, String> {
        use std::net::ToSocketAddrs;
        if role == Role::Hybrid {
            return Ok(None);
        }
        let r = &bus.redis;
        let addr = (r.host.as_str(), r.port)
            .to_socket_addrs()
            .map_err(|e| format!("--bus-url {r}: cannot resolve {}: {e}", r.host))?
            .next()
            .ok_or_else(|| format!("--bus-url {r}: {} resolves to no address", r.host))?;
        Ok(Some(match role {
            Role::Read => {
                BusHost::Read(Box::new(reader::Reader::new(r.clone(), addr, BUS_TOKEN, &bus.prefix, node, bus.lease_ms, now)))
            }
            _ => BusHost::Ingest(Box::new(publisher::Publisher::new(
                r.clone(),
                addr,
                BUS_TOKEN,
                &bus.prefix,
                node,
                bus.lease_ms,
                bus.maxlen,
                now,
            ))),
        }))
    }

    fn side(&self) -> &dyn BusSide {
        match self {
            BusHost::Ingest(p) => p.as_ref(),
            BusHost::Read(r) => r.as_ref(),
        }
    }

    fn side_mut(&mut self) -> &mut dyn BusSide {
        match self {
            BusHost::Ingest(p) => p.as_mut(),
            BusHost::Read(r) => r.as_mut(),
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.side().owns(token)
    }

    pub fn on_event(&mut self, readable: bool, writable: bool, now: Instant, registry: &Registry) {
        self.side_mut().on_event(readable, writable, now, registry)
    }

    pub fn pump(&mut self, now: Instant, registry: &Registry) {
        self.side_mut().pump(now, registry)
    }

    pub fn offer(&mut self, out: Output) {
        self.side_mut().offer(out)
    }

    #[must_use = "drain until None"]
    pub fn poll_input(&mut self) -> Option<Input> {
        self.side_mut().poll_input()
    }

    #[must_use = "drain until None"]
    pub fn poll_note(&mut self) -> Option<(LogLevel, String)> {
        self.side_mut().poll_note()
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        self.side().next_wakeup()
    }

    /// Ingest: the fence while this node leads.
    pub fn fence(&self) -> Option<u64> {
        match self {
            BusHost::Ingest(p) => p.fence(),
            BusHost::Read(_) => None,
        }
    }

    /// Ingest: why this node must stop now (lease lost; see `publisher`).
    pub fn fatal(&self) -> Option<&str> {
        match self {
            BusHost::Ingest(p) => p.fatal(),
            BusHost::Read(_) => None,
        }
    }

    pub fn connected(&self) -> bool {
        self.side().connected()
    }

    /// The `bus` object of `/health`.
    pub fn health(&self, now: Instant) -> serde_json::Value {
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match self {
            BusHost::Ingest(p) => {
                let s = &p.stats;
                serde_json::json!({
                    "connected": p.connected(),
                    "leader": p.fence().is_some(),
                    "fence": p.fence(),
                    "lease_holder": s.holder.as_ref().map(|(o, _)| o.clone()),
                    "leader_for_s": p.leader_since.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    "backlog_entries": p.backlog(),
                    "entries_published": s.entries_published,
                    "candles_published": s.candles_published,
                    "candles_dropped": s.candles_dropped,
                    "forming_sent": s.forming_sent,
                    "forming_dropped": s.forming_dropped,
                    "demand": p.demand_view(),
                    "last_error": s.last_error,
                })
            }
            BusHost::Read(r) => {
                let s = &r.stats;
                let lag_s = (s.last_handled_unix_ms > 0).then(|| s.last_handled_unix_ms.saturating_sub(s.last_entry_ms) as f64 / 1000.0);
                serde_json::json!({
                    "connected": r.connected(),
                    "last_id": r.last_id().map(|i| i.to_string()),
                    "entries": s.entries,
                    "candles": s.candles,
                    "forming": s.forming,
                    "resyncs": s.resyncs,
                    "demand_series": r.demand_len(),
                    "refusals": s.refusals,
                    "bad_entries": s.bad_entries,
                    "lag_s": lag_s,
                    "lag_entries": s.lag_entries,
                    "since_last_entry_s": (s.last_handled_unix_ms > 0).then(|| unix_ms.saturating_sub(s.last_handled_unix_ms) as f64 / 1000.0),
                    "last_error": s.last_error,
                })
            }
        }
    }
}
