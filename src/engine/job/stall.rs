//! Frozen-stream detection: a live kline stream (its SUBSCRIBE acknowledged)
//! that delivers no frame for `stream_stall` while its connection stays open
//! (pings keep a connection alive, not a stream) is resubscribed on the same
//! connection, logged `stream_stalled` and counted (`stream_stalls`).
//!
//! A frame only stamps its job's `last_frame_at` (no timer work per frame);
//! one engine timer is armed at the earliest possible stall and, when it
//! fires, every live job is checked and the timer re-armed at the next
//! earliest deadline. `Jobs` methods. Never reads a clock.

use crate::engine::series::SeriesIdx;
use super::{Ctx, Jobs};
use crate::engine::{LogLevel, TimerKey};

impl Jobs {
    /// The job's stream was acknowledged: its silence is measured from now.
    pub(in crate::engine) fn stream_live(&mut self, cx: &mut Ctx<'_>, job: SeriesIdx) {
        let now = cx.now;
        if let Some(j) = self.jobs.get_mut(&job) {
            j.last_frame_at = Some(now);
        }
        self.arm_stall_check(cx, now.add(cx.cfg.stream_stall));
    }

    /// Arms the one stall-check timer at `at` unless it fires earlier already.
    fn arm_stall_check(&mut self, cx: &mut Ctx<'_>, at: crate::time::Timestamp) {
        if cx.cfg.stream_stall == crate::time::Duration::ZERO {
            return;
        }
        match self.stall_timer {
            Some((t, _)) if t <= at => {}
            Some((_, id)) => {
                cx.timers.cancel(id);
                self.stall_timer = Some((at, cx.timers.insert(at, TimerKey::StallCheck)));
            }
            None => self.stall_timer = Some((at, cx.timers.insert(at, TimerKey::StallCheck))),
        }
    }

    /// Resubscribes every live stream silent for `stream_stall`; re-arms.
    pub(in crate::engine) fn fire_stall_check(&mut self, cx: &mut Ctx<'_>) {
        self.stall_timer = None;
        let (now, stall) = (cx.now, cx.cfg.stream_stall);
        let mut stalled = Vec::new();
        let mut next: Option<crate::time::Timestamp> = None;
        for (idx, j) in self.jobs.iter() {
            let Some(last) = j.last_frame_at else { continue };
            if now.since(last) >= stall {
                stalled.push(*idx);
            } else {
                let at = last.add(stall);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for idx in stalled {
            let Some(j) = self.jobs.get_mut(&idx) else { continue };
            let silent = j.last_frame_at.map_or(0.0, |t| now.since(t).as_secs_f64());
            // Silence is measured again from the new acknowledgement.
            j.last_frame_at = None;
            let (stream, market, id) = (j.stream.clone(), j.market, j.base_id.to_string());
            let resubscribed = cx.pool.resubscribe(&stream, market, now, cx.outputs);
            cx.counters.stream_stalls += 1;
            cx.log(
                LogLevel::Warn,
                format!("stream_stalled series_id={id} stream={stream} silent_s={silent:.3} resubscribed={resubscribed}"),
            );
        }
        if let Some(at) = next {
            self.arm_stall_check(cx, at);
        }
    }
}
