//! The Redis Streams commands klinegate needs, as command builders and
//! reply decoders: `XADD` with `MAXLEN ~`, `XREAD` / `XRANGE` from an id,
//! and `XINFO STREAM` to tell whether a reader fell behind a trim.
//!
//! Owns the command shapes and [`StreamId`] (the sequence number of the bus:
//! `ms-seq`, totally ordered). Never sends anything itself.
//!
//! Resuming: a reader keeps the last id it handled and reads strictly after
//! it (`XREAD … STREAMS key id` is exclusive; `XRANGE` uses `(id`). If the
//! stream was trimmed past that id, [`StreamInfo::missed_after`] says so and
//! the reader fills the hole from the store before going on.

use super::conn::{Command, RedisError, Reply, Value};
use std::fmt;
use std::str::FromStr;

/// A stream entry id, `ms-seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(format!("invalid stream id {s:?} (expected MS-SEQ)")),
        }
    }
}

/// One stream entry: its id and its field/value pairs in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

/// `XADD key MAXLEN ~ max_len * field value …` (no MAXLEN when `None`).
pub fn xadd(key: &str, max_len: Option<u64>, fields: &[(&str, &[u8])]) -> Command {
    let mut c = Command::new("XADD").arg(key);
    if let Some(n) = max_len {
        c = c.arg("MAXLEN").arg("~").arg(n.to_string());
    }
    c = c.arg("*");
    for (k, v) in fields {
        c = c.arg(k).arg(v);
    }
    c
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS key… id…`: entries strictly after each id.
pub fn xread(streams: &[(&str, StreamId)], count: Option<u64>, block_ms: Option<u64>) -> Command {
    let mut c = Command::new("XREAD");
    if let Some(n) = count {
        c = c.arg("COUNT").arg(n.to_string());
    }
    if let Some(ms) = block_ms {
        c = c.arg("BLOCK").arg(ms.to_string());
    }
    c = c.arg("STREAMS");
    for (k, _) in streams {
        c = c.arg(k);
    }
    for (_, id) in streams {
        c = c.arg(id.to_string());
    }
    c
}

/// `XRANGE key (after + COUNT n`: up to `count` entries strictly after `after`.
pub fn xrange_after(key: &str, after: StreamId, count: u64) -> Command {
    Command::new("XRANGE").arg(key).arg(format!("({after}")).arg("+").arg("COUNT").arg(count.to_string())
}

/// `XINFO STREAM key`.
pub fn xinfo_stream(key: &str) -> Command {
    Command::new("XINFO").arg("STREAM").arg(key)
}

pub fn decode_id(reply: Reply) -> Result<StreamId, RedisError> {
    let v = reply?;
    v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| RedisError::unexpected("a stream id", &v))
}

fn decode_entry(v: Value) -> Result<Entry, RedisError> {
    let bad = |v: &Value| RedisError::unexpected("[id, [field, value, …]]", v);
    let mut parts = v.clone().into_list().ok_or_else(|| bad(&v))?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else { return Err(bad(&v)) };
    let id = id.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad(&v))?;
    let flat = fields.into_list().ok_or_else(|| bad(&v))?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(val)) = (it.next(), it.next()) {
        match (k.as_bytes(), val.as_bytes()) {
            (Some(k), Some(val)) => out.push((k.to_vec(), val.to_vec())),
            _ => return Err(bad(&v)),
        }
    }
    Ok(Entry { id, fields: out })
}

/// `XRANGE` reply: entries in id order.
pub fn decode_entries(reply: Reply) -> Result<Vec<Entry>, RedisError> {
    let v = reply?;
    let list = v.clone().into_list().ok_or_else(|| RedisError::unexpected("an array of entries", &v))?;
    list.into_iter().map(decode_entry).collect()
}

/// `XREAD` reply: per stream, its entries; empty when the read timed out (nil).
pub fn decode_xread(reply: Reply) -> Result<Vec<(String, Vec<Entry>)>, RedisError> {
    let v = reply?;
    if v == Value::Nil {
        return Ok(Vec::new());
    }
    let bad = |v: &Value| RedisError::unexpected("XREAD streams", v);
    let mut out = Vec::new();
    match v {
        // RESP3: a map key → entries.
        Value::Map(kv) => {
            for (k, entries) in kv {
                let key = k.as_str().ok_or_else(|| bad(&k))?.to_string();
                out.push((key, decode_entries(Ok(entries))?));
            }
        }
        // RESP2: [[key, entries], …].
        Value::Array(streams) => {
            for s in streams {
                let pair = s.clone().into_list().ok_or_else(|| bad(&s))?;
                let mut it = pair.into_iter();
                let (Some(k), Some(entries)) = (it.next(), it.next()) else { return Err(bad(&s)) };
                let key = k.as_str().ok_or_else(|| bad(&k))?.to_string();
                out.push((key, decode_entries(Ok(entries))?));
            }
        }
        other => return Err(bad(&other)),
    }
    Ok(out)
}

/// What `XINFO STREAM` says about removals (Redis ≥ 7).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamInfo {
    pub length: u64,
    pub last_generated_id: StreamId,
    /// The highest id removed by `XDEL`; `0-0` when none. (Trims by
    /// `MAXLEN` do not move it: they show as `entries_added > length`.)
    pub max_deleted_entry_id: StreamId,
    /// Entries ever added; more than `length` once anything was removed.
    pub entries_added: u64,
    pub first_entry_id: Option<StreamId>,
}

impl StreamInfo {
    /// True when entries after `last_seen` may have been removed before a
    /// reader at `last_seen` read them: the reader fills the hole from the
    /// store. Never false when something was lost; may be true when the
    /// trim stopped exactly at `last_seen` (the store read then finds
    /// nothing new, which costs one read, not a candle).
    ///
    /// Trims remove the oldest entries, so a reader whose next entry is at
    /// or after the first one kept lost nothing to a trim; an `XDEL` after
    /// `last_seen` shows in `max_deleted_entry_id`.
    pub fn missed_after(&self, last_seen: StreamId) -> bool {
        if self.max_deleted_entry_id > last_seen {
            return true;
        }
        let removed_some = self.entries_added > self.length;
        match self.first_entry_id {
            Some(first) => removed_some && first > last_seen,
            None => removed_some && self.last_generated_id > last_seen,
        }
    }
}

pub fn decode_xinfo(reply: Reply) -> Result<StreamInfo, RedisError> {
    let v = reply?;
    let list = v.clone().into_list().ok_or_else(|| RedisError::unexpected("XINFO map", &v))?;
    let mut info = StreamInfo::default();
    let mut it = list.into_iter();
    let id = |v: &Value| v.as_str().and_then(|s| s.parse::<StreamId>().ok());
    while let (Some(k), Some(val)) = (it.next(), it.next()) {
        match k.as_str() {
            Some("length") => info.length = val.as_int().unwrap_or(0).max(0) as u64,
            Some("entries-added") => info.entries_added = val.as_int().unwrap_or(0).max(0) as u64,
            Some("last-generated-id") => info.last_generated_id = id(&val).unwrap_or_default(),
            Some("max-deleted-entry-id") => info.max_deleted_entry_id = id(&val).unwrap_or_default(),
            Some("first-entry") if val != Value::Nil => info.first_entry_id = decode_entry(val).ok().map(|e| e.id),
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        let a: StreamId = "1700000000000-3".parse().unwrap();
        let b: StreamId = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-3");
        assert_eq!("5".parse::<StreamId>().unwrap(), StreamId { ms: 5, seq: 0 });
        assert!("x-1".parse::<StreamId>().is_err());
    }

    #[test]
    fn xadd_shape() {
        let c = xadd("k", Some(1000), &[("c", b"1")]);
        let args: Vec<&[u8]> = c.0.iter().map(|a| a.as_slice()).collect();
        assert_eq!(args, vec![&b"XADD"[..], b"k", b"MAXLEN", b"~", b"1000", b"*", b"c", b"1"]);
    }
}
