//! Journal record/replay (being written).
