//! Every pure codec: Binance kline frames and control messages ([`binance`]),
//! Binance REST replies ([`binance::rest`]), the no-alloc JSON scanner the kline
//! parser is built on ([`json_scan`]), the client `/ws/market` protocol
//! ([`client`]), HTTP/1.1 heads ([`http`]), DNS messages ([`dns`]), the
//! client address behind a trusted proxy ([`forwarded`]) and the server side of
//! WebSocket with permessage-deflate ([`ws`]).
//!
//! Owns: parsing and encoding bytes. Never holds state between calls, never
//! touches a socket, a clock or a store; each codec is fuzzed (see `fuzz/`).
pub mod binance;
pub mod client;
pub mod dns;
pub mod forwarded;
pub mod json_scan;
pub mod http;
pub mod ws;
