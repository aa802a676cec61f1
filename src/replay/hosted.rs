//! Store effects carried out at once, in place of the shell: what a replay
//! without recorded answers, a journal generator, a capture converter, a
//! fuzz harness, a bench or a test driver does with the core's
//! `ReadStore`/`Persist` outputs. The shell does the same through the same
//! two calls (`StoreQuery::run`, `StoreWrite::run`), in bounded slices per
//! loop turn.
//!
//! Also a shell's client write (`write_client`: `ClientWritable`, then
//! `poll_client` until `None`).
//!
//! Owns nothing; never decides anything about what an answer means.

use crate::engine::{ClientId, Engine, Frame, Input, Output};
use crate::store::Store;
use crate::time::Timestamp;

/// The answer to `output` when it is a store effect, run against `store`.
pub fn answer(store: &mut dyn Store, output: &Output) -> Option<Input> {
    match output {
        Output::ReadStore { op, query } => Some(Input::StoreRead { op: *op, result: query.run(store) }),
        Output::Persist { op, write } => Some(Input::Persisted { op: *op, result: write.run(store) }),
        _ => None,
    }
}

/// Carries `output` out against `store` and hands the answer to `engine`
/// at `now` when it is a store effect; returns whether it was one. The
/// answer's own outputs join the engine's queue (drain on).
pub fn carry(engine: &mut Engine, store: &mut dyn Store, output: &Output, now: Timestamp) -> bool {
    match answer(store, output) {
        Some(input) => {
            engine.handle(input, now);
            true
        }
        None => false,
    }
}

/// A shell's write of `client` at `now`: `Input::ClientWritable` with
/// `budget`, then every frame `poll_client` staged, appended to `dst`. Its
/// outputs (a catch-up read) join the engine's queue (drain on).
pub fn write_client(engine: &mut Engine, client: ClientId, budget: usize, now: Timestamp, dst: &mut Vec<Frame>) {
    engine.handle(Input::ClientWritable { client, budget }, now);
    dst.extend(std::iter::from_fn(|| engine.poll_client(client)));
}

/// [`write_client`] with no budget limit at the engine's own time: every
/// queued frame of `client`.
pub fn write_all(engine: &mut Engine, client: ClientId, dst: &mut Vec<Frame>) {
    let now = engine.now();
    write_client(engine, client, Input::WRITE_ALL, now, dst);
}

/// Drains every output, carrying store effects out at once, and returns the
/// others in order.
#[must_use = "the outputs that are not store effects: dropping them loses work"]
pub fn drain(engine: &mut Engine, store: &mut dyn Store, now: Timestamp) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = engine.poll_output() {
        if !carry(engine, store, &o, now) {
            out.push(o);
        }
    }
    out
}

/// An engine with a store of its own whose effects are carried out at once:
/// the driver tests, benches and the fuzz harness use where the shell would
/// host the engine. Outputs that are not store effects are kept, in order,
/// until taken.
pub struct Hosted<S: Store> {
    pub engine: Engine,
    pub store: S,
    outputs: std::collections::VecDeque<Output>,
}

impl<S: Store> Hosted<S> {
    pub fn new(engine: Engine, store: S) -> Self {
        Hosted { engine, store, outputs: std::collections::VecDeque::new() }
    }

    /// Handles `input` and carries its store effects out. An ingest's
    /// answer (`IngestDone`, at once or once stored) is the result, as the
    /// shell replies to the HTTP request; the `IngestDone` itself is kept too.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Result<(), String> {
        self.engine.handle(input, now);
        let kept = self.outputs.len();
        self.settle(now);
        match self.outputs.iter().skip(kept).find_map(|o| match o {
            Output::IngestDone { error: Some(e), .. } => Some(e.clone()),
            _ => None,
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Fires the timers due at `now` and carries their store effects out.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.engine.handle_timeout(now);
        self.settle(now);
    }

    /// Carries out every pending store effect (and those their answers
    /// cause), keeping the other outputs.
    pub fn settle(&mut self, now: Timestamp) {
        let out = drain(&mut self.engine, &mut self.store, now);
        self.outputs.extend(out);
    }

    /// The next output that is not a store effect.
    #[must_use = "drain until None"]
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            let now = self.engine.now();
            self.settle(now);
        }
        self.outputs.pop_front()
    }

    /// Every kept output, in order.
    #[must_use = "`let _ =` to discard them on purpose"]
    pub fn take_outputs(&mut self) -> Vec<Output> {
        let now = self.engine.now();
        self.settle(now);
        self.outputs.drain(..).collect()
    }
}
