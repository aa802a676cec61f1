//! The HTTP API: routes, health and metrics views, the market directory.
//!
//! - [`routes`]: the HTTP routes and the `/ws/market` upgrade decision.
//! - [`docs`]: `/openapi.json`, the committed OpenAPI document.
//! - [`full_candles`]: `fields=full` on `/api/market/candles` (the whole kline).
//! - [`health`]: `/health` and `/health/ready`.
//! - [`ingest`]: the candle ingest routes' bodies, checks and replies.
//! - [`kline_health`]: `/api/market/health` and the series-health debug view.
//! - [`metrics`]: the Prometheus exposition and the engine activity families.
//! - [`markets`]: the top-markets directory and its Server-Sent Events stream.
//!
//! Owns: answers built from a request and read-only engine state. Never
//! changes engine state except through the inputs the loop hands it.
pub mod bus_metrics;
pub mod docs;
pub mod full_candles;
pub mod health;
pub mod ingest;
pub mod kline_health;
pub mod markets;
pub mod metrics;
pub mod routes;
pub mod stats;
