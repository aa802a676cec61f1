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

    /// Decodes from the front of `buf`: the next event (if a complete one is
    /// there) and how many bytes were used. Fragments that complete no message
    /// are used up (their bytes kept here) with no event; the rest waits for
    /// more bytes. A failure ends the connection with its close code.
    ///
    /// Unmasks in place: the used bytes are left scrambled.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ws::deflate::Compressor;
    use crate::wire::ws::frame::{write_masked_frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Every event in `bytes`, fed one byte at a time (the hardest split), or the failure.
    fn decode(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, Fail> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for &b in bytes {
            buf.push(b);
            loop {
                let (ev, n) = d.next(&mut buf)?;
                buf.drain(..n);
                match ev {
                    Some(e) => out.push(e),
                    None => break,
                }
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(out)
    }

    fn masked(fin: bool, rsv1: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_masked_frame(&mut v, fin, rsv1, op, M, payload);
        v
    }

    #[test]
    fn the_rfc_6455_examples_decode() {
        // §5.7: a masked "Hello".
        let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(decode(&mut Decoder::new(100, false), &hello).unwrap(), vec![Event::Text("Hello".into())]);
        assert_eq!(masked(true, false, OP_TEXT, b"Hello"), hello);
        // Fragmented, with a ping in the middle.
        let mut v = masked(false, false, OP_TEXT, b"Hel");
        v.extend(masked(true, false, OP_PING, b"p"));
        v.extend(masked(true, false, OP_CONTINUATION, b"lo"));
        v.extend(masked(true, false, OP_PONG, b""));
        v.extend(masked(true, false, OP_BINARY, &[0u8; 300]));
        v.extend(masked(true, false, OP_BINARY, &vec![1u8; 70_000]));
        v.extend(masked(true, false, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            decode(&mut Decoder::new(100_000, false), &v).unwrap(),
            vec![
                Event::Ping(b"p".to_vec()),
                Event::Text("Hello".into()),
                Event::Pong,
                Event::Binary(300),
                Event::Binary(70_000),
                Event::Close(Some((1000, "ok".into())))
            ]
        );
    }

    #[test]
    fn compressed_messages_inflate_when_negotiated_including_the_rfc_7692_hello() {
        // RFC 7692 §7.2.3.1, masked as a client must.
        let hello = masked(true, true, OP_TEXT, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        assert_eq!(decode(&mut Decoder::new(100, true), &hello).unwrap(), vec![Event::Text("Hello".into())]);
        // §7.2.3.2: the same message in two fragments, RSV1 on the first only.
        let mut v = masked(false, true, OP_TEXT, &[0xf2, 0x48, 0xcd]);
        v.extend(masked(true, false, OP_CONTINUATION, &[0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(decode(&mut Decoder::new(100, true), &v).unwrap(), vec![Event::Text("Hello".into())]);
        // Not negotiated: RSV1 is a protocol error.
        assert_eq!(decode(&mut Decoder::new(100, false), &hello).unwrap_err().code, 1002);
        // Uncompressed messages still pass on a deflate connection.
        assert_eq!(decode(&mut Decoder::new(100, true), &masked(true, false, OP_TEXT, b"hi")).unwrap(), vec![Event::Text("hi".into())]);
    }

    #[test]
    fn a_decompression_bomb_is_1009_and_bad_deflate_1007() {
        let mut bomb = Vec::new();
        Compressor::new(9).compress(&vec![b'x'; 1 << 20], &mut bomb);
        assert!(bomb.len() < 2048);
        let f = decode(&mut Decoder::new(4096, true), &masked(true, true, OP_TEXT, &bomb)).unwrap_err();
        assert_eq!(f, Fail { code: 1009, reason: "message too big (max 4096 bytes)".into() });
        let f = decode(&mut Decoder::new(4096, true), &masked(true, true, OP_TEXT, &[0xff; 8])).unwrap_err();
        assert_eq!(f.code, 1007);
    }

    #[test]
    fn every_rule_broken_gets_its_close_code() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", vec![0x81, 0x01, b'x'], 1002),
            ("rsv2", { let mut f = masked(true, false, OP_TEXT, b"x"); f[0] |= 0x20; f }, 1002),
            ("reserved opcode", masked(true, false, 0x3, b"x"), 1002),
            ("reserved control opcode", masked(true, false, 0xB, b"x"), 1002),
            ("continuation with nothing to continue", masked(true, false, OP_CONTINUATION, b"x"), 1002),
            ("fragmented ping", masked(false, false, OP_PING, b"x"), 1002),
            ("ping of 126 bytes", masked(true, false, OP_PING, &[0; 126]), 1002),
            ("compressed ping", masked(true, true, OP_PING, b""), 1002),
            ("close with one byte", masked(true, false, OP_CLOSE, &[3]), 1002),
            ("close code 1005", masked(true, false, OP_CLOSE, &[0x03, 0xed]), 1002),
            ("close reason not UTF-8", masked(true, false, OP_CLOSE, &[0x03, 0xe8, 0xff]), 1007),
            ("text not UTF-8", masked(true, false, OP_TEXT, &[0xff, 0xfe]), 1007),
            ("frame over the max", masked(true, false, OP_BINARY, &[0; 101]), 1009),
            ("64-bit length with the top bit", vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], 1002),
            ("declared 4 GiB, no payload", vec![0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4], 1009),
            ("fragments past the max", [masked(false, false, OP_TEXT, &[b'a'; 60]), masked(true, false, OP_CONTINUATION, &[b'a'; 60])].concat(), 1009),
            ("new message inside a fragmented one", [masked(false, false, OP_TEXT, b"a"), masked(true, false, OP_TEXT, b"b")].concat(), 1002),
        ];
        for (name, bytes, code) in cases {
            let got = decode(&mut Decoder::new(100, true), &bytes);
            assert_eq!(got.as_ref().map_err(|f| f.code), Err(code), "{name}: {got:?}");
        }
    }
}
