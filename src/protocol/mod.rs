//! Wire formats: Binance kline streams and control messages ([`binance`]) and the
//! client `/ws/market` protocol ([`client`]). Pure parsing and encoding; no state.
pub mod binance;
pub mod binance_rest;
pub mod client;
