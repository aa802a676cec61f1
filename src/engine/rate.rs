//! The message rate of one client: a token bucket in engine time. `per_s`
//! messages a second, bursts of up to twice that; a message that finds the
//! bucket empty is refused (and answered once per drain of the client's queue
//! by the hub). Living in the core, the decision is recorded with every other
//! input, so a replay refuses exactly the messages the live run refused.
//!
//! Never reads a clock: time comes in as an argument.

use crate::time::Timestamp;

const MILLI: u64 = 1000;

#[derive(Clone, Debug)]
pub struct MessageRate {
    per_s: u32,
    /// Tokens in thousandths, so refills need no floating point.
    milli_tokens: u64,
    /// When the bucket was last refilled; `None` until the first message
    /// (the bucket starts full).
    last_refill: Option<Timestamp>,
}

impl MessageRate {
    /// `per_s` 0 means no limit.
    pub fn new(per_s: u32) -> MessageRate {
        MessageRate { per_s, milli_tokens: Self::capacity(per_s), last_refill: None }
    }

    fn capacity(per_s: u32) -> u64 {
        u64::from(per_s) * 2 * MILLI
    }

    /// Takes one token; false when the client is over its rate.
    pub fn allow(&mut self, now: Timestamp) -> bool {
        if self.per_s == 0 {
            return true;
        }
        let last = *self.last_refill.get_or_insert(now);
        let elapsed_ms = now.as_millis().saturating_sub(last.as_millis());
        if elapsed_ms > 0 {
            // per_s tokens a second = per_s milli-tokens a millisecond.
            let refill = elapsed_ms.saturating_mul(u64::from(self.per_s));
            self.milli_tokens = self.milli_tokens.saturating_add(refill).min(Self::capacity(self.per_s));
            self.last_refill = Some(now);
        }
        if self.milli_tokens >= MILLI {
            self.milli_tokens -= MILLI;
            true
        } else {
            false
        }
    }

    pub fn per_s(&self) -> u32 {
        self.per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + n)
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_a_token_per_interval() {
        let mut r = MessageRate::new(5);
        assert_eq!((0..12).filter(|_| r.allow(ms(0))).count(), 10, "burst is twice the rate");
        assert!(!r.allow(ms(100)), "half a token after 100 ms");
        assert!(r.allow(ms(200)), "one token after 200 ms at 5/s");
        assert!(!r.allow(ms(200)));
        assert_eq!((0..30).filter(|_| r.allow(ms(60_000))).count(), 10, "refill is capped at the burst");
    }

    #[test]
    fn zero_is_unlimited() {
        let mut r = MessageRate::new(0);
        assert!((0..100_000).all(|_| r.allow(ms(0))));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let mut r = MessageRate::new(1);
        assert!(r.allow(ms(10_000)) && r.allow(ms(10_000)));
        assert!(!r.allow(ms(0)));
    }
}
