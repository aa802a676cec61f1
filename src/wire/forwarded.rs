//! Who the client is behind a reverse proxy: address ranges (`--trusted-proxy
//! CIDR`) and the client address a request's `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` header names.
//!
//! Only proxies the operator trusts may speak for a client: the chain of
//! addresses (the header's, then the socket peer's) is walked from the right,
//! skipping trusted proxies; the first address that is not one is the client.
//! A client cannot forge its way past that, since the trusted proxy appends
//! the address it saw. Pure functions of values; never touches a socket.

use core::net::IpAddr;
use std::fmt;

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { net: mask(net, prefix), prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a dual-stack socket reports.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// The client a request comes from when its socket peer is a trusted proxy:
/// `headers` are `(lowercase name, value)` pairs in order. `None` when the peer
/// is not trusted, when no forwarding header is present, or when the first
/// untrusted hop is not an address (`unknown`, an obfuscated name): then the
/// connection is not charged to any client address.
pub fn client_address(peer: IpAddr, headers: &[(String, String)], trusted: &[Cidr]) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let forwarded: Vec<&str> = headers.iter().filter(|(n, _)| n == "forwarded").map(|(_, v)| v.as_str()).collect();
    let hops: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
        forwarded.iter().flat_map(|v| v.split(',')).map(forwarded_for).collect()
    } else {
        headers
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .flat_map(|(_, v)| v.split(','))
            .map(|hop| node_address(hop.trim()))
            .collect()
    };
    if hops.is_empty() {
        return None;
    }
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => continue,
            Some(ip) => return Some(unmap(*ip)),
            None => return None,
        }
    }
    // Every hop is a trusted proxy: the leftmost is the origin.
    hops.first().copied().flatten().map(unmap)
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| node_address(v.trim()))?
    })
}

/// An address as a proxy writes it: `192.0.2.60`, `192.0.2.60:4711`,
/// `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    let (ip, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<core::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn trusted() -> Vec<Cidr> {
        vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("127.0.0.1").unwrap()]
    }

    #[test]
    fn ranges_parse_and_match() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.9")), "v4-mapped peers match v4 ranges");
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8:1::5")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        for bad in ["", "10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = trusted();
        let xff = h(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(client_address(ip("127.0.0.1"), &xff, &t), Some(ip("198.51.100.7")));
        // A forged left part changes nothing.
        let forged = h(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(client_address(ip("10.0.0.1"), &forged, &t), Some(ip("198.51.100.7")));
        // Forwarded wins over X-Forwarded-For; ports, quotes and brackets are read.
        let fwd = h(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("forwarded", r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#),
        ]);
        assert_eq!(client_address(ip("127.0.0.1"), &fwd, &t), Some(ip("2001:db8:cafe::17")));
        let fwd = h(&[("forwarded", "for=\"192.0.2.60:8080\";by=10.0.0.1")]);
        assert_eq!(client_address(ip("127.0.0.1"), &fwd, &t), Some(ip("192.0.2.60")));
        // Every hop trusted: the leftmost.
        let inner = h(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]);
        assert_eq!(client_address(ip("127.0.0.1"), &inner, &t), Some(ip("10.0.0.7")));
    }

    #[test]
    fn no_answer_unless_a_trusted_proxy_names_an_address() {
        let t = trusted();
        let xff = h(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_address(ip("192.0.2.1"), &xff, &t), None, "an untrusted peer cannot speak for others");
        assert_eq!(client_address(ip("127.0.0.1"), &[], &t), None);
        assert_eq!(client_address(ip("127.0.0.1"), &h(&[("forwarded", "for=unknown")]), &t), None);
        assert_eq!(client_address(ip("127.0.0.1"), &h(&[("forwarded", "for=_hidden, for=10.0.0.3")]), &t), None);
        assert_eq!(client_address(ip("127.0.0.1"), &h(&[("x-forwarded-for", "")]), &t), None);
        assert_eq!(client_address(ip("127.0.0.1"), &xff, &[]), None);
    }
}
