//! Drives an engine the way a shell would and records every call as a
//! journal, so reactive scenarios (fail each connection as it opens, ...)
//! become fixed journals that replay to the same bytes.
#![allow(dead_code)]

use klinegate::cli::settings::Settings;
use klinegate::engine::{Engine, Input, Output};
use klinegate::replay::hosted;
use klinegate::replay::journal::{Header, JournalWriter};
use klinegate::store::MemoryStore;
use klinegate::time::Timestamp;

pub struct Recorder {
    pub engine: Engine,
    /// The store the engine's effects are carried out against, at once.
    pub store: MemoryStore,
    journal: JournalWriter<Vec<u8>>,
    pub now: Timestamp,
    /// Client frames delivered so far and not yet taken: (client, frame).
    frames: Vec<(u64, serde_json::Value)>,
}

impl Recorder {
    pub fn new(settings: Settings, start: Timestamp) -> Recorder {
        let cfg = settings.to_engine_config().expect("valid settings");
        let header = Header::new(settings, start, false);
        let journal = JournalWriter::new(Vec::new(), &header).expect("write to memory");
        Recorder { engine: Engine::new(cfg, start), store: MemoryStore::new(), journal, now: start, frames: Vec::new() }
    }

    /// One input at `now`; returns the outputs it produced (client frames drained).
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Output> {
        self.now = now.max(self.now);
        self.journal.input(self.now, &input).expect("write to memory");
        self.engine.handle(input, self.now);
        self.drain()
    }

    /// Fires timers due at `now` (recorded as a timeout line).
    pub fn timeout(&mut self, now: Timestamp) -> Vec<Output> {
        self.now = now.max(self.now);
        self.journal.timeout(self.now).expect("write to memory");
        self.engine.handle_timeout(self.now);
        self.drain()
    }

    /// The next timer deadline if it is not after `until`.
    pub fn next_timer(&self, until: Timestamp) -> Option<Timestamp> {
        self.engine.poll_timeout().filter(|t| *t <= until)
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match &o {
                Output::ClientReady { client } => {
                    let mut frames = Vec::new();
                    klinegate::replay::hosted::write_all(&mut self.engine, *client, &mut frames);
                    for f in frames {
                        self.frames.push((client.0, serde_json::from_slice(&f).expect("frames are JSON")));
                    }
                }
                // Store effects are not recorded: a replay on its own store
                // answers them the same way, at the same point.
                _ => {
                    hosted::carry(&mut self.engine, &mut self.store, &o, self.now);
                }
            }
            outs.push(o);
        }
        outs
    }

    pub fn take_frames(&mut self) -> Vec<(u64, serde_json::Value)> {
        std::mem::take(&mut self.frames)
    }

    pub fn journal_text(self) -> String {
        String::from_utf8(self.journal.into_inner()).expect("utf8 journal")
    }
}
