//! Client frames to messages (RFC 6455 §5, RFC 7692 §6): checks every rule a
//! server must enforce (masking, reserved bits and opcodes, control frames,
//! fragmentation), reassembles fragments, inflates compressed messages and
//! validates text as UTF-8, all under one message size limit.
//!
//! Owns: the message being reassembled (a value the connection owns). Never
//! reads a socket and never writes an answer (a ping's pong, a close's echo):
//! it says what arrived and the connection answers.

use super::deflate::{self, InflateError};
use super::frame::{self, Head, HeadError};

/// One thing a client said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(String),
    /// A binary message and its (inflated) length; we never read binary content.
    Binary(usize),
    Ping(Vec<u8>),
    Pong,
    /// The peer's close frame: its code (if any) and reason.
    Close(Option<(u16, String)>),
}

/// The peer broke the protocol or a limit: the close code and reason to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail {
    pub code: u16,
    pub reason: String,
}

fn protocol(reason: &str) -> Fail {
    Fail { code: 1002, reason: format!("protocol error: {reason}") }
}

/// The message being reassembled from fragments.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
}

pub struct Decoder {
    max_message: usize,
    deflate: bool,
    partial: Option<Partial>,
}

impl Decoder {
    /// `max_message` caps a frame, a reassembled message and an inflated one;
    /// `deflate` says permessage-deflate was negotiated (RSV1 allowed).
    pub fn new(max_message: usize, deflate: bool) -> Decoder {
        Decoder { max_message, deflate, partial: None }
    }

    fn too_big(&self) -> Fail {
        Fail { code: 1009, reason: format!("message too big (max {} bytes)", self.max_message) }
    }

    /// Takes the next event from the front of `buf`: `Ok(Some((event, consumed)))`,
    /// `Ok(None)` while more bytes are needed (a fragment that completes no
    /// message is consumed with `Ok(None)` only through `consumed`, see
    /// [`Decoder::next`]), or the failure that ends the connection.
    ///
    /// Unmasks in place: the consumed bytes are left scrambled.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<(Option<Event>, usize), Fail> {
        let mut at = 0;
        loop {
            let rest = &mut buf[at..];
            let head = match frame::parse_head(rest) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok((None, at)),
                Err(HeadError::LengthTooLarge) => return Err(protocol("frame length with its top bit set")),
            };
            self.check_head(&head)?;
            // A frame's declared length is judged before its payload arrives.
            if head.len > self.max_message as u64 {
                return Err(self.too_big());
            }
            let len = head.len as usize;
            let Some(payload) = rest.get_mut(head.head_len..head.head_len + len) else { return Ok((None, at)) };
            if let Some(mask) = head.mask {
                frame::apply_mask(payload, mask);
            }
            at += head.head_len + len;
            if let Some(event) = self.on_frame(&head, payload)? {
                return Ok((Some(event), at));
            }
        }
    }

    fn check_head(&self, h: &Head) -> Result<(), Fail> {
        if h.mask.is_none() {
            return Err(protocol("unmasked client frame"));
        }
        if h.rsv23 {
            return Err(protocol("reserved bits set"));
        }
        match h.opcode {
            frame::OP_CONTINUATION | frame::OP_TEXT | frame::OP_BINARY => {}
            frame::OP_CLOSE | frame::OP_PING | frame::OP_PONG => {
                if !h.fin {
                    return Err(protocol("fragmented control frame"));
                }
                if h.len > 125 {
                    return Err(protocol("control frame too big"));
                }
                if h.rsv1 {
                    return Err(protocol("compressed control frame"));
                }
            }
            op => return Err(protocol(&format!("unknown opcode {op}"))),
        }
        if h.rsv1 && (!self.deflate || h.opcode == frame::OP_CONTINUATION) {
            return Err(protocol("reserved bit 1 set"));
        }
        Ok(())
    }

    fn on_frame(&mut self, h: &Head, payload: &[u8]) -> Result<Option<Event>, Fail> {
        match h.opcode {
            frame::OP_PING => Ok(Some(Event::Ping(payload.to_vec()))),
            frame::OP_PONG => Ok(Some(Event::Pong)),
            frame::OP_CLOSE => close_event(payload).map(Some),
            frame::OP_CONTINUATION => {
                let max = self.max_message;
                let Some(p) = self.partial.as_mut() else { return Err(protocol("continuation frame with nothing to continue")) };
                if p.data.len() + payload.len() > max {
                    return Err(self.too_big());
                }
                p.data.extend_from_slice(payload);
                if !h.fin {
                    return Ok(None);
                }
                let p = self.partial.take().ok_or_else(|| protocol("continuation"))?;
                self.finish(p.text, p.compressed, &p.data).map(Some)
            }
            op => {
                if self.partial.is_some() {
                    return Err(protocol("new data frame inside a fragmented message"));
                }
                let text = op == frame::OP_TEXT;
                if h.fin {
                    return self.finish(text, h.rsv1, payload).map(Some);
                }
                self.partial = Some(Partial { text, compressed: h.rsv1, data: payload.to_vec() });
                Ok(None)
            }
        }
    }

    fn finish(&self, text: bool, compressed: bool, data: &[u8]) -> Result<Event, Fail> {
        let inflated;
        let data = if compressed {
            inflated = deflate::inflate(data, self.max_message).map_err(|e| match e {
                InflateError::TooBig => self.too_big(),
                InflateError::Corrupt => Fail { code: 1007, reason: "compressed message is not valid deflate data".into() },
            })?;
            &inflated[..]
        } else {
            data
        };
        if !text {
            return Ok(Event::Binary(data.len()));
        }
        match std::str::from_utf8(data) {
            Ok(s) => Ok(Event::Text(s.to_string())),
            Err(_) => Err(Fail { code: 1007, reason: "text message is not valid UTF-8".into() }),
        }
    }
}

fn close_event(payload: &[u8]) -> Result<Event, Fail> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(protocol("close frame with a one-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !frame::is_valid_close_code(code) {
                return Err(protocol(&format!("invalid close code {code}")));
            }
            match std::str::from_utf8(reason) {
                Ok(r) => Ok(Event::Close(Some((code, r.to_string())))),
                Err(_) => Err(Fail { code: 1007, reason: "close reason is not valid UTF-8".into() }),
            }
        }
    }
}
