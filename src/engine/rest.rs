//! The REST scheduler: every request the engine wants from the exchange's REST
//! API (history healing, late closes, first-visit history) goes through here.
//! It keeps each market under its request-weight budget per UTC minute, at
//! most a few requests in flight per market, and honours 429/418 `Retry-After`
//! by pausing the market. The shell carries out `RestRequest` outputs and
//! answers with `RestResponse`/`RestFailed` inputs. Never reads a clock.

use super::RestId;
use crate::model::Market;
use crate::time::{Duration, Timestamp};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Request weight we allow ourselves per UTC minute (a share of Binance's
    /// 6000 spot / 2400 USD-M, leaving room for other users of the same IP).
    pub weight_budget_spot: u32,
    pub weight_budget_futures: u32,
    pub max_inflight_per_market: usize,
    /// Requests waiting per market; past this, new ones are refused (the
    /// caller retries later) so a flood of heals cannot grow memory.
    pub max_queued_per_market: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            weight_budget_spot: 3000,
            weight_budget_futures: 1200,
            max_inflight_per_market: 2,
            max_queued_per_market: 10_000,
        }
    }
}

/// A request the shell must perform: `GET <market's REST base><path>`.
#[derive(Clone, Debug, PartialEq)]
pub struct RestCall {
    pub id: RestId,
    pub market: Market,
    pub path: String,
}

#[derive(Debug)]
struct Pending<P> {
    id: RestId,
    path: String,
    weight: u32,
    purpose: P,
}

#[derive(Debug, Default)]
struct MarketRest<P> {
    queue: VecDeque<Pending<P>>,
    inflight: usize,
    minute: i64,
    used: u32,
    paused_until: Option<Timestamp>,
}

pub struct RestScheduler<P> {
    cfg: RestConfig,
    next_id: u64,
    markets: [MarketRest<P>; 2],
    inflight: BTreeMap<RestId, (Market, P)>,
    pub requests_sent: u64,
    pub responses_rate_limited: u64,
    /// Weight of the requests sent (our own count, by the endpoint's cost).
    pub weight_sent: u64,
}


fn minute_of(now: Timestamp) -> i64 {
    now.as_secs().div_euclid(60)
}

impl<P> RestScheduler<P> {
    pub fn new(cfg: RestConfig) -> Self {
        let empty = || MarketRest { queue: VecDeque::new(), inflight: 0, minute: 0, used: 0, paused_until: None };
        RestScheduler { cfg, next_id: 1, markets: [empty(), empty()], inflight: BTreeMap::new(), requests_sent: 0, responses_rate_limited: 0, weight_sent: 0 }
    }

    /// New weight budgets per minute (`SIGHUP`), from the next request on.
    pub fn set_budgets(&mut self, spot: u32, futures: u32) {
        self.cfg.weight_budget_spot = spot;
        self.cfg.weight_budget_futures = futures;
    }

    fn budget(&self, m: Market) -> u32 {
        match m {
            Market::Spot => self.cfg.weight_budget_spot,
            Market::Futures => self.cfg.weight_budget_futures,
        }
    }

    /// Queues a request; `None` when the market's queue is full.
    pub fn submit(&mut self, market: Market, path: String, weight: u32, purpose: P) -> Option<RestId> {
        let ms = &mut self.markets[market.index()];
        if ms.queue.len() >= self.cfg.max_queued_per_market {
            return None;
        }
        let id = RestId(self.next_id);
        self.next_id += 1;
        ms.queue.push_back(Pending { id, path, weight, purpose });
        Some(id)
    }

    /// Sends what the budgets allow now.
    pub fn pump(&mut self, now: Timestamp, out: &mut Vec<RestCall>) {
        // Called after every engine step: nothing queued, nothing to do.
        if self.markets.iter().all(|m| m.queue.is_empty()) {
            return;
        }
        for market in [Market::Spot, Market::Futures] {
            let budget = self.budget(market);
            let max_inflight = self.cfg.max_inflight_per_market;
            let ms = &mut self.markets[market.index()];
            if ms.paused_until.is_some_and(|t| now < t) {
                continue;
            }
            ms.paused_until = None;
            if ms.minute != minute_of(now) {
                ms.minute = minute_of(now);
                ms.used = 0;
            }
            while ms.inflight < max_inflight {
                let Some(front) = ms.queue.front() else { break };
                // A request heavier than the whole budget still goes out alone.
                if ms.used > 0 && ms.used + front.weight > budget {
                    break;
                }
                let Some(p) = ms.queue.pop_front() else { break };
                ms.used += p.weight;
                ms.inflight += 1;
                self.requests_sent += 1;
                self.weight_sent += u64::from(p.weight);
                out.push(RestCall { id: p.id, market, path: p.path });
                self.inflight.insert(p.id, (market, p.purpose));
            }
        }
    }

    /// A request finished (any status). Returns its purpose. `used_weight` is
    /// the exchange's own count (`X-MBX-USED-WEIGHT-1M`), trusted when higher.
    pub fn complete(
        &mut self,
        id: RestId,
        status: Option<u16>,
        retry_after_s: Option<u64>,
        used_weight: Option<u32>,
        now: Timestamp,
    ) -> Option<(Market, P)> {
        let (market, purpose) = self.inflight.remove(&id)?;
        let ms = &mut self.markets[market.index()];
        ms.inflight = ms.inflight.saturating_sub(1);
        if let Some(w) = used_weight {
            if ms.minute == minute_of(now) {
                ms.used = ms.used.max(w);
            }
        }
        if matches!(status, Some(429) | Some(418)) {
            self.responses_rate_limited += 1;
            let wait = Duration::from_secs(retry_after_s.unwrap_or(60).clamp(1, 3600));
            ms.paused_until = Some(now.add(wait));
        }
        Some((market, purpose))
    }

    /// The earliest time `pump` could send something that is waiting.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        for (i, ms) in self.markets.iter().enumerate() {
            if ms.queue.is_empty() || ms.inflight >= self.cfg.max_inflight_per_market {
                continue;
            }
            let at = match ms.paused_until {
                Some(t) => t,
                None => {
                    let market = if i == 0 { Market::Spot } else { Market::Futures };
                    let front_weight = ms.queue.front().map_or(0, |p| p.weight);
                    if ms.used > 0 && ms.used + front_weight > self.budget(market) {
                        Timestamp::from_secs(((ms.minute + 1) * 60) as u64)
                    } else {
                        continue; // sendable now: pump runs after every step
                    }
                }
            };
            next = Some(next.map_or(at, |n: Timestamp| n.min(at)));
        }
        next
    }

    /// Weight used in `market`'s current minute (the exchange's count when higher).
    pub fn used_weight(&self, market: Market) -> u32 {
        self.markets[market.index()].used
    }

    pub fn queued(&self) -> usize {
        self.markets.iter().map(|m| m.queue.len()).sum()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether a request is waiting or in flight for which `pred` holds.
    pub fn any(&self, pred: impl Fn(&P) -> bool) -> bool {
        self.inflight.values().any(|(_, p)| pred(p)) || self.markets.iter().any(|m| m.queue.iter().any(|q| pred(&q.purpose)))
    }

    /// Drops queued (not in-flight) requests for which `pred` holds.
    pub fn cancel_queued(&mut self, pred: impl Fn(&P) -> bool) {
        for m in &mut self.markets {
            m.queue.retain(|q| !pred(&q.purpose));
        }
    }
}

impl super::Engine {
    /// The REST weight budget per UTC minute we allow ourselves: spot, USD-M
    /// futures (`rest_figures().used_weight` is measured against it). Read-only.
    pub fn rest_weight_budget(&self) -> [u32; 2] {
        [self.rest.budget(Market::Spot), self.rest.budget(Market::Futures)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    #[test]
    fn budget_per_minute_and_inflight_cap() {
        let cfg = RestConfig { weight_budget_spot: 10, max_inflight_per_market: 2, ..RestConfig::default() };
        let mut r: RestScheduler<u32> = RestScheduler::new(cfg);
        for i in 0..5 {
            r.submit(Market::Spot, format!("/p{i}"), 4, i).unwrap();
        }
        let mut out = Vec::new();
        r.pump(at(600), &mut out);
        assert_eq!(out.len(), 2, "in-flight cap");
        r.complete(out[0].id, Some(200), None, None, at(601));
        r.complete(out[1].id, Some(200), None, None, at(601));
        out.clear();
        r.pump(at(602), &mut out);
        assert_eq!(out.len(), 0, "8 of 10 used; another 4 would exceed the budget");
        assert_eq!(r.next_deadline(), Some(at(660)));
        r.pump(at(660), &mut out);
        assert_eq!(out.len(), 2, "a new minute, a new budget");
    }

    #[test]
    fn rate_limited_response_pauses_the_market() {
        let mut r: RestScheduler<()> = RestScheduler::new(RestConfig::default());
        r.submit(Market::Futures, "/a".into(), 1, ()).unwrap();
        r.submit(Market::Futures, "/b".into(), 1, ()).unwrap();
        r.submit(Market::Futures, "/c".into(), 1, ()).unwrap();
        let mut out = Vec::new();
        r.pump(at(100), &mut out);
        assert_eq!(out.len(), 2);
        r.complete(out[0].id, Some(429), Some(7), Some(3), at(101));
        out.clear();
        r.pump(at(102), &mut out);
        assert!(out.is_empty(), "paused");
        assert_eq!(r.next_deadline(), Some(at(108)));
        r.pump(at(108), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(r.responses_rate_limited, 1);
    }

    #[test]
    fn queue_is_bounded() {
        let cfg = RestConfig { max_queued_per_market: 1, ..RestConfig::default() };
        let mut r: RestScheduler<()> = RestScheduler::new(cfg);
        assert!(r.submit(Market::Spot, "/a".into(), 1, ()).is_some());
        assert!(r.submit(Market::Spot, "/b".into(), 1, ()).is_none());
        assert!(r.submit(Market::Futures, "/b".into(), 1, ()).is_some());
    }
}
