//! Ending the jobs of symbols the exchange does not list: when a market's
//! symbol list arrives, or the exchange answers a history request with `-1121
//! Invalid symbol`, every subscriber of the job's series (base and derived)
//! gets the `unknown symbol` error frame, the subscriptions are removed, the
//! job's pending history is forgotten (no gap ledger entry, no retries) and the
//! job stops, which unsubscribes its exchange stream. These are `Engine`
//! methods; the sets themselves live in `listing.rs`. Never reads a clock.

use super::listing::unknown_symbol_message;
use super::series::SeriesIdx;
use super::{Engine, LogLevel};
use crate::model::Market;
use crate::wire::client as wire;

impl Engine {
    /// `Input::SymbolsListed`: remember the list, end the jobs it does not list.
    pub(super) fn on_symbols_listed(&mut self, market: Market, symbols: Vec<String>) {
        let count = symbols.len();
        if !self.listings.set(market, symbols) {
            self.log(LogLevel::Warn, format!("symbols_list_ignored market={} reason=empty", market.as_str()));
            return;
        }
        self.log(LogLevel::Info, format!("symbols_listed market={} count={count}", market.as_str()));
        let unlisted: Vec<(SeriesIdx, String)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.market == market)
            .filter_map(|(idx, j)| self.listings.check(&j.base_id).err().map(|msg| (*idx, msg)))
            .collect();
        for (job, msg) in unlisted {
            self.end_unlisted(job, &msg);
        }
    }

    /// The exchange answered `-1121` for the job's symbol.
    pub(super) fn on_symbol_refused(&mut self, job: SeriesIdx) {
        let Some(id) = self.jobs.get(job).map(|j| j.base_id.clone()) else { return };
        self.listings.refuse(&id);
        self.end_unlisted(job, &unknown_symbol_message(&id));
    }

    /// Ends a job whose symbol is not listed: error frame to every subscriber
    /// of its series, subscriptions removed, job stopped (stream unsubscribed).
    fn end_unlisted(&mut self, job: SeriesIdx, msg: &str) {
        let Some(j) = self.jobs.get_mut(job) else { return };
        let base_id = j.base_id.clone();
        let mut series = vec![j.base];
        series.extend(j.derived.iter().copied());
        // Nothing will ever fill it: no hole, no ledger entry, no retry.
        j.hole = None;
        self.with_jobs(|jobs, cx| jobs.sync_gap_ledger(cx, job));
        let frame = wire::error_frame("bad_request", msg, None);
        let mut ended = 0;
        for idx in series {
            for client in self.hub.subscribers(idx) {
                if self.hub.unsubscribe(client, idx) {
                    ended += 1;
                    self.hub.send_to(client, frame.clone(), &mut self.outputs);
                }
            }
        }
        self.counters.jobs_ended_unlisted += 1;
        self.log(LogLevel::Warn, format!("job_unlisted series_id={base_id} subscriptions_ended={ended} error={msg:?}"));
        self.supervisor.end_unlisted(&base_id, &mut self.effects);
        self.apply_effects();
        // A job the supervisor did not hold (none normally) stops all the same.
        self.with_jobs(|jobs, cx| jobs.stop_job(cx, job, "unlisted"));
    }
}
