//! The loopback bench's io_uring writer (issue #14 §2): sends one encoded
//! frame to many sockets as `IORING_OP_SEND` entries, all of them in one
//! `io_uring_enter` or in batches of a fixed size, then reaps every
//! completion before returning (so the frame bytes outlive the kernel's use
//! of them). Short or refused sends are handed back to the caller, who keeps
//! the rest and writes it when the socket drains (as the epoll writer does).
//!
//! Owns the ring and the availability check (kernel version, then a real
//! ring and the send opcode in the kernel's probe). Never decides what to
//! send or to whom, and never blocks on a socket (`MSG_DONTWAIT`).
//! Bench code only: nothing in src/ uses io_uring.

use io_uring::{opcode, types, IoUring, Probe};
use std::io;
use std::os::unix::io::RawFd;

/// `IORING_OP_SEND` came with Linux 5.6 (and the opcode probe with it).
const MIN_KERNEL: (u32, u32) = (5, 6);
/// The largest submission queue the kernel accepts (`IORING_MAX_ENTRIES`).
const MAX_ENTRIES: usize = 32_768;

/// How the writer groups the sends of one broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringMode {
    /// Sends per `io_uring_enter`; `None`: every client in one submission.
    pub batch: Option<usize>,
    /// The first client gets a plain `write(2)` before the ring is used
    /// (the design proposed for the engine: first client at once, batch the rest).
    pub first_direct: bool,
}

/// `KLINEGATE_BENCH_URING_BATCH` (default 1024): sends per submission of
/// the batched io_uring rows.
pub fn batch_from_env() -> usize {
    std::env::var("KLINEGATE_BENCH_URING_BATCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|b: &usize| *b > 0)
        .unwrap_or(1024)
        .min(MAX_ENTRIES)
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
/// lists the send opcode. The error says which check failed.
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
    /// A ring sized for `mode` at `clients` sockets.
    pub fn new(mode: UringMode, clients: usize) -> Result<UringSender, String> {
        available()?;
        let chunk = mode.batch.unwrap_or(clients).clamp(1, MAX_ENTRIES);
        let entries = (chunk.next_power_of_two()).min(MAX_ENTRIES) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(|e| format!("io_uring with {entries} entries: {e}"))?;
        Ok(UringSender { ring, chunk })
    }

    /// Sends `frame` to every `(index, fd)` in `targets`, `chunk` sends per
    /// submission, waiting for each submission's completions before the next
    /// (so each `io_uring_enter` carries one whole batch). Every target whose
    /// send did not take the whole frame is pushed to `short` as (index, bytes
    /// taken); other send errors (a closed peer) are dropped, as the epoll
    /// writer drops them.
    pub fn broadcast(&mut self, targets: &[(usize, RawFd)], frame: &[u8], short: &mut Vec<(usize, usize)>) -> io::Result<()> {
        let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
        for batch in targets.chunks(self.chunk) {
            {
                let mut sq = self.ring.submission();
                for &(index, fd) in batch {
                    let entry = opcode::Send::new(types::Fd(fd), frame.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(index as u64);
                    // SAFETY: `frame` outlives the entry: every completion of this
                    // batch is reaped below before `broadcast` returns.
                    unsafe { sq.push(&entry) }.map_err(|_| io::Error::other("submission queue full"))?;
                }
            }
            let mut left = batch.len();
            while left > 0 {
                match self.ring.submit_and_wait(left) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                for cqe in self.ring.completion() {
                    left = left.saturating_sub(1);
                    let index = cqe.user_data() as usize;
                    let res = cqe.result();
                    if res == -libc::EAGAIN {
                        short.push((index, 0));
                    } else if res >= 0 && (res as usize) < frame.len() {
                        short.push((index, res as usize));
                    }
                }
            }
        }
        Ok(())
    }
}
