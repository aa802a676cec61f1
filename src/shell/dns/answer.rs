//! What a lookup gives back and what the resolver counts: [`Answer`] (with its log
//! line), [`DnsError`], [`AnswerSource`], [`DnsStats`], and the [`Transmit`] datagrams
//! the sans-IO core hands the shell. Values only; no I/O.

#[allow(unused_imports)]
use super::*;

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
