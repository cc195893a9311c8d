//! The sans-I/O homeserver: `http::Request` in, `http::Response` out.
//!
//! Everything the core needs from its platform comes in through [`Homeserver::new`]:
//! the [`Store`], a [`Clock`] and a [`Random`] source. No globals, no sockets, no
//! browser or OS types, so `cargo test` exercises it natively.

mod api;
mod body;
mod error;
pub mod identity;
mod limits;
pub mod pdu;
mod platform;
mod router;
pub mod service;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod testing;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{join, join3};
use ruma::events::room::member::MembershipState;

use self::{
    api::client::{account::Uiaa, push::UnreadCounts},
    identity::NodeKey,
    limits::RateLimit,
    service::{
        accounts::Accounts, aliases::Aliases, backup::Backups, directory::Directory, ephemeral::Ephemeral,
        federation::Federation, keys::Keys, media::MediaRepository, notifier::Notifier, pushers::Pushers,
        reports::Reports, rooms::Rooms, search::Search, sender::Sender, to_device::ToDevice,
        transactions::Transactions, user_data::UserData,
    },
};
pub use self::{
    body::{Body, BodyError, Pieces},
    error::Error,
    platform::{Clock, OsRandom, Random, Sleep, SystemClock, Thumbnailer},
    router::{error_response, MAX_BODY_BYTES},
};
use crate::p2p::{Frame, Inbound, Payload, Transport};
use crate::store::{Schema, Store, StoreError};

/// Users whose first `/sync` [`Homeserver::warm_up`] reads ahead for: a
/// browser node has one or two; a native node with many warms its first ones.
const WARM_USERS: usize = 16;

/// The tables of a glia node's store; each module documents its key encodings.
pub const SCHEMA: Schema = Schema {
    version: 13,
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
        service::rooms::BACKFILLED,
        service::rooms::HELD_REDACTIONS,
        service::rooms::OUTBOX,
        service::rooms::INVITES,
        service::sender::OUTBOUND,
        service::sender::OUTBOUND_EDUS,
        api::federation::transactions::FEDERATION_TXNS,
        service::keys::DEVICE_KEYS,
        service::keys::ONE_TIME_KEYS,
        service::keys::FALLBACK_KEYS,
        service::keys::KEY_CHANGES,
        service::keys::DEVICE_STREAMS,
        service::keys::CROSS_SIGNING_KEYS,
        service::keys::KEY_SIGNATURES,
        service::to_device::TO_DEVICE,
        service::to_device::SEEN,
        service::backup::BACKUP_VERSIONS,
        service::backup::BACKUP_KEYS,
        service::backup::BACKUP_COUNTERS,
        service::media::MEDIA,
        service::media::MEDIA_CHUNKS,
        service::media::THUMBNAILS,
        service::media::MEDIA_UPLOADS,
        service::relations::RELATIONS,
        service::relations::RELATED,
        service::relations::THREAD_ACTIVITY,
        service::search::SEARCH,
        service::search::SEARCH_PROGRESS,
        service::pushers::PUSHERS,
        service::pushers::PUSHERS_BY_KEY,
        service::reports::REPORTS,
    ],
};

/// Locks `mutex`, recovering the data if a holder panicked: nothing panics
/// while holding the core's locks, and a node that refused every request after
/// one would be worse off.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request frame taken in, waiting to be answered.
pub struct Admitted(Option<(Frame, Option<service::federation::Turn>)>);

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
    keys: Keys,
    to_device: ToDevice,
    backups: Backups,
    media: MediaRepository,
    search: Search,
    pushers: Pushers,
    reports: Reports,
    federation: Federation,
    sender: Sender,
    limits: Limits,
    uiaa: Uiaa,
    unread_counts: UnreadCounts,
}

/// The node's rate limits, per key, and how long a request may wait.
pub(crate) struct Limits {
    /// Registrations (and availability checks) on this node: a burst, then one every 2 s.
    pub register: RateLimit,
    /// Login attempts per user ID: a burst, then one a second.
    pub login: RateLimit,
    /// Federation requests per origin server: room for a node catching up on a
    /// mailbox, not for a flood.
    pub federation: RateLimit,
    /// Media IDs reserved for later uploads (`/media/v1/create`) per user:
    /// each holds a record until it expires, so a user may not pile them up.
    pub media_create: RateLimit,
    /// The largest upload to the media repository, in bytes.
    pub max_upload_bytes: usize,
    /// The longest a `/sync` long-poll waits, in milliseconds.
    pub long_poll_ms: u64,
}

/// What clients ask for anyway; a shell whose requests live shorter lowers it
/// with [`Homeserver::cap_long_polls`].
const LONG_POLL_MS: u64 = 30_000;
/// The largest upload unless the shell sets another with
/// [`Homeserver::limit_uploads`]: a phone's video, not a disk image.
const MAX_UPLOAD_BYTES: usize = 50 << 20;
/// How old an upload that never ended must be for its chunks to be removed
/// when the node opens.
const STALE_UPLOAD_MS: u64 = 60 * 60 * 1000;

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
        let media = MediaRepository::new(store.clone());
        // Another worker of this node may be uploading still; not for this long.
        media.sweep_uploads(clock.now_millis().saturating_sub(STALE_UPLOAD_MS)).await?;
        Ok(Self {
            accounts: Accounts::new(store.clone(), clock.clone(), random.clone(), server_name),
            federation: Federation::new(key.clone(), clock.clone(), &*random),
            sender: Sender::new(),
            rooms: Rooms::new(store.clone(), key.clone(), clock.clone(), random, notifier.clone()),
            user_data: UserData::new(store.clone(), clock.clone(), notifier.clone()),
            ephemeral: Ephemeral::new(clock.clone(), notifier.clone()),
            aliases: Aliases::new(store.clone()),
            directory: Directory::new(store.clone()),
            transactions: Transactions::new(store.clone()),
            keys: Keys::new(store.clone()),
            to_device: ToDevice::new(store.clone()),
            backups: Backups::new(store.clone()),
            media,
            search: Search::new(store.clone()),
            pushers: Pushers::new(store.clone()),
            reports: Reports::new(store.clone(), clock.clone()),
            limits: Limits {
                register: RateLimit::new(50, 0.5),
                login: RateLimit::new(10, 1.0),
                federation: RateLimit::new(500, 200.0),
                media_create: RateLimit::new(30, 0.1),
                long_poll_ms: LONG_POLL_MS,
                max_upload_bytes: MAX_UPLOAD_BYTES,
            },
            uiaa: Uiaa::default(),
            unread_counts: UnreadCounts::default(),
            store,
            clock,
            key,
            notifier,
        })
    }

    /// Answers one Client-Server, Federation or media request, a file's bytes
    /// as they are read: what shells serve. Never fails: every error becomes a
    /// Matrix error response here.
    pub async fn serve(&self, request: http::Request<impl Into<Body>>) -> http::Response<Body> {
        router::handle(self, request.map(Into::into)).await
    }

    /// [`Homeserver::serve`] with the response's body read whole: an answer
    /// to another node, which goes in one frame.
    pub async fn handle(&self, request: http::Request<impl Into<Body>>) -> http::Response<Bytes> {
        let (parts, body) = self.serve(request).await.into_parts();
        let body = match body.collect(usize::MAX).await {
            Ok(body) => body,
            Err(err) => return error_response(err),
        };
        http::Response::from_parts(parts, body)
    }

    /// Keeps `/sync` long-polls under `ms`: a Service Worker may be stopped
    /// while a fetch waits longer than the browser allows.
    pub fn cap_long_polls(&mut self, ms: u64) {
        self.limits.long_poll_ms = self.limits.long_poll_ms.min(ms);
    }

    /// Makes thumbnails with `thumbnailer` from now on.
    pub fn make_thumbnails_with(&mut self, thumbnailer: Arc<dyn platform::Thumbnailer>) {
        self.media.make_thumbnails_with(thumbnailer);
    }

    /// Sets the largest file users may upload, in bytes.
    pub fn limit_uploads(&mut self, bytes: usize) {
        self.limits.max_upload_bytes = bytes;
    }

    /// Connects the node to other nodes: federation requests and answers leave
    /// through `transport` from now on.
    pub fn attach(&self, transport: Arc<dyn Transport>) {
        self.federation.attach(transport);
        self.sender.retry_all();
    }

    /// The node's work besides answering requests, forever: sending its events
    /// and updates to other servers (presence news once the rate limit lets
    /// it), and keeping the search index current. The shell runs it beside
    /// the node; it resumes from the store.
    pub async fn run_background(&self) {
        let presence = api::federation::transactions::send_held_presence(self);
        join(self.warm_up(), join3(self.sender.run(self), self.search.run(self), presence)).await;
    }

    /// Reads ahead what a first `/sync` of this node's users reads, into the
    /// caches: a node starts before its clients ask (in a browser, the worker
    /// wakes as the page opens, and the client asks once it has booted), and a
    /// store's first read of a table is slow, as is the first run of the code
    /// behind it in a worker just started. What fails is left for the sync.
    pub async fn warm_up(&self) {
        let Ok(users) = self.accounts.users().await else { return };
        for (user, _) in users.iter().take(WARM_USERS) {
            for (device, _) in self.accounts.devices(user).await.unwrap_or_default() {
                let _ = join(self.keys.available(user, &device), self.to_device.pending(user, &device, 0, 1)).await;
            }
            let (rooms, _) = join(self.rooms.rooms_of(user), self.user_data.account_data_since(user, u64::MAX)).await;
            let Ok(rooms) = rooms else { continue };
            let joined = rooms.iter().filter(|(_, m)| m.membership == MembershipState::Join);
            let _ = self.rooms.prefetch_rooms(&joined.map(|(id, _)| &**id).collect::<Vec<_>>()).await;
        }
    }

    /// Takes what the transport delivered, in arrival order: answers and
    /// delivery reports at once; a request is returned to be answered with
    /// [`Homeserver::answer`], on a task of its own if the shell likes, while
    /// `/send` transactions from one node still apply in the order they came.
    pub fn admit(&self, inbound: Inbound) -> Admitted {
        let bytes = match inbound {
            Inbound::Delivery { to, id, delivery } => {
                self.federation.delivered(to, id, delivery);
                return Admitted(None);
            }
            Inbound::Frame(bytes) => bytes,
        };
        // Nobody to answer: the origin of a frame that does not parse is unknown.
        let Ok(frame) = Frame::decode(bytes) else { return Admitted(None) };
        if frame.destination != self.federation.me() {
            return Admitted(None);
        }
        self.sender.heard_from(&frame.origin.server_name());
        let Payload::Request(request) = &frame.payload else {
            self.federation.answered(frame);
            return Admitted(None);
        };
        // Counted as they arrive, before they wait in line: a flood is refused
        // at once instead of queueing behind itself. Frames from a relay's
        // mailbox are not: it hands them over at its own pace, and one refused
        // would be gone.
        let limited = match frame.mailbox {
            true => Ok(()),
            false => self.limits.federation.check(&frame.origin.to_string(), self.clock.now_millis()),
        };
        if let Err(err) = limited {
            let _ = self.federation.transmit(frame.origin, &frame.respond(router::error_response(err)));
            return Admitted(None);
        }
        let is_transaction =
            request.method() == http::Method::PUT && request.uri().path().starts_with("/_matrix/federation/v1/send/");
        let turn = is_transaction.then(|| self.federation.turn(frame.origin));
        Admitted(Some((frame, turn)))
    }

    /// Answers an admitted request through the transport. `true` once it is
    /// done with, when a relay's mailbox may forget the frame; `false` when this
    /// node failed to handle it (its store, say), so it is worth handing over again.
    pub async fn answer(&self, admitted: Admitted) -> bool {
        let Some((frame, turn)) = admitted.0 else { return true };
        if let Some(turn) = &turn {
            turn.wait().await;
        }
        let Payload::Request(request) = &frame.payload else { return true };
        let mut request = request.clone();
        request.extensions_mut().insert(router::FrameOrigin(frame.origin));
        let response = self.handle(request).await;
        drop(turn);
        let handled = !response.status().is_server_error();
        let _ = self.federation.transmit(frame.origin, &frame.respond(response));
        handled
    }

    /// [`Homeserver::admit`] then [`Homeserver::answer`].
    pub async fn inbound(&self, inbound: Inbound) -> bool {
        self.answer(self.admit(inbound)).await
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

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn to_device(&self) -> &ToDevice {
        &self.to_device
    }

    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    pub fn media(&self) -> &MediaRepository {
        &self.media
    }

    pub fn search(&self) -> &Search {
        &self.search
    }

    pub fn pushers(&self) -> &Pushers {
        &self.pushers
    }

    /// What users reported to the node's owner.
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    pub fn sender(&self) -> &Sender {
        &self.sender
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use async_trait::async_trait;
    use serde_json::json;

    use super::{
        testing::{call, register},
        *,
    };
    use crate::store::{Batch, Direction, KeyRange, MemoryStore};

    /// A memory store that counts the reads of each table.
    struct Reads {
        store: MemoryStore,
        counts: Mutex<HashMap<String, usize>>,
    }

    impl Reads {
        fn count(&self, table: &str) {
            *self.counts.lock().unwrap().entry(table.to_owned()).or_default() += 1;
        }
    }

    #[async_trait]
    impl Store for Reads {
        async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.count(table);
            self.store.get(table, key).await
        }

        async fn scan_nonempty(
            &self,
            table: &str,
            range: KeyRange,
            direction: Direction,
            limit: usize,
        ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
            self.count(table);
            self.store.scan_nonempty(table, range, direction, limit).await
        }

        async fn write(&self, batch: Batch) -> Result<(), StoreError> {
            self.store.write(batch).await
        }
    }

    /// A node started afresh over a store with a user in a room: its first
    /// `/sync` of that user reads the user's devices' keys and messages,
    /// account data and rooms from the store, unless it warmed up first.
    #[tokio::test]
    async fn a_first_sync_after_warming_up_finds_the_users_tables_read() {
        let store = Arc::new(Reads { store: MemoryStore::new(SCHEMA), counts: Mutex::default() });
        let open = || Homeserver::open(store.clone(), Arc::new(SystemClock), Arc::new(OsRandom));
        let hs = open().await.unwrap();
        let token = register(&hs, "alice").await;
        call(&hs, "POST", "/_matrix/client/v3/createRoom", Some(&token), json!({})).await;
        let since = call(&hs, "GET", "/_matrix/client/v3/sync", Some(&token), json!({})).await["next_batch"].clone();
        drop(hs);

        let tables = [
            service::to_device::TO_DEVICE,
            service::keys::ONE_TIME_KEYS,
            service::keys::FALLBACK_KEYS,
            service::user_data::ACCOUNT_DATA,
            service::rooms::MEMBERSHIPS,
        ];
        let path = format!("/_matrix/client/v3/sync?timeout=0&since={}", since.as_str().unwrap());
        for warm in [false, true] {
            let hs = open().await.unwrap();
            if warm {
                hs.warm_up().await;
            }
            store.counts.lock().unwrap().clear();
            let sync = call(&hs, "GET", &path, Some(&token), json!({})).await;
            assert!(sync["next_batch"].is_string(), "{sync}");
            let counts = store.counts.lock().unwrap();
            let read: Vec<_> = tables.iter().filter(|table| counts.contains_key(**table)).collect();
            match warm {
                true => assert!(read.is_empty(), "read after warming up: {read:?}"),
                false => assert_eq!(read.len(), tables.len(), "a cold node reads them all: {read:?}"),
            }
        }
    }
}
