//! `WsConn` under `--io-uring`: queued bytes wait for the ring (a pong queued
//! meanwhile goes behind them), a short send's rest and EINTR are written
//! directly, EAGAIN keeps the bytes for the writable path, an error fails the
//! connection, and a close un-queues so frames precede the close frame.

use super::WsConn;
use crate::shell::conn::deflate_cache::DeflateCache;
use crate::shell::conn::transport::Transport;
use std::io::Read;
use std::time::{Duration, Instant};

fn pair() -> (WsConn, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, addr) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = WsConn::new(Transport::new(mio::net::TcpStream::from_std(ours), None), Vec::new(), addr, 1, 1 << 20, None, Instant::now());
    (conn, peer)
}

fn frames(texts: &[&str]) -> Vec<bytes::Bytes> {
    texts.iter().map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())).collect()
}

fn read_n(peer: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    peer.read_exact(&mut got).unwrap();
    got
}

#[test]
fn queued_bytes_wait_for_the_ring_and_a_short_send_writes_the_rest_directly() {
    let (mut w, mut peer) = pair();
    let mut cache = DeflateCache::default();
    w.queue_frames(&frames(&["hello", "world"]), &mut cache);
    assert!(w.flush(), "flush while queued does nothing");
    let (fd, bytes) = w.pending_for_uring().expect("queued");
    assert_eq!(Some(fd), w.raw_fd());
    let all = bytes.to_vec();
    assert_eq!(all.len(), 14, "two text frames with 2-byte heads");
    // The ring took 3 bytes: the rest goes out directly, in order.
    assert!(w.uring_sent(3));
    assert!(!w.uring_queued() && !w.flush_pending);
    // No real ring here: the 3 bytes it "took" never reach the peer, the rest does.
    assert_eq!(read_n(&mut peer, all.len() - 3), all[3..]);
    assert_eq!(w.take_bytes_sent(), all.len() as u64);
}

#[test]
fn eagain_keeps_the_bytes_for_the_writable_path_and_an_error_fails() {
    let (mut w, mut peer) = pair();
    let mut cache = DeflateCache::default();
    w.queue_frames(&frames(&["abc"]), &mut cache);
    let len = w.pending_for_uring().unwrap().1.len();
    assert!(w.uring_sent(-libc::EAGAIN));
    assert!(w.flush_pending, "waits for WRITABLE");
    assert!(w.flush(), "the writable path writes it");
    assert_eq!(read_n(&mut peer, len).len(), len);
    w.queue_frames(&frames(&["x"]), &mut cache);
    assert!(!w.uring_sent(-libc::EPIPE), "a failed send fails the connection");
}

#[test]
fn eintr_writes_directly_and_a_pong_queued_meanwhile_goes_behind() {
    let (mut w, mut peer) = pair();
    let mut cache = DeflateCache::default();
    w.queue_frames(&frames(&["abc"]), &mut cache);
    w.ping(Instant::now());
    let queued = w.pending_for_uring().unwrap().1.to_vec();
    assert_eq!(queued.len(), 5 + 2, "the text frame, then the ping behind it");
    assert!(w.uring_sent(-libc::EINTR));
    assert_eq!(read_n(&mut peer, queued.len()), queued);
}

#[test]
fn a_close_unqueues_and_writes_the_frames_before_the_close_frame() {
    let (mut w, mut peer) = pair();
    let mut cache = DeflateCache::default();
    w.queue_frames(&frames(&["last"]), &mut cache);
    w.close(1008, "slow", Instant::now());
    assert!(!w.uring_queued() && w.pending_for_uring().is_none(), "the ring skips it");
    let got = read_n(&mut peer, 6 + 2 + 2 + 4);
    assert_eq!(&got[..6], b"\x81\x04last");
    assert_eq!(got[6], 0x88, "then the close frame");
}
