//! Every pure codec: Binance kline frames and control messages ([`binance`]),
//! Binance REST replies ([`binance_rest`]), the client `/ws/market` protocol
//! ([`client`]), HTTP/1.1 heads ([`http`]), DNS messages ([`dns`]) and the
//! client address behind a trusted proxy ([`forwarded`]).
//!
//! Owns: parsing and encoding bytes. Never holds state between calls, never
//! touches a socket, a clock or a store; each codec is fuzzed (see `fuzz/`).
pub mod binance;
pub mod binance_rest;
pub mod client;
pub mod dns;
pub mod forwarded;
pub mod http;
