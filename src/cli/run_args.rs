//! The flags of `klinegate run` as clap declares them (help, defaults, headings),
//! and how each flag is spelled in the environment (`KLINEGATE_<FLAG>`).
//!
//! Owns: the declaration. Never reads a value: [`crate::cli::layers`] asks clap
//! where each one came from and [`crate::cli::run_config`] parses it.

use clap::{ColorChoice, Command, CommandFactory, Parser};

/// Prefix of every environment variable: `KLINEGATE_` + the flag in upper snake case.
pub const ENV_PREFIX: &str = "KLINEGATE_";

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
pub(super) struct RunArgs {
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
    /// Write client fan-outs through io_uring (first client directly, the rest as batched sends); needs Linux >= 5.6, else epoll writes with a warning
    #[arg(long, value_name = "BOOL", default_value = "false", num_args = 0..=1, default_missing_value = "true", help_heading = "Server")]
    io_uring: String,
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
    /// Redis bus between nodes, redis://HOST:PORT[/DB]; required for --role ingest and read
    #[arg(long, value_name = "URL", help_heading = "Nodes")]
    bus_url: Option<String>,
    /// This node's name on the bus (lease owner, demand key); default ROLE-PID
    #[arg(long, value_name = "NAME", help_heading = "Nodes")]
    node_id: Option<String>,
    /// Prefix of every Redis key this deployment uses (streams, lease)
    #[arg(long, value_name = "PREFIX", default_value = "klinegate", help_heading = "Nodes")]
    bus_prefix: String,
    /// Approximate length the closed-candle stream is trimmed to (XADD MAXLEN ~)
    #[arg(long, value_name = "N", default_value = "100000", help_heading = "Nodes")]
    bus_maxlen: String,
    /// Ingest leader lease in milliseconds (renewed every third of it; a standby takes over after it lapses)
    #[arg(long, value_name = "MS", default_value = "3000", help_heading = "Nodes")]
    bus_lease_ms: String,
    /// Closed candles kept for retry while the store fails
    #[arg(long, value_name = "N", default_value = "1000000", help_heading = "Ingest")]
    store_backlog_max_candles: String,
    /// Per-timeframe retention: candles older than the age are deleted in small batches, e.g. 1m=90d,5m=2y (units s, m, h, d, w, y; empty = keep everything)
    #[arg(long, value_name = "TF=AGE,...", default_value = "", help_heading = "Ingest")]
    retention: String,
    /// Keep the whole kline: quote volume, trade count, taker-buy base and quote volume, stored with each close and served on fields=full
    #[arg(long, value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true", help_heading = "Ingest")]
    full_klines: String,
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
