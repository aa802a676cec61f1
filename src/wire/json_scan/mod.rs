//! A no-alloc, single-pass JSON scanner over a borrowed text: a cursor that
//! validates as it goes (RFC 8259: strings, escapes including surrogate pairs,
//! numbers, literals, nesting up to [`MAX_NESTING`]) and hands out raw tokens
//! borrowed from the text, for a caller that gives them meaning afterwards.
//!
//! Owns: JSON syntax, [`number`] text to values, [`string`] escapes, and why a
//! scan stopped ([`ScanError`]). Never knows what a field means, never allocates
//! (but for [`unescape_to_string`]), never panics on input.
//!
//! Scanning functions return `Option`: `None` means "stop, the scanner has recorded
//! why". Keeping the (large) error out of every return value keeps the hot path's
//! results in registers.

use std::fmt;

pub mod number;
pub mod string;
#[cfg(test)]
pub(crate) mod tests;

pub use number::parse_decimal;
pub(crate) use number::{parse_i64, parse_u64};
pub(crate) use string::{unescape_to_string, with_unescaped, JsonStr};

use number::skip_digits;
use string::{decode_escape, find_string_special};

/// JSON nesting deeper than this is rejected; real frames nest three levels.
pub const MAX_NESTING: u32 = 64;

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanError {
    /// Not JSON: `offset` is the byte where scanning stopped.
    InvalidJson { offset: usize, reason: &'static str },
    /// A field the caller collects appeared twice in one object.
    DuplicateField { field: &'static str },
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::InvalidJson { offset, reason } => write!(f, "{reason} at byte {offset}"),
            ScanError::DuplicateField { field } => write!(f, "field '{field}' appears more than once"),
        }
    }
}

impl std::error::Error for ScanError {}

/// A scanned JSON value. Objects and arrays we do not need are validated and skipped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Token<'a> {
    Str(JsonStr<'a>),
    /// The number's text, already checked against the JSON number grammar.
    Num(&'a str),
    Bool(bool),
    Null,
    Object,
    Array,
}

/// A cursor over the frame. Every method either consumes a complete syntactic
/// element or returns `None` after recording why in `error`; indexing goes through
/// `get`, so no input can make it panic.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: u32,
    error: Option<ScanError>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
            error: None,
        }
    }

    /// The cursor: the index of the next byte to scan.
    #[inline(always)]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline(always)]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline(always)]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// `text[start..end]`, `None` unless both ends are char boundaries (they are
    /// always next to ASCII delimiters here). Two `split_at_checked`, which
    /// inline, rather than `str::get`, which here did not (15 calls a frame).
    #[inline(always)]
    fn slice(&self, start: usize, end: usize) -> Option<&'a str> {
        let (head, _) = self.text.split_at_checked(end)?;
        head.split_at_checked(start).map(|(_, tail)| tail)
    }

    /// Records why scanning stopped; always `None`, to be returned.
    #[cold]
    pub(crate) fn fail<T>(&mut self, error: ScanError) -> Option<T> {
        self.error = Some(error);
        None
    }

    #[cold]
    fn invalid_at<T>(&mut self, offset: usize, reason: &'static str) -> Option<T> {
        self.fail(ScanError::InvalidJson { offset, reason })
    }

    #[cold]
    pub(crate) fn invalid<T>(&mut self, reason: &'static str) -> Option<T> {
        self.invalid_at(self.pos, reason)
    }

    /// The error recorded by the failed scan.
    pub(crate) fn take_error(&mut self) -> ScanError {
        let fallback = ScanError::InvalidJson {
            offset: self.pos,
            reason: "invalid JSON",
        };
        self.error.take().unwrap_or(fallback)
    }

    #[inline(always)]
    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    #[inline]
    fn eat(&mut self, byte: u8, reason: &'static str) -> Option<()> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return self.invalid(reason);
        }
        self.pos += 1;
        Some(())
    }

    pub(crate) fn expect_end(&mut self) -> Option<()> {
        self.skip_ws();
        if self.pos != self.text.len() {
            return self.invalid("unexpected text after the JSON value");
        }
        Some(())
    }

    #[inline]
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.invalid("nesting too deep");
        }
        Some(())
    }

    /// Walks the object starting at the next `{`. `on_field` is called with the
    /// unescaped key and the scanner just before the value, and must consume
    /// exactly one value.
    #[inline]
    pub(crate) fn walk_object(
        &mut self,
        mut on_field: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{', "expected '{'")?;
        self.enter()?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            if let Some(key) = self.one_byte_key() {
                // Binance's keys are one plain byte: `"k":` needs no general scan.
                on_field(self, key)?;
            } else {
                if self.peek() != Some(b'"') {
                    return self.invalid("expected a string key");
                }
                let key = self.string()?;
                self.eat(b':', "expected ':' after an object key")?;
                self.skip_ws();
                // An escaped key too long to unescape is longer than any key we know.
                with_unescaped(key, |k| on_field(self, k.map_or(&b"\\"[..], str::as_bytes)))?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return self.invalid("expected ',' or '}' after an object value"),
            }
        }
    }

    /// Consumes `"x":` (one plain byte key, colon right after) and returns the key.
    #[inline(always)]
    fn one_byte_key(&mut self) -> Option<&'a [u8]> {
        let bytes = self.bytes();
        let window = bytes.get(self.pos..self.pos + 4)?;
        let plain = !matches!(window[1], b'"' | b'\\' | 0..=0x1f);
        if window[0] == b'"' && plain && window[2] == b'"' && window[3] == b':' {
            let key = bytes.get(self.pos + 1..self.pos + 2)?;
            self.pos += 4;
            self.skip_ws();
            return Some(key);
        }
        None
    }

    /// Walks the array starting at the next `[`; `on_item` consumes one value.
    pub(crate) fn walk_array(&mut self, mut on_item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[', "expected '['")?;
        self.enter()?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            on_item(self)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return self.invalid("expected ',' or ']' after an array item"),
            }
        }
    }

    /// Fast lane: consumes `expected` if the text continues with exactly it.
    #[inline(always)]
    pub(crate) fn lane_literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.pos + expected.len();
        if self.bytes().get(self.pos..end)? != expected {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Fast lane: `expected` (the text before a value), then a scalar value.
    #[inline(always)]
    pub(crate) fn lane_field(&mut self, expected: &[u8]) -> Option<Token<'a>> {
        self.lane_literal(expected)?;
        self.lane_value()
    }

    /// Fast lane: `expected`, then a scalar value we have no use for, validated as
    /// [`Self::lane_field`] would but without building its token.
    #[inline(always)]
    pub(crate) fn lane_skip(&mut self, expected: &[u8]) -> Option<()> {
        self.lane_literal(expected)?;
        match self.peek()? {
            b'"' => self.string_end().map(drop),
            b'-' | b'0'..=b'9' => self.number_end().map(drop),
            _ => self.lane_value().map(drop),
        }
    }

    /// Fast lane: a string, number or literal, scanned exactly as [`Self::value`]
    /// does; `None` for anything else (an object or array leaves the lane, so
    /// nesting depth never matters in it).
    #[inline(always)]
    pub(crate) fn lane_value(&mut self) -> Option<Token<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Token::Str),
            b'-' | b'0'..=b'9' => self.number().map(Token::Num),
            b't' => self.literal("true", Token::Bool(true)),
            b'f' => self.literal("false", Token::Bool(false)),
            b'n' => self.literal("null", Token::Null),
            _ => None,
        }
    }

    /// Scans any JSON value; objects and arrays are validated and skipped.
    #[inline]
    pub(crate) fn value(&mut self) -> Option<Token<'a>> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.string().map(Token::Str),
            Some(b'-' | b'0'..=b'9') => self.number().map(Token::Num),
            Some(b'{') => self.skip_composite(b'{').map(|()| Token::Object),
            Some(b'[') => self.skip_composite(b'[').map(|()| Token::Array),
            Some(b't') => self.literal("true", Token::Bool(true)),
            Some(b'f') => self.literal("false", Token::Bool(false)),
            Some(b'n') => self.literal("null", Token::Null),
            Some(_) => self.invalid("expected a JSON value"),
            None => self.invalid("unexpected end of frame"),
        }
    }

    /// Validates and skips an object or array we have no use for (kept out of line:
    /// kline frames have none).
    #[inline(never)]
    fn skip_composite(&mut self, open: u8) -> Option<()> {
        if open == b'{' {
            self.walk_object(|sc, _| sc.value().map(drop))
        } else {
            self.walk_array(|sc| sc.value().map(drop))
        }
    }

    fn literal(&mut self, word: &'static str, token: Token<'a>) -> Option<Token<'a>> {
        if !self
            .bytes()
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word.as_bytes()))
        {
            return self.invalid("invalid literal (expected true, false or null)");
        }
        self.pos += word.len();
        Some(token)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    #[inline]
    fn number(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let end = self.number_end()?;
        // Both ends sit next to ASCII bytes, so they are char boundaries.
        self.slice(start, end)
    }

    /// Scans the number at the cursor (see [`Self::number`]); the index after it.
    #[inline(always)]
    fn number_end(&mut self) -> Option<usize> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut i = start;
        let digits_from = |i: usize| skip_digits(bytes, i);
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_from(i + 1),
            _ => return self.invalid_at(i, "invalid number"),
        }
        if bytes.get(i) == Some(&b'.') {
            let end = digits_from(i + 1);
            if end == i + 1 {
                return self.invalid_at(end, "invalid number");
            }
            i = end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits_from(i);
            if end == i {
                return self.invalid_at(end, "invalid number");
            }
            i = end;
        }
        self.pos = i;
        Some(i)
    }

    /// Scans the string literal at the next `"`, validating escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<JsonStr<'a>> {
        let start = self.pos + 1;
        let (end, escaped) = self.string_end()?;
        // Both ends sit next to ASCII quotes, so they are char boundaries.
        let raw = self.slice(start, end)?;
        Some(JsonStr { raw, escaped })
    }

    /// Scans the string literal at the next `"`, validating escapes; the index of
    /// its closing quote and whether it has escapes.
    #[inline(always)]
    fn string_end(&mut self) -> Option<(usize, bool)> {
        let bytes = self.bytes();
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = find_string_special(bytes, i);
            match bytes.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match Self::escape_end(bytes, i) {
                        Some(next) => i = next,
                        None => return self.invalid_at(i, "invalid escape"),
                    }
                }
                Some(0..=0x1f) => return self.invalid_at(i, "control character in string"),
                Some(_) => i += 1,
                None => return self.invalid_at(i, "unterminated string"),
            }
        }
        self.pos = i + 1;
        Some((i, escaped))
    }

    /// Index just past the valid escape whose backslash is at `at`.
    fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
        let rest = bytes.get(at + 1..)?;
        match rest.first()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
            // \u is rare: reuse the decoder so validation and decoding agree.
            _ => decode_escape(rest).map(|(_, used)| at + 1 + used),
        }
    }
}
