//! Configuration of `klinegate run`: turns the command line, the environment
//! and an optional TOML file into one validated [`RunConfig`].
//!
//! Every setting has three spellings: a flag (`--max-ondemand-jobs 8`), an
//! environment variable (`KLINEGATE_MAX_ONDEMAND_JOBS=8`) and a key in the
//! `--config` file (`max_ondemand_jobs = 8` or `max-ondemand-jobs = 8`).
//! Precedence is flag > environment > file > default, decided per setting.
//!
//! How the layering works: clap declares the flags, their help and their
//! defaults, but every value is taken as text. For each setting we ask clap
//! where its value came from (`ArgMatches::value_source`); only a value typed
//! on the command line beats the environment and the file, so a clap default
//! never hides them. The winning text is then parsed by one parser per setting
//! whatever its source, so a bad value reads the same from any source and the
//! error names the flag (and where the value came from) on one line.
//!
//! This module owns parsing and validation only. It must never read the
//! process environment itself (the caller injects a lookup function), never
//! open sockets, and never start anything.
//!
//! Files: [`crate::cli::run_args`] declares the flags, [`crate::cli::layers`] picks
//! each setting's winning text; this module parses and validates the values.

use crate::cli::layers::{split_list, Layers, Origin};
use crate::cli::settings::{parse_role, parse_timeframe_list, ConfigError, Settings};
use crate::engine::EngineConfig;
use crate::model::SeriesId;
use crate::wire::forwarded::Cidr;
use clap::Command;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use crate::cli::layers::RunConfigError;
pub use crate::cli::run_args::{env_var_name, run_command, ENV_PREFIX};

#[cfg(test)]
mod tests;

const WS_SCHEMES: &[&str] = &["wss://", "ws://"];
const HTTP_SCHEMES: &[&str] = &["https://", "http://"];

/// Everything `klinegate run` needs, validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Engine settings as given (pins already merged with the whitelist file).
    pub settings: Settings,
    /// `settings.to_engine_config()`, already checked.
    pub engine: EngineConfig,
    /// The TOML file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// `--store-max-mb` in bytes; `None` = no cap.
    pub store_max_bytes: Option<u64>,
    pub whitelist_file: Option<PathBuf>,
    pub record: Option<PathBuf>,
    pub log_level: LogLevelSetting,
    pub log_format: LogFormat,
    pub extra_ca: Option<PathBuf>,
    /// TLS for clients: certificate chain and private key (PEM). Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Nameservers and their timeout/attempts for the non-blocking resolver (`shell::dns`).
    pub resolv_conf: PathBuf,
    /// Bootstrap pinned series with no stored history from this freqtrade datadir.
    pub freqtrade_datadir: Option<PathBuf>,
    /// Market directory cache lifetimes and the forced-refresh spacing, seconds.
    pub markets_exchange_info_ttl_s: u64,
    pub markets_tickers_ttl_s: u64,
    pub markets_force_every_s: u64,
    /// No trailing `/`.
    pub spot_rest_url: String,
    /// No trailing `/`.
    pub futures_rest_url: String,
    /// Exact origins, or `*`.
    pub cors_origins: Vec<String>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers whose forwarding headers name the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<Cidr>,
    pub client_idle_timeout_s: u64,
    /// Also copied into `settings.max_client_message_bytes`.
    pub max_frame_bytes: usize,
    pub enable_debug_api: bool,
    pub enable_dev_api: bool,
    /// `--io-uring`: client fan-out writes through io_uring (epoll if unavailable).
    pub io_uring: bool,
    /// `--ingest-api`: the `candle_closed` ingest route is served.
    pub ingest_api: bool,
    pub auth_token: Option<String>,
    pub shutdown_grace_s: u64,
    /// `--store-url`: SQLite (the file is `db`) or PostgreSQL.
    pub store: crate::cli::store_url::StoreBackend,
    /// The command line after the program name, parsed again on `SIGHUP`.
    pub argv: Vec<OsString>,
    /// `--bus-url` and its companions; `Some` exactly for `--role ingest|read`.
    pub bus: Option<BusSettings>,
}

/// The Redis bus between nodes (`--bus-url`, `--node-id`, `--bus-prefix`,
/// `--bus-maxlen`, `--bus-lease-ms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusSettings {
    pub redis: crate::bus::RedisConfig,
    /// `None`: the shell names the node `ROLE-PID`.
    pub node_id: Option<String>,
    pub prefix: String,
    pub maxlen: u64,
    pub lease_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevelSetting {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` pairs on one line.
    Kv,
    /// One JSON object per line.
    Json,
}

impl RunConfig {
    /// The exchange's REST base URL for `market`.
    pub fn rest_base_url(&self, market: crate::model::Market) -> &str {
        match market {
            crate::model::Market::Spot => &self.spot_rest_url,
            crate::model::Market::Futures => &self.futures_rest_url,
        }
    }
}

/// Parses the `run` command line (`args[0]` is the program name), layering
/// `env` (a lookup such as `|k| std::env::var(k).ok()`) and the `--config`
/// file under it.
pub fn parse_run_config<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<RunConfig, RunConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cmd = run_command();
    let known = setting_ids(&cmd);
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = cmd.try_get_matches_from(args.iter().cloned()).map_err(|e| clap_error(&e))?;
    let mut layers = Layers { matches: &matches, env, file: None, origins: BTreeMap::new() };
    let mut config = build(&mut layers, &known)?;
    config.argv = args.into_iter().skip(1).collect();
    Ok(config)
}

/// clap ids of every setting that may appear in the file.
fn setting_ids(cmd: &Command) -> Vec<String> {
    cmd.get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter(|id| id != "help" && id != "config")
        .collect()
}

fn clap_error(err: &clap::Error) -> RunConfigError {
    use clap::error::ErrorKind;
    let text = err.render().to_string();
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        return RunConfigError::Help(text);
    }
    // clap renders "error: <what>\n\n  tip: <hint>\n\nUsage: ..."; keep the
    // first line and the tip so the message stays one line.
    let mut line = text.lines().next().unwrap_or("").trim().trim_start_matches("error: ").to_string();
    if let Some(tip) = text.lines().map(str::trim).find(|l| l.starts_with("tip:")) {
        line = format!("{line}; {tip}");
    }
    RunConfigError::Usage(format!("{line} (see 'klinegate run --help')"))
}

// -------------------------------------------------------------------- build

fn build(l: &mut Layers<'_>, known: &[String]) -> Result<RunConfig, RunConfigError> {
    let config_file = l.path("config")?;
    if let Some(path) = &config_file {
        existing_file(path).map_err(|r| l.invalid("config", r))?;
        l.load_file(path, known)?;
    }

    let listen = l.value("listen", parse_listen)?;
    let db = l.path("db")?.ok_or_else(|| l.invalid("db", "must not be empty"))?;
    in_existing_dir(&db).map_err(|r| l.invalid("db", r))?;
    let (db, store) = resolve_store_url(l, db)?;
    let record = l.path("record")?;
    if let Some(p) = &record {
        in_existing_dir(p).map_err(|r| l.invalid("record", r))?;
    }
    let freqtrade_datadir = l.path("freqtrade_datadir")?;
    if let Some(p) = &freqtrade_datadir {
        if !p.is_dir() {
            return Err(l.invalid("freqtrade_datadir", format!("'{}' is not a directory", p.display())));
        }
    }
    let extra_ca = l.path("extra_ca")?;
    if let Some(p) = &extra_ca {
        existing_file(p).map_err(|r| l.invalid("extra_ca", r))?;
    }
    let (tls_cert, tls_key) = resolve_tls_files(l)?;
    // The system file may be missing (the resolver then uses 127.0.0.1:53, as glibc);
    // one named explicitly must exist.
    let resolv_conf = l.path("resolv_conf")?.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
    if l.given("resolv_conf") {
        existing_file(&resolv_conf).map_err(|r| l.invalid("resolv_conf", r))?;
    }

    let (pins, whitelist_file) = resolve_pins(l)?;
    let max_frame_bytes = l.value("max_frame_bytes", parse_usize)?;
    let settings = Settings {
        pins,
        ondemand: l.value("ondemand", parse_bool)?,
        max_ondemand_jobs: l.value("max_ondemand_jobs", parse_usize)?,
        idle_ttl_s: l.value("idle_ttl", parse_u64)?,
        derived: l.value("derived", |s| parse_timeframe_list(s).map(|_| s.trim().to_string()))?,
        forming_interval_ms: l.value("forming_interval_ms", parse_u64)?,
        batch_max: l.value("batch_max", parse_usize)?,
        flush_ms: l.value("flush_ms", parse_u64)?,
        role: l.value("role", |s| parse_role(s).map(|_| s.trim().to_ascii_lowercase()))?,
        catchup_limit: l.value("catchup_limit", parse_usize)?,
        client_max_backlog_bytes: l.value("client_max_backlog_bytes", parse_usize)?,
        max_subscriptions_per_client: l.value("max_subscriptions_per_client", parse_usize)?,
        max_client_messages_per_s: l.value("max_client_messages_per_s", parse_u32)?,
        max_client_message_bytes: max_frame_bytes,
        streams_per_connection: l.value("streams_per_connection", parse_usize)?,
        control_rate_spot: l.value("control_rate_spot", parse_usize)?,
        control_rate_futures: l.value("control_rate_futures", parse_usize)?,
        spot_ws_url: l.value("spot_ws_url", |s| parse_url(s, WS_SCHEMES))?,
        futures_ws_url: l.value("futures_ws_url", |s| parse_url(s, WS_SCHEMES))?,
        upstream_silence_s: l.value("upstream_silence_s", parse_u64)?,
        stream_stall_s: l.value("stream_stall_s", parse_u64)?,
        upstream_rotate_s: l.value("upstream_rotate_s", parse_u64)?,
        breaker_crash_budget: l.value("breaker_crash_budget", parse_u32)?,
        breaker_window_s: l.value("breaker_window_s", parse_u64)?,
        breaker_backoff_initial_ms: l.value("breaker_backoff_initial_ms", parse_u64)?,
        breaker_backoff_max_ms: l.value("breaker_backoff_max_ms", parse_u64)?,
        breaker_cooldown_s: l.value("breaker_cooldown_s", parse_u64)?,
        store_backlog_max_candles: l.value("store_backlog_max_candles", parse_usize)?,
        rng_seed: l.value("rng_seed", parse_u64)?,
        heal: l.value("heal", parse_bool)?,
        heal_first_visit_candles: l.value("heal_first_visit_candles", parse_usize)?,
        heal_max_candles: l.value("heal_max_candles", parse_usize)?,
        late_close_ms: l.value("late_close_ms", parse_u64)?,
        heal_gate_ms: l.value("heal_gate_ms", parse_u64)?,
        rest_weight_budget_spot: l.value("rest_weight_budget_spot", parse_u32)?,
        rest_weight_budget_futures: l.value("rest_weight_budget_futures", parse_u32)?,
        full_klines: l.value("full_klines", parse_bool)?,
        retention: l.value("retention", |s| {
            crate::engine::retention::parse_retention(s).map(|_| s.trim().to_string())
        })?,
    };

    let bus = resolve_bus(l, &settings.role)?;
    let config = RunConfig {
        bus,
        config_file,
        listen,
        db,
        store_max_bytes: l.value("store_max_mb", parse_store_max_mb)?,
        whitelist_file,
        record,
        extra_ca,
        tls_cert,
        tls_key,
        resolv_conf,
        freqtrade_datadir,
        markets_exchange_info_ttl_s: l.value("markets_exchange_info_ttl_s", |s| parse_u64(s).and_then(positive))?,
        markets_tickers_ttl_s: l.value("markets_tickers_ttl_s", |s| parse_u64(s).and_then(positive))?,
        markets_force_every_s: l.value("markets_force_every_s", parse_u64)?,
        log_level: l.value("log_level", parse_log_level)?,
        log_format: l.value("log_format", parse_log_format)?,
        spot_rest_url: l.value("spot_rest_url", parse_rest_url)?,
        futures_rest_url: l.value("futures_rest_url", parse_rest_url)?,
        cors_origins: l.value("cors_origins", parse_cors_origins)?,
        max_connections: l.value("max_connections", |s| parse_usize(s).and_then(positive))?,
        max_connections_per_ip: l.value("max_connections_per_ip", |s| parse_usize(s).and_then(positive))?,
        trusted_proxies: l.value("trusted_proxy", |s| split_list(s).iter().map(|c| Cidr::parse(c)).collect())?,
        client_idle_timeout_s: l.value("client_idle_timeout_s", |s| parse_u64(s).and_then(positive))?,
        max_frame_bytes,
        enable_debug_api: l.value("enable_debug_api", |s| parse_loopback_switch(s, &listen))?,
        enable_dev_api: l.value("enable_dev_api", parse_bool)?,
        io_uring: l.value("io_uring", parse_bool)?,
        ingest_api: l.value("ingest_api", |s| parse_loopback_switch(s, &listen))?,
        auth_token: l.optional("auth_token")?,
        shutdown_grace_s: l.value("shutdown_grace_s", parse_u64)?,
        store,
        argv: Vec::new(),
        engine: settings.to_engine_config().map_err(|e| engine_error(l, e))?,
        settings,
    };
    Ok(config)
}

/// Pins are `--pin` (its own precedence) followed by the whitelist file's
/// entries (its own precedence), deduplicated in order. The engine's default
/// pin applies only when neither setting was given anywhere.
fn resolve_pins(l: &mut Layers<'_>) -> Result<(Vec<String>, Option<PathBuf>), RunConfigError> {
    let pins = l.list("pin")?.unwrap_or_default();
    let whitelist_file = l.path("whitelist")?;
    let listed = match &whitelist_file {
        Some(path) => read_whitelist(path).map_err(|r| l.invalid("whitelist", r))?,
        None => Vec::new(),
    };
    if !l.given("pin") && !l.given("whitelist") {
        return Ok((Settings::default().pins, None));
    }
    let mut merged: Vec<String> = Vec::new();
    for id in pins.into_iter().chain(listed) {
        if !merged.contains(&id) {
            merged.push(id);
        }
    }
    Ok((merged, whitelist_file))
}

/// `--tls-cert` and `--tls-key`: both (existing files) or neither. Their contents are
/// checked when the server loads them (`shell::conn::tls_server`).
fn resolve_tls_files(l: &mut Layers<'_>) -> Result<(Option<PathBuf>, Option<PathBuf>), RunConfigError> {
    let cert = l.path("tls_cert")?;
    let key = l.path("tls_key")?;
    for (id, path) in [("tls_cert", &cert), ("tls_key", &key)] {
        if let Some(p) = path {
            existing_file(p).map_err(|r| l.invalid(id, r))?;
        }
    }
    match (&cert, &key) {
        (Some(_), None) => Err(l.invalid("tls_cert", "--tls-key must be given too (TLS needs the certificate and its key)")),
        (None, Some(_)) => Err(l.invalid("tls_key", "--tls-cert must be given too (TLS needs the certificate and its key)")),
        _ => Ok((cert, key)),
    }
}

/// `--bus-url` is required for `--role ingest|read` and refused for hybrid
/// (which has no bus); the other bus settings are checked whenever given.
fn resolve_bus(l: &mut Layers<'_>, role: &str) -> Result<Option<BusSettings>, RunConfigError> {
    let url = l.optional("bus_url")?;
    let prefix = l.value("bus_prefix", |s| {
        let t = s.trim();
        if t.is_empty() || t.contains(char::is_whitespace) {
            Err(format!("'{s}' is not a key prefix (non-empty, no spaces)"))
        } else {
            Ok(t.to_string())
        }
    })?;
    let maxlen = l.value("bus_maxlen", |s| parse_u64(s).and_then(positive))?;
    let lease_ms = l.value("bus_lease_ms", |s| {
        parse_u64(s).and_then(|n| if n < 300 { Err("must be at least 300 (ms)".to_string()) } else { Ok(n) })
    })?;
    let node_id = l.optional("node_id")?;
    if let Some(n) = &node_id {
        if n.trim().is_empty() || n.contains(['|', ' ']) {
            return Err(l.invalid("node_id", format!("'{n}' is not a node name (non-empty, no spaces or '|')")));
        }
    }
    match (role, url) {
        ("hybrid", None) => Ok(None),
        ("hybrid", Some(_)) => Err(l.invalid("bus_url", "needs --role ingest or read (a hybrid node has no bus)")),
        (_, None) => Err(l.invalid("bus_url", format!("is required for --role {role} (redis://HOST:PORT[/DB])"))),
        (_, Some(u)) => {
            let redis = crate::bus::parse_redis_url(u.trim()).map_err(|e| l.invalid("bus_url", e))?;
            Ok(Some(BusSettings { redis, node_id, prefix, maxlen, lease_ms }))
        }
    }
}

/// Names the flag behind an engine setting and where its value came from.
fn engine_error(l: &Layers<'_>, e: ConfigError) -> RunConfigError {
    let id = match e.setting {
        "max-client-message-bytes" => "max_frame_bytes".to_string(),
        other => other.replace('-', "_"),
    };
    l.invalid(&id, e.reason)
}

// ------------------------------------------------------------ value parsers

/// Reads a whitelist file `{"series_ids": [...]}`: entries in file order,
/// trimmed, empty ones dropped, duplicates dropped, each a valid series id.
pub fn read_whitelist(path: &Path) -> Result<Vec<String>, String> {
    existing_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    parse_whitelist_json(&text).map_err(|e| format!("'{}': {e}", path.display()))
}

/// The body of a whitelist file; see [`read_whitelist`]. A missing
/// `series_ids` key is an empty list.
pub fn parse_whitelist_json(text: &str) -> Result<Vec<String>, String> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = doc.as_object().ok_or("whitelist must be a JSON object {\"series_ids\": [...]}")?;
    let items = match obj.get("series_ids") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => return Err("whitelist series_ids must be a list".into()),
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let raw = item.as_str().ok_or_else(|| format!("whitelist entry {item} is not a string"))?;
        let id = raw.trim();
        if id.is_empty() || out.iter().any(|o| o == id) {
            continue;
        }
        SeriesId::parse(id).map_err(|e| format!("whitelist entry '{id}': {e}"))?;
        out.push(id.to_string());
    }
    Ok(out)
}

/// `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (expected true/false, 1/0, yes/no or on/off)")),
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("'{s}' is not a whole number >= 0"))
}

fn parse_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_u64(s)?).map_err(|_| format!("'{s}' is too large"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(s)?).map_err(|_| format!("'{s}' is too large"))
}

/// Whole MiB; 0 means no cap.
fn parse_store_max_mb(s: &str) -> Result<Option<u64>, String> {
    let mb = parse_u64(s)?;
    let bytes = mb.checked_mul(1 << 20).ok_or_else(|| format!("'{s}' is too large"))?;
    Ok(Some(bytes).filter(|b| *b > 0))
}

fn positive<N: PartialEq + Default>(n: N) -> Result<N, String> {
    if n == N::default() {
        Err("must be greater than 0".into())
    } else {
        Ok(n)
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (taken as 127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let not_addr = || format!("'{t}' is not an address (expected HOST:PORT)");
    if let Some(port) = t.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| not_addr())?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    t.parse::<SocketAddr>().map_err(|_| not_addr())
}

/// A boolean, or `auto`: on only when `--listen` is a loopback address
/// (`--enable-debug-api`, `--ingest-api`).
fn parse_loopback_switch(s: &str, listen: &SocketAddr) -> Result<bool, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(listen.ip().is_loopback());
    }
    parse_bool(s).map_err(|e| format!("{e}, or auto"))
}

/// A URL with one of `schemes` and a non-empty host; returned trimmed.
fn parse_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let t = s.trim();
    let Some(rest) = schemes.iter().find_map(|scheme| t.strip_prefix(scheme)) else {
        let names: Vec<&str> = schemes.iter().rev().copied().collect();
        return Err(format!("'{t}' is not a {} URL", names.join(" or ")));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("'{t}' has no valid host"));
    }
    Ok(t.to_string())
}

/// REST base URLs are stored without a trailing `/` so paths can be appended.
fn parse_rest_url(s: &str) -> Result<String, String> {
    parse_url(s, HTTP_SCHEMES).map(|u| u.trim_end_matches('/').to_string())
}

fn parse_cors_origins(s: &str) -> Result<Vec<String>, String> {
    let origins = split_list(s);
    for origin in &origins {
        if origin == "*" {
            continue;
        }
        let rest = parse_url(origin, HTTP_SCHEMES)?;
        let after_scheme = rest.split_once("://").map_or("", |(_, r)| r);
        if after_scheme.contains(['/', '?', '#']) {
            return Err(format!("'{origin}' is not an origin (expected scheme://host[:port], no path)"));
        }
    }
    Ok(origins)
}

fn parse_log_level(s: &str) -> Result<LogLevelSetting, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "debug" => Ok(LogLevelSetting::Debug),
        "info" => Ok(LogLevelSetting::Info),
        "warn" | "warning" => Ok(LogLevelSetting::Warn),
        "error" => Ok(LogLevelSetting::Error),
        _ => Err(format!("unknown log level '{}' (expected debug, info, warn or error)", s.trim())),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "kv" | "key=value" => Ok(LogFormat::Kv),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("unknown log format '{}' (expected kv or json)", s.trim())),
    }
}

fn existing_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!("'{}' is a directory, not a file", path.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("'{}' does not exist", path.display())),
        Err(e) => Err(format!("'{}': {e}", path.display())),
    }
}

/// Files we create (store, journal) need their directory to exist already.
/// `--store-url` against `--db` (its shorthand): both given is an error;
/// `sqlite:PATH` replaces the SQLite file (relative to the config file's
/// directory when it comes from the file).
fn resolve_store_url(
    l: &mut Layers<'_>,
    db: PathBuf,
) -> Result<(PathBuf, crate::cli::store_url::StoreBackend), RunConfigError> {
    use crate::cli::store_url::{parse_store_url, StoreBackend, StoreUrl};
    let Some(text) = l.optional("store_url")? else { return Ok((db, StoreBackend::Sqlite)) };
    if l.given("db") {
        return Err(l.invalid("store_url", "--db PATH is short for --store-url sqlite:PATH; give one of them, not both"));
    }
    match parse_store_url(&text).map_err(|r| l.invalid("store_url", r))? {
        StoreUrl::Postgres(cfg) => Ok((db, StoreBackend::Postgres(cfg))),
        StoreUrl::Sqlite(path) => {
            let path = match (&l.file, l.origins.get("store_url")) {
                (Some(file), Some(Origin::File { .. })) if path.is_relative() => file.dir.join(path),
                _ => path,
            };
            in_existing_dir(&path).map_err(|r| l.invalid("store_url", r))?;
            Ok((path, StoreBackend::Sqlite))
        }
    }
}

fn in_existing_dir(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(format!("directory '{}' of '{}' does not exist", dir.display(), path.display()))
        }
        _ => Ok(()),
    }
}
