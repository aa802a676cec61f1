//! What a bus stream entry holds, both ways. One entry of the closed stream
//! is one series' stored closes from one flush:
//! `k=c s=<series_id> c=<candles JSON> f=<fence> n=<node>`; a resync marker
//! (the leader dropped entries at its bound) is `k=r f n`. A forming entry is
//! `s=<series_id> c=<candle JSON>`.
//!
//! Owns the field names and their encoding. Never sends anything; never
//! trusts what it decodes (a malformed entry is an error, not a panic).

use crate::bus::Entry;
use crate::model::Candle;

/// A decoded closed-stream entry.
#[derive(Debug, PartialEq)]
pub enum ClosedEntry {
    Closed { series_id: String, candles: Vec<Candle>, fence: u64 },
    /// Entries were dropped by the leader: readers catch up from the store.
    Resync { fence: u64 },
}

pub fn closed_fields(series_id: &str, candles: &[Candle], fence: u64, node: &str) -> Vec<(&'static str, Vec<u8>)> {
    let json = serde_json::to_vec(candles).unwrap_or_default();
    vec![
        ("k", b"c".to_vec()),
        ("s", series_id.as_bytes().to_vec()),
        ("c", json),
        ("f", fence.to_string().into_bytes()),
        ("n", node.as_bytes().to_vec()),
    ]
}

pub fn resync_fields(fence: u64, node: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("k", b"r".to_vec()), ("f", fence.to_string().into_bytes()), ("n", node.as_bytes().to_vec())]
}

pub fn refused_fields(node: &str, series_id: &str, reason: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("n", node.as_bytes().to_vec()), ("s", series_id.as_bytes().to_vec()), ("r", reason.as_bytes().to_vec())]
}

/// A control-stream entry: (node, series_id, reason) of a refusal.
pub fn decode_refused(e: &Entry) -> Result<(String, String, String), String> {
    Ok((text(e, "n")?.to_string(), text(e, "s")?.to_string(), text(e, "r")?.to_string()))
}

/// A read node's demand value: series ids, one a line.
pub fn demand_value(series: &std::collections::BTreeSet<String>) -> String {
    series.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
}

pub fn parse_demand(value: &[u8]) -> std::collections::BTreeSet<String> {
    String::from_utf8_lossy(value).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

pub fn forming_fields(series_id: &str, candle: &Candle) -> Vec<(&'static str, Vec<u8>)> {
    vec![("s", series_id.as_bytes().to_vec()), ("c", serde_json::to_vec(candle).unwrap_or_default())]
}

fn text<'a>(e: &'a Entry, name: &str) -> Result<&'a str, String> {
    let v = e.field(name).ok_or_else(|| format!("entry {} has no field {name:?}", e.id))?;
    std::str::from_utf8(v).map_err(|_| format!("entry {} field {name:?} is not UTF-8", e.id))
}

fn fence_of(e: &Entry) -> Result<u64, String> {
    text(e, "f")?.parse().map_err(|_| format!("entry {} has a bad fence", e.id))
}

pub fn decode_closed(e: &Entry) -> Result<ClosedEntry, String> {
    match text(e, "k")? {
        "c" => {
            let series_id = text(e, "s")?.to_string();
            let candles: Vec<Candle> = serde_json::from_slice(e.field("c").unwrap_or_default())
                .map_err(|err| format!("entry {} candles: {err}", e.id))?;
            Ok(ClosedEntry::Closed { series_id, candles, fence: fence_of(e)? })
        }
        "r" => Ok(ClosedEntry::Resync { fence: fence_of(e)? }),
        other => Err(format!("entry {} has an unknown kind {other:?}", e.id)),
    }
}

pub fn decode_forming(e: &Entry) -> Result<(String, Candle), String> {
    let series_id = text(e, "s")?.to_string();
    let candle: Candle =
        serde_json::from_slice(e.field("c").unwrap_or_default()).map_err(|err| format!("entry {} candle: {err}", e.id))?;
    Ok((series_id, candle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::StreamId;

    fn entry(fields: Vec<(&'static str, Vec<u8>)>) -> Entry {
        Entry { id: StreamId { ms: 5, seq: 1 }, fields: fields.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect() }
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_errors() {
        let c = Candle { candle_time: 60, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 3.0 };
        let e = entry(closed_fields("binance:spot:BTC/USDT:1m", &[c], 7, "ingest-1"));
        assert_eq!(
            decode_closed(&e),
            Ok(ClosedEntry::Closed { series_id: "binance:spot:BTC/USDT:1m".into(), candles: vec![c], fence: 7 })
        );
        assert_eq!(decode_closed(&entry(resync_fields(9, "n"))), Ok(ClosedEntry::Resync { fence: 9 }));
        assert_eq!(decode_forming(&entry(forming_fields("x", &c))), Ok(("x".to_string(), c)));
        let mut bad = closed_fields("s", &[c], 1, "n");
        bad[2].1 = b"[{".to_vec();
        assert!(decode_closed(&entry(bad)).is_err());
        assert!(decode_closed(&entry(vec![("k", b"z".to_vec())])).is_err());
        assert!(decode_closed(&entry(vec![])).is_err());
    }
}
