//! The resolver's tests: the sans-IO core with no socket and no clock, then the shell
//! part over loopback against a fake DNS server on a thread.

use super::*;
use crate::wire::dns::tests::{wire_name, ResponseBuilder, QNAME_AT};

const NS1: &str = "10.0.0.1:53";
const NS2: &str = "10.0.0.2:53";

fn config(servers: &[&str], timeout_s: u64, attempts: u32) -> ResolverConfig {
    ResolverConfig {
        nameservers: servers.iter().map(|s| s.parse().unwrap()).collect(),
        timeout: Duration::from_secs(timeout_s),
        attempts,
    }
}

fn core(servers: &[&str]) -> ResolverCore {
    ResolverCore::new(config(servers, 5, 2), Hosts::default(), 7)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn transmits(c: &mut ResolverCore) -> Vec<Transmit> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn answers(c: &mut ResolverCore) -> Vec<Answer> {
    std::iter::from_fn(|| c.poll_answer()).collect()
}

fn qtype_of(t: &Transmit) -> u16 {
    let n = t.payload.len();
    u16::from_be_bytes([t.payload[n - 4], t.payload[n - 3]])
}

/// An answer to `query` with one address record per item of `addrs` of its type.
fn reply(query: &Transmit, rcode: u8, addrs: &[&str]) -> Vec<u8> {
    let mut b = ResponseBuilder::answering(&query.payload, rcode);
    for a in addrs {
        b = match ip(a) {
            IpAddr::V4(v4) if qtype_of(query) == 1 => b.record_at(QNAME_AT, 1, 120, &v4.octets()),
            IpAddr::V6(v6) if qtype_of(query) == 28 => b.record_at(QNAME_AT, 28, 60, &v6.octets()),
            _ => b,
        };
    }
    b.build()
}

fn answer_both(c: &mut ResolverCore, sent: &[Transmit], addrs: &[&str], now: Instant) {
    for t in sent {
        c.handle_datagram(t.to, &reply(t, 0, addrs), now);
    }
}

#[test]
fn resolv_conf_nameservers_options_and_fallback() {
    let text = "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver ::1 ; trailing\n\
                nameserver 127.0.0.1:5353\nnameserver 10.0.0.9\nnameserver fe80::1%eth0\n\
                options ndots:2 timeout:3 attempts:9 rotate\noptions timeout:0\n";
    let parsed = parse_resolv_conf(text);
    assert_eq!(
        parsed.config.nameservers,
        vec![sa("10.0.0.1:53"), sa("[::1]:53"), sa("127.0.0.1:5353")]
    );
    assert_eq!(parsed.config.timeout, Duration::from_secs(1), "later option wins, clamped to >= 1 s");
    assert_eq!(parsed.config.attempts, 5, "clamped to 5");
    assert_eq!(parsed.notes.len(), 2, "{:?}", parsed.notes);
    let empty = parse_resolv_conf("domain example.com\n");
    assert_eq!(empty.config, ResolverConfig::default(), "no nameserver: 127.0.0.1:53, 5 s, 2 attempts");
    assert_eq!(ResolverConfig::default().worst_case(), Duration::from_secs(10));
    assert_eq!(parse_resolv_conf("options timeout:99").config.timeout, Duration::from_secs(30));
}

#[test]
fn hosts_file_parsing_and_localhost() {
    let hosts = Hosts::parse(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost # comment\n10.1.2.3 Exchange.Test alias\n\
         fe80::1%lo0 weird\nnot-an-ip name\n10.1.2.4 exchange.test.\n",
    );
    assert_eq!(hosts.lookup("localhost"), Some(vec![ip("127.0.0.1"), ip("::1")]));
    assert_eq!(hosts.lookup("exchange.test"), Some(vec![ip("10.1.2.3"), ip("10.1.2.4")]));
    assert_eq!(hosts.lookup("alias"), Some(vec![ip("10.1.2.3")]));
    assert_eq!(hosts.lookup("weird"), None);
    assert_eq!(hosts.lookup("name"), None);
    assert_eq!(Hosts::default().lookup("localhost"), Some(vec![ip("127.0.0.1"), ip("::1")]));
}

#[test]
fn literals_hosts_and_invalid_names_answer_at_once() {
    let mut c = ResolverCore::new(config(&[NS1], 5, 2), Hosts::parse("::2 both\n10.0.0.7 both\n"), 1);
    let now = Instant::now();
    assert_eq!(c.lookup("10.9.8.7", now), "10.9.8.7");
    assert_eq!(c.lookup("BOTH.", now), "both");
    c.lookup("bad name", now);
    let got = answers(&mut c);
    assert_eq!(got[0].result, Ok(vec![ip("10.9.8.7")]));
    assert_eq!(got[0].source, AnswerSource::Literal);
    assert_eq!(got[1].result, Ok(vec![ip("10.0.0.7"), ip("::2")]), "IPv4 first");
    assert_eq!(got[1].source, AnswerSource::Hosts);
    assert!(matches!(&got[2].result, Err(DnsError::InvalidName { .. })), "{:?}", got[2]);
    assert!(transmits(&mut c).is_empty(), "nothing sent");
    assert_eq!(c.stats().lookups, 2, "literals are not lookups");
}

#[test]
fn a_and_aaaa_are_asked_in_parallel_and_combined() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    let host = c.lookup("fapi.binance.com", t0);
    let sent = transmits(&mut c);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent.iter().map(qtype_of).collect::<Vec<_>>(), vec![1, 28]);
    assert!(sent.iter().all(|t| t.to == sa(NS1)));
    assert_ne!(sent[0].id, sent[1].id);
    assert!(c.poll_answer().is_none());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    let t1 = t0 + Duration::from_millis(3);
    c.handle_datagram(sa(NS1), &reply(&sent[1], 0, &["2001:db8::5"]), t1);
    c.handle_datagram(sa(NS1), &reply(&sent[0], 0, &["13.1.1.1", "13.1.1.2"]), t1);
    let got = answers(&mut c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, host);
    assert_eq!(got[0].result, Ok(vec![ip("13.1.1.1"), ip("13.1.1.2"), ip("2001:db8::5")]));
    assert_eq!(got[0].elapsed, Duration::from_millis(3));
    assert!(c.poll_timeout().is_none());
    let s = c.stats();
    assert_eq!((s.lookups, s.queries_sent, s.failures, s.in_flight), (1, 2, 0, 0));
}

#[test]
fn cache_honours_ttl_with_clamps() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("a.example", t0);
    let sent = transmits(&mut c);
    answer_both(&mut c, &sent, &["1.2.3.4"], t0); // A TTL 120 s, AAAA no data
    assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.2.3.4")]));
    c.lookup("A.EXAMPLE", t0 + Duration::from_secs(119));
    let hit = answers(&mut c);
    assert_eq!(hit[0].source, AnswerSource::Cache);
    assert!(transmits(&mut c).is_empty());
    c.lookup("a.example", t0 + Duration::from_secs(120));
    assert!(answers(&mut c).is_empty(), "expired: asked again");
    assert_eq!(transmits(&mut c).len(), 2);
    assert_eq!(c.stats().cache_hits, 1);

    // TTL 0 is clamped up to 5 s; 1 day down to 300 s.
    for (ttl, keep) in [(0u32, MIN_CACHE_TTL), (86_400, MAX_CACHE_TTL)] {
        let mut c = core(&[NS1]);
        c.lookup("b.example", t0);
        for t in transmits(&mut c) {
            let msg = if qtype_of(&t) == 1 {
                ResponseBuilder::answering(&t.payload, 0).record_at(QNAME_AT, 1, ttl, &[9, 9, 9, 9]).build()
            } else {
                reply(&t, 0, &[])
            };
            c.handle_datagram(t.to, &msg, t0);
        }
        answers(&mut c);
        c.lookup("b.example", t0 + keep - Duration::from_millis(1));
        assert_eq!(answers(&mut c).len(), 1, "cached just before {keep:?}");
        c.lookup("b.example", t0 + keep);
        assert!(answers(&mut c).is_empty(), "expired at {keep:?}");
    }
}

#[test]
fn nxdomain_is_final_and_negatively_cached_briefly() {
    let mut c = core(&[NS1, NS2]);
    let t0 = Instant::now();
    c.lookup("nope.example", t0);
    let sent = transmits(&mut c);
    for t in &sent {
        c.handle_datagram(t.to, &reply(t, 3, &[]), t0);
    }
    let got = answers(&mut c);
    assert!(matches!(&got[0].result, Err(DnsError::NxDomain { .. })));
    assert_eq!(got[0].result.as_ref().unwrap_err().to_string(), "resolving nope.example: no such name (NXDOMAIN)");
    assert!(transmits(&mut c).is_empty(), "NXDOMAIN does not ask the next server");
    c.lookup("nope.example", t0 + NEGATIVE_CACHE_TTL - Duration::from_millis(1));
    assert_eq!(answers(&mut c)[0].source, AnswerSource::Cache);
    c.lookup("nope.example", t0 + NEGATIVE_CACHE_TTL);
    assert_eq!(transmits(&mut c).len(), 2, "negative entry expired");
    let s = c.stats();
    assert_eq!((s.nxdomain, s.failures), (2, 2));
}

#[test]
fn timeouts_move_to_the_next_server_then_the_next_round() {
    let mut c = ResolverCore::new(config(&[NS1, NS2], 2, 2), Hosts::default(), 3);
    let t0 = Instant::now();
    c.lookup("slow.example", t0);
    let mut now = t0;
    let mut servers = Vec::new();
    for _ in 0..4 {
        let sent = transmits(&mut c);
        assert_eq!(sent.len(), 2);
        servers.push(sent[0].to);
        assert!(answers(&mut c).is_empty());
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now - Duration::from_millis(1));
        assert!(transmits(&mut c).is_empty(), "nothing before the deadline");
        c.handle_timeout(now);
    }
    assert_eq!(servers, vec![sa(NS1), sa(NS2), sa(NS1), sa(NS2)]);
    let got = answers(&mut c);
    let err = got[0].result.clone().unwrap_err();
    assert!(matches!(err, DnsError::TimedOut { tries: 4, .. }), "{err:?}");
    assert_eq!(now - t0, Duration::from_secs(8));
    assert!(err.to_string().starts_with("resolving slow.example: timed out after 8.0 s"), "{err}");
    assert_eq!(c.stats().timeouts, 8);
    assert!(c.poll_timeout().is_none());
    c.lookup("slow.example", now);
    assert_eq!(transmits(&mut c).len(), 2, "timeouts are not cached");
}

#[test]
fn a_late_answer_from_the_first_server_is_ignored_after_moving_on() {
    let mut c = core(&[NS1, NS2]);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    let first = transmits(&mut c);
    c.handle_timeout(t0 + Duration::from_secs(5));
    let second = transmits(&mut c);
    assert!(second.iter().all(|t| t.to == sa(NS2)));
    answer_both(&mut c, &first, &["6.6.6.6"], t0 + Duration::from_secs(6));
    assert!(answers(&mut c).is_empty());
    assert_eq!(c.stats().ignored_datagrams, 2);
    answer_both(&mut c, &second, &["7.7.7.7"], t0 + Duration::from_secs(6));
    assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("7.7.7.7")]));
}

#[test]
fn servfail_truncation_and_garbage_try_the_next_server_at_once() {
    let mut c = ResolverCore::new(config(&[NS1, NS2], 5, 1), Hosts::default(), 11);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    let sent = transmits(&mut c);
    // A: SERVFAIL; AAAA: truncated.
    c.handle_datagram(sa(NS1), &reply(&sent[0], 2, &[]), t0);
    c.handle_datagram(sa(NS1), &ResponseBuilder::answering(&sent[1].payload, 0).truncated().build(), t0);
    let retry = transmits(&mut c);
    assert_eq!(retry.len(), 2);
    assert!(retry.iter().all(|t| t.to == sa(NS2)));
    // Garbage after a valid header with the right id: malformed answer, no server left.
    for t in &retry {
        let mut msg = ResponseBuilder::answering(&t.payload, 0).build();
        msg[7] = 3;
        c.handle_datagram(sa(NS2), &msg, t0);
    }
    let got = answers(&mut c);
    let err = got[0].result.clone().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DnsError::Failed { .. }), "{err:?}");
    assert!(text.contains("SERVFAIL from 10.0.0.1:53"), "{text}");
    assert!(text.contains("truncated (TC) and TCP fallback is not supported"), "{text}");
    assert!(text.contains("malformed answer from 10.0.0.2:53"), "{text}");
    assert_eq!(c.stats().server_errors, 4);
}

#[test]
fn forged_and_stray_datagrams_are_ignored() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    let sent = transmits(&mut c);
    // Wrong source, short garbage, unknown id, a query instead of a response, another name.
    c.handle_datagram(sa("10.6.6.6:53"), &reply(&sent[0], 0, &["6.6.6.6"]), t0);
    c.handle_datagram(sa(NS1), b"\x01\x02", t0);
    let mut unknown = reply(&sent[0], 0, &["6.6.6.6"]);
    unknown[0] ^= 0xff;
    unknown[1] ^= 0xff;
    c.handle_datagram(sa(NS1), &unknown, t0);
    c.handle_datagram(sa(NS1), &sent[0].payload, t0);
    let other = encode_query(sent[0].id, "y.example", QueryType::A).unwrap();
    c.handle_datagram(sa(NS1), &ResponseBuilder::answering(&other, 0).record_at(QNAME_AT, 1, 9, &[6, 6, 6, 6]).build(), t0);
    assert!(answers(&mut c).is_empty());
    assert_eq!(c.stats().ignored_datagrams, 5);
    answer_both(&mut c, &sent, &["1.1.1.1"], t0);
    assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.1.1.1")]));
}

#[test]
fn cname_chain_answer_resolves_to_the_target_addresses() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("fapi.binance.com", t0);
    for t in transmits(&mut c) {
        let b = ResponseBuilder::answering(&t.payload, 0);
        let target_at = b.len() + 12;
        let b = b.record_at(QNAME_AT, 5, 60, &wire_name("d1.cloudfront.example"));
        let msg = if qtype_of(&t) == 1 { b.record_at(target_at, 1, 30, &[52, 1, 2, 3]).build() } else { b.build() };
        c.handle_datagram(t.to, &msg, t0);
    }
    assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("52.1.2.3")]));
}

#[test]
fn one_family_answering_waits_the_resolution_delay_for_the_other() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    let sent = transmits(&mut c);
    c.handle_datagram(sa(NS1), &reply(&sent[0], 0, &["1.1.1.1"]), t0);
    assert_eq!(c.poll_timeout(), Some(t0 + RESOLUTION_DELAY));
    c.handle_timeout(t0 + RESOLUTION_DELAY);
    assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.1.1.1")]));
    assert!(c.poll_timeout().is_none());
    // The AAAA answer arriving later is a stray.
    c.handle_datagram(sa(NS1), &reply(&sent[1], 0, &["::5"]), t0 + RESOLUTION_DELAY);
    assert_eq!(c.stats().ignored_datagrams, 1);
}

#[test]
fn no_data_for_both_families_is_no_addresses() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("empty.example", t0);
    let sent = transmits(&mut c);
    answer_both(&mut c, &sent, &[], t0);
    assert!(matches!(answers(&mut c)[0].result, Err(DnsError::NoAddresses { .. })));
}

#[test]
fn concurrent_lookups_of_one_name_share_the_queries() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    c.lookup("X.example.", t0);
    let sent = transmits(&mut c);
    assert_eq!(sent.len(), 2);
    answer_both(&mut c, &sent, &["1.1.1.1"], t0);
    assert_eq!(answers(&mut c).len(), 1, "one answer for every waiter of the name");
}

#[test]
fn send_errors_fail_over_and_pending_lookups_are_bounded() {
    let mut c = ResolverCore::new(config(&[NS1, NS2], 5, 1), Hosts::default(), 5);
    let t0 = Instant::now();
    c.lookup("x.example", t0);
    for t in transmits(&mut c) {
        c.on_send_error(t.id, "Network is unreachable", t0);
    }
    assert!(transmits(&mut c).iter().all(|t| t.to == sa(NS2)));
    for i in 0..MAX_PENDING_LOOKUPS {
        c.lookup(&format!("h{i}.example"), t0);
    }
    assert!(matches!(answers(&mut c)[0].result, Err(DnsError::Busy { .. })));
    assert_eq!(c.stats().in_flight, MAX_PENDING_LOOKUPS as u64);
}

#[test]
fn cache_is_bounded() {
    let mut c = core(&[NS1]);
    let t0 = Instant::now();
    for i in 0..MAX_CACHE_ENTRIES + 10 {
        c.lookup(&format!("h{i}.example"), t0);
        let sent = transmits(&mut c);
        answer_both(&mut c, &sent, &["1.1.1.1"], t0 + Duration::from_millis(i as u64));
        answers(&mut c);
    }
    assert_eq!(c.cache.len(), MAX_CACHE_ENTRIES);
    assert!(!c.cache.contains_key("h0.example"), "the entry expiring first went");
}

// --- the shell part over loopback: a fake DNS server on a thread --------------------------

use std::net::UdpSocket as StdUdpSocket;
use std::sync::mpsc;

/// What the fake server does with each query.
#[derive(Clone, Copy)]
enum Behaviour {
    Answer,
    Drop,
    NxDomain,
    Garbage,
}

/// A UDP DNS server on 127.0.0.1 answering `Behaviour` for `queries` datagrams; reports
/// each query's type on the channel.
fn fake_server(behaviour: Behaviour, queries: usize) -> (SocketAddr, mpsc::Receiver<u16>) {
    let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for _ in 0..queries {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
            let query = Transmit { to: addr, payload: buf[..n].to_vec(), id: 0 };
            let _ = tx.send(qtype_of(&query));
            let msg = match behaviour {
                Behaviour::Answer => reply(&query, 0, &["127.0.0.1", "::1"]),
                Behaviour::Drop => continue,
                Behaviour::NxDomain => reply(&query, 3, &[]),
                Behaviour::Garbage => {
                    let mut m = reply(&query, 0, &["127.0.0.1"]);
                    m.truncate(m.len() - 3);
                    m
                }
            };
            socket.send_to(&msg, from).unwrap();
        }
    });
    (addr, rx)
}

struct Loop {
    poll: mio::Poll,
    events: mio::Events,
    resolver: Resolver,
    dir: tempfile::TempDir,
}

const TOKENS: [Token; 2] = [Token(1), Token(2)];

impl Loop {
    fn new(resolv_conf: &str, hosts: &str) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let files = ResolverFiles { resolv_conf: dir.path().join("resolv.conf"), hosts: dir.path().join("hosts") };
        std::fs::write(&files.resolv_conf, resolv_conf).unwrap();
        std::fs::write(&files.hosts, hosts).unwrap();
        let resolver = Resolver::new(&files, TOKENS, Instant::now());
        Loop { poll: mio::Poll::new().unwrap(), events: mio::Events::with_capacity(8), resolver, dir }
    }

    /// Runs the loop as the shell does until an answer comes (or 20 s).
    fn resolve(&mut self, host: &str) -> Answer {
        let start = Instant::now();
        self.resolver.lookup(host, self.poll.registry(), start);
        loop {
            if let Some(a) = self.resolver.poll_answer() {
                return a;
            }
            let now = Instant::now();
            assert!(now - start < Duration::from_secs(20), "no answer for {host}");
            let wait = self.resolver.poll_timeout().map_or(Duration::from_millis(100), |t| t.saturating_duration_since(now));
            self.poll.poll(&mut self.events, Some(wait)).unwrap();
            let now = Instant::now();
            let ready: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
            for token in ready {
                assert!(self.resolver.owns(token));
                self.resolver.on_readable(token, self.poll.registry(), now);
            }
            self.resolver.handle_timeout(self.poll.registry(), now);
        }
    }
}

#[test]
fn loopback_answer_nxdomain_and_garbage() {
    let (ok, seen) = fake_server(Behaviour::Answer, 2);
    let mut l = Loop::new(&format!("nameserver {ok}\noptions timeout:2 attempts:1\n"), "");
    let a = l.resolve("exchange.test");
    assert_eq!(a.result, Ok(vec![ip("127.0.0.1"), ip("::1")]), "{a:?}");
    assert_eq!(a.source, AnswerSource::Nameserver);
    let mut types: Vec<u16> = seen.try_iter().collect();
    types.sort();
    assert_eq!(types, vec![1, 28]);
    eprintln!("loopback resolution took {:?}", a.elapsed);
    assert!(a.log_line().starts_with("dns_resolved host=exchange.test source=dns addrs=127.0.0.1,::1"));
    assert_eq!(l.resolve("exchange.test").source, AnswerSource::Cache);

    let (nx, _) = fake_server(Behaviour::NxDomain, 2);
    let mut l = Loop::new(&format!("nameserver {nx}\n"), "");
    let a = l.resolve("missing.test");
    assert!(matches!(a.result, Err(DnsError::NxDomain { .. })), "{a:?}");

    let (garbage, _) = fake_server(Behaviour::Garbage, 2);
    let mut l = Loop::new(&format!("nameserver {garbage}\noptions attempts:1\n"), "");
    let a = l.resolve("garbage.test");
    let text = a.result.unwrap_err().to_string();
    assert!(text.contains("malformed answer"), "{text}");
    // A malformed answer does not wait for the timeout: no try timed out, the
    // server's error ended the lookup (counted, not waited for).
    let stats = l.resolver.stats();
    assert!(stats.timeouts == 0 && stats.server_errors >= 1, "{stats:?}");
}

#[test]
fn loopback_dropped_query_times_out_to_the_next_server() {
    let (dead, dropped) = fake_server(Behaviour::Drop, 2);
    let (ok, _) = fake_server(Behaviour::Answer, 2);
    let mut l = Loop::new(&format!("nameserver {dead}\nnameserver {ok}\noptions timeout:1 attempts:1\n"), "");
    let a = l.resolve("exchange.test");
    assert_eq!(a.result, Ok(vec![ip("127.0.0.1"), ip("::1")]), "{a:?}");
    assert!(a.elapsed >= Duration::from_secs(1), "waited the first server's timeout: {:?}", a.elapsed);
    assert_eq!(dropped.try_iter().count(), 2);
    assert_eq!(l.resolver.stats().timeouts, 2);

    let (dead, _) = fake_server(Behaviour::Drop, 4);
    let mut l = Loop::new(&format!("nameserver {dead}\noptions timeout:1 attempts:2\n"), "");
    let a = l.resolve("exchange.test");
    let err = a.result.unwrap_err();
    assert!(matches!(err, DnsError::TimedOut { tries: 2, .. }), "{err:?}");
}

#[test]
fn loopback_hosts_file_and_its_reload() {
    let (ok, seen) = fake_server(Behaviour::Answer, 2);
    let mut l = Loop::new(&format!("nameserver {ok}\n"), "10.1.1.1 exchange.test\n");
    let a = l.resolve("exchange.test");
    assert_eq!((a.result, a.source), (Ok(vec![ip("10.1.1.1")]), AnswerSource::Hosts));
    assert_eq!(l.resolve("localhost").result, Ok(vec![ip("127.0.0.1"), ip("::1")]));
    assert!(seen.try_recv().is_err(), "no query sent");
    // Rewrite the file with a different mtime; a check happens at most once a second.
    let path = l.dir.path().join("hosts");
    std::fs::write(&path, "10.2.2.2 exchange.test\n").unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    l.resolver.hosts.checked_at -= FILE_CHECK_EVERY;
    assert_eq!(l.resolve("exchange.test").result, Ok(vec![ip("10.2.2.2")]));
}

#[test]
fn missing_files_mean_defaults_and_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let files = ResolverFiles { resolv_conf: dir.path().join("none"), hosts: dir.path().join("none2") };
    let mut r = Resolver::new(&files, TOKENS, Instant::now());
    assert_eq!(r.config(), &ResolverConfig::default());
    let notes: Vec<String> = std::iter::from_fn(|| r.poll_note()).collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("dns_config_unreadable"));
}
