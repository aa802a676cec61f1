//! The PostgreSQL schema: the reference's own `candles` table (so klinegate
//! can be pointed at a reference deployment's database and serve its
//! history), klinegate's tables beside it (schema version, gap ledger), and
//! a TimescaleDB hypertable when the server has the extension.
//!
//! Owns the DDL and the bootstrap sequence as a sans-IO step machine
//! ([`Bootstrap`]): requests out, answers in. It never runs anything itself
//! and never adopts a schema version newer than it knows.
//!
//! The schema name is spliced into SQL unquoted, exactly as the reference
//! does (`{schema}.candles`), after [`check_schema_name`] — the same rule
//! the reference applies — so the same name reaches the same schema.
//!
//! Deliberate differences from the reference's bootstrap:
//! - `CREATE EXTENSION timescaledb` only when the server offers it (the
//!   reference fails without it); then `create_hypertable` with an explicit
//!   30-day `chunk_time_interval`, which TimescaleDB requires for an integer
//!   time column.
//! - No `idx_{schema}_candles_series_time`: it duplicates the primary key
//!   (same columns, same order) and would double the b-tree work of every
//!   upsert. A reference database keeps its own; it does no harm.
//! - Everything runs in one transaction under an advisory lock, so two nodes
//!   starting at once cannot race on `CREATE TABLE IF NOT EXISTS`.

use super::conn::{Answer, Request};
use super::url::check_schema_name;

/// The version klinegate's own tables are at; stamped in `klinegate_schema`.
/// 2: the whole kline's four NULLable columns on `candles` (#15 §4).
pub const SCHEMA_VERSION: i64 = 2;

/// `pg_advisory_xact_lock` key for bootstrap ("KLNG").
const BOOTSTRAP_LOCK: i64 = 0x4B4C_4E47;

/// A validated schema name, the only way SQL in this module gets one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    pub fn new(name: &str) -> Result<Schema, String> {
        check_schema_name(name)?;
        Ok(Schema(name.to_string()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `{schema}.{table}`.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{}", self.0, table)
    }
}

/// What bootstrap found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaInfo {
    pub version: i64,
    pub hypertable: bool,
}

pub enum BootstrapStep {
    Send(Request),
    Done(SchemaInfo),
    Failed(String),
}

/// Bootstrap as steps: [`Bootstrap::start`] gives the first request; each
/// answer goes to [`Bootstrap::on_answer`], which gives the next request,
/// the result, or why the store cannot be used.
pub struct Bootstrap {
    schema: Schema,
    stage: Stage,
}

enum Stage {
    Tables,
    Hypertable { version: i64 },
}

impl Bootstrap {
    pub fn start(schema: Schema) -> (Bootstrap, Request) {
        let req = Request::Simple(tables_sql(&schema));
        (Bootstrap { schema, stage: Stage::Tables }, req)
    }

    pub fn on_answer(&mut self, answer: Answer) -> BootstrapStep {
        let sets = match answer {
            Ok(sets) => sets,
            Err(e) => return BootstrapStep::Failed(format!("postgres schema bootstrap failed: {e}")),
        };
        match self.stage {
            Stage::Tables => {
                // Results: BEGIN, lock, 5× CREATE, ALTER, INSERT, UPDATE, SELECT version, SELECT ext, COMMIT.
                let cell = |set: usize| {
                    sets.get(set).and_then(|s| s.rows.first()).and_then(|r| r.first().cloned().flatten())
                };
                let version = cell(10).and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse::<i64>().ok()));
                let Some(version) = version else {
                    return BootstrapStep::Failed("postgres schema bootstrap: no schema version row".to_string());
                };
                if version > SCHEMA_VERSION {
                    return BootstrapStep::Failed(format!(
                        "postgres schema {} is at klinegate schema version {version}, newer than this build's \
                         {SCHEMA_VERSION}; upgrade klinegate or point it at another schema",
                        self.schema.name()
                    ));
                }
                let timescale = cell(11).is_some_and(|b| b.as_ref() == b"t");
                if timescale {
                    self.stage = Stage::Hypertable { version };
                    BootstrapStep::Send(Request::Simple(hypertable_sql(&self.schema)))
                } else {
                    BootstrapStep::Done(SchemaInfo { version, hypertable: false })
                }
            }
            Stage::Hypertable { version } => BootstrapStep::Done(SchemaInfo { version, hypertable: true }),
        }
    }
}

fn tables_sql(s: &Schema) -> String {
    let name = s.name();
    let candles = s.table("candles");
    let version = s.table("klinegate_schema");
    let gaps = s.table("klinegate_gaps");
    let fence = s.table("klinegate_fence");
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({BOOTSTRAP_LOCK});
CREATE SCHEMA IF NOT EXISTS {name};
CREATE TABLE IF NOT EXISTS {candles} (
  series_id TEXT NOT NULL, candle_time BIGINT NOT NULL,
  open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL,
  close DOUBLE PRECISION NOT NULL, volume DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (series_id, candle_time));
CREATE TABLE IF NOT EXISTS {version} (
  id INT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, applied_at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS {gaps} (
  series_id TEXT NOT NULL PRIMARY KEY, from_time BIGINT NOT NULL, to_time BIGINT NOT NULL,
  reason TEXT NOT NULL, attempts INT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS {fence} (id INT PRIMARY KEY CHECK (id = 1), fence BIGINT NOT NULL);
ALTER TABLE {candles} ADD COLUMN IF NOT EXISTS quote_volume DOUBLE PRECISION,
  ADD COLUMN IF NOT EXISTS trades BIGINT, ADD COLUMN IF NOT EXISTS taker_buy_base_volume DOUBLE PRECISION,
  ADD COLUMN IF NOT EXISTS taker_buy_quote_volume DOUBLE PRECISION;
INSERT INTO {version} (id, version, applied_at_ms)
  VALUES (1, {SCHEMA_VERSION}, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT)
  ON CONFLICT (id) DO NOTHING;
UPDATE {version} SET version = {SCHEMA_VERSION},
  applied_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT WHERE id = 1 AND version < {SCHEMA_VERSION};
SELECT version FROM {version} WHERE id = 1;
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
COMMIT;"
    )
}

fn hypertable_sql(s: &Schema) -> String {
    let candles = s.table("candles");
    format!(
        "CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('{candles}', 'candle_time', chunk_time_interval => 2592000,
  if_not_exists => TRUE, migrate_data => TRUE);"
    )
}

/// The ingest leader's fence check, run first in every write transaction of
/// a node that holds the bus lease with `fence`: the highest fence that ever
/// wrote is kept, and a write under a lower one fails (`fenced …`), so a
/// deposed leader's late batch is refused by the database itself.
pub fn fence_statements(s: &Schema, fence: u64) -> Vec<super::conn::Statement> {
    use super::conn::{Param, Statement};
    let t = s.table("klinegate_fence");
    let f = i64::try_from(fence).unwrap_or(i64::MAX);
    vec![
        Statement::new(
            format!(
                "INSERT INTO {t} (id, fence) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET fence = GREATEST({t}.fence, EXCLUDED.fence)"
            ),
            vec![Param::I64(f)],
        ),
        Statement::new(
            format!(
                "SELECT CASE WHEN fence <= $1 THEN 1 ELSE ('fenced: a newer ingest leader (fence ' || fence || ') wrote; this node''s fence is ' || $1::text)::int END FROM {t} WHERE id = 1"
            ),
            vec![Param::I64(f)],
        ),
    ]
}

/// Drops the schema and everything in it (tests; never called by the store).
pub fn drop_schema_sql(s: &Schema) -> String {
    format!("DROP SCHEMA IF EXISTS {} CASCADE", s.name())
}
