//! The series table: interns every series the engine has seen (subscribed,
//! ingested or derived) as a small index, and keeps per-series facts the hub
//! and the jobs share: timeframe, subscribers, the newest closed candle known.
//! Never removes entries while the engine runs (indices stay valid); the table
//! is bounded by the subscription and job limits that feed it.

use crate::model::SeriesId;
use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SeriesIdx(pub u32);

#[derive(Debug)]
pub struct SeriesEntry {
    pub id: SeriesId,
    pub tf_s: i64,
    /// Client slots subscribed to this series, in subscription order.
    pub subscribers: Vec<usize>,
    /// The newest closed candle time accepted for this series (stored or
    /// published). Extends the "latest closed" window when the local clock lags.
    pub last_closed: Option<i64>,
}

#[derive(Default, Debug)]
pub struct SeriesTable {
    entries: Vec<SeriesEntry>,
    // Lookup only; never iterated, so its hash order cannot leak into outputs.
    by_name: HashMap<String, SeriesIdx>,
}

impl SeriesTable {
    pub fn intern(&mut self, id: &SeriesId) -> SeriesIdx {
        if let Some(idx) = self.by_name.get(id.as_str()) {
            return *idx;
        }
        let idx = SeriesIdx(self.entries.len() as u32);
        self.entries.push(SeriesEntry {
            id: id.clone(),
            tf_s: id.timeframe().seconds(),
            subscribers: Vec::new(),
            last_closed: None,
        });
        self.by_name.insert(id.as_str().to_string(), idx);
        idx
    }

    pub fn lookup(&self, name: &str) -> Option<SeriesIdx> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, idx: SeriesIdx) -> &SeriesEntry {
        &self.entries[idx.0 as usize]
    }

    pub fn get_mut(&mut self, idx: SeriesIdx) -> &mut SeriesEntry {
        &mut self.entries[idx.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn note_closed(&mut self, idx: SeriesIdx, t: i64) {
        let e = self.get_mut(idx);
        e.last_closed = Some(e.last_closed.map_or(t, |x| x.max(t)));
    }
}
