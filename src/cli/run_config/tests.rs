//! Tests of `klinegate run` configuration: precedence per setting, every parser's
//! errors naming the flag and the origin, the config file and the whitelist.

use super::*;
use clap::Parser;
use std::io::Write;

const PROG: &str = "klinegate run";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(args: &[&str]) -> Result<RunConfig, RunConfigError> {
    parse_with(args, &[])
}

fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<RunConfig, RunConfigError> {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = move |k: &str| env.get(k).cloned();
    parse_run_config(std::iter::once(PROG).chain(args.iter().copied()), &lookup)
}

fn error(args: &[&str], env: &[(&str, &str)]) -> String {
    let err = parse_with(args, env).expect_err("expected an error");
    assert_eq!(err.exit_code(), 2);
    let line = err.to_string();
    assert!(!line.contains('\n'), "not one line: {line}");
    line
}

fn write_file(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn defaults() {
    let c = parse(&[]).unwrap();
    // `--full-klines` defaults to on for `klinegate run`; `Settings::default()` keeps it off,
    // as every journal recorded before it existed replays.
    let expected = Settings { full_klines: true, ..Settings::default() };
    assert_eq!(c.settings, expected, "clap defaults drifted from Settings::default()");
    assert_eq!(c.listen, "127.0.0.1:8000".parse::<SocketAddr>().unwrap());
    assert_eq!(c.db, PathBuf::from("./klinegate.db"));
    assert_eq!(c.store_max_bytes, None);
    assert_eq!(c.config_file, None);
    assert_eq!(c.whitelist_file, None);
    assert_eq!(c.record, None);
    assert_eq!(c.extra_ca, None);
    assert_eq!((c.tls_cert, c.tls_key), (None, None));
    assert_eq!(c.resolv_conf, PathBuf::from("/etc/resolv.conf"));
    assert_eq!(c.log_level, LogLevelSetting::Info);
    assert_eq!(c.log_format, LogFormat::Kv);
    assert_eq!(c.spot_rest_url, "https://api.binance.com");
    assert_eq!(c.futures_rest_url, "https://fapi.binance.com");
    assert_eq!(c.cors_origins, vec!["http://localhost:5173", "http://127.0.0.1:5173"]);
    assert_eq!((c.max_connections, c.max_connections_per_ip), (10_000, 10_000));
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(c.client_idle_timeout_s, 120);
    assert_eq!(c.max_frame_bytes, 65_536);
    assert_eq!(c.settings.max_client_messages_per_s, 50);
    assert!(c.enable_debug_api, "debug API defaults on for a loopback listen address");
    assert!(!c.enable_dev_api);
    assert_eq!(c.auth_token, None);
    assert_eq!(c.shutdown_grace_s, 5);
    assert_eq!(c.settings.pins, vec!["binance:spot:BTC/USDT:1m"]);
    assert_eq!(c.engine.batch_max, 200);
    assert_eq!(c.engine.rng_seed, 1);
}

#[test]
fn scalar_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "batch_max = 7\n");
    let env = [("KLINEGATE_BATCH_MAX", "8")];
    assert_eq!(parse(&[]).unwrap().settings.batch_max, 200);
    assert_eq!(parse(&["--config", &file]).unwrap().settings.batch_max, 7);
    assert_eq!(parse_with(&["--config", &file], &env).unwrap().settings.batch_max, 8);
    assert_eq!(parse_with(&["--config", &file, "--batch-max", "9"], &env).unwrap().settings.batch_max, 9);
    // A flag equal to the default still wins: the source decides, not the value.
    assert_eq!(parse_with(&["--config", &file, "--batch-max", "200"], &env).unwrap().settings.batch_max, 200);
    assert_eq!(parse(&["--config", &file, "--batch-max=200"]).unwrap().settings.batch_max, 200);
    // Env beats the default without a file.
    assert_eq!(parse_with(&[], &env).unwrap().settings.batch_max, 8);
}

#[test]
fn stream_stall_s_is_layered_and_reaches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "stream_stall_s = 30\n");
    let env = [("KLINEGATE_STREAM_STALL_S", "20")];
    let stall = |args: &[&str], env: &[(&str, &str)]| parse_with(args, env).unwrap().settings.stream_stall_s;
    assert_eq!(stall(&[], &[]), 10);
    assert_eq!(stall(&["--config", &file], &[]), 30);
    assert_eq!(stall(&["--config", &file], &env), 20);
    assert_eq!(stall(&["--config", &file, "--stream-stall-s", "5"], &env), 5);
    let c = parse(&["--stream-stall-s", "0"]).unwrap();
    assert_eq!(c.engine.stream_stall, crate::time::Duration::ZERO, "0 turns it off");
    assert!(parse(&["--stream-stall-s", "soon"]).is_err());
    // A journal header without the key (recorded before) replays with it off.
    let old: Settings = serde_json::from_str(r#"{"pins":[]}"#).unwrap();
    assert_eq!(old.stream_stall_s, 0);
}

#[test]
fn pin_precedence_and_list_forms() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "pin = [\"binance:spot:ETH/USDT:1m\"]\n");
    let env = [("KLINEGATE_PIN", "binance:spot:SOL/USDT:1m, binance:spot:XRP/USDT:1h")];
    let pins = |args: &[&str], env: &[(&str, &str)]| parse_with(args, env).unwrap().settings.pins;
    assert_eq!(pins(&["--config", &file], &[]), vec!["binance:spot:ETH/USDT:1m"]);
    assert_eq!(pins(&["--config", &file], &env), vec!["binance:spot:SOL/USDT:1m", "binance:spot:XRP/USDT:1h"]);
    assert_eq!(
        pins(&["--config", &file, "--pin", "binance:futures:BTC/USDT:1m", "--pin", "a:b:C/D:1m,a:b:C/D:5m"], &env),
        vec!["binance:futures:BTC/USDT:1m", "a:b:C/D:1m", "a:b:C/D:5m"]
    );
    // Explicitly empty: no pins at all, and no default pin.
    assert!(pins(&[], &[("KLINEGATE_PIN", "")]).is_empty());
    // A string in the file is comma-split like the environment.
    let file2 = write_file(&dir, "k2.toml", "pin = \"x:y:A/B:1m,x:y:A/B:1h\"\n");
    assert_eq!(pins(&["--config", &file2], &[]), vec!["x:y:A/B:1m", "x:y:A/B:1h"]);
}

#[test]
fn toml_keys_accept_dashes_and_underscores() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "k.toml",
        "max_ondemand_jobs = 8\nidle-ttl = 90\nondemand = false\nderived = [\"5m\", \"1h\"]\n\
         cors-origins = []\nlisten = \"0.0.0.0:9000\"\nlog_format = \"json\"\nlog-level = \"warn\"\n",
    );
    let c = parse(&["--config", &file]).unwrap();
    assert_eq!(c.settings.max_ondemand_jobs, 8);
    assert_eq!(c.settings.idle_ttl_s, 90);
    assert!(!c.settings.ondemand);
    assert_eq!(c.settings.derived, "5m,1h");
    assert!(c.cors_origins.is_empty());
    assert_eq!(c.listen.port(), 9000);
    assert!(!c.enable_debug_api, "auto is off when listening beyond loopback");
    assert_eq!((c.log_format, c.log_level), (LogFormat::Json, LogLevelSetting::Warn));
    assert_eq!(c.config_file, Some(PathBuf::from(&file)));

    let both = write_file(&dir, "both.toml", "batch-max = 1\nbatch_max = 2\n");
    let line = error(&["--config", &both], &[]);
    assert!(line.starts_with("invalid setting --config:") && line.contains("same setting"), "{line}");
}

#[test]
fn unknown_toml_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "batch_max = 3\nmax_jobz = 4\n");
    let line = error(&["--config", &file], &[]);
    assert!(line.starts_with("invalid setting --config: unknown key 'max_jobz'"), "{line}");
    let nested = write_file(&dir, "n.toml", "config = \"other.toml\"\n");
    assert!(error(&["--config", &nested], &[]).contains("key 'config'"));
    let table = write_file(&dir, "t.toml", "[server]\nlisten = \"x\"\n");
    assert!(error(&["--config", &table], &[]).contains("unknown key 'server'"));
}

#[test]
fn toml_value_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let as_string = write_file(&dir, "s.toml", "batch_max = \"12\"\nenable_dev_api = \"yes\"\n");
    let c = parse(&["--config", &as_string]).unwrap();
    assert_eq!(c.settings.batch_max, 12);
    assert!(c.enable_dev_api);
    let array_for_scalar = write_file(&dir, "a.toml", "batch_max = [1, 2]\n");
    assert_eq!(
        error(&["--config", &array_for_scalar], &[]),
        format!("invalid setting --batch-max: expected a single value, not an array (from {array_for_scalar} key 'batch_max')")
    );
    let negative = write_file(&dir, "neg.toml", "flush-ms = -5\n");
    let line = error(&["--config", &negative], &[]);
    assert!(line.starts_with("invalid setting --flush-ms: '-5' is not a whole number"), "{line}");
    assert!(line.ends_with("key 'flush-ms')"), "{line}");
    let broken = write_file(&dir, "b.toml", "batch_max = 1\nlisten = \n");
    let line = error(&["--config", &broken], &[]);
    assert!(line.starts_with("invalid setting --config:") && line.contains("line 2"), "{line}");
}

#[test]
fn bad_values_give_one_line_naming_the_flag() {
    assert_eq!(
        error(&["--listen", "127.0.0.1:99999"], &[]),
        "invalid setting --listen: '127.0.0.1:99999' is not an address (expected HOST:PORT)"
    );
    assert_eq!(
        error(&[], &[("KLINEGATE_BATCH_MAX", "lots")]),
        "invalid setting --batch-max: 'lots' is not a whole number >= 0 (from KLINEGATE_BATCH_MAX)"
    );
    assert!(error(&["--ondemand", "maybe"], &[]).starts_with("invalid setting --ondemand: 'maybe' is not a boolean"));
    assert!(error(&["--spot-ws-url", "https://x"], &[]).starts_with("invalid setting --spot-ws-url:"));
    assert!(error(&["--futures-ws-url", "wss://"], &[]).contains("has no valid host"));
    assert!(error(&["--spot-rest-url", "wss://api"], &[]).starts_with("invalid setting --spot-rest-url:"));
    assert!(error(&["--futures-rest-url", "ftp://x"], &[]).starts_with("invalid setting --futures-rest-url:"));
    assert!(error(&["--log-level", "loud"], &[]).starts_with("invalid setting --log-level: unknown log level"));
    assert!(error(&["--log-format", "xml"], &[]).starts_with("invalid setting --log-format:"));
    assert!(error(&["--role", "writer"], &[]).starts_with("invalid setting --role: unknown role 'writer'"));
    assert!(error(&["--derived", "5m,7x"], &[]).starts_with("invalid setting --derived:"));
    assert!(error(&["--pin", "nope"], &[]).starts_with("invalid setting --pin: 'nope'"));
    assert!(error(&["--cors-origins", "http://a/b"], &[]).starts_with("invalid setting --cors-origins:"));
    assert!(error(&["--max-connections", "0"], &[]).starts_with("invalid setting --max-connections:"));
    assert!(error(&["--enable-debug-api", "sometimes"], &[]).contains("or auto"));
    assert!(error(&["--extra-ca", "/nonexistent/ca.pem"], &[]).contains("does not exist"));
    assert!(error(&["--resolv-conf", "/nonexistent/resolv.conf"], &[]).contains("does not exist"));
    assert!(error(&["--config", "/nonexistent/k.toml"], &[]).starts_with("invalid setting --config:"));
    assert!(error(&["--db", "/nonexistent-dir/k.db"], &[]).starts_with("invalid setting --db: directory"));
    assert!(error(&["--breaker-crash-budget", "99999999999"], &[]).contains("too large"));
}

#[test]
fn store_url_from_flag_env_and_file_and_db_beside_it_is_refused() {
    use crate::cli::store_url::StoreBackend;
    let c = parse(&["--store-url", "postgres://kg@127.0.0.1:5432/test?schema=kg1"]).unwrap();
    let StoreBackend::Postgres(pg) = &c.store else { panic!("not postgres: {:?}", c.store) };
    assert_eq!(pg.schema, "kg1");
    let c = parse_with(&[], &[("KLINEGATE_STORE_URL", "sqlite:other.db")]).unwrap();
    assert_eq!((c.db.clone(), c.store), (PathBuf::from("other.db"), StoreBackend::Sqlite));
    assert_eq!(parse(&[]).unwrap().store, StoreBackend::Sqlite);
    let line = error(&["--db", "a.db", "--store-url", "sqlite:b.db"], &[]);
    assert!(line.starts_with("invalid setting --store-url") && line.contains("not both"), "{line}");
    let line = error(&["--store-url", "mysql://h/db"], &[]);
    assert!(line.contains("expected sqlite:PATH or postgres://"), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "store_url = \"sqlite:k.db\"\n");
    assert_eq!(parse(&["--config", &file]).unwrap().db, dir.path().join("k.db"));
}

#[test]
fn store_max_mb_from_every_source_and_zero_means_no_cap() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "store-max-mb = 64\n");
    let cap = |args: &[&str], env: &[(&str, &str)]| parse_with(args, env).unwrap().store_max_bytes;
    assert_eq!(cap(&["--store-max-mb", "2"], &[]), Some(2 << 20));
    assert_eq!(cap(&["--config", &file], &[]), Some(64 << 20));
    assert_eq!(cap(&["--config", &file], &[("KLINEGATE_STORE_MAX_MB", "3")]), Some(3 << 20));
    assert_eq!(cap(&["--config", &file, "--store-max-mb", "0"], &[("KLINEGATE_STORE_MAX_MB", "3")]), None);
    assert_eq!(
        error(&["--store-max-mb", "1.5"], &[]),
        "invalid setting --store-max-mb: '1.5' is not a whole number >= 0"
    );
    assert!(error(&[], &[("KLINEGATE_STORE_MAX_MB", "99999999999999999")]).contains("too large"));
}

#[test]
fn engine_errors_name_the_flag_and_source() {
    assert_eq!(error(&["--flush-ms", "0"], &[]), "invalid setting --flush-ms: must be greater than 0");
    assert_eq!(error(&["--max-frame-bytes", "0"], &[]), "invalid setting --max-frame-bytes: must be greater than 0");
    assert_eq!(
        error(&[], &[("KLINEGATE_IDLE_TTL", "0")]),
        "invalid setting --idle-ttl: must be greater than 0 (from KLINEGATE_IDLE_TTL)"
    );
    assert!(error(&["--upstream-rotate-s", "0"], &[]).starts_with("invalid setting --upstream-rotate-s:"));
}

#[test]
fn usage_errors_are_one_line() {
    let err = parse(&["--bogus"]).unwrap_err();
    assert!(matches!(err, RunConfigError::Usage(_)));
    let line = error(&["--bogus"], &[]);
    assert!(line.contains("'--bogus'") && line.contains("--help"), "{line}");
    assert!(error(&["--listen"], &[]).contains("--listen"));
}

#[test]
fn booleans_and_bare_switches() {
    for (text, want) in [("1", true), ("0", false), ("YES", true), ("no", false), ("On", true), ("off", false)] {
        assert_eq!(parse(&["--ondemand", text]).unwrap().settings.ondemand, want, "{text}");
    }
    assert!(parse(&["--enable-dev-api"]).unwrap().enable_dev_api);
    assert!(parse(&["--enable-dev-api", "--listen", "127.0.0.1:1"]).unwrap().enable_dev_api);
    let c = parse(&["--listen", "0.0.0.0:8000", "--enable-debug-api", "true"]).unwrap();
    assert!(c.enable_debug_api);
    assert!(!parse(&["--enable-debug-api=false"]).unwrap().enable_debug_api);
    assert!(!parse(&["--listen", "[::]:8000"]).unwrap().enable_debug_api);
    assert!(parse(&["--listen", "[::1]:8000"]).unwrap().enable_debug_api);
    assert!(parse(&[]).unwrap().ingest_api, "ingest API defaults on for a loopback listen address");
    assert!(!parse(&["--listen", "0.0.0.0:8000"]).unwrap().ingest_api, "auto is off beyond loopback");
    assert!(!parse(&["--ingest-api", "off"]).unwrap().ingest_api);
    assert!(parse(&["--listen", "0.0.0.0:8000", "--ingest-api", "on"]).unwrap().ingest_api);
    assert!(error(&["--ingest-api", "sometimes"], &[]).contains("or auto"));
    assert_eq!(parse(&["--listen", "localhost:9"]).unwrap().listen, "127.0.0.1:9".parse::<SocketAddr>().unwrap());
}

#[test]
fn optional_settings_treat_empty_as_unset() {
    let c = parse_with(&[], &[("KLINEGATE_AUTH_TOKEN", "s3cret")]).unwrap();
    assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "k.toml", "auth_token = \"from-file\"\nrecord = \"j.jsonl\"\n");
    let c = parse_with(&["--config", &file], &[("KLINEGATE_AUTH_TOKEN", ""), ("KLINEGATE_RECORD", " ")]).unwrap();
    assert_eq!(c.auth_token, None);
    assert_eq!(c.record, None);
}

#[test]
fn relative_paths_in_the_file_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "ca.pem", "-----BEGIN CERTIFICATE-----\n");
    write_file(&dir, "wl.json", r#"{"series_ids":["binance:spot:ETH/USDT:1m"]}"#);
    let file = write_file(
        &dir,
        "k.toml",
        "db = \"k.db\"\nrecord = \"j.jsonl\"\nextra_ca = \"ca.pem\"\nwhitelist = \"wl.json\"\n",
    );
    let via_env = parse_with(&[], &[("KLINEGATE_CONFIG", &file)]).unwrap();
    assert_eq!(via_env.db, dir.path().join("k.db"));
    assert_eq!(via_env.record, Some(dir.path().join("j.jsonl")));
    assert_eq!(via_env.extra_ca, Some(dir.path().join("ca.pem")));
    assert_eq!(via_env.whitelist_file, Some(dir.path().join("wl.json")));
    assert_eq!(via_env.settings.pins, vec!["binance:spot:ETH/USDT:1m"]);
    // Paths from flags stay as given.
    assert_eq!(parse(&["--config", &file, "--db", "x.db"]).unwrap().db, PathBuf::from("x.db"));
}

#[test]
fn tls_files_follow_the_precedence_and_come_in_pairs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["file.crt", "file.key", "env.crt", "env.key", "flag.crt", "flag.key"] {
        write_file(&dir, name, "-----BEGIN CERTIFICATE-----\n");
    }
    let at = |name: &str| dir.path().join(name);
    let file = write_file(&dir, "k.toml", "tls-cert = \"file.crt\"\ntls_key = \"file.key\"\n");
    let env = [
        ("KLINEGATE_TLS_CERT", at("env.crt").to_str().unwrap().to_string()),
        ("KLINEGATE_TLS_KEY", at("env.key").to_str().unwrap().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let pair = |c: RunConfig| (c.tls_cert.unwrap(), c.tls_key.unwrap());
    // File (relative to the file), then environment, then flag.
    assert_eq!(pair(parse(&["--config", &file]).unwrap()), (at("file.crt"), at("file.key")));
    assert_eq!(pair(parse_with(&["--config", &file], &env).unwrap()), (at("env.crt"), at("env.key")));
    let flag_cert = at("flag.crt");
    let flag_key = at("flag.key");
    let flags = ["--config", &file, "--tls-cert", flag_cert.to_str().unwrap(), "--tls-key", flag_key.to_str().unwrap()];
    assert_eq!(pair(parse_with(&flags, &env).unwrap()), (flag_cert.clone(), flag_key.clone()));
    // Each setting wins on its own: the flag's cert with the environment's key.
    let mixed = parse_with(&["--tls-cert", flag_cert.to_str().unwrap()], &env).unwrap();
    assert_eq!(pair(mixed), (flag_cert.clone(), at("env.key")));
    // Empty means unset.
    let c = parse_with(&[], &[("KLINEGATE_TLS_CERT", ""), ("KLINEGATE_TLS_KEY", " ")]).unwrap();
    assert_eq!((c.tls_cert, c.tls_key), (None, None));
}

#[test]
fn tls_file_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_file(&dir, "c.pem", "x");
    let key = write_file(&dir, "k.pem", "x");
    assert_eq!(
        error(&["--tls-cert", &cert], &[]),
        "invalid setting --tls-cert: --tls-key must be given too (TLS needs the certificate and its key)"
    );
    assert_eq!(
        error(&[], &[("KLINEGATE_TLS_KEY", &key)]),
        "invalid setting --tls-key: --tls-cert must be given too (TLS needs the certificate and its key) (from KLINEGATE_TLS_KEY)"
    );
    let line = error(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", &key], &[]);
    assert!(line.starts_with("invalid setting --tls-cert:") && line.contains("does not exist"), "{line}");
    let line = error(&["--tls-cert", &cert, "--tls-key", dir.path().to_str().unwrap()], &[]);
    assert!(line.starts_with("invalid setting --tls-key:") && line.contains("is a directory"), "{line}");
}

#[test]
fn whitelist_file_merges_with_pins() {
    let dir = tempfile::tempdir().unwrap();
    let wl = write_file(
        &dir,
        "wl.json",
        r#"{"series_ids":[" binance:spot:ETH/USDT:1m ","binance:spot:SOL/USDT:1m","","binance:spot:ETH/USDT:1m"]}"#,
    );
    // Whitelist alone: its entries, in file order, stripped, deduped; no default pin.
    let c = parse(&["--whitelist", &wl]).unwrap();
    assert_eq!(c.settings.pins, vec!["binance:spot:ETH/USDT:1m", "binance:spot:SOL/USDT:1m"]);
    assert_eq!(c.whitelist_file, Some(PathBuf::from(&wl)));
    // Pins first, then whitelist entries, duplicates dropped.
    let c = parse_with(&["--whitelist", &wl], &[("KLINEGATE_PIN", "binance:spot:SOL/USDT:1m,binance:spot:BTC/USDT:1m")])
        .unwrap();
    assert_eq!(
        c.settings.pins,
        vec!["binance:spot:SOL/USDT:1m", "binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m"]
    );
    let empty = write_file(&dir, "empty.json", r#"{"series_ids":[]}"#);
    assert!(parse(&["--whitelist", &empty]).unwrap().settings.pins.is_empty());
}

#[test]
fn whitelist_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let line = error(&["--whitelist", missing.to_str().unwrap()], &[]);
    assert!(line.starts_with("invalid setting --whitelist:") && line.contains("does not exist"), "{line}");
    let not_list = write_file(&dir, "nl.json", r#"{"series_ids":"binance:spot:BTC/USDT:1m"}"#);
    assert!(error(&["--whitelist", &not_list], &[]).contains("whitelist series_ids must be a list"));
    let bad_entry = write_file(&dir, "be.json", r#"{"series_ids":["binance:spot:BTC/USDT:7x"]}"#);
    assert!(error(&["--whitelist", &bad_entry], &[]).contains("whitelist entry 'binance:spot:BTC/USDT:7x'"));
    let not_json = write_file(&dir, "nj.json", "series_ids: [a]");
    assert!(error(&["--whitelist", &not_json], &[]).contains("not JSON"));
    assert!(parse_whitelist_json("[1,2]").unwrap_err().contains("JSON object"));
    assert!(parse_whitelist_json(r#"{"series_ids":[1]}"#).unwrap_err().contains("not a string"));
    assert_eq!(parse_whitelist_json("{}").unwrap(), Vec::<String>::new());
}

#[test]
fn help_is_its_own_variant() {
    let err = parse(&["--help"]).unwrap_err();
    assert_eq!(err.exit_code(), 0);
    let RunConfigError::Help(text) = err else { panic!("expected Help, got {err:?}") };
    for needle in ["klinegate run", "--max-ondemand-jobs", "KLINEGATE_MAX_ONDEMAND_JOBS", "flag > environment > file"] {
        assert!(text.contains(needle), "help lacks {needle}:\n{text}");
    }
    assert!(matches!(parse(&["-h"]), Err(RunConfigError::Help(_))));
}

#[test]
fn every_flag_has_a_one_line_help_and_a_file_key() {
    let cmd = run_command();
    for arg in cmd.get_arguments() {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains("[env: KLINEGATE_") && !help.contains('\n'), "{:?}: {help}", arg.get_id());
        assert!(arg.get_long().is_some(), "{:?} has no long flag", arg.get_id());
    }
    // Every engine setting is reachable from a flag.
    let ids = setting_ids(&cmd);
    let fields = serde_json::to_value(Settings::default()).unwrap();
    for field in fields.as_object().unwrap().keys() {
        let id = match field.as_str() {
            "pins" => "pin",
            "idle_ttl_s" => "idle_ttl",
            "max_client_message_bytes" => "max_frame_bytes",
            other => other,
        };
        assert!(ids.iter().any(|i| i == id), "Settings.{field} has no flag");
    }
}

#[test]
fn env_lookup_only_sees_klinegate_names() {
    let asked = std::cell::RefCell::new(Vec::new());
    let lookup = |k: &str| {
        asked.borrow_mut().push(k.to_string());
        None
    };
    parse_run_config([PROG], &lookup).unwrap();
    let asked = asked.into_inner();
    assert!(asked.iter().all(|k| k.starts_with(ENV_PREFIX)));
    assert!(asked.contains(&"KLINEGATE_MAX_ONDEMAND_JOBS".to_string()));
    assert!(asked.contains(&"KLINEGATE_CONFIG".to_string()));
    let _ = no_env("x");
}

/// The shape main.rs can use: a `run` subcommand that forwards its raw
/// arguments (including --help) to `parse_run_config`.
#[test]
fn wiring_as_a_passthrough_subcommand() {
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        #[command(disable_help_flag = true)]
        Run {
            #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
            args: Vec<OsString>,
        },
    }
    let cli = Cli::try_parse_from(["klinegate", "run", "--help"]).unwrap();
    let Cmd::Run { args } = cli.command;
    let result = parse_run_config(std::iter::once(OsString::from(PROG)).chain(args), &no_env);
    assert!(matches!(result, Err(RunConfigError::Help(_))));
    let cli = Cli::try_parse_from(["klinegate", "run", "--batch-max", "3"]).unwrap();
    let Cmd::Run { args } = cli.command;
    let c = parse_run_config(std::iter::once(OsString::from(PROG)).chain(args), &no_env).unwrap();
    assert_eq!(c.settings.batch_max, 3);
}

#[test]
fn bus_settings_are_required_for_ingest_and_read_and_refused_for_hybrid() {
    assert!(error(&["--role", "read"], &[]).starts_with("invalid setting --bus-url: is required for --role read"));
    assert!(error(&["--role", "ingest"], &[]).starts_with("invalid setting --bus-url: is required for --role ingest"));
    assert!(error(&["--bus-url", "redis://h"], &[]).contains("needs --role ingest or read"));
    assert!(error(&["--role", "read", "--bus-url", "http://h"], &[]).contains("must start with redis://"));
    assert!(error(&["--role", "read", "--bus-url", "redis://h", "--bus-lease-ms", "10"], &[]).contains("at least 300"));
    assert!(error(&["--role", "read", "--bus-url", "redis://h", "--node-id", "a b"], &[]).starts_with("invalid setting --node-id"));
    assert_eq!(parse(&[]).unwrap().bus, None);
    let c = parse(&["--role", "ingest", "--bus-url", "redis://127.0.0.1:6380/2", "--node-id", "i1"]).unwrap();
    let b = c.bus.unwrap();
    assert_eq!((b.redis.port, b.redis.db, b.node_id.as_deref(), b.prefix.as_str()), (6380, 2, Some("i1"), "klinegate"));
    assert_eq!((b.maxlen, b.lease_ms), (100_000, 3000));
    let c = parse_with(&["--role", "read"], &[("KLINEGATE_BUS_URL", "redis://h"), ("KLINEGATE_BUS_PREFIX", "kg1")]).unwrap();
    assert_eq!(c.bus.map(|b| b.prefix), Some("kg1".to_string()));
}
