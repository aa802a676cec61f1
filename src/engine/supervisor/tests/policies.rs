//! Tests of the supervisor's policies (reaper, capacity, derived targets,
//! roles, guardrail, validation); the table rows are in `tests.rs`.

use super::*;

// ---- reference catalogue ----

#[test]
fn reaper_policy_restart_stop_and_drop_sets() {
    // BTC dead rc=1, ETH running idle since 5 (now 20, ttl 10), XRP dead pinned.
    let cfg = SupervisorConfig {
        idle_ttl: Duration::from_secs(10),
        ..no_guardrail(whitelisted(&[XRP], true))
    };
    let mut sup = Supervisor::new(cfg);
    sup.start_whitelist(t(0.0), &mut Vec::new());
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, ETH, 0.0);
    sup.unsubscribe(&sid(ETH), t(5.0));
    sup.job_failed(&sid(BTC), t(1.0), "x");
    sup.job_failed(&sid(XRP), t(1.0), "x");
    assert_eq!(
        tick(&mut sup, 20.0),
        vec![stop(ETH, StopReason::Reaped), start(BTC), start(XRP)]
    );
}

#[test]
fn capacity_policy_accepts_under_limit() {
    let mut sup = Supervisor::new(ondemand(2));
    sub(&mut sup, BTC, 0.0);
    assert_eq!(sub(&mut sup, ETH, 1.0), (SubscribeOutcome::Accepted, vec![start(ETH)]));
}

#[test]
fn capacity_counts_dead_jobs_and_never_evicts_referenced_dead_ones() {
    let mut sup = Supervisor::new(ondemand(1));
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(1.0), "x");
    assert_eq!(sub(&mut sup, ETH, 2.0).0, SubscribeOutcome::Capacity);
}

#[test]
fn capacity_ignores_pinned_jobs() {
    let mut sup =
        Supervisor::new(SupervisorConfig { max_ondemand_jobs: 1, ..whitelisted(&[XRP], true) });
    sup.start_whitelist(t(0.0), &mut Vec::new());
    assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
    assert_eq!(sub(&mut sup, ETH, 0.0).0, SubscribeOutcome::Capacity);
}

#[test]
fn derived_subscription_maps_to_base_job() {
    let mut sup = Supervisor::new(ondemand(0));
    let (r, out) = sub(&mut sup, "binance:spot:BTC/USDT:5m", 0.0);
    assert_eq!(r, SubscribeOutcome::Accepted);
    assert_eq!(out, vec![start("binance:spot:BTC/USDT:1m")]);
    sub(&mut sup, "binance:spot:BTC/USDT:1h", 0.0);
    assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), 2);
    sup.unsubscribe(&sid("binance:spot:BTC/USDT:5m"), t(1.0));
    assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), 1);
    assert_eq!(
        sup.normalize(&sid("binance:futures:BTC/USDT:USDT:4h")),
        sid("binance:futures:BTC/USDT:USDT:1m")
    );
    // Not derived: a native job.
    assert_eq!(
        sup.normalize(&sid("binance:spot:BTC/USDT:30m")),
        sid("binance:spot:BTC/USDT:30m")
    );
}

#[test]
fn derived_targets_equal_to_or_not_multiple_of_base_are_ignored() {
    let tf = |s: &str| Timeframe::parse(s).unwrap();
    let sup = Supervisor::new(SupervisorConfig {
        derived_base: tf("3m"),
        derived: vec![tf("3m"), tf("5m"), tf("15m")],
        ..SupervisorConfig::default()
    });
    assert_eq!(
        sup.normalize(&sid("binance:spot:BTC/USDT:5m")),
        sid("binance:spot:BTC/USDT:5m")
    );
    assert_eq!(
        sup.normalize(&sid("binance:spot:BTC/USDT:15m")),
        sid("binance:spot:BTC/USDT:3m")
    );
    let off =
        Supervisor::new(SupervisorConfig { derived: vec![], ..SupervisorConfig::default() });
    assert_eq!(
        off.normalize(&sid("binance:spot:BTC/USDT:5m")),
        sid("binance:spot:BTC/USDT:5m")
    );
}

#[test]
fn role_ingest_starts_jobs_like_hybrid() {
    for role in [Role::Ingest, Role::Hybrid] {
        let mut sup = Supervisor::new(SupervisorConfig { role, ..ondemand(0) });
        assert_eq!(sub(&mut sup, ETH, 0.0).1, vec![start(ETH)]);
        assert_eq!(sup.snapshot(t(0.0))["ingest_jobs_enabled"], true);
    }
    assert_eq!(Role::parse_or_hybrid(" READ "), Role::Read);
    assert_eq!(Role::parse_or_hybrid("bogus"), Role::Hybrid);
    assert_eq!(Role::parse("bogus"), None);
}

#[test]
fn whitelist_falls_back_to_ondemand_when_whitelist_ingest_disabled() {
    let mut sup = Supervisor::new(whitelisted(&[BTC], false));
    let mut out = Vec::new();
    sup.start_whitelist(t(0.0), &mut out);
    assert!(out.is_empty());
    assert_eq!(sub(&mut sup, BTC, 1.0).1, vec![start(BTC)]);
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.refcount, job.pinned), (1, false));
    assert_eq!(sup.snapshot(t(1.0))["jobs"][0]["source"], "binance_ws");
}

#[test]
fn whitelisted_derived_series_pins_its_base() {
    // Reference bug: a whitelisted 5m got a native 5m job and derived writes.
    let mut sup = Supervisor::new(whitelisted(
        &["binance:spot:BTC/USDT:5m", "binance:spot:BTC/USDT:1h", "binance:spot:BTC/USDT:1m"],
        true,
    ));
    let mut out = Vec::new();
    sup.start_whitelist(t(0.0), &mut out);
    assert_eq!(out, vec![start("binance:spot:BTC/USDT:1m")]);
    assert!(sup.is_pinned(&sid("binance:spot:BTC/USDT:1m")));
    let (r, eff) = sub(&mut sup, "binance:spot:BTC/USDT:15m", 1.0);
    assert_eq!((r, eff), (SubscribeOutcome::Accepted, vec![]));
    assert_eq!(rc(&sup, "binance:spot:BTC/USDT:1m"), -1);
    assert_eq!(
        sup.snapshot(t(1.0))["whitelist_series_ids"],
        json!([
            "binance:spot:BTC/USDT:1h",
            "binance:spot:BTC/USDT:1m",
            "binance:spot:BTC/USDT:5m"
        ])
    );
}

#[test]
fn invalid_whitelist_entries_are_reported_not_started() {
    let mut sup = Supervisor::new(whitelisted(&["kraken:spot:BTC/USD:1m", BTC], true));
    let mut out = Vec::new();
    sup.start_whitelist(t(0.0), &mut out);
    assert_eq!(out, vec![start(BTC)]);
    assert_eq!(sup.whitelist_rejections().len(), 1);
    assert_eq!(
        sup.snapshot(t(0.0))["whitelist_errors"][0]["error"],
        "unsupported exchange: 'kraken' (supported: binance)"
    );
}

#[test]
fn guardrail_snapshot_exposed_when_enabled() {
    let cfg = SupervisorConfig {
        guardrail: GuardrailConfig {
            crash_budget: 1,
            open_cooldown: Duration::from_millis(500),
            ..GuardrailConfig::default()
        },
        ..ondemand(0)
    };
    let mut sup = Supervisor::new(cfg);
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(0.01), "loop raised");
    let snap = sup.snapshot(t(0.05));
    assert_eq!(snap["loop_guardrail_enabled"], true);
    let g = &snap["jobs"][0]["guardrail"];
    assert_eq!(g["state"], "open");
    assert!(g["window_failures"].as_u64().unwrap() >= 1);
    assert_eq!(snap["jobs"][0]["state"], "dead");
    assert_eq!(snap["jobs"][0]["next_retry_at"], 0.51);

    let mut off = Supervisor::new(no_guardrail(ondemand(0)));
    sub(&mut off, BTC, 0.0);
    let snap = off.snapshot(t(0.0));
    assert_eq!(snap["loop_guardrail_enabled"], false);
    assert_eq!(snap["jobs"][0]["guardrail"], Value::Null);
}

#[test]
fn snapshot_has_reference_shape() {
    let mut sup = Supervisor::new(SupervisorConfig {
        max_ondemand_jobs: 8,
        ..whitelisted(&[ETH, BTC], true)
    });
    sup.start_whitelist(Timestamp::from_secs(1_700_000_000), &mut Vec::new());
    sub(&mut sup, "binance:spot:SOL/USDT:1m", 1_700_000_001.0);
    sup.unsubscribe(
        &sid("binance:spot:SOL/USDT:1m"),
        Timestamp::from_millis(1_700_000_002_500),
    );
    let snap = sup.snapshot(Timestamp::from_secs(1_700_000_003));
    let jobs = snap["jobs"].as_array().unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j["series_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![BTC, ETH, "binance:spot:SOL/USDT:1m"]);
    let sol = &jobs[2];
    for key in [
        "series_id",
        "source",
        "refcount",
        "last_zero_at",
        "started_at",
        "crashes",
        "last_crash_at",
        "running",
        "guardrail",
    ] {
        assert!(sol.get(key).is_some(), "missing {key}");
    }
    assert_eq!(sol["last_zero_at"], 1_700_000_002.5);
    assert_eq!(sol["started_at"], 1_700_000_001.0);
    assert_eq!(sol["refcount"], 0);
    assert_eq!(sol["last_crash_at"], Value::Null);
    assert_eq!(jobs[0]["refcount"], -1);
    assert_eq!(snap["whitelist_series_ids"], json!([BTC, ETH]));
    assert_eq!(snap["ondemand_max_jobs"], 8);
    assert_eq!(snap["whitelist_ingest_enabled"], true);
    assert_eq!(snap["ingest_role"], "hybrid");
    assert_eq!(snap["ingest_jobs_enabled"], true);
    assert_eq!(snap["loop_guardrail_enabled"], true);
}

#[test]
fn ondemand_disabled_never_creates_jobs() {
    let mut sup = Supervisor::new(SupervisorConfig {
        ondemand_enabled: false,
        ..SupervisorConfig::default()
    });
    assert_eq!(sub(&mut sup, BTC, 0.0), (SubscribeOutcome::Accepted, vec![]));
    sup.unsubscribe(&sid(BTC), t(1.0));
    assert_eq!(sup.jobs_len(), 0);
    assert!(matches!(
        sub(&mut sup, "binance:margin:BTC/USDT:1m", 0.0).0,
        SubscribeOutcome::Unsupported(_)
    ));
}

#[test]
fn job_running_confirms_start_and_resets_breaker() {
    let mut sup = Supervisor::new(ondemand(0));
    sub(&mut sup, BTC, 0.0);
    sup.job_failed(&sid(BTC), t(0.0), "a");
    sup.job_running(&sid(BTC), t(0.5)); // dead: ignored
    assert_eq!(sup.job(&sid(BTC)).unwrap().state, JobState::Dead);
    assert_eq!(tick(&mut sup, 1.0), vec![start(BTC)]);
    sup.job_running(&sid(BTC), t(1.5));
    let job = sup.job(&sid(BTC)).unwrap();
    assert_eq!((job.state, job.breaker), (JobState::Running, BreakerState::Closed));
    // Backoff starts over after a success.
    sup.job_failed(&sid(BTC), t(10.0), "b");
    assert_eq!(sup.job(&sid(BTC)).unwrap().next_retry_at, Some(t(11.0)));
}

#[test]
fn idle_ttl_has_a_one_second_minimum() {
    let mut sup = Supervisor::new(SupervisorConfig { idle_ttl: Duration::ZERO, ..ondemand(0) });
    sub(&mut sup, BTC, 0.0);
    sup.unsubscribe(&sid(BTC), t(1.0));
    assert!(tick(&mut sup, 1.5).is_empty());
    assert_eq!(tick(&mut sup, 2.0), vec![stop(BTC, StopReason::Reaped)]);
}

#[test]
fn next_deadline_is_the_earliest_pending_action() {
    let mut sup =
        Supervisor::new(SupervisorConfig { idle_ttl: Duration::from_secs(60), ..ondemand(0) });
    assert_eq!(sup.next_deadline(), None);
    sub(&mut sup, BTC, 0.0);
    sub(&mut sup, ETH, 0.0);
    assert_eq!(sup.next_deadline(), None, "referenced running jobs need nothing");
    sup.unsubscribe(&sid(ETH), t(10.0));
    assert_eq!(sup.next_deadline(), Some(t(70.0)));
    sup.job_failed(&sid(BTC), t(20.0), "x");
    assert_eq!(sup.next_deadline(), Some(t(21.0)));
}

// ---- validation ----

#[test]
fn validate_messages_name_the_problem() {
    let sup = Supervisor::new(SupervisorConfig::default());
    let err = |s: &str| sup.validate(&sid(s)).unwrap_err();
    assert_eq!(
        err("kraken:spot:BTC/USD:1m"),
        "unsupported exchange: 'kraken' (supported: binance)"
    );
    assert_eq!(
        err("Binance:spot:BTC/USDT:1m"),
        "unsupported exchange: 'Binance' (supported: binance)"
    );
    assert_eq!(
        err("binance:margin:BTC/USDT:1m"),
        "unsupported market: 'margin' (supported: spot, futures)"
    );
    assert_eq!(
        err("binance:spot:BTCUSDT:1m"),
        "unsupported symbol: 'BTCUSDT' (expected BASE/QUOTE, e.g. BTC/USDT)"
    );
    assert_eq!(
        err("binance:spot:BTC/:1m"),
        "unsupported symbol: 'BTC/' (expected BASE/QUOTE, e.g. BTC/USDT)"
    );
    assert!(err("binance:spot:btc/usdt:1m").contains("upper-case"));
    assert!(err("binance:spot:BTC/USDT:USDT:1m").contains("only valid on futures"));
    assert_eq!(
        err("binance:spot:BTC/USDT:7m"),
        "unsupported timeframe: '7m' (supported: 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d, 3d, 1w)"
    );
    for ok in [
        "binance:spot:BTC/USDT:1m",
        "binance:futures:BTC/USDT:USDT:1h",
        "binance:futures:1000PEPE/USDT:4h",
        "binance:spot:ETH/BTC:1w",
        "binance:spot:BTC/USDT:5m",
    ] {
        assert_eq!(sup.validate(&sid(ok)), Ok(()), "{ok}");
    }
}

#[test]
fn configured_derived_timeframe_is_valid_even_if_not_a_binance_interval() {
    let tf = |s: &str| Timeframe::parse(s).unwrap();
    let sup = Supervisor::new(SupervisorConfig {
        derived: vec![tf("10m")],
        ..SupervisorConfig::default()
    });
    assert_eq!(sup.validate(&sid("binance:spot:BTC/USDT:10m")), Ok(()));
    assert_eq!(
        sup.normalize(&sid("binance:spot:BTC/USDT:10m")),
        sid("binance:spot:BTC/USDT:1m")
    );
    assert!(sup.validate(&sid("binance:spot:BTC/USDT:7m")).unwrap_err().contains("10m"));
}

#[test]
fn unsupported_subscribe_never_starts_or_counts() {
    let mut sup = Supervisor::new(ondemand(1));
    for bad in ["binance:spot:BTCUSDT:1m", "binance:spot:BTC/USDT:7m", "okx:spot:BTC/USDT:1m"] {
        let (r, out) = sub(&mut sup, bad, 0.0);
        assert!(matches!(r, SubscribeOutcome::Unsupported(_)), "{bad}");
        assert!(out.is_empty());
    }
    assert_eq!(sup.jobs_len(), 0);
    assert_eq!(sub(&mut sup, BTC, 0.0).0, SubscribeOutcome::Accepted);
}

// ---- property: refcounts, capacity, effect consistency ----

mod props {
    use super::*;
    use proptest::prelude::*;

    const SERIES: [&str; 5] = [
        "binance:spot:BTC/USDT:1m",
        "binance:spot:BTC/USDT:5m", // derived → BTC 1m
        "binance:spot:ETH/USDT:1m",
        "binance:futures:XRP/USDT:1m", // whitelisted
        "binance:spot:SOL/USDT:1h",
    ];

    #[derive(Clone, Debug)]
    enum Op {
        Subscribe(usize),
        Unsubscribe(usize),
        Running(usize),
        Fail(usize),
        Tick,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..SERIES.len()).prop_map(Op::Subscribe),
            3 => (0..SERIES.len()).prop_map(Op::Unsubscribe),
            2 => (0..SERIES.len()).prop_map(Op::Running),
            2 => (0..SERIES.len()).prop_map(Op::Fail),
            3 => Just(Op::Tick),
            3 => (0u64..40_000).prop_map(Op::Advance),
        ]
    }

    /// What the engine believes about one base series, from effects alone.
    #[derive(Clone, Copy, Default, Debug)]
    struct Attached {
        exists: bool,
        outstanding: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn supervisor_invariants(
            cap in 0usize..4,
            pin in any::<bool>(),
            guard in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let cfg = SupervisorConfig {
                max_ondemand_jobs: cap,
                idle_ttl: Duration::from_secs(5),
                whitelist: vec![sid(SERIES[3])],
                whitelist_ingest_enabled: pin,
                guardrail: GuardrailConfig {
                    enabled: guard,
                    crash_budget: 2,
                    open_cooldown: Duration::from_secs(10),
                    ..GuardrailConfig::default()
                },
                ..SupervisorConfig::default()
            };
            let mut sup = Supervisor::new(cfg);
            let mut now = Timestamp::from_secs(1_000);
            let mut model: BTreeMap<SeriesId, Attached> = BTreeMap::new();
            let mut out = Vec::new();
            sup.start_whitelist(now, &mut out);
            apply(&mut model, &mut out)?;
            for op in ops {
                match op {
                    Op::Subscribe(i) => {
                        let r = sup.subscribe(&sid(SERIES[i]), now, &mut out);
                        prop_assert!(!matches!(r, SubscribeOutcome::Unsupported(_)));
                        if r == SubscribeOutcome::Capacity {
                            prop_assert!(out.is_empty());
                        }
                    }
                    Op::Unsubscribe(i) => sup.unsubscribe(&sid(SERIES[i]), now),
                    Op::Running(i) => sup.job_running(&sid(SERIES[i]), now),
                    Op::Fail(i) => {
                        let base = sup.normalize(&sid(SERIES[i]));
                        if sup.job(&base).is_some_and(|j| j.running) {
                            model.entry(base).or_default().outstanding = false;
                        }
                        sup.job_failed(&sid(SERIES[i]), now, "fail");
                    }
                    Op::Tick => {
                        // next_deadline is exact: due ⇔ on_tick acts.
                        let due = sup.next_deadline().is_some_and(|d| d <= now);
                        sup.on_tick(now, &mut out);
                        prop_assert_eq!(due, !out.is_empty(), "deadline vs action at {:?}", now);
                    }
                    Op::Advance(ms) => now = now.add(Duration::from_millis(ms)),
                }
                apply(&mut model, &mut out)?;
                check(&sup, &model, cap)?;
            }
            sup.shutdown(&mut out);
            apply(&mut model, &mut out)?;
            prop_assert_eq!(sup.jobs_len(), 0);
            prop_assert!(model.values().all(|a| !a.exists));
        }
    }

    fn apply(
        model: &mut BTreeMap<SeriesId, Attached>,
        out: &mut Vec<Effect>,
    ) -> Result<(), TestCaseError> {
        for effect in out.drain(..) {
            match effect {
                Effect::Start { series } => {
                    let a = model.entry(series.clone()).or_default();
                    prop_assert!(
                        !a.outstanding,
                        "two Starts without Stop/failure: {:?}",
                        series
                    );
                    *a = Attached { exists: true, outstanding: true };
                }
                Effect::Stop { series, .. } => {
                    let a = model.entry(series.clone()).or_default();
                    prop_assert!(a.exists, "Stop for a job never started: {:?}", series);
                    *a = Attached::default();
                }
            }
        }
        Ok(())
    }

    fn check(
        sup: &Supervisor,
        model: &BTreeMap<SeriesId, Attached>,
        cap: usize,
    ) -> Result<(), TestCaseError> {
        let mut ondemand = 0;
        for (series, job) in &sup.jobs {
            let pinned = sup.is_pinned(series);
            if pinned {
                prop_assert_eq!(job.refcount, -1);
            } else {
                prop_assert!(job.refcount >= 0);
                ondemand += 1;
            }
            let a = model.get(series).copied().unwrap_or_default();
            prop_assert!(a.exists, "job without a Start: {:?}", series);
            prop_assert_eq!(
                a.outstanding,
                !job.is_dead(),
                "engine view vs state: {:?}",
                series
            );
            prop_assert_eq!(sup.normalize(series), series.clone());
        }
        for (series, a) in model {
            prop_assert_eq!(a.exists, sup.jobs.contains_key(series), "{:?}", series);
        }
        if cap > 0 {
            prop_assert!(ondemand <= cap);
        }
        Ok(())
    }
}
