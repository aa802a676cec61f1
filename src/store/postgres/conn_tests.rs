//! [`PgConn`] against scripted server bytes: every authentication method
//! (SCRAM-SHA-256 verified by a real server-side computation), answers
//! matched in order around errors, disconnects, and the refusals of bad
//! server input. The same machine against the real server: `tests/pg_store.rs`.

use super::conn::*;
use super::url::parse_pg_url;
use crate::sans_io::SansIo;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

fn conn(url: &str) -> PgConn {
    let mut c = PgConn::new(parse_pg_url(url).unwrap(), 8);
    c.connected();
    c
}

/// One backend message.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(extra);
    msg(b'R', &b)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn key_data(pid: i32) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    b.extend_from_slice(&7i32.to_be_bytes());
    msg(b'K', &b)
}

fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        b.push(t);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    msg(b'E', &b)
}

fn data_row(cols: &[&[u8]]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend_from_slice(&(c.len() as i32).to_be_bytes());
        b.extend_from_slice(c);
    }
    msg(b'D', &b)
}

fn complete(tag: &str) -> Vec<u8> {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    msg(b'C', &b)
}

/// Frontend messages written since the startup message (tag, body).
fn sent_messages(c: &mut PgConn) -> Vec<(u8, Vec<u8>)> {
    let out = c.output().to_vec();
    c.advance_output(out.len());
    let mut i = 0;
    let mut v = Vec::new();
    while i < out.len() {
        let len = u32::from_be_bytes([out[i + 1], out[i + 2], out[i + 3], out[i + 4]]) as usize;
        v.push((out[i], out[i + 5..i + 1 + len].to_vec()));
        i += 1 + len;
    }
    v
}

fn drop_startup(c: &mut PgConn) {
    let n = u32::from_be_bytes([c.output()[0], c.output()[1], c.output()[2], c.output()[3]]) as usize;
    assert!(c.output()[8..n].windows(9).any(|w| w == b"klinegate"), "application_name in the startup");
    c.advance_output(n);
}

fn events(c: &mut PgConn) -> Vec<PgEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn trust_handshake_then_queued_requests_go_out() {
    let mut c = conn("postgres://u@h/db");
    let early = c.submit(Request::Simple("SELECT 1".into())).unwrap();
    drop_startup(&mut c);
    assert!(c.output().is_empty(), "nothing but the startup before ReadyForQuery");
    let mut bytes = auth(0, &[]);
    bytes.extend(key_data(4242));
    bytes.extend(msg(b'S', b"server_version\x0015\x00"));
    bytes.extend(ready());
    // Fed one byte at a time: framing survives any split.
    for b in &bytes {
        c.feed(std::slice::from_ref(b)).unwrap();
    }
    assert!(c.is_ready());
    assert_eq!(events(&mut c), vec![PgEvent::Ready { backend_pid: 4242 }]);
    let sent = sent_messages(&mut c);
    assert_eq!(sent, vec![(b'Q', b"SELECT 1\0".to_vec())]);
    let mut answer = data_row(&[b"1"]);
    answer.extend(complete("SELECT 1"));
    answer.extend(ready());
    c.feed(&answer).unwrap();
    let want = vec![ResultSet { tag: "SELECT 1".into(), rows: vec![vec![Some(bytes::Bytes::from_static(b"1"))]] }];
    assert_eq!(events(&mut c), vec![PgEvent::Answer { id: early, answer: Ok(want) }]);
}

#[test]
fn cleartext_and_md5_passwords() {
    let mut c = conn("postgres://kg:secret@h/db");
    drop_startup(&mut c);
    c.feed(&auth(3, &[])).unwrap();
    assert_eq!(sent_messages(&mut c), vec![(b'p', b"secret\0".to_vec())]);

    let mut c = conn("postgres://kg:secret@h/db");
    drop_startup(&mut c);
    c.feed(&auth(5, &[1, 2, 3, 4])).unwrap();
    let want = postgres_protocol::authentication::md5_hash(b"kg", b"secret", [1, 2, 3, 4]);
    let mut body = want.into_bytes();
    body.push(0);
    assert_eq!(sent_messages(&mut c), vec![(b'p', body)]);

    let mut c = conn("postgres://kg@h/db");
    drop_startup(&mut c);
    let e = c.feed(&auth(5, &[1, 2, 3, 4])).unwrap_err();
    assert!(e.contains("the store URL has none"), "{e}");
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 5802 Hi() (PBKDF2-HMAC-SHA-256).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut u = hmac(password, &[salt, &[0, 0, 0, 1]].concat());
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// Runs SCRAM-SHA-256 against a server that checks the client's proof; the
/// server's final message is tampered with when `bad_signature`.
fn scram(password_server_knows: &str, bad_signature: bool) -> Result<PgConn, String> {
    let mut c = conn("postgres://kg:pencil@h/db");
    drop_startup(&mut c);
    c.feed(&auth(10, b"SCRAM-SHA-256\0\0"))?;
    let sent = sent_messages(&mut c);
    assert_eq!(sent.len(), 1);
    let (tag, body) = &sent[0];
    assert_eq!(*tag, b'p');
    assert!(body.starts_with(b"SCRAM-SHA-256\0"));
    let client_first = std::str::from_utf8(&body[14 + 4..]).unwrap().to_string();
    let client_first_bare = client_first.strip_prefix("n,,").expect("no channel binding").to_string();
    let cnonce = client_first_bare.strip_prefix("n=,r=").unwrap();
    let salt = b"klinegate-salt";
    let server_first = format!("r={cnonce}SRV,s={},i=4096", STANDARD.encode(salt));
    c.feed(&auth(11, server_first.as_bytes()))?;
    let sent = sent_messages(&mut c);
    let client_final = std::str::from_utf8(&sent[0].1).unwrap().to_string();
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    assert_eq!(without_proof, format!("c=biws,r={cnonce}SRV"));
    // Server side: verify the proof with the password the server knows.
    let salted = hi(password_server_knows.as_bytes(), salt, 4096);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key).to_vec();
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof = STANDARD.decode(proof).unwrap();
    let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if Sha256::digest(&recovered).to_vec() != stored_key {
        return Err("server: proof refused".to_string());
    }
    let mut server_sig = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    if bad_signature {
        server_sig[0] ^= 1;
    }
    c.feed(&auth(12, format!("v={}", STANDARD.encode(server_sig)).as_bytes()))?;
    let mut rest = auth(0, &[]);
    rest.extend(ready());
    c.feed(&rest)?;
    Ok(c)
}

#[test]
fn scram_sha_256_proves_the_password_and_checks_the_server() {
    let c = scram("pencil", false).expect("scram handshake");
    assert!(c.is_ready());
    assert_eq!(scram("other", false).unwrap_err(), "server: proof refused");
    let e = scram("pencil", true).unwrap_err();
    assert!(e.contains("server signature refused"), "{e}");
}

#[test]
fn unsupported_auth_and_startup_errors_are_fatal_with_the_reason() {
    let mut c = conn("postgres://u@h/db");
    let e = c.feed(&auth(7, &[])).unwrap_err();
    assert!(e.contains("does not speak"), "{e}");
    let mut c = conn("postgres://u:p@h/db");
    let e = c.feed(&auth(10, b"SCRAM-SHA-256-PLUS\0\0")).unwrap_err();
    assert!(e.contains("no SASL mechanism"), "{e}");
    let mut c = conn("postgres://u:p@h/db");
    let e = c.feed(&error("FATAL", "28P01", "password authentication failed for user \"u\"")).unwrap_err();
    assert!(e.contains("28P01") && e.contains("password authentication failed"), "{e}");
}

fn ready_conn() -> PgConn {
    let mut c = conn("postgres://u@h/db");
    let mut b = auth(0, &[]);
    b.extend(ready());
    c.feed(&b).unwrap();
    let _ = events(&mut c);
    let n = c.output().len();
    c.advance_output(n);
    c
}

#[test]
fn answers_match_requests_in_order_around_an_error() {
    let mut c = ready_conn();
    let a = c.submit(Request::Extended(vec![Statement::new("SELECT $1::int8", vec![Param::I64(5)])])).unwrap();
    let b = c.submit(Request::Extended(vec![Statement::new("bad", vec![])])).unwrap();
    let d = c.submit(Request::Simple("".into())).unwrap();
    let sent: Vec<u8> = sent_messages(&mut c).into_iter().map(|(t, _)| t).collect();
    assert_eq!(sent, b"PBESPBESQ".to_vec(), "parse, bind, execute, sync per extended request");
    let mut r = msg(b'1', b"");
    r.extend(msg(b'2', b""));
    r.extend(data_row(&[&5i64.to_be_bytes()]));
    r.extend(complete("SELECT 1"));
    r.extend(ready());
    r.extend(error("ERROR", "42601", "syntax error at or near \"bad\""));
    r.extend(ready());
    r.extend(msg(b'I', b""));
    r.extend(ready());
    c.feed(&r).unwrap();
    let ev = events(&mut c);
    assert_eq!(ev.len(), 3);
    let PgEvent::Answer { id, answer: Ok(sets) } = &ev[0] else { panic!("{ev:?}") };
    assert_eq!((*id, col::i64(&sets[0].rows[0][0]).unwrap()), (a, Some(5)));
    let PgEvent::Answer { id, answer: Err(e) } = &ev[1] else { panic!("{ev:?}") };
    assert_eq!((*id, e.code.as_str()), (b, "42601"));
    assert_eq!(ev[2], PgEvent::Answer { id: d, answer: Ok(vec![ResultSet::default()]) });
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_disconnect_fails_what_was_sent_and_keeps_what_was_not() {
    let mut c = ready_conn();
    let sent = c.submit(Request::Simple("SELECT 1".into())).unwrap();
    c.disconnected("reset by peer");
    let queued = c.submit(Request::Simple("SELECT 2".into())).unwrap();
    let ev = events(&mut c);
    let PgEvent::Answer { id, answer: Err(e) } = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(*id, sent);
    assert!(e.is_disconnect() && e.message.contains("reset by peer"), "{e}");
    assert!(c.output().is_empty());
    c.connected();
    drop_startup(&mut c);
    let mut b = auth(0, &[]);
    b.extend(ready());
    c.feed(&b).unwrap();
    assert_eq!(sent_messages(&mut c), vec![(b'Q', b"SELECT 2\0".to_vec())]);
    assert_eq!(c.pending(), 1);
    let _ = queued;
}

#[test]
fn an_unencodable_request_fails_alone_and_the_stream_stays_well_formed() {
    let mut c = ready_conn();
    let ok1 = c.submit(Request::Simple("SELECT 1".into())).unwrap();
    let bad = c
        .submit(Request::Extended(vec![
            Statement::new("SELECT 1", vec![]),
            Statement::new("SELECT '\0'", vec![]),
        ]))
        .unwrap();
    let bad_simple = c.submit(Request::Simple("SELECT '\0'".into())).unwrap();
    let ok2 = c.submit(Request::Simple("SELECT 2".into())).unwrap();
    let sent = sent_messages(&mut c);
    assert_eq!(sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"QQ".to_vec(), "nothing of the bad request left");
    let ev = events(&mut c);
    let PgEvent::Answer { id, answer: Err(e) } = &ev[0] else { panic!("{ev:?}") };
    assert_eq!((*id, e.code.as_str()), (bad, "22000"));
    let PgEvent::Answer { id, answer: Err(e) } = &ev[1] else { panic!("{ev:?}") };
    assert_eq!((*id, e.code.as_str()), (bad_simple, "22000"));
    assert_eq!(c.pending(), 2);
    let _ = (ok1, ok2);
}

#[test]
fn bad_server_bytes_are_refused_not_panicked_on() {
    let mut c = ready_conn();
    let e = c.feed(&data_row(&[b"x"])).unwrap_err();
    assert!(e.contains("no request in flight"), "{e}");
    let mut c = ready_conn();
    let e = c.feed(&[b'D', 0, 0, 0, 2]).unwrap_err();
    assert!(e.contains("malformed"), "{e}");
    let mut c = ready_conn();
    let e = c.feed(&[b'D', 0x7f, 0xff, 0xff, 0xff]).unwrap_err();
    assert!(e.contains("exceeds"), "{e}");
    let mut c = ready_conn();
    let e = c.feed(&msg(b'G', &[0, 0, 0])).unwrap_err();
    assert!(e.contains("COPY"), "{e}");
    let mut c = conn("postgres://u@h/db");
    let e = c.feed(&ready()).unwrap_err();
    assert!(e.contains("before authentication"), "{e}");
    // A FATAL error while idle (the server is shutting the session down).
    let mut c = ready_conn();
    let e = c.feed(&error("FATAL", "57P01", "terminating connection due to administrator command")).unwrap_err();
    assert!(e.contains("57P01"), "{e}");
}

#[test]
fn the_queue_is_bounded_before_and_after_the_handshake() {
    let mut c = PgConn::new(parse_pg_url("postgres://u@h/db").unwrap(), 2);
    c.submit(Request::Simple("1".into())).unwrap();
    c.submit(Request::Simple("2".into())).unwrap();
    assert_eq!(c.submit(Request::Simple("3".into())), Err(Full { max_pending: 2 }));
    assert_eq!(c.pending(), 2);
}
