//! The sans-I/O homeserver: `http::Request` in, `http::Response` out.
//!
//! Everything the core needs from its platform comes in through [`Homeserver::new`]:
//! the [`Store`], a [`Clock`] and a [`Random`] source. No globals, no sockets, no
//! browser or OS types, so `cargo test` exercises it natively.

mod api;
mod error;
mod platform;
mod router;

use std::sync::Arc;

use bytes::Bytes;

pub use self::{
    error::Error,
    platform::{Clock, OsRandom, Random, SystemClock},
    router::{error_response, MAX_BODY_BYTES},
};
use crate::store::{Schema, Store};

/// The tables of a glia node's store.
pub const SCHEMA: Schema = Schema { version: 1, tables: &["meta"] };

/// The value of the `Server` header on every response the core makes, so a client
/// (or a test) can tell glia answered rather than whatever serves the page.
pub const SERVER: &str = concat!("glia/", env!("CARGO_PKG_VERSION"));

pub struct Homeserver {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
}

impl Homeserver {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, random: Arc<dyn Random>) -> Self {
        Self { store, clock, random }
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

    pub fn random(&self) -> &dyn Random {
        &*self.random
    }
}
