//! The real binary's name resolution (`shell::dns`) over loopback: exchange URLs with host
//! names resolved through a fake nameserver named by `--resolv-conf`, `localhost` from the
//! hosts file, and the point of it all: a nameserver that never answers does not stall the
//! loop (a WebSocket client keeps getting its frames on time), and the lookup's timeout
//! reaches the engine as an ordinary connection failure.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::live::Live;

const S1: &str = "binance:spot:BTC/USDT:1m";
const STREAM: &str = "btcusdt@kline_1m";
const FUTURES: &str = "binance:futures:BTC/USDT:1m";
const SEC: Duration = Duration::from_secs(1);

/// A nameserver on 127.0.0.1 that answers A queries for `name` with `ip`, AAAA queries for
/// it with no record, anything else with NXDOMAIN. Counts the queries it gets.
struct FakeDns {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
}

impl FakeDns {
    fn start(name: &'static str, ip: Ipv4Addr) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&buf[..n], name, ip) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        FakeDns { addr, queries }
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The reply to one query, built the way servers do: the query echoed with QR|RA and an
/// answer whose owner is a compression pointer to the question name (offset 12).
fn answer(query: &[u8], name: &str, ip: Ipv4Addr) -> Option<Vec<u8>> {
    let parsed = klinegate::wire::dns::parse_response(query).ok()?;
    let question = parsed.questions.first()?;
    let mut out = query.to_vec();
    out[2] = 0x81;
    out[3] = 0x80;
    if question.name != name {
        out[3] |= 3; // NXDOMAIN
    } else if question.qtype == 1 {
        out[7] = 1;
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// A resolv.conf in `dir` naming `server`, with short tries.
fn resolv_conf(dir: &tempfile::TempDir, server: SocketAddr, options: &str) -> PathBuf {
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, format!("nameserver {server}\noptions {options}\n")).unwrap();
    path
}

fn metric(live: &Live, name: &str) -> f64 {
    live.metric(name)
}

#[test]
fn exchange_host_name_is_resolved_through_the_configured_nameserver() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let dns = FakeDns::start("exchange.test", Ipv4Addr::LOCALHOST);
    let dir = tempfile::tempdir().unwrap();
    let conf = resolv_conf(&dir, dns.addr, "timeout:2 attempts:1");
    let url = ex.ws_url().replace("127.0.0.1", "exchange.test");
    let conf_arg = conf.display().to_string();
    let mut live = Live::start_in(
        dir,
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--resolv-conf", &conf_arg, "--pin", S1, "--derived", ""],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC), "subscribed via the resolved address");
    let line = live.wait_log("dns_resolved host=exchange.test source=dns", 5 * SEC).expect("resolution logged");
    assert!(line.contains("addrs=127.0.0.1"), "{line}");
    eprintln!("{line}");
    assert!(dns.queries() >= 2, "A and AAAA asked: {}", dns.queries());
    assert!(metric(&live, "klinegate_dns_lookups_total") >= 1.0);
    assert!(metric(&live, "klinegate_dns_queries_sent_total") >= 2.0);
    assert_eq!(metric(&live, "klinegate_dns_failures_total"), 0.0);

    // A reconnect within the TTL is answered from the cache: no new query.
    let asked = dns.queries();
    ex.drop_all();
    assert!(ex.wait_until(10 * SEC, |e| e.connect_count() >= 2), "reconnected");
    assert!(live.wait_log("source=cache", 5 * SEC).is_some(), "second lookup from the cache");
    assert_eq!(dns.queries(), asked);
    assert!(metric(&live, "klinegate_dns_cache_hits_total") >= 1.0);
    assert_eq!(live.terminate(10 * SEC), Some(0));
}

#[test]
fn localhost_is_resolved_from_the_hosts_file_without_a_query() {
    let ex = FakeExchange::start(FakeOptions::spot());
    // Any query would go to a socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = resolv_conf(&dir, silent.local_addr().unwrap(), "timeout:5 attempts:1");
    let url = ex.ws_url().replace("127.0.0.1", "localhost");
    let conf_arg = conf.display().to_string();
    let mut live = Live::start_in(
        dir,
        &["--spot-ws-url", &url, "--futures-ws-url", &url, "--resolv-conf", &conf_arg, "--pin", S1, "--derived", ""],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    assert!(live.wait_log("dns_resolved host=localhost source=hosts", 5 * SEC).is_some());
    assert_eq!(metric(&live, "klinegate_dns_queries_sent_total"), 0.0);
    assert!(metric(&live, "klinegate_dns_hosts_hits_total") >= 1.0);
}

#[test]
fn a_silent_nameserver_does_not_stall_the_loop_and_fails_like_a_connect() {
    let ex = FakeExchange::start(FakeOptions::spot());
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Each futures lookup hangs 5 s × 2 attempts = 10 s before it fails.
    let conf = resolv_conf(&dir, silent.local_addr().unwrap(), "timeout:5 attempts:2");
    let spot = ex.ws_url();
    let futures = ex.ws_url().replace("127.0.0.1", "blackhole.test");
    let conf_arg = conf.display().to_string();
    let mut live = Live::start_in(
        dir,
        &[
            "--spot-ws-url", &spot, "--futures-ws-url", &futures, "--resolv-conf", &conf_arg,
            "--pin", S1, "--pin", FUTURES, "--derived", "", "--heal", "false", "--forming-interval-ms", "0",
        ],
    );
    assert!(ex.wait_for_subscriptions(&[STREAM], 10 * SEC));
    let mut client = live.ws();
    client.send(json!({"type":"subscribe","series_id":S1}));
    std::thread::sleep(Duration::from_millis(200));

    // 40 forming updates, one every 50 ms, while the futures lookup hangs: each must reach
    // the client while that lookup is still pending (before the fix, the loop sat in
    // getaddrinfo all along, so they came only after it failed). The check is that order
    // of events, not a wall-clock bound; the latencies are the report.
    let minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / 60 * 60_000;
    let mut latencies = Vec::new();
    for k in 0..40 {
        let close = 100.0 + k as f64;
        let pushed = Instant::now();
        ex.push_kline(STREAM, minute, 100.0, 1000.0, 50.0, close, 1.0, false);
        let got = client.until(10 * SEC, |f| f["type"] == "candle_forming" && f["candle"]["close"] == close);
        assert!(
            got.last().is_some_and(|f| f["candle"]["close"] == close),
            "update {k} not delivered during the DNS outage: {got:?}"
        );
        latencies.push(pushed.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort();
    let max = *latencies.last().unwrap();
    let median = latencies[latencies.len() / 2];
    eprintln!("{} frames during the DNS outage: median {median:?}, max {max:?}", latencies.len());
    assert_eq!(metric(&live, "klinegate_dns_failures_total"), 0.0, "every update arrived before the lookup gave up");
    assert!(metric(&live, "klinegate_dns_lookups_in_flight") >= 1.0, "the futures lookup is still pending");

    // The timeout reaches the engine through the ordinary failure path.
    let lost = live.wait_log("upstream_lost", 15 * SEC).expect("futures connection failure logged");
    assert!(lost.contains("resolving blackhole.test: timed out after 10.0 s"), "{lost}");
    assert!(metric(&live, "klinegate_dns_timeouts_total") >= 2.0);
    assert!(metric(&live, "klinegate_dns_failures_total") >= 1.0);
    assert_eq!(live.terminate(10 * SEC), Some(0));
}
