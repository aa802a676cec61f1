//! Fuzzes `wire::http::parse_request`, the HTTP/1.x parser on the shared client
//! port, under the default limits and under tiny ones.
//!
//! Checks: never panics; `consumed` lies within the buffer; the documented
//! incremental contract: every strict prefix of a complete request answers
//! `Incomplete` (never an error, never a different request), and the request's
//! own bytes alone (without what follows) parse to the same request; an error
//! turns into a 4xx/5xx response.
#![no_main]

use klinegate::wire::http::{parse_request, HttpLimits, Parse};
use libfuzzer_sys::fuzz_target;

fn check(buf: &[u8], limits: &HttpLimits, split_seed: usize) {
    match parse_request(buf, limits) {
        Parse::Complete { request, consumed } => {
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {}", buf.len());
            assert!(request.body.len() <= limits.max_body_bytes);
            let alone = parse_request(&buf[..consumed], limits);
            assert_eq!(alone, Parse::Complete { request: request.clone(), consumed }, "request bytes alone parse differently");
            let cut = split_seed % consumed;
            let prefix = parse_request(&buf[..cut], limits);
            assert_eq!(prefix, Parse::Incomplete, "prefix of {cut}/{consumed} bytes of a complete request");
        }
        Parse::Incomplete => {}
        Parse::Error(e) => {
            assert!((400..600).contains(&e.status), "status {}", e.status);
            let _ = e.to_response();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (seed, buf) = match data.split_first() {
        Some((s, rest)) => (*s as usize * 7919, rest),
        None => (0, data),
    };
    check(buf, &HttpLimits::default(), seed);
    check(buf, &HttpLimits { max_head_bytes: 64, max_body_bytes: 16 }, seed);
});
