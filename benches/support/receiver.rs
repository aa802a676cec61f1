//! The loopback bench's receiver: one thread reads every client socket
//! (non-blocking, edge-triggered mio) with `recvmsg`, takes each read's kernel
//! receive timestamp (`SO_TIMESTAMPNS`, CLOCK_REALTIME), and reports when the
//! last client holds update k, with the earliest and latest stamp.
//!
//! Owns the client sockets once the bench hands them over and the timestamp
//! plumbing. Never writes to a client, never blocks longer than one 20 ms poll.

use crate::support::{forming_seq, pin_current_thread, scan_server_frames};
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::TcpStream;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Every client holds update `seq` (or a later one). Times in ns since the
/// epoch: `first`/`last` by kernel receive timestamps (earliest and latest
/// client), `first_read`/`last_read` when the receiver read them.
pub struct Done {
    pub seq: i64,
    pub first: u64,
    pub last: u64,
    pub first_read: u64,
    pub last_read: u64,
}

pub fn wait_done(rx: &Receiver<Done>, seq: i64, timeout: Duration) -> Option<Done> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(d) if d.seq == seq => return Some(d),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

// ------------------------------------------------------------------ receiver

struct RxClient {
    stream: mio::net::TcpStream,
    /// Bytes of a frame split across reads.
    partial: Vec<u8>,
    /// Newest update this client holds (-1: none).
    seen: i64,
}

/// One thread reads every client socket (non-blocking, edge-triggered mio),
/// takes each read's kernel receive timestamp, and reports when the last client
/// holds update k. Returns how many reads came without a kernel timestamp.
pub fn receive(receiver_cpu: usize, socks: Vec<TcpStream>, slots: usize, tx: Sender<Done>, stop: &AtomicBool, payload_len: &AtomicUsize) -> u64 {
    pin_current_thread(receiver_cpu);
    let n = socks.len();
    let poll = Poll::new().expect("receiver poll");
    let mut clients: Vec<RxClient> = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        s.set_nonblocking(true).expect("nonblocking client");
        // Without it every read falls back to its read time (counted).
        let _ = enable_receive_timestamps(s.as_raw_fd());
        let mut stream = mio::net::TcpStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE).expect("register client");
        clients.push(RxClient { stream, partial: Vec::new(), seen: -1 });
    }
    let mut poll = poll;
    let mut events = Events::with_capacity(4096);
    let mut holders = vec![0usize; slots];
    // Per update: earliest and latest kernel stamp, first read time.
    let mut stamps: Vec<Option<(u64, u64, u64)>> = vec![None; slots];
    let mut unstamped = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        if poll.poll(&mut events, Some(Duration::from_millis(20))).is_err() {
            continue;
        }
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            loop {
                let (got, kernel) = match read_stamped(c.stream.as_raw_fd(), &mut buf) {
                    Ok((0, _)) => break,
                    Ok(read) => read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let read_at = realtime_ns();
                let at = kernel.unwrap_or_else(|| {
                    unstamped += 1;
                    read_at
                });
                let newest = newest_seq(c, &buf[..got], payload_len);
                if let Some(s) = newest.filter(|s| *s > c.seen) {
                    // Every update up to `s` counts as held (a skipped one was coalesced).
                    let from = (c.seen + 1).max(0) as usize;
                    for q in from..=(s as usize).min(slots - 1) {
                        holders[q] += 1;
                        let (first, last, first_read) = stamps[q].get_or_insert((at, at, read_at));
                        *first = (*first).min(at);
                        *last = (*last).max(at);
                        if holders[q] == n {
                            let (first, last, first_read) = (*first, *last, *first_read);
                            let _ = tx.send(Done { seq: q as i64, first, last, first_read, last_read: read_at });
                        }
                    }
                    c.seen = s;
                }
                // A short read drained the socket: the next byte raises a new edge.
                if got < buf.len() {
                    break;
                }
            }
        }
    }
    unstamped
}

/// A socket with `SO_TIMESTAMPNS` kept open for the whole bench (see `main`).
pub fn keep_receive_timestamps_on() -> Option<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    enable_receive_timestamps(socket.as_raw_fd()).ok()?;
    Some(socket)
}

/// Asks the kernel to stamp received data (`SO_TIMESTAMPNS`, CLOCK_REALTIME).
fn enable_receive_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`: the bytes read and, when the kernel attached one,
/// the receive timestamp of the data (ns since the epoch; for TCP, of the last
/// segment read).
fn read_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `buf` and `control`, both alive and writable.
    let got = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` as the kernel set it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((got as usize, stamp))
}

/// The newest update number in the frames completed by `data`.
fn newest_seq(c: &mut RxClient, data: &[u8], payload_len: &AtomicUsize) -> Option<i64> {
    let mut newest = None;
    let mut on_frame = |opcode: u8, payload: &[u8]| {
        if opcode != 1 {
            return;
        }
        if let Some(s) = forming_seq(payload) {
            payload_len.store(payload.len(), Ordering::Relaxed);
            newest = newest.max(Some(s));
        }
    };
    if c.partial.is_empty() {
        let used = scan_server_frames(data, &mut on_frame);
        c.partial.extend_from_slice(&data[used..]);
    } else {
        c.partial.extend_from_slice(data);
        let used = scan_server_frames(&c.partial, &mut on_frame);
        c.partial.drain(..used);
    }
    newest
}
