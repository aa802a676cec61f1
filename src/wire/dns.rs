//! DNS messages on the wire (RFC 1035; AAAA from RFC 3596): one query built, one response
//! read. Pure functions of bytes, used by [`crate::shell::dns`].
//!
//! The byte layout (header, names with compression pointers, questions and records) is
//! `hickory-proto`'s codec. This module owns what klinegate needs on top of it: which host
//! names may be asked ([`validate_host_name`]), the plain types the resolver works with
//! (lowercase dotted names, the record data it uses, TTLs with the top bit set read as 0),
//! and following a CNAME chain inside one answer. It never opens a socket, never reads a
//! clock and never decides what to do with an answer (retry, cache, which server): that is
//! the resolver's job.
//!
//! Every response is untrusted: whatever the bytes, parsing returns a typed [`WireError`]
//! and never panics (hickory-proto refuses forward and looping compression pointers and
//! names over 255 bytes).

use std::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, Metadata, Query};
use hickory_proto::rr::{Label, Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

/// Bytes of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire (length bytes included), RFC 1035 §2.3.4.
const MAX_NAME_WIRE_LEN: usize = 255;
/// Longest label, RFC 1035 §2.3.4.
const MAX_LABEL_LEN: usize = 63;
/// CNAMEs followed inside one answer before giving up (real chains are 1 to 3 long).
const MAX_CNAME_CHAIN: usize = 8;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;


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
    /// Anything else the codec refused (a bad label type, an unknown class...).
    Malformed(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { what } => write!(f, "message ends inside the {what}"),
            WireError::BadName(why) => write!(f, "bad name: {why}"),
            WireError::BadRecord(why) => write!(f, "bad record: {why}"),
            WireError::CnameChain(why) => write!(f, "CNAME chain: {why}"),
            WireError::InvalidName(why) => write!(f, "invalid host name: {why}"),
            WireError::Malformed(why) => write!(f, "malformed message: {why}"),
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
    // Raw labels: the names validate_host_name lets through (`_srv`, `-x`) are sent as given.
    let labels = name.split('.').map(|l| Label::from_raw_bytes(l.as_bytes()));
    let labels = labels.collect::<Result<Vec<_>, _>>().map_err(|e| WireError::InvalidName(e.to_string()))?;
    let wire_name = Name::from_labels(labels).map_err(|e| WireError::InvalidName(e.to_string()))?;
    let rtype = match qtype {
        QueryType::A => RecordType::A,
        QueryType::Aaaa => RecordType::AAAA,
    };
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.queries.push(Query::query(wire_name, rtype));
    message.to_vec().map_err(|e| WireError::InvalidName(e.to_string()))
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
    let header = hickory_proto::op::Header::read(&mut BinDecoder::new(msg)).map_err(wire_error)?;
    Ok(plain_header(&header.metadata, header.counts.queries, header.counts.answers))
}

fn plain_header(meta: &Metadata, question_count: u16, answer_count: u16) -> Header {
    Header {
        id: meta.id,
        is_response: meta.message_type == MessageType::Response,
        opcode: u8::from(meta.op_code),
        truncated: meta.truncation,
        rcode: Rcode::from_bits((u16::from(meta.response_code) & 0x0f) as u8),
        question_count,
        answer_count,
    }
}

/// Parses the whole message; keeps the header, the questions and the answers.
pub fn parse_response(msg: &[u8]) -> Result<Response, WireError> {
    let message = Message::from_vec(msg).map_err(wire_error)?;
    let header = plain_header(&message.metadata, message.queries.len() as u16, message.answers.len() as u16);
    let questions = message
        .queries
        .iter()
        .map(|q| Question { name: text_name(q.name()), qtype: q.query_type().into(), qclass: q.query_class().into() })
        .collect();
    let answers = message.answers.iter().map(plain_record).collect();
    Ok(Response { header, questions, answers })
}

fn plain_record(r: &hickory_proto::rr::Record) -> Record {
    let data = match &r.data {
        RData::A(a) => RecordData::A(a.0),
        RData::AAAA(aaaa) => RecordData::Aaaa(aaaa.0),
        RData::CNAME(target) => RecordData::Cname(text_name(&target.0)),
        _ => RecordData::Other,
    };
    let ttl = if r.ttl > i32::MAX as u32 { 0 } else { r.ttl };
    Record { name: text_name(&r.name), rtype: r.record_type().into(), class: r.dns_class.into(), ttl, data }
}

fn wire_error(e: DecodeError) -> WireError {
    match e {
        DecodeError::InsufficientBytes => WireError::Truncated { what: "message" },
        DecodeError::PointerNotPriorToLabel { .. }
        | DecodeError::LabelBytesTooLong(_)
        | DecodeError::UnrecognizedLabelCode(_)
        | DecodeError::DomainNameTooLong(_) => WireError::BadName(e.to_string()),
        DecodeError::IncorrectRDataLengthRead { .. } => WireError::BadRecord(e.to_string()),
        _ => WireError::Malformed(e.to_string()),
    }
}

/// A name in text form: lowercase ASCII, dotted, no trailing dot; bytes that would be
/// ambiguous in dotted text (`.`, `\`, non-printable) are escaped as `\DDD` so they can never
/// match a host name.
fn text_name(name: &Name) -> String {
    let mut out = String::new();
    for label in name.iter() {
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b.to_ascii_lowercase() as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
    }
    out
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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TYPE_CNAME: u16 = 5;
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
        // hickory-proto reads the A record's 4 bytes inside its declared 3 and runs out.
        let short = parse_response(&msg);
        assert!(matches!(short, Err(WireError::BadRecord(_) | WireError::Truncated { .. })), "{short:?}");
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
