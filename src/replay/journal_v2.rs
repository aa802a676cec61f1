//! Journal version 2: an exchange frame's text embedded as JSON.
//!
//! In a version 1 journal an `upstream_text` input holds the frame as an
//! escaped JSON string (`"text":"{\"stream\":…}"`), and reading it back
//! means unescaping every `\"` of it (a third of a large replay's decode
//! time). Version 2 stores a text that is itself a JSON object raw, in place:
//! `{"now":…,"input":{"type":"upstream_text","conn":1,"json":{"stream":…}}}`;
//! reading it back is a validation pass and a copy. A text that is not a
//! JSON object (or holds a raw newline, or would nest too deep for the line)
//! is still written as `"text":"…"`, which version 2 keeps reading.
//!
//! Owns: writing that line, recognising it (fast path and serde path) and
//! turning it back into the exact text that was recorded. Never decides
//! anything else about the journal (journal.rs does): version 1 journals,
//! which never hold `"json"`, read exactly as before.

use crate::engine::{ConnId, Input};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Write;

/// Writes `input` for an exchange frame whose text is a JSON object as a
/// version 2 line (with its newline); false (nothing written) when the text
/// must stay an escaped string.
pub(super) fn write_upstream_json(out: &mut impl Write, now: u64, conn: u64, text: &str) -> std::io::Result<bool> {
    if !looks_embeddable(text.as_bytes()) {
        return Ok(false);
    }
    let mut line = Vec::with_capacity(text.len() + 96);
    let _ = write!(line, "{{\"now\":{now},\"input\":{{\"type\":\"upstream_text\",\"conn\":{conn},\"json\":");
    line.extend_from_slice(text.as_bytes());
    line.extend_from_slice(b"}}");
    // The whole line, as the serde path reads it (depth counted from the
    // line's root): a text nested close to serde_json's limit stays a string.
    if serde_json::from_slice::<&RawValue>(&line).is_err() {
        return Ok(false);
    }
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(true)
}

/// An object from its first byte to its last (no surrounding whitespace, which
/// the serde path would drop) and on one line.
fn looks_embeddable(text: &[u8]) -> bool {
    text.first() == Some(&b'{') && text.last() == Some(&b'}') && memchr::memchr(b'\n', text).is_none()
}

/// The recorded text of a version 2 line's `"json":` value: `body` is what
/// lies between `"json":` and the line's closing `}}`. `None` unless it is
/// exactly one JSON object (then the line has no other reading, and serde
/// reads the same text), so anything else goes to the serde path.
///
/// Checked by `json_check` (what serde_json's `RawValue` accepts, in one
/// byte loop; anything nested deeper than its limit goes to serde): on the
/// 500-series bench journal serde_json's own check (`IgnoredAny`) cost 6.8k
/// instructions a frame, more than the unescaping it replaced.
pub(super) fn embedded_text(body: &[u8]) -> Option<String> {
    if body.first() != Some(&b'{') || body.last() != Some(&b'}') || !super::json_check::is_one_value(body) {
        return None;
    }
    Some(std::str::from_utf8(body).ok()?.to_owned())
}

/// A version 2 `upstream_text` input, as serde sees it.
#[derive(Deserialize)]
struct UpstreamJson<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    conn: u64,
    #[serde(borrow)]
    json: &'a RawValue,
}

/// `Record::input` for serde (`deserialize_with`): an input in either
/// version's shape. The input is taken raw first, then read as a version 2
/// frame if it has the shape, as an [`Input`] otherwise.
pub(super) fn deserialize_input<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Input>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else { return Ok(None) };
    if let Ok(up) = serde_json::from_str::<UpstreamJson>(raw.get()) {
        if up.kind == "upstream_text" {
            return Ok(Some(Input::UpstreamText { conn: ConnId(up.conn), text: up.json.get().to_owned() }));
        }
    }
    serde_json::from_str::<Input>(raw.get()).map(Some).map_err(D::Error::custom)
}

#[cfg(test)]
#[path = "journal_v2_tests.rs"]
mod tests;
