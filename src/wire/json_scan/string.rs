//! JSON strings: the raw body between the quotes, unescaping (into a fixed buffer,
//! a sink, or a `String`), and finding the next byte that ends or interrupts a
//! string body eight bytes at a time.
//!
//! Owns: escapes and string bodies. Never checks the rest of the grammar.

/// The contents of a JSON string literal, between the quotes, still escaped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonStr<'a> {
    pub(crate) raw: &'a str,
    pub(crate) escaped: bool,
}

/// Calls `sink` with the unescaped pieces of an already-validated string body;
/// stops and returns false when `sink` does.
fn unescape(raw: &str, mut sink: impl FnMut(&str) -> bool) -> bool {
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        if !sink(&rest[..at]) {
            return false;
        }
        let Some((ch, used)) = decode_escape(rest.as_bytes().get(at + 1..).unwrap_or(&[])) else {
            return false;
        };
        if !sink(ch.encode_utf8(&mut [0u8; 4])) {
            return false;
        }
        rest = rest.get(at + 1 + used..).unwrap_or("");
    }
    sink(rest)
}

/// One escape after its backslash: the character and how many bytes it used.
/// Surrogates must come as a high/low pair (as serde_json and browsers require).
pub(super) fn decode_escape(esc: &[u8]) -> Option<(char, usize)> {
    let simple = match esc.first()? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(esc.get(1..5)?)?;
            if !(0xD800..0xDC00).contains(&high) {
                return char::from_u32(high).map(|c| (c, 5));
            }
            if esc.get(5..7)? != b"\\u" {
                return None;
            }
            let low = hex4(esc.get(7..11)?)?;
            if !(0xDC00..0xE000).contains(&low) {
                return None;
            }
            let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            return char::from_u32(code).map(|c| (c, 11));
        }
        _ => return None,
    };
    Some((simple, 1))
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    if bytes.len() != 4 {
        return None;
    }
    bytes
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + (b as char).to_digit(16)?))
}

/// Calls `f` with the string's unescaped text, or `None` if that is longer than 64
/// bytes (longer than anything we unescape for meaning). Strings without escapes —
/// all of them in practice — are passed through untouched.
#[inline]
pub(crate) fn with_unescaped<R>(s: JsonStr<'_>, f: impl FnOnce(Option<&str>) -> R) -> R {
    if !s.escaped {
        return f(Some(s.raw));
    }
    let mut buf = [0u8; 64];
    f(unescape_into(s, &mut buf))
}

/// Unescapes into `buf` without allocating; `None` if it does not fit.
fn unescape_into<'b>(s: JsonStr<'b>, buf: &'b mut [u8]) -> Option<&'b str> {
    if !s.escaped {
        return Some(s.raw);
    }
    let mut len = 0;
    let complete = unescape(s.raw, |piece| {
        let Some(dst) = buf.get_mut(len..len + piece.len()) else {
            return false;
        };
        dst.copy_from_slice(piece.as_bytes());
        len += piece.len();
        true
    });
    if !complete {
        return None;
    }
    std::str::from_utf8(buf.get(..len)?).ok()
}

pub(crate) fn unescape_to_string(s: JsonStr<'_>) -> String {
    let mut out = String::with_capacity(s.raw.len());
    unescape(s.raw, |piece| {
        out.push_str(piece);
        true
    });
    out
}

/// Index of the first byte at or after `i` that ends or interrupts a string body
/// (`"`, `\\` or a control character), or `bytes.len()` if there is none.
///
/// Eight bytes at a time: each test below sets the high bit of every byte that
/// matches, and may also set it in bytes *above* a match (borrow propagation) but
/// never below the first one, so the lowest set bit names the first special byte
/// exactly. Jumping straight to it (rather than stepping a byte at a time up to
/// the closing quote) is what makes strings cheap.
#[inline(always)]
pub(super) fn find_string_special(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit set in the first zero byte of `w` (and perhaps in some above it).
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let w = u64::from_le_bytes(chunk);
        let special = has_zero(w ^ (ONES * u64::from(b'"')))
            | has_zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
            return i;
        }
        i += 1;
    }
    i
}
