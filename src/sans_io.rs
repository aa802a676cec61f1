//! [`SansIo`]: the contract between a protocol state machine with no I/O of
//! its own (the PostgreSQL connection in `store::postgres`, the Redis
//! connection in `bus`) and the shell's socket driver
//! (`shell::conn::stream_driver`) that feeds it bytes and writes its output.
//! Vocabulary only: no code runs here.

/// A protocol state machine with no I/O of its own.
pub trait SansIo {
    /// A fresh TCP connection is up: start the handshake (queue its bytes).
    fn connected(&mut self);
    /// Bytes received from the server. `Err` means the connection cannot go
    /// on (protocol violation, fatal server error); the driver closes it.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// Bytes waiting to be written.
    fn output(&self) -> &[u8];
    /// `n` bytes of [`SansIo::output`] were written.
    fn advance_output(&mut self, n: usize);
    /// The connection is gone: fail what was sent and not answered.
    fn disconnected(&mut self, reason: &str);
    /// The handshake is done and requests flow.
    fn is_ready(&self) -> bool;
}
