//! [`ShellStats`]: what the shell knows and the engine does not (sockets,
//! bytes, the store host's timings, the resolver), filled by the event loop
//! and read by the health and metrics views. Plain data: it never computes.

/// What the shell knows and the engine does not; filled once per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShellStats {
    pub connections_open: u64,
    pub ws_clients: u64,
    pub http_requests: u64,
    pub ws_frames_in: u64,
    pub ws_frames_out: u64,
    /// Bytes the client sockets took (frames as sent: compressed or not, heads included).
    pub ws_bytes_out: u64,
    /// permessage-deflate: frames compressed, shared, bytes saved.
    pub ws_deflate: crate::shell::conn::deflate_cache::DeflateCounters,
    pub upstream_frames_in: u64,
    /// Exchange connections open now.
    pub upstream_connected: u64,
    /// Why each market's last exchange connection failed (spot, futures);
    /// `None` once one connects.
    pub upstream_last_error: [Option<String>; 2],
    pub store_ok: bool,
    /// Why the store is not ok (the last failed write, or read-only at start);
    /// `None` once a write succeeds.
    pub store_last_error: Option<String>,
    pub store_path: String,
    pub store_write_count: u64,
    pub store_write_seconds_sum: f64,
    pub store_write_seconds_max: f64,
    /// Store effects waiting for the shell's store slice.
    pub store_queue: u64,
    /// The longest store slice of one loop turn, in seconds.
    pub store_slice_seconds_max: f64,
    /// How long each loop turn's work took (poll wake-up to the next poll).
    pub loop_turn: crate::engine::histogram::Histogram,
    pub loop_turn_seconds_max: f64,
    pub connections_rejected: u64,
    /// Of those, refused by --max-connections-per-ip.
    pub connections_rejected_per_ip: u64,
    /// Requests refused for a missing or wrong shared secret.
    pub http_unauthorized: u64,
    /// WebSocket clients closed with 1009 for a message over --max-frame-bytes.
    pub ws_messages_too_big: u64,
    /// WebSocket clients closed with 1002/1007 for breaking RFC 6455.
    pub ws_protocol_errors: u64,
    /// HTTP connections dropped (408) for not completing a request in time.
    pub http_request_timeouts: u64,
    /// Clients are served over TLS (`--tls-cert`/`--tls-key`).
    pub client_tls: bool,
    /// TLS client connections that ended before their handshake completed.
    pub tls_handshake_failures: u64,
    /// The non-blocking resolver's counters (`shell::dns`).
    pub dns: crate::shell::dns::DnsStats,
    pub started_unix_s: f64,
    pub now_unix_s: f64,
    /// `sqlite` or `postgres` (empty reads as `sqlite`).
    pub store_backend: &'static str,
    /// PostgreSQL: connected and bootstrapped; SQLite: always true.
    pub store_connected: bool,
    /// HTTP requests parked for a PostgreSQL read now.
    pub store_http_parked: u64,
    /// `hybrid`, `ingest` or `read` (empty reads as `hybrid`).
    pub role: &'static str,
    pub node_id: String,
    /// The bus host's view (`shell::bus_host::BusHost::health`); null for hybrid.
    pub bus: serde_json::Value,
}
