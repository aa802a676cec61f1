//! RFC 7692 permessage-deflate, server side: reading the client's offers in
//! `Sec-WebSocket-Extensions` and choosing the answer, compressing one message
//! with no context kept (`server_no_context_takeover`, so one compressed form
//! serves every client), and inflating one client message under a size cap
//! (`client_no_context_takeover` is always answered, so no window survives a
//! message and a connection holds no inflate state between messages).
//!
//! Owns: the extension's parameters and the deflate bytes. Never holds a
//! connection's state and never decides which frames are worth compressing
//! (the shell's cache does).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What the server answers when it accepts an offer.
pub const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail a sync flush leaves, stripped from a compressed message and
/// appended again before inflating (RFC 7692 §7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An accepted offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `server_max_window_bits` the client asked for (8..=15; 15 when absent).
    /// Our compressor's window is 32 KiB: a message is compressed for this
    /// client only when it is no longer than `1 << bits`, so no back
    /// reference can reach further than the window allowed.
    pub server_max_window_bits: u8,
}

impl Accepted {
    /// The longest message that may be sent compressed to this client.
    pub fn max_compressed_message(&self) -> usize {
        if self.server_max_window_bits >= 15 {
            usize::MAX
        } else {
            1usize << self.server_max_window_bits
        }
    }
}

/// The first `permessage-deflate` offer in the header values that can be
/// honoured, in the client's order of preference; `None` declines them all
/// (the connection goes on uncompressed).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Accepted> {
    for value in header_values {
        for offer in value.split(',') {
            if let Some(a) = accept_offer(offer) {
                return Some(a);
            }
        }
    }
    None
}

/// One offer (`name; param; param=value`): accepted when it is permessage-deflate
/// and every parameter is known, valid and given once.
fn accept_offer(offer: &str) -> Option<Accepted> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut accepted = Accepted { server_max_window_bits: 15 };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                accepted.server_max_window_bits = window_bits(value?)?;
                2
            }
            "client_max_window_bits" => {
                // Our inflater has a 32 KiB window: any client window fits it.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None; // a parameter given twice
        }
    }
    Some(accepted)
}

/// `8`..=`15` in plain decimal, without leading zeros (RFC 7692 §7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// A raw-deflate compressor reused across messages, reset before each one.
pub struct Compressor {
    c: Compress,
}

impl Compressor {
    /// `level` 0..=9 (1 is fastest that still compresses).
    pub fn new(level: u32) -> Compressor {
        Compressor { c: Compress::new(Compression::new(level), false) }
    }

    /// The compressed form of one message (without the sync tail), appended to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.c.reset();
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        loop {
            let consumed = self.c.total_in() as usize;
            let rest = payload.get(consumed..).unwrap_or(&[]);
            if out.capacity() == out.len() {
                out.reserve(out.len().max(64));
            }
            // A buffer error only says no progress was possible: more room fixes it.
            let _ = self.c.compress_vec(rest, out, FlushCompress::Sync);
            if self.c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break; // all input taken and the flush fitted
            }
        }
        if out[start..].ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
    }
}

/// Why a client message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the cap (a decompression bomb, or simply too big): 1009.
    TooBig,
    /// Not valid deflate data: 1007 (RFC 7692 §8 leaves the code to us; it is invalid payload data).
    Corrupt,
}

/// Inflates one client message (the sync tail is added here) into at most `cap` bytes.
pub fn inflate(compressed: &[u8], cap: usize) -> Result<Vec<u8>, InflateError> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity((compressed.len() * 4).clamp(64, cap.saturating_add(1).max(64)));
    let mut input: &[u8] = compressed;
    let mut tail_fed = false;
    loop {
        if out.len() > cap {
            return Err(InflateError::TooBig);
        }
        if out.len() == out.capacity() {
            // One byte past the cap is enough to know it is too big.
            let room = out.len().max(256).min(cap.saturating_add(1).saturating_sub(out.len()).max(1));
            out.reserve(room);
        }
        let before_in = d.total_in();
        let before_out = out.len();
        let status = d.decompress_vec(input, &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
        let used = (d.total_in() - before_in) as usize;
        input = &input[used..];
        if out.len() > cap {
            return Err(InflateError::TooBig);
        }
        if status == Status::StreamEnd {
            // A final block: whatever follows is not deflate data of this message.
            return if input.is_empty() || tail_fed { Ok(out) } else { Err(InflateError::Corrupt) };
        }
        if input.is_empty() {
            if tail_fed {
                if out.len() < out.capacity() {
                    return Ok(out);
                }
                continue; // output was full: more may come
            }
            tail_fed = true;
            input = &SYNC_TAIL;
            continue;
        }
        if used == 0 && out.len() == before_out && out.len() < out.capacity() {
            return Err(InflateError::Corrupt); // no progress possible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_hello_example_compresses_and_inflates() {
        // RFC 7692 §7.2.3.1: "Hello" with no context takeover.
        let mut out = Vec::new();
        Compressor::new(1).compress(b"Hello", &mut out);
        assert_eq!(inflate(&out, 100).unwrap(), b"Hello");
        assert_eq!(inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(), b"Hello");
        // §7.2.3.3: a message in one stored (uncompressed) block.
        assert_eq!(inflate(&[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00], 100).unwrap(), b"Hello");
        // §7.2.3.4: BFINAL set is allowed.
        assert_eq!(inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(), b"Hello");
    }

    #[test]
    fn compression_round_trips_every_size_and_empty() {
        let mut c = Compressor::new(1);
        for n in [0usize, 1, 127, 128, 1000, 70_000, 300_000] {
            let payload: Vec<u8> = (0..n).map(|i| b"{\"t\":1,\"c\":2.5}"[i % 15]).collect();
            let mut out = Vec::new();
            c.compress(&payload, &mut out);
            assert_eq!(inflate(&out, n).unwrap(), payload, "size {n}");
            if n >= 1000 {
                assert!(out.len() * 4 < n, "repetitive JSON compresses: {} of {n}", out.len());
            }
        }
        // Incompressible bytes still round-trip.
        let noise: Vec<u8> = (0..50_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut out = Vec::new();
        c.compress(&noise, &mut out);
        assert_eq!(inflate(&out, noise.len()).unwrap(), noise);
    }

    #[test]
    fn a_bomb_is_stopped_at_the_cap_and_garbage_is_corrupt() {
        let zeros = vec![0u8; 10 << 20];
        let mut out = Vec::new();
        Compressor::new(9).compress(&zeros, &mut out);
        assert!(out.len() < 20_000, "{}", out.len());
        assert_eq!(inflate(&out, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(inflate(&out, 10 << 20).map(|v| v.len()), Ok(10 << 20));
        assert_eq!(inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1000), Err(InflateError::Corrupt));
    }

    #[test]
    fn offers_are_accepted_or_declined_per_rfc_7692() {
        let ok15 = Some(Accepted { server_max_window_bits: 15 });
        assert_eq!(negotiate(["permessage-deflate"]), ok15);
        // Chrome and Firefox.
        assert_eq!(negotiate(["permessage-deflate; client_max_window_bits"]), ok15);
        assert_eq!(negotiate(["permessage-deflate; client_max_window_bits=10; server_no_context_takeover"]), ok15);
        assert_eq!(negotiate(["Permessage-Deflate; Client_No_Context_Takeover"]), ok15);
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=10"]),
            Some(Accepted { server_max_window_bits: 10 })
        );
        assert_eq!(Accepted { server_max_window_bits: 10 }.max_compressed_message(), 1024);
        assert_eq!(negotiate(["permessage-deflate; server_max_window_bits=\"12\""]).map(|a| a.server_max_window_bits), Some(12));
        // Declined: unknown or invalid or repeated parameters, other extensions.
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=99",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([bad]), None, "{bad:?}");
        }
        // The first offer that can be honoured wins, across commas and header lines.
        assert_eq!(
            negotiate(["permessage-deflate; mystery, permessage-deflate; server_max_window_bits=9"]),
            Some(Accepted { server_max_window_bits: 9 })
        );
        assert_eq!(negotiate(["foo", "permessage-deflate"]), ok15);
    }
}
