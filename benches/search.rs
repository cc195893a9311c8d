//! `POST /search` natively, in process: the first search over a room of
//! 100,000 messages (which builds the index) and then searches for rare and
//! common words, on the memory and disk stores. The IndexedDB figures come
//! from the browser bench page (scripts/bench).

use std::sync::Arc;

use glia::{
    bench,
    core::SCHEMA,
    store::{DiskStore, MemoryStore},
};

const MESSAGES: usize = 100_000;
const RUNS: usize = 20;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = bench::search(Arc::new(MemoryStore::new(SCHEMA)), MESSAGES, RUNS).await.expect("memory");
    let disk_store = DiskStore::open(dir.path().join("search.redb"), SCHEMA).await.expect("open disk store");
    let disk = bench::search(Arc::new(disk_store), MESSAGES, RUNS).await.expect("disk");
    print!("{}{}", bench::rows("memory", &memory), bench::rows("disk (redb)", &disk));
}
