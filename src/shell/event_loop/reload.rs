//! `SIGHUP`: reloads what can change without a restart. The signal writes a
//! byte into a pipe of its own that the loop polls (no thread, never blocks);
//! the loop then re-reads the configuration layers exactly as at start (the
//! same command line and environment, the `--config` file and the whitelist
//! file read again) and, only when all of it is valid (the TLS certificate
//! and key included), applies it:
//! - the whitelist and the engine's limits go to the core as one journaled
//!   `Input::Reload` (a replay reloads at the same point);
//! - the log level, the connection limits, the idle timeout and the client
//!   TLS certificate (new connections use it) change in the shell.
//!
//! A bad file changes nothing and logs ONE line saying why
//! (`config_reload_failed`). Settings that need a restart are named in one
//! warning (`config_reload_needs_restart`) and keep their running values.
//!
//! Owns the reload pipe and the decision what to apply. Never touches the
//! core's state except through `Input::Reload`.

use super::{Server, RELOAD};
use crate::cli::run_config::{parse_run_config, RunConfig};
use crate::engine::reload::Reloadable;
use crate::engine::{Input, LogLevel};
use crate::shell::conn::tls_server::ServerTls;
use crate::shell::logger::Logger;
use mio::net::UnixStream;
use mio::{Interest, Poll};
use std::ffi::OsString;
use std::io::Read;

/// SIGHUP writes a byte into a pipe the loop polls.
pub(super) fn install_reload_pipe(poll: &Poll) -> Result<UnixStream, String> {
    let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("reload pipe: {e}"))?;
    read.set_nonblocking(true).map_err(|e| format!("reload pipe: {e}"))?;
    write.set_nonblocking(true).map_err(|e| format!("reload pipe: {e}"))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, write)
        .map_err(|e| format!("cannot install SIGHUP handler: {e}"))?;
    let mut read = UnixStream::from_std(read);
    poll.registry().register(&mut read, RELOAD, Interest::READABLE).map_err(|e| format!("reload pipe: {e}"))?;
    Ok(read)
}

/// A configuration that passed every check, ready to apply.
struct Prepared {
    cfg: RunConfig,
    tls: Option<ServerTls>,
    needs_restart: Vec<&'static str>,
}

impl Server {
    pub(super) fn on_reload_signal(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.reload_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        if self.shutdown_at.is_some() {
            return;
        }
        match self.prepare_reload() {
            Err(why) => self.log(LogLevel::Warn, &format!("config_reload_failed error={why:?} action=kept_running_settings")),
            Ok(p) => self.apply_reload(p),
        }
    }

    fn prepare_reload(&self) -> Result<Prepared, String> {
        let argv = std::iter::once(OsString::from("klinegate run")).chain(self.cfg.argv.iter().cloned());
        let cfg = parse_run_config(argv, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key, self.client_tls.is_some()) {
            (Some(cert), Some(key), true) => Some(ServerTls::from_pem_files(cert, key)?),
            _ => None,
        };
        let needs_restart = needs_restart(&self.cfg, &cfg);
        Ok(Prepared { cfg, tls, needs_restart })
    }

    fn apply_reload(&mut self, p: Prepared) {
        let Prepared { cfg: new, tls, needs_restart } = p;
        if !needs_restart.is_empty() {
            self.log(
                LogLevel::Warn,
                &format!("config_reload_needs_restart settings={:?} action=kept_running_values", needs_restart.join(",")),
            );
        }
        let old = &mut self.cfg;
        old.log_level = new.log_level;
        old.max_connections = new.max_connections;
        old.max_connections_per_ip = new.max_connections_per_ip;
        old.client_idle_timeout_s = new.client_idle_timeout_s;
        let s = &mut old.settings;
        s.pins.clone_from(&new.settings.pins);
        s.max_ondemand_jobs = new.settings.max_ondemand_jobs;
        s.idle_ttl_s = new.settings.idle_ttl_s;
        s.catchup_limit = new.settings.catchup_limit;
        s.client_max_backlog_bytes = new.settings.client_max_backlog_bytes;
        s.max_subscriptions_per_client = new.settings.max_subscriptions_per_client;
        s.max_client_messages_per_s = new.settings.max_client_messages_per_s;
        s.rest_weight_budget_spot = new.settings.rest_weight_budget_spot;
        s.rest_weight_budget_futures = new.settings.rest_weight_budget_futures;
        s.retention.clone_from(&new.settings.retention);
        self.logger = Logger::new(new.log_level, self.cfg.log_format);
        let tls_reloaded = tls.is_some();
        if let Some(tls) = tls {
            self.client_tls = Some(tls);
        }
        self.log(
            LogLevel::Info,
            &format!(
                "config_reload log_level={} max_connections={} max_connections_per_ip={} tls_reloaded={tls_reloaded}",
                level_name(new.log_level),
                new.max_connections,
                new.max_connections_per_ip
            ),
        );
        self.apply(Input::Reload { settings: Reloadable::of(&new.engine) });
    }
}

fn level_name(level: crate::cli::run_config::LogLevelSetting) -> &'static str {
    use crate::cli::run_config::LogLevelSetting as L;
    match level {
        L::Debug => "debug",
        L::Info => "info",
        L::Warn => "warn",
        L::Error => "error",
    }
}

/// Settings that differ but are only read at start.
fn needs_restart(old: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, changed: bool| {
        if changed {
            out.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("db", old.db != new.db);
    check("store_url", old.store != new.store);
    check("record", old.record != new.record);
    check("log_format", old.log_format != new.log_format);
    check("auth_token", old.auth_token != new.auth_token);
    check("cors_origins", old.cors_origins != new.cors_origins);
    check("tls_cert", old.tls_cert.is_some() != new.tls_cert.is_some());
    check("io_uring", old.io_uring != new.io_uring);
    let (a, b) = (&old.settings, &new.settings);
    check("role", a.role != b.role);
    check("derived", a.derived != b.derived);
    check("ondemand", a.ondemand != b.ondemand);
    check("spot_ws_url", a.spot_ws_url != b.spot_ws_url);
    check("futures_ws_url", a.futures_ws_url != b.futures_ws_url);
    check("batch_max", a.batch_max != b.batch_max);
    check("flush_ms", a.flush_ms != b.flush_ms);
    check("forming_interval_ms", a.forming_interval_ms != b.forming_interval_ms);
    check("heal", a.heal != b.heal);
    check("streams_per_connection", a.streams_per_connection != b.streams_per_connection);
    check("rng_seed", a.rng_seed != b.rng_seed);
    check("bus_url", old.bus != new.bus);
    out
}
