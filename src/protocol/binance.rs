//! Binance wire format (being written).
