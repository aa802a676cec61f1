//! DNS messages on the wire (RFC 1035; AAAA from RFC 3596): one query built, one response
//! read. Pure functions of bytes, used by [`crate::shell::dns`].
//!
//! It owns the byte layout only: header flags, names (with compression pointers), question
//! and answer records, and following a CNAME chain inside one answer. It never opens a
//! socket, never reads a clock and never decides what to do with an answer (retry, cache,
//! which server): that is the resolver's job.
//!
//! Every response is untrusted: whatever the bytes, parsing returns a typed [`WireError`]
//! and never panics. Compression pointers cannot loop: each one must point before the start
//! of the labels that contain it, so the reader always moves towards the start of the
//! message, and a name is at most 255 bytes.

use std::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire (length bytes included), RFC 1035 §2.3.4.
const MAX_NAME_WIRE_LEN: usize = 255;
/// Longest label, RFC 1035 §2.3.4.
const MAX_LABEL_LEN: usize = 63;
/// CNAMEs followed inside one answer before giving up (real chains are 1 to 3 long).
const MAX_CNAME_CHAIN: usize = 8;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Header flag bits (second 16-bit word).
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;

/// The address record types the resolver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueryType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
}

impl QueryType {
    /// The type code on the wire.
    pub fn code(self) -> u16 {
        match self {
            QueryType::A => TYPE_A,
            QueryType::Aaaa => TYPE_AAAA,
        }
    }

    /// `"A"` or `"AAAA"`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            QueryType::A => "A",
            QueryType::Aaaa => "AAAA",
        }
    }
}

/// The response code of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    Other(u8),
}

impl Rcode {
    fn from_bits(bits: u8) -> Rcode {
        match bits {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            other => Rcode::Other(other),
        }
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rcode::NoError => f.write_str("NOERROR"),
            Rcode::FormErr => f.write_str("FORMERR"),
            Rcode::ServFail => f.write_str("SERVFAIL"),
            Rcode::NxDomain => f.write_str("NXDOMAIN"),
            Rcode::NotImp => f.write_str("NOTIMP"),
            Rcode::Refused => f.write_str("REFUSED"),
            Rcode::Other(code) => write!(f, "RCODE {code}"),
        }
    }
}

/// Why a message could not be built or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The message ends before `what` is complete.
    Truncated { what: &'static str },
    /// A name breaks the rules: bad label type, pointer forward or looping, too long.
    BadName(String),
    /// A record's data does not fit its type (an A record that is not 4 bytes...).
    BadRecord(String),
    /// The CNAME chain in the answer loops or is longer than we follow.
    CnameChain(String),
    /// A host name we were asked to send is not a valid DNS name.
    InvalidName(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { what } => write!(f, "message ends inside the {what}"),
            WireError::BadName(why) => write!(f, "bad name: {why}"),
            WireError::BadRecord(why) => write!(f, "bad record: {why}"),
            WireError::CnameChain(why) => write!(f, "CNAME chain: {why}"),
            WireError::InvalidName(why) => write!(f, "invalid host name: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------------------------

/// Builds a standard query for `name` (`fapi.binance.com`, a trailing dot allowed) and
/// `qtype`, class IN, recursion desired, no EDNS. Errors when the name is not a valid
/// host name (empty label, label over 63 bytes, name over 253 characters, characters other
/// than letters, digits, `-` and `_`).
pub fn encode_query(id: u16, name: &str, qtype: QueryType) -> Result<Vec<u8>, WireError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    validate_host_name(name)?;
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    for count in [1u16, 0, 0, 0] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// Checks a host name (without its trailing dot) against the rules of [`encode_query`].
pub fn validate_host_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() {
        return Err(WireError::InvalidName("empty name".into()));
    }
    if name.len() > MAX_NAME_WIRE_LEN - 2 {
        return Err(WireError::InvalidName(format!("{} characters (at most 253)", name.len())));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(WireError::InvalidName(format!("{name:?} has an empty label")));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(WireError::InvalidName(format!("label {label:?} is over 63 bytes")));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(WireError::InvalidName(format!("{name:?} contains {c:?}")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// The fixed header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR: set in responses.
    pub is_response: bool,
    pub opcode: u8,
    /// TC: the answer did not fit the datagram.
    pub truncated: bool,
    pub rcode: Rcode,
    pub question_count: u16,
    pub answer_count: u16,
}

/// One question of a response (echoed from the query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lowercase, dotted, no trailing dot; `""` for the root.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Lowercase, dotted, no trailing dot.
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    /// Seconds; a TTL with the top bit set reads as 0 (RFC 2181 §8).
    pub ttl: u32,
    pub data: RecordData,
}

/// The data of the record types we use; anything else is kept as its type only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// The canonical name, lowercase, no trailing dot.
    Cname(String),
    Other,
}

/// A parsed response: the header, the questions and the answer section. The authority and
/// additional sections are not read (the resolver never needs them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
}

/// Reads the header only (enough to match the id to a pending query before parsing more).
pub fn parse_header(msg: &[u8]) -> Result<Header, WireError> {
    let word = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    if msg.len() < HEADER_LEN {
        return Err(WireError::Truncated { what: "header" });
    }
    let flags = word(2);
    Ok(Header {
        id: word(0),
        is_response: flags & FLAG_QR != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        truncated: flags & FLAG_TC != 0,
        rcode: Rcode::from_bits((flags & 0x000f) as u8),
        question_count: word(4),
        answer_count: word(6),
    })
}

/// Parses the header, the questions and the answers.
pub fn parse_response(msg: &[u8]) -> Result<Response, WireError> {
    let header = parse_header(msg)?;
    let mut reader = Reader { msg, pos: HEADER_LEN };
    // Counts come from the peer: no preallocation from them, every item needs bytes.
    let mut questions = Vec::new();
    for _ in 0..header.question_count {
        let name = reader.name()?;
        let qtype = reader.u16("question")?;
        let qclass = reader.u16("question")?;
        questions.push(Question { name, qtype, qclass });
    }
    let mut answers = Vec::new();
    for _ in 0..header.answer_count {
        answers.push(reader.record()?);
    }
    Ok(Response { header, questions, answers })
}

/// The addresses an answer gives for `qname` and `qtype`, the CNAME chain followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// In answer order; empty when the name exists without a record of that type.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the chain and the address records (seconds); 0 when empty.
    pub ttl: u32,
    /// The name the addresses belong to (`qname` itself when there was no CNAME).
    pub canonical: String,
}

/// Follows CNAMEs from `qname` (case-insensitive, trailing dot ignored) inside the answer
/// section and collects the class-IN records of `qtype` owned by the end of the chain.
/// Records for unrelated names are ignored (a resolver must not trust them). Errors when
/// the chain loops or is longer than 8.
pub fn addresses_for(response: &Response, qname: &str, qtype: QueryType) -> Result<Addresses, WireError> {
    let mut current = normalize(qname);
    let mut ttl = u32::MAX;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let cname = response.answers.iter().find_map(|r| match &r.data {
            RecordData::Cname(target) if r.class == CLASS_IN && r.name == current => Some((target, r.ttl)),
            _ => None,
        });
        let Some((target, cname_ttl)) = cname else { break };
        if seen.len() >= MAX_CNAME_CHAIN {
            return Err(WireError::CnameChain(format!("longer than {MAX_CNAME_CHAIN} from {qname}")));
        }
        if seen.contains(target) || *target == normalize(qname) {
            return Err(WireError::CnameChain(format!("loops at {target}")));
        }
        seen.push(current);
        ttl = ttl.min(cname_ttl);
        current = target.clone();
    }
    let mut addrs = Vec::new();
    let mut addr_ttl = u32::MAX;
    for record in response.answers.iter().filter(|r| r.class == CLASS_IN && r.name == current) {
        let addr = match (&record.data, qtype) {
            (RecordData::A(v4), QueryType::A) => IpAddr::V4(*v4),
            (RecordData::Aaaa(v6), QueryType::Aaaa) => IpAddr::V6(*v6),
            _ => continue,
        };
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        addr_ttl = addr_ttl.min(record.ttl);
    }
    let ttl = if addrs.is_empty() { 0 } else { ttl.min(addr_ttl) };
    Ok(Addresses { addrs, ttl, canonical: current })
}

/// Lowercase, without a trailing dot: the form names are compared in.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A cursor over a message. Every read is bounds-checked.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&[u8], WireError> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.msg.len());
        let Some(end) = end else { return Err(WireError::Truncated { what }) };
        let slice = &self.msg[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self) -> Result<String, WireError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }

    fn record(&mut self) -> Result<Record, WireError> {
        let name = self.name()?;
        let rtype = self.u16("record header")?;
        let class = self.u16("record header")?;
        let raw_ttl = self.u32("record header")?;
        let ttl = if raw_ttl > i32::MAX as u32 { 0 } else { raw_ttl };
        let rdlen = self.u16("record header")? as usize;
        let rdata_start = self.pos;
        let rdata = self.bytes(rdlen, "record data")?;
        let data = match rtype {
            TYPE_A => RecordData::A(Ipv4Addr::from(fixed::<4>(rdata, "A")?)),
            TYPE_AAAA => RecordData::Aaaa(Ipv6Addr::from(fixed::<16>(rdata, "AAAA")?)),
            TYPE_CNAME => {
                let (target, end) = read_name(self.msg, rdata_start)?;
                if end != rdata_start + rdlen {
                    return Err(WireError::BadRecord(format!("CNAME target does not fill its {rdlen} data bytes")));
                }
                RecordData::Cname(target)
            }
            _ => RecordData::Other,
        };
        Ok(Record { name, rtype, class, ttl, data })
    }
}

fn fixed<const N: usize>(data: &[u8], what: &str) -> Result<[u8; N], WireError> {
    data.try_into()
        .map_err(|_| WireError::BadRecord(format!("{what} record with {} data bytes (expected {N})", data.len())))
}

/// Reads the name at `start`. Returns it (lowercase, dotted) and the offset just after it
/// in place (after the first pointer when it is compressed).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut name = String::new();
    let mut pos = start;
    // Start of the run of labels being read: a pointer must go before it.
    let mut segment_start = start;
    let mut end_in_place: Option<usize> = None;
    let mut wire_len = 0usize;
    loop {
        let Some(&len) = msg.get(pos) else { return Err(WireError::Truncated { what: "name" }) };
        match len & 0xc0 {
            0x00 if len == 0 => {
                let end = end_in_place.unwrap_or(pos + 1);
                return Ok((name, end));
            }
            0x00 => {
                let len = len as usize;
                wire_len += len + 1;
                if wire_len + 1 > MAX_NAME_WIRE_LEN {
                    return Err(WireError::BadName("longer than 255 bytes".into()));
                }
                let Some(label) = msg.get(pos + 1..pos + 1 + len) else {
                    return Err(WireError::Truncated { what: "name" });
                };
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                pos += 1 + len;
            }
            0xc0 => {
                let Some(&low) = msg.get(pos + 1) else { return Err(WireError::Truncated { what: "name" }) };
                let target = (((len & 0x3f) as usize) << 8) | low as usize;
                if target >= segment_start {
                    return Err(WireError::BadName(format!(
                        "compression pointer at {pos} to {target} does not point backwards"
                    )));
                }
                end_in_place.get_or_insert(pos + 2);
                segment_start = target;
                pos = target;
            }
            _ => return Err(WireError::BadName(format!("unsupported label type 0x{len:02x}"))),
        }
    }
}

/// Appends a label in text form: lowercase ASCII; bytes that would be ambiguous in dotted
/// text (`.`, `\`, non-printable) are escaped as `\DDD` so they can never match a host name.
fn push_label(name: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
            name.push(b.to_ascii_lowercase() as char);
        } else {
            name.push_str(&format!("\\{b:03}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds responses by hand, the way a server lays them out, for tests here and in
    /// `dns.rs` (and the fake server of the loopback tests).
    pub(crate) struct ResponseBuilder {
        pub(crate) out: Vec<u8>,
        answers: u16,
    }

    impl ResponseBuilder {
        /// Header with QR|RD|RA, the given rcode, and the question echoed from `query`.
        pub(crate) fn answering(query: &[u8], rcode: u8) -> ResponseBuilder {
            let mut out = query.to_vec();
            out[2] = 0x81;
            out[3] = 0x80 | rcode;
            ResponseBuilder { out, answers: 0 }
        }

        pub(crate) fn truncated(mut self) -> Self {
            self.out[2] |= 0x02;
            self
        }

        /// A record owned by the name at `owner` (a pointer offset) with raw data.
        pub(crate) fn record_at(mut self, owner: u16, rtype: u16, ttl: u32, data: &[u8]) -> Self {
            self.out.extend_from_slice(&(0xc000 | owner).to_be_bytes());
            self.push_record_tail(rtype, ttl, data);
            self
        }

        /// A record whose owner is written out in full.
        pub(crate) fn record_named(mut self, owner: &str, rtype: u16, ttl: u32, data: &[u8]) -> Self {
            self.out.extend_from_slice(&wire_name(owner));
            self.push_record_tail(rtype, ttl, data);
            self
        }

        fn push_record_tail(&mut self, rtype: u16, ttl: u32, data: &[u8]) {
            self.out.extend_from_slice(&rtype.to_be_bytes());
            self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
            self.out.extend_from_slice(&ttl.to_be_bytes());
            self.out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            self.out.extend_from_slice(data);
            self.answers += 1;
            self.out[6..8].copy_from_slice(&self.answers.to_be_bytes());
        }

        /// Offset the next record will start at (to point at names inside it).
        pub(crate) fn len(&self) -> u16 {
            self.out.len() as u16
        }

        pub(crate) fn build(self) -> Vec<u8> {
            self.out
        }
    }

    pub(crate) fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// Offset of the question name in any message we build: right after the header.
    pub(crate) const QNAME_AT: u16 = HEADER_LEN as u16;

    #[test]
    fn query_layout_is_rfc_1035() {
        let q = encode_query(0xbeef, "fapi.binance.com.", QueryType::Aaaa).unwrap();
        let mut want = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x04fapi\x07binance\x03com\x00");
        want.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(q, want);
        let h = parse_header(&q).unwrap();
        assert_eq!((h.id, h.is_response, h.truncated, h.question_count), (0xbeef, false, false, 1));
    }

    #[test]
    fn query_refuses_invalid_names() {
        for bad in ["", ".", "a..b", "has space.com", "ünï.com", &"x".repeat(64), &["abc"; 70].join(".")] {
            assert!(matches!(encode_query(1, bad, QueryType::A), Err(WireError::InvalidName(_))), "{bad:?}");
        }
        assert!(encode_query(1, "_srv.a-b.C0M", QueryType::A).is_ok());
    }

    #[test]
    fn cname_chain_with_compression_is_followed() {
        // fapi.binance.com CNAME cdn.fapi.binance.com (its data: "cdn" + a pointer to the
        // question name), which CNAMEs edge.example (owner: a pointer into the first
        // record's data), which has two A records (owner: a pointer into the second's).
        let q = encode_query(7, "FAPI.binance.com", QueryType::A).unwrap();
        let mut cname1 = b"\x03cdn".to_vec();
        cname1.extend_from_slice(&(0xc000u16 | QNAME_AT).to_be_bytes());
        let b = ResponseBuilder::answering(&q, 0);
        let cdn_at = b.len() + 12; // owner pointer (2) + type, class, TTL, length (10)
        let b = b.record_at(QNAME_AT, TYPE_CNAME, 300, &cname1);
        let edge_at = b.len() + 12;
        let msg = b
            .record_at(cdn_at, TYPE_CNAME, 60, &wire_name("edge.example"))
            .record_at(edge_at, TYPE_A, 20, &[13, 32, 1, 9])
            .record_at(edge_at, TYPE_A, 40, &[13, 32, 1, 10])
            .record_named("unrelated.example", TYPE_A, 9999, &[6, 6, 6, 6])
            .build();
        let r = parse_response(&msg).unwrap();
        assert_eq!(r.questions[0].name, "fapi.binance.com");
        assert_eq!(r.answers[0].data, RecordData::Cname("cdn.fapi.binance.com".into()));
        let a = addresses_for(&r, "fapi.binance.com", QueryType::A).unwrap();
        assert_eq!(a.canonical, "edge.example");
        assert_eq!(a.addrs, vec!["13.32.1.9".parse::<IpAddr>().unwrap(), "13.32.1.10".parse().unwrap()]);
        assert_eq!(a.ttl, 20, "smallest TTL along the chain");
        let none = addresses_for(&r, "fapi.binance.com", QueryType::Aaaa).unwrap();
        assert!(none.addrs.is_empty());
    }

    #[test]
    fn aaaa_rcodes_truncation_and_ttl_top_bit() {
        let q = encode_query(9, "a.example", QueryType::Aaaa).unwrap();
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let msg = ResponseBuilder::answering(&q, 0).record_at(QNAME_AT, TYPE_AAAA, 0x8000_0001, &v6.octets()).build();
        let r = parse_response(&msg).unwrap();
        assert_eq!(r.answers[0].ttl, 0, "TTL with the top bit set reads as 0");
        assert_eq!(addresses_for(&r, "a.example.", QueryType::Aaaa).unwrap().addrs, vec![IpAddr::V6(v6)]);

        for (code, want) in [(2, Rcode::ServFail), (3, Rcode::NxDomain), (5, Rcode::Refused), (9, Rcode::Other(9))] {
            let h = parse_response(&ResponseBuilder::answering(&q, code).build()).unwrap().header;
            assert_eq!(h.rcode, want);
            assert!(h.is_response);
        }
        let h = parse_header(&ResponseBuilder::answering(&q, 0).truncated().build()).unwrap();
        assert!(h.truncated);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let q = encode_query(9, "a.example", QueryType::A).unwrap();
        assert!(matches!(parse_header(&q[..11]), Err(WireError::Truncated { .. })));
        // Answer count says 1, no answer bytes.
        let mut msg = ResponseBuilder::answering(&q, 0).build();
        msg[7] = 1;
        assert!(matches!(parse_response(&msg), Err(WireError::Truncated { .. })));
        // A record with 3 data bytes.
        let msg = ResponseBuilder::answering(&q, 0).record_at(QNAME_AT, TYPE_A, 5, &[1, 2, 3]).build();
        assert!(matches!(parse_response(&msg), Err(WireError::BadRecord(_))));
        // A pointer to itself, and one forwards.
        let mut msg = ResponseBuilder::answering(&q, 0).build();
        let at = msg.len() as u16;
        msg.extend_from_slice(&(0xc000 | at).to_be_bytes());
        msg.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        msg[7] = 1;
        assert!(matches!(parse_response(&msg), Err(WireError::BadName(_))));
        msg[at as usize + 1] = (at + 40) as u8;
        assert!(matches!(parse_response(&msg), Err(WireError::BadName(_))));
        // Label type 0x40.
        let mut msg = q.clone();
        msg[QNAME_AT as usize] = 0x41;
        assert!(matches!(parse_response(&msg), Err(WireError::BadName(_))));
    }

    #[test]
    fn two_pointers_that_point_at_each_other_are_refused() {
        // Name A at 12 = "x" + pointer to 16; name B at 16 = pointer to 12: each pointer is
        // "backwards" from itself for one of them, but the segment rule catches the loop.
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&[1, b'x', 0xc0, 16, 0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_response(&msg), Err(WireError::BadName(_))));
    }

    #[test]
    fn cname_loops_and_long_chains_are_errors() {
        let q = encode_query(1, "a.example", QueryType::A).unwrap();
        let msg = ResponseBuilder::answering(&q, 0)
            .record_named("a.example", TYPE_CNAME, 5, &wire_name("b.example"))
            .record_named("b.example", TYPE_CNAME, 5, &wire_name("a.example"))
            .build();
        let r = parse_response(&msg).unwrap();
        assert!(matches!(addresses_for(&r, "a.example", QueryType::A), Err(WireError::CnameChain(_))));
        let mut b = ResponseBuilder::answering(&q, 0).record_named("a.example", TYPE_CNAME, 5, &wire_name("c0.example"));
        for i in 0..12 {
            b = b.record_named(&format!("c{i}.example"), TYPE_CNAME, 5, &wire_name(&format!("c{}.example", i + 1)));
        }
        let r = parse_response(&b.build()).unwrap();
        assert!(matches!(addresses_for(&r, "a.example", QueryType::A), Err(WireError::CnameChain(_))));
    }

    #[test]
    fn odd_label_bytes_are_escaped_and_never_match_a_host() {
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&[3, b'a', b'.', 0x07, 3, b'c', b'o', b'm', 0, 0, 1, 0, 1]);
        let r = parse_response(&msg).unwrap();
        assert_eq!(r.questions[0].name, "a\\046\\007.com");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(r) = parse_response(&bytes) {
                let _ = addresses_for(&r, "fapi.binance.com", QueryType::A);
                let _ = addresses_for(&r, "fapi.binance.com", QueryType::Aaaa);
            }
            let _ = parse_header(&bytes);
        }

        #[test]
        fn mutated_real_responses_never_panic(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
            cut in 0usize..200,
        ) {
            let q = encode_query(42, "fapi.binance.com", QueryType::A).unwrap();
            let b = ResponseBuilder::answering(&q, 0);
            let at = b.len() + 12;
            let b = b.record_at(QNAME_AT, TYPE_CNAME, 60, &wire_name("edge.example"));
            let mut msg = b.record_at(at, TYPE_A, 30, &[1, 2, 3, 4]).build();
            for (i, v) in flips {
                let n = msg.len();
                msg[i % n] = v;
            }
            msg.truncate(cut.max(1).min(msg.len()));
            if let Ok(r) = parse_response(&msg) {
                let _ = addresses_for(&r, "fapi.binance.com", QueryType::A);
            }
        }

        #[test]
        fn valid_names_round_trip(labels in proptest::collection::vec("[a-z0-9_-]{1,20}", 1..6), id in any::<u16>()) {
            let name = labels.join(".");
            let q = encode_query(id, &name, QueryType::A).unwrap();
            let r = parse_response(&q).unwrap();
            prop_assert_eq!(r.header.id, id);
            prop_assert_eq!(&r.questions[0].name, &name);
        }
    }
}
