//! Client /ws/market protocol (being written).
