//! RFC 6455 frame heads: parsing a client's (masked) frame head, encoding the
//! server's (unmasked) one, and unmasking a payload in place.
//!
//! Owns: the bytes of a frame head. Never decides what a frame means (see
//! [`super::decoder`]) and never holds state.

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The largest head: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEAD: usize = 14;

/// A parsed frame head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    /// RSV1: "this message is compressed" under permessage-deflate.
    pub rsv1: bool,
    /// RSV2 or RSV3 set (no extension of ours defines them).
    pub rsv23: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes of the head itself.
    pub head_len: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why a head cannot be read at all (the connection fails with 1002).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2).
    LengthTooLarge,
}

/// Parses the head at the start of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(HeadError::LengthTooLarge);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Head {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        rsv23: b0 & 0x30 != 0,
        opcode: b0 & 0x0f,
        mask,
        len,
        head_len: at,
    }))
}

/// Appends an unmasked (server) frame head: FIN set, RSV1 when `compressed`.
pub fn write_head(out: &mut Vec<u8>, opcode: u8, compressed: bool, len: usize) {
    let b0 = 0x80 | if compressed { 0x40 } else { 0 } | (opcode & 0x0f);
    if len < 126 {
        out.extend_from_slice(&[b0, len as u8]);
    } else if let Ok(n) = u16::try_from(len) {
        out.extend_from_slice(&[b0, 126]);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.extend_from_slice(&[b0, 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a whole unmasked frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, compressed: bool, payload: &[u8]) {
    write_head(out, opcode, compressed, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a masked (client) frame: for tests, benches and fuzzing.
pub fn write_masked_frame(out: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) {
    let b0 = if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | (opcode & 0x0f);
    let len = payload.len();
    if len < 126 {
        out.extend_from_slice(&[b0, 0x80 | len as u8]);
    } else if let Ok(n) = u16::try_from(len) {
        out.extend_from_slice(&[b0, 0x80 | 126]);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.extend_from_slice(&[b0, 0x80 | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the masking key (RFC 6455 §5.3); its own inverse.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A close frame's payload: the code, then the reason cut to fit a control
/// frame (125 bytes) at a character boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(2 + cut);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    p
}

/// Whether a peer may send this close code (RFC 6455 §7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
