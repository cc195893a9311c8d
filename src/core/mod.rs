//! The sans-I/O homeserver: `http::Request` in, `http::Response` out.
//!
//! Everything the core needs from its platform comes in through [`Homeserver::new`]:
//! the [`Store`], a [`Clock`] and a [`Random`] source. No globals, no sockets, no
//! browser or OS types, so `cargo test` exercises it natively.

mod api;
mod error;
pub mod identity;
mod limits;
pub mod pdu;
mod platform;
mod router;
pub mod service;

use std::sync::Arc;

use bytes::Bytes;

use self::{
    api::client::{account::Uiaa, push::UnreadCounts},
    identity::NodeKey,
    limits::RateLimit,
    service::{
        accounts::Accounts, aliases::Aliases, directory::Directory, ephemeral::Ephemeral, federation::Federation,
        notifier::Notifier, rooms::Rooms, transactions::Transactions, user_data::UserData,
    },
};
pub use self::{
    error::Error,
    platform::{Clock, OsRandom, Random, Sleep, SystemClock},
    router::{error_response, MAX_BODY_BYTES},
};
use crate::p2p::{Frame, Inbound, Payload, Transport};
use crate::store::{Schema, Store, StoreError};

/// The tables of a glia node's store; each module documents its key encodings.
pub const SCHEMA: Schema = Schema {
    version: 5,
    tables: &[
        service::accounts::USERS,
        service::accounts::DEVICES,
        service::accounts::TOKENS,
        service::aliases::ALIASES,
        service::directory::DIRECTORY,
        service::user_data::ACCOUNT_DATA,
        service::user_data::RECEIPTS,
        service::user_data::FILTERS,
        service::rooms::MEMBERSHIPS,
        service::transactions::TRANSACTIONS,
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

/// Locks `mutex`, recovering the data if a holder panicked: nothing panics
/// while holding the core's locks, and a node that refused every request after
/// one would be worse off.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The value of the `Server` header on every response the core makes, so a client
/// (or a test) can tell glia answered rather than whatever serves the page.
pub const SERVER: &str = concat!("glia/", env!("CARGO_PKG_VERSION"));

pub struct Homeserver {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: Arc<NodeKey>,
    notifier: Arc<Notifier>,
    accounts: Accounts,
    rooms: Rooms,
    user_data: UserData,
    ephemeral: Ephemeral,
    aliases: Aliases,
    directory: Directory,
    transactions: Transactions,
    federation: Federation,
    limits: Limits,
    uiaa: Uiaa,
    unread_counts: UnreadCounts,
}

/// The node's rate limits, per key.
pub(crate) struct Limits {
    /// Registrations (and availability checks) on this node: a burst, then one every 2 s.
    pub register: RateLimit,
    /// Login attempts per user ID: a burst, then one a second.
    pub login: RateLimit,
}

impl Homeserver {
    /// Opens the node over `store`, making its key on first start.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Result<Self, StoreError> {
        let key = Arc::new(NodeKey::load_or_create(&*store, &*random).await?);
        let notifier = Arc::new(Notifier::default());
        let server_name = key.server_name().to_owned();
        Ok(Self {
            accounts: Accounts::new(store.clone(), clock.clone(), random.clone(), server_name),
            federation: Federation::new(key.clone(), clock.clone(), &*random),
            rooms: Rooms::new(store.clone(), key.clone(), clock.clone(), random, notifier.clone()),
            user_data: UserData::new(store.clone(), clock.clone(), notifier.clone()),
            ephemeral: Ephemeral::new(clock.clone(), notifier.clone()),
            aliases: Aliases::new(store.clone()),
            directory: Directory::new(store.clone()),
            transactions: Transactions::new(store.clone()),
            limits: Limits { register: RateLimit::new(50, 0.5), login: RateLimit::new(10, 1.0) },
            uiaa: Uiaa::default(),
            unread_counts: UnreadCounts::default(),
            store,
            clock,
            key,
            notifier,
        })
    }

    /// Answers one Client-Server, Federation or media request. Never fails: every
    /// error becomes a Matrix error response here.
    pub async fn handle(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        router::handle(self, request).await
    }

    /// Connects the node to other nodes: federation requests and answers leave
    /// through `transport` from now on.
    pub fn attach(&self, transport: Arc<dyn Transport>) {
        self.federation.attach(transport);
    }

    /// Takes what the transport delivered: a request from another node is
    /// answered (through the transport) before this returns, so a relay's
    /// mailbox may forget the frame once it does.
    pub async fn inbound(&self, inbound: Inbound) {
        let bytes = match inbound {
            Inbound::Delivery { to, id, delivery } => return self.federation.delivered(to, id, delivery),
            Inbound::Frame(bytes) => bytes,
        };
        let Ok(frame) = Frame::decode(bytes) else {
            // Nobody to answer: the origin of a frame that does not parse is unknown.
            return;
        };
        if frame.destination != self.federation.me() {
            return;
        }
        let Payload::Request(request) = &frame.payload else {
            return self.federation.answered(frame);
        };
        let mut request = request.clone();
        request.extensions_mut().insert(router::FrameOrigin(frame.origin));
        let response = self.handle(request).await;
        let _ = self.federation.transmit(frame.origin, &frame.respond(response));
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

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub fn user_data(&self) -> &UserData {
        &self.user_data
    }

    pub fn ephemeral(&self) -> &Ephemeral {
        &self.ephemeral
    }

    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn transactions(&self) -> &Transactions {
        &self.transactions
    }

    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn uiaa(&self) -> &Uiaa {
        &self.uiaa
    }

    pub(crate) fn unread_counts(&self) -> &UnreadCounts {
        &self.unread_counts
    }
}
