//! The engine's side of the job machine (`job/`): exchange frames parsed and
//! routed (kline frames to the jobs, control answers to the upstream pool),
//! the supervisor's effects and the pool's stream events carried out, each
//! with the engine's parts lent to [`Jobs`](super::job::Jobs) as a
//! [`Ctx`](super::job::Ctx). Owns no state. Never reads a clock.

use super::job::{Ctx, Jobs};
use super::supervisor::Effect;
use super::upstream::PoolEvent;
use super::{Engine, LogLevel};
use crate::wire::binance::{self, Frame, FrameError};

impl Engine {
    /// Lends the engine's parts to one `Jobs` call.
    #[inline]
    pub(super) fn with_jobs<R>(&mut self, f: impl FnOnce(&mut Jobs, &mut Ctx<'_>) -> R) -> R {
        let mut cx = Ctx {
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
            shut_down: self.shut_down,
        };
        f(&mut self.jobs, &mut cx)
    }

    pub(super) fn on_upstream_text(&mut self, conn: super::ConnId, text: &str) {
        if !self.pool.knows_conn(conn) {
            return;
        }
        self.counters.upstream_frames += 1;
        match binance::parse_frame(text) {
            Ok(Frame::Kline(event)) => {
                self.pool.on_activity(conn, self.now, true);
                if let Some(market) = self.pool.conn_market(conn) {
                    self.with_jobs(|jobs, cx| jobs.on_kline(cx, market, &event));
                }
            }
            Ok(Frame::ControlAck { id }) => {
                self.pool.on_control_ack(conn, id, self.now, &mut self.outputs, &mut self.pool_events);
                self.apply_pool_events();
            }
            Ok(Frame::ControlList { .. }) => self.pool.on_activity(conn, self.now, false),
            Ok(Frame::ControlError { id, code, msg }) => {
                self.log(LogLevel::Error, format!("upstream_control_error conn={conn} id={id:?} code={code} msg={msg:?}"));
                self.pool.on_control_error(conn, &msg, self.now, &mut self.outputs, &mut self.pool_events);
                self.apply_pool_events();
            }
            Ok(Frame::ServerShutdown) => {
                self.log(LogLevel::Info, format!("upstream_server_shutdown conn={conn} action=rotate"));
                self.pool.on_server_shutdown(conn, self.now, &mut self.outputs);
            }
            Err(e) => {
                self.pool.on_activity(conn, self.now, false);
                self.count_reject(&e);
            }
        }
    }

    fn count_reject(&mut self, e: &FrameError) {
        let n = self.counters.count_reject(e.kind());
        // Logged on powers of two only: a flood of bad frames costs no log flood.
        if n.is_power_of_two() {
            self.log(LogLevel::Warn, format!("upstream_frame_rejected kind={} count={n} error={:?}", e.kind(), e.to_string()));
        }
    }

    pub(super) fn apply_effects(&mut self) {
        let effects = std::mem::take(&mut self.effects);
        for effect in &effects {
            match effect {
                Effect::Start { series } => self.with_jobs(|jobs, cx| jobs.start_job(cx, series)),
                Effect::Stop { series, reason } => {
                    if let Some(idx) = self.series.lookup(series.as_str()) {
                        self.with_jobs(|jobs, cx| jobs.stop_job(cx, idx, reason.as_str()));
                    }
                }
            }
        }
        let mut effects = effects;
        effects.clear();
        self.effects = effects;
    }

    pub(super) fn apply_pool_events(&mut self) {
        let events = std::mem::take(&mut self.pool_events);
        for event in &events {
            match event {
                PoolEvent::StreamLive { market, stream } => {
                    self.with_jobs(|jobs, cx| jobs.stream_came_live(cx, *market, stream));
                }
                PoolEvent::StreamLost { market, stream, reason } => {
                    self.with_jobs(|jobs, cx| jobs.stream_was_lost(cx, *market, stream, reason));
                }
                PoolEvent::Reconnected { conn, market } => {
                    self.log(LogLevel::Info, format!("upstream_reconnected conn={conn} market={}", market.as_str()));
                }
            }
        }
        let mut events = events;
        events.clear();
        self.pool_events = events;
    }
}
