//! The message pacer of one exchange connection: every message the exchange
//! counts against its per-connection limit (our SUBSCRIBE/UNSUBSCRIBE and the
//! pongs the shell sends for the exchange's pings) goes through it, and
//! messages are spaced evenly, `1 s / rate` apart, never in bursts. A rolling
//! second then holds at most `rate` paced messages plus a pong (the exchange
//! pings at most every 20 s); with the default rates (spot 2/s under a limit
//! of 5, USD-M 5/s under 10) timing skew between us and the exchange (a write
//! delayed by a slow loop turn, network jitter) costs at most one more paced
//! message in a second and still leaves a message of headroom.
//!
//! It owns only the timing decision; what is sent, and batching many stream
//! names into one message, belong to the upstream pool. It never reads a clock.

use crate::time::{Duration, Timestamp};

#[derive(Clone, Debug)]
pub struct Pacer {
    gap: Duration,
    last: Option<Timestamp>,
}

impl Pacer {
    /// Spacing `1 s / per_second` (rounded up to the nanosecond; 0 is taken as 1).
    pub fn new(per_second: usize) -> Pacer {
        let per_second = per_second.max(1) as u64;
        Pacer { gap: Duration(1_000_000_000u64.div_ceil(per_second)), last: None }
    }

    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// The earliest time the next paced message may leave.
    pub fn ready_at(&self) -> Timestamp {
        self.last.map_or(Timestamp::ZERO, |t| t.add(self.gap))
    }

    pub fn ready(&self, now: Timestamp) -> bool {
        now >= self.ready_at()
    }

    /// A message left at `now`: a paced one (asked for with `ready`) or one
    /// the pacer could not hold back (a pong). The next one waits a full gap.
    pub fn sent(&mut self, now: Timestamp) {
        self.last = Some(self.last.map_or(now, |t| t.max(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp(ms * MS)
    }

    #[test]
    fn messages_are_spaced_exactly_one_gap_apart() {
        let mut p = Pacer::new(3);
        assert_eq!(p.gap(), Duration(333_333_334));
        assert!(p.ready(at(0)));
        p.sent(at(1000));
        assert_eq!(p.ready_at(), Timestamp(1000 * MS + 333_333_334));
        assert!(!p.ready(Timestamp(1000 * MS + 333_333_333)));
        assert!(p.ready(Timestamp(1000 * MS + 333_333_334)));
    }

    #[test]
    fn a_pong_pushes_the_next_message_a_full_gap_later() {
        let mut p = Pacer::new(5);
        p.sent(at(0));
        p.sent(at(150)); // the pong could not wait
        assert_eq!(p.ready_at(), at(350));
        // Time never goes backwards for the pacer.
        p.sent(at(100));
        assert_eq!(p.ready_at(), at(350));
    }

    /// In any window of 1 s, a sender that only sends when `ready` (at times of
    /// its choosing) plus one unpaced pong per ping sends at most `rate + 1`
    /// messages in the half-open window, and `rate` without pongs.
    fn max_in_window(times: &[u64], window: u64) -> usize {
        let mut best = 0;
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|u| **u < t + window).count();
            best = best.max(n);
        }
        best
    }

    proptest! {
        #[test]
        fn the_rolling_window_never_holds_more_than_the_rate(
            rate in 1usize..12,
            attempts in proptest::collection::vec((0u64..400, any::<bool>()), 1..300),
        ) {
            let mut p = Pacer::new(rate);
            let mut now = 0u64;
            let mut paced = Vec::new();
            let mut all = Vec::new();
            let mut pongs = Vec::new();
            for (step, is_pong) in attempts {
                now += step * MS;
                let t = Timestamp(now);
                if is_pong {
                    // At most one ping per second from the exchange (spot pings every 20 s).
                    if pongs.last().is_none_or(|l| now >= l + 1000 * MS) {
                        p.sent(t);
                        pongs.push(now);
                        all.push(now);
                    }
                } else if p.ready(t) {
                    p.sent(t);
                    paced.push(now);
                    all.push(now);
                }
            }
            prop_assert!(max_in_window(&paced, 1000 * MS) <= rate);
            prop_assert!(max_in_window(&all, 1000 * MS) <= rate + 1);
            for w in paced.windows(2) {
                prop_assert!(w[1] - w[0] >= p.gap().0, "spacing {:?}", w);
            }
        }
    }
}
