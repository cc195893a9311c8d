//! The event engine natively: events created, signed, authorized and persisted
//! per second (memory and disk stores), events received in federation
//! transactions per second, received PDUs verified per second, and
//! state resolution of two conflicting forks in rooms of 1,000 and 10,000 members.
//! The IndexedDB figure comes from the browser bench page (scripts/bench).

use std::sync::Arc;

use glia::{
    bench,
    core::SCHEMA,
    store::{DiskStore, MemoryStore},
};

const EVENTS: usize = 5_000;
const FORK: usize = 100;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = bench::send_messages(Arc::new(MemoryStore::new(SCHEMA)), EVENTS).await.expect("memory");
    let disk_store = DiskStore::open(dir.path().join("events.redb"), SCHEMA).await.expect("open disk store");
    let disk = bench::send_messages(Arc::new(disk_store), EVENTS / 5).await.expect("disk");
    let disk_store = DiskStore::open(dir.path().join("concurrent.redb"), SCHEMA).await.expect("open disk store");
    let concurrent = bench::send_messages_concurrently(Arc::new(disk_store), EVENTS / 5, 8).await.expect("concurrent");
    let received = bench::receive_transactions(Arc::new(MemoryStore::new(SCHEMA)), EVENTS).await.expect("receive");
    let disk_store = DiskStore::open(dir.path().join("received.redb"), SCHEMA).await.expect("open disk store");
    let disk_received = bench::receive_transactions(Arc::new(disk_store), EVENTS).await.expect("receive on disk");
    let verify = bench::verify_pdus(EVENTS).expect("verify");
    let mut resolution = Vec::new();
    for members in [1_000, 10_000] {
        resolution.push(bench::resolve_forks(members, FORK).await.expect("resolve"));
    }
    print!(
        "{}{}{}{}",
        bench::rows("memory", &[memory, received]),
        bench::rows("disk (redb)", &[disk, concurrent, disk_received]),
        bench::rows("native", &[verify]),
        bench::rows("memory", &resolution),
    );
}
