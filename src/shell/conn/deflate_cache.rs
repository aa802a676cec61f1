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
