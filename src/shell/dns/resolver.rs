//! The shell part, [`Resolver`]: the UDP sockets registered with the loop's `mio::Poll`,
//! and the resolv.conf and hosts files (re-read when their mtime changes), around the
//! sans-IO [`super::ResolverCore`]. It never blocks, sleeps or starts a thread.

#[allow(unused_imports)]
use super::*;

/// Where the resolver reads its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverFiles {
    /// `/etc/resolv.conf` unless `--resolv-conf` says otherwise.
    pub resolv_conf: PathBuf,
    /// `/etc/hosts`.
    pub hosts: PathBuf,
}

impl Default for ResolverFiles {
    fn default() -> Self {
        ResolverFiles { resolv_conf: PathBuf::from("/etc/resolv.conf"), hosts: PathBuf::from("/etc/hosts") }
    }
}

/// A file re-read when its modification time changes, checked at most once a second.
pub(super) struct WatchedFile {
    path: PathBuf,
    /// `None` when the file could not be read.
    mtime: Option<SystemTime>,
    pub(super) checked_at: Instant,
}

impl WatchedFile {
    /// Reads the file now. `Err` carries the read error (the caller uses defaults).
    fn open(path: &Path, now: Instant) -> (WatchedFile, Result<String, String>) {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
        (WatchedFile { path: path.to_owned(), mtime, checked_at: now }, text)
    }

    /// `Some(text)` when the file changed since the last read (`Err` if it is now gone).
    fn changed(&mut self, now: Instant) -> Option<Result<String, String>> {
        if now.saturating_duration_since(self.checked_at) < FILE_CHECK_EVERY {
            return None;
        }
        self.checked_at = now;
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime == self.mtime {
            return None;
        }
        self.mtime = mtime;
        Some(std::fs::read_to_string(&self.path).map_err(|e| format!("{}: {e}", self.path.display())))
    }
}

/// The resolver the shell drives: [`ResolverCore`] plus the files and the UDP sockets.
///
/// Driving it: [`lookup`](Self::lookup) when a connection needs a name; on a readiness event
/// for one of its tokens ([`owns`](Self::owns)) call [`on_readable`](Self::on_readable);
/// once per loop turn call [`handle_timeout`](Self::handle_timeout) and drain
/// [`poll_answer`](Self::poll_answer); wait no longer than [`poll_timeout`](Self::poll_timeout),
/// and not at all while [`wants_poll`](Self::wants_poll).
pub struct Resolver {
    core: ResolverCore,
    resolv_conf: WatchedFile,
    pub(super) hosts: WatchedFile,
    /// IPv4 then IPv6; created on first use.
    sockets: [Option<UdpSocket>; 2],
    tokens: [Token; 2],
    /// A socket whose read budget ran out: read it again without waiting for an event.
    read_pending: [bool; 2],
    notes: VecDeque<String>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("config", self.core.config()).finish_non_exhaustive()
    }
}

impl Resolver {
    /// Reads both files (a missing one means defaults, noted for the log) and prepares the
    /// sockets' tokens (IPv4, IPv6). No socket is opened until the first query.
    pub fn new(files: &ResolverFiles, tokens: [Token; 2], now: Instant) -> Resolver {
        let mut notes = VecDeque::new();
        let (resolv_conf, text) = WatchedFile::open(&files.resolv_conf, now);
        let config = config_from(text, &mut notes);
        let (hosts, text) = WatchedFile::open(&files.hosts, now);
        let hosts_table = hosts_from(text, &mut notes);
        let seed = seed_from_environment();
        Resolver {
            core: ResolverCore::new(config, hosts_table, seed),
            resolv_conf,
            hosts,
            sockets: [None, None],
            tokens,
            read_pending: [false; 2],
            notes,
            buf: vec![0; RECV_BUFFER],
        }
    }

    /// Starts resolving `host`; returns the normalized name its [`Answer`] will carry.
    pub fn lookup(&mut self, host: &str, registry: &Registry, now: Instant) -> String {
        self.reload_changed_files(now);
        let name = self.core.lookup(host, now);
        self.flush(registry, now);
        name
    }

    /// True for the tokens of the resolver's sockets.
    pub fn owns(&self, token: Token) -> bool {
        self.tokens.contains(&token)
    }

    /// Reads the datagrams waiting on the socket of `token` (up to a budget).
    pub fn on_readable(&mut self, token: Token, registry: &Registry, now: Instant) {
        let Some(family) = self.tokens.iter().position(|t| *t == token) else { return };
        self.read_pending[family] = false;
        for _ in 0..DATAGRAMS_PER_EVENT {
            let Some(socket) = self.sockets[family].as_ref() else { return };
            match socket.recv_from(&mut self.buf) {
                Ok((n, from)) => self.core.handle_datagram(from, &self.buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.flush(registry, now),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error surfaced on the socket: the try will time out and move on.
                Err(_) => {}
            }
        }
        self.read_pending[family] = true;
        self.flush(registry, now);
    }

    /// Fires due retries and resolution delays; re-reads a socket whose budget ran out.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        for family in 0..2 {
            if self.read_pending[family] {
                self.on_readable(self.tokens[family], registry, now);
            }
        }
        self.core.handle_timeout(now);
        self.flush(registry, now);
    }

    /// The next deadline the loop must wake up for.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// True when the loop must not sleep: answers are waiting or a socket has more to read.
    pub fn wants_poll(&self) -> bool {
        self.core.has_answers() || self.read_pending.iter().any(|p| *p)
    }

    #[must_use = "drain until None"]
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.core.poll_answer()
    }

    /// Lines for the log about the configuration files (unreadable file, ignored line).
    #[must_use = "drain until None"]
    pub fn poll_note(&mut self) -> Option<String> {
        self.notes.pop_front()
    }

    pub fn stats(&self) -> DnsStats {
        self.core.stats()
    }

    pub fn config(&self) -> &ResolverConfig {
        self.core.config()
    }

    fn reload_changed_files(&mut self, now: Instant) {
        if let Some(text) = self.resolv_conf.changed(now) {
            let config = config_from(text, &mut self.notes);
            self.notes.push_back(format!("dns_config_reloaded nameservers={}", describe_servers(&config)));
            self.core.set_config(config);
        }
        if let Some(text) = self.hosts.changed(now) {
            let hosts = hosts_from(text, &mut self.notes);
            self.core.set_hosts(hosts);
        }
    }

    /// Sends every datagram the core queued. A send error fails that try (the core then
    /// queues the next one, sent by this same loop).
    fn flush(&mut self, registry: &Registry, now: Instant) {
        while let Some(t) = self.core.poll_transmit() {
            let family = usize::from(t.to.is_ipv6());
            let sent = self.socket(family, registry).and_then(|s| s.send_to(&t.payload, t.to));
            match sent {
                Ok(_) => {}
                // The socket buffer is full: the datagram is lost like any other, the try
                // times out and the next one goes.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => self.core.on_send_error(t.id, &e.to_string(), now),
            }
        }
    }

    fn socket(&mut self, family: usize, registry: &Registry) -> io::Result<&UdpSocket> {
        if self.sockets[family].is_none() {
            let any: SocketAddr = if family == 0 {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let mut socket = UdpSocket::bind(any)?;
            registry.register(&mut socket, self.tokens[family], Interest::READABLE)?;
            self.sockets[family] = Some(socket);
        }
        self.sockets[family].as_ref().ok_or_else(|| io::Error::other("no socket"))
    }
}

fn config_from(text: Result<String, String>, notes: &mut VecDeque<String>) -> ResolverConfig {
    match text {
        Ok(text) => {
            let parsed = parse_resolv_conf(&text);
            notes.extend(parsed.notes.into_iter().map(|n| format!("dns_config_note {n}")));
            parsed.config
        }
        Err(e) => {
            notes.push_back(format!("dns_config_unreadable error={e:?} using=127.0.0.1:53"));
            ResolverConfig::default()
        }
    }
}

fn hosts_from(text: Result<String, String>, notes: &mut VecDeque<String>) -> Hosts {
    match text {
        Ok(text) => Hosts::parse(&text),
        Err(e) => {
            notes.push_back(format!("dns_hosts_unreadable error={e:?}"));
            Hosts::default()
        }
    }
}

/// `127.0.0.1:53,[::1]:53` for logs.
pub fn describe_servers(config: &ResolverConfig) -> String {
    config.nameservers.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
}

/// Seed for query ids: the wall clock's nanoseconds and the process id. Shell-only.
fn seed_from_environment() -> u64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}
