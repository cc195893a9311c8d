//! Rooms as DAGs of events on the store: creating rooms, appending local events,
//! accepting remote PDUs (with the spec's checks, rejection and soft-failure),
//! and reading state and timelines back (and, for other servers, auth chains
//! and walks along `prev_events`: see `dag`).
//!
//! Every event is checked against the auth rules at its auth events, at the state
//! before it (resolved over its `prev_events`) and, for remote events, at the
//! room's current state. Writes go through one lock and land as one atomic batch
//! per commit (an event, a created room, a federation transaction, or the local
//! events queued while the previous commit was written: see [`commit`]), guarded
//! by preconditions on the room records and the counters, so a second writer on
//! the same store fails loudly instead of forking the room.
//!
//! Key encodings:
//! - `rooms`: room ID → [`RoomRecord`] as JSON
//! - `timeline`: room ID, 0, stream position (u64 big-endian) → event ID
//! - `topology`: room ID, 0, depth (u64 BE), stream position (u64 BE) → event ID
//! - `backfilled`: room ID, 0, stream position (u64 BE) → event ID: the events
//!   backfilled into the room (see `history`), which have a place in its
//!   topology but not in its timeline; what the search index reads them by
//! - `held_redactions`: room ID, 0, target event ID, 0, redaction event ID → empty:
//!   redactions that arrived before their target, applied when it does
//! - `memberships`: user ID, 0, room ID → [`UserMembership`] as JSON, for users
//!   of this node: the rooms a user is in, was invited to, or left
//! - `outbox`: stream position (u64 BE) → room ID, 0, event ID: this node's
//!   events not yet queued for the room's other servers (see `sender`)
//! - `invites`: user ID, 0, room ID → [`RemoteInvite`] as JSON: invites of local
//!   users to rooms this node does not have
//! - `meta`: `counters` → the last stream position and state group handed out
//!   (two u64 BE), one key so one precondition guards both

use crate::core::lock;
use std::{
    collections::HashMap,
    fmt::Display,
    ops::Bound,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use futures_util::future::Either;
use ruma::{
    canonical_json::CanonicalJsonObject,
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    cache::Cache,
    events::{Events, StoredEvent, EVENTS},
    notifier::Notifier,
    relations::{self, Relations, RELATED},
    room_key,
    state::{State, StateGroups},
};
use crate::{
    core::{
        identity::NodeKey,
        pdu::{self, NewEvent, Pdu, PduError, Placement, DEFAULT_ROOM_VERSION},
        Clock, Random,
    },
    store::{Batch, Direction, KeyRange, Store, StoreError},
};

mod commit;
mod dag;
mod history;
mod remote;
mod tails;

pub(crate) use self::remote::INVITES;
pub use self::{history::GivenState, remote::RemoteInvite};

use self::{
    commit::{Arrival, Before, Commit, Queued, Written, WRITTEN_ROOMS},
    tails::Tails,
};

pub(crate) const ROOMS: &str = "rooms";
pub(crate) const TIMELINE: &str = "timeline";
pub(crate) const TOPOLOGY: &str = "topology";
pub(crate) const BACKFILLED: &str = "backfilled";
pub(crate) const HELD_REDACTIONS: &str = "held_redactions";
pub(crate) const MEMBERSHIPS: &str = "memberships";
pub(crate) const OUTBOX: &str = "outbox";
const META: &str = "meta";
const COUNTERS: &[u8] = b"counters";

/// The spec caps `prev_events` at 20.
const MAX_PREV_EVENTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("unknown room {0}")]
    UnknownRoom(OwnedRoomId),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("the event refers to events this node does not have: {0:?}")]
    MissingEvents(Vec<OwnedEventId>),
    #[error("the event belongs to room {found}, not {expected}")]
    WrongRoom { expected: OwnedRoomId, found: OwnedRoomId },
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("state resolution failed: {0}")]
    Resolution(String),
    #[error("stored room data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RoomError {
    pub(crate) fn corrupt(err: impl Display) -> Self {
        Self::Corrupt(err.to_string())
    }

    /// A failure of the node itself rather than a refusal of the input.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Resolution(_) | Self::Corrupt(_) | Self::Store(_))
    }
}

/// What became of a received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Authorized by its own history but not by the room's current state: kept,
    /// but not shown to clients nor built upon.
    SoftFailed(String),
    /// Not authorized: kept as rejected, never state.
    Rejected(String),
    /// Already stored; nothing changed.
    Duplicate,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    /// The room's current state group.
    pub state: u64,
    /// Forward extremities with their depths.
    pub extremities: Vec<(OwnedEventId, UInt)>,
    /// The stream position of the room's latest event clients see.
    #[serde(default)]
    pub stream: StreamPosition,
    /// The stream position of the event last backfilled into the room.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backfilled: StreamPosition,
}

fn is_zero(position: &StreamPosition) -> bool {
    *position == 0
}

/// A local user's membership of a room, as its current state has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserMembership {
    pub membership: MembershipState,
    /// Where the member event is in the stream.
    pub stream: StreamPosition,
    pub event_id: OwnedEventId,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preset {
    #[default]
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    pub version: Option<RoomVersionId>,
    pub preset: Preset,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// Extra keys for the create event's content (`m.federate`, `type`...).
    pub creation_content: serde_json::Map<String, serde_json::Value>,
    /// Top-level keys that replace those of the default power levels.
    pub power_levels_override: serde_json::Map<String, serde_json::Value>,
    pub initial_state: Vec<NewEvent>,
    /// Keys for the creator's member event besides its membership: their profile.
    pub creator_profile: serde_json::Map<String, serde_json::Value>,
}

/// Writes to land with an event sent by [`Rooms::send_with`], made from it.
#[cfg(not(target_arch = "wasm32"))]
pub type Also = Box<dyn FnOnce(&Pdu) -> crate::store::Batch + Send>;
#[cfg(target_arch = "wasm32")]
pub type Also = Box<dyn FnOnce(&Pdu) -> crate::store::Batch>;

/// A position in a room's timeline for clients: the node's stream order.
pub type StreamPosition = u64;

/// A position in a room's topological order: (depth, stream position).
pub type TopologicalPosition = (u64, u64);

pub struct Rooms {
    store: Arc<dyn Store>,
    key: Arc<NodeKey>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    events: Events,
    groups: StateGroups,
    /// One writer at a time: events are numbered and extremities replaced in order.
    write: async_lock::Mutex<()>,
    written: std::sync::Mutex<Written>,
    queue: std::sync::Mutex<Vec<Queued>>,
    /// Events with redactions held for them; `None` until first read.
    held: std::sync::Mutex<Option<std::collections::HashSet<OwnedEventId>>>,
    notifier: Arc<Notifier>,
    tails: Tails,
    /// Local users' rooms, as [`Rooms::rooms_of`] lists them: every sync asks.
    memberships: Cache<OwnedUserId, Arc<Vec<(OwnedRoomId, UserMembership)>>>,
    relations: Relations,
    /// The outbox entries commits wrote since the sender last took them, for
    /// as long as the sender knows the rest of the outbox (`None`: it must
    /// read the table), so a new event goes out without a read.
    outboxed: std::sync::Mutex<Option<Vec<OutboxEntry>>>,
    /// Commits begun, so a reader knows whether the record it read may be stale.
    commits: AtomicU64,
}

/// An `outbox` key (the event's stream position) and value (room, event).
pub(crate) type OutboxEntry = (Vec<u8>, Vec<u8>);

/// Memberships cached, per generation.
const CACHED_MEMBERSHIPS: usize = 65_536;

impl Rooms {
    pub fn new(
        store: Arc<dyn Store>,
        key: Arc<NodeKey>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            notifier,
            tails: Tails::default(),
            memberships: Cache::new(CACHED_MEMBERSHIPS),
            relations: Relations::new(store.clone()),
            store,
            key,
            clock,
            random,
            events: Events::default(),
            groups: StateGroups::default(),
            write: async_lock::Mutex::new(()),
            written: Default::default(),
            queue: Default::default(),
            held: Default::default(),
            outboxed: Default::default(),
            commits: AtomicU64::new(0),
        }
    }

    /// The outbox entries committed since the last call, or `None` when the
    /// caller must read the outbox table: on the first call, and after a commit
    /// whose outcome is unknown. Entries committed from the first call on are
    /// kept for the next.
    pub(crate) fn take_outboxed(&self) -> Option<Vec<OutboxEntry>> {
        let mut outboxed = lock(&self.outboxed);
        match outboxed.as_mut() {
            Some(entries) => Some(std::mem::take(entries)),
            None => {
                *outboxed = Some(Vec::new());
                None
            }
        }
    }

    /// The caller of [`Rooms::take_outboxed`] could not read the outbox: the
    /// next call asks again.
    pub(crate) fn forget_outboxed(&self) {
        *lock(&self.outboxed) = None;
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Creates a room with `creator` (a user of this node) joined and the preset's
    /// state, and returns its ID. All of it lands in one commit, or none of it.
    pub async fn create_room(&self, creator: &UserId, options: CreateRoom) -> Result<OwnedRoomId, RoomError> {
        self.check_local(creator)?;
        let version = options.version.clone().unwrap_or(DEFAULT_ROOM_VERSION);
        let rules = pdu::rules(&version)?;
        let _write = self.write.lock().await;
        let mut c = Commit::default();

        let mut content = options.creation_content.clone();
        content.insert("room_version".into(), version.as_str().into());
        if !rules.authorization.use_room_create_sender {
            content.insert("creator".into(), creator.as_str().into());
        }
        let room_id = (!rules.authorization.room_create_event_id_as_room_id).then(|| self.new_room_id());
        let create = NewEvent::state(TimelineEventType::RoomCreate, "", content.into());
        let placement = Placement {
            room_id: room_id.as_deref(),
            prev_events: &[],
            auth_events: &[],
            depth: UInt::from(1u32),
            origin_server_ts: self.now(),
        };
        let pdu = pdu::build(&self.key, &rules, creator, &create, placement)?;
        let room_id = pdu.room_id.clone();
        if self.room_for_write(&mut c, &room_id).await?.is_some() {
            return Err(RoomError::Invalid(format!("room {room_id} already exists")));
        }
        self.insert(&mut c, None, &rules, pdu, &HashMap::new(), Before::empty(), Arrival::Local).await?;

        for event in preset_events(creator, &rules, &options) {
            self.send_in(&mut c, &room_id, creator, &event, None).await?;
        }
        self.commit(c).await?;
        Ok(room_id)
    }

    /// Appends an event by a local user after the room's forward extremities.
    pub async fn send(&self, room_id: &RoomId, sender: &UserId, event: &NewEvent) -> Result<Arc<Pdu>, RoomError> {
        self.send_after_or_latest(room_id, sender, event, None, None).await
    }

    /// [`Rooms::send`], with more writes made from the new event landing in the
    /// same commit (what a client's transaction ID names, say).
    pub async fn send_with(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        also: Also,
    ) -> Result<Arc<Pdu>, RoomError> {
        self.send_after_or_latest(room_id, sender, event, None, Some(also)).await
    }

    /// Appends an event by a local user after exactly `prev_events`, forking the
    /// room's DAG if they are not its extremities (for tests and benchmarks).
    pub async fn send_after(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<Arc<Pdu>, RoomError> {
        self.send_after_or_latest(room_id, sender, event, Some(prev_events), None).await
    }

    /// Queues the event for the writer. Whoever holds the write lock sends every
    /// event queued by then in one commit, so senders who arrive while a commit is
    /// being written share the next one instead of waiting for one each. Callers
    /// must drive the future to its end: the task holding the lock carries other
    /// senders' events (the native node runs each request on a task of its own; a
    /// Service Worker's `respondWith` never cancels).
    async fn send_after_or_latest(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Option<Vec<OwnedEventId>>,
        also: Option<Also>,
    ) -> Result<Arc<Pdu>, RoomError> {
        self.check_local(sender)?;
        let (result, mut sent) = futures_channel::oneshot::channel();
        let queued = Queued {
            room_id: room_id.to_owned(),
            sender: sender.to_owned(),
            event: event.clone(),
            prev_events,
            also,
            result,
        };
        lock(&self.queue).push(queued);
        loop {
            // Whichever comes first: another writer sent this event, or the lock
            // is free to send everything queued, this event included.
            let write = self.write.lock();
            futures_util::pin_mut!(write);
            match futures_util::future::select(&mut sent, write).await {
                Either::Left((result, _)) => {
                    return result.unwrap_or_else(|_| Err(RoomError::Corrupt("a queued event was dropped".into())));
                }
                Either::Right((_write, _)) => {
                    let queued = std::mem::take(&mut *lock(&self.queue));
                    if !queued.is_empty() {
                        self.send_queued(queued).await;
                    }
                }
            }
        }
    }

    /// Runs every check on receipt of a PDU from another server and stores it as
    /// accepted, soft-failed or rejected. A PDU that fails the checks which need
    /// nothing but itself (format, hashes, signatures) is dropped with an error.
    pub async fn receive(&self, room_id: &RoomId, json: CanonicalJsonObject) -> Result<Outcome, RoomError> {
        let mut outcomes = self.receive_all(room_id, vec![json]).await?;
        outcomes.pop().unwrap_or_else(|| Err(RoomError::Invalid("no PDU".into())))
    }

    /// [`Rooms::receive`] for the PDUs of a federation transaction or a backfill,
    /// in order, in one commit: each PDU gets its own outcome (an error only
    /// drops that PDU), and the outer error means none was stored.
    pub async fn receive_all(
        &self,
        room_id: &RoomId,
        pdus: Vec<CanonicalJsonObject>,
    ) -> Result<Vec<Result<Outcome, RoomError>>, RoomError> {
        self.receive_all_with(room_id, pdus, Batch::new()).await
    }

    /// [`Rooms::receive_all`], with `also` in the same commit, first: a
    /// precondition that fails there stores none of the PDUs.
    pub async fn receive_all_with(
        &self,
        room_id: &RoomId,
        pdus: Vec<CanonicalJsonObject>,
        also: Batch,
    ) -> Result<Vec<Result<Outcome, RoomError>>, RoomError> {
        // Transactions bring new events: those the caches do not know are taken
        // as new, and the commit's preconditions check it, so the store is not
        // read first (on IndexedDB, a round trip before every transaction).
        // One the store has after all fails the commit, which is then made
        // again, reading first.
        match self.receive_once(room_id, pdus.clone(), also.clone(), true).await {
            Err(RoomError::Store(StoreError::Conflict { table, .. })) if table == EVENTS || table == RELATED => {
                self.receive_once(room_id, pdus, also, false).await
            }
            outcomes => outcomes,
        }
    }

    async fn receive_once(
        &self,
        room_id: &RoomId,
        pdus: Vec<CanonicalJsonObject>,
        also: Batch,
        assume_new: bool,
    ) -> Result<Vec<Result<Outcome, RoomError>>, RoomError> {
        let _write = self.write.lock().await;
        let mut c = Commit { batch: also, ..Commit::default() };
        let rules = self.room_rules(&mut c, room_id, &pdus).await?;
        let checked: Vec<Result<Pdu, RoomError>> = pdus
            .into_iter()
            .map(|json| {
                let rules = rules.as_ref().ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))?;
                let pdu = Pdu::from_remote(json, rules)?;
                match pdu.room_id == room_id {
                    true => Ok(pdu),
                    false => Err(RoomError::WrongRoom { expected: room_id.to_owned(), found: pdu.room_id }),
                }
            })
            .collect();
        // Whether each PDU is new, and whether anything relates to it yet,
        // which serving it to clients asks next.
        let ids: Vec<&EventId> = checked.iter().filter_map(|pdu| Some(&*pdu.as_ref().ok()?.event_id)).collect();
        if assume_new {
            for id in ids.into_iter().filter(|id| !self.events.cached(id)) {
                c.batch = relations::expect_childless(
                    std::mem::take(&mut c.batch).expect(EVENTS, id.as_bytes(), None),
                    room_id,
                    id,
                );
                c.absent.insert(id.to_owned());
                c.childless.push(id.to_owned());
            }
        } else {
            // Read in one go rather than one read per PDU.
            let parents: Vec<(&RoomId, &EventId)> = ids.iter().map(|id| (room_id, *id)).collect();
            let (absent, related) =
                futures_util::future::join(self.events.prefetch(self.store(), &ids), self.relations.prefetch(&parents))
                    .await;
            c.absent = absent?.into_iter().collect();
            related?;
        }

        let mut outcomes = Vec::with_capacity(checked.len());
        for pdu in checked {
            let outcome = match (pdu, &rules) {
                (Ok(pdu), Some(rules)) => match self.room_for_write(&mut c, room_id).await? {
                    None if !is_create(&pdu.json) => Err(RoomError::UnknownRoom(room_id.to_owned())),
                    room => self.insert_remote(&mut c, room, rules, pdu).await,
                },
                (Ok(_), None) => Err(RoomError::UnknownRoom(room_id.to_owned())),
                (Err(err), _) => Err(err),
            };
            // Refusals happen before anything is gathered; other failures (the
            // store, corrupt data) leave the commit unusable.
            if let Err(err) = &outcome {
                if err.is_internal() {
                    return Err(outcome.unwrap_err());
                }
            }
            outcomes.push(outcome);
        }
        self.commit(c).await?;
        Ok(outcomes)
    }

    fn check_local(&self, user: &UserId) -> Result<(), RoomError> {
        if user.server_name() == self.key.server_name() {
            Ok(())
        } else {
            Err(RoomError::Forbidden(format!("{user} is not a user of this node")))
        }
    }

    fn now(&self) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(self.clock.now_millis()))
    }

    fn new_room_id(&self) -> OwnedRoomId {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut bytes = [0u8; 18];
        self.random.fill(&mut bytes);
        let local: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
        RoomId::parse(format!("!{local}:{}", self.key.server_name())).expect("a valid room ID")
    }

    // Reading rooms back.

    /// The index of relations between the events of every room.
    pub fn relations(&self) -> &Relations {
        &self.relations
    }

    /// Every room the node has.
    pub async fn all(&self) -> Result<Vec<OwnedRoomId>, RoomError> {
        let rooms = self.store().scan(ROOMS, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        rooms
            .into_iter()
            .map(|(key, _)| String::from_utf8(key).ok().and_then(|id| OwnedRoomId::try_from(id).ok()))
            .map(|id| id.ok_or_else(|| RoomError::corrupt("a bad room key")))
            .collect()
    }

    pub async fn room(&self, room_id: &RoomId) -> Result<RoomRecord, RoomError> {
        self.committed_room(room_id).await?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))
    }

    /// The room's committed record: the writer's copy, or the store's, which
    /// is kept as the writer's copy unless a commit began while it was read
    /// (a commit's own copy replaces it once the commit lands).
    async fn committed_room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>, RoomError> {
        if let Some(room) = self.written().rooms.get(room_id) {
            return Ok(Some(room.clone()));
        }
        let begun = self.commits.load(Ordering::SeqCst);
        let bytes = self.store().get(ROOMS, room_id.as_bytes()).await?;
        let room: Option<RoomRecord> =
            bytes.map(|bytes| serde_json::from_slice(&bytes)).transpose().map_err(RoomError::corrupt)?;
        if let Some(room) = &room {
            self.remember_room_read(room_id, room, begun);
        }
        Ok(room)
    }

    /// Reads the records of `room_ids` not kept yet in one go, for the reads
    /// of them that follow: up to half as many as are kept, so that they stay.
    pub async fn prefetch_rooms(&self, room_ids: &[&RoomId]) -> Result<(), RoomError> {
        let missing: Vec<&RoomId> = {
            let written = self.written();
            room_ids.iter().copied().filter(|id| !written.rooms.contains_key(*id)).take(WRITTEN_ROOMS / 2).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let begun = self.commits.load(Ordering::SeqCst);
        let keys: Vec<&[u8]> = missing.iter().map(|id| id.as_bytes()).collect();
        for (room_id, bytes) in missing.iter().zip(self.store().get_many(ROOMS, &keys).await?) {
            if let Some(bytes) = bytes {
                let room: RoomRecord = serde_json::from_slice(&bytes).map_err(RoomError::corrupt)?;
                self.remember_room_read(room_id, &room, begun);
            }
        }
        Ok(())
    }

    pub async fn event(&self, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        self.events.get(self.store(), event_id).await
    }

    /// Reads the events of `ids` the cache lacks in one go, for the reads of
    /// them that follow.
    pub async fn prefetch_events(&self, ids: &[&EventId]) -> Result<(), RoomError> {
        self.events.get_many(self.store(), ids).await.map(drop)
    }

    pub async fn current_state(&self, room_id: &RoomId) -> Result<Arc<State>, RoomError> {
        let room = self.room(room_id).await?;
        self.groups.load(self.store(), room.state).await
    }

    /// The state before `event_id`, the spec's "state at an event".
    pub async fn state_at(&self, event_id: &EventId) -> Result<Option<Arc<State>>, RoomError> {
        let Some(event) = self.event(event_id).await? else { return Ok(None) };
        Ok(Some(self.groups.load(self.store(), event.record.state_before).await?))
    }

    pub async fn state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        key: &str,
    ) -> Result<Option<Arc<Pdu>>, RoomError> {
        let state = self.current_state(room_id).await?;
        self.state_event_in(&state, kind, key).await
    }

    /// The last position of the node's event stream.
    pub async fn position(&self) -> Result<StreamPosition, RoomError> {
        if let Some(counters) = self.written().counters {
            return Ok(counters.stream);
        }
        Ok(commit::Counters::decode(self.store().get(META, COUNTERS).await?)?.stream)
    }

    pub async fn state_group(&self, group: u64) -> Result<Arc<State>, RoomError> {
        self.groups.load(self.store(), group).await
    }

    /// The power levels in force in the room now.
    pub async fn power_levels_of(
        &self,
        room_id: &RoomId,
    ) -> Result<ruma::events::room::power_levels::RoomPowerLevels, RoomError> {
        let room = self.room(room_id).await?;
        let rules = pdu::rules(&room.version)?;
        let state = self.groups.load(self.store(), room.state).await?;
        self.power_levels(&Commit::default(), &rules, &state).await
    }

    /// The event at `(kind, key)` in `state`.
    pub async fn state_event_in(
        &self,
        state: &State,
        kind: &StateEventType,
        key: &str,
    ) -> Result<Option<Arc<Pdu>>, RoomError> {
        Ok(self.state_entry(&Commit::default(), state, kind, key).await?.map(|event| event.pdu.clone()))
    }

    /// Whether the room's power levels let `user` send an event like `event`
    /// now (without sending it).
    pub async fn may_send(&self, room_id: &RoomId, user: &UserId, event: &NewEvent) -> Result<bool, RoomError> {
        let levels = self.power_levels_of(room_id).await?;
        Ok(match &event.state_key {
            Some(_) => levels.user_can_send_state(user, event.kind.to_string().into()),
            None => levels.user_can_send_message(user, event.kind.to_string().into()),
        })
    }

    async fn state_entry(
        &self,
        c: &Commit,
        state: &State,
        kind: &StateEventType,
        key: &str,
    ) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        match state.get(&(kind.clone(), key.to_owned())) {
            Some(id) => Ok(Some(self.event_or_corrupt(c, id).await?)),
            None => Ok(None),
        }
    }

    /// The rooms a local user is joined to.
    pub async fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>, RoomError> {
        let rooms = self.rooms_of(user).await?;
        Ok(rooms.iter().filter(|(_, m)| m.membership == MembershipState::Join).map(|(id, _)| id.clone()).collect())
    }

    /// The rooms a local user is in, was invited to, or left (with the stream
    /// position of that change).
    pub async fn rooms_of(&self, user: &UserId) -> Result<Arc<Vec<(OwnedRoomId, UserMembership)>>, RoomError> {
        if let Some(rooms) = self.memberships.get(user) {
            return Ok(rooms);
        }
        // Read under the write lock, so no commit changes them unseen meanwhile;
        // commits drop the entries of the users whose memberships they change.
        let _write = self.write.lock().await;
        if let Some(rooms) = self.memberships.get(user) {
            return Ok(rooms);
        }
        let rooms = Arc::new(self.read_rooms_of(user).await?);
        self.memberships.insert(user.to_owned(), rooms.clone(), rooms.len().max(1));
        Ok(rooms)
    }

    async fn read_rooms_of(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, UserMembership)>, RoomError> {
        let prefix = room_key_for_user(user, None);
        let entries = self.store().scan(MEMBERSHIPS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let room_id = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
                let room_id = RoomId::parse(room_id).map_err(RoomError::corrupt)?;
                Ok((room_id, serde_json::from_slice(&value).map_err(RoomError::corrupt)?))
            })
            .collect()
    }

    /// A local user's membership of one room, as [`Rooms::rooms_of`] lists it.
    pub async fn user_membership(&self, user: &UserId, room_id: &RoomId) -> Result<Option<UserMembership>, RoomError> {
        let bytes = self.store().get(MEMBERSHIPS, &room_key_for_user(user, Some(room_id))).await?;
        bytes.map(|b| serde_json::from_slice(&b)).transpose().map_err(RoomError::corrupt)
    }

    /// Forgets a room the user has left: it no longer shows in their sync.
    pub async fn forget(&self, user: &UserId, room_id: &RoomId) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        self.store().delete(MEMBERSHIPS, &room_key_for_user(user, Some(room_id))).await?;
        self.memberships.remove(user);
        Ok(())
    }

    pub async fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<MembershipState>, RoomError> {
        let Some(member) = self.state_event(room_id, &StateEventType::RoomMember, user.as_str()).await? else {
            return Ok(None);
        };
        let (_, membership) = member.member().ok_or_else(|| RoomError::corrupt("a member event has no membership"))?;
        Ok(Some(membership))
    }

    /// Up to `limit` events of the room's timeline after (`Forward`) or before
    /// (`Backward`) stream position `from`, or from the start or end.
    pub async fn timeline(
        &self,
        room_id: &RoomId,
        from: Option<StreamPosition>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(StreamPosition, Arc<Pdu>)>, RoomError> {
        if direction == Direction::Backward {
            if !self.tails.has(room_id) {
                // Read under the write lock, so no commit lands between the
                // read and the tail taking over.
                let _write = self.write.lock().await;
                if !self.tails.has(room_id) {
                    let latest = self.entries(TIMELINE, room_id, None, Direction::Backward, Tails::size()).await?;
                    self.tails.fill(room_id, latest);
                }
            }
            if let Some(entries) = self.tails.before(room_id, from, limit) {
                return self.with_events(entries).await;
            }
        }
        let entries = self.entries(TIMELINE, room_id, from, direction, limit).await?;
        self.with_events(entries).await
    }

    /// The room's events after stream position `from`, in stream order, both
    /// those of its timeline and those backfilled into it: every event of the
    /// room its members may read, for the search index.
    pub async fn readable_after(
        &self,
        room_id: &RoomId,
        from: StreamPosition,
        limit: usize,
    ) -> Result<Vec<(StreamPosition, Arc<Pdu>)>, RoomError> {
        let timeline = self.entries(TIMELINE, room_id, Some(from), Direction::Forward, limit);
        // Most rooms have had nothing backfilled since `from`: one scan, not two.
        let (mut entries, backfilled) = match self.room(room_id).await?.backfilled > from {
            true => {
                let backfilled = self.entries(BACKFILLED, room_id, Some(from), Direction::Forward, limit);
                futures_util::future::try_join(timeline, backfilled).await?
            }
            false => (timeline.await?, Vec::new()),
        };
        entries.extend(backfilled);
        entries.sort_unstable_by_key(|(stream, _)| *stream);
        entries.truncate(limit);
        self.with_events(entries).await
    }

    /// The event at stream position `stream` of the room: in its timeline, or
    /// backfilled into it.
    pub async fn event_at(&self, room_id: &RoomId, stream: StreamPosition) -> Result<Option<Arc<Pdu>>, RoomError> {
        let key = room_key(room_id, &stream.to_be_bytes());
        let id = match self.store().get(TIMELINE, &key).await? {
            Some(id) => Some(id),
            None => self.store().get(BACKFILLED, &key).await?,
        };
        let Some(id) = id else { return Ok(None) };
        let id = String::from_utf8(id).ok().and_then(|id| OwnedEventId::try_from(id).ok());
        let id = id.ok_or_else(|| RoomError::corrupt("bad timeline entry"))?;
        Ok(self.event(&id).await?.map(|event| event.pdu.clone()))
    }

    /// The entries of `table` (the timeline, or the backfilled events) keyed
    /// by stream position.
    async fn entries(
        &self,
        table: &'static str,
        room_id: &RoomId,
        from: Option<StreamPosition>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(StreamPosition, OwnedEventId)>, RoomError> {
        let entries = self.page(table, room_id, from.map(|s| s.to_be_bytes().to_vec()), direction, limit).await?;
        entries
            .into_iter()
            .map(|(key, id)| {
                let key: [u8; 8] = key.try_into().map_err(|_| RoomError::corrupt("bad timeline key"))?;
                Ok((u64::from_be_bytes(key), id))
            })
            .collect()
    }

    /// The events a page of `timeline` or `topology` entries names, in order,
    /// read in one go.
    async fn with_events<P>(&self, entries: Vec<(P, OwnedEventId)>) -> Result<Vec<(P, Arc<Pdu>)>, RoomError> {
        let ids: Vec<&EventId> = entries.iter().map(|(_, id)| &**id).collect();
        let events = self.events.get_many(self.store(), &ids).await?;
        entries
            .into_iter()
            .zip(events)
            .map(|((position, _), event)| {
                let event =
                    event.ok_or_else(|| RoomError::corrupt("the timeline names an event that is not stored"))?;
                Ok((position, event.pdu.clone()))
            })
            .collect()
    }

    /// Like [`Rooms::timeline`], in topological order: by depth, then stream position.
    pub async fn topological(
        &self,
        room_id: &RoomId,
        from: Option<TopologicalPosition>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(TopologicalPosition, Arc<Pdu>)>, RoomError> {
        let entries = self.page(TOPOLOGY, room_id, from.map(|p| topological_key(p).to_vec()), direction, limit).await?;
        let entries = entries
            .into_iter()
            .map(|(key, id)| {
                let key: [u8; 16] = key.try_into().map_err(|_| RoomError::corrupt("bad topology key"))?;
                let position = (
                    u64::from_be_bytes(key[..8].try_into().unwrap_or_default()),
                    u64::from_be_bytes(key[8..].try_into().unwrap_or_default()),
                );
                Ok((position, id))
            })
            .collect::<Result<Vec<_>, RoomError>>()?;
        self.with_events(entries).await
    }

    /// Entries of a per-room table strictly after or before `from`, with the
    /// room prefix cut off the keys.
    async fn page(
        &self,
        table: &'static str,
        room_id: &RoomId,
        from: Option<Vec<u8>>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, OwnedEventId)>, RoomError> {
        let prefix = room_key(room_id, b"");
        let all = KeyRange::prefix(&prefix);
        let range = match (from, direction) {
            (None, _) => all,
            (Some(from), Direction::Forward) => KeyRange::new(Bound::Excluded(room_key(room_id, &from)), all.end),
            (Some(from), Direction::Backward) => KeyRange::new(all.start, Bound::Excluded(room_key(room_id, &from))),
        };
        let entries = self.store().scan(table, range, direction, limit).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let id = std::str::from_utf8(&value).map_err(RoomError::corrupt)?;
                Ok((key[prefix.len()..].to_vec(), EventId::parse(id).map_err(RoomError::corrupt)?))
            })
            .collect()
    }
}

/// A `memberships` key, or without `room_id` the prefix of a user's keys.
pub(crate) fn room_key_for_user(user: &UserId, room_id: Option<&RoomId>) -> Vec<u8> {
    [user.as_bytes(), b"\0", room_id.map_or(&b""[..], |r| r.as_bytes())].concat()
}

fn topological_key((depth, stream): TopologicalPosition) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&depth.to_be_bytes());
    key[8..].copy_from_slice(&stream.to_be_bytes());
    key
}

fn to_raw(content: &serde_json::Value) -> Result<Box<serde_json::value::RawValue>, RoomError> {
    serde_json::value::to_raw_value(content).map_err(|err| RoomError::Invalid(err.to_string()))
}

fn is_create(json: &CanonicalJsonObject) -> bool {
    json.get("type") == Some(&"m.room.create".into())
}

/// The version of a room from the create event that starts it.
fn create_event_version(json: &CanonicalJsonObject) -> Result<RoomVersionId, RoomError> {
    let version = json
        .get("content")
        .and_then(|c| match c {
            ruma::CanonicalJsonValue::Object(content) => content.get("room_version"),
            _ => None,
        })
        .and_then(|v| match v {
            ruma::CanonicalJsonValue::String(v) => Some(v.as_str()),
            _ => None,
        })
        // Version 1 rooms had no `room_version`; glia does not support them.
        .unwrap_or("1");
    RoomVersionId::try_from(version).map_err(|err| RoomError::Invalid(err.to_string()))
}

/// The events `createRoom` sends after the create event, in the spec's order.
fn preset_events(creator: &UserId, rules: &RoomVersionRules, options: &CreateRoom) -> Vec<NewEvent> {
    let public = options.preset == Preset::PublicChat;
    let mut users = serde_json::Map::new();
    // Since v12 creators hold unlimited power and must not be listed.
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(creator.to_string(), 100.into());
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": { "room": 50 },
    });
    if let Some(levels) = power_levels.as_object_mut() {
        levels.extend(options.power_levels_override.clone());
    }
    let state = |kind: &str, content| NewEvent::state(kind.into(), "", content);
    let mut events = vec![
        NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), {
            let mut member = options.creator_profile.clone();
            member.insert("membership".into(), "join".into());
            serde_json::Value::Object(member)
        }),
        state("m.room.power_levels", power_levels),
        state("m.room.join_rules", json!({ "join_rule": if public { "public" } else { "invite" } })),
        state("m.room.history_visibility", json!({ "history_visibility": "shared" })),
        state("m.room.guest_access", json!({ "guest_access": if public { "forbidden" } else { "can_join" } })),
    ];
    events.extend(options.initial_state.iter().cloned());
    if let Some(name) = &options.name {
        events.push(state("m.room.name", json!({ "name": name })));
    }
    if let Some(topic) = &options.topic {
        events.push(state("m.room.topic", json!({ "topic": topic })));
    }
    events
}

impl Rooms {
    /// Stores a PDU whose signatures were verified elsewhere, or that has none
    /// (state resolution fixtures), through the same checks as [`Rooms::receive`].
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) async fn insert_verified(&self, pdu: Pdu) -> Result<Outcome, RoomError> {
        let _write = self.write.lock().await;
        let mut c = Commit::default();
        let rules = self.room_rules(&mut c, &pdu.room_id, std::slice::from_ref(&pdu.json)).await?;
        let rules = rules.ok_or_else(|| RoomError::UnknownRoom(pdu.room_id.clone()))?;
        let room = self.room_for_write(&mut c, &pdu.room_id).await?;
        let outcome = self.insert_remote(&mut c, room, &rules, pdu).await?;
        self.commit(c).await?;
        Ok(outcome)
    }
}
