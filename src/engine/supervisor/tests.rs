//! Tests of the supervisor: one per row of its subscribe/unsubscribe/reaper table,
//! then the capacity, reaper and derived-target policies.

use super::*;
use crate::engine::guardrail::{BreakerState, GuardrailConfig};

fn sid(s: &str) -> SeriesId {
    SeriesId::parse(s).unwrap()
}

fn t(secs: f64) -> Timestamp {
    Timestamp(Duration::from_secs_f64(secs).as_nanos())
}

const BTC: &str = "binance:futures:BTC/USDT:1m";
const ETH: &str = "binance:futures:ETH/USDT:1m";
const XRP: &str = "binance:futures:XRP/USDT:1m";

fn start(s: &str) -> Effect {
    Effect::Start { series: sid(s) }
}

fn stop(s: &str, reason: StopReason) -> Effect {
    Effect::Stop { series: sid(s), reason }
}

fn ondemand(max_jobs: usize) -> SupervisorConfig {
    SupervisorConfig { max_ondemand_jobs: max_jobs, ..SupervisorConfig::default() }
}

fn no_guardrail(cfg: SupervisorConfig) -> SupervisorConfig {
    SupervisorConfig {
        guardrail: GuardrailConfig { enabled: false, ..GuardrailConfig::default() },
        ..cfg
    }
}

fn whitelisted(list: &[&str], pin: bool) -> SupervisorConfig {
    SupervisorConfig {
        whitelist: list.iter().map(|s| sid(s)).collect(),
        whitelist_ingest_enabled: pin,
        ..SupervisorConfig::default()
    }
}

/// subscribe and return (outcome, effects).
fn sub(sup: &mut Supervisor, s: &str, now: f64) -> (SubscribeOutcome, Vec<Effect>) {
    let mut out = Vec::new();
    let r = sup.subscribe(&sid(s), t(now), &mut out);
    (r, out)
}

fn tick(sup: &mut Supervisor, now: f64) -> Vec<Effect> {
    let mut out = Vec::new();
    sup.on_tick(t(now), &mut out);
    out
}

fn rc(sup: &Supervisor, s: &str) -> i64 {
    sup.job(&sid(s)).unwrap().refcount
}

// ---- the job transition table, row by row ----

#[test]
fn row1_start_whitelist_pins_with_refcount_minus_one() {
    let mut sup = Supervisor::new(whitelisted(&[BTC, BTC], true));
    let mut out = Vec::new();
    sup.start_whitelist(t(1.0), &mut out);
    assert_eq!(out, vec![start(BTC)]);
    assert_eq!(rc(&sup, BTC), -1);
    assert!(sup.job(&sid(BTC)).unwrap().pinned);
    out.clear();
    sup.start_whitelist(t(2.0), &mut out);
    assert!(out.is_empty(), "idempotent");
}

#[test]
fn row2_subscribe_to_pinned_keeps_refcount() {
    let mut sup = Supervisor::new(whitelisted(&[BTC], true));
    sup.start_whitelist(t(1.0), &mut Vec::new());
    let (r, out) = sub(&mut sup, BTC, 2.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert!(out.is_empty());
    assert_eq!(rc(&sup, BTC), -1);
    assert_eq!(sup.jobs_len(), 1);
}

#[test]
fn row3_read_role_accepts_without_job() {
    let mut sup =
        Supervisor::new(SupervisorConfig { role: Role::Read, ..whitelisted(&[BTC], true) });
    let mut out = Vec::new();
    sup.start_whitelist(t(0.0), &mut out);
    let (r, eff) = sub(&mut sup, ETH, 1.0);
    sup.on_tick(t(100.0), &mut out);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert!(out.is_empty() && eff.is_empty());
    assert_eq!(sup.jobs_len(), 0);
    let snap = sup.snapshot(t(1.0));
    assert_eq!(snap["ingest_role"], "read");
    assert_eq!(snap["ingest_jobs_enabled"], false);
    assert_eq!(snap["ingest_role_guard_enabled"], true);
}

#[test]
fn row4_absent_with_room_starts_refcount_one() {
    let mut sup = Supervisor::new(ondemand(2));
    let (r, out) = sub(&mut sup, BTC, 1.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert_eq!(out, vec![start(BTC)]);
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.state, job.running), (1, JobState::Starting, true));
    assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["source"], "binance_ws");
}

#[test]
fn row4_absent_when_full_evicts_oldest_idle() {
    let mut sup = Supervisor::new(ondemand(2));
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, ETH, 0.0);
    sup.unsubscribe(&sid(ETH), t(10.0)); // idle since 10
    sup.unsubscribe(&sid(BTC), t(30.0)); // idle since 30
    let (r, out) = sub(&mut sup, XRP, 40.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert_eq!(out, vec![stop(ETH, StopReason::Evicted), start(XRP)]);
    assert!(sup.job(&sid(ETH)).is_none());
    assert_eq!(sup.jobs_len(), 2);
}

#[test]
fn row5_absent_when_full_without_idle_is_capacity() {
    let mut sup = Supervisor::new(ondemand(1));
    assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
    let (r, out) = sub(&mut sup, ETH, 1.0);
    assert_eq!(r, SubscribeOutcome::Capacity);
    assert!(out.is_empty());
    assert!(sup.job(&sid(ETH)).is_none());
}

#[test]
fn row6_unstartable_series_is_rejected_up_front() {
    // The reference crashed in start_job and answered `capacity`.
    let mut sup = Supervisor::new(ondemand(0));
    let (r, out) = sub(&mut sup, "kraken:spot:BTC/USD:1m", 0.0);
    assert_eq!(
        r,
        SubscribeOutcome::Unsupported(
            "unsupported exchange: 'kraken' (supported: binance)".to_string()
        )
    );
    assert!(out.is_empty());
    assert_eq!(sup.jobs_len(), 0);
}

#[test]
fn row7_subscribe_existing_increments_and_clears_idle() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(1.0)));
    let (_, out) = sub(&mut sup, BTC, 2.0);
    assert!(out.is_empty());
    let (_, out) = sub(&mut sup, BTC, 3.0);
    assert!(out.is_empty());
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.last_zero_at), (2, None));
}

#[test]
fn row8_dead_job_with_open_breaker_is_accepted_but_not_restarted() {
    // Reference answered `capacity`; we keep the reference and retry later.
    let cfg = SupervisorConfig {
        guardrail: GuardrailConfig {
            crash_budget: 1,
            open_cooldown: Duration::from_secs(30),
            ..GuardrailConfig::default()
        },
        ..ondemand(0)
    };
    let mut sup = Supervisor::new(cfg);
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(1.0), "connection reset");
    let (r, out) = sub(&mut sup, BTC, 2.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert!(out.is_empty());
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.state, job.crashes), (2, JobState::Dead, 1));
    assert_eq!(job.next_retry_at, Some(t(31.0)));
}

#[test]
fn row9_dead_job_resubscribe_keeps_refcount_and_crashes() {
    let mut sup = Supervisor::new(no_guardrail(ondemand(0)));
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, BTC, 0.0);
    sup.job_running(&sid(BTC), t(0.5));
    sup.job_failed(&sid(BTC), t(1.0), "eof");
    assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["running"], false);
    // Within the fixed 2 s wait: accepted, restart deferred.
    let (r, out) = sub(&mut sup, BTC, 2.0);
    assert_eq!((r, out), (SubscribeOutcome::Accepted, vec![]));
    // After it: the subscribe itself restarts the job.
    let (r, out) = sub(&mut sup, BTC, 3.5);
    assert_eq!((r, out), (SubscribeOutcome::Accepted, vec![start(BTC)]));
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.crashes, job.running), (4, 1, true));
    assert_eq!(job.last_crash_at, Some(t(1.0)));
    assert_eq!(sup.jobs_len(), 1);
}

#[test]
fn row10_unsubscribe_decrements() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.last_zero_at), (1, None));
}

#[test]
fn row11_unsubscribe_to_zero_sets_and_refreshes_idle_time() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    assert_eq!(rc(&sup, BTC), 0);
    assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(1.0)));
    sup.unsubscribe(&sid(BTC), t(5.0));
    assert_eq!(rc(&sup, BTC), 0, "floors at zero");
    assert_eq!(sup.job(&sid(BTC)).unwrap().last_zero_at, Some(t(5.0)));
}

#[test]
fn row12_unsubscribe_noops() {
    let mut sup = Supervisor::new(whitelisted(&[BTC], true));
    sup.start_whitelist(t(0.0), &mut Vec::new());
    sub(&mut sup, ETH, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0)); // pinned
    sup.unsubscribe(&sid(XRP), t(1.0)); // absent
    assert_eq!(rc(&sup, BTC), -1);
    assert_eq!(rc(&sup, ETH), 1);
    assert!(sup.job(&sid(XRP)).is_none());
    let mut read = Supervisor::new(SupervisorConfig { role: Role::Read, ..ondemand(0) });
    read.unsubscribe(&sid(BTC), t(1.0));
    assert_eq!(read.jobs_len(), 0);
}

#[test]
fn row13_failure_marks_dead_and_counts_crash_once() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sup.job_running(&sid(BTC), t(0.1));
    sup.job_failed(&sid(BTC), t(1.0), "connection reset");
    sup.job_failed(&sid(BTC), t(1.1), "duplicate report");
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.state, job.running, job.crashes), (JobState::Dead, false, 1));
    // Guardrail defaults: first failure backs off 1 s.
    assert_eq!(job.next_retry_at, Some(t(2.0)));
    let snap = sup.snapshot(t(1.0));
    assert_eq!(snap["jobs"][0]["guardrail"]["last_error"], "connection reset");
    assert_eq!(snap["jobs"][0]["last_crash_at"], 1.0);
}

#[test]
fn row14_reaper_restarts_dead_active_and_pinned_keeping_counters() {
    let mut sup = Supervisor::new(no_guardrail(whitelisted(&[XRP], true)));
    sup.start_whitelist(t(0.0), &mut Vec::new());
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(0.0), "exit");
    sup.job_failed(&sid(XRP), t(0.0), "exit");
    assert!(tick(&mut sup, 1.0).is_empty(), "2 s crash wait not over");
    assert_eq!(sup.next_deadline(), Some(t(2.0)));
    assert_eq!(tick(&mut sup, 2.2), vec![start(BTC), start(XRP)]);
    let btc = sup.job(&sid(BTC)).unwrap();
    let xrp = sup.job(&sid(XRP)).unwrap();
    assert_eq!((btc.refcount, btc.running, btc.crashes), (1, true, 1));
    assert_eq!((xrp.refcount, xrp.running, xrp.crashes), (-1, true, 1));
    assert_eq!(btc.started_at, t(2.2));
    assert_eq!(sup.jobs_len(), 2);
}

#[test]
fn row15_reaper_skips_dead_job_while_breaker_open_then_probes() {
    let cfg = SupervisorConfig {
        guardrail: GuardrailConfig {
            crash_budget: 2,
            open_cooldown: Duration::from_secs(30),
            ..GuardrailConfig::default()
        },
        ..ondemand(0)
    };
    let mut sup = Supervisor::new(cfg);
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(0.0), "a"); // backoff 1 s
    assert_eq!(tick(&mut sup, 1.0), vec![start(BTC)]);
    sup.job_failed(&sid(BTC), t(1.0), "b"); // budget 2 reached: open 30 s
    assert_eq!(sup.job(&sid(BTC)).unwrap().breaker, BreakerState::Open);
    assert_eq!(sup.next_deadline(), Some(t(31.0)));
    assert!(tick(&mut sup, 2.0).is_empty());
    assert!(tick(&mut sup, 30.9).is_empty());
    assert!(sub(&mut sup, BTC, 15.0).1.is_empty(), "subscribe does not bypass the breaker");
    assert_eq!(tick(&mut sup, 31.0), vec![start(BTC)]);
    assert_eq!(sup.job(&sid(BTC)).unwrap().breaker, BreakerState::HalfOpen);
    // Failed probe: open again for the full cooldown.
    sup.job_failed(&sid(BTC), t(31.5), "probe failed");
    assert_eq!(sup.job(&sid(BTC)).unwrap().next_retry_at, Some(t(61.5)));
    assert!(tick(&mut sup, 61.0).is_empty());
    assert_eq!(tick(&mut sup, 61.5), vec![start(BTC)]);
    // Live again: breaker closed, crash history kept.
    sup.job_running(&sid(BTC), t(62.0));
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.breaker, job.crashes, job.refcount), (BreakerState::Closed, 3, 2));
}

#[test]
fn row17_reaper_drops_dead_idle_job_with_stop() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    sup.job_failed(&sid(BTC), t(2.0), "exit");
    assert_eq!(sup.next_deadline(), Some(t(2.0)), "due at once");
    assert_eq!(tick(&mut sup, 2.5), vec![stop(BTC, StopReason::Reaped)]);
    assert_eq!(sup.jobs_len(), 0);
    assert_eq!(sup.next_deadline(), None);
}

#[test]
fn row18_reaper_stops_idle_job_after_ttl() {
    let mut sup =
        Supervisor::new(SupervisorConfig { idle_ttl: Duration::from_secs(10), ..ondemand(0) });
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(5.0));
    assert_eq!(sup.next_deadline(), Some(t(15.0)));
    assert!(tick(&mut sup, 14.9).is_empty());
    assert_eq!(tick(&mut sup, 15.0), vec![stop(BTC, StopReason::Reaped)]);
    assert!(sup.job(&sid(BTC)).is_none());
}

#[test]
fn row19_eviction_is_a_stop_with_reason() {
    let mut sup = Supervisor::new(ondemand(1));
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    let (r, out) = sub(&mut sup, ETH, 2.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert_eq!(out, vec![stop(BTC, StopReason::Evicted), start(ETH)]);
    let snap = sup.snapshot(t(2.0));
    let ids: Vec<&str> = snap["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["series_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ETH]);
}

#[test]
fn row20_shutdown_stops_everything_and_stays_closed() {
    let mut sup = Supervisor::new(whitelisted(&[XRP], true));
    sup.start_whitelist(t(0.0), &mut Vec::new());
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, ETH, 0.0);
    sup.job_failed(&sid(ETH), t(1.0), "x");
    let mut out = Vec::new();
    sup.shutdown(&mut out);
    assert_eq!(
        out,
        vec![
            stop(BTC, StopReason::Shutdown),
            stop(ETH, StopReason::Shutdown),
            stop(XRP, StopReason::Shutdown)
        ]
    );
    assert_eq!(sup.jobs_len(), 0);
    let (r, eff) = sub(&mut sup, BTC, 2.0);
    assert_eq!((r, eff), (SubscribeOutcome::Accepted, vec![]));
    assert!(tick(&mut sup, 100.0).is_empty());
    assert_eq!(sup.next_deadline(), None);
    assert_eq!(StopReason::Shutdown.to_string(), "shutdown");
    assert_eq!(StopReason::Evicted.to_string(), "evicted");
    assert_eq!(StopReason::Reaped.to_string(), "reaped");
}

mod policies;
