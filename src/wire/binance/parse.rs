//! The top-level walk of a Binance frame: the fast lane for Binance's own layout,
//! the general walk for any other, the envelope (combined-form wrapper, control
//! fields, raw payload).
//!
//! Owns: deciding what kind of frame a text is. Never scans JSON bytes itself (that
//! is [`crate::wire::json_scan`]) and never allocates for a kline frame.

use super::control::{control_error, control_result, ErrorFields, ResultField};
use super::frame::{Frame, FrameError};
use super::kline::{scan_payload_layout, Payload};
use super::token::{nested, plain_str, put, required, Nested};
use crate::wire::json_scan::{Scanner, Token};

/// Parses one text frame: a kline event (raw payload or combined
/// `{"stream":..,"data":..}` form), a control response, or `serverShutdown`.
/// Allocates nothing for kline frames.
pub fn parse_frame(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut envelope = Envelope::default();
    if scan_binance_layout(text, &mut envelope).is_some() {
        return envelope.take_frame();
    }
    parse_frame_general(text)
}

/// [`parse_frame`] without the fast lane: the general walk, for any layout.
pub(super) fn parse_frame_general(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut sc = Scanner::new(text);
    sc.skip_ws();
    if sc.peek() != Some(b'{') {
        // Distinguish "some other JSON value" from "not JSON at all".
        return match sc.value().and_then(|_| sc.expect_end()) {
            Some(()) => Err(FrameError::NotAnObject),
            None => Err(sc.take_error().into()),
        };
    }
    let mut envelope = Envelope::default();
    match sc
        .walk_object(|sc, key| envelope.field(sc, key))
        .and_then(|()| sc.expect_end())
    {
        Some(()) => envelope.take_frame(),
        None => Err(sc.take_error().into()),
    }
}

// ---------------------------------------------------------------------------
// Pass 1, fast lane: the layout Binance writes
// ---------------------------------------------------------------------------
//
// Binance writes every kline frame with the same keys in the same order and no
// whitespace. When a frame is that layout byte for byte around its values, the
// keys need no dispatch and cannot repeat, so the walk reduces to comparing the
// fixed text between values and scanning each value. Values are scanned by the
// same scalar scanners as the general walk, so the tokens collected are the ones
// the general walk would collect; any deviation (another order, whitespace, an
// extra, missing or escaped key, a nested value where a scalar belongs) abandons
// the lane, and the general walk starts over from the first byte. The lane roughly
// halves the time of a real frame (`benches/parse.rs`); a test checks it agrees
// with the general walk on real and mutated frames.

/// Fills `envelope` from a frame in Binance's exact layout, combined or raw form;
/// `None` (with `envelope` in an unspecified state) when the frame is laid out in
/// any other way, valid or not.
pub(super) fn scan_binance_layout<'a>(text: &'a str, envelope: &mut Envelope<'a>) -> Option<()> {
    let mut sc = Scanner::new(text);
    if sc.lane_literal(b"{\"stream\":").is_some() {
        envelope.stream = Some(sc.lane_value()?);
        sc.lane_literal(b",\"data\":")?;
        let Nested::Object(payload) = envelope.data.insert(Nested::Object(Payload::default()))
        else {
            return None;
        };
        scan_payload_layout(&mut sc, payload)?;
        sc.lane_literal(b"}")?;
    } else {
        scan_payload_layout(&mut sc, &mut envelope.payload)?;
    }
    (sc.pos() == text.len()).then_some(())
}

/// Top-level object: the combined-form wrapper, control-response fields, and the
/// raw-form payload fields.
#[derive(Default)]
pub(super) struct Envelope<'a> {
    stream: Option<Token<'a>>,
    data: Option<Nested<Payload<'a>>>,
    result: Option<ResultField>,
    error: Option<Nested<ErrorFields<'a>>>,
    id: Option<Token<'a>>,
    payload: Payload<'a>,
}

impl<'a> Envelope<'a> {
    fn field(&mut self, sc: &mut Scanner<'a>, key: &[u8]) -> Option<()> {
        match key {
            // One-letter keys are payload fields (raw form); skip the long compares.
            [_] => self.payload.field(sc, key),
            b"stream" => {
                let value = sc.value()?;
                put(sc, &mut self.stream, value, "stream")
            }
            b"data" => nested(sc, &mut self.data, "data", Payload::field),
            b"result" => {
                let result = ResultField::scan(sc)?;
                put(sc, &mut self.result, result, "result")
            }
            b"error" => nested(sc, &mut self.error, "error", ErrorFields::field),
            b"id" => {
                let value = sc.value()?;
                put(sc, &mut self.id, value, "id")
            }
            _ => self.payload.field(sc, key),
        }
    }
}

// ---------------------------------------------------------------------------
// Pass 2: give the tokens meaning
// ---------------------------------------------------------------------------

impl<'a> Envelope<'a> {
    fn take_frame(&mut self) -> Result<Frame<'a>, FrameError> {
        if let Some(data) = &self.data {
            let stream = plain_str(required(self.stream, "stream")?, "stream")?;
            if stream == "!serverShutdown" {
                return Ok(Frame::ServerShutdown);
            }
            return match data {
                Nested::Object(payload) => payload.to_frame(Some(stream)),
                Nested::NotObject => Err(FrameError::WrongType {
                    field: "data",
                    expected: "an object",
                }),
            };
        }
        if self.payload.event.is_some() {
            return self.payload.to_frame(None);
        }
        if let Some(error) = &self.error {
            return control_error(error, self.id);
        }
        if let Some(result) = self.result.take() {
            return control_result(result, self.id);
        }
        if self.payload.kline.is_some() {
            return Err(FrameError::MissingField { field: "e" });
        }
        Err(FrameError::UnrecognizedFrame)
    }
}
