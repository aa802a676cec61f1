//! `klinegate export SERIES --from T --to T --format csv|parquet`: the stored
//! candles of one series over a time range, for research. Reads the SQLite
//! store page by page (memory stays bounded whatever the range), so it can run
//! beside a live server (WAL readers do not block the writer).
//!
//! A tool, not part of the engine. CSV goes to `--out` or standard output;
//! Parquet (snappy-compressed, one row group per 64k rows) needs `--out`.
//! `--fields full` adds the whole kline's four columns (#15 §4): empty in
//! CSV and null in Parquet where the store has none.

use crate::calendar::rfc3339;
use crate::model::{Candle, SeriesId};
use crate::store::{SqliteStore, Store};
use crate::kline_ext::KlineExt;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use std::collections::BTreeMap;
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

/// Candles read from the store at a time.
const PAGE: usize = 10_000;
/// Rows per Parquet row group.
const ROW_GROUP: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            other => Err(format!("--format {other:?}: expected csv or parquet")),
        }
    }
}

pub struct ExportOptions<'a> {
    pub series: &'a str,
    pub from: i64,
    pub to: i64,
    pub format: Format,
    pub db: &'a Path,
    pub out: Option<&'a Path>,
    /// Add the whole kline's columns.
    pub full: bool,
}

/// Writes the export; the number of candles written.
pub fn export(opts: &ExportOptions<'_>) -> Result<u64, String> {
    SeriesId::parse(opts.series).map_err(|e| format!("{:?}: {e}", opts.series))?;
    if opts.from > opts.to {
        return Err(format!("--from ({}) is after --to ({})", rfc3339(opts.from), rfc3339(opts.to)));
    }
    if !opts.db.is_file() {
        return Err(format!("no database at {} (give --db PATH)", opts.db.display()));
    }
    let store = SqliteStore::open(opts.db).map_err(|e| format!("{}: {e}", opts.db.display()))?;
    let pages = Pages { store: &store, series: opts.series, next: opts.from, to: opts.to, full: opts.full };
    match opts.format {
        Format::Csv => match opts.out {
            Some(path) => {
                let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                write_csv(pages, &mut BufWriter::new(file))
            }
            None => write_csv(pages, &mut BufWriter::new(std::io::stdout().lock())),
        },
        Format::Parquet => {
            let path = opts.out.ok_or("--format parquet needs --out FILE")?;
            let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            write_parquet(pages, file).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// The range, one page of candles at a time, ascending.
struct Pages<'a> {
    store: &'a SqliteStore,
    series: &'a str,
    next: i64,
    to: i64,
    full: bool,
}

/// One page: the candles and, with `full`, the extra fields known for them.
type Page = (Vec<Candle>, BTreeMap<i64, KlineExt>);

impl Pages<'_> {
    fn next_page(&mut self) -> Result<Page, String> {
        if self.next > self.to {
            return Ok((Vec::new(), BTreeMap::new()));
        }
        let page = self.store.read_range(self.series, self.next, self.to, PAGE).map_err(|e| e.to_string())?;
        let ext = match (self.full, page.first(), page.last()) {
            (true, Some(a), Some(b)) => {
                let rows = self.store.read_ext(self.series, a.candle_time, b.candle_time).map_err(|e| e.to_string())?;
                rows.into_iter().collect()
            }
            _ => BTreeMap::new(),
        };
        self.next = page.last().map_or(i64::MAX, |c| c.candle_time.saturating_add(1));
        if page.len() < PAGE {
            self.next = i64::MAX;
        }
        Ok((page, ext))
    }
}

fn write_csv(mut pages: Pages<'_>, out: &mut dyn Write) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("writing: {e}");
    let full = pages.full;
    let extra = if full { ",quote_volume,trades,taker_buy_base_volume,taker_buy_quote_volume" } else { "" };
    writeln!(out, "candle_time,time,open,high,low,close,volume{extra}").map_err(io)?;
    let mut n = 0;
    loop {
        let (page, ext) = pages.next_page()?;
        if page.is_empty() {
            break;
        }
        for c in &page {
            write!(out, "{},{},{},{},{},{},{}", c.candle_time, rfc3339(c.candle_time), c.open, c.high, c.low, c.close, c.volume)
                .map_err(io)?;
            match (full, ext.get(&c.candle_time)) {
                (false, _) => writeln!(out),
                (true, Some(e)) => writeln!(
                    out,
                    ",{},{},{},{}",
                    e.quote_volume, e.trades, e.taker_buy_base_volume, e.taker_buy_quote_volume
                ),
                (true, None) => writeln!(out, ",,,,"),
            }
            .map_err(io)?;
        }
        n += page.len() as u64;
    }
    out.flush().map_err(io)?;
    Ok(n)
}

fn schema(full: bool) -> Arc<Schema> {
    let f = |name: &str, t: DataType| Field::new(name, t, false);
    let mut fields = vec![
        f("candle_time", DataType::Int64),
        f("open", DataType::Float64),
        f("high", DataType::Float64),
        f("low", DataType::Float64),
        f("close", DataType::Float64),
        f("volume", DataType::Float64),
    ];
    if full {
        let nullable = |name: &str, t: DataType| Field::new(name, t, true);
        fields.push(nullable("quote_volume", DataType::Float64));
        fields.push(nullable("trades", DataType::Int64));
        fields.push(nullable("taker_buy_base_volume", DataType::Float64));
        fields.push(nullable("taker_buy_quote_volume", DataType::Float64));
    }
    Arc::new(Schema::new(fields))
}

fn batch(schema: &Arc<Schema>, (candles, ext): &Page, full: bool) -> Result<RecordBatch, String> {
    let col = |f: fn(&Candle) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(candles.iter().map(f))) };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(candles.iter().map(|c| c.candle_time))),
        col(|c| c.open),
        col(|c| c.high),
        col(|c| c.low),
        col(|c| c.close),
        col(|c| c.volume),
    ];
    if full {
        let of = |c: &Candle| ext.get(&c.candle_time);
        let fcol = |f: fn(&KlineExt) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter(candles.iter().map(|c| of(c).map(f))))
        };
        columns.push(fcol(|e| e.quote_volume));
        columns.push(Arc::new(Int64Array::from_iter(
            candles.iter().map(|c| of(c).map(|e| i64::try_from(e.trades).unwrap_or(i64::MAX))),
        )));
        columns.push(fcol(|e| e.taker_buy_base_volume));
        columns.push(fcol(|e| e.taker_buy_quote_volume));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

fn write_parquet(mut pages: Pages<'_>, file: File) -> Result<u64, String> {
    let full = pages.full;
    let schema = schema(full);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_created_by(format!("klinegate {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
    let mut n = 0;
    loop {
        let page = pages.next_page()?;
        if page.0.is_empty() {
            break;
        }
        writer.write(&batch(&schema, &page, full)?).map_err(|e| e.to_string())?;
        n += page.0.len() as u64;
    }
    writer.close().map_err(|e| e.to_string())?;
    Ok(n)
}
