//! Log lines to standard error: one line per event, `key=value` or JSON, with
//! the wall-clock time the shell read for this loop turn. The engine's own log
//! outputs arrive here already as `event key=value …` text. Never called per
//! market-data message (the engine logs rejects on powers of two only).

use crate::engine::LogLevel;
use crate::cli::run_config::{LogFormat, LogLevelSetting};
use std::io::Write;

pub struct Logger {
    min: LogLevel,
    format: LogFormat,
}

impl Logger {
    pub fn new(level: LogLevelSetting, format: LogFormat) -> Logger {
        let min = match level {
            LogLevelSetting::Debug => LogLevel::Debug,
            LogLevelSetting::Info => LogLevel::Info,
            LogLevelSetting::Warn => LogLevel::Warn,
            LogLevelSetting::Error => LogLevel::Error,
        };
        Logger { min, format }
    }

    pub fn enabled(&self, level: LogLevel) -> bool {
        level >= self.min
    }

    /// `line` is `event key=value …`.
    pub fn log(&self, unix_s: f64, level: LogLevel, line: &str) {
        if !self.enabled(level) {
            return;
        }
        let level_name = match level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        let text = match self.format {
            LogFormat::Kv => format!("ts={unix_s:.3} level={level_name} {line}\n"),
            LogFormat::Json => {
                let (event, rest) = line.split_once(' ').unwrap_or((line, ""));
                let v = serde_json::json!({"ts": unix_s, "level": level_name, "event": event, "fields": rest});
                format!("{v}\n")
            }
        };
        // A failed write to stderr is not worth dying for.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}
