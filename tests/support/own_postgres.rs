//! A PostgreSQL server of the test process's own, started when none answers
//! on the configured address: `initdb` (trust auth) into a temporary
//! directory, `pg_ctl start` on a free loopback port, database `test`. One
//! per test process (shared by its tests, each on its own schema), stopped
//! and deleted by a watchdog shell once the process is gone. Needs the
//! Debian `postgresql` package (its binaries under /usr/lib/postgresql/*/bin);
//! as root, the server runs as the `postgres` user (initdb refuses root).
//!
//! Every wait is bounded; a failure is an `Err` with the reason, so the
//! caller skips (or fails under CI) with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The address of this process's own server, started on first use.
pub fn own_postgres() -> Result<SocketAddr, String> {
    static STARTED: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    STARTED.get_or_init(start).clone()
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL binaries (/usr/lib/postgresql: {e}); install the postgresql package"))?
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_string())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `bin` with `args` (as `postgres` when we are root); its output on failure.
fn run(bin: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(args).stdin(Stdio::null()).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn start() -> Result<SocketAddr, String> {
    let bin = bin_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("klinegate-pg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if is_root() {
        let ok = Command::new("chown").arg("postgres:").arg(&dir).status().is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("cannot give {} to the postgres user", dir.display()));
        }
    }
    let data = dir.join("data");
    let data_s = data.to_string_lossy().to_string();
    let dir_s = dir.to_string_lossy().to_string();
    run(&bin.join("initdb"), &["-A", "trust", "-U", "postgres", "-D", &data_s, "--no-sync"])?;
    let opts = format!("-p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c fsync=off");
    let log = dir.join("log").to_string_lossy().to_string();
    run(&bin.join("pg_ctl"), &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "30", "start"])?;
    // The watchdog: stop and delete the server once this test process is gone.
    let pg_ctl = bin.join("pg_ctl").to_string_lossy().to_string();
    let stop = if is_root() { format!("runuser -u postgres -- {pg_ctl}") } else { pg_ctl };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D '{data_s}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir_s}'",
        pid = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("watchdog: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|e| format!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("own PostgreSQL did not listen on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let port_s = port.to_string();
    run(&bin.join("createdb"), &["-h", "127.0.0.1", "-p", &port_s, "-U", "postgres", "test"])?;
    eprintln!("own PostgreSQL on {addr} (none answered on the configured address)");
    Ok(addr)
}
