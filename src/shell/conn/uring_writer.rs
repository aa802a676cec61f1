//! The io_uring writer (issue #14 §2, `--io-uring`): sends many sockets' bytes
//! as `IORING_OP_SEND` entries (`MSG_DONTWAIT`), submitted in batches of a
//! fixed size (1,024 by default), and reaps every completion of a batch
//! before returning, so the bytes each send points at outlive the kernel's
//! use of them (the caller lends them for the call; nothing stays in flight
//! between calls, so a client closed later can never free memory under the
//! kernel). Each target's result (bytes taken, or `-errno`) is handed back:
//! the caller keeps a short or refused send's rest for its normal writable
//! path, and closes a client whose send failed.
//!
//! Owns: the ring and the availability check (kernel ≥ 5.6, a real
//! `io_uring_setup`, the send opcode in the kernel's probe). Never decides
//! what to send or to whom, never touches a buffer after returning, and
//! never blocks on a socket. Used by the event loop (`event_loop/uring_writes.rs`)
//! and by the loopback bench's raw writer (`benches/support/uring_send.rs`).

use io_uring::{opcode, types, IoUring, Probe};
use std::io;
use std::os::unix::io::RawFd;

/// `IORING_OP_SEND` came with Linux 5.6 (and the opcode probe with it).
const MIN_KERNEL: (u32, u32) = (5, 6);
/// The largest submission queue the kernel accepts (`IORING_MAX_ENTRIES`).
pub const MAX_ENTRIES: usize = 32_768;
/// Sends per `io_uring_enter` unless told otherwise (the bench's winner).
pub const DEFAULT_BATCH: usize = 1024;

/// One send: the caller's tag (handed back with the result), the socket and the bytes.
pub struct Target<'a> {
    pub tag: u64,
    pub fd: RawFd,
    pub bytes: &'a [u8],
}

/// The running kernel's (major, minor), from `uname`.
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: a zeroed utsname is valid; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a live, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: String = uts.release.iter().take_while(|c| **c != 0).map(|c| *c as u8 as char).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether this machine can run the io_uring writer: the kernel is new
/// enough, `io_uring_setup` works here (it may be switched off by
/// `kernel.io_uring_disabled` or a seccomp filter), and the kernel's probe
/// lists the send opcode. Ok names the kernel; the error says which check failed.
pub fn available() -> Result<String, String> {
    let (major, minor) = kernel_version().ok_or("uname gave no kernel version")?;
    if (major, minor) < MIN_KERNEL {
        return Err(format!("kernel {major}.{minor} is older than {}.{} (no IORING_OP_SEND)", MIN_KERNEL.0, MIN_KERNEL.1));
    }
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed on kernel {major}.{minor}: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(format!("kernel {major}.{minor} has io_uring without IORING_OP_SEND"));
    }
    Ok(format!("kernel {major}.{minor}"))
}

pub struct UringSender {
    ring: IoUring,
    /// Sends per submission (at most the ring's size).
    chunk: usize,
}

impl UringSender {
    /// A ring for `batch` sends per submission (after [`available`]).
    pub fn new(batch: usize) -> Result<UringSender, String> {
        available()?;
        let chunk = batch.clamp(1, MAX_ENTRIES);
        let entries = chunk.next_power_of_two().min(MAX_ENTRIES) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(|e| format!("io_uring with {entries} entries: {e}"))?;
        Ok(UringSender { ring, chunk })
    }

    /// Sends per submission.
    pub fn batch(&self) -> usize {
        self.chunk
    }

    /// Sends every target, `batch` sends per submission, waiting for each
    /// submission's completions before the next. Every result is pushed to
    /// `results` as (tag, bytes taken or `-errno`). An error of the ring
    /// itself is returned after every entry already submitted completed
    /// (targets whose result is missing were not sent).
    pub fn send_all(&mut self, targets: &[Target<'_>], results: &mut Vec<(u64, i32)>) -> io::Result<()> {
        for batch in targets.chunks(self.chunk) {
            let mut pushed = 0;
            {
                let mut sq = self.ring.submission();
                for t in batch {
                    // Larger sends are sent in part; the caller keeps the rest.
                    let len = u32::try_from(t.bytes.len()).unwrap_or(u32::MAX);
                    let entry = opcode::Send::new(types::Fd(t.fd), t.bytes.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(t.tag);
                    // SAFETY: `t.bytes` is borrowed for this whole call, and every
                    // completion of this batch is reaped below before the next
                    // batch (or the return), so the kernel never reads freed bytes.
                    if unsafe { sq.push(&entry) }.is_err() {
                        break;
                    }
                    pushed += 1;
                }
            }
            let mut left = pushed;
            let mut failed = None;
            while left > 0 {
                let want = if failed.is_some() { 1 } else { left };
                match self.ring.submit_and_wait(want) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if failed.is_none() => failed = Some(e),
                    // The ring keeps failing: entries may still be in flight; never return with them.
                    Err(_) => std::thread::yield_now(),
                }
                for cqe in self.ring.completion() {
                    left = left.saturating_sub(1);
                    results.push((cqe.user_data(), cqe.result()));
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if pushed < batch.len() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn sends_each_target_its_own_bytes_and_reports_results() {
        let Ok(mut sender) = UringSender::new(2) else {
            eprintln!("SKIP: io_uring unavailable here");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut served: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        let payloads = [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()];
        let targets: Vec<Target> = clients
            .iter()
            .zip(&payloads)
            .enumerate()
            .map(|(i, (c, p))| Target { tag: i as u64, fd: c.as_raw_fd(), bytes: p })
            .collect();
        let mut results = Vec::new();
        sender.send_all(&targets, &mut results).unwrap();
        results.sort();
        assert_eq!(results, vec![(0, 1), (1, 2), (2, 3)]);
        for (s, p) in served.iter_mut().zip(&payloads) {
            let mut got = vec![0; p.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, p);
        }
    }
}
