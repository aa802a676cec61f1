//! Tests of the route table, CORS, auth, reply shapes and the upgrade decision.
use super::*;
use crate::cli::settings::Settings;
use crate::model::Candle;
use crate::store::MemoryStore;
use crate::time::Timestamp;
use serde_json::{json, Value};

const S: &str = "binance:futures:BTC/USDT:1m";
const ORIGIN: &str = "http://localhost:5173";

/// An engine and the store that answers its effects at once.
type Fx = crate::replay::hosted::Hosted<MemoryStore>;

fn engine() -> Fx {
    let cfg = Settings { pins: vec![], ..Default::default() }.to_engine_config().unwrap();
    Fx::new(Engine::new(cfg, Timestamp::from_secs(1000)), MemoryStore::new())
}

fn candle(t: i64) -> Candle {
    Candle { candle_time: t, open: 1.0, high: 2.0, low: 0.5, close: 1.5, volume: 10.0 }
}

fn seeded(times: &[i64]) -> Fx {
    let mut e = engine();
    let candles = times.iter().map(|t| candle(*t)).collect();
    let input = Input::IngestClosed { request: 1, series_id: S.into(), candles };
    e.handle(input, Timestamp::from_secs(1000)).unwrap();
    e
}

fn req(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    match crate::wire::http::parse_request(raw.as_bytes(), &Default::default()) {
        crate::wire::http::Parse::Complete { request, .. } => request,
        other => panic!("test request did not parse: {other:?}"),
    }
}

fn get(target: &str) -> Request {
    req("GET", target, &[], "")
}

fn reply_of(routed: Routed) -> Response {
    match routed {
        Routed::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn run(r: &Request, e: &Fx, cfg: &HttpConfig) -> Response {
    reply_of(route(r, &e.engine, &e.store, &ShellStats::default(), cfg))
}

fn body_json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

#[test]
fn candles_tail_with_limit_matches_reference_example() {
    let e = seeded(&[100, 160, 220]);
    let r = run(&get(&format!("/api/market/candles?series_id={}&limit=2", enc(S))), &e, &HttpConfig::default());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let want = json!({"series_id": S, "server_head_time": 220, "candles": [
        {"candle_time":160,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10.0},
        {"candle_time":220,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10.0}]});
    assert_eq!(body_json(&r), want);
    // Key order as the reference emits it.
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.starts_with(r#"{"series_id":"binance:futures:BTC/USDT:1m","server_head_time":220,"candles":[{"candle_time":160,"open":1.0"#), "{text}");
}

#[test]
fn candles_since_is_exclusive() {
    let e = seeded(&[100, 160, 220]);
    let r = run(&get(&format!("/api/market/candles?series_id={S}&since=160")), &e, &HttpConfig::default());
    let v = body_json(&r);
    let times: Vec<i64> = v["candles"].as_array().unwrap().iter().map(|c| c["candle_time"].as_i64().unwrap()).collect();
    assert_eq!((times, v["server_head_time"].clone()), (vec![220], json!(220)));
}

#[test]
fn candles_of_an_unknown_series_are_empty_with_null_head() {
    let r = run(&get("/api/market/candles?series_id=binance:spot:ETH/USDT:1m"), &engine(), &HttpConfig::default());
    assert_eq!(body_json(&r), json!({"series_id":"binance:spot:ETH/USDT:1m","server_head_time":null,"candles":[]}));
}

#[test]
fn candles_validation_errors_are_400_with_detail() {
    let e = engine();
    let cfg = HttpConfig::default();
    for target in [
        "/api/market/candles".to_string(),
        "/api/market/candles?series_id=".to_string(),
        format!("/api/market/candles?series_id={S}&limit=0"),
        format!("/api/market/candles?series_id={S}&limit=5001"),
        format!("/api/market/candles?series_id={S}&limit=abc"),
        format!("/api/market/candles?series_id={S}&since=-1"),
        format!("/api/market/candles?series_id={S}&since=1.5"),
        "/api/market/candles?series_id=binance:spot:BTC/USDT:7q".to_string(),
        "/api/market/candles?series_id=nonsense".to_string(),
    ] {
        let r = run(&get(&target), &e, &cfg);
        assert_eq!(r.status, 400, "{target}");
        assert!(body_json(&r)["detail"].as_str().is_some_and(|d| !d.is_empty()), "{target}");
    }
    let ok = run(&get(&format!("/api/market/candles?series_id={S}&limit=5000")), &e, &cfg);
    assert_eq!(ok.status, 200);
}

#[test]
fn whitelist_lists_pins() {
    let cfg = Settings { pins: vec!["binance:spot:BTC/USDT:1m".into()], ..Default::default() }
        .to_engine_config()
        .unwrap();
    let e = Fx::new(Engine::new(cfg, Timestamp::from_secs(1000)), MemoryStore::new());
    let r = run(&get("/api/market/whitelist"), &e, &HttpConfig::default());
    assert_eq!(body_json(&r), json!({"series_ids":["binance:spot:BTC/USDT:1m"]}));
}

#[test]
fn debug_and_dev_routes_are_404_unless_enabled() {
    let e = engine();
    let off = HttpConfig::default();
    let on = HttpConfig { enable_debug_api: true, enable_dev_api: true, ..HttpConfig::default() };
    let state = get("/api/market/debug/ingest_state");
    let r = run(&state, &e, &off);
    assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
    let r = run(&state, &e, &on);
    assert_eq!(r.status, 200);
    assert!(body_json(&r)["jobs"].is_array());
    let body = json!({"series_id": S, "candle": candle(60)}).to_string();
    let forming = req("POST", "/api/market/ingest/candle_forming", &[], &body);
    assert_eq!(run(&forming, &e, &off).status, 404);
    assert!(matches!(route(&forming, &e.engine, &e.store, &ShellStats::default(), &on), Routed::Apply { .. }));
    let batch = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &json!({"series_id":S,"candles":[candle(60)]}).to_string());
    assert_eq!(run(&batch, &e, &off).status, 404);
    assert!(matches!(route(&batch, &e.engine, &e.store, &ShellStats::default(), &on), Routed::Apply { .. }));
}

#[test]
fn candle_closed_round_trip_through_the_engine() {
    let mut e = engine();
    let cfg = HttpConfig::default();
    let body = json!({"series_id": S, "candle": candle(1_700_000_040)}).to_string();
    let r = req("POST", "/api/market/ingest/candle_closed", &[("Content-Type", "application/json")], &body);
    let now = ShellStats { now_unix_s: 1_700_000_200.0, ..ShellStats::default() };
    let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &now, &cfg) else { panic!("not an apply") };
    assert_eq!(input, Input::IngestClosed { request: 0, series_id: S.into(), candles: vec![candle(1_700_000_040)] });
    let result = e.handle(input, Timestamp::from_secs(1_700_000_200));
    let resp = apply_reply(reply, result.err(), &r, &cfg);
    assert_eq!(resp.status, 200);
    assert_eq!(String::from_utf8(resp.body).unwrap(), format!(r#"{{"ok":true,"series_id":"{S}","candle_time":1700000040}}"#));
    assert_eq!(e.store.head_time(S).unwrap(), Some(1_700_000_040));
}

#[test]
fn forming_reply_and_batch_reply_shapes() {
    let cfg = HttpConfig { enable_debug_api: true, enable_dev_api: true, ..HttpConfig::default() };
    let mut e = engine();
    let r = req("POST", "/api/market/ingest/candle_forming", &[], &json!({"series_id": S, "candle": candle(60)}).to_string());
    let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
    assert!(matches!(input, Input::IngestForming { .. }));
    let result = e.handle(input, Timestamp::from_secs(1000));
    assert_eq!(body_json(&apply_reply(reply, result.err(), &r, &cfg)), json!({"ok":true,"series_id":S,"candle_time":60}));

    let batch = json!({"series_id": S, "candles": [candle(60), candle(120), candle(180)], "publish_ws": true});
    let r = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &batch.to_string());
    let Routed::Apply { input, reply } = route(&r, &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
    let result = e.handle(input, Timestamp::from_secs(1000));
    let text = String::from_utf8(apply_reply(reply, result.err(), &r, &cfg).body).unwrap();
    assert_eq!(text, format!(r#"{{"ok":true,"series_id":"{S}","count":3,"first_candle_time":60,"last_candle_time":180}}"#));

    let empty = req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &json!({"series_id": S, "candles": []}).to_string());
    assert_eq!(run(&empty, &e, &cfg).status, 400);
}

#[test]
fn ingest_errors_map_to_400_or_500() {
    let cfg = HttpConfig::default();
    let r = get("/");
    let reply = || ApplyReply::Candle { series_id: S.into(), candle_time: 1 };
    let bad = apply_reply(reply(), Some("invalid candle at 1: negative value".into()), &r, &cfg);
    assert_eq!((bad.status, body_json(&bad)), (400, json!({"detail":"invalid candle at 1: negative value"})));
    let failed = apply_reply(reply(), Some(format!("ingest_pipeline_failed:store.upsert_many_closed:{S}: disk")), &r, &cfg);
    assert_eq!(failed.status, 500);
    assert!(body_json(&failed)["detail"].as_str().unwrap().starts_with("ingest_pipeline_failed:"));
    // And the engine really produces the 500 prefix when the store fails.
    let mut e = engine();
    e.store.fail_writes(true);
    let input = Input::IngestClosed { request: 1, series_id: S.into(), candles: vec![candle(60)] };
    let result = e.handle(input, Timestamp::from_secs(1000));
    assert_eq!(apply_reply(reply(), result.err(), &r, &cfg).status, 500);
}

#[test]
fn ingest_body_problems_are_refused_before_the_engine() {
    let e = engine();
    let cfg = HttpConfig::default();
    let path = "/api/market/ingest/candle_closed";
    type Case<'a> = (&'a [(&'a str, &'a str)], String, u16);
    let cases: [Case; 4] = [
        (&[], "not json".into(), 400),
        (&[], json!({"series_id": S}).to_string(), 400),
        (&[], json!({"series_id": "bad", "candle": candle(1)}).to_string(), 400),
        (&[("Content-Type", "text/plain")], json!({"series_id": S, "candle": candle(1)}).to_string(), 415),
    ];
    for (headers, body, status) in cases {
        let r = run(&req("POST", path, headers, &body), &e, &cfg);
        assert_eq!(r.status, status, "{body}");
        assert!(body_json(&r)["detail"].is_string());
    }
}

#[test]
fn candle_closed_is_404_when_the_ingest_api_is_off() {
    let e = engine();
    let off = HttpConfig { enable_ingest_api: false, ..HttpConfig::default() };
    let body = json!({"series_id": S, "candle": candle(60)}).to_string();
    let r = run(&req("POST", "/api/market/ingest/candle_closed", &[], &body), &e, &off);
    assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
    let on = route(&req("POST", "/api/market/ingest/candle_closed", &[], &body), &e.engine, &e.store, &ShellStats::default(), &HttpConfig::default());
    assert!(matches!(on, Routed::Apply { .. }));
}

#[test]
fn ingest_refuses_off_grid_and_future_candles_and_accepts_unbounded_high_low() {
    let mut e = engine(); // now = 1000 s: the 1m candle open now is 960
    let cfg = HttpConfig::default();
    let post = |c: Candle| req("POST", "/api/market/ingest/candle_closed", &[], &json!({"series_id": S, "candle": c}).to_string());
    for (t, want) in [(940, "candle_time_misaligned"), (1020, "candle_time_in_future"), (99_999_999_960, "candle_time_in_future")] {
        let r = run(&post(candle(t)), &e, &cfg);
        assert_eq!(r.status, 400, "{t}");
        assert!(body_json(&r)["detail"].as_str().unwrap().starts_with(want), "{t}: {:?}", body_json(&r));
    }
    let batch = json!({"series_id": S, "candles": [candle(60), candle(90)]}).to_string();
    let dev = HttpConfig { enable_dev_api: true, ..HttpConfig::default() };
    let r = run(&req("POST", "/api/dev/market/ingest/candles_closed_batch", &[], &batch), &e, &dev);
    assert!(body_json(&r)["detail"].as_str().unwrap().starts_with("candle_time_misaligned"));
    // The shell's clock counts when it is ahead of the engine's.
    let later = ShellStats { now_unix_s: 1100.5, ..ShellStats::default() };
    assert!(matches!(route(&post(candle(1080)), &e.engine, &e.store, &later, &cfg), Routed::Apply { .. }));
    // High below open is stored (the reference accepts it), the open candle too.
    let odd = Candle { candle_time: 960, open: 5.0, high: 1.0, low: 0.5, close: 1.5, volume: 1.0 };
    let Routed::Apply { input, reply } = route(&post(odd), &e.engine, &e.store, &ShellStats::default(), &cfg) else { panic!() };
    let result = e.handle(input, Timestamp::from_secs(1000));
    assert_eq!(apply_reply(reply, result.err(), &post(odd), &cfg).status, 200);
    assert_eq!(e.store.head_time(S).unwrap(), Some(960));
}

#[test]
fn preflight_on_any_path_is_204_with_cors() {
    let e = engine();
    let cfg = HttpConfig::default();
    let pre = req("OPTIONS", "/api/not/served", &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")], "");
    let r = run(&pre, &e, &cfg);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    let gated = req("OPTIONS", "/api/market/debug/ingest_state", &[("Origin", ORIGIN)], "");
    assert_eq!(run(&gated, &e, &cfg).status, 204);
    // Without an Origin it is no preflight: an unknown path stays 404.
    assert_eq!(run(&req("OPTIONS", "/api/not/served", &[], ""), &e, &cfg).status, 404);
    let evil = req("OPTIONS", "/api/not/served", &[("Origin", "https://evil.example")], "");
    assert_eq!(run(&evil, &e, &cfg).status, 403);
}

#[test]
fn unknown_path_404_wrong_method_405() {
    let e = engine();
    let cfg = HttpConfig::default();
    let r = run(&get("/nope"), &e, &cfg);
    assert_eq!((r.status, body_json(&r)), (404, json!({"detail":"not_found"})));
    let r = run(&req("POST", "/api/market/candles", &[], ""), &e, &cfg);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert_eq!(run(&get("/api/market/ingest/candle_closed"), &e, &cfg).status, 405);
}

#[test]
fn cors_preflight_and_allowed_origin_echo() {
    let e = engine();
    let cfg = HttpConfig::default();
    let pre = req("OPTIONS", "/api/market/candles", &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")], "");
    let r = run(&pre, &e, &cfg);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type, Authorization"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let mut out = Vec::new();
    r.write_to(&mut out, true);
    assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));

    let plain = run(&req("GET", "/health", &[("Origin", "http://127.0.0.1:5173")], ""), &e, &cfg);
    assert_eq!(plain.header("access-control-allow-origin"), Some("http://127.0.0.1:5173"));
    let no_origin = run(&get("/health"), &e, &cfg);
    assert_eq!((no_origin.header("access-control-allow-origin"), no_origin.header("vary")), (None, Some("Origin")));
    let errors_too = run(&req("GET", "/nope", &[("Origin", ORIGIN)], ""), &e, &cfg);
    assert_eq!(errors_too.header("access-control-allow-origin"), Some(ORIGIN));
}

#[test]
fn foreign_origin_is_403_unless_the_list_is_empty_or_wildcard() {
    let e = engine();
    let evil = req("GET", "/api/market/whitelist", &[("Origin", "https://evil.example")], "");
    let r = run(&evil, &e, &HttpConfig::default());
    assert_eq!((r.status, body_json(&r)), (403, json!({"detail":"origin_not_allowed"})));
    assert_eq!(r.header("access-control-allow-origin"), None);
    let open = HttpConfig { cors_origins: vec![], ..HttpConfig::default() };
    let r = run(&evil, &e, &open);
    assert_eq!((r.status, r.header("access-control-allow-origin"), r.header("vary")), (200, None, None));
    let any = HttpConfig { cors_origins: vec!["*".into()], ..HttpConfig::default() };
    assert_eq!(run(&evil, &e, &any).header("access-control-allow-origin"), Some("https://evil.example"));
}

fn ws_headers(key: &str) -> Vec<(&str, &str)> {
    vec![
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
    ]
}

#[test]
fn websocket_upgrade_uses_the_rfc_accept_key() {
    let r = req("GET", "/ws/market", &ws_headers("dGhlIHNhbXBsZSBub25jZQ=="), "");
    let Routed::Upgrade { response, .. } = route(&r, &engine().engine, &MemoryStore::new(), &ShellStats::default(), &HttpConfig::default()) else {
        panic!("not an upgrade")
    };
    assert_eq!(
        String::from_utf8(response).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn websocket_upgrade_refusals() {
    let e = engine();
    let cfg = HttpConfig::default();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let plain = run(&get("/ws/market"), &e, &cfg);
    assert_eq!((plain.status, plain.header("upgrade")), (426, Some("websocket")));
    let mut h = ws_headers(key);
    h[3].1 = "8";
    assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 426);
    let mut h = ws_headers("short==");
    assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 400);
    h = ws_headers(key);
    h[2].1 = "keep-alive";
    assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 400);
    let mut h = ws_headers(key);
    h.push(("Origin", "https://evil.example"));
    assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 403);
    let mut h = ws_headers(key);
    h.push(("Origin", ORIGIN));
    assert!(matches!(route(&req("GET", "/ws/market", &h, ""), &e.engine, &e.store, &ShellStats::default(), &cfg), Routed::Upgrade { .. }));
}

#[test]
fn shared_secret_guards_everything_but_health_and_preflight() {
    let e = engine();
    let cfg = HttpConfig { auth_token: Some("s3cret".into()), ..HttpConfig::default() };
    let denied = run(&get("/api/market/whitelist"), &e, &cfg);
    assert_eq!((denied.status, body_json(&denied)), (401, json!({"detail":"unauthorized"})));
    assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "Bearer wrong")], ""), &e, &cfg).status, 401);
    assert_eq!(run(&get("/api/market/whitelist?token=s3cre"), &e, &cfg).status, 401);
    assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "Bearer s3cret")], ""), &e, &cfg).status, 200);
    assert_eq!(run(&req("GET", "/api/market/whitelist", &[("Authorization", "bearer s3cret")], ""), &e, &cfg).status, 200);
    assert_eq!(run(&get("/api/market/whitelist?token=s3cret"), &e, &cfg).status, 200);
    assert_eq!(run(&get("/metrics"), &e, &cfg).status, 401);
    assert_eq!(run(&get("/health"), &e, &cfg).status, 200);
    assert_eq!(run(&req("OPTIONS", "/metrics", &[("Origin", ORIGIN)], ""), &e, &cfg).status, 204);
    let mut h = ws_headers("dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(run(&req("GET", "/ws/market", &h, ""), &e, &cfg).status, 401);
    h.push(("Authorization", "Bearer s3cret"));
    assert!(matches!(route(&req("GET", "/ws/market", &h, ""), &e.engine, &e.store, &ShellStats::default(), &cfg), Routed::Upgrade { .. }));
    assert!(matches!(
        route(&req("GET", "/ws/market?token=s3cret", &ws_headers("dGhlIHNhbXBsZSBub25jZQ=="), ""), &e.engine, &e.store, &ShellStats::default(), &cfg),
        Routed::Upgrade { .. }
    ));
}

#[test]
fn constant_time_eq_is_equality() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn health_reports_status_and_reasons() {
    let e = seeded(&[60]);
    let stats = ShellStats { store_ok: true, store_path: "m.db".into(), started_unix_s: 1000.0, now_unix_s: 1012.5, ..Default::default() };
    let r = reply_of(route(&get("/health"), &e.engine, &e.store, &stats, &HttpConfig::default()));
    let v = body_json(&r);
    assert_eq!((r.status, v["status"].clone(), v["uptime_s"].clone()), (200, json!("ok"), json!(12.5)));
    for key in ["store", "upstream", "clients", "jobs", "subscriptions", "reasons"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["jobs"], json!({"starting":0,"running":0,"dead":0}));
    assert_eq!(v["store"]["last_error"], json!(null));
    let down = ShellStats { store_ok: false, store_last_error: Some("store write_batches failed: full".into()), ..stats };
    let v = body_json(&reply_of(route(&get("/health"), &e.engine, &e.store, &down, &HttpConfig::default())));
    assert_eq!((v["status"].clone(), v["reasons"].clone()), (json!("degraded"), json!(["store_unavailable"])));
    assert_eq!(v["store"]["last_error"], json!("store write_batches failed: full"));
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let e = seeded(&[60, 120]);
    let stats = ShellStats { store_ok: true, store_write_count: 3, store_write_seconds_sum: 0.0125, http_requests: 7, ..Default::default() };
    let r = reply_of(route(&get("/metrics"), &e.engine, &e.store, &stats, &HttpConfig::default()));
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/plain; version=0.0.4; charset=utf-8")));
    let text = String::from_utf8(r.body).unwrap();
    let mut typed = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "summary", "histogram"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "duplicate TYPE {name}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("klinegate_"), "{line}");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "summary" || k == "histogram")));
        let family = family.unwrap_or(name);
        assert!(typed.contains_key(family), "sample before its TYPE: {line}");
        if typed[family] == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
    }
    assert!(text.contains("klinegate_jobs{state=\"running\"} 0\n"));
    assert!(text.contains("klinegate_http_requests_total 7\n"));
    assert!(text.contains("klinegate_store_write_seconds_sum 0.0125\n"));
    assert!(text.contains("klinegate_store_write_seconds_count 3\n"));
    assert!(text.contains("klinegate_candles_persisted_total 2\n"));
    assert!(text.contains("# TYPE klinegate_exchange_to_queue_seconds histogram\n"));
    assert!(text.contains("klinegate_exchange_to_queue_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert!(text.contains("klinegate_exchange_to_queue_seconds_count 0\n"));
    for name in ["rest_requests_total", "rest_failures_total", "rest_weight_total", "heals_started_total", "heals_done_total", "heals_failed_total", "late_close_fetches_total"] {
        assert!(text.contains(&format!("# TYPE klinegate_{name} counter\n")), "{name}");
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn label_values_are_escaped() {
    use crate::shell::api::exposition::{escape_label, prom_float};
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    assert_eq!(prom_float(f64::INFINITY), "+Inf");
    assert_eq!(prom_float(3.0), "3");
}
