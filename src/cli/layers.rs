//! The layering of `klinegate run` settings: flag > environment > TOML file >
//! default, decided per setting, with the origin of every winning value kept so
//! an error names the flag and where its value came from.
//!
//! Owns: finding each setting's winning text and reading the `--config` file.
//! Never parses a setting's value (that is [`crate::cli::run_config`]) and never
//! reads the process environment itself (the caller injects a lookup).

use crate::cli::run_args::env_var_name;
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Settings whose value is a list: comma-separated in flags and the
/// environment, a TOML array (or a comma-separated string) in the file.
pub(super) const LIST_SETTINGS: &[&str] = &["pin", "derived", "cors_origins", "trusted_proxy"];

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

/// Where a setting's winning value came from.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    Flag,
    Env(String),
    File { path: PathBuf, key: String },
    Default,
}

impl Origin {
    pub(super) fn describe(&self) -> Option<String> {
        match self {
            Origin::Flag => None,
            Origin::Env(var) => Some(var.clone()),
            Origin::File { path, key } => Some(format!("{} key '{key}'", path.display())),
            Origin::Default => Some("the default".into()),
        }
    }
}

/// The parsed `--config` file: values keyed by clap id.
pub(super) struct FileLayer {
    path: PathBuf,
    /// Relative paths in the file are taken from here.
    pub(super) dir: PathBuf,
    values: BTreeMap<String, (String, toml::Value)>,
}

pub(super) struct Layers<'a> {
    pub(super) matches: &'a ArgMatches,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) file: Option<FileLayer>,
    /// Origin of every setting looked up so far, to attribute later errors.
    pub(super) origins: BTreeMap<String, Origin>,
}

impl Layers<'_> {
    /// The winning text of a setting: flag typed on the command line, else
    /// environment, else file, else clap's default. `None` when none has it.
    pub(super) fn take(&mut self, id: &str) -> Result<Option<String>, RunConfigError> {
        let found = self.lookup(id)?;
        if let Some((_, origin)) = &found {
            self.origins.insert(id.to_string(), origin.clone());
        }
        Ok(found.map(|(text, _)| text))
    }

    pub(super) fn lookup(&self, id: &str) -> Result<Option<(String, Origin)>, RunConfigError> {
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
    pub(super) fn given(&self, id: &str) -> bool {
        matches!(self.origins.get(id), Some(o) if !matches!(o, Origin::Default))
    }

    pub(super) fn invalid(&self, id: &str, reason: impl Into<String>) -> RunConfigError {
        invalid_at(id, reason.into(), self.origins.get(id).unwrap_or(&Origin::Flag))
    }

    /// A setting that always has a value (it has a default).
    pub(super) fn value<T>(&mut self, id: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, RunConfigError> {
        let text = self.take(id)?.ok_or_else(|| self.invalid(id, "no value given"))?;
        parse(&text).map_err(|reason| self.invalid(id, reason))
    }

    /// An optional setting; absent or empty means `None`.
    pub(super) fn optional(&mut self, id: &str) -> Result<Option<String>, RunConfigError> {
        Ok(self.take(id)?.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// An optional path; a relative path from the file is taken from the file's directory.
    pub(super) fn path(&mut self, id: &str) -> Result<Option<PathBuf>, RunConfigError> {
        let Some(text) = self.optional(id)? else { return Ok(None) };
        let path = PathBuf::from(text);
        match (&self.file, self.origins.get(id)) {
            (Some(file), Some(Origin::File { .. })) if path.is_relative() => Ok(Some(file.dir.join(path))),
            _ => Ok(Some(path)),
        }
    }

    /// A list setting: items trimmed, empty items dropped. `None` when not given anywhere.
    pub(super) fn list(&mut self, id: &str) -> Result<Option<Vec<String>>, RunConfigError> {
        Ok(self.take(id)?.map(|text| split_list(&text)))
    }

    pub(super) fn load_file(&mut self, path: &Path, known: &[String]) -> Result<(), RunConfigError> {
        let file = read_config_file(path, known).map_err(|reason| self.invalid("config", reason))?;
        self.file = Some(file);
        Ok(())
    }
}

pub(super) fn invalid_at(id: &str, reason: String, origin: &Origin) -> RunConfigError {
    RunConfigError::Invalid { flag: format!("--{}", id.replace('_', "-")), reason, from: origin.describe() }
}

pub(super) fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// A TOML value as the text a flag would carry.
pub(super) fn toml_text(value: &toml::Value, is_list: bool) -> Result<String, String> {
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

pub(super) fn read_config_file(path: &Path, known: &[String]) -> Result<FileLayer, String> {
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

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
