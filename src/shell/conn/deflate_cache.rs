//! Broadcast frames compressed once (RFC 7692 with `server_no_context_takeover`):
//! the compressed form of a frame the engine shares between clients (one
//! `Bytes`, cloned into every subscriber's queue) is computed by the first
//! client that takes it and served from here to every other client that
//! negotiated permessage-deflate.
//!
//! Keyed by the frame's identity (its data pointer and length): each entry
//! holds a clone of the frame, so that allocation cannot be freed and reused
//! for another frame while the entry lives. Bounded by entries and bytes,
//! oldest out first. Frames below the threshold, or that do not shrink, go
//! out as they are.
//!
//! Owns: the compressor and the compressed bytes. Never writes to a socket
//! and never decides who negotiated compression (the connection does).

use crate::engine::fasthash::FastMap;
use crate::wire::ws::deflate::Compressor;
use bytes::Bytes;
use std::collections::VecDeque;

/// Frames shorter than this go out uncompressed: a forming update (~180 B)
/// still saves ~20%; below ~100 B the deflate block overhead eats the gain
/// (benches/deflate.rs measures it).
pub const THRESHOLD: usize = 128;
/// zlib level 1: measured at ~2x the speed of level 6 for ~5% more bytes on our JSON.
pub const LEVEL: u32 = 1;
pub const MAX_ENTRIES: usize = 256;
pub const MAX_BYTES: usize = 4 << 20;

/// What compression did, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateCounters {
    /// Frames run through the compressor (once per shared frame).
    pub frames_compressed: u64,
    /// Frames sent compressed from a form another client's send computed.
    pub cache_hits: u64,
    /// Frames sent compressed, to any client.
    pub frames_sent_compressed: u64,
    /// Payload bytes not sent thanks to compression, summed over every client.
    pub bytes_saved: u64,
}

struct Entry {
    /// Keeps the frame's allocation alive while its key is in the map.
    _frame: Bytes,
    /// `None`: compressing did not pay.
    compressed: Option<Box<[u8]>>,
}

impl Entry {
    fn cost(&self) -> usize {
        self._frame.len() + self.compressed.as_ref().map_or(0, |c| c.len())
    }
}

type Key = (usize, usize);

pub struct DeflateCache {
    compressor: Compressor,
    map: FastMap<Key, Entry>,
    order: VecDeque<Key>,
    bytes: usize,
    scratch: Vec<u8>,
    /// A frame compressed for one client only (not shared): kept until the next call.
    single: Option<Box<[u8]>>,
    pub counters: DeflateCounters,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for DeflateCache {
    fn default() -> Self {
        DeflateCache::with_bounds(MAX_ENTRIES, MAX_BYTES)
    }
}

impl DeflateCache {
    pub fn with_bounds(max_entries: usize, max_bytes: usize) -> DeflateCache {
        DeflateCache {
            compressor: Compressor::new(LEVEL),
            map: FastMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            scratch: Vec::new(),
            single: None,
            counters: DeflateCounters::default(),
            max_entries,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }

    /// The compressed payload to send for `frame` to a client that negotiated
    /// compression and accepts messages up to `max_len` compressed; `None`:
    /// send it as it is.
    pub fn compressed(&mut self, frame: &Bytes, max_len: usize) -> Option<&[u8]> {
        if frame.len() < THRESHOLD || frame.len() > max_len {
            return None;
        }
        let key = (frame.as_ptr() as usize, frame.len());
        let hit = self.map.contains_key(&key);
        let mut single = false;
        if !hit {
            self.scratch.clear();
            self.compressor.compress(frame, &mut self.scratch);
            self.counters.frames_compressed += 1;
            let compressed = (self.scratch.len() < frame.len()).then(|| self.scratch.as_slice().into());
            if frame.is_unique() {
                // Nobody else holds it (a catch-up page, a reply): nothing to share.
                self.single = compressed;
                single = true;
            } else {
                self.insert(key, Entry { _frame: frame.clone(), compressed });
            }
        }
        let out = if single { self.single.as_deref() } else { self.map.get(&key).and_then(|e| e.compressed.as_deref()) };
        if let Some(c) = out {
            self.counters.frames_sent_compressed += 1;
            self.counters.bytes_saved += (frame.len() - c.len()) as u64;
            if hit {
                self.counters.cache_hits += 1;
            }
        }
        out
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        let cost = entry.cost();
        if cost > self.max_bytes {
            return;
        }
        while !self.order.is_empty() && (self.map.len() >= self.max_entries || self.bytes + cost > self.max_bytes) {
            if let Some(old) = self.order.pop_front() {
                if let Some(e) = self.map.remove(&old) {
                    self.bytes -= e.cost();
                }
            }
        }
        self.bytes += cost;
        self.order.push_back(key);
        self.map.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ws::deflate::inflate;

    fn frame(i: usize, len: usize) -> Bytes {
        let s = format!("{{\"type\":\"candle\",\"n\":{i},\"pad\":\"{}\"}}", "ab".repeat(len / 2));
        Bytes::from(s)
    }

    #[test]
    fn a_shared_frame_is_compressed_once_and_served_to_every_client() {
        let mut c = DeflateCache::default();
        let f = frame(1, 400);
        let others: Vec<Bytes> = (0..3).map(|_| f.clone()).collect(); // other subscribers' queues
        let first = c.compressed(&f, usize::MAX).expect("it pays").to_vec();
        for o in &others {
            assert_eq!(c.compressed(o, usize::MAX), Some(&first[..]));
        }
        assert_eq!(inflate(&first, 1 << 20).unwrap(), f.to_vec());
        assert_eq!(c.counters.frames_compressed, 1);
        assert_eq!(c.counters.cache_hits, 3);
        assert_eq!(c.counters.frames_sent_compressed, 4);
        assert_eq!(c.counters.bytes_saved, 4 * (f.len() - first.len()) as u64);
    }

    #[test]
    fn small_frames_unshared_frames_and_over_window_frames_skip_the_cache() {
        let mut c = DeflateCache::default();
        let small = frame(1, 20);
        let _shared = small.clone();
        assert!(small.len() < THRESHOLD);
        assert_eq!(c.compressed(&small, usize::MAX), None);
        let page = frame(2, 5000); // a catch-up page: only this client holds it
        let got = c.compressed(&page, usize::MAX).expect("compressed").to_vec();
        assert_eq!(inflate(&got, 1 << 20).unwrap(), page.to_vec());
        assert!(c.is_empty(), "an unshared frame is not kept");
        let big = frame(3, 2000);
        let _shared = big.clone();
        assert_eq!(c.compressed(&big, 1024), None, "longer than the client's window allows");
        assert_eq!(c.counters.frames_compressed, 1);
    }

    #[test]
    fn the_cache_is_bounded_by_entries_and_by_bytes_oldest_out_first() {
        let mut c = DeflateCache::with_bounds(4, 1 << 20);
        let frames: Vec<Bytes> = (0..6).map(|i| frame(i, 300)).collect();
        let holders: Vec<Bytes> = frames.clone();
        for f in &frames {
            c.compressed(f, usize::MAX);
        }
        assert_eq!(c.len(), 4);
        // The two oldest went: sending them again compresses again; the newest are hits.
        c.compressed(&frames[5], usize::MAX);
        assert_eq!((c.counters.frames_compressed, c.counters.cache_hits), (6, 1));
        c.compressed(&frames[0], usize::MAX);
        assert_eq!((c.counters.frames_compressed, c.counters.cache_hits), (7, 1));
        assert_eq!(c.len(), 4);

        let mut c = DeflateCache::with_bounds(256, 1500);
        for f in &frames {
            c.compressed(f, usize::MAX);
            assert!(c.cached_bytes() <= 1500);
        }
        assert!(c.len() < 6 && !c.is_empty(), "{}", c.len());
        // Default bounds: 256 entries.
        let mut c = DeflateCache::default();
        let many: Vec<Bytes> = (0..300).map(|i| frame(i, 200)).collect();
        let _held = many.clone();
        for f in &many {
            c.compressed(f, usize::MAX);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.cached_bytes() <= MAX_BYTES);
        drop(holders);
    }
}
