//! The series table: interns every series the engine has seen (subscribed,
//! ingested or derived) as a small index, and keeps per-series facts the hub
//! and the jobs share: timeframe and the newest closed candle known (who is
//! subscribed is the hub's own index).
//! Never removes entries while the engine runs (indices stay valid); the table
//! is bounded by the subscription and job limits that feed it.

use crate::model::SeriesId;
use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SeriesIdx(pub u32);

/// Per-series candles of one flush (or one ingest request), in publish order
/// (sorted by series id): what a write stores and, once stored, publishes.
pub type FlushSet = Vec<(SeriesIdx, Vec<crate::model::Candle>)>;

#[derive(Debug)]
pub struct SeriesEntry {
    pub id: SeriesId,
    pub tf_s: i64,
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

    /// Every series seen, in interning order.
    pub fn entries(&self) -> impl Iterator<Item = &SeriesEntry> {
        self.entries.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn note_closed(&mut self, idx: SeriesIdx, t: i64) {
        let e = self.get_mut(idx);
        e.last_closed = Some(e.last_closed.map_or(t, |x| x.max(t)));
    }
}

/// A map keyed by [`SeriesIdx`]: a lookup is two array accesses (the tick
/// path looks a job up several times per frame; a `BTreeMap` of 500 jobs cost
/// more than the lookups' callers). Values sit densely in `entries`; `slots`
/// holds each series' entry position (4 bytes per series ever interned, so the
/// many series without a job cost little). Iterates in ascending index order,
/// exactly as the `BTreeMap` it replaces, so outputs built by iterating it are
/// unchanged. Bounded by the series table it indexes.
#[derive(Debug)]
pub struct IdxMap<T> {
    /// Position in `entries` by series index; `NO_ENTRY` when absent.
    slots: Vec<u32>,
    entries: Vec<(SeriesIdx, T)>,
}

const NO_ENTRY: u32 = u32::MAX;

impl<T> Default for IdxMap<T> {
    fn default() -> Self {
        IdxMap { slots: Vec::new(), entries: Vec::new() }
    }
}

impl<T> IdxMap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    fn position(&self, idx: &SeriesIdx) -> Option<usize> {
        let at = *self.slots.get(idx.0 as usize)?;
        (at != NO_ENTRY).then_some(at as usize)
    }

    #[inline]
    pub fn get(&self, idx: &SeriesIdx) -> Option<&T> {
        let at = self.position(idx)?;
        self.entries.get(at).map(|(_, v)| v)
    }

    #[inline]
    pub fn get_mut(&mut self, idx: &SeriesIdx) -> Option<&mut T> {
        let at = self.position(idx)?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    #[inline]
    pub fn contains_key(&self, idx: &SeriesIdx) -> bool {
        self.position(idx).is_some()
    }

    /// Inserts, returning the value it replaces.
    pub fn insert(&mut self, idx: SeriesIdx, value: T) -> Option<T> {
        if let Some(v) = self.get_mut(&idx) {
            return Some(std::mem::replace(v, value));
        }
        let at = idx.0 as usize;
        if self.slots.len() <= at {
            self.slots.resize(at + 1, NO_ENTRY);
        }
        self.slots[at] = self.entries.len() as u32;
        self.entries.push((idx, value));
        None
    }

    pub fn remove(&mut self, idx: &SeriesIdx) -> Option<T> {
        let at = self.position(idx)?;
        self.slots[idx.0 as usize] = NO_ENTRY;
        let (_, value) = self.entries.swap_remove(at);
        // The last entry moved into the hole: repoint its slot.
        if let Some((moved, _)) = self.entries.get(at) {
            self.slots[moved.0 as usize] = at as u32;
        }
        Some(value)
    }

    /// Entries in ascending index order.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesIdx, &T)> {
        self.slots
            .iter()
            .filter(|at| **at != NO_ENTRY)
            .filter_map(|at| self.entries.get(*at as usize))
            .map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &SeriesIdx> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }
}

/// One pinned series' newest closed candle, for the pinned-lag metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedClose {
    pub series_id: String,
    pub tf_s: i64,
    /// Close time (open time + timeframe, unix seconds) of the newest closed
    /// candle known; `None` before the first one.
    pub closed_at: Option<i64>,
}

impl super::Engine {
    /// Each pinned series (the whitelist, in its order) with the close time of
    /// its newest closed candle. Read-only.
    pub fn pinned_closes(&self) -> Vec<PinnedClose> {
        self.cfg
            .supervisor
            .whitelist
            .iter()
            .map(|id| {
                let tf_s = id.timeframe().seconds();
                let entry = self.series.lookup(id.as_str()).map(|i| self.series.get(i));
                let closed_at = entry.and_then(|e| e.last_closed.map(|t| t + tf_s));
                PinnedClose { series_id: id.as_str().to_string(), tf_s, closed_at }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Any sequence of inserts and removes leaves it equal to a BTreeMap,
        /// iteration order included.
        #[test]
        fn behaves_as_a_btreemap(ops in prop::collection::vec((any::<bool>(), 0u32..64, any::<u16>()), 0..200)) {
            let mut ours = IdxMap::new();
            let mut model = BTreeMap::new();
            for (insert, key, value) in ops {
                let idx = SeriesIdx(key);
                if insert {
                    prop_assert_eq!(ours.insert(idx, value), model.insert(idx, value));
                } else {
                    prop_assert_eq!(ours.remove(&idx), model.remove(&idx));
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.get(&idx), model.get(&idx));
            }
            let a: Vec<_> = ours.iter().collect();
            let b: Vec<_> = model.iter().collect();
            prop_assert_eq!(a, b);
        }
    }
}
