//! The market directory over the real binary against the fake exchange:
//! `GET /api/market/top_markets` (ranking, filters, cache, stale data on
//! failure, 502 with nothing cached, the forced-refresh limit, 400s) and the
//! `/stream` Server-Sent Events over a real socket (framing, pings, a new
//! event after a change, `max_events`, disconnect, shutdown), CORS on both.
//! Every wait is bounded.

mod support;
#[path = "support/fake_exchange.rs"]
mod fake_exchange;

use fake_exchange::{FakeExchange, FakeOptions, FakeSymbol};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::live::{http_request, Live};

const SEC: Duration = Duration::from_secs(1);
const TOP: &str = "/api/market/top_markets";
const ORIGIN: &str = "http://localhost:5173";

fn start(ex: &FakeExchange) -> Live {
    let url = ex.ws_url();
    Live::start(&["--spot-ws-url", &url, "--futures-ws-url", &url])
}

fn spot_symbols(eth_volume: &str) -> Vec<FakeSymbol> {
    vec![
        FakeSymbol::new("BTC", "USDT").with_ticker("60000.5", "5000000", "1.25"),
        FakeSymbol::new("ETH", "USDT").with_ticker("3000", eth_volume, "-2.5"),
        FakeSymbol::new("SOL", "USDT").with_ticker("150", "1000000", "0"),
        FakeSymbol::new("OLD", "USDT").with_status("BREAK").with_ticker("1", "900000000", "0"),
        FakeSymbol::new("ETH", "BTC").with_ticker("0.05", "800000000", "0.1"),
    ]
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {body}"))
}

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().expect("items").iter().map(|i| i["symbol_id"].as_str().unwrap().to_string()).collect()
}

/// The whole response (head and body) of one request with an Origin header.
fn raw_with_origin(live: &Live, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&live.addr, 5 * SEC).expect("connect");
    s.set_read_timeout(Some(5 * SEC)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn ranks_by_quote_volume_filters_and_caches() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    ex.set_markets(
        "futures",
        vec![
            FakeSymbol::perpetual("BTC", "USDT").with_ticker("60010", "7000000", "1"),
            FakeSymbol::perpetual("BTC", "USDT").with_contract_type("CURRENT_QUARTER").with_ticker("61000", "9e9", "1"),
            FakeSymbol::perpetual("ETH", "USDT").with_status("SETTLING").with_ticker("3000", "8e9", "1"),
            FakeSymbol::perpetual("XRP", "USDT").with_ticker("0.5", "100", "-0.5"),
        ],
    );
    let live = start(&ex);

    let (status, body) = live.get(&format!("{TOP}?exchange=binance&market=spot&quote_asset=USDT&limit=2"));
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(ids(&v), ["ETHUSDT", "BTCUSDT"], "by volume, TRADING only, quote USDT, limit 2");
    assert_eq!((v["exchange"].as_str(), v["market"].as_str(), v["quote_asset"].as_str()), (Some("binance"), Some("spot"), Some("USDT")));
    assert_eq!(v["limit"], 2);
    assert_eq!(v["cached"], false);
    assert!(v["generated_at_ms"].as_i64().unwrap() > 1_600_000_000_000);
    let btc = &v["items"][1];
    assert_eq!(btc["symbol"], "BTC/USDT");
    assert_eq!(btc["base_asset"], "BTC");
    assert_eq!(btc["quote_asset"], "USDT");
    assert_eq!(btc["exchange"], "binance");
    assert_eq!(btc["last_price"], 60000.5);
    assert_eq!(btc["quote_volume"], 5_000_000.0);
    assert_eq!(btc["price_change_percent"], 1.25);

    let again = json(&live.get(&format!("{TOP}?market=spot&limit=2")).1);
    assert_eq!(again["cached"], true, "second call within the TTL is served from the cache");
    assert_eq!(ids(&again), ids(&v));
    let by_btc = json(&live.get(&format!("{TOP}?quote_asset=btc")).1);
    assert_eq!(ids(&by_btc), ["ETHBTC"]);
    assert_eq!(ex.rest_requests_to("/api/v3/exchangeInfo").len(), 1, "one exchangeInfo for all three");
    assert_eq!(ex.rest_requests_to("/api/v3/ticker/24hr").len(), 1, "one ticker/24hr for all three");

    let fut = json(&live.get(&format!("{TOP}?market=futures")).1);
    assert_eq!(ids(&fut), ["BTCUSDT", "XRPUSDT"], "PERPETUAL and TRADING only: {fut}");
    assert_eq!(fut["market"], "futures");
    assert_eq!(fut["items"][0]["symbol"], "BTC/USDT");
    assert_eq!(ex.rest_requests_to("/fapi/v1/exchangeInfo").len(), 1);
    assert_eq!(ex.rest_requests_to("/fapi/v1/ticker/24hr").len(), 1);
}

#[test]
fn stale_cache_is_served_when_the_exchange_fails() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    assert_eq!(json(&live.get(TOP).1)["cached"], false);
    ex.rest_fail_next(5, 500, r#"{"code":-1000,"msg":"boom"}"#);
    let (status, body) = live.get(&format!("{TOP}?force=true"));
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["cached"], true);
    assert_eq!(ids(&v), ["ETHUSDT", "BTCUSDT", "SOLUSDT"]);
    assert_eq!(ex.rest_requests_to("/ticker/24hr").len(), 2, "the forced refresh was tried");
}

#[test]
fn upstream_failure_with_nothing_cached_is_502() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    ex.rest_fail_next(5, 500, r#"{"code":-1000,"msg":"boom"}"#);
    let (status, body) = live.get(TOP);
    assert_eq!(status, 502, "{body}");
    assert!(json(&body)["detail"].as_str().unwrap().starts_with("upstream_unavailable"), "{body}");
}

#[test]
fn forced_refresh_flood_is_rate_limited_and_bad_params_are_400() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    assert_eq!(live.get(&format!("{TOP}?force=true")).0, 200);
    for _ in 0..5 {
        let (status, body) = live.get(&format!("{TOP}?force=true"));
        assert_eq!(status, 429, "{body}");
        assert_eq!(json(&body)["detail"], "rate_limited");
    }
    assert_eq!(live.get(TOP).0, 200, "unforced reads are unaffected");
    assert_eq!(ex.rest_requests_to("/ticker/24hr").len(), 1, "the flood never reached the exchange");

    let (status, body) = live.get(&format!("{TOP}?exchange=okx"));
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["detail"].as_str().unwrap().contains("unsupported exchange"));
    for bad in ["market=coinm", "limit=0", "limit=500", "force=maybe"] {
        assert_eq!(live.get(&format!("{TOP}?{bad}")).0, 400, "{bad}");
    }
    for bad in ["exchange=okx", "interval_s=0.05", "interval_s=60", "max_events=0"] {
        assert_eq!(live.get(&format!("{TOP}/stream?{bad}")).0, 400, "{bad}");
    }
}

#[test]
fn cors_and_preflight_on_both_routes() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    for path in [TOP.to_string(), format!("{TOP}/stream")] {
        let pre = raw_with_origin(&live, "OPTIONS", &path);
        assert!(pre.starts_with("HTTP/1.1 204"), "{pre}");
        assert!(pre.contains(&format!("Access-Control-Allow-Origin: {ORIGIN}")), "{pre}");
        assert!(pre.contains("Access-Control-Allow-Methods:"), "{pre}");
    }
    let got = raw_with_origin(&live, "GET", TOP);
    assert!(got.starts_with("HTTP/1.1 200") && got.contains(&format!("Access-Control-Allow-Origin: {ORIGIN}")), "{got}");
    let bad = raw_with_origin(&live, "GET", &format!("{TOP}?limit=0"));
    assert!(bad.starts_with("HTTP/1.1 400") && bad.contains("Access-Control-Allow-Origin"), "{bad}");
    let stream = raw_with_origin(&live, "GET", &format!("{TOP}/stream?max_events=1"));
    assert!(stream.starts_with("HTTP/1.1 200") && stream.contains(&format!("Access-Control-Allow-Origin: {ORIGIN}")), "{stream}");
    let (status, _) = http_request(live.addr, &format!("DELETE {TOP} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 405);
}

/// An event stream read block by block.
struct Sse {
    reader: BufReader<TcpStream>,
    head: String,
}

impl Sse {
    fn open(live: &Live, query: &str) -> Sse {
        let s = TcpStream::connect_timeout(&live.addr, 5 * SEC).expect("connect");
        s.set_read_timeout(Some(5 * SEC)).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(format!("GET {TOP}/stream?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read head");
            assert!(n > 0, "stream closed during the head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        Sse { reader, head }
    }

    /// The next block (lines up to a blank line), or None at end of stream.
    fn block(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return if lines.is_empty() { None } else { Some(lines) },
                Ok(_) if line == "\n" => return Some(lines),
                Ok(_) => lines.push(line.trim_end_matches('\n').to_string()),
                Err(e) => panic!("reading the stream: {e} after {lines:?}"),
            }
        }
    }

    /// The next `event:` block (pings skipped), with its id and data.
    fn event(&mut self, within: Duration) -> Option<(u64, String, Value)> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let block = self.block()?;
            if block == [": ping"] {
                continue;
            }
            let field = |name: &str| block.iter().find_map(|l| l.strip_prefix(name)).map(str::to_string);
            let id = field("id: ").expect("id").parse().expect("numeric id");
            return Some((id, field("event: ").expect("event"), json(&field("data: ").expect("data"))));
        }
        None
    }
}

#[test]
fn stream_sends_an_event_then_pings_then_the_change_then_closes_at_max_events() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    let mut sse = Sse::open(&live, "market=spot&limit=2&interval_s=0.2&max_events=2");
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(sse.head.contains("Content-Type: text/event-stream\r\n"), "{}", sse.head);
    assert!(!sse.head.contains("Content-Length"), "{}", sse.head);

    let first = sse.block().expect("first block");
    assert_eq!(first[0], "id: 1");
    assert_eq!(first[1], "event: top_markets");
    let data = json(first[2].strip_prefix("data: ").expect("data line"));
    assert_eq!(ids(&data), ["ETHUSDT", "BTCUSDT"]);
    assert_eq!(sse.block().expect("second block"), [": ping"], "unchanged list: a ping");
    assert_eq!(sse.block().expect("third block"), [": ping"]);

    // The fake's volumes change; a forced read refreshes the shared cache.
    ex.set_markets("spot", spot_symbols("100"));
    assert_eq!(json(&live.get(&format!("{TOP}?force=true")).1)["cached"], false);
    let (id, event, data) = sse.event(5 * SEC).expect("an event after the change");
    assert_eq!((id, event.as_str()), (2, "top_markets"));
    assert_eq!(ids(&data), ["BTCUSDT", "SOLUSDT"]);
    assert_eq!(sse.block(), None, "max_events=2: the server ends the stream");
}

#[test]
fn stream_reports_errors_and_ends_on_disconnect_and_shutdown() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let mut live = start(&ex);
    // Let the start-up fetches end first, so the one scripted failure hits the
    // stream's fetch (of tickers; exchangeInfo is cached).
    live.wait_startup_fetches();
    ex.rest_fail_next(1, 500, r#"{"code":-1000,"msg":"boom"}"#);
    let mut failing = Sse::open(&live, "interval_s=0.2&max_events=1");
    let (id, event, data) = failing.event(5 * SEC).expect("error event");
    assert_eq!((id, event.as_str()), (1, "error"));
    assert!(data["detail"].as_str().unwrap().starts_with("upstream_unavailable"), "{data}");
    assert_eq!(failing.block(), None);

    // A client that hangs up is dropped: only the metrics request is open.
    let gone = Sse::open(&live, "interval_s=0.2");
    drop(gone);
    std::thread::sleep(Duration::from_millis(600));
    let (_, metrics) = live.get("/metrics");
    assert!(metrics.lines().any(|l| l == "klinegate_connections_open 1"), "{}",
        metrics.lines().filter(|l| l.contains("connections_open")).collect::<Vec<_>>().join("\n"));

    // The failure pauses fetching for 5 s; then the stream recovers by itself.
    let mut open = Sse::open(&live, "interval_s=0.2");
    let (_, mut event, _) = open.event(5 * SEC).expect("first event");
    if event == "error" {
        event = open.event(8 * SEC).expect("recovery event").1;
    }
    assert_eq!(event, "top_markets");
    assert_eq!(live.terminate(10 * SEC), Some(0));
    // The process has exited: the stream must reach its end (EOF), with only
    // pings before it. The deadline only keeps a broken build from hanging.
    let end = Instant::now() + 5 * SEC;
    let mut ended = false;
    while !ended && Instant::now() < end {
        match open.block() {
            None => ended = true,
            Some(b) => assert_eq!(b, [": ping"]),
        }
    }
    assert!(ended, "the stream ended with the shutdown");
}

// Regression: a request pipelined behind a top_markets request that waits for
// the exchange was answered first, so the client read each answer as the
// other's; answers now go out in request order.
#[test]
fn a_request_pipelined_behind_a_waiting_one_is_answered_after_it() {
    let ex = FakeExchange::start(FakeOptions::spot());
    ex.set_markets("spot", spot_symbols("9000000"));
    let live = start(&ex);
    let mut s = TcpStream::connect_timeout(&live.addr, 5 * SEC).expect("connect");
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    let pipelined = format!(
        "GET {TOP}?market=spot&limit=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let first = text.find("\"items\"").expect("the top_markets answer");
    let second = text.find("\"status\"").expect("the health answer");
    assert!(first < second, "answers in request order: {text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
}
