//! The loopback bench's io_uring writer (issue #14 §2): sends one encoded
//! frame to many sockets through the engine's own io_uring sender
//! (`klinegate::shell::conn::uring_writer`: `IORING_OP_SEND` entries, all in
//! one `io_uring_enter` or in batches of a fixed size, every completion
//! reaped before returning, so the frame bytes outlive the kernel's use of
//! them). Short or refused sends are handed back to the caller, who keeps
//! the rest and writes it when the socket drains (as the epoll writer does).
//!
//! Owns: the bench's modes (batch size, first client direct) over that one
//! implementation. Never decides what to send or to whom.

use klinegate::shell::conn::uring_writer::{self, Target, MAX_ENTRIES};
use std::io;
use std::os::unix::io::RawFd;

pub use uring_writer::available;

/// How the writer groups the sends of one broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringMode {
    /// Sends per `io_uring_enter`; `None`: every client in one submission.
    pub batch: Option<usize>,
    /// The first client gets a plain `write(2)` before the ring is used
    /// (the design `klinegate run --io-uring` adopted).
    pub first_direct: bool,
}

/// `KLINEGATE_BENCH_URING_BATCH` (default 1024): sends per submission of
/// the batched io_uring rows.
pub fn batch_from_env() -> usize {
    std::env::var("KLINEGATE_BENCH_URING_BATCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|b: &usize| *b > 0)
        .unwrap_or(uring_writer::DEFAULT_BATCH)
        .min(MAX_ENTRIES)
}

pub struct UringSender {
    inner: uring_writer::UringSender,
    targets: Vec<(u64, RawFd)>,
    results: Vec<(u64, i32)>,
}

impl UringSender {
    /// A ring sized for `mode` at `clients` sockets.
    pub fn new(mode: UringMode, clients: usize) -> Result<UringSender, String> {
        let inner = uring_writer::UringSender::new(mode.batch.unwrap_or(clients))?;
        Ok(UringSender { inner, targets: Vec::new(), results: Vec::new() })
    }

    /// Sends `frame` to every `(index, fd)` in `targets`. Every target whose
    /// send did not take the whole frame is pushed to `short` as (index, bytes
    /// taken); other send errors (a closed peer) are dropped, as the epoll
    /// writer drops them.
    pub fn broadcast(&mut self, targets: &[(usize, RawFd)], frame: &[u8], short: &mut Vec<(usize, usize)>) -> io::Result<()> {
        self.targets.clear();
        self.targets.extend(targets.iter().map(|&(i, fd)| (i as u64, fd)));
        let sends: Vec<Target<'_>> = self.targets.iter().map(|&(tag, fd)| Target { tag, fd, bytes: frame }).collect();
        self.results.clear();
        self.inner.send_all(&sends, &mut self.results)?;
        for &(tag, res) in &self.results {
            let index = tag as usize;
            if res == -libc::EAGAIN {
                short.push((index, 0));
            } else if res >= 0 && (res as usize) < frame.len() {
                short.push((index, res as usize));
            }
        }
        Ok(())
    }
}
