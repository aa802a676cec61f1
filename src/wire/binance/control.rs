//! Binance control messages: the `SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS`
//! requests we send, and the `result` / `error` answers we receive (collected as
//! tokens by the walk, given meaning here).
//!
//! Owns: the control-message shapes. Never parses kline payloads, keeps no state.

use super::frame::{Frame, FrameError};
use super::token::{integer, put, required, unsigned, Nested};
use crate::wire::json_scan::{unescape_to_string, Scanner, Token};

// ---------------------------------------------------------------------------
// Control requests
// ---------------------------------------------------------------------------

/// `{"method":"SUBSCRIBE","params":[...],"id":N}`.
pub fn subscribe_request<S: AsRef<str>>(id: u64, streams: &[S]) -> String {
    method_request("SUBSCRIBE", Some(streams), id)
}

/// `{"method":"UNSUBSCRIBE","params":[...],"id":N}`.
pub fn unsubscribe_request<S: AsRef<str>>(id: u64, streams: &[S]) -> String {
    method_request("UNSUBSCRIBE", Some(streams), id)
}

/// `{"method":"LIST_SUBSCRIPTIONS","id":N}`.
pub fn list_subscriptions_request(id: u64) -> String {
    method_request::<&str>("LIST_SUBSCRIPTIONS", None, id)
}

fn method_request<S: AsRef<str>>(method: &str, params: Option<&[S]>, id: u64) -> String {
    let names_len: usize = params.map_or(0, |p| p.iter().map(|s| s.as_ref().len() + 3).sum());
    let mut out = String::with_capacity(48 + names_len);
    out.push_str("{\"method\":");
    push_json_string(&mut out, method);
    if let Some(params) = params {
        out.push_str(",\"params\":[");
        for (i, s) in params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, s.as_ref());
        }
        out.push(']');
    }
    out.push_str(",\"id\":");
    out.push_str(&id.to_string());
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal. Stream names are built plain, but a request
/// must stay valid JSON whatever it is given.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(super) enum ResultField {
    Null,
    List(Vec<String>),
    Other,
}

#[derive(Default)]
pub(super) struct ErrorFields<'a> {
    code: Option<Token<'a>>,
    msg: Option<Token<'a>>,
}

impl ResultField {
    pub(super) fn scan(sc: &mut Scanner<'_>) -> Option<ResultField> {
        if sc.peek() != Some(b'[') {
            return Some(match sc.value()? {
                Token::Null => ResultField::Null,
                _ => ResultField::Other,
            });
        }
        let mut names = Vec::new();
        let mut all_strings = true;
        sc.walk_array(|sc| {
            match sc.value()? {
                Token::Str(s) => names.push(unescape_to_string(s)),
                _ => all_strings = false,
            }
            Some(())
        })?;
        Some(if all_strings {
            ResultField::List(names)
        } else {
            ResultField::Other
        })
    }
}

impl<'a> ErrorFields<'a> {
    pub(super) fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        let (slot, name) = match key {
            b"code" => (&mut self.code, "error.code"),
            b"msg" => (&mut self.msg, "error.msg"),
            _ => return sc.value().map(drop),
        };
        let value = sc.value()?;
        put(sc, slot, value, name)
    }
}

pub(super) fn control_result<'a>(result: ResultField, id: Option<Token<'a>>) -> Result<Frame<'a>, FrameError> {
    let id = unsigned(required(id, "id")?, "id")?;
    match result {
        ResultField::Null => Ok(Frame::ControlAck { id }),
        ResultField::List(streams) => Ok(Frame::ControlList { id, streams }),
        ResultField::Other => Err(FrameError::WrongType {
            field: "result",
            expected: "null or an array of stream names",
        }),
    }
}

pub(super) fn control_error<'a>(
    error: &Nested<ErrorFields<'a>>,
    id: Option<Token<'a>>,
) -> Result<Frame<'a>, FrameError> {
    let Nested::Object(error) = error else {
        return Err(FrameError::WrongType {
            field: "error",
            expected: "an object",
        });
    };
    // Binance answers an unparseable request with `"id":null`.
    let id = match id {
        None | Some(Token::Null) => None,
        Some(token) => Some(unsigned(token, "id")?),
    };
    let code = integer(required(error.code, "error.code")?, "error.code")?;
    let msg = match required(error.msg, "error.msg")? {
        Token::Str(s) => unescape_to_string(s),
        _ => {
            return Err(FrameError::WrongType {
                field: "error.msg",
                expected: "a string",
            })
        }
    };
    Ok(Frame::ControlError { id, code, msg })
}
