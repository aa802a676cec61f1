//! The `klinegate` command line: thin wiring around the library.
//! `replay` runs a journal through a fresh engine; `journal-from-capture`
//! turns a recorded Binance capture into a journal; `tail` watches a running
//! server; `export` writes a series' stored candles as CSV or Parquet.

use clap::{Parser, Subcommand};
use klinegate::replay::capture::{self, ConvertOptions};
use klinegate::replay::journal;
use klinegate::store::{MemoryStore, SqliteStore, Store};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "klinegate", version, about = "Deterministic Binance kline engine and market WebSocket server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: serve /ws/market and the HTTP API, ingest from Binance.
    /// `klinegate run --help` lists every setting.
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Replay a journal through a fresh engine and print its outputs as JSON lines.
    Replay {
        /// The journal (JSON lines, as written by `run --record` or a tool).
        journal: PathBuf,
        /// Compare the outputs with this file; exit 1 at the first difference.
        #[arg(long)]
        check: Option<PathBuf>,
        /// Write outputs here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Use a fresh SQLite file at this path instead of the in-memory store.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Print throughput figures to standard error.
        #[arg(long)]
        stats: bool,
    },
    /// Import candle history from a freqtrade data directory (json, jsongz, feather)
    /// into the SQLite store; re-importing is idempotent.
    ImportFreqtrade {
        /// freqtrade's datadir (spot files at its root, futures in futures/).
        #[arg(long)]
        datadir: PathBuf,
        /// Only these series (e.g. binance:spot:BTC/USDT:1m); default: every file found.
        #[arg(long = "series")]
        series: Vec<String>,
        /// The SQLite store to write (created if missing).
        #[arg(long, default_value = "./klinegate.db")]
        db: PathBuf,
    },
    /// Generate a large synthetic journal (many streams, realistic cadence) for
    /// benchmarks and profiling.
    GenJournal {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 500)]
        series: usize,
        #[arg(long, default_value_t = 1_000_000)]
        frames: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// spot, futures, mixed or mixed:PERCENT_FUTURES
        #[arg(long, default_value = "mixed")]
        markets: String,
    },
    /// Watch a running server: subscribe to one series on its /ws/market and print
    /// every candle as it comes (catch-up, then live closes and forming updates).
    Tail {
        /// The series, e.g. binance:spot:BTC/USDT:1m
        series: String,
        /// The server's WebSocket endpoint (ws:// or wss://).
        #[arg(long, default_value = "ws://127.0.0.1:8000/ws/market")]
        url: String,
        /// Catch up from this time (unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], UTC).
        #[arg(long, value_parser = klinegate::calendar::parse_time)]
        since: Option<i64>,
        /// The server's --auth-token (or env KLINEGATE_AUTH_TOKEN).
        #[arg(long, env = "KLINEGATE_AUTH_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A PEM certificate to trust for wss:// (a self-signed server).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Print the raw JSON frames instead of one line per candle.
        #[arg(long)]
        json: bool,
        /// Leave out forming updates.
        #[arg(long)]
        closed_only: bool,
        /// Exit 0 after this many closed candles.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Export one series' stored candles over a time range as CSV or Parquet.
    Export {
        /// The series, e.g. binance:spot:BTC/USDT:1m
        series: String,
        /// First candle time (unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], UTC).
        #[arg(long, value_parser = klinegate::calendar::parse_time)]
        from: i64,
        /// Last candle time, inclusive (same forms).
        #[arg(long, value_parser = klinegate::calendar::parse_time)]
        to: i64,
        /// csv or parquet
        #[arg(long, default_value = "csv", value_parser = klinegate::tools::export::Format::parse)]
        format: klinegate::tools::export::Format,
        /// The SQLite store to read.
        #[arg(long, default_value = "./klinegate.db")]
        db: PathBuf,
        /// Write here (default for csv: standard output; parquet needs it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// full: add the whole kline's columns (quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume; empty/null when unknown)
        #[arg(long, value_parser = ["full"])]
        fields: Option<String>,
    },
    /// Convert a recorded Binance capture (`<ts>: <frame>` lines) into a journal.
    JournalFromCapture {
        capture: PathBuf,
        /// Where to write the journal (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not add a client subscribed to every kline series.
        #[arg(long)]
        no_client: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { args } => return run(args),
        Command::Replay { journal, check, out, db, stats } => replay(journal, check, out, db, stats),
        Command::JournalFromCapture { capture, out, no_client } => convert(capture, out, no_client),
        Command::GenJournal { out, series, frames, clients, seed, markets } => {
            gen_journal(out, series, frames, clients, seed, &markets)
        }
        Command::Tail { series, url, since, token, cacert, json, closed_only, count } => {
            use klinegate::tools::tail::{exit_code, tail, TailOptions};
            let opts = TailOptions {
                series: &series,
                url: &url,
                since,
                token: token.as_deref(),
                cacert: cacert.as_deref(),
                json,
                closed_only,
                count,
            };
            return ExitCode::from(exit_code(tail(&opts, &mut std::io::stdout().lock())));
        }
        Command::Export { series, from, to, format, db, out, fields } => {
            let full = fields.is_some();
            let opts = klinegate::tools::export::ExportOptions { series: &series, from, to, format, db: &db, out: out.as_deref(), full };
            klinegate::tools::export::export(&opts).map(|n| {
                eprintln!("klinegate export: {n} candles");
                ExitCode::SUCCESS
            })
        }
        Command::ImportFreqtrade { datadir, series, db } => {
            klinegate::bootstrap::run_import_cli(&datadir, &series, &db).map(|summary| {
                println!("{summary}");
                ExitCode::SUCCESS
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("klinegate: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("klinegate run")).chain(args);
    let cfg = match klinegate::cli::run_config::parse_run_config(argv, &|k| std::env::var(k).ok()) {
        Ok(cfg) => cfg,
        Err(e) => {
            let code = e.exit_code();
            if code == 0 {
                println!("{e}");
            } else {
                eprintln!("klinegate: {e}");
            }
            return ExitCode::from(code);
        }
    };
    let server = match klinegate::shell::event_loop::Server::new(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("klinegate: {e}");
            return ExitCode::from(2);
        }
    };
    let code = server.run();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn open_store(db: Option<PathBuf>) -> Result<Box<dyn Store>, String> {
    match db {
        None => Ok(Box::new(MemoryStore::new())),
        Some(path) => {
            if path.exists() {
                return Err(format!("--db {}: file exists; replay needs a fresh store", path.display()));
            }
            SqliteStore::open(&path).map(|s| Box::new(s) as Box<dyn Store>).map_err(|e| e.to_string())
        }
    }
}

fn replay(
    path: PathBuf,
    check: Option<PathBuf>,
    out: Option<PathBuf>,
    db: Option<PathBuf>,
    stats: bool,
) -> Result<ExitCode, String> {
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let store = open_store(db)?;
    let started = std::time::Instant::now();
    if let Some(expected) = check {
        let mut actual = Vec::new();
        let (_, st) = journal::replay(BufReader::new(file), store, &mut actual).map_err(|e| e.to_string())?;
        report_stats(stats, &st, started);
        let exp = File::open(&expected).map_err(|e| format!("{}: {e}", expected.display()))?;
        return compare(BufReader::new(exp), &actual);
    }
    let sink: Box<dyn Write> = match out {
        Some(p) => Box::new(File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let (_, st) = journal::replay(BufReader::new(file), store, BufWriter::new(sink)).map_err(|e| e.to_string())?;
    report_stats(stats, &st, started);
    Ok(ExitCode::SUCCESS)
}

fn report_stats(on: bool, st: &journal::ReplayStats, started: std::time::Instant) {
    if on {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "records={} inputs={} timeouts={} output_lines={} seconds={:.3} records_per_s={:.0}",
            st.records,
            st.inputs,
            st.timeouts,
            st.output_lines,
            secs,
            st.records as f64 / secs
        );
    }
}

/// Line-by-line comparison; prints the first difference.
fn compare(expected: impl BufRead, actual: &[u8]) -> Result<ExitCode, String> {
    let mut act = actual.split(|b| *b == b'\n');
    for (i, exp) in expected.lines().enumerate() {
        let exp = exp.map_err(|e| e.to_string())?;
        let got = act.next().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
        if exp != got {
            println!("difference at output line {}:\n  expected: {exp}\n  actual:   {got}", i + 1);
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(extra) = act.find(|l| !l.is_empty()) {
        println!("actual output has more lines than expected; first extra:\n  {}", String::from_utf8_lossy(extra));
        return Ok(ExitCode::from(1));
    }
    println!("ok: outputs match");
    Ok(ExitCode::SUCCESS)
}

fn gen_journal(out: PathBuf, series: usize, frames: usize, clients: usize, seed: u64, markets: &str) -> Result<ExitCode, String> {
    use klinegate::replay::gen::{generate_journal, GenOptions, MarketMix};
    let markets = MarketMix::parse(markets).map_err(|e| format!("--markets: {e}"))?;
    let opts = GenOptions { series, frames, clients, seed, markets, ..GenOptions::default() };
    let file = File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stats = generate_journal(BufWriter::new(file), &opts).map_err(|e| e.to_string())?;
    eprintln!("{stats}");
    Ok(ExitCode::SUCCESS)
}

fn convert(path: PathBuf, out: Option<PathBuf>, no_client: bool) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cap = capture::parse_capture(&text).map_err(|e| e.to_string())?;
    let opts = ConvertOptions { subscribe_client: !no_client, ..ConvertOptions::default() };
    let sink: Box<dyn Write> = match out {
        Some(p) => Box::new(File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let series = capture::capture_to_journal(&cap, opts, BufWriter::new(sink)).map_err(|e| e.to_string())?;
    eprintln!("journal written: {} frames, series {}", cap.frames.len(), series.join(", "));
    Ok(ExitCode::SUCCESS)
}
