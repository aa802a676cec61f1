//! Name resolution that never blocks the loop: `/etc/hosts`, then the nameservers of
//! `/etc/resolv.conf` over UDP on a `mio` socket registered with the shell's one `Poll`.
//!
//! It owns the whole lookup of a host name for the exchange connections (upstream
//! WebSockets, REST requests): the hosts table and the resolver configuration (re-read when
//! the file's mtime changes), the queries in flight (A and AAAA, ids matched to pending
//! lookups, source address checked), retries over servers and attempts, and an answer cache
//! with clamped TTLs plus a short negative cache for NXDOMAIN and "no address".
//! It never blocks, never sleeps and never starts a thread: an answer comes back through
//! [`Resolver::poll_answer`] after a readiness event or a deadline the shell waits for.
//!
//! Split like the rest of the shell:
//! - [`ResolverCore`] is sans-IO: time is an argument (`now: Instant`), datagrams go out
//!   through [`ResolverCore::poll_transmit`] and come in through
//!   [`ResolverCore::handle_datagram`]. Unit-tested with no socket and no clock.
//! - [`Resolver`] adds the sockets (one UDP socket per address family in use, bound to an
//!   ephemeral port) and the files.
//! - [`crate::wire::dns`] encodes queries and parses responses.
//!
//! Order, as glibc with `hosts: files dns`: IP literals never reach the resolver (the
//! connections skip it); then the hosts file (`localhost` is 127.0.0.1 and ::1 even when the
//! file does not say so); then the cache; then the nameservers. Per query (A and AAAA are
//! asked in parallel) the servers are tried in order, `attempts` rounds, each try waiting
//! `timeout`. A NOERROR or NXDOMAIN answer is final; SERVFAIL, REFUSED, a truncated or a
//! malformed answer moves on to the next server at once. When one family has addresses, the
//! other gets 50 ms more (RFC 8305's resolution delay), then the lookup completes with what
//! it has. The answer lists IPv4 addresses first, then IPv6 (a host without working IPv6
//! must not wait on a v6 connect first).
//!
//! Not done, by design: `search`/`domain`/`ndots` (names are sent as given: the exchange
//! hosts are fully qualified; a single-label name not in the hosts file is asked as is),
//! TCP fallback on a truncated answer (reported as an error: Binance's answers fit in 512
//! bytes), EDNS, DNSSEC, `options rotate`, and the `RES_OPTIONS` environment variable.
//! As an extension for tests and local resolvers, a `nameserver` line may carry a port
//! (`nameserver 127.0.0.1:5353`, `nameserver [::1]:5353`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::wire::dns::{self as dns_wire, addresses_for, encode_query, parse_header, parse_response, QueryType, Rcode};

/// glibc's defaults (`RES_TIMEOUT`, `RES_DFLRETRY`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// glibc's bounds (`RES_MAXRETRANS` seconds, `RES_MAXRETRY` rounds, `MAXNS` servers).
const MAX_TIMEOUT_S: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;
const MAX_NAMESERVERS: usize = 3;
/// Positive answers are cached at least this long (a TTL of 0 would mean a lookup per
/// connection attempt) and at most this long (a changed address is picked up).
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(5);
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// NXDOMAIN and "no address" are remembered this long.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most names cached; beyond it the entry expiring first goes.
const MAX_CACHE_ENTRIES: usize = 1024;
/// Most lookups in flight; beyond it a lookup fails at once.
const MAX_PENDING_LOOKUPS: usize = 256;
/// RFC 8305 §3: after one family answered with addresses, wait this long for the other.
const RESOLUTION_DELAY: Duration = Duration::from_millis(50);
/// The hosts and resolv.conf files are checked for changes at most this often.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Datagrams read per readiness event before yielding to the rest of the loop.
const DATAGRAMS_PER_EVENT: usize = 256;
/// Largest datagram read; answers over 512 bytes come only with EDNS, which we do not send.
const RECV_BUFFER: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Configuration files
// ---------------------------------------------------------------------------------------------

/// What the resolver asks and how patiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// In order; never empty (127.0.0.1:53 when the file names none, as glibc).
    pub nameservers: Vec<SocketAddr>,
    /// Wait for one try (one server, one query).
    pub timeout: Duration,
    /// Rounds over all the servers.
    pub attempts: u32,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

impl ResolverConfig {
    /// The longest a lookup can take: every server, every round, the full timeout each.
    pub fn worst_case(&self) -> Duration {
        self.timeout * self.attempts * self.nameservers.len().max(1) as u32
    }
}

/// A parsed resolv.conf and the lines that were not understood (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    pub config: ResolverConfig,
    pub notes: Vec<String>,
}

/// Parses resolv.conf text: `nameserver` lines (at most 3, an optional port as an
/// extension), `options timeout:N attempts:N` (clamped to 1..=30 s and 1..=5, later options
/// win). `search`, `domain`, `sortlist` and other options are accepted and ignored.
/// Never fails: unusable lines become notes.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut config = ResolverConfig { nameservers: Vec::new(), ..ResolverConfig::default() };
    let mut notes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => match words.next().map(parse_nameserver) {
                Some(Some(addr)) if config.nameservers.len() < MAX_NAMESERVERS => config.nameservers.push(addr),
                Some(Some(addr)) => notes.push(format!("line {}: nameserver {addr} ignored (at most 3)", number + 1)),
                _ => notes.push(format!("line {}: unusable nameserver line {line:?}", number + 1)),
            },
            Some("options") => {
                for option in words {
                    apply_option(&mut config, option);
                }
            }
            _ => {}
        }
    }
    if config.nameservers.is_empty() {
        config.nameservers = ResolverConfig::default().nameservers;
    }
    ResolvConf { config, notes }
}

fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    word.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

fn apply_option(config: &mut ResolverConfig, option: &str) {
    let Some((name, value)) = option.split_once(':') else { return };
    let Ok(n) = value.parse::<u64>() else { return };
    match name {
        "timeout" => config.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_S)),
        "attempts" => config.attempts = n.clamp(1, MAX_ATTEMPTS as u64) as u32,
        _ => {}
    }
}

/// The hosts table: lowercase name → addresses in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    by_name: BTreeMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// Parses hosts-file text: `ADDRESS NAME [ALIASES...]` per line, `#` comments. Lines
    /// whose address does not parse (zone ids like `fe80::1%eth0` included) are skipped.
    pub fn parse(text: &str) -> Hosts {
        let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else { continue };
            for name in words {
                let addrs = by_name.entry(dns_wire::normalize(name)).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        Hosts { by_name }
    }

    /// The addresses of `name` (normalized), or the loopback pair for `localhost`.
    pub fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        if let Some(addrs) = self.by_name.get(name) {
            return Some(addrs.clone());
        }
        (name == "localhost").then(|| vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)])
    }
}

// ---------------------------------------------------------------------------------------------
// Answers, errors, figures
// ---------------------------------------------------------------------------------------------

/// Why a name has no addresses. `Display` is one line starting `resolving HOST: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// The name cannot be sent (empty label, bad character...).
    InvalidName { host: String, reason: String },
    /// The name does not exist.
    NxDomain { host: String },
    /// The name exists but has no A or AAAA record.
    NoAddresses { host: String },
    /// No server answered in time.
    TimedOut { host: String, after: Duration, tries: u32, timeout: Duration },
    /// Servers answered with errors (SERVFAIL, REFUSED, truncated, malformed), or a mix of
    /// errors and timeouts; `detail` lists them.
    Failed { host: String, detail: String },
    /// Too many lookups in flight.
    Busy { host: String },
}

impl DnsError {
    pub fn host(&self) -> &str {
        match self {
            DnsError::InvalidName { host, .. }
            | DnsError::NxDomain { host }
            | DnsError::NoAddresses { host }
            | DnsError::TimedOut { host, .. }
            | DnsError::Failed { host, .. }
            | DnsError::Busy { host } => host,
        }
    }

    /// A short word for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsError::InvalidName { .. } => "invalid_name",
            DnsError::NxDomain { .. } => "nxdomain",
            DnsError::NoAddresses { .. } => "no_addresses",
            DnsError::TimedOut { .. } => "timeout",
            DnsError::Failed { .. } => "failed",
            DnsError::Busy { .. } => "busy",
        }
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resolving {}: ", self.host())?;
        match self {
            DnsError::InvalidName { reason, .. } => f.write_str(reason),
            DnsError::NxDomain { .. } => f.write_str("no such name (NXDOMAIN)"),
            DnsError::NoAddresses { .. } => f.write_str("the name has no IPv4 or IPv6 address"),
            DnsError::TimedOut { after, tries, timeout, .. } => write!(
                f,
                "timed out after {:.1} s (no answer to {tries} tries of {} s each; check the nameservers in resolv.conf)",
                after.as_secs_f64(),
                timeout.as_secs()
            ),
            DnsError::Failed { detail, .. } => f.write_str(detail),
            DnsError::Busy { .. } => write!(f, "more than {MAX_PENDING_LOOKUPS} lookups in flight"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// The host was an IP address.
    Literal,
    Hosts,
    Cache,
    /// Asked the nameservers (whatever the result).
    Nameserver,
}

impl AnswerSource {
    pub fn name(self) -> &'static str {
        match self {
            AnswerSource::Literal => "literal",
            AnswerSource::Hosts => "hosts",
            AnswerSource::Cache => "cache",
            AnswerSource::Nameserver => "dns",
        }
    }
}

/// The end of one lookup, for every connection waiting on `host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Normalized: lowercase, no trailing dot.
    pub host: String,
    /// IPv4 first, then IPv6; never empty when `Ok`.
    pub result: Result<Vec<IpAddr>, DnsError>,
    pub source: AnswerSource,
    /// From the lookup's start to its answer (zero for hosts, cache, literals).
    pub elapsed: Duration,
}

impl Answer {
    /// One `key=value` log line.
    pub fn log_line(&self) -> String {
        let ms = self.elapsed.as_secs_f64() * 1e3;
        match &self.result {
            Ok(addrs) => {
                let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                format!("dns_resolved host={} source={} addrs={} ms={ms:.1}", self.host, self.source.name(), list.join(","))
            }
            Err(e) => format!(
                "dns_failed host={} source={} kind={} ms={ms:.1} error={:?}",
                self.host,
                self.source.name(),
                e.kind(),
                e.to_string()
            ),
        }
    }
}

/// Counters for `/metrics` (and one gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Names asked for (IP literals are not counted: they never reach the resolver).
    pub lookups: u64,
    /// Of those, answered from the hosts file.
    pub hosts_hits: u64,
    /// Of those, answered from the cache (positive or negative).
    pub cache_hits: u64,
    /// Datagrams sent to nameservers (each try of each query).
    pub queries_sent: u64,
    /// Lookups that ended without an address, whatever the reason (cached negatives too).
    pub failures: u64,
    /// Of those, NXDOMAIN answers from a server.
    pub nxdomain: u64,
    /// Tries that got no answer within the timeout.
    pub timeouts: u64,
    /// Server answers that were errors: SERVFAIL, REFUSED, truncated, malformed.
    pub server_errors: u64,
    /// Datagrams dropped: unknown id, wrong source address, wrong question, unparseable.
    pub ignored_datagrams: u64,
    /// Lookups in flight now.
    pub in_flight: u64,
}

/// A datagram the core wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
    /// The query id, to report a send error with [`ResolverCore::on_send_error`].
    pub id: u16,
}

// ---------------------------------------------------------------------------------------------
// The sans-IO core
// ---------------------------------------------------------------------------------------------

/// Lookups, retries and the cache, with time passed in. See the module docs.
pub struct ResolverCore {
    config: ResolverConfig,
    hosts: Hosts,
    cache: BTreeMap<String, CacheEntry>,
    lookups: BTreeMap<String, Lookup>,
    /// Query id → (host, index of the query in its lookup).
    by_id: BTreeMap<u16, (String, usize)>,
    ids: IdSource,
    transmits: VecDeque<Transmit>,
    answers: VecDeque<Answer>,
    stats: DnsStats,
}

struct CacheEntry {
    result: Result<Vec<IpAddr>, Negative>,
    expires: Instant,
}

#[derive(Clone, Copy)]
enum Negative {
    NxDomain,
    NoAddresses,
}

struct Lookup {
    started: Instant,
    /// A then AAAA.
    queries: [Query; 2],
    /// Set when one family has addresses and the other is still out (RFC 8305).
    settle_by: Option<Instant>,
}

struct Query {
    qtype: QueryType,
    /// Index into the (round, server) sequence: server `tries % n`, round `tries / n`.
    tries: u32,
    id: u16,
    sent_to: SocketAddr,
    deadline: Instant,
    outcome: Option<Outcome>,
    /// One line per failed try, for the final reason.
    failures: Vec<String>,
    timeouts: u32,
}

enum Outcome {
    Addresses { addrs: Vec<IpAddr>, ttl: u32 },
    NoData,
    NxDomain,
    Failed,
}

impl ResolverCore {
    /// `seed` feeds the query-id generator (any value; the shell mixes in time and pid).
    pub fn new(config: ResolverConfig, hosts: Hosts, seed: u64) -> ResolverCore {
        ResolverCore {
            config,
            hosts,
            cache: BTreeMap::new(),
            lookups: BTreeMap::new(),
            by_id: BTreeMap::new(),
            ids: IdSource::new(seed),
            transmits: VecDeque::new(),
            answers: VecDeque::new(),
            stats: DnsStats::default(),
        }
    }

    /// Replaces the configuration (resolv.conf changed). Lookups in flight keep their
    /// servers; the cache stays (its entries still expire on their own).
    pub fn set_config(&mut self, config: ResolverConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Replaces the hosts table (the file changed). Cached answers stay: the hosts table is
    /// consulted before the cache.
    pub fn set_hosts(&mut self, hosts: Hosts) {
        self.hosts = hosts;
    }

    /// Starts resolving `host` (a trailing dot and any case allowed). The answer comes out
    /// of [`poll_answer`](Self::poll_answer) under the returned normalized host: at once for
    /// a literal, a hosts entry, a cached answer or an invalid name; later for a query
    /// (one lookup per name: a second caller joins the first).
    pub fn lookup(&mut self, host: &str, now: Instant) -> String {
        let name = dns_wire::normalize(host);
        if let Ok(ip) = name.parse::<IpAddr>() {
            self.answer_now(&name, Ok(vec![ip]), AnswerSource::Literal);
            return name;
        }
        self.stats.lookups += 1;
        if let Some(addrs) = self.hosts.lookup(&name) {
            self.stats.hosts_hits += 1;
            self.answer_now(&name, Ok(order_families(addrs)), AnswerSource::Hosts);
        } else if let Some(result) = self.cached(&name, now) {
            self.stats.cache_hits += 1;
            self.answer_now(&name, result, AnswerSource::Cache);
        } else if self.lookups.contains_key(&name) {
            // Joins the lookup in flight.
        } else if let Err(e) = dns_wire::validate_host_name(&name) {
            let error = DnsError::InvalidName { host: name.clone(), reason: e.to_string() };
            self.answer_now(&name, Err(error), AnswerSource::Nameserver);
        } else if self.lookups.len() >= MAX_PENDING_LOOKUPS {
            self.answer_now(&name, Err(DnsError::Busy { host: name.clone() }), AnswerSource::Nameserver);
        } else {
            self.start_lookup(&name, now);
        }
        name
    }

    /// A datagram from `from`. Anything that is not the answer to a query in flight from
    /// the server it was sent to is counted and dropped.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok(header) = parse_header(bytes) else {
            self.stats.ignored_datagrams += 1;
            return;
        };
        let Some((host, index)) = self.by_id.get(&header.id).cloned() else {
            self.stats.ignored_datagrams += 1;
            return;
        };
        let Some(query) = self.lookups.get(&host).map(|l| &l.queries[index]) else {
            self.stats.ignored_datagrams += 1;
            return;
        };
        if query.sent_to != from || !header.is_response {
            self.stats.ignored_datagrams += 1;
            return;
        }
        let (qtype, server) = (query.qtype, query.sent_to);
        let response = match parse_response(bytes) {
            Ok(r) => r,
            Err(e) => return self.server_error(&host, index, format!("malformed answer from {server}: {e}"), now),
        };
        let echoes_question = response.questions.len() == 1
            && response.questions[0].name == host
            && response.questions[0].qtype == qtype.code();
        if !echoes_question {
            // Not an answer to what we asked: a stray or forged datagram. Keep waiting.
            self.stats.ignored_datagrams += 1;
            return;
        }
        if header.truncated {
            let reason = format!("answer from {server} truncated (TC) and TCP fallback is not supported");
            return self.server_error(&host, index, reason, now);
        }
        let outcome = match header.rcode {
            Rcode::NoError => match addresses_for(&response, &host, qtype) {
                Ok(a) if a.addrs.is_empty() => Outcome::NoData,
                Ok(a) => Outcome::Addresses { addrs: a.addrs, ttl: a.ttl },
                Err(e) => return self.server_error(&host, index, format!("answer from {server}: {e}"), now),
            },
            Rcode::NxDomain => {
                self.stats.nxdomain += 1;
                Outcome::NxDomain
            }
            rcode => return self.server_error(&host, index, format!("{rcode} from {server}"), now),
        };
        self.settle_query(&host, index, outcome, now);
    }

    /// Sending the datagram of query `id` failed (no route, socket error): that server
    /// counts as failed for this query and the next one is tried.
    pub fn on_send_error(&mut self, id: u16, reason: &str, now: Instant) {
        let Some((host, index)) = self.by_id.get(&id).cloned() else { return };
        let server = self.lookups.get(&host).map(|l| l.queries[index].sent_to);
        let reason = match server {
            Some(s) => format!("sending to {s}: {reason}"),
            None => reason.to_owned(),
        };
        self.server_error(&host, index, reason, now);
    }

    /// Retries tries whose deadline passed and completes lookups whose resolution delay
    /// is over. Cheap when nothing is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        let mut late = Vec::new();
        let mut settled = Vec::new();
        for (host, lookup) in &self.lookups {
            for (index, q) in lookup.queries.iter().enumerate() {
                if q.outcome.is_none() && q.deadline <= now {
                    late.push((host.clone(), index));
                }
            }
            if lookup.settle_by.is_some_and(|t| t <= now) {
                settled.push(host.clone());
            }
        }
        for (host, index) in late {
            self.stats.timeouts += 1;
            if let Some(q) = self.lookups.get_mut(&host).map(|l| &mut l.queries[index]) {
                q.timeouts += 1;
                let line = format!("no answer from {} within {} s", q.sent_to, self.config.timeout.as_secs());
                q.failures.push(line);
            }
            self.next_try(&host, index, now);
        }
        for host in settled {
            if self.lookups.contains_key(&host) {
                self.finish(&host, now);
            }
        }
    }

    /// The earliest deadline of a try or a resolution delay.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tries = self.lookups.values().flat_map(|l| l.queries.iter().filter(|q| q.outcome.is_none()).map(|q| q.deadline));
        tries.chain(self.lookups.values().filter_map(|l| l.settle_by)).min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// True when answers wait in [`poll_answer`](Self::poll_answer).
    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    pub fn stats(&self) -> DnsStats {
        DnsStats { in_flight: self.lookups.len() as u64, ..self.stats }
    }

    // --- lookups ---------------------------------------------------------------------------

    fn start_lookup(&mut self, host: &str, now: Instant) {
        let query = |qtype| Query {
            qtype,
            tries: 0,
            id: 0,
            sent_to: self.config.nameservers[0],
            deadline: now,
            outcome: None,
            failures: Vec::new(),
            timeouts: 0,
        };
        let lookup = Lookup { started: now, queries: [query(QueryType::A), query(QueryType::Aaaa)], settle_by: None };
        self.lookups.insert(host.to_owned(), lookup);
        for index in 0..2 {
            self.send_try(host, index, now);
        }
    }

    /// Sends query `index` of `host` to the server its try count names.
    fn send_try(&mut self, host: &str, index: usize, now: Instant) {
        let id = self.ids.fresh(|id| self.by_id.contains_key(&id));
        let servers = &self.config.nameservers;
        let Some(q) = self.lookups.get_mut(host).map(|l| &mut l.queries[index]) else { return };
        let server = servers[q.tries as usize % servers.len().max(1)];
        let payload = match encode_query(id, host, q.qtype) {
            Ok(p) => p,
            Err(e) => {
                // Unreachable after validate_host_name; fail the query rather than panic.
                q.failures.push(e.to_string());
                q.outcome = Some(Outcome::Failed);
                return self.maybe_finish(host, now);
            }
        };
        q.id = id;
        q.sent_to = server;
        q.deadline = now + self.config.timeout;
        self.by_id.insert(id, (host.to_owned(), index));
        self.stats.queries_sent += 1;
        self.transmits.push_back(Transmit { to: server, payload, id });
    }

    fn server_error(&mut self, host: &str, index: usize, reason: String, now: Instant) {
        self.stats.server_errors += 1;
        if let Some(q) = self.lookups.get_mut(host).map(|l| &mut l.queries[index]) {
            q.failures.push(reason);
        }
        self.next_try(host, index, now);
    }

    /// The current try of a query failed: try the next (server, round), or give up.
    fn next_try(&mut self, host: &str, index: usize, now: Instant) {
        let total = self.config.attempts.max(1) * self.config.nameservers.len().max(1) as u32;
        let Some(q) = self.lookups.get_mut(host).map(|l| &mut l.queries[index]) else { return };
        self.by_id.remove(&q.id);
        q.tries += 1;
        if q.tries < total {
            return self.send_try(host, index, now);
        }
        q.outcome = Some(Outcome::Failed);
        self.maybe_finish(host, now);
    }

    fn settle_query(&mut self, host: &str, index: usize, outcome: Outcome, now: Instant) {
        let Some(lookup) = self.lookups.get_mut(host) else { return };
        let q = &mut lookup.queries[index];
        self.by_id.remove(&q.id);
        q.outcome = Some(outcome);
        self.maybe_finish(host, now);
    }

    /// Finishes the lookup when both queries are settled; starts the resolution delay
    /// when only one is and it has addresses.
    fn maybe_finish(&mut self, host: &str, now: Instant) {
        let Some(lookup) = self.lookups.get_mut(host) else { return };
        let settled = lookup.queries.iter().filter(|q| q.outcome.is_some()).count();
        if settled == 2 {
            return self.finish(host, now);
        }
        let has_addrs = lookup.queries.iter().any(|q| matches!(q.outcome, Some(Outcome::Addresses { .. })));
        if has_addrs && lookup.settle_by.is_none() {
            lookup.settle_by = Some(now + RESOLUTION_DELAY);
        }
    }

    /// Ends the lookup with what its queries found, caches it, queues the answer.
    fn finish(&mut self, host: &str, now: Instant) {
        let Some(lookup) = self.lookups.remove(host) else { return };
        for q in lookup.queries.iter().filter(|q| q.outcome.is_none()) {
            self.by_id.remove(&q.id);
        }
        let result = self.combine(host, &lookup);
        match &result {
            Ok((addrs, ttl)) => {
                let ttl = Duration::from_secs(u64::from(*ttl)).clamp(MIN_CACHE_TTL, MAX_CACHE_TTL);
                self.store(host, Ok(addrs.clone()), now, ttl);
            }
            Err(DnsError::NxDomain { .. }) => self.store(host, Err(Negative::NxDomain), now, NEGATIVE_CACHE_TTL),
            Err(DnsError::NoAddresses { .. }) => self.store(host, Err(Negative::NoAddresses), now, NEGATIVE_CACHE_TTL),
            Err(_) => {}
        }
        let result = result.map(|(addrs, _)| addrs);
        if result.is_err() {
            self.stats.failures += 1;
        }
        let answer = Answer {
            host: host.to_owned(),
            result,
            source: AnswerSource::Nameserver,
            elapsed: now.saturating_duration_since(lookup.started),
        };
        self.answers.push_back(answer);
    }

    /// Addresses if any query found some (IPv4 first) with the smallest TTL; else the most
    /// telling error: NXDOMAIN, then "no address", then timeouts and server errors.
    fn combine(&self, host: &str, lookup: &Lookup) -> Result<(Vec<IpAddr>, u32), DnsError> {
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for q in &lookup.queries {
            if let Some(Outcome::Addresses { addrs: found, ttl: t }) = &q.outcome {
                addrs.extend_from_slice(found);
                ttl = ttl.min(*t);
            }
        }
        if !addrs.is_empty() {
            return Ok((order_families(addrs), ttl));
        }
        let host = host.to_owned();
        let outcomes = || lookup.queries.iter().map(|q| q.outcome.as_ref());
        if outcomes().any(|o| matches!(o, Some(Outcome::NxDomain))) {
            return Err(DnsError::NxDomain { host });
        }
        if outcomes().all(|o| matches!(o, Some(Outcome::NoData))) {
            return Err(DnsError::NoAddresses { host });
        }
        let failed: Vec<&Query> = lookup.queries.iter().filter(|q| matches!(q.outcome, Some(Outcome::Failed))).collect();
        let only_timeouts = failed.iter().all(|q| q.timeouts as usize == q.failures.len());
        if only_timeouts && failed.len() == 2 {
            let tries = failed.iter().map(|q| q.tries).max().unwrap_or(0);
            let after = lookup.queries.iter().map(|q| q.deadline).max().unwrap_or(lookup.started);
            return Err(DnsError::TimedOut {
                host,
                after: after.saturating_duration_since(lookup.started),
                tries,
                timeout: self.config.timeout,
            });
        }
        let detail = failed
            .iter()
            .map(|q| format!("{}: {}", q.qtype.name(), q.failures.join("; ")))
            .chain(lookup.queries.iter().filter(|q| matches!(q.outcome, Some(Outcome::NoData))).map(|q| format!("{}: no record", q.qtype.name())))
            .collect::<Vec<_>>()
            .join("; ");
        Err(DnsError::Failed { host, detail })
    }

    // --- cache -----------------------------------------------------------------------------

    fn cached(&mut self, host: &str, now: Instant) -> Option<Result<Vec<IpAddr>, DnsError>> {
        let entry = self.cache.get(host)?;
        if entry.expires <= now {
            self.cache.remove(host);
            return None;
        }
        let host = host.to_owned();
        Some(match &entry.result {
            Ok(addrs) => Ok(addrs.clone()),
            Err(Negative::NxDomain) => Err(DnsError::NxDomain { host }),
            Err(Negative::NoAddresses) => Err(DnsError::NoAddresses { host }),
        })
    }

    fn store(&mut self, host: &str, result: Result<Vec<IpAddr>, Negative>, now: Instant, ttl: Duration) {
        if self.cache.len() >= MAX_CACHE_ENTRIES && !self.cache.contains_key(host) {
            self.cache.retain(|_, e| e.expires > now);
            if self.cache.len() >= MAX_CACHE_ENTRIES {
                // Drop the entry that would expire first (ties: the smallest name).
                let first = self.cache.iter().min_by_key(|(k, e)| (e.expires, k.as_str())).map(|(k, _)| k.clone());
                if let Some(key) = first {
                    self.cache.remove(&key);
                }
            }
        }
        self.cache.insert(host.to_owned(), CacheEntry { result, expires: now + ttl });
    }

    fn answer_now(&mut self, host: &str, result: Result<Vec<IpAddr>, DnsError>, source: AnswerSource) {
        if result.is_err() {
            self.stats.failures += 1;
        }
        self.answers.push_back(Answer { host: host.to_owned(), result, source, elapsed: Duration::ZERO });
    }
}

/// IPv4 before IPv6, each in the order given.
fn order_families(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    addrs
}

/// Query ids: a xorshift64* stream, skipping ids in flight. Not cryptographic; the source
/// port is the kernel's random ephemeral one, and answers must also come from the server
/// asked and echo the question.
struct IdSource {
    state: u64,
}

impl IdSource {
    fn new(seed: u64) -> IdSource {
        IdSource { state: seed | 1 }
    }

    fn next(&mut self) -> u16 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as u16
    }

    /// An id for which `taken` is false (at most 256 lookups × 2 are in flight, so a free
    /// one is found within a few draws).
    fn fresh(&mut self, taken: impl Fn(u16) -> bool) -> u16 {
        loop {
            let id = self.next();
            if !taken(id) {
                return id;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shell part: files and sockets
// ---------------------------------------------------------------------------------------------

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
struct WatchedFile {
    path: PathBuf,
    /// `None` when the file could not be read.
    mtime: Option<SystemTime>,
    checked_at: Instant,
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
    hosts: WatchedFile,
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
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// True when the loop must not sleep: answers are waiting or a socket has more to read.
    pub fn wants_poll(&self) -> bool {
        self.core.has_answers() || self.read_pending.iter().any(|p| *p)
    }

    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.core.poll_answer()
    }

    /// Lines for the log about the configuration files (unreadable file, ignored line).
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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::dns::tests::{wire_name, ResponseBuilder, QNAME_AT};

    const NS1: &str = "10.0.0.1:53";
    const NS2: &str = "10.0.0.2:53";

    fn config(servers: &[&str], timeout_s: u64, attempts: u32) -> ResolverConfig {
        ResolverConfig {
            nameservers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            timeout: Duration::from_secs(timeout_s),
            attempts,
        }
    }

    fn core(servers: &[&str]) -> ResolverCore {
        ResolverCore::new(config(servers, 5, 2), Hosts::default(), 7)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn transmits(c: &mut ResolverCore) -> Vec<Transmit> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    fn answers(c: &mut ResolverCore) -> Vec<Answer> {
        std::iter::from_fn(|| c.poll_answer()).collect()
    }

    fn qtype_of(t: &Transmit) -> u16 {
        let n = t.payload.len();
        u16::from_be_bytes([t.payload[n - 4], t.payload[n - 3]])
    }

    /// An answer to `query` with one address record per item of `addrs` of its type.
    fn reply(query: &Transmit, rcode: u8, addrs: &[&str]) -> Vec<u8> {
        let mut b = ResponseBuilder::answering(&query.payload, rcode);
        for a in addrs {
            b = match ip(a) {
                IpAddr::V4(v4) if qtype_of(query) == 1 => b.record_at(QNAME_AT, 1, 120, &v4.octets()),
                IpAddr::V6(v6) if qtype_of(query) == 28 => b.record_at(QNAME_AT, 28, 60, &v6.octets()),
                _ => b,
            };
        }
        b.build()
    }

    fn answer_both(c: &mut ResolverCore, sent: &[Transmit], addrs: &[&str], now: Instant) {
        for t in sent {
            c.handle_datagram(t.to, &reply(t, 0, addrs), now);
        }
    }

    #[test]
    fn resolv_conf_nameservers_options_and_fallback() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver ::1 ; trailing\n\
                    nameserver 127.0.0.1:5353\nnameserver 10.0.0.9\nnameserver fe80::1%eth0\n\
                    options ndots:2 timeout:3 attempts:9 rotate\noptions timeout:0\n";
        let parsed = parse_resolv_conf(text);
        assert_eq!(
            parsed.config.nameservers,
            vec![sa("10.0.0.1:53"), sa("[::1]:53"), sa("127.0.0.1:5353")]
        );
        assert_eq!(parsed.config.timeout, Duration::from_secs(1), "later option wins, clamped to >= 1 s");
        assert_eq!(parsed.config.attempts, 5, "clamped to 5");
        assert_eq!(parsed.notes.len(), 2, "{:?}", parsed.notes);
        let empty = parse_resolv_conf("domain example.com\n");
        assert_eq!(empty.config, ResolverConfig::default(), "no nameserver: 127.0.0.1:53, 5 s, 2 attempts");
        assert_eq!(ResolverConfig::default().worst_case(), Duration::from_secs(10));
        assert_eq!(parse_resolv_conf("options timeout:99").config.timeout, Duration::from_secs(30));
    }

    #[test]
    fn hosts_file_parsing_and_localhost() {
        let hosts = Hosts::parse(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # comment\n10.1.2.3 Exchange.Test alias\n\
             fe80::1%lo0 weird\nnot-an-ip name\n10.1.2.4 exchange.test.\n",
        );
        assert_eq!(hosts.lookup("localhost"), Some(vec![ip("127.0.0.1"), ip("::1")]));
        assert_eq!(hosts.lookup("exchange.test"), Some(vec![ip("10.1.2.3"), ip("10.1.2.4")]));
        assert_eq!(hosts.lookup("alias"), Some(vec![ip("10.1.2.3")]));
        assert_eq!(hosts.lookup("weird"), None);
        assert_eq!(hosts.lookup("name"), None);
        assert_eq!(Hosts::default().lookup("localhost"), Some(vec![ip("127.0.0.1"), ip("::1")]));
    }

    #[test]
    fn literals_hosts_and_invalid_names_answer_at_once() {
        let mut c = ResolverCore::new(config(&[NS1], 5, 2), Hosts::parse("::2 both\n10.0.0.7 both\n"), 1);
        let now = Instant::now();
        assert_eq!(c.lookup("10.9.8.7", now), "10.9.8.7");
        assert_eq!(c.lookup("BOTH.", now), "both");
        c.lookup("bad name", now);
        let got = answers(&mut c);
        assert_eq!(got[0].result, Ok(vec![ip("10.9.8.7")]));
        assert_eq!(got[0].source, AnswerSource::Literal);
        assert_eq!(got[1].result, Ok(vec![ip("10.0.0.7"), ip("::2")]), "IPv4 first");
        assert_eq!(got[1].source, AnswerSource::Hosts);
        assert!(matches!(&got[2].result, Err(DnsError::InvalidName { .. })), "{:?}", got[2]);
        assert!(transmits(&mut c).is_empty(), "nothing sent");
        assert_eq!(c.stats().lookups, 2, "literals are not lookups");
    }

    #[test]
    fn a_and_aaaa_are_asked_in_parallel_and_combined() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        let host = c.lookup("fapi.binance.com", t0);
        let sent = transmits(&mut c);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent.iter().map(qtype_of).collect::<Vec<_>>(), vec![1, 28]);
        assert!(sent.iter().all(|t| t.to == sa(NS1)));
        assert_ne!(sent[0].id, sent[1].id);
        assert!(c.poll_answer().is_none());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        let t1 = t0 + Duration::from_millis(3);
        c.handle_datagram(sa(NS1), &reply(&sent[1], 0, &["2001:db8::5"]), t1);
        c.handle_datagram(sa(NS1), &reply(&sent[0], 0, &["13.1.1.1", "13.1.1.2"]), t1);
        let got = answers(&mut c);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host, host);
        assert_eq!(got[0].result, Ok(vec![ip("13.1.1.1"), ip("13.1.1.2"), ip("2001:db8::5")]));
        assert_eq!(got[0].elapsed, Duration::from_millis(3));
        assert!(c.poll_timeout().is_none());
        let s = c.stats();
        assert_eq!((s.lookups, s.queries_sent, s.failures, s.in_flight), (1, 2, 0, 0));
    }

    #[test]
    fn cache_honours_ttl_with_clamps() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("a.example", t0);
        let sent = transmits(&mut c);
        answer_both(&mut c, &sent, &["1.2.3.4"], t0); // A TTL 120 s, AAAA no data
        assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.2.3.4")]));
        c.lookup("A.EXAMPLE", t0 + Duration::from_secs(119));
        let hit = answers(&mut c);
        assert_eq!(hit[0].source, AnswerSource::Cache);
        assert!(transmits(&mut c).is_empty());
        c.lookup("a.example", t0 + Duration::from_secs(120));
        assert!(answers(&mut c).is_empty(), "expired: asked again");
        assert_eq!(transmits(&mut c).len(), 2);
        assert_eq!(c.stats().cache_hits, 1);

        // TTL 0 is clamped up to 5 s; 1 day down to 300 s.
        for (ttl, keep) in [(0u32, MIN_CACHE_TTL), (86_400, MAX_CACHE_TTL)] {
            let mut c = core(&[NS1]);
            c.lookup("b.example", t0);
            for t in transmits(&mut c) {
                let msg = if qtype_of(&t) == 1 {
                    ResponseBuilder::answering(&t.payload, 0).record_at(QNAME_AT, 1, ttl, &[9, 9, 9, 9]).build()
                } else {
                    reply(&t, 0, &[])
                };
                c.handle_datagram(t.to, &msg, t0);
            }
            answers(&mut c);
            c.lookup("b.example", t0 + keep - Duration::from_millis(1));
            assert_eq!(answers(&mut c).len(), 1, "cached just before {keep:?}");
            c.lookup("b.example", t0 + keep);
            assert!(answers(&mut c).is_empty(), "expired at {keep:?}");
        }
    }

    #[test]
    fn nxdomain_is_final_and_negatively_cached_briefly() {
        let mut c = core(&[NS1, NS2]);
        let t0 = Instant::now();
        c.lookup("nope.example", t0);
        let sent = transmits(&mut c);
        for t in &sent {
            c.handle_datagram(t.to, &reply(t, 3, &[]), t0);
        }
        let got = answers(&mut c);
        assert!(matches!(&got[0].result, Err(DnsError::NxDomain { .. })));
        assert_eq!(got[0].result.as_ref().unwrap_err().to_string(), "resolving nope.example: no such name (NXDOMAIN)");
        assert!(transmits(&mut c).is_empty(), "NXDOMAIN does not ask the next server");
        c.lookup("nope.example", t0 + NEGATIVE_CACHE_TTL - Duration::from_millis(1));
        assert_eq!(answers(&mut c)[0].source, AnswerSource::Cache);
        c.lookup("nope.example", t0 + NEGATIVE_CACHE_TTL);
        assert_eq!(transmits(&mut c).len(), 2, "negative entry expired");
        let s = c.stats();
        assert_eq!((s.nxdomain, s.failures), (2, 2));
    }

    #[test]
    fn timeouts_move_to_the_next_server_then_the_next_round() {
        let mut c = ResolverCore::new(config(&[NS1, NS2], 2, 2), Hosts::default(), 3);
        let t0 = Instant::now();
        c.lookup("slow.example", t0);
        let mut now = t0;
        let mut servers = Vec::new();
        for _ in 0..4 {
            let sent = transmits(&mut c);
            assert_eq!(sent.len(), 2);
            servers.push(sent[0].to);
            assert!(answers(&mut c).is_empty());
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now - Duration::from_millis(1));
            assert!(transmits(&mut c).is_empty(), "nothing before the deadline");
            c.handle_timeout(now);
        }
        assert_eq!(servers, vec![sa(NS1), sa(NS2), sa(NS1), sa(NS2)]);
        let got = answers(&mut c);
        let err = got[0].result.clone().unwrap_err();
        assert!(matches!(err, DnsError::TimedOut { tries: 4, .. }), "{err:?}");
        assert_eq!(now - t0, Duration::from_secs(8));
        assert!(err.to_string().starts_with("resolving slow.example: timed out after 8.0 s"), "{err}");
        assert_eq!(c.stats().timeouts, 8);
        assert!(c.poll_timeout().is_none());
        c.lookup("slow.example", now);
        assert_eq!(transmits(&mut c).len(), 2, "timeouts are not cached");
    }

    #[test]
    fn a_late_answer_from_the_first_server_is_ignored_after_moving_on() {
        let mut c = core(&[NS1, NS2]);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        let first = transmits(&mut c);
        c.handle_timeout(t0 + Duration::from_secs(5));
        let second = transmits(&mut c);
        assert!(second.iter().all(|t| t.to == sa(NS2)));
        answer_both(&mut c, &first, &["6.6.6.6"], t0 + Duration::from_secs(6));
        assert!(answers(&mut c).is_empty());
        assert_eq!(c.stats().ignored_datagrams, 2);
        answer_both(&mut c, &second, &["7.7.7.7"], t0 + Duration::from_secs(6));
        assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("7.7.7.7")]));
    }

    #[test]
    fn servfail_truncation_and_garbage_try_the_next_server_at_once() {
        let mut c = ResolverCore::new(config(&[NS1, NS2], 5, 1), Hosts::default(), 11);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        let sent = transmits(&mut c);
        // A: SERVFAIL; AAAA: truncated.
        c.handle_datagram(sa(NS1), &reply(&sent[0], 2, &[]), t0);
        c.handle_datagram(sa(NS1), &ResponseBuilder::answering(&sent[1].payload, 0).truncated().build(), t0);
        let retry = transmits(&mut c);
        assert_eq!(retry.len(), 2);
        assert!(retry.iter().all(|t| t.to == sa(NS2)));
        // Garbage after a valid header with the right id: malformed answer, no server left.
        for t in &retry {
            let mut msg = ResponseBuilder::answering(&t.payload, 0).build();
            msg[7] = 3;
            c.handle_datagram(sa(NS2), &msg, t0);
        }
        let got = answers(&mut c);
        let err = got[0].result.clone().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DnsError::Failed { .. }), "{err:?}");
        assert!(text.contains("SERVFAIL from 10.0.0.1:53"), "{text}");
        assert!(text.contains("truncated (TC) and TCP fallback is not supported"), "{text}");
        assert!(text.contains("malformed answer from 10.0.0.2:53"), "{text}");
        assert_eq!(c.stats().server_errors, 4);
    }

    #[test]
    fn forged_and_stray_datagrams_are_ignored() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        let sent = transmits(&mut c);
        // Wrong source, short garbage, unknown id, a query instead of a response, another name.
        c.handle_datagram(sa("10.6.6.6:53"), &reply(&sent[0], 0, &["6.6.6.6"]), t0);
        c.handle_datagram(sa(NS1), b"\x01\x02", t0);
        let mut unknown = reply(&sent[0], 0, &["6.6.6.6"]);
        unknown[0] ^= 0xff;
        unknown[1] ^= 0xff;
        c.handle_datagram(sa(NS1), &unknown, t0);
        c.handle_datagram(sa(NS1), &sent[0].payload, t0);
        let other = encode_query(sent[0].id, "y.example", QueryType::A).unwrap();
        c.handle_datagram(sa(NS1), &ResponseBuilder::answering(&other, 0).record_at(QNAME_AT, 1, 9, &[6, 6, 6, 6]).build(), t0);
        assert!(answers(&mut c).is_empty());
        assert_eq!(c.stats().ignored_datagrams, 5);
        answer_both(&mut c, &sent, &["1.1.1.1"], t0);
        assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.1.1.1")]));
    }

    #[test]
    fn cname_chain_answer_resolves_to_the_target_addresses() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("fapi.binance.com", t0);
        for t in transmits(&mut c) {
            let b = ResponseBuilder::answering(&t.payload, 0);
            let target_at = b.len() + 12;
            let b = b.record_at(QNAME_AT, 5, 60, &wire_name("d1.cloudfront.example"));
            let msg = if qtype_of(&t) == 1 { b.record_at(target_at, 1, 30, &[52, 1, 2, 3]).build() } else { b.build() };
            c.handle_datagram(t.to, &msg, t0);
        }
        assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("52.1.2.3")]));
    }

    #[test]
    fn one_family_answering_waits_the_resolution_delay_for_the_other() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        let sent = transmits(&mut c);
        c.handle_datagram(sa(NS1), &reply(&sent[0], 0, &["1.1.1.1"]), t0);
        assert_eq!(c.poll_timeout(), Some(t0 + RESOLUTION_DELAY));
        c.handle_timeout(t0 + RESOLUTION_DELAY);
        assert_eq!(answers(&mut c)[0].result, Ok(vec![ip("1.1.1.1")]));
        assert!(c.poll_timeout().is_none());
        // The AAAA answer arriving later is a stray.
        c.handle_datagram(sa(NS1), &reply(&sent[1], 0, &["::5"]), t0 + RESOLUTION_DELAY);
        assert_eq!(c.stats().ignored_datagrams, 1);
    }

    #[test]
    fn no_data_for_both_families_is_no_addresses() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("empty.example", t0);
        let sent = transmits(&mut c);
        answer_both(&mut c, &sent, &[], t0);
        assert!(matches!(answers(&mut c)[0].result, Err(DnsError::NoAddresses { .. })));
    }

    #[test]
    fn concurrent_lookups_of_one_name_share_the_queries() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        c.lookup("X.example.", t0);
        let sent = transmits(&mut c);
        assert_eq!(sent.len(), 2);
        answer_both(&mut c, &sent, &["1.1.1.1"], t0);
        assert_eq!(answers(&mut c).len(), 1, "one answer for every waiter of the name");
    }

    #[test]
    fn send_errors_fail_over_and_pending_lookups_are_bounded() {
        let mut c = ResolverCore::new(config(&[NS1, NS2], 5, 1), Hosts::default(), 5);
        let t0 = Instant::now();
        c.lookup("x.example", t0);
        for t in transmits(&mut c) {
            c.on_send_error(t.id, "Network is unreachable", t0);
        }
        assert!(transmits(&mut c).iter().all(|t| t.to == sa(NS2)));
        for i in 0..MAX_PENDING_LOOKUPS {
            c.lookup(&format!("h{i}.example"), t0);
        }
        assert!(matches!(answers(&mut c)[0].result, Err(DnsError::Busy { .. })));
        assert_eq!(c.stats().in_flight, MAX_PENDING_LOOKUPS as u64);
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = core(&[NS1]);
        let t0 = Instant::now();
        for i in 0..MAX_CACHE_ENTRIES + 10 {
            c.lookup(&format!("h{i}.example"), t0);
            let sent = transmits(&mut c);
            answer_both(&mut c, &sent, &["1.1.1.1"], t0 + Duration::from_millis(i as u64));
            answers(&mut c);
        }
        assert_eq!(c.cache.len(), MAX_CACHE_ENTRIES);
        assert!(!c.cache.contains_key("h0.example"), "the entry expiring first went");
    }

    // --- the shell part over loopback: a fake DNS server on a thread --------------------------

    use std::net::UdpSocket as StdUdpSocket;
    use std::sync::mpsc;

    /// What the fake server does with each query.
    #[derive(Clone, Copy)]
    enum Behaviour {
        Answer,
        Drop,
        NxDomain,
        Garbage,
    }

    /// A UDP DNS server on 127.0.0.1 answering `Behaviour` for `queries` datagrams; reports
    /// each query's type on the channel.
    fn fake_server(behaviour: Behaviour, queries: usize) -> (SocketAddr, mpsc::Receiver<u16>) {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for _ in 0..queries {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
                let query = Transmit { to: addr, payload: buf[..n].to_vec(), id: 0 };
                let _ = tx.send(qtype_of(&query));
                let msg = match behaviour {
                    Behaviour::Answer => reply(&query, 0, &["127.0.0.1", "::1"]),
                    Behaviour::Drop => continue,
                    Behaviour::NxDomain => reply(&query, 3, &[]),
                    Behaviour::Garbage => {
                        let mut m = reply(&query, 0, &["127.0.0.1"]);
                        m.truncate(m.len() - 3);
                        m
                    }
                };
                socket.send_to(&msg, from).unwrap();
            }
        });
        (addr, rx)
    }

    struct Loop {
        poll: mio::Poll,
        events: mio::Events,
        resolver: Resolver,
        dir: tempfile::TempDir,
    }

    const TOKENS: [Token; 2] = [Token(1), Token(2)];

    impl Loop {
        fn new(resolv_conf: &str, hosts: &str) -> Loop {
            let dir = tempfile::tempdir().unwrap();
            let files = ResolverFiles { resolv_conf: dir.path().join("resolv.conf"), hosts: dir.path().join("hosts") };
            std::fs::write(&files.resolv_conf, resolv_conf).unwrap();
            std::fs::write(&files.hosts, hosts).unwrap();
            let resolver = Resolver::new(&files, TOKENS, Instant::now());
            Loop { poll: mio::Poll::new().unwrap(), events: mio::Events::with_capacity(8), resolver, dir }
        }

        /// Runs the loop as the shell does until an answer comes (or 20 s).
        fn resolve(&mut self, host: &str) -> Answer {
            let start = Instant::now();
            self.resolver.lookup(host, self.poll.registry(), start);
            loop {
                if let Some(a) = self.resolver.poll_answer() {
                    return a;
                }
                let now = Instant::now();
                assert!(now - start < Duration::from_secs(20), "no answer for {host}");
                let wait = self.resolver.poll_timeout().map_or(Duration::from_millis(100), |t| t.saturating_duration_since(now));
                self.poll.poll(&mut self.events, Some(wait)).unwrap();
                let now = Instant::now();
                let ready: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
                for token in ready {
                    assert!(self.resolver.owns(token));
                    self.resolver.on_readable(token, self.poll.registry(), now);
                }
                self.resolver.handle_timeout(self.poll.registry(), now);
            }
        }
    }

    #[test]
    fn loopback_answer_nxdomain_and_garbage() {
        let (ok, seen) = fake_server(Behaviour::Answer, 2);
        let mut l = Loop::new(&format!("nameserver {ok}\noptions timeout:2 attempts:1\n"), "");
        let a = l.resolve("exchange.test");
        assert_eq!(a.result, Ok(vec![ip("127.0.0.1"), ip("::1")]), "{a:?}");
        assert_eq!(a.source, AnswerSource::Nameserver);
        let mut types: Vec<u16> = seen.try_iter().collect();
        types.sort();
        assert_eq!(types, vec![1, 28]);
        eprintln!("loopback resolution took {:?}", a.elapsed);
        assert!(a.log_line().starts_with("dns_resolved host=exchange.test source=dns addrs=127.0.0.1,::1"));
        assert_eq!(l.resolve("exchange.test").source, AnswerSource::Cache);

        let (nx, _) = fake_server(Behaviour::NxDomain, 2);
        let mut l = Loop::new(&format!("nameserver {nx}\n"), "");
        let a = l.resolve("missing.test");
        assert!(matches!(a.result, Err(DnsError::NxDomain { .. })), "{a:?}");

        let (garbage, _) = fake_server(Behaviour::Garbage, 2);
        let mut l = Loop::new(&format!("nameserver {garbage}\noptions attempts:1\n"), "");
        let a = l.resolve("garbage.test");
        let text = a.result.unwrap_err().to_string();
        assert!(text.contains("malformed answer"), "{text}");
        // A malformed answer does not wait for the timeout: no try timed out, the
        // server's error ended the lookup (counted, not waited for).
        let stats = l.resolver.stats();
        assert!(stats.timeouts == 0 && stats.server_errors >= 1, "{stats:?}");
    }

    #[test]
    fn loopback_dropped_query_times_out_to_the_next_server() {
        let (dead, dropped) = fake_server(Behaviour::Drop, 2);
        let (ok, _) = fake_server(Behaviour::Answer, 2);
        let mut l = Loop::new(&format!("nameserver {dead}\nnameserver {ok}\noptions timeout:1 attempts:1\n"), "");
        let a = l.resolve("exchange.test");
        assert_eq!(a.result, Ok(vec![ip("127.0.0.1"), ip("::1")]), "{a:?}");
        assert!(a.elapsed >= Duration::from_secs(1), "waited the first server's timeout: {:?}", a.elapsed);
        assert_eq!(dropped.try_iter().count(), 2);
        assert_eq!(l.resolver.stats().timeouts, 2);

        let (dead, _) = fake_server(Behaviour::Drop, 4);
        let mut l = Loop::new(&format!("nameserver {dead}\noptions timeout:1 attempts:2\n"), "");
        let a = l.resolve("exchange.test");
        let err = a.result.unwrap_err();
        assert!(matches!(err, DnsError::TimedOut { tries: 2, .. }), "{err:?}");
    }

    #[test]
    fn loopback_hosts_file_and_its_reload() {
        let (ok, seen) = fake_server(Behaviour::Answer, 2);
        let mut l = Loop::new(&format!("nameserver {ok}\n"), "10.1.1.1 exchange.test\n");
        let a = l.resolve("exchange.test");
        assert_eq!((a.result, a.source), (Ok(vec![ip("10.1.1.1")]), AnswerSource::Hosts));
        assert_eq!(l.resolve("localhost").result, Ok(vec![ip("127.0.0.1"), ip("::1")]));
        assert!(seen.try_recv().is_err(), "no query sent");
        // Rewrite the file with a different mtime; a check happens at most once a second.
        let path = l.dir.path().join("hosts");
        std::fs::write(&path, "10.2.2.2 exchange.test\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
        l.resolver.hosts.checked_at -= FILE_CHECK_EVERY;
        assert_eq!(l.resolve("exchange.test").result, Ok(vec![ip("10.2.2.2")]));
    }

    #[test]
    fn missing_files_mean_defaults_and_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResolverFiles { resolv_conf: dir.path().join("none"), hosts: dir.path().join("none2") };
        let mut r = Resolver::new(&files, TOKENS, Instant::now());
        assert_eq!(r.config(), &ResolverConfig::default());
        let notes: Vec<String> = std::iter::from_fn(|| r.poll_note()).collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("dns_config_unreadable"));
    }
}
