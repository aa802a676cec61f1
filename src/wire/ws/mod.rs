//! The server side of RFC 6455 WebSocket for `/ws/market` clients, with RFC
//! 7692 permessage-deflate: frame heads and masking ([`frame`]), client frames
//! to messages under a size limit ([`decoder`]), and the extension's offer,
//! answer, compression and inflation ([`deflate`]).
//!
//! Owns: bytes in, events out; bytes to send. Never touches a socket (the
//! shell's `ws_conn` does); the only state is the message being reassembled,
//! a value the connection owns.
pub mod decoder;
pub mod deflate;
pub mod frame;
