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

use crate::cli::settings::{parse_role, parse_timeframe_list, ConfigError, Settings};
use crate::engine::EngineConfig;
use crate::model::SeriesId;
use crate::wire::forwarded::Cidr;
use clap::parser::ValueSource;
use clap::{ArgMatches, ColorChoice, Command, CommandFactory, Parser};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Prefix of every environment variable: `KLINEGATE_` + the flag in upper snake case.
pub const ENV_PREFIX: &str = "KLINEGATE_";

/// Settings whose value is a list: comma-separated in flags and the
/// environment, a TOML array (or a comma-separated string) in the file.
const LIST_SETTINGS: &[&str] = &["pin", "derived", "cors_origins", "trusted_proxy"];

const WS_SCHEMES: &[&str] = &["wss://", "ws://"];
const HTTP_SCHEMES: &[&str] = &["https://", "http://"];

const PRECEDENCE_HELP: &str = "\
Every flag can also be given as an environment variable KLINEGATE_<FLAG> (upper snake case, \
e.g. KLINEGATE_MAX_ONDEMAND_JOBS) or as a key in the --config TOML file (flag name with '-' or \
'_', e.g. max_ondemand_jobs = 8). Precedence: flag > environment > file > default. \
List settings take comma-separated values in flags and the environment, and arrays in the file. \
Relative paths in the file are relative to the file's directory. \
An empty value for an optional setting (e.g. KLINEGATE_RECORD=) means 'not set'.";

/// The flags of `klinegate run`. Declaration only: values are read from
/// `ArgMatches` (not from this struct) so each one can be layered.
#[allow(dead_code)]
#[derive(Parser)]
#[command(
    name = "run",
    bin_name = "klinegate run",
    about = "Run the live server: ingest Binance klines and serve /ws/market clients",
    after_help = PRECEDENCE_HELP,
    disable_version_flag = true,
    color = ColorChoice::Never
)]
struct RunArgs {
    /// TOML file with settings (keys are flag names, '-' or '_')
    #[arg(long, value_name = "FILE")]
    config: Option<String>,

    // ---------------------------------------------------------------- server
    /// Address to listen on for HTTP and WebSocket clients (HOST:PORT)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000", help_heading = "Server")]
    listen: String,
    /// SQLite candle store file (created if missing; its directory must exist)
    #[arg(long, value_name = "PATH", default_value = "./klinegate.db", help_heading = "Server")]
    db: String,
    /// Cap on the store's size in MiB (SQLite max_page_count); at the cap closed candles are kept and retried until rows are deleted (0 = no cap)
    #[arg(long, value_name = "MB", default_value = "0", help_heading = "Server")]
    store_max_mb: String,
    /// Debug endpoints (/api/market/debug/*): true/false, or auto = on only when --listen is loopback
    #[arg(long, value_name = "BOOL", default_value = "auto", num_args = 0..=1, default_missing_value = "true", help_heading = "Server")]
    enable_debug_api: String,
    /// Dev endpoints (HTTP candle ingest for tools and tests)
    #[arg(long, value_name = "BOOL", default_value = "false", num_args = 0..=1, default_missing_value = "true", help_heading = "Server")]
    enable_dev_api: String,
    /// POST /api/market/ingest/candle_closed: on, off, or auto = on only when --listen is loopback (off answers 404)
    #[arg(long, value_name = "on|off|auto", default_value = "auto", help_heading = "Server")]
    ingest_api: String,
    /// PEM certificate chain (leaf first) to serve clients over TLS (https://, wss://); needs --tls-key
    #[arg(long, value_name = "PEM", help_heading = "Server")]
    tls_cert: Option<String>,
    /// PEM private key (PKCS#8, RSA or SEC1) of --tls-cert; needs --tls-cert
    #[arg(long, value_name = "PEM", help_heading = "Server")]
    tls_key: Option<String>,
    /// Bearer token required on HTTP and WebSocket requests (prefer the environment variable; none = no auth)
    #[arg(long, value_name = "TOKEN", help_heading = "Server")]
    auth_token: Option<String>,
    /// Browser origins allowed by CORS, comma-separated ('*' = any; empty = none)
    #[arg(long, value_name = "LIST", default_value = "http://localhost:5173,http://127.0.0.1:5173", help_heading = "Server")]
    cors_origins: String,
    /// Seconds to flush and close connections after SIGTERM before exiting
    #[arg(long, value_name = "SECONDS", default_value = "5", help_heading = "Server")]
    shutdown_grace_s: String,
    /// Record every engine input to this journal file (JSON lines) for replay
    #[arg(long, value_name = "JOURNAL", help_heading = "Server")]
    record: Option<String>,
    /// Seed of the engine's deterministic random numbers (reconnect jitter)
    #[arg(long, value_name = "N", default_value = "1", help_heading = "Server")]
    rng_seed: String,

    // ---------------------------------------------------------------- ingest
    /// Series to pin (ingested from start, never reaped); repeatable or comma-separated; default binance:spot:BTC/USDT:1m if no --pin and no --whitelist
    #[arg(long, value_name = "SERIES", value_delimiter = ',', help_heading = "Ingest")]
    pin: Vec<String>,
    /// JSON file {"series_ids":[...]} whose entries are added to the pins
    #[arg(long, value_name = "FILE", help_heading = "Ingest")]
    whitelist: Option<String>,
    /// Start ingest jobs on demand when a client subscribes to an unpinned series
    #[arg(long, value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true", help_heading = "Ingest")]
    ondemand: String,
    /// Most on-demand jobs at once (0 = unlimited)
    #[arg(long, value_name = "N", default_value = "0", help_heading = "Ingest")]
    max_ondemand_jobs: String,
    /// Seconds an on-demand job lives without subscribers before it is reaped
    #[arg(long, value_name = "SECONDS", default_value = "60", help_heading = "Ingest")]
    idle_ttl: String,
    /// Timeframes folded locally from 1m, comma-separated (empty disables)
    #[arg(long, value_name = "LIST", default_value = "5m,15m,1h,4h,1d", help_heading = "Ingest")]
    derived: String,
    /// Minimum milliseconds between forming-candle updates per series (0 = every update)
    #[arg(long, value_name = "MS", default_value = "250", help_heading = "Ingest")]
    forming_interval_ms: String,
    /// Flush closed candles to the store when this many are buffered
    #[arg(long, value_name = "N", default_value = "200", help_heading = "Ingest")]
    batch_max: String,
    /// Flush closed candles to the store when the oldest buffered one is this many ms old
    #[arg(long, value_name = "MS", default_value = "500", help_heading = "Ingest")]
    flush_ms: String,
    /// Process role: hybrid (ingest and serve), ingest, or read (serve only)
    #[arg(long, value_name = "ROLE", default_value = "hybrid", help_heading = "Ingest")]
    role: String,
    /// Closed candles kept for retry while the store fails
    #[arg(long, value_name = "N", default_value = "1000000", help_heading = "Ingest")]
    store_backlog_max_candles: String,
    /// Crashes of a job within --breaker-window-s before its circuit breaker opens
    #[arg(long, value_name = "N", default_value = "5", help_heading = "Ingest")]
    breaker_crash_budget: String,
    /// Window in seconds over which job crashes are counted
    #[arg(long, value_name = "SECONDS", default_value = "60", help_heading = "Ingest")]
    breaker_window_s: String,
    /// First restart backoff of a crashed job, in milliseconds
    #[arg(long, value_name = "MS", default_value = "1000", help_heading = "Ingest")]
    breaker_backoff_initial_ms: String,
    /// Largest restart backoff of a crashed job, in milliseconds
    #[arg(long, value_name = "MS", default_value = "15000", help_heading = "Ingest")]
    breaker_backoff_max_ms: String,
    /// Seconds an open circuit breaker waits before a half-open probe
    #[arg(long, value_name = "SECONDS", default_value = "30", help_heading = "Ingest")]
    breaker_cooldown_s: String,

    // ---------------------------------------------------------------- healing
    /// Heal missing closed candles over REST (job start, reconnect, late closes)
    #[arg(long, value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true", help_heading = "Healing")]
    heal: String,
    /// Base candles fetched for a series with no stored history (first visit)
    #[arg(long, value_name = "N", default_value = "2000", help_heading = "Healing")]
    heal_first_visit_candles: String,
    /// Most candles one heal fetches (older holes stay gaps)
    #[arg(long, value_name = "N", default_value = "20000", help_heading = "Healing")]
    heal_max_candles: String,
    /// Fetch a candle over REST when its closing frame is this many ms late
    #[arg(long, value_name = "MS", default_value = "5000", help_heading = "Healing")]
    late_close_ms: String,
    /// Longest time (ms) live closed candles wait behind a running heal
    #[arg(long, value_name = "MS", default_value = "3000", help_heading = "Healing")]
    heal_gate_ms: String,
    /// REST request weight used per minute on spot (Binance allows 6000 per IP)
    #[arg(long, value_name = "N", default_value = "3000", help_heading = "Healing")]
    rest_weight_budget_spot: String,
    /// REST request weight used per minute on USD-M futures (Binance allows 2400 per IP)
    #[arg(long, value_name = "N", default_value = "1200", help_heading = "Healing")]
    rest_weight_budget_futures: String,

    // -------------------------------------------------------------- upstream
    /// Binance spot combined-stream WebSocket URL
    #[arg(long, value_name = "URL", default_value = "wss://stream.binance.com:9443/stream", help_heading = "Upstream")]
    spot_ws_url: String,
    /// Binance USD-M futures combined-stream WebSocket URL
    #[arg(long, value_name = "URL", default_value = "wss://fstream.binance.com/market/stream", help_heading = "Upstream")]
    futures_ws_url: String,
    /// Binance spot REST base URL (kline healing)
    #[arg(long, value_name = "URL", default_value = "https://api.binance.com", help_heading = "Upstream")]
    spot_rest_url: String,
    /// Binance USD-M futures REST base URL (kline healing)
    #[arg(long, value_name = "URL", default_value = "https://fapi.binance.com", help_heading = "Upstream")]
    futures_rest_url: String,
    /// Extra PEM file of CA certificates trusted for upstream TLS
    #[arg(long, value_name = "PEM", help_heading = "Upstream")]
    extra_ca: Option<String>,
    /// Resolver configuration (nameservers, options timeout/attempts; a nameserver may carry a port, e.g. 127.0.0.1:5353)
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf", help_heading = "Upstream")]
    resolv_conf: String,
    /// Market directory: seconds an exchangeInfo answer is reused
    #[arg(long, value_name = "SECONDS", default_value = "3600", help_heading = "Market directory")]
    markets_exchange_info_ttl_s: String,
    /// Market directory: seconds a ticker/24hr answer is reused
    #[arg(long, value_name = "SECONDS", default_value = "10", help_heading = "Market directory")]
    markets_tickers_ttl_s: String,
    /// Market directory: a client address may force a refresh at most once per this many seconds
    #[arg(long, value_name = "SECONDS", default_value = "10", help_heading = "Market directory")]
    markets_force_every_s: String,
    /// freqtrade data directory: pinned series with no stored history are bootstrapped from it at start
    #[arg(long, value_name = "DIR", help_heading = "Healing")]
    freqtrade_datadir: Option<String>,
    /// Most kline streams on one upstream connection (capped at 1024)
    #[arg(long, value_name = "N", default_value = "200", help_heading = "Upstream")]
    streams_per_connection: String,
    /// Messages per second on one spot connection, evenly spaced, pongs included (Binance allows 5)
    #[arg(long, value_name = "N", default_value = "2", help_heading = "Upstream")]
    control_rate_spot: String,
    /// Messages per second on one USD-M futures connection, evenly spaced, pongs included (Binance allows 10)
    #[arg(long, value_name = "N", default_value = "5", help_heading = "Upstream")]
    control_rate_futures: String,
    /// Seconds without any frame before an upstream connection is replaced
    #[arg(long, value_name = "SECONDS", default_value = "60", help_heading = "Upstream")]
    upstream_silence_s: String,
    /// Seconds without a kline frame on one live stream before it is resubscribed, logged (stream_stalled) and counted (0 = off)
    #[arg(long, value_name = "SECONDS", default_value = "10", help_heading = "Upstream")]
    stream_stall_s: String,
    /// Seconds after which an upstream connection is rotated (make-before-break, < 24 h)
    #[arg(long, value_name = "SECONDS", default_value = "82800", help_heading = "Upstream")]
    upstream_rotate_s: String,

    // --------------------------------------------------------------- clients
    /// Most client connections in total
    #[arg(long, value_name = "N", default_value = "10000", help_heading = "Clients")]
    max_connections: String,
    /// Most client connections from one client address (behind a --trusted-proxy, the address it forwards)
    #[arg(long, value_name = "N", default_value = "10000", help_heading = "Clients")]
    max_connections_per_ip: String,
    /// Reverse proxies allowed to name the client address (Forwarded / X-Forwarded-For), comma-separated CIDR ranges or addresses (empty = none)
    #[arg(long, value_name = "CIDR", default_value = "", help_heading = "Clients")]
    trusted_proxy: String,
    /// Seconds a client may stay silent (no frame, no pong) before it is closed
    #[arg(long, value_name = "SECONDS", default_value = "120", help_heading = "Clients")]
    client_idle_timeout_s: String,
    /// Largest client WebSocket message accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value = "65536", help_heading = "Clients")]
    max_frame_bytes: String,
    /// Most series one client may subscribe to
    #[arg(long, value_name = "N", default_value = "256", help_heading = "Clients")]
    max_subscriptions_per_client: String,
    /// Messages one WebSocket client may send per second (bursts of twice that); more are dropped, answered with one rate_limited error a second (0 = no limit)
    #[arg(long, value_name = "N", default_value = "50", help_heading = "Clients")]
    max_client_messages_per_s: String,
    /// Bytes queued for a slow client before it is disconnected
    #[arg(long, value_name = "BYTES", default_value = "4194304", help_heading = "Clients")]
    client_max_backlog_bytes: String,
    /// Most candles sent as catch-up for one subscription
    #[arg(long, value_name = "N", default_value = "5000", help_heading = "Clients")]
    catchup_limit: String,

    // --------------------------------------------------------------- logging
    /// Log level: debug, info, warn or error
    #[arg(long, value_name = "LEVEL", default_value = "info", help_heading = "Logging")]
    log_level: String,
    /// Log line format: kv (key=value) or json
    #[arg(long, value_name = "FORMAT", default_value = "kv", help_heading = "Logging")]
    log_format: String,
    /// Candle store: sqlite:PATH (default sqlite:./klinegate.db; --db PATH is its shorthand) or postgres://USER[:PASS]@HOST:PORT/DB[?schema=NAME]
    #[arg(long, value_name = "URL", help_heading = "Server")]
    store_url: Option<String>,
}

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
    /// `--ingest-api`: the `candle_closed` ingest route is served.
    pub ingest_api: bool,
    pub auth_token: Option<String>,
    pub shutdown_grace_s: u64,
    /// `--store-url`: SQLite (the file is `db`) or PostgreSQL.
    pub store: crate::cli::store_url::StoreBackend,
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

/// Why no [`RunConfig`] came out. Everything but `Help` is one line for
/// standard error; see [`RunConfigError::exit_code`].
#[derive(Clone, Debug, PartialEq)]
pub enum RunConfigError {
    /// `--help` was asked for: print this text to standard output, exit 0.
    Help(String),
    /// The command line is malformed (unknown flag, missing value).
    Usage(String),
    /// A setting has an unusable value. `flag` is `--name`; `from` says where
    /// the value came from when it was not the command line.
    Invalid { flag: String, reason: String, from: Option<String> },
}

impl RunConfigError {
    /// 0 for a help request, 2 for any configuration error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunConfigError::Help(_) => 0,
            _ => 2,
        }
    }
}

impl fmt::Display for RunConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunConfigError::Help(text) => f.write_str(text),
            RunConfigError::Usage(line) => f.write_str(line),
            RunConfigError::Invalid { flag, reason, from } => {
                write!(f, "invalid setting {flag}: {reason}")?;
                if let Some(from) = from {
                    write!(f, " (from {from})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RunConfigError {}

/// The clap command of `klinegate run`, with each flag's environment variable
/// shown in its help line.
pub fn run_command() -> Command {
    RunArgs::command().mut_args(|arg| {
        let env = env_var_name(arg.get_id().as_str());
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        arg.help(format!("{help} [env: {env}]"))
    })
}

/// `max_ondemand_jobs` (clap id) or `max-ondemand-jobs` → `KLINEGATE_MAX_ONDEMAND_JOBS`.
pub fn env_var_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.replace('-', "_").to_ascii_uppercase())
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
    let matches = cmd.try_get_matches_from(args).map_err(|e| clap_error(&e))?;
    let mut layers = Layers { matches: &matches, env, file: None, origins: BTreeMap::new() };
    build(&mut layers, &known)
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

// ------------------------------------------------------------------ layering

/// Where a setting's winning value came from.
#[derive(Clone, Debug)]
enum Origin {
    Flag,
    Env(String),
    File { path: PathBuf, key: String },
    Default,
}

impl Origin {
    fn describe(&self) -> Option<String> {
        match self {
            Origin::Flag => None,
            Origin::Env(var) => Some(var.clone()),
            Origin::File { path, key } => Some(format!("{} key '{key}'", path.display())),
            Origin::Default => Some("the default".into()),
        }
    }
}

/// The parsed `--config` file: values keyed by clap id.
struct FileLayer {
    path: PathBuf,
    /// Relative paths in the file are taken from here.
    dir: PathBuf,
    values: BTreeMap<String, (String, toml::Value)>,
}

struct Layers<'a> {
    matches: &'a ArgMatches,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<FileLayer>,
    /// Origin of every setting looked up so far, to attribute later errors.
    origins: BTreeMap<String, Origin>,
}

impl Layers<'_> {
    /// The winning text of a setting: flag typed on the command line, else
    /// environment, else file, else clap's default. `None` when none has it.
    fn take(&mut self, id: &str) -> Result<Option<String>, RunConfigError> {
        let found = self.lookup(id)?;
        if let Some((_, origin)) = &found {
            self.origins.insert(id.to_string(), origin.clone());
        }
        Ok(found.map(|(text, _)| text))
    }

    fn lookup(&self, id: &str) -> Result<Option<(String, Origin)>, RunConfigError> {
        let from_clap = || self.matches.get_many::<String>(id).map(|vs| vs.cloned().collect::<Vec<_>>().join(","));
        if self.matches.value_source(id) == Some(ValueSource::CommandLine) {
            return Ok(from_clap().map(|t| (t, Origin::Flag)));
        }
        let var = env_var_name(id);
        if let Some(text) = (self.env)(&var) {
            return Ok(Some((text, Origin::Env(var))));
        }
        if let Some(file) = &self.file {
            if let Some((key, value)) = file.values.get(id) {
                let origin = Origin::File { path: file.path.clone(), key: key.clone() };
                let text = toml_text(value, LIST_SETTINGS.contains(&id))
                    .map_err(|reason| invalid_at(id, reason, &origin))?;
                return Ok(Some((text, origin)));
            }
        }
        Ok(from_clap().map(|t| (t, Origin::Default)))
    }

    /// True when the setting was given anywhere other than clap's default.
    fn given(&self, id: &str) -> bool {
        matches!(self.origins.get(id), Some(o) if !matches!(o, Origin::Default))
    }

    fn invalid(&self, id: &str, reason: impl Into<String>) -> RunConfigError {
        invalid_at(id, reason.into(), self.origins.get(id).unwrap_or(&Origin::Flag))
    }

    /// A setting that always has a value (it has a default).
    fn value<T>(&mut self, id: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, RunConfigError> {
        let text = self.take(id)?.ok_or_else(|| self.invalid(id, "no value given"))?;
        parse(&text).map_err(|reason| self.invalid(id, reason))
    }

    /// An optional setting; absent or empty means `None`.
    fn optional(&mut self, id: &str) -> Result<Option<String>, RunConfigError> {
        Ok(self.take(id)?.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// An optional path; a relative path from the file is taken from the file's directory.
    fn path(&mut self, id: &str) -> Result<Option<PathBuf>, RunConfigError> {
        let Some(text) = self.optional(id)? else { return Ok(None) };
        let path = PathBuf::from(text);
        match (&self.file, self.origins.get(id)) {
            (Some(file), Some(Origin::File { .. })) if path.is_relative() => Ok(Some(file.dir.join(path))),
            _ => Ok(Some(path)),
        }
    }

    /// A list setting: items trimmed, empty items dropped. `None` when not given anywhere.
    fn list(&mut self, id: &str) -> Result<Option<Vec<String>>, RunConfigError> {
        Ok(self.take(id)?.map(|text| split_list(&text)))
    }

    fn load_file(&mut self, path: &Path, known: &[String]) -> Result<(), RunConfigError> {
        let file = read_config_file(path, known).map_err(|reason| self.invalid("config", reason))?;
        self.file = Some(file);
        Ok(())
    }
}

fn invalid_at(id: &str, reason: String, origin: &Origin) -> RunConfigError {
    RunConfigError::Invalid { flag: format!("--{}", id.replace('_', "-")), reason, from: origin.describe() }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// A TOML value as the text a flag would carry.
fn toml_text(value: &toml::Value, is_list: bool) -> Result<String, String> {
    use toml::Value;
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(x) => Ok(x.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Array(items) if is_list => {
            let texts = items.iter().map(|v| toml_text(v, false)).collect::<Result<Vec<_>, _>>()?;
            Ok(texts.join(","))
        }
        Value::Array(_) => Err("expected a single value, not an array".into()),
        Value::Table(_) | Value::Datetime(_) => Err("expected a string, number or boolean".into()),
    }
}

fn read_config_file(path: &Path, known: &[String]) -> Result<FileLayer, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| line_col(&text, s.start)).map(|(l, c)| format!(" line {l} column {c}"));
        let message = e.message().lines().map(str::trim).collect::<Vec<_>>().join("; ");
        format!("'{}'{}: {message}", path.display(), at.unwrap_or_default())
    })?;
    let mut values: BTreeMap<String, (String, toml::Value)> = BTreeMap::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if id == "config" {
            return Err(format!("key '{key}' in '{}': a config file cannot name another", path.display()));
        }
        if !known.contains(&id) {
            return Err(format!("unknown key '{key}' in '{}'", path.display()));
        }
        if let Some((earlier, _)) = values.get(&id) {
            return Err(format!("keys '{earlier}' and '{key}' in '{}' set the same setting", path.display()));
        }
        values.insert(id, (key, value));
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(FileLayer { path: path.to_path_buf(), dir, values })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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
    };

    let config = RunConfig {
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
        ingest_api: l.value("ingest_api", |s| parse_loopback_switch(s, &listen))?,
        auth_token: l.optional("auth_token")?,
        shutdown_grace_s: l.value("shutdown_grace_s", parse_u64)?,
        store,
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
fn in_existing_dir(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(format!("directory '{}' of '{}' does not exist", dir.display(), path.display()))
        }
        _ => Ok(()),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(c.settings, Settings::default(), "clap defaults drifted from Settings::default()");
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
}
