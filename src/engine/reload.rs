//! `SIGHUP` in the core: [`Reloadable`] is what may change without a restart
//! (the whitelist and the limits), carried by `Input::Reload` so a journal
//! replays a reload exactly; [`Engine::reload`] applies it — the supervisor
//! starts pins added and hands pins removed to the reaper as on-demand jobs
//! held by their current subscribers; the hub and the REST scheduler take
//! their new limits for every later decision.
//!
//! Owns the reloadable values and their application. Never reads a file: the
//! shell re-reads the configuration layers and refuses a bad file before
//! anything reaches the core.

use super::{Engine, LogLevel};
use crate::model::SeriesId;
use crate::time::Duration;
use serde::{Deserialize, Serialize};

/// The settings a running engine takes on `SIGHUP` (journaled with `Input::Reload`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloadable {
    /// The whitelist, as configured (entries the supervisor cannot ingest
    /// are rejected as at start).
    pub pins: Vec<String>,
    pub max_ondemand_jobs: usize,
    pub idle_ttl_ms: u64,
    pub catchup_limit: usize,
    pub client_max_backlog_bytes: usize,
    pub max_subscriptions_per_client: usize,
    /// Applies to clients that connect after the reload.
    pub max_client_messages_per_s: u32,
    pub rest_weight_budget_spot: u32,
    pub rest_weight_budget_futures: u32,
    /// `--retention`'s rules (a pass starts at once when they change).
    #[serde(default)]
    pub retention: Vec<super::retention::RetentionRule>,
}

impl Reloadable {
    /// The reloadable part of a validated engine configuration.
    pub fn of(cfg: &super::EngineConfig) -> Reloadable {
        Reloadable {
            pins: cfg.supervisor.whitelist.iter().map(|s| s.as_str().to_string()).collect(),
            max_ondemand_jobs: cfg.supervisor.max_ondemand_jobs,
            idle_ttl_ms: cfg.supervisor.idle_ttl.as_nanos() / 1_000_000,
            catchup_limit: cfg.hub.catchup_limit,
            client_max_backlog_bytes: cfg.hub.max_backlog_bytes,
            max_subscriptions_per_client: cfg.hub.max_subscriptions_per_client,
            max_client_messages_per_s: cfg.hub.max_messages_per_s,
            rest_weight_budget_spot: cfg.rest.weight_budget_spot,
            rest_weight_budget_futures: cfg.rest.weight_budget_futures,
            retention: cfg.retention.keep.clone(),
        }
    }
}

fn names(ids: &[SeriesId]) -> String {
    let v: Vec<&str> = ids.iter().map(SeriesId::as_str).collect();
    v.join(",")
}

impl Engine {
    /// Applies `r` (see the module comment) and logs one `config_reloaded`
    /// line with the pins added and removed.
    pub(super) fn reload(&mut self, r: Reloadable) {
        let mut whitelist = Vec::new();
        let mut unparsable = Vec::new();
        for p in &r.pins {
            match SeriesId::parse(p) {
                Ok(id) => whitelist.push(id),
                Err(e) => unparsable.push(format!("{p}: {e}")),
            }
        }
        // Zero values are refused by the shell's validation; floors keep the core safe anyway.
        let idle_ttl = Duration::from_millis(r.idle_ttl_ms);
        self.cfg.supervisor.whitelist = whitelist.clone();
        self.cfg.supervisor.max_ondemand_jobs = r.max_ondemand_jobs;
        self.cfg.supervisor.idle_ttl = idle_ttl;
        let holders = {
            let series = &self.series;
            let sup = &self.supervisor;
            let hub = &self.hub;
            let count = move |base: &SeriesId| -> i64 {
                (0..series.len())
                    .map(|i| super::series::SeriesIdx(i as u32))
                    .filter(|idx| &sup.normalize(&series.get(*idx).id) == base)
                    .map(|idx| hub.subscriber_count(idx) as i64)
                    .sum()
            };
            // Counted before the supervisor changes (its normalization does not).
            let mut counts = std::collections::BTreeMap::new();
            for id in self.cfg.supervisor.whitelist.iter().chain(self.supervisor.config().whitelist.iter()) {
                let base = sup.normalize(id);
                let n = count(&base);
                counts.insert(base, n);
            }
            // Subscribes still waiting for their store read will hold the job too
            // (they never add a reference to a pinned series when they complete).
            for (_, p) in self.store_ops.pending_subs().filter(|(_, p)| p.counted) {
                if let Some(n) = counts.get_mut(&sup.normalize(&p.id)) {
                    *n += 1;
                }
            }
            counts
        };
        let lookup = |base: &SeriesId| holders.get(base).copied().unwrap_or(0);
        let (added, removed) =
            self.supervisor.reload(whitelist, r.max_ondemand_jobs, idle_ttl, self.now, &lookup, &mut self.effects);
        self.apply_effects();
        self.cfg.hub.catchup_limit = r.catchup_limit.max(1);
        self.cfg.hub.max_backlog_bytes = r.client_max_backlog_bytes.max(1);
        self.cfg.hub.max_subscriptions_per_client = r.max_subscriptions_per_client.max(1);
        self.cfg.hub.max_messages_per_s = r.max_client_messages_per_s;
        self.hub.set_config(self.cfg.hub.clone());
        self.cfg.rest.weight_budget_spot = r.rest_weight_budget_spot.max(1);
        self.cfg.rest.weight_budget_futures = r.rest_weight_budget_futures.max(1);
        self.rest.set_budgets(self.cfg.rest.weight_budget_spot, self.cfg.rest.weight_budget_futures);
        self.retention_reload(r.retention);
        let rejected: Vec<String> = self
            .supervisor
            .whitelist_rejections()
            .iter()
            .map(|(s, why)| format!("{}: {why}", s.as_str()))
            .chain(unparsable)
            .collect();
        let mut line = format!(
            "config_reloaded pins_added={:?} pins_removed={:?} max_ondemand_jobs={} idle_ttl_ms={}",
            names(&added),
            names(&removed),
            r.max_ondemand_jobs,
            r.idle_ttl_ms
        );
        if !rejected.is_empty() {
            line.push_str(&format!(" pins_rejected={:?}", rejected.join("; ")));
        }
        self.log(LogLevel::Info, line);
    }
}
