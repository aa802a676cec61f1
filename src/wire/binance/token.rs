//! The small helpers every part of the walk shares: collecting a scanned token into
//! its field (refusing a duplicate, looking inside a nested object) and turning a
//! token into a value (required, a plain borrowed string, an integer) with the
//! [`FrameError`] that names the field.
//!
//! Owns: field bookkeeping and token conversion. Never decides what kind of frame a
//! text is and never scans JSON bytes itself.

use super::frame::FrameError;
use crate::wire::json_scan::{parse_i64, parse_u64, JsonStr, ScanError, Scanner, Token};

/// A field that must be an object for us to look inside.
pub(super) enum Nested<T> {
    Object(T),
    NotObject,
}

#[inline]
pub(super) fn put<T>(sc: &mut Scanner<'_>, slot: &mut Option<T>, value: T, field: &'static str) -> Option<()> {
    if slot.is_some() {
        return sc.fail(ScanError::DuplicateField { field });
    }
    *slot = Some(value);
    Some(())
}

/// Parses a nested object with `on_field`, or records that the value was not an object.
pub(super) fn nested<'a, T: Default>(
    sc: &mut Scanner<'a>,
    slot: &mut Option<Nested<T>>,
    field: &'static str,
    mut on_field: impl FnMut(&mut T, &mut Scanner<'a>, &[u8]) -> Option<()>,
) -> Option<()> {
    if slot.is_some() {
        return sc.fail(ScanError::DuplicateField { field });
    }
    if sc.peek() == Some(b'{') {
        // Filled in place: these structs are a few hundred bytes, not worth moving.
        let Nested::Object(inner) = slot.insert(Nested::Object(T::default())) else {
            return sc.invalid("internal: nested slot");
        };
        sc.walk_object(|sc, key| on_field(inner, sc, key))?;
    } else {
        sc.value()?;
        *slot = Some(Nested::NotObject);
    }
    Some(())
}

#[inline(always)]
pub(super) fn required<T>(slot: Option<T>, field: &'static str) -> Result<T, FrameError> {
    // A match, not `ok_or`: that would build (and drop) the error on every call.
    match slot {
        Some(value) => Ok(value),
        None => Err(FrameError::MissingField { field }),
    }
}

/// A string handed out borrowed from the frame, so it must need no unescaping.
pub(super) fn plain_str<'a>(token: Token<'a>, field: &'static str) -> Result<&'a str, FrameError> {
    match token {
        Token::Str(JsonStr {
            raw,
            escaped: false,
        }) => Ok(raw),
        Token::Str(_) => Err(FrameError::EscapedText { field }),
        _ => Err(FrameError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

pub(super) fn integer(token: Token<'_>, field: &'static str) -> Result<i64, FrameError> {
    const EXPECTED: &str = "an integer within the signed 64-bit range";
    match token {
        Token::Num(text) => match parse_i64(text) {
            Some(value) => Ok(value),
            None => Err(FrameError::WrongType {
                field,
                expected: EXPECTED,
            }),
        },
        _ => Err(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
    }
}

pub(super) fn unsigned(token: Token<'_>, field: &'static str) -> Result<u64, FrameError> {
    const EXPECTED: &str = "an unsigned 64-bit integer";
    match token {
        Token::Num(text) => parse_u64(text).ok_or(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
        _ => Err(FrameError::WrongType {
            field,
            expected: EXPECTED,
        }),
    }
}

/// At most 64 characters of an untrusted name, for an error message.
pub(super) fn clipped(s: &str) -> String {
    s.chars().take(64).collect()
}
