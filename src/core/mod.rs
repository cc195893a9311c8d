//! The sans-I/O homeserver: `http::Request` in, `http::Response` out.
//!
//! Everything the core needs from its platform comes in through [`Homeserver::new`]:
//! the [`Store`], a [`Clock`] and a [`Random`] source. No globals, no sockets, no
//! browser or OS types, so `cargo test` exercises it natively.

mod api;
mod error;
pub mod identity;
pub mod pdu;
mod platform;
mod router;
pub mod service;

use std::sync::Arc;

use bytes::Bytes;

pub use self::{
    error::Error,
    platform::{Clock, OsRandom, Random, SystemClock},
    router::{error_response, MAX_BODY_BYTES},
};
use self::{identity::NodeKey, service::rooms::Rooms};
use crate::store::{Schema, Store, StoreError};

/// The tables of a glia node's store; each module documents its key encodings.
pub const SCHEMA: Schema = Schema {
    version: 3,
    tables: &[
        "meta",
        service::events::EVENTS,
        service::events::AUTH_GRAPH,
        service::state::STATE_GROUPS,
        service::rooms::ROOMS,
        service::rooms::TIMELINE,
        service::rooms::TOPOLOGY,
        service::rooms::HELD_REDACTIONS,
    ],
};

/// The value of the `Server` header on every response the core makes, so a client
/// (or a test) can tell glia answered rather than whatever serves the page.
pub const SERVER: &str = concat!("glia/", env!("CARGO_PKG_VERSION"));

pub struct Homeserver {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: Arc<NodeKey>,
    rooms: Rooms,
}

impl Homeserver {
    /// Opens the node over `store`, making its key on first start.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Result<Self, StoreError> {
        let key = Arc::new(NodeKey::load_or_create(&*store, &*random).await?);
        let rooms = Rooms::new(store.clone(), key.clone(), clock.clone(), random);
        Ok(Self { store, clock, key, rooms })
    }

    /// Answers one Client-Server, Federation or media request. Never fails: every
    /// error becomes a Matrix error response here.
    pub async fn handle(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        router::handle(self, request).await
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The node's identity; its server name is its public key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }
}
