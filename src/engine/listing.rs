//! Which symbols each market lists. The shell fetches the market's
//! `exchangeInfo` (the same document the market directory uses) and hands the
//! `BASE/QUOTE` pairs in as [`Input::SymbolsListed`](super::Input), journaled
//! like every input; the exchange's own `-1121 Invalid symbol` answers add to
//! a bounded set of refused pairs while no list is known. A series whose pair
//! is known not to exist is answered with one error and costs no job, no
//! stream and no REST request.
//!
//! It owns only these sets and the error text; it never fetches anything,
//! never reads a clock and never decides what happens to jobs (the engine
//! does, in `unlisted.rs` and `job/`).

use crate::model::{Market, SeriesId};
use std::collections::BTreeSet;

/// Pairs remembered as refused by the exchange per market while its list is
/// unknown. At the bound a newly refused pair is not remembered: its next
/// subscribe starts a job that the next `-1121` ends again (bounded memory
/// over a flood of made-up symbols; the list, once known, answers them all).
pub const MAX_REFUSED_PER_MARKET: usize = 4096;

#[derive(Debug, Default)]
pub struct Listings {
    listed: [Option<BTreeSet<String>>; 2],
    refused: [BTreeSet<String>; 2],
}

/// `BTC/USDT` of `BTC/USDT` or of the futures form `BTC/USDT:USDT`.
pub fn pair_of(symbol: &str) -> &str {
    symbol.split_once(':').map_or(symbol, |(pair, _)| pair)
}

/// The one message an unknown symbol gets (WebSocket error frame and HTTP 404 detail).
pub fn unknown_symbol_message(id: &SeriesId) -> String {
    format!("unknown symbol: {} is not listed on binance {}", id.symbol(), id.market())
}

impl Listings {
    /// A market's list arrived. An empty list is not a usable answer (a real
    /// exchange always lists something) and is ignored: `false`.
    pub fn set(&mut self, market: Market, pairs: Vec<String>) -> bool {
        if pairs.is_empty() {
            return false;
        }
        self.listed[market.index()] = Some(pairs.into_iter().collect());
        self.refused[market.index()].clear();
        true
    }

    /// The exchange answered `-1121` for this series' symbol.
    pub fn refuse(&mut self, id: &SeriesId) {
        let Some(market) = Market::parse(id.market()) else { return };
        let set = &mut self.refused[market.index()];
        if set.len() < MAX_REFUSED_PER_MARKET {
            set.insert(pair_of(id.symbol()).to_string());
        }
    }

    pub fn is_known(&self, market: Market) -> bool {
        self.listed[market.index()].is_some()
    }

    pub fn len(&self, market: Market) -> usize {
        self.listed[market.index()].as_ref().map_or(0, BTreeSet::len)
    }

    /// `Err(message)` when the series' symbol is known not to exist on its
    /// market; `Ok` when it is listed or nothing is known yet.
    pub fn check(&self, id: &SeriesId) -> Result<(), String> {
        let Some(market) = Market::parse(id.market()) else { return Ok(()) };
        let pair = pair_of(id.symbol());
        let unknown = match &self.listed[market.index()] {
            Some(listed) => !listed.contains(pair),
            None => self.refused[market.index()].contains(pair),
        };
        if unknown {
            Err(unknown_symbol_message(id))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SeriesId {
        SeriesId::parse(s).unwrap()
    }

    #[test]
    fn unknown_only_when_the_list_says_so_or_the_exchange_refused() {
        let mut l = Listings::default();
        let typo = sid("binance:spot:BTC/USTD:1m");
        assert!(l.check(&typo).is_ok(), "nothing known yet");
        l.refuse(&typo);
        assert_eq!(l.check(&typo).unwrap_err(), "unknown symbol: BTC/USTD is not listed on binance spot");
        assert!(!l.set(Market::Spot, Vec::new()), "an empty list is ignored");
        assert!(l.set(Market::Spot, vec!["BTC/USDT".into()]));
        assert!(l.check(&sid("binance:spot:BTC/USDT:5m")).is_ok());
        assert!(l.check(&typo).is_err());
        assert!(l.check(&sid("binance:futures:BTC/USTD:USDT:1m")).is_ok(), "futures list unknown");
        l.set(Market::Futures, vec!["BTC/USDT".into()]);
        assert!(l.check(&sid("binance:futures:BTC/USDT:USDT:1m")).is_ok());
        assert_eq!(
            l.check(&sid("binance:futures:ETH/USDT:USDT:1m")).unwrap_err(),
            "unknown symbol: ETH/USDT:USDT is not listed on binance futures"
        );
    }

    #[test]
    fn refused_pairs_are_bounded() {
        let mut l = Listings::default();
        for i in 0..MAX_REFUSED_PER_MARKET + 10 {
            l.refuse(&sid(&format!("binance:spot:X{i}/USDT:1m")));
        }
        assert_eq!(l.refused[0].len(), MAX_REFUSED_PER_MARKET);
    }
}
