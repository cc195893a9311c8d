//! `/sync` natively, in process (no HTTP): the initial sync of an account in
//! 100 rooms of 100 messages, and an incremental sync after one new message, on
//! the memory and disk stores. benches/client.mjs measures the same over HTTP.

use std::sync::Arc;

use glia::{
    bench,
    core::SCHEMA,
    store::{DiskStore, MemoryStore},
};

const ROOMS: usize = 100;
const EVENTS: usize = 100;
const RUNS: usize = 20;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = bench::sync(Arc::new(MemoryStore::new(SCHEMA)), ROOMS, EVENTS, RUNS).await.expect("memory");
    let disk_store = DiskStore::open(dir.path().join("sync.redb"), SCHEMA).await.expect("open disk store");
    let disk = bench::sync(Arc::new(disk_store), ROOMS, EVENTS, RUNS).await.expect("disk");
    print!("{}{}", bench::rows("memory", &memory), bench::rows("disk (redb)", &disk));
}
