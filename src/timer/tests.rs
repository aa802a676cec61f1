//! Unit tests of `timer` (moved beside it: they are as long as the code).

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const MS: u64 = NANOS_PER_MS;
const DAY_MS: u64 = 86_400_000;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn fire(wheel: &mut TimerWheel<u32>, now_ms: u64) -> Vec<u32> {
    let mut out = Vec::new();
    wheel.expire(at(now_ms), &mut out);
    out.into_iter().map(|(_, key)| key).collect()
}

#[test]
fn level_for_boundaries() {
    for level in 0..LEVELS {
        let first = if level == 0 { 1 } else { 1u64 << (6 * level) };
        let last = (1u64 << (6 * (level + 1))) - 1;
        assert_eq!(level_for(0, first), Some(level), "first tick {first:b}");
        assert_eq!(level_for(0, last), Some(level), "last tick {last:b}");
    }
    assert_eq!(level_for(0, EPOCH_TICKS), None);
    assert_eq!(level_for(63, 64), Some(1), "a digit carry moves up a level");
    assert_eq!(
        level_for(EPOCH_TICKS - 1, EPOCH_TICKS),
        None,
        "crossing an epoch"
    );
}

#[test]
fn fires_at_deadline_and_not_before() {
    let mut wheel = TimerWheel::new(at(1_000));
    wheel.insert(at(1_010), 7);
    assert_eq!(wheel.next_deadline(), Some(at(1_010)));
    assert!(fire(&mut wheel, 1_009).is_empty());
    assert_eq!(fire(&mut wheel, 1_010), vec![7]);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
}

#[test]
fn sub_millisecond_deadline_rounds_up() {
    let mut wheel = TimerWheel::new(Timestamp(5 * MS + 300));
    wheel.insert(Timestamp(10 * MS + 1), 1);
    assert_eq!(wheel.next_deadline(), Some(at(11)));
    let mut out = Vec::new();
    wheel.expire(Timestamp(11 * MS - 1), &mut out);
    assert!(out.is_empty(), "now is floored to 10 ms");
    wheel.expire(Timestamp(11 * MS), &mut out);
    assert_eq!(
        out,
        vec![(Timestamp(10 * MS + 1), 1)],
        "reports the exact deadline"
    );
}

#[test]
fn cancel_and_stale_ids() {
    let mut wheel = TimerWheel::new(at(0));
    let a = wheel.insert(at(500), 1);
    let b = wheel.insert(at(500), 2);
    assert_eq!(wheel.deadline(a), Some(at(500)));
    assert_eq!(wheel.cancel(a), Some(1));
    assert_eq!(wheel.cancel(a), None, "second cancel is a no-op");
    assert_eq!(wheel.len(), 1);
    // The freed slab slot is reused; the old id must not reach the new timer.
    let c = wheel.insert(at(600), 3);
    assert_eq!(c.slot, a.slot);
    assert_eq!(wheel.cancel(a), None);
    assert_eq!(fire(&mut wheel, 500), vec![2]);
    assert_eq!(wheel.cancel(b), None, "fired ids are stale");
    assert_eq!(wheel.deadline(b), None);
    assert_eq!(wheel.cancel(c), Some(3));
    assert_eq!(wheel.cancel(TimerId { slot: 99, gen: 0 }), None);
    assert!(wheel.is_empty());
    assert_eq!(
        wheel.next_deadline(),
        None,
        "cancelled-empty lists are cleared"
    );
}

#[test]
fn ties_fire_in_insertion_order_and_deadlines_sorted() {
    let mut wheel = TimerWheel::new(at(0));
    for key in 0..100 {
        wheel.insert(at(70_000), key);
    }
    for key in (100..110).rev() {
        wheel.insert(at(60_000 + u64::from(key)), key);
    }
    let fired = fire(&mut wheel, 80_000);
    let want: Vec<u32> = (100..110).chain(0..100).collect();
    assert_eq!(fired, want);
}

#[test]
fn level_boundaries_fire_exactly() {
    let edges = [63, 64, 65, 4_095, 4_096, 4_097, 262_143, 262_144, 262_145];
    let more = [
        (1 << 24) - 1,
        1 << 24,
        1 << 30,
        EPOCH_TICKS - 1,
        EPOCH_TICKS,
        EPOCH_TICKS + 1,
    ];
    for start in [0, 1, 63, 4_095, 1_700_000_000_123] {
        for delay in edges.iter().chain(&more) {
            let mut wheel = TimerWheel::new(at(start));
            wheel.insert(at(start + delay), 1);
            wheel.insert(at(start + delay + 1), 2);
            let mut seen = Vec::new();
            // Walk by next_deadline as the shell does; it may only be early, never late.
            for _ in 0..LEVELS + 3 {
                let Some(wake) = wheel.next_deadline() else {
                    break;
                };
                assert!(wake.as_millis() <= start + delay || !seen.is_empty());
                seen.extend(
                    fire(&mut wheel, wake.as_millis())
                        .into_iter()
                        .map(|k| (k, wake.as_millis())),
                );
            }
            assert_eq!(
                seen,
                vec![(1, start + delay), (2, start + delay + 1)],
                "start {start} delay {delay}"
            );
        }
    }
}

#[test]
fn big_jumps_fire_everything_in_order() {
    let mut wheel = TimerWheel::new(at(1_000));
    let deadlines: Vec<u64> = (0..1_000u64)
        .map(|i| 1_000 + (i * 7_919_993) % (30 * DAY_MS))
        .collect();
    for (key, &d) in deadlines.iter().enumerate() {
        wheel.insert(at(d), key as u32);
    }
    let mut out = Vec::new();
    wheel.expire(at(1_000 + 30 * DAY_MS), &mut out);
    assert_eq!(out.len(), 1_000);
    assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    // Years in one call, with timers beyond the wheel's epoch: not tick by tick.
    wheel.insert(at(3 * EPOCH_TICKS + 5), 1);
    wheel.insert(at(40 * EPOCH_TICKS), 2);
    assert_eq!(fire(&mut wheel, 10 * EPOCH_TICKS), vec![1]);
    assert_eq!(wheel.next_deadline(), Some(at(40 * EPOCH_TICKS)));
    assert_eq!(fire(&mut wheel, 40 * EPOCH_TICKS), vec![2]);
}

#[test]
fn past_deadlines_fire_on_next_expire_even_if_time_goes_back() {
    let mut wheel = TimerWheel::new(at(10_000));
    wheel.insert(at(5), 1);
    wheel.insert(at(10_000), 2);
    assert_eq!(wheel.next_deadline(), Some(at(10_000)));
    assert_eq!(
        fire(&mut wheel, 9_000),
        vec![1, 2],
        "earlier now is taken as the wheel's time"
    );
    wheel.insert(at(10_001), 3);
    assert!(fire(&mut wheel, 3).is_empty());
    assert_eq!(wheel.elapsed(), at(10_000));
    assert_eq!(fire(&mut wheel, 10_001), vec![3]);
}

#[derive(Clone, Debug)]
enum Op {
    Insert { delay_ns: u64 },
    InsertPast { ago_ns: u64 },
    Cancel { pick: usize },
    Advance { ns: u64 },
    AdvanceToNext,
    Rewind { ns: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let delay = prop_oneof![
        4 => 0..200 * MS,
        3 => 0..600_000 * MS,
        2 => 0..40 * DAY_MS * MS,
        1 => 0..(EPOCH_TICKS * 4) * MS,
    ];
    let whole_ms = delay.clone().prop_map(|ns| ns / MS * MS);
    let advance = prop_oneof![
        4 => 0..5 * MS,
        3 => 0..120_000 * MS,
        2 => 0..30 * DAY_MS * MS,
        1 => 0..(EPOCH_TICKS * 3) * MS,
    ];
    prop_oneof![
        3 => delay.prop_map(|delay_ns| Op::Insert { delay_ns }),
        3 => whole_ms.prop_map(|delay_ns| Op::Insert { delay_ns }),
        1 => (0..10_000 * MS).prop_map(|ago_ns| Op::InsertPast { ago_ns }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => advance.prop_map(|ns| Op::Advance { ns }),
        2 => Just(Op::AdvanceToNext),
        1 => (0..10_000 * MS).prop_map(|ns| Op::Rewind { ns }),
    ]
}

fn start_ns() -> impl Strategy<Value = u64> {
    let start_ms = prop_oneof![
        0..(1u64 << 41),
        (1u64..40, 0u64..300_000).prop_map(|(epoch, back)| epoch * EPOCH_TICKS - back),
    ];
    (start_ms, 0..MS).prop_map(|(ms, sub)| ms * MS + sub)
}

/// Later time for the test, kept far from u64 overflow.
fn later(now: Timestamp, ns: u64) -> Timestamp {
    Timestamp(now.as_nanos().saturating_add(ns).min(1 << 62))
}

/// The reference: every live timer ordered by (deadline, seq).
struct Model {
    wheel: TimerWheel<u32>,
    live: BTreeMap<(Timestamp, u64), u32>,
    ids: Vec<(TimerId, Timestamp, u64)>,
    now: Timestamp,
    cancelled_any: bool,
}

impl Model {
    fn insert(&mut self, deadline: Timestamp) {
        let seq = self.ids.len() as u64;
        let id = self.wheel.insert(deadline, seq as u32);
        self.live.insert((deadline, seq), seq as u32);
        self.ids.push((id, deadline, seq));
    }

    fn advance(&mut self, now: Timestamp) -> Result<usize, TestCaseError> {
        let mut out = Vec::new();
        self.wheel.expire(now, &mut out);
        self.now = self.now.max(now);
        let mut want = Vec::new();
        while let Some(entry) = self.live.first_entry() {
            if deadline_tick(entry.key().0) > self.now.as_millis() {
                break;
            }
            want.push((entry.key().0, entry.remove()));
        }
        prop_assert_eq!(&out, &want, "fired at {:?}", self.now);
        if let Some(wake) = self.wheel.next_deadline() {
            prop_assert!(
                wake.as_millis() > self.now.as_millis(),
                "would busy-loop at {:?}",
                wake
            );
        }
        Ok(out.len())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.wheel.len(), self.live.len());
        // `peek` names exactly the timer the model fires first.
        let first = self.live.iter().next().map(|(&(deadline, _), key)| (deadline, key));
        prop_assert_eq!(self.wheel.peek(), first);
        let earliest = self
            .live
            .keys()
            .next()
            .map(|&(deadline, _)| deadline_tick(deadline));
        match (self.wheel.next_deadline(), earliest) {
            (None, None) => {}
            (Some(wake), Some(tick)) => {
                let due = tick.max(self.now.as_millis());
                prop_assert_eq!(wake.as_nanos() % MS, 0);
                prop_assert!(wake.as_millis() >= self.now.as_millis());
                prop_assert!(
                    wake.as_millis() <= due,
                    "wake {:?} after due tick {}",
                    wake,
                    due
                );
                if !self.cancelled_any {
                    prop_assert_eq!(wake.as_millis(), due, "inexact without cancellations");
                }
            }
            (wake, tick) => prop_assert!(false, "next_deadline {:?} vs model {:?}", wake, tick),
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn matches_btreemap_model(start in start_ns(), ops in proptest::collection::vec(op(), 0..200)) {
        let now = Timestamp(start);
        let mut m = Model { wheel: TimerWheel::new(now), live: BTreeMap::new(), ids: Vec::new(), now, cancelled_any: false };
        for op in ops {
            match op {
                Op::Insert { delay_ns } => m.insert(later(m.now, delay_ns)),
                Op::InsertPast { ago_ns } => m.insert(Timestamp(m.now.as_nanos().saturating_sub(ago_ns))),
                Op::Cancel { pick } if !m.ids.is_empty() => {
                    let (id, deadline, seq) = m.ids[pick % m.ids.len()];
                    let want = m.live.remove(&(deadline, seq));
                    m.cancelled_any |= want.is_some();
                    prop_assert_eq!(m.wheel.cancel(id), want);
                }
                Op::Cancel { .. } => {}
                Op::Advance { ns } => { m.advance(later(m.now, ns))?; }
                Op::AdvanceToNext => {
                    if let Some(wake) = m.wheel.next_deadline() { m.advance(wake)?; }
                }
                Op::Rewind { ns } => { m.advance(Timestamp(m.now.as_nanos().saturating_sub(ns)))?; }
            }
            m.check()?;
        }
        // Drain by following next_deadline: nothing is skipped, and early
        // wake-ups (after cancellations) are few between real firings.
        let mut empty_wakes = 0;
        while let Some(wake) = m.wheel.next_deadline() {
            if m.advance(wake)? == 0 {
                empty_wakes += 1;
                prop_assert!(empty_wakes <= 1, "two empty wake-ups in a row");
            } else {
                empty_wakes = 0;
            }
            m.check()?;
        }
        prop_assert!(m.live.is_empty());
    }
}
