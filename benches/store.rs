//! Store operations per second on the native backends (memory, redb on disk).
//! The IndexedDB figures come from the browser bench page (scripts/bench).

use glia::{
    bench,
    store::{DiskStore, MemoryStore},
};

const N: usize = 10_000;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = bench::run(&MemoryStore::new(bench::SCHEMA), N).await.expect("memory bench");
    let disk_store = DiskStore::open(dir.path().join("bench.redb"), bench::SCHEMA).await.expect("open disk store");
    let disk = bench::run(&disk_store, N).await.expect("disk bench");
    print!("{}{}", bench::rows("memory", &memory), bench::rows("disk (redb)", &disk));
}
