//! The sans-IO resolver core, [`ResolverCore`]: lookups in flight, queries and their
//! retries over servers and attempts, the answer cache and the negative cache. Time is an
//! argument and datagrams are values: it never reads a clock or touches a socket.

#[allow(unused_imports)]
use super::*;

/// Lookups, retries and the cache, with time passed in. See the module docs.
pub struct ResolverCore {
    config: ResolverConfig,
    hosts: Hosts,
    pub(super) cache: BTreeMap<String, CacheEntry>,
    lookups: BTreeMap<String, Lookup>,
    /// Query id → (host, index of the query in its lookup).
    by_id: BTreeMap<u16, (String, usize)>,
    ids: IdSource,
    transmits: VecDeque<Transmit>,
    answers: VecDeque<Answer>,
    stats: DnsStats,
}

pub(super) struct CacheEntry {
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
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tries = self.lookups.values().flat_map(|l| l.queries.iter().filter(|q| q.outcome.is_none()).map(|q| q.deadline));
        tries.chain(self.lookups.values().filter_map(|l| l.settle_by)).min()
    }

    #[must_use = "drain until None"]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use = "drain until None"]
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
