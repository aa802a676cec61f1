//! `Jobs` on its own: the parts a `Ctx` lends are built here, with no
//! `Engine` around them, so these tests show the job machine needs nothing
//! but what it is lent.

use super::{Ctx, Jobs};
use crate::cli::settings::Settings;
use crate::engine::counters::Counters;
use crate::engine::hub::Hub;
use crate::engine::rest::RestScheduler;
use crate::engine::series::SeriesTable;
use crate::engine::store_ops::StoreOps;
use crate::engine::supervisor::Supervisor;
use crate::engine::upstream::UpstreamPool;
use crate::engine::{EngineConfig, Output, RestId, RestPurpose, TimerKey};
use crate::model::{Market, SeriesId};
use crate::replay::exchange::kline_frame;
use crate::rng::Rng;
use crate::store::{JobHistory, PersistOutcome, StoreQuery};
use crate::time::Timestamp;
use crate::timer::TimerWheel;
use crate::wire::binance::{self, Frame};
use std::collections::VecDeque;

const T0: i64 = 1_700_000_040;

/// Everything a `Ctx` borrows, owned.
struct Parts {
    cfg: EngineConfig,
    now: Timestamp,
    series: SeriesTable,
    hub: Hub,
    supervisor: Supervisor,
    pool: UpstreamPool,
    timers: TimerWheel<TimerKey>,
    rest: RestScheduler<RestPurpose>,
    store_ops: StoreOps,
    outputs: VecDeque<Output>,
    counters: Counters,
}

impl Parts {
    fn new(heal: bool) -> Parts {
        let mut cfg = Settings { pins: vec![], ..Settings::default() }.to_engine_config().expect("default settings");
        cfg.heal.enabled = heal;
        let now = Timestamp::from_secs(T0 as u64 + 61);
        let store_ops = StoreOps::default();
        Parts {
            hub: Hub::new(cfg.hub.clone(), store_ops.ids.clone()),
            supervisor: Supervisor::new(cfg.supervisor.clone()),
            pool: UpstreamPool::new(cfg.upstream.clone(), Rng::new(1)),
            timers: TimerWheel::new(now),
            rest: RestScheduler::new(cfg.rest.clone()),
            series: SeriesTable::default(),
            store_ops,
            outputs: VecDeque::new(),
            counters: Counters::default(),
            now,
            cfg,
        }
    }

    fn cx(&mut self) -> Ctx<'_> {
        Ctx {
            now: self.now,
            cfg: &self.cfg,
            series: &mut self.series,
            hub: &mut self.hub,
            supervisor: &mut self.supervisor,
            pool: &mut self.pool,
            timers: &mut self.timers,
            rest: &mut self.rest,
            store_ops: &mut self.store_ops,
            outputs: &mut self.outputs,
            counters: &mut self.counters,
            shut_down: false,
        }
    }

    fn logs(&mut self) -> Vec<String> {
        self.outputs
            .drain(..)
            .filter_map(|o| match o {
                Output::Log { line, .. } => Some(line),
                _ => None,
            })
            .collect()
    }
}

/// A job for `binance:spot:BTC/USDT:1m` started with an empty store.
fn started(parts: &mut Parts) -> (Jobs, crate::engine::series::SeriesIdx) {
    let mut jobs = Jobs::new(&parts.cfg);
    let id = SeriesId::parse("binance:spot:BTC/USDT:1m").expect("series id");
    let mut cx = parts.cx();
    jobs.start_job(&mut cx, &id);
    let asked = parts.outputs.iter().any(|o| matches!(o, Output::ReadStore { query: StoreQuery::JobStart { .. }, .. }));
    assert!(asked, "a job start asks the store what it holds first");
    let idx = parts.series.lookup(id.as_str()).expect("interned");
    assert!(!jobs.contains(idx), "no job before the store answers");
    jobs.finish_job_start(&mut parts.cx(), idx, JobHistory::default());
    assert!(jobs.contains(idx));
    (jobs, idx)
}

#[test]
fn a_closed_frame_is_persisted_then_published_and_the_job_stops_clean() {
    let mut parts = Parts::new(false);
    let (mut jobs, idx) = started(&mut parts);
    assert!(parts.logs().iter().any(|l| l.starts_with("job_started series_id=binance:spot:BTC/USDT:1m")));

    let text = kline_frame("btcusdt@kline_1m", T0, 60, 100.0, true);
    let Ok(Frame::Kline(event)) = binance::parse_frame(&text) else { panic!("a kline frame") };
    jobs.on_kline(&mut parts.cx(), Market::Spot, &event);
    assert_eq!(jobs.unpersisted_candles(), 1);

    // The close armed a flush (at the end of the step, or at the flush
    // interval): its timer fires and makes one write.
    parts.now = parts.now.add(parts.cfg.flush_interval);
    let mut fired = Vec::new();
    parts.timers.expire(parts.now, &mut fired);
    assert!(!fired.is_empty(), "a flush timer was armed");
    for (_, key) in fired {
        jobs.on_timer(&mut parts.cx(), key);
    }
    let writes: Vec<_> = parts.outputs.iter().filter(|o| matches!(o, Output::Persist { .. })).collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(jobs.awaiting_write());

    // Stored: published (the series' window widens) and out of the queue.
    jobs.on_flush_persisted(&mut parts.cx(), vec![0], PersistOutcome::Stored { kept: vec![], pruned: 0 });
    assert_eq!(jobs.unpersisted_candles(), 0);
    assert_eq!(parts.series.get(idx).last_closed, Some(T0));
    assert_eq!(parts.counters.candles_persisted, 1);

    jobs.stop_job(&mut parts.cx(), idx, "test");
    assert!(!jobs.contains(idx));
    assert!(parts.logs().iter().any(|l| l == "job_stopped series_id=binance:spot:BTC/USDT:1m reason=test"));
}

#[test]
fn a_heal_page_answers_only_the_rest_id_it_waits_for() {
    let mut parts = Parts::new(true);
    let (mut jobs, idx) = started(&mut parts);
    // The start heal (first visit) queued one page; it goes out with its id.
    let mut calls = Vec::new();
    parts.rest.pump(parts.now, &mut calls);
    assert_eq!(calls.len(), 1);
    let sent = calls[0].id;
    let waiting = jobs.get(idx).and_then(|j| j.heal.as_ref()).and_then(|h| h.request);
    assert_eq!(waiting, Some(sent));

    // An answer for another id belongs to no running heal: nothing changes.
    let stale = RestId(sent.0 + 100);
    let purpose = RestPurpose::Heal { job: idx, page_end: T0 };
    assert_eq!(jobs.on_rest_done(&mut parts.cx(), stale, purpose, Ok("[]".into())), None);
    assert_eq!(jobs.get(idx).and_then(|j| j.heal.as_ref()).and_then(|h| h.request), Some(sent));

    // The exchange refusing the symbol hands the job back to the engine to end.
    let refused = Err((Some(400), r#"{"code":-1121,"msg":"Invalid symbol."}"#.to_string()));
    assert_eq!(jobs.on_rest_done(&mut parts.cx(), sent, purpose, refused), Some(idx));
    assert!(jobs.get(idx).is_some_and(|j| j.heal.is_none()), "the heal ended");
}
