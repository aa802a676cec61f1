//! A `Store` on a schema of its own on the real PostgreSQL, every operation
//! carried out THROUGH the server's store host (`store_host::runner::PgRunner`:
//! writes as `Persist` effects, reads as the HTTP routes' reads), the schema
//! dropped when it goes away. `None` (skip) when no server is reachable
//! outside CI; under `CI=true` it fails.
//!
//! Include with `#[path = "support/netservers.rs"] mod netservers;` and
//! `#[path = "support/pg_host_store.rs"] mod pg_host_store;`.
#![allow(dead_code)]

use crate::netservers::{pg_or_skip, unique, PgClient};
use klinegate::model::Candle;
use klinegate::shell::store_host::runner::PgRunner;
use klinegate::store::postgres::schema::drop_schema_sql;
use klinegate::store::postgres::{PgConfig, Request, Schema};
use klinegate::store::{GapRecord, SeriesBatch, Store, StoreResult};
use std::net::SocketAddr;

pub struct PgHostStore {
    pub runner: PgRunner,
    cfg: PgConfig,
    addr: SocketAddr,
}

impl PgHostStore {
    pub fn open(test: &str) -> Option<PgHostStore> {
        let (mut cfg, addr) = pg_or_skip(test)?;
        cfg.schema = unique("kg_h");
        let runner = PgRunner::new(cfg.clone(), addr).expect("store host");
        runner.wait_available().expect("postgres store host available");
        Some(PgHostStore { runner, cfg, addr })
    }
}

impl PgHostStore {
    /// A `--store-url` for the real binary on this store's schema.
    pub fn url(&self) -> String {
        let auth = match &self.cfg.password {
            Some(p) => format!("{}:{p}", self.cfg.user),
            None => self.cfg.user.clone(),
        };
        format!("postgres://{auth}@{}/{}?schema={}", self.addr, self.cfg.database, self.cfg.schema)
    }
}

impl Drop for PgHostStore {
    fn drop(&mut self) {
        let mut c = PgClient::connect(&self.cfg, self.addr, 4);
        if let Ok(s) = Schema::new(&self.cfg.schema) {
            let _ = c.run(Request::Simple(drop_schema_sql(&s)));
        }
    }
}

impl Store for PgHostStore {
    fn prune_before(&mut self, tf: &str, before: i64, limit: usize) -> StoreResult<u64> {
        self.runner.prune_before(tf, before, limit)
    }
    fn write_ext(&mut self, rows: &[klinegate::store::ExtRows]) -> StoreResult<()> {
        self.runner.write_ext(rows)
    }
    fn read_ext(&self, s: &str, a: i64, b: i64) -> StoreResult<Vec<(i64, klinegate::kline_ext::KlineExt)>> {
        self.runner.read_ext(s, a, b)
    }
    fn write_batches(&mut self, b: &[SeriesBatch]) -> StoreResult<()> {
        self.runner.write_batches(b)
    }
    fn head_time(&self, s: &str) -> StoreResult<Option<i64>> {
        self.runner.head_time(s)
    }
    fn first_time(&self, s: &str) -> StoreResult<Option<i64>> {
        self.runner.first_time(s)
    }
    fn read_tail(&self, s: &str, n: usize) -> StoreResult<Vec<Candle>> {
        self.runner.read_tail(s, n)
    }
    fn read_after(&self, s: &str, since: i64, n: usize) -> StoreResult<Vec<Candle>> {
        self.runner.read_after(s, since, n)
    }
    fn tail_start(&self, s: &str, n: usize) -> StoreResult<Option<i64>> {
        self.runner.tail_start(s, n)
    }
    fn read_range(&self, s: &str, a: i64, b: i64, n: usize) -> StoreResult<Vec<Candle>> {
        self.runner.read_range(s, a, b, n)
    }
    fn count_range(&self, s: &str, a: i64, b: i64) -> StoreResult<u64> {
        self.runner.count_range(s, a, b)
    }
    fn put_gap(&mut self, g: &GapRecord) -> StoreResult<()> {
        self.runner.put_gap(g)
    }
    fn delete_gap(&mut self, s: &str) -> StoreResult<()> {
        self.runner.delete_gap(s)
    }
    fn gaps(&self) -> StoreResult<Vec<GapRecord>> {
        self.runner.gaps()
    }
}
