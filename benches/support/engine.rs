//! Shared by the core benches: an engine whose pinned series is live on an
//! acknowledged exchange connection, and draining outputs.
#![allow(dead_code)]

use klinegate::engine::{Engine, Input, Output};
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

/// Starts the engine and answers its connection and SUBSCRIBE like the
/// exchange does; returns the connection id.
pub fn start_live(e: &mut Engine, store: &mut dyn Store, now: Timestamp) -> u64 {
    e.handle(Input::Start, now).expect("start");
    let conn = drain(e, store)
        .into_iter()
        .find_map(|o| match o {
            Output::UpstreamConnect { conn, .. } => Some(conn),
            _ => None,
        })
        .expect("the pinned series opens a connection");
    e.handle(Input::UpstreamConnected { conn }, now).expect("connected");
    let id = drain(e, store)
        .into_iter()
        .find_map(|o| match o {
            Output::UpstreamSend { text, .. } => serde_json::from_str::<serde_json::Value>(&text).ok()?.get("id")?.as_u64(),
            _ => None,
        })
        .expect("the connection subscribes the stream");
    let ack = format!("{{\"result\":null,\"id\":{id}}}");
    e.handle(Input::UpstreamText { conn, text: ack }, now).expect("ack");
    conn
}
