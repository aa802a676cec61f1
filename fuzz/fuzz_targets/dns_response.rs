//! Fuzzes the DNS response path: `wire::dns::parse_response` and `addresses_for`
//! on raw bytes, then the same bytes as a datagram to a `shell::dns::ResolverCore` with a
//! lookup in flight (the first input byte picks which pending query's id is patched in,
//! so most inputs get past the id match and into the full parse and the outcome logic).
//!
//! Checks: never panics; parsing is pure (same answer twice); a successful
//! `addresses_for` returns only addresses of the asked family, and a TTL of 0 when empty; an answer the core
//! gives has at least one address when it is `Ok`, and the core is left with nothing in
//! flight for that name or with a deadline to wait for.
#![no_main]

use klinegate::shell::dns::{Hosts, ResolverConfig, ResolverCore};
use klinegate::wire::dns::{addresses_for, parse_response, QueryType};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

const HOST: &str = "fapi.binance.com";

fn check_wire(bytes: &[u8]) {
    let first = parse_response(bytes);
    assert_eq!(first, parse_response(bytes), "parsing is not pure");
    if let Ok(response) = first {
        for qtype in [QueryType::A, QueryType::Aaaa] {
            if let Ok(a) = addresses_for(&response, HOST, qtype) {
                assert!(!a.addrs.is_empty() || a.ttl == 0, "ttl {} without an address", a.ttl);
                assert!(a.addrs.iter().all(|ip| ip.is_ipv6() == (qtype == QueryType::Aaaa)), "{:?}", a.addrs);
            }
        }
    }
}

fn check_core(selector: u8, body: &[u8]) {
    let config = ResolverConfig::default();
    let server = config.nameservers[0];
    let mut core = ResolverCore::new(config, Hosts::default(), 1);
    let now = Instant::now();
    core.lookup(HOST, now);
    let sent: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
    assert_eq!(sent.len(), 2);
    let mut datagram = body.to_vec();
    if datagram.len() >= 2 && selector & 1 == 0 {
        let id = sent[usize::from(selector >> 1 & 1)].id;
        datagram[..2].copy_from_slice(&id.to_be_bytes());
    }
    core.handle_datagram(server, &datagram, now);
    while let Some(answer) = core.poll_answer() {
        if let Ok(addrs) = &answer.result {
            assert!(!addrs.is_empty(), "Ok answer without an address");
        }
    }
    // Whatever happened, the lookup either ended or still has a deadline.
    let stats = core.stats();
    assert!(stats.in_flight == 0 || core.poll_timeout().is_some());
}

fuzz_target!(|data: &[u8]| {
    check_wire(data);
    if let Some((selector, body)) = data.split_first() {
        check_core(*selector, body);
    }
});
