//! Shared by the core benches: an engine whose pinned series is live on an
//! acknowledged exchange connection (answered by the library's exchange
//! model), and draining outputs.
#![allow(dead_code)]

use klinegate::engine::{Engine, Input, Output};
use klinegate::replay::exchange::{Answer, ExchangeModel};
use klinegate::replay::hosted;
use klinegate::store::Store;
use klinegate::time::Timestamp;

/// Every output, store effects carried out at once on `store` (as the
/// shell does, without its slicing).
pub fn drain(e: &mut Engine, store: &mut dyn Store) -> Vec<Output> {
    let mut outs = Vec::new();
    while let Some(o) = e.poll_output() {
        let now = e.now();
        hosted::carry(e, store, &o, now);
        outs.push(o);
    }
    outs
}

/// Starts the engine and answers its connection and SUBSCRIBE as the
/// exchange model does; returns the connection id.
pub fn start_live(e: &mut Engine, store: &mut dyn Store, now: Timestamp) -> u64 {
    let mut exchange = ExchangeModel::new(Answer::Auto);
    e.handle(Input::Start, now);
    let mut outs = drain(e, store);
    while !outs.is_empty() {
        let replies: Vec<_> = outs.iter().filter_map(|o| exchange.on_output(o, now)).flatten().collect();
        for r in replies {
            if let Some(input) = exchange.deliver(r) {
                e.handle(input, now);
            }
        }
        outs = drain(e, store);
    }
    let conn = exchange.conns.keys().next().copied().expect("the pinned series opens a connection");
    assert!(!exchange.conns[&conn].streams.is_empty(), "the connection subscribes the stream");
    conn
}
