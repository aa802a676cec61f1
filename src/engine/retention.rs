//! Retention (`--retention 1m=90d,5m=2y`): candles of a timeframe older than
//! its limit are deleted from the store in small batches. A pass runs at
//! start and then every [`RetentionConfig::every`]; it works through the
//! timeframes one batch at a time — each batch is one store effect
//! (`Output::Persist` with a `prune`), the next is emitted only when the
//! previous one is answered, and the shell carries effects out in bounded
//! slices, so pruning a large backlog never holds the loop for more than one
//! batch. A batch that deleted its full size is followed by another of the
//! same timeframe; a short one moves to the next timeframe.
//!
//! Owns the rules, the pass's progress and its figures (for metrics). Never
//! touches a store and never reads a clock: the cutoff is the engine's `now`
//! minus the limit, and a replay prunes at the same points.

use super::store_ops::WriteFor;
use super::{Engine, LogLevel};
use crate::store::{PersistOutcome, Prune, StoreWrite};
use crate::time::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Keep `keep_s` seconds of candles of `timeframe` (as series ids spell it, e.g. `1m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    pub timeframe: String,
    pub keep_s: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    /// Empty: keep everything (no pass ever runs).
    pub keep: Vec<RetentionRule>,
    /// Time between the end of one pass and the start of the next.
    pub every: Duration,
    /// Most candles one batch deletes.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { keep: Vec::new(), every: Duration::from_secs(600), batch: 500 }
    }
}

/// Parses `1m=90d,5m=2y` (units of the limit: s, m, h, d, w, y = 365 d;
/// empty = no retention). A timeframe given twice is an error.
pub fn parse_retention(s: &str) -> Result<Vec<RetentionRule>, String> {
    let mut out: Vec<RetentionRule> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (tf, keep) = item.split_once('=').ok_or_else(|| format!("'{item}' is not TIMEFRAME=AGE (e.g. 1m=90d)"))?;
        let tf = crate::model::Timeframe::parse(tf.trim()).map_err(|e| format!("'{item}': {e}"))?;
        let keep_s = parse_age(keep.trim()).map_err(|e| format!("'{item}': {e}"))?;
        let timeframe = tf.to_string();
        if out.iter().any(|r| r.timeframe == timeframe) {
            return Err(format!("timeframe {timeframe} is given twice"));
        }
        out.push(RetentionRule { timeframe, keep_s });
    }
    Ok(out)
}

fn parse_age(s: &str) -> Result<u64, String> {
    let unit = s.chars().last().ok_or("empty age")?;
    let mult: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'y' => 365 * 86_400,
        _ => return Err(format!("age '{s}' needs a unit: s, m, h, d, w or y")),
    };
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| format!("age '{s}' is not a whole number and a unit"))?;
    let secs = n.checked_mul(mult).ok_or_else(|| format!("age '{s}' is too large"))?;
    if secs == 0 {
        return Err(format!("age '{s}' must be greater than 0"));
    }
    Ok(secs)
}

/// A pass's progress and the figures since start.
#[derive(Debug, Default)]
pub(super) struct Retention {
    /// When the next pass starts; `None` while one runs or none is configured.
    next_at: Option<Timestamp>,
    /// Rules (indices) still to prune in this pass, the current one first.
    todo: VecDeque<usize>,
    running: bool,
    pass_pruned: u64,
    pub figures: RetentionFigures,
}

/// What retention has done (see [`Engine::retention_figures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionFigures {
    pub pruned_candles: u64,
    pub batches: u64,
    pub failures: u64,
    /// When the last pass ended.
    pub last_pass_at: Option<Timestamp>,
}

impl Retention {
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.next_at
    }
}

impl Engine {
    /// Schedules the first pass (at start, or when a reload adds rules).
    pub(super) fn retention_arm(&mut self) {
        // Nodes that only serve (role `read`) leave pruning to the ingesting ones.
        let prunes = self.supervisor.ingest_jobs_enabled() && !self.cfg.retention.keep.is_empty();
        let r = &mut self.retention;
        if prunes && !r.running && r.next_at.is_none() {
            r.next_at = Some(self.now);
        }
    }

    /// New rules (`SIGHUP`): a pass starts now when there are rules.
    pub(super) fn retention_reload(&mut self, keep: Vec<super::retention::RetentionRule>) {
        if keep == self.cfg.retention.keep {
            return;
        }
        self.cfg.retention.keep = keep;
        self.retention.next_at = None;
        self.retention_arm();
    }

    /// The timer: starts a pass when one is due.
    pub(super) fn retention_timeout(&mut self) {
        if !self.retention.next_at.is_some_and(|t| t <= self.now) {
            return;
        }
        self.retention.next_at = None;
        self.retention.running = true;
        self.retention.pass_pruned = 0;
        self.retention.todo = (0..self.cfg.retention.keep.len()).collect();
        self.prune_next();
    }

    fn prune_next(&mut self) {
        if self.is_shut_down() {
            self.retention.running = false;
            self.retention.todo.clear();
            return;
        }
        let Some(&rule) = self.retention.todo.front() else {
            let pruned = self.retention.pass_pruned;
            self.retention.running = false;
            self.retention.figures.last_pass_at = Some(self.now);
            self.retention.next_at = Some(self.now.add(self.cfg.retention.every));
            let level = if pruned > 0 { LogLevel::Info } else { LogLevel::Debug };
            self.log(level, format!("retention_pass_done pruned_candles={pruned}"));
            return;
        };
        let Some(r) = self.cfg.retention.keep.get(rule) else {
            self.retention.todo.pop_front();
            return self.prune_next();
        };
        let before = self.now.as_secs().saturating_sub(i64::try_from(r.keep_s).unwrap_or(i64::MAX));
        let prune = Prune { timeframe: r.timeframe.clone(), before, limit: self.cfg.retention.batch.max(1) };
        self.write_store(StoreWrite { prune: Some(prune), ..StoreWrite::default() }, WriteFor::Prune(rule));
    }

    /// A batch's answer: the next batch (same timeframe when this one was
    /// full), or the pass ends. A failure ends the pass; the next one runs
    /// after the usual interval.
    pub(super) fn on_pruned(&mut self, rule: usize, result: PersistOutcome) {
        let tf = self.cfg.retention.keep.get(rule).map_or_else(String::new, |r| r.timeframe.clone());
        match result {
            PersistOutcome::Stored { pruned, .. } => {
                let f = &mut self.retention.figures;
                f.pruned_candles += pruned;
                f.batches += 1;
                self.retention.pass_pruned += pruned;
                self.log(LogLevel::Debug, format!("retention_batch timeframe={tf} pruned_candles={pruned}"));
                if pruned < self.cfg.retention.batch.max(1) as u64 {
                    self.retention.todo.pop_front();
                }
                self.prune_next();
            }
            PersistOutcome::Failed(e) => {
                self.retention.figures.failures += 1;
                self.counters.store_write_errors += 1;
                self.retention.todo.clear();
                self.retention.running = false;
                self.retention.next_at = Some(self.now.add(self.cfg.retention.every));
                let every = self.cfg.retention.every.as_millis() / 1000;
                self.log(LogLevel::Warn, format!("retention_prune_failed timeframe={tf} error={e:?} retry_in_s={every}"));
            }
        }
    }

    /// Retention's figures since start (metrics).
    pub fn retention_figures(&self) -> RetentionFigures {
        self.retention.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_units_and_refuse_nonsense() {
        let r = parse_retention(" 1m=90d, 5m=2y,1h=1w ").unwrap();
        assert_eq!(r[0], RetentionRule { timeframe: "1m".into(), keep_s: 90 * 86_400 });
        assert_eq!(r[1].keep_s, 2 * 365 * 86_400);
        assert_eq!(r[2], RetentionRule { timeframe: "1h".into(), keep_s: 7 * 86_400 });
        assert!(parse_retention("").unwrap().is_empty());
        for bad in ["1m", "1m=", "1m=90", "1m=0d", "1x=1d", "1m=1d,1m=2d", "1m=-1d", "1m=99999999999999999y"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
