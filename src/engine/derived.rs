//! Derived timeframe folding (being written).
