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


mod answer;
mod config;
mod lookup;
mod resolver;
#[cfg(test)]
mod tests;

pub use answer::*;
pub use config::*;
pub use lookup::*;
pub use resolver::*;
