//! Tests of the event engine through its own storage path, natively.

mod auth_rules;
mod fixtures;
mod forged;
mod rooms;
mod vectors;

use std::sync::Arc;

use ruma::{OwnedUserId, UserId};

use crate::{
    core::{Clock, Homeserver, OsRandom, SCHEMA},
    store::{MemoryStore, Store},
};

/// A clock tests set by hand, so timestamps (and so event IDs) are repeatable.
pub struct FixedClock(pub std::sync::atomic::AtomicU64);

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

pub async fn node_on(store: Arc<dyn Store>) -> Homeserver {
    let clock = Arc::new(FixedClock(1_700_000_000_000.into()));
    Homeserver::open(store, clock, Arc::new(OsRandom)).await.unwrap()
}

pub async fn node() -> Homeserver {
    node_on(Arc::new(MemoryStore::new(SCHEMA))).await
}

/// `@name:<the node's server name>`.
pub fn user(hs: &Homeserver, name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:{}", hs.key().server_name())).unwrap()
}
