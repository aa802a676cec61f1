//! A JSON syntax check for the journal's fast path: is a byte slice exactly
//! one JSON value, as serde_json's `RawValue` (its `ignore_value`) accepts it?
//!
//! Owns that yes/no only: it builds nothing and converts no number. It may
//! refuse what serde_json accepts (nesting deeper than [`MAX_DEPTH`]: the
//! caller then asks serde_json), never the other way round; the tests hold it
//! to serde_json's answer. Serde's own check cost 4–7k instructions a kline
//! frame (a call per string); this is one pass of a byte loop.

/// Deeper values are refused here (and left to serde_json, whose limit, 128,
/// counts from the root of the whole journal line).
pub(super) const MAX_DEPTH: u32 = 64;

/// Whether `b` is one JSON value, with optional whitespace around it. Bytes
/// past 0x7f are accepted inside strings only; UTF-8 is the caller's check.
pub(super) fn is_one_value(b: &[u8]) -> bool {
    check(b).is_some()
}

fn check(b: &[u8]) -> Option<()> {
    // Bit 0 of `objects`: the innermost open container is an object (one
    // bit a level, so at most 64 levels: `MAX_DEPTH`).
    let mut objects: u64 = 0;
    let mut depth = 0u32;
    let mut i = skip_ws(b, 0);
    'value: loop {
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                let object = open == b'{';
                objects = (objects << 1) | u64::from(object);
                i = skip_ws(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if *b.get(i)? == close {
                    i += 1;
                    depth -= 1;
                    objects >>= 1;
                } else {
                    if object {
                        i = key(b, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = string_end(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            _ => return None,
        }
        // After a value: a comma, the container's close, or the end.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                return (i == b.len()).then_some(());
            }
            let object = objects & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i = skip_ws(b, i + 1);
                    if object {
                        i = key(b, i)?;
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            depth -= 1;
            objects >>= 1;
        }
    }
}

/// A member's key at `i`, its colon, and the whitespace up to its value.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, string_end(b, i)?);
    (*b.get(i)? == b':').then(|| skip_ws(b, i + 1))
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // Most tokens follow each other with no whitespace: one compare for those.
    if b.get(i).is_some_and(|c| *c > b' ') {
        return i;
    }
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The index past the string starting (with its quote) at `i`.
#[inline(always)]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let mut j = i + 1;
    loop {
        // A tight loop to the next quote, backslash or control byte.
        j += b.get(j..)?.iter().position(|&c| STOPS_A_STRING[usize::from(c)])?;
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => {
                j += match *b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                    _ => return None,
                };
            }
            _ => return None,
        }
    }
}

/// The bytes a string's plain run ends at: its quote, an escape's backslash,
/// and the control bytes JSON refuses in a string.
static STOPS_A_STRING: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

#[inline(always)]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// The index past the number at `i`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[inline(always)]
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| -> Option<usize> {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    // serde_json refuses a digit right after a leading zero (`01`); so does
    // the grammar here, as the next byte then fails where it is read.
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn serde_says(s: &str) -> bool {
        serde_json::from_str::<&RawValue>(s).is_ok()
    }

    #[test]
    fn agrees_with_serde_on_hand_picked_cases() {
        for s in [
            "{}", "[]", "{\"a\":1}", " {\"a\" : [1, 2.5e-3, -0, true, false, null, \"x\"]}\n", "0", "-0.0", "1E+2", "\"\"",
            "\"\\u00e9\\ud800\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "[[[]]]", "{\"a\":{\"b\":{}}}", "\"é😀\"",
            // refused by both
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{,}", "[,1]", "01", "-", "1.", ".5", "1e", "1e+", "+1", "tru",
            "nul", "\"\\x\"", "\"\\u12g4\"", "\"\\u12\"", "\"a\tb\"", "\"a\nb\"", "{\"a\" 1}", "{1:2}", "{\"a\":1}}",
            "[1]]", "[1] 2", "{}{}", "\"unterminated", "{\"a\":1,\"b\"}", "[1 2]", "NaN", "Infinity", "\u{a0}1",
            "{\"a\":1}\u{c}",
        ] {
            assert_eq!(is_one_value(s.as_bytes()), serde_says(s), "{s:?}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let at = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(is_one_value(at(MAX_DEPTH as usize).as_bytes()));
        assert!(!is_one_value(at(MAX_DEPTH as usize + 1).as_bytes()));
        assert!(serde_says(&at(MAX_DEPTH as usize + 1)), "serde's limit is higher: the slow path decides");
    }

    proptest::proptest! {
        /// Strings of JSON's tokens and near misses: the same answer as
        /// serde_json, whatever they are.
        #[test]
        fn agrees_with_serde_on_token_soup(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "{", "}", "[", "]", ",", ":", " ", "\n", "\"a\"", "\"\\n\"", "\"\\u0041\"", "\"\\q\"", "\"é\"", "\"",
                "\\", "1", "0", "-", ".", "e", "+", "12", "-3.5e7", "true", "false", "null", "nul", "x", "\t", "\u{1}",
            ]), 0..14),
        ) {
            let s: String = parts.concat();
            proptest::prop_assert_eq!(is_one_value(s.as_bytes()), serde_says(&s), "{:?}", s);
        }

        /// Real-looking frames, nested and escaped: accepted, as by serde.
        #[test]
        fn agrees_with_serde_on_generated_values(v in json_value()) {
            let s = v.to_string();
            proptest::prop_assert!(is_one_value(s.as_bytes()), "{}", s);
            proptest::prop_assert!(serde_says(&s));
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            proptest::prop_assert!(is_one_value(pretty.as_bytes()), "{}", pretty);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::json!(f)),
            ".{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(".{0,5}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
