//! A fast, deterministic hasher for the engine's hot lookup-only maps (the job
//! of each exchange stream, the session of each client id). SipHash, std's
//! default, costs more than the rest of a stream lookup on the tick path.
//!
//! Owns: the hash function only. Never: seeds from randomness (the core has
//! none), or backs a map whose iteration order reaches an output; and it is
//! not for maps whose keys an untrusted peer chooses freely (no HashDoS
//! resistance) — the keys here are our own stream names and shell-assigned ids.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A `HashMap` hashed with [`FastHasher`]. Lookup only: never iterate it into
/// an output.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing, eight bytes per step: word-at-a-time mixing by an
/// odd 64-bit constant (the golden ratio's fraction bits), which is enough to
/// spread short ASCII names and small integers over hashbrown's buckets.
#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    state: u64,
}

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    #[inline(always)]
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            // The length keeps "a" and "a\0" apart.
            self.mix(u64::from_le_bytes(word) ^ ((tail.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its control byte from the top 7 bits: fold the well
        // mixed high half down too, so both ends vary.
        self.state ^ (self.state >> 29)
    }
}

/// Longest name a [`NameKey`] holds inline (Binance stream names are 15–35
/// bytes: `1000shibusdt@kline_15m` is 22).
const INLINE_NAME: usize = 46;

/// A name as a map key, short ones stored inline: a lookup compares the key
/// right in the table slot it already loaded, instead of following a
/// `String`'s pointer to another cache line (on a 500-series replay, that
/// miss was most of the stream lookup). Looked up by `&[u8]`; hashes and
/// compares exactly as its bytes do.
#[derive(Clone, Debug)]
pub struct NameKey(NameRepr);

#[derive(Clone, Debug)]
enum NameRepr {
    /// `len <= INLINE_NAME`, by construction.
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<[u8]>),
}

impl NameKey {
    pub fn new(name: &str) -> NameKey {
        let src = name.as_bytes();
        let mut bytes = [0u8; INLINE_NAME];
        match bytes.get_mut(..src.len()) {
            Some(dst) => {
                dst.copy_from_slice(src);
                NameKey(NameRepr::Inline { len: src.len() as u8, bytes })
            }
            None => NameKey(NameRepr::Heap(src.into())),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            NameRepr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            NameRepr::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for NameKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for NameKey {}

impl Hash for NameKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly as `[u8]` hashes, so lookups by `&[u8]` find it.
        self.as_bytes().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash + ?Sized>(v: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        assert_eq!(hash("btcusdt@kline_1m"), hash(&"btcusdt@kline_1m".to_string()));
        let names = ["btcusdt@kline_1m", "btcusdt@kline_5m", "ethusdt@kline_1m", "a", "a\0", ""];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(hash(*a), hash(*b), "{a:?} {b:?}");
            }
        }
        assert_ne!(hash(&1u64), hash(&2u64));
    }

    #[test]
    fn name_keys_are_found_by_their_bytes_whatever_their_length() {
        let mut map: FastMap<NameKey, usize> = FastMap::default();
        let names: Vec<String> = (0..80).map(|n| "x".repeat(n)).collect();
        for (i, name) in names.iter().enumerate() {
            map.insert(NameKey::new(name), i);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(name.as_bytes()), Some(&i), "{name}");
            assert_eq!(NameKey::new(name).as_bytes(), name.as_bytes());
        }
        assert!(matches!(NameKey::new(&names[INLINE_NAME]).0, NameRepr::Inline { .. }));
        assert!(matches!(NameKey::new(&names[INLINE_NAME + 1]).0, NameRepr::Heap(_)));
        assert_eq!(map.remove("xxx".as_bytes()), Some(3));
        assert_eq!(map.get("xxx".as_bytes()), None);
    }

    #[test]
    fn a_map_of_many_streams_finds_each() {
        let mut map: FastMap<String, u32> = FastMap::default();
        for i in 0..5_000u32 {
            map.insert(format!("sym{i}usdt@kline_1m"), i);
        }
        for i in 0..5_000u32 {
            assert_eq!(map.get(format!("sym{i}usdt@kline_1m").as_str()), Some(&i));
        }
        assert_eq!(map.get("nope@kline_1m"), None);
    }
}
