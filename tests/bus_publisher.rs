//! The ingest side of the bus (`shell::bus_host::publisher`) against the REAL
//! Redis, driven on a mio loop of the test's own: it takes the lease and says
//! so once; closes go out as fenced entries in order; past its queue bound
//! the newest are dropped and counted and, once the queue drains, a resync
//! marker tells readers to read the hole from the store; a write after the
//! lease moved on is refused inside Redis and the publisher fails stop.
//!
//! Keys under a prefix of the test's own, deleted after. Without a reachable
//! server the test skips (prints why), or fails under `CI=true`.

#[path = "support/netservers.rs"]
mod netservers;

use klinegate::bus::streams::{self, StreamId};
use klinegate::bus::{Command, Resp};
use klinegate::engine::{Input, Output};
use klinegate::model::Candle;
use klinegate::shell::bus_host::codec::{decode_closed, ClosedEntry};
use klinegate::shell::bus_host::link::BusSide;
use klinegate::shell::bus_host::publisher::Publisher;
use mio::{Events, Poll, Token};
use netservers::{redis_or_skip, unique, RedisClient};
use std::time::{Duration, Instant};

fn turn(poll: &mut Poll, p: &mut Publisher) {
    let mut events = Events::with_capacity(16);
    let now = Instant::now();
    p.pump(now, poll.registry());
    let wait = p.next_wakeup().map_or(Duration::from_millis(20), |t| t.saturating_duration_since(now)).min(Duration::from_millis(20));
    poll.poll(&mut events, Some(wait)).expect("poll");
    let ready: Vec<(bool, bool)> = events.iter().map(|e| (e.is_readable() || e.is_read_closed(), e.is_writable())).collect();
    for (r, w) in ready {
        p.on_event(r, w, Instant::now(), poll.registry());
    }
}

fn until(poll: &mut Poll, p: &mut Publisher, what: &str, mut done: impl FnMut(&mut Publisher) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done(p) {
        assert!(Instant::now() < end, "{what}: not reached");
        turn(poll, p);
    }
}

fn close(t: i64) -> Output {
    let c = Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 1.0 };
    Output::BusPublish { series_id: "binance:spot:BTC/USDT:1m".into(), candles: vec![c] }
}

#[test]
fn the_publisher_leads_fences_bounds_its_queue_with_a_resync_marker_and_fails_stop() {
    let test = "the_publisher_leads_fences_bounds_its_queue_with_a_resync_marker_and_fails_stop";
    let Some((cfg, addr)) = redis_or_skip(test) else { return };
    let prefix = unique("kgpub");
    let mut redis = RedisClient::connect(&cfg, addr, Resp::V2, 16);
    struct Clean(RedisClient, String);
    impl Drop for Clean {
        fn drop(&mut self) {
            let p = format!("{}:", self.1);
            self.0.delete_prefix(&p);
        }
    }
    let mut poll = Poll::new().expect("poll");
    let mut p = Publisher::new(cfg.clone(), addr, Token(1), &prefix, "node-a", 1000, 1000, Instant::now());
    p.max_queued = 2;
    let mut inputs = Vec::new();
    until(&mut poll, &mut p, "lease", |p| {
        while let Some(i) = p.poll_input() {
            inputs.push(i);
        }
        p.fence().is_some()
    });
    let fence = p.fence().unwrap_or(0);
    assert_eq!(inputs, vec![Input::BusLeader { fence }], "leadership is said once");

    // Five closes offered at once against a bound of two: two go, three are
    // dropped and counted, then a resync marker.
    for t in [60, 120, 180, 240, 300] {
        p.offer(close(t));
    }
    assert_eq!(p.stats.candles_dropped, 3);
    until(&mut poll, &mut p, "drained", |p| p.backlog() == 0 && p.stats.entries_published == 3);
    let key = format!("{prefix}:closed");
    let entries = streams::decode_entries(redis.run(streams::xrange_after(&key, StreamId::ZERO, 100))).expect("xrange");
    let decoded: Vec<ClosedEntry> = entries.iter().map(|e| decode_closed(e).expect("decodes")).collect();
    let times: Vec<Vec<i64>> = decoded
        .iter()
        .map(|d| match d {
            ClosedEntry::Closed { candles, fence: f, .. } => {
                assert_eq!(*f, fence, "every entry carries the fence");
                candles.iter().map(|c| c.candle_time).collect()
            }
            ClosedEntry::Resync { fence: f } => {
                assert_eq!(*f, fence);
                vec![-1]
            }
        })
        .collect();
    assert_eq!(times, vec![vec![60], vec![120], vec![-1]], "in order, then the marker");

    // Someone else holds the lease now: the next write is refused inside
    // Redis and the publisher fails stop.
    redis.run(Command::new("SET").arg(format!("{prefix}:leader")).arg(format!("{}|node-b", fence + 1))).expect("set");
    p.offer(close(360));
    until(&mut poll, &mut p, "fail-stop", |p| p.fatal().is_some());
    let why = p.fatal().unwrap_or_default().to_string();
    assert!(why.contains("fenced") || why.contains("lease lost"), "{why}");
    let after = streams::decode_entries(redis.run(streams::xrange_after(&key, StreamId::ZERO, 100))).expect("xrange");
    assert_eq!(after.len(), 3, "the deposed leader's write did not land");
    let _clean = Clean(redis, prefix);
}
