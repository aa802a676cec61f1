//! The resolver's configuration files, parsed: `/etc/resolv.conf` (nameservers,
//! `timeout`, `attempts`) and `/etc/hosts`. Pure text in, values out; it never reads a
//! file itself (the shell part does) and never touches a socket or a clock.

#[allow(unused_imports)]
use super::*;

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
