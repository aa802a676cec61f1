//! Fuzzes the `/ws/market` WebSocket server side (`wire::ws`): arbitrary
//! client bytes through the frame decoder, with and without permessage-deflate,
//! split at an arbitrary point (as socket reads split them); the offer parser
//! on the same bytes as text.
//!
//! Checks: never panics; every byte is either consumed or waiting for more;
//! no message (inflated or not) is over the size limit; a failure's close
//! code is one of 1002, 1007, 1009; text is valid UTF-8; the same bytes fed in
//! one piece give the same events as fed in two; and every text message
//! compressed by our compressor inflates back to itself.
#![no_main]

use klinegate::wire::ws::decoder::{Decoder, Event, Fail};
use klinegate::wire::ws::deflate::{self, Compressor};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

/// All events from `bytes` fed in pieces split at `cut`, and the failure if any.
fn run(bytes: &[u8], cut: usize, deflate: bool) -> (Vec<Event>, Option<Fail>) {
    let mut d = Decoder::new(MAX, deflate);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for piece in [&bytes[..cut], &bytes[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            match d.next(&mut buf) {
                Ok((ev, n)) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                    match ev {
                        Some(e) => events.push(e),
                        None => break,
                    }
                }
                Err(f) => {
                    assert!(matches!(f.code, 1002 | 1007 | 1009), "{f:?}");
                    return (events, Some(f));
                }
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let (flags, bytes) = (data[0], &data[1..]);
    let deflate = flags & 1 != 0;
    let cut = if bytes.is_empty() { 0 } else { usize::from(flags >> 1) * bytes.len() / 127 }.min(bytes.len());
    let (events, fail) = run(bytes, cut, deflate);
    for e in &events {
        match e {
            Event::Text(t) => assert!(t.len() <= MAX),
            Event::Binary(n) => assert!(*n <= MAX),
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Pong | Event::Close(_) => {}
        }
    }
    // Splitting never changes the outcome.
    let (whole, whole_fail) = run(bytes, bytes.len(), deflate);
    assert_eq!(whole, events);
    assert_eq!(whole_fail, fail);

    // Inflating arbitrary bytes under a cap: bounded, never a panic.
    if let Ok(out) = deflate::inflate(bytes, MAX) {
        assert!(out.len() <= MAX);
    }
    // Offers: whatever is accepted has a window in range.
    let text = String::from_utf8_lossy(bytes);
    if let Some(a) = deflate::negotiate([text.as_ref()]) {
        assert!((8..=15).contains(&a.server_max_window_bits));
    }
    // Our compressor round-trips anything.
    let mut c = Vec::new();
    Compressor::new(1).compress(bytes, &mut c);
    assert_eq!(deflate::inflate(&c, bytes.len()).as_deref(), Ok(bytes));
});
