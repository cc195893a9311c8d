//! The IndexedDB side of the store benchmark, run by `benches/browser.mjs` in
//! headless Chromium.

use wasm_bindgen::prelude::*;

use std::sync::Arc;

use crate::{
    bench,
    core::SCHEMA,
    store::{IndexedDbStore, MemoryStore},
};

/// Runs the store workload with `n` operations on a fresh IndexedDB database and
/// returns the figures as Markdown table rows.
#[wasm_bindgen]
pub async fn bench_indexeddb(n: usize) -> Result<String, JsError> {
    let name = format!("glia-bench-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, bench::SCHEMA).await?;
    let figures = bench::run(&store, n).await?;
    Ok(bench::rows("IndexedDB (Chromium)", &figures))
}

/// Sends `n` messages through a node on a fresh IndexedDB store (and `5 n`
/// on another), receives `n`
/// from another server in transactions, and sends `n` through a node on a memory
/// store (the engine's own cost in wasm); returns the figures as table rows.
#[wasm_bindgen]
pub async fn bench_events_indexeddb(n: usize) -> Result<String, JsError> {
    let name = format!("glia-bench-events-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    let sent = bench::send_messages(Arc::new(store), n).await?;
    // Five times as many: long enough that the store's log is applied to its
    // tables while messages keep coming, not only after them.
    let name = format!("glia-bench-sustained-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    let sustained = bench::send_messages(Arc::new(store), 5 * n).await?;
    let name = format!("glia-bench-concurrent-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    let concurrent = bench::send_messages_concurrently(Arc::new(store), n, 8).await?;
    let name = format!("glia-bench-received-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    let received = bench::receive_transactions(Arc::new(store), n).await?;
    let memory = bench::send_messages(Arc::new(MemoryStore::new(SCHEMA)), n).await?;
    Ok(bench::rows("IndexedDB (Chromium)", &[sent, sustained, concurrent, received])
        + &bench::rows("memory (wasm, Chromium)", &[memory]))
}

/// `/sync` of an account in `rooms` rooms of `events` messages, through the
/// router, on IndexedDB and on a memory store (the wasm's own cost), as table rows.
#[wasm_bindgen]
pub async fn bench_sync(rooms: usize, events: usize) -> Result<String, JsError> {
    let name = format!("glia-bench-sync-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    let indexeddb = bench::sync(Arc::new(store), rooms, events, 5).await?;
    let memory = bench::sync(Arc::new(MemoryStore::new(SCHEMA)), rooms, events, 5).await?;
    Ok(bench::rows("IndexedDB (Chromium)", &indexeddb) + &bench::rows("memory (wasm, Chromium)", &memory))
}

/// `/search` over a room of `messages` messages on IndexedDB, as table rows.
#[wasm_bindgen]
pub async fn bench_search(messages: usize) -> Result<String, JsError> {
    let name = format!("glia-bench-search-{}", js_sys::Date::now());
    let store = IndexedDbStore::open(&name, SCHEMA).await?;
    Ok(bench::rows("IndexedDB (Chromium)", &bench::search(Arc::new(store), messages, 5).await?))
}
