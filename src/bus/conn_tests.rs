//! [`RedisConn`] against scripted server bytes: the handshake (HELLO 3,
//! SELECT), replies matched in order across any split of the bytes, RESP3
//! pushes skipped, disconnects, and refusals of bad server input. The same
//! machine against the real server: `tests/redis_bus.rs`.

use super::conn::*;
use super::url::parse_redis_url;
use crate::sans_io::SansIo;

fn conn(url: &str, resp: Resp) -> RedisConn {
    let mut c = RedisConn::new(parse_redis_url(url).unwrap(), resp, 4);
    c.connected();
    while c.poll_event().is_some() {}
    c
}

fn take_output(c: &mut RedisConn) -> Vec<u8> {
    let out = c.output().to_vec();
    c.advance_output(out.len());
    out
}

fn events(c: &mut RedisConn) -> Vec<RedisEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn handshake_then_queued_commands_in_order() {
    let mut c = RedisConn::new(parse_redis_url("redis://h:1/2").unwrap(), Resp::V3, 4);
    let early = c.submit(Command::new("PING")).unwrap();
    c.connected();
    assert_eq!(take_output(&mut c), b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n".to_vec());
    // HELLO's map reply, then SELECT's +OK, split at every byte.
    let reply = b"%1\r\n+server\r\n+redis\r\n+OK\r\n";
    for b in reply.iter() {
        assert!(!c.is_ready());
        c.feed(std::slice::from_ref(b)).unwrap();
    }
    assert!(c.is_ready());
    assert_eq!(events(&mut c), vec![RedisEvent::Ready]);
    assert_eq!(take_output(&mut c), b"*1\r\n$4\r\nPING\r\n".to_vec());
    // An out-of-band push is not a reply; the reply after it is PING's.
    c.feed(b">2\r\n+invalidate\r\n_\r\n+PONG\r\n").unwrap();
    assert_eq!(events(&mut c), vec![RedisEvent::Reply { id: early, reply: Ok(Value::Status("PONG".into())) }]);
}

#[test]
fn a_refused_handshake_is_fatal_with_the_reason() {
    let mut c = conn("redis://h:1/99", Resp::V2);
    let e = c.feed(b"-ERR DB index is out of range\r\n").unwrap_err();
    assert!(e.contains("SELECT refused") && e.contains("out of range"), "{e}");
    let mut c = conn("redis://h:1", Resp::V3);
    let e = c.feed(b"-NOPROTO unsupported protocol version\r\n").unwrap_err();
    assert!(e.contains("HELLO 3 refused"), "{e}");
}

#[test]
fn replies_and_error_replies_in_order() {
    let mut c = conn("redis://h:1", Resp::V2);
    assert!(c.is_ready(), "RESP2 on db 0 needs no handshake");
    let ids: Vec<_> = ["GET", "INCR", "XADD"].iter().map(|n| c.submit(Command::new(n)).unwrap()).collect();
    c.feed(b"$3\r\nabc\r\n-WRONGTYPE Operation against a key\r\n*2\r\n:1\r\n$-1\r\n").unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            RedisEvent::Reply { id: ids[0], reply: Ok(Value::Bulk(b"abc".to_vec())) },
            RedisEvent::Reply {
                id: ids[1],
                reply: Err(RedisError { kind: "WRONGTYPE".into(), message: "Operation against a key".into() })
            },
            RedisEvent::Reply { id: ids[2], reply: Ok(Value::Array(vec![Value::Int(1), Value::Nil])) },
        ]
    );
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_disconnect_fails_what_was_sent_and_keeps_what_was_not() {
    let mut c = conn("redis://h:1", Resp::V2);
    let sent = c.submit(Command::new("PING")).unwrap();
    c.disconnected("reset");
    let queued = c.submit(Command::new("ECHO").arg("x")).unwrap();
    let ev = events(&mut c);
    let RedisEvent::Reply { id, reply: Err(e) } = &ev[0] else { panic!("{ev:?}") };
    assert!(*id == sent && e.is_disconnect(), "{e}");
    assert!(c.output().is_empty());
    c.connected();
    assert_eq!(take_output(&mut c), b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n".to_vec());
    assert_eq!(events(&mut c), vec![RedisEvent::Ready]);
    c.feed(b"$1\r\nx\r\n").unwrap();
    assert_eq!(events(&mut c)[0], RedisEvent::Reply { id: queued, reply: Ok(Value::Bulk(b"x".to_vec())) });
}

#[test]
fn bad_server_bytes_are_refused_not_panicked_on() {
    let mut c = conn("redis://h:1", Resp::V2);
    let e = c.feed(b"+OK\r\n").unwrap_err();
    assert!(e.contains("no command waiting"), "{e}");
    let mut c = conn("redis://h:1", Resp::V2);
    c.submit(Command::new("PING")).unwrap();
    let e = c.feed(b"?what\r\n").unwrap_err();
    assert!(e.contains("malformed"), "{e}");
    let mut c = conn("redis://h:1", Resp::V2);
    c.submit(Command::new("GET")).unwrap();
    // A bulk string that announces more than the limit is refused once buffered past it.
    let mut big = format!("${}\r\n", MAX_REPLY + 10).into_bytes();
    big.resize(MAX_REPLY + 1, b'x');
    let e = c.feed(&big).unwrap_err();
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn the_queue_is_bounded() {
    let mut c = conn("redis://h:1", Resp::V2);
    for _ in 0..4 {
        c.submit(Command::new("PING")).unwrap();
    }
    assert_eq!(c.submit(Command::new("PING")), Err(Full { max_pending: 4 }));
    c.feed(b"+PONG\r\n").unwrap();
    assert!(c.submit(Command::new("PING")).is_ok(), "room after a reply");
}
