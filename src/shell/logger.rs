//! Log lines to standard error: one line per event, `key=value` or JSON, with
//! the wall-clock time the shell read for this loop turn. The engine's own log
//! outputs arrive here already as `event key=value …` text. Never called per
//! market-data message (the engine logs rejects on powers of two only).
//!
//! JSON lines (`--log-format json`) are for log shippers: `ts` is RFC 3339 in
//! UTC with milliseconds, `level`, `event`, then every `key=value` of the line
//! as its own field with a plain value — a quoted Rust string unquoted, a
//! number as a JSON number, `true`/`false` as booleans, `Some(x)` as `x` and
//! `None` as `null` — so no consumer has to parse the text again.

use crate::cli::run_config::{LogFormat, LogLevelSetting};
use crate::calendar::rfc3339_millis;
use crate::engine::LogLevel;
use serde_json::{Map, Number, Value};
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
        let text = format_line(self.format, unix_s, level, line);
        // A failed write to stderr is not worth dying for.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// One finished log line, newline included.
pub fn format_line(format: LogFormat, unix_s: f64, level: LogLevel, line: &str) -> String {
    let level = level_name(level);
    match format {
        LogFormat::Kv => format!("ts={unix_s:.3} level={level} {line}\n"),
        LogFormat::Json => {
            let (event, rest) = line.split_once(' ').unwrap_or((line, ""));
            let mut obj = Map::new();
            obj.insert("ts".into(), Value::String(rfc3339_millis((unix_s * 1000.0).round() as i64)));
            obj.insert("level".into(), Value::String(level.into()));
            obj.insert("event".into(), Value::String(event.into()));
            for (key, value) in fields(rest) {
                // The three above are the envelope; a field of the same name keeps its value
                // under a prefixed key rather than overwriting them.
                let key = if matches!(key.as_str(), "ts" | "level" | "event") { format!("field_{key}") } else { key };
                obj.insert(key, value);
            }
            format!("{}\n", Value::Object(obj))
        }
    }
}

/// The `key=value` pairs of a line, in order. A value is a Rust-quoted string
/// (`"a \"b\""`, as `{:?}` prints it) or a bare token up to the next space. A
/// token without `=` is kept as `{"msg": …}` text so nothing is lost.
fn fields(rest: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stray = String::new();
    let mut s = rest.trim_start();
    while !s.is_empty() {
        let token_end = s.find([' ', '=']).unwrap_or(s.len());
        if s[token_end..].starts_with('=') && token_end > 0 {
            let key = s[..token_end].to_string();
            let after = &s[token_end + 1..];
            let (raw, tail) = if after.starts_with('"') { quoted(after) } else { bare(after) };
            out.push((key, raw));
            s = tail.trim_start();
        } else {
            let end = s.find(' ').unwrap_or(s.len());
            if !stray.is_empty() {
                stray.push(' ');
            }
            stray.push_str(&s[..end]);
            s = s[end..].trim_start();
        }
    }
    if !stray.is_empty() {
        out.push(("msg".to_string(), Value::String(stray)));
    }
    out
}

/// A bare value: up to the next space, except that `Some(...)` with spaces inside
/// (a Debug-printed option of a string) runs to its closing parenthesis.
fn bare(s: &str) -> (Value, &str) {
    if let Some(inner) = s.strip_prefix("Some(") {
        if inner.starts_with('"') {
            let (v, tail) = quoted(inner);
            let tail = tail.strip_prefix(')').unwrap_or(tail);
            return (v, tail);
        }
    }
    let end = s.find(' ').unwrap_or(s.len());
    (plain(&s[..end]), &s[end..])
}

/// A token's plain JSON value.
fn plain(token: &str) -> Value {
    if let Some(inner) = token.strip_prefix("Some(").and_then(|t| t.strip_suffix(')')) {
        return plain(inner);
    }
    match token {
        "None" => return Value::Null,
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = token.parse::<i64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = token.parse::<u64>() {
        return Value::Number(n.into());
    }
    let numeric = token.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'e' | b'E' | b'+'));
    if numeric {
        if let Some(n) = token.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(token.to_string())
}

/// A Rust `{:?}` string starting at `s[0] == '"'`: its text, and what follows the
/// closing quote. An unterminated string takes the rest of the line.
fn quoted(s: &str) -> (Value, &str) {
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (Value::String(out), &s[1 + i + 1..]),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, '0')) => out.push('\0'),
                Some((j, 'u')) => {
                    // \u{XXXX}
                    let rest = &s[1 + j + 1..];
                    if let Some(close) = rest.strip_prefix('{').and_then(|r| r.find('}')) {
                        let hex = &rest[1..1 + close];
                        if let Some(ch) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                            out.push(ch);
                        }
                        for _ in 0..close + 2 {
                            chars.next();
                        }
                    }
                }
                Some((_, other)) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    (Value::String(out), "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(line: &str) -> Value {
        let text = format_line(LogFormat::Json, 1_764_925_959.123, LogLevel::Warn, line);
        assert!(text.ends_with('\n'));
        serde_json::from_str(text.trim_end()).expect("one JSON object per line")
    }

    #[test]
    fn json_fields_carry_plain_values() {
        let v = json(r#"heal_failed series_id=binance:spot:BTC/USDT:1m candles=0 head_time=Some(1700000000) last=None ok=false ratio=0.25 error="HTTP 500: \"busy\"\n" reason=late_close"#);
        assert_eq!(v["ts"], "2025-12-05T09:12:39.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "heal_failed");
        assert_eq!(v["series_id"], "binance:spot:BTC/USDT:1m");
        assert_eq!(v["candles"], 0);
        assert_eq!(v["head_time"], 1_700_000_000_i64);
        assert_eq!(v["last"], Value::Null);
        assert_eq!(v["ok"], false);
        assert_eq!(v["ratio"], 0.25);
        assert_eq!(v["error"], "HTTP 500: \"busy\"\n");
        assert_eq!(v["reason"], "late_close");
        assert!(!text_of(&v).contains("Some("));
    }

    fn text_of(v: &Value) -> String {
        v.to_string()
    }

    #[test]
    fn odd_lines_lose_nothing_and_never_break_the_envelope() {
        let v = json(r#"weird stray words level=x id=Some("a b") s="unterminated \u{e9}"#);
        assert_eq!(v["level"], "warn");
        assert_eq!(v["field_level"], "x");
        assert_eq!(v["id"], "a b");
        assert_eq!(v["s"], "unterminated é");
        assert_eq!(v["msg"], "stray words");
        let v = json("lonely_event");
        assert_eq!(v["event"], "lonely_event");
        // Version-like tokens stay strings; negative and large numbers are numbers.
        let v = json("e v=1.2.3 n=-5 big=18446744073709551615");
        assert_eq!(v["v"], "1.2.3");
        assert_eq!(v["n"], -5);
        assert_eq!(v["big"], 18_446_744_073_709_551_615_u64);
    }

    #[test]
    fn kv_lines_are_unchanged() {
        let text = format_line(LogFormat::Kv, 12.3456, LogLevel::Info, "job_started series_id=x");
        assert_eq!(text, "ts=12.346 level=info job_started series_id=x\n");
    }
}
