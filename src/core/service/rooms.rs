//! Rooms as DAGs of events on the store: creating rooms, appending local events,
//! accepting remote PDUs (with the spec's checks, rejection and soft-failure),
//! and reading state and timelines back.
//!
//! Every event is checked against the auth rules at its auth events, at the state
//! before it (resolved over its `prev_events`) and, for remote events, at the
//! room's current state. Writes go through one lock and one atomic batch per event,
//! guarded by preconditions on the room record and the counters, so a second
//! writer on the same store fails loudly instead of forking the room.
//!
//! Key encodings:
//! - `rooms`: room ID → [`RoomRecord`] as JSON
//! - `timeline`: room ID, 0, stream position (u64 big-endian) → event ID
//! - `topology`: room ID, 0, depth (u64 BE), stream position (u64 BE) → event ID
//! - `meta`: `counters` → the last stream position and state group handed out
//!   (two u64 BE), one key so one precondition guards both

use std::{collections::HashMap, fmt::Display, ops::Bound, sync::Arc};

use ruma::{
    canonical_json::{redact, CanonicalJsonObject, RedactedBecause},
    events::{
        room::{
            member::MembershipState,
            power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        },
        StateEventType, TimelineEventType,
    },
    room_version_rules::RoomVersionRules,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt,
    UserId,
};
use futures_util::future::Either;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    events::{EventRecord, Events, StoredEvent},
    room_key,
    state::{self, PendingGroup, State, StateGroups},
};
use crate::{
    core::{
        identity::NodeKey,
        pdu::{self, NewEvent, Pdu, PduError, Placement, DEFAULT_ROOM_VERSION},
        Clock, Random,
    },
    store::{Batch, Direction, KeyRange, Store, StoreError},
};

pub(crate) const ROOMS: &str = "rooms";
pub(crate) const TIMELINE: &str = "timeline";
pub(crate) const TOPOLOGY: &str = "topology";
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
}

/// A position in a room's timeline for clients: the node's stream order.
pub type StreamPosition = u64;

/// A position in a room's topological order: (depth, stream position).
pub type TopologicalPosition = (u64, u64);

/// The state before an event, and where it is (or will be) stored.
struct Before {
    state: Arc<State>,
    group: BeforeGroup,
}

enum BeforeGroup {
    /// The state after the single prev state group, or after several equal ones.
    Stored(u64),
    /// A resolution of several prev states, to be stored as a group derived from
    /// `base` when the event is.
    Resolved { base: u64 },
}

impl Before {
    fn empty() -> Self {
        Self { state: Arc::new(State::new()), group: BeforeGroup::Stored(0) }
    }
}

/// The writes of one commit, gathered event by event, and what they change:
/// later events of the same commit read it before the caches and the store, and
/// none of it is seen by readers until the commit lands. Creating a room, or
/// receiving a federation transaction, is one commit.
#[derive(Default)]
struct Commit {
    batch: Batch,
    /// The counters as read (for the precondition) and as advanced since.
    counters: Option<(Counters, Counters)>,
    /// Room records as read (their stored bytes, for the preconditions) and as changed.
    rooms: HashMap<OwnedRoomId, (Option<Vec<u8>>, Option<RoomRecord>)>,
    events: HashMap<OwnedEventId, Arc<StoredEvent>>,
    /// Events the store was seen not to have when the commit began.
    absent: std::collections::HashSet<OwnedEventId>,
    groups: Vec<PendingGroup>,
}

/// Stream and state group numbers as read at the start of a write.
#[derive(Clone, Copy)]
struct Counters {
    stream: u64,
    state_group: u64,
    /// Whether the store holds them yet (a new node's do not exist).
    stored: bool,
}

impl Counters {
    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.stream.to_be_bytes());
        bytes[8..].copy_from_slice(&self.state_group.to_be_bytes());
        bytes
    }

    fn decode(bytes: Option<Vec<u8>>) -> Result<Self, RoomError> {
        let Some(bytes) = bytes else { return Ok(Self { stream: 0, state_group: 0, stored: false }) };
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| RoomError::corrupt("the counters are not 16 bytes"))?;
        let (stream, group) = bytes.split_at(8);
        let number = |half: &[u8]| u64::from_be_bytes(half.try_into().unwrap_or_default());
        Ok(Self { stream: number(stream), state_group: number(group), stored: true })
    }
}

/// What the writer knows of the store between writes: read once, then kept
/// current by each commit under the write lock, so appending an event reads
/// nothing back. Cleared when a write fails, in case another writer moved on.
#[derive(Default)]
struct Written {
    counters: Option<Counters>,
    rooms: HashMap<OwnedRoomId, RoomRecord>,
}

/// A local event waiting for the writer, and where its result goes.
struct Queued {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    event: NewEvent,
    prev_events: Option<Vec<OwnedEventId>>,
    result: futures_channel::oneshot::Sender<Result<Arc<Pdu>, RoomError>>,
}

/// Gives every queued sender the failure of their shared commit.
fn fail_all(queued: Vec<Queued>, err: RoomError) {
    for q in queued {
        // A sender that stopped waiting has nobody to tell.
        let _ = q.result.send(Err(RoomError::Store(StoreError::Backend(format!("the commit failed: {err}")))));
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data if it did.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rooms whose records the writer keeps at most.
const WRITTEN_ROOMS: usize = 256;

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
}

impl Rooms {
    pub fn new(store: Arc<dyn Store>, key: Arc<NodeKey>, clock: Arc<dyn Clock>, random: Arc<dyn Random>) -> Self {
        Self {
            store,
            key,
            clock,
            random,
            events: Events::default(),
            groups: StateGroups::default(),
            write: async_lock::Mutex::new(()),
            written: Default::default(),
            queue: Default::default(),
        }
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        lock(&self.written)
    }

    /// The room's record as `c` has it, for a writer holding the write lock.
    async fn room_for_write(&self, c: &mut Commit, room_id: &RoomId) -> Result<Option<RoomRecord>, RoomError> {
        if let Some((_, room)) = c.rooms.get(room_id) {
            return Ok(room.clone());
        }
        let cached = self.written().rooms.get(room_id).cloned();
        let room = match cached {
            Some(room) => Some(room),
            None => {
                let bytes = self.store().get(ROOMS, room_id.as_bytes()).await?;
                bytes.map(|r| serde_json::from_slice::<RoomRecord>(&r)).transpose().map_err(RoomError::corrupt)?
            }
        };
        let stored = room.as_ref().map(serde_json::to_vec).transpose().map_err(RoomError::corrupt)?;
        c.rooms.insert(room_id.to_owned(), (stored, room.clone()));
        Ok(room)
    }

    fn remember_room(&self, room_id: &RoomId, room: RoomRecord) {
        let mut written = self.written();
        if written.rooms.len() >= WRITTEN_ROOMS {
            written.rooms.clear();
        }
        written.rooms.insert(room_id.to_owned(), room);
    }

    /// The stream and state group counters as `c` has advanced them.
    async fn counters(&self, c: &mut Commit) -> Result<Counters, RoomError> {
        if let Some((_, counters)) = c.counters {
            return Ok(counters);
        }
        let cached = self.written().counters;
        let counters = match cached {
            Some(counters) => counters,
            None => Counters::decode(self.store().get(META, COUNTERS).await?)?,
        };
        c.counters = Some((counters, counters));
        Ok(counters)
    }

    /// Writes `c` in one batch, guarded by preconditions on every room record and
    /// on the counters it changed, then lets readers see it.
    async fn commit(&self, c: Commit) -> Result<(), RoomError> {
        let mut batch = c.batch;
        let mut rooms = Vec::new();
        for (room_id, (stored, room)) in c.rooms {
            let Some(room) = room else { continue };
            let bytes = serde_json::to_vec(&room).map_err(RoomError::corrupt)?;
            if stored.as_ref() != Some(&bytes) {
                batch = batch.expect(ROOMS, room_id.as_bytes(), stored).put(ROOMS, room_id.as_bytes(), bytes);
                rooms.push((room_id, room));
            }
        }
        let counters = c.counters.filter(|(read, now)| read.encode() != now.encode() || !read.stored);
        if let Some((read, now)) = counters {
            batch = batch.expect(META, COUNTERS, read.stored.then(|| read.encode().to_vec())).put(META, COUNTERS, now.encode());
        }
        if let Err(err) = self.store().write(batch).await {
            *self.written() = Written::default();
            return Err(err.into());
        }
        if let Some((_, now)) = counters {
            self.written().counters = Some(Counters { stored: true, ..now });
        }
        for (room_id, room) in rooms {
            self.remember_room(&room_id, room);
        }
        for group in c.groups {
            self.groups.committed(group);
        }
        for event in c.events.into_values() {
            self.events.remember(event);
        }
        Ok(())
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
        self.insert(&mut c, None, &rules, pdu, &HashMap::new(), Before::empty(), true).await?;

        for event in preset_events(creator, &rules, &options) {
            self.send_in(&mut c, &room_id, creator, &event, None).await?;
        }
        self.commit(c).await?;
        Ok(room_id)
    }

    /// Appends an event by a local user after the room's forward extremities.
    pub async fn send(&self, room_id: &RoomId, sender: &UserId, event: &NewEvent) -> Result<Arc<Pdu>, RoomError> {
        self.send_after_or_latest(room_id, sender, event, None).await
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
        self.send_after_or_latest(room_id, sender, event, Some(prev_events)).await
    }

    /// Queues the event for the writer. Whoever holds the write lock sends every
    /// event queued by then in one commit, so senders who arrive while a commit is
    /// being written share the next one instead of waiting for one each.
    async fn send_after_or_latest(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<Arc<Pdu>, RoomError> {
        self.check_local(sender)?;
        let (result, mut sent) = futures_channel::oneshot::channel();
        let queued = Queued {
            room_id: room_id.to_owned(),
            sender: sender.to_owned(),
            event: event.clone(),
            prev_events,
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

    async fn send_queued(&self, queued: Vec<Queued>) {
        let mut c = Commit::default();
        let mut results = Vec::with_capacity(queued.len());
        for q in &queued {
            let result = self.send_in(&mut c, &q.room_id, &q.sender, &q.event, q.prev_events.clone()).await;
            match result {
                // A refusal gathers nothing: the others still go out.
                Err(err) if err.is_internal() => return fail_all(queued, err),
                result => results.push(result),
            }
        }
        match self.commit(c).await {
            Ok(()) => queued.into_iter().zip(results).for_each(|(q, result)| drop(q.result.send(result))),
            Err(err) => fail_all(queued, err),
        }
    }

    async fn send_in(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<Arc<Pdu>, RoomError> {
        let room = self.room_for_write(c, room_id).await?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))?;
        let rules = pdu::rules(&room.version)?;
        let prev_events = prev_events.unwrap_or_else(|| {
            let mut extremities = room.extremities.clone();
            extremities.sort_by(|a, b| b.1.cmp(&a.1));
            extremities.into_iter().take(MAX_PREV_EVENTS).map(|(id, _)| id).collect()
        });
        let prevs = self.events_or_missing(c, &prev_events).await?;
        let depth = prevs.values().map(|e| e.pdu.depth).max().unwrap_or_default().saturating_add(UInt::from(1u32));
        let before = self.state_before(c, &rules, room_id, &prevs).await?;

        let auth_types =
            auth_types_for_event(&event.kind, sender, event.state_key.as_deref(), &to_raw(&event.content)?, &rules.authorization)
                .map_err(RoomError::Invalid)?;
        let auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|key| before.state.get(key).cloned()).collect();
        let placement = Placement {
            room_id: Some(room_id),
            prev_events: &prev_events,
            auth_events: &auth_events,
            depth,
            origin_server_ts: self.now(),
        };
        let pdu = pdu::build(&self.key, &rules, sender, event, placement)?;
        let auths = self.events_or_missing(c, &auth_events).await?;
        let stored = self.insert(c, Some(room), &rules, pdu, &auths, before, true).await?;
        Ok(stored.pdu.clone())
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
        let _write = self.write.lock().await;
        let mut c = Commit::default();
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
        // Whether each PDU is new, read in one go rather than one read per PDU.
        let ids: Vec<&EventId> = checked.iter().filter_map(|pdu| Some(&*pdu.as_ref().ok()?.event_id)).collect();
        c.absent = self.events.prefetch(self.store(), &ids).await?.into_iter().collect();

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

    /// The rules of the room: its own version's if the node has the room, else
    /// those of the version the create event among `pdus` names, which may start
    /// it here. `None` when neither is known.
    async fn room_rules(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
        pdus: &[CanonicalJsonObject],
    ) -> Result<Option<RoomVersionRules>, RoomError> {
        let version = match self.room_for_write(c, room_id).await? {
            Some(room) => Some(room.version),
            None => pdus.iter().find(|json| is_create(json)).map(create_event_version).transpose()?,
        };
        Ok(version.as_ref().map(pdu::rules).transpose()?)
    }

    /// The checks of [`Rooms::receive`] that need the room, for a PDU whose hashes
    /// and signatures are already verified.
    async fn insert_remote(
        &self,
        c: &mut Commit,
        room: Option<RoomRecord>,
        rules: &RoomVersionRules,
        pdu: Pdu,
    ) -> Result<Outcome, RoomError> {
        if self.event_in(c, &pdu.event_id).await?.is_some() {
            return Ok(Outcome::Duplicate);
        }
        for ids in [&pdu.prev_events, &pdu.auth_events] {
            if ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id)) {
                return Err(RoomError::Invalid("prev_events and auth_events must not repeat an event".into()));
            }
        }
        let prevs = self.events_or_missing(c, &pdu.prev_events).await?;
        let auths = self.events_or_missing(c, &pdu.auth_events).await?;
        if let Some(other) = prevs.values().chain(auths.values()).find(|e| e.pdu.room_id != pdu.room_id) {
            return Err(RoomError::WrongRoom { expected: pdu.room_id.clone(), found: other.pdu.room_id.clone() });
        }
        let before = match &room {
            Some(_) => self.state_before(c, rules, &pdu.room_id, &prevs).await?,
            None => Before::empty(),
        };
        let stored = self.insert(c, room, rules, pdu, &auths, before, false).await?;
        Ok(match (&stored.record.rejected, &stored.record.soft_failed) {
            (Some(reason), _) => Outcome::Rejected(reason.clone()),
            (None, Some(reason)) => Outcome::SoftFailed(reason.clone()),
            (None, None) => Outcome::Accepted,
        })
    }

    /// Checks `pdu` against the auth rules and gathers into `c` everything stored
    /// for it. Local events that fail are refused, not stored. Nothing is
    /// gathered before the checks pass, so a refusal leaves `c` as it was.
    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        c: &mut Commit,
        room: Option<RoomRecord>,
        rules: &RoomVersionRules,
        mut pdu: Pdu,
        auths: &HashMap<OwnedEventId, Arc<StoredEvent>>,
        before: Before,
        local: bool,
    ) -> Result<Arc<StoredEvent>, RoomError> {
        let rejected = self.authorize(c, rules, &pdu, auths, &before.state, !local).await?;
        // A rejected local event is refused, not stored; so is a rejected create
        // event, which must not claim the room for whatever version it names.
        if let (true, Some(reason)) = (local || room.is_none(), &rejected) {
            return Err(RoomError::Forbidden(reason.clone()));
        }
        let before_stored = match before.group {
            BeforeGroup::Stored(group) => Some(group),
            BeforeGroup::Resolved { .. } => None,
        };
        let current = match &room {
            Some(room) if Some(room.state) != before_stored => Some(self.load_group(c, room.state).await?),
            _ => None,
        };
        let soft_failed = match (&rejected, current) {
            (None, Some(current)) if !local => self.authorize(c, rules, &pdu, auths, &current, false).await?,
            _ => None,
        };
        pdu.rejected = rejected.is_some();
        let pdu = Arc::new(pdu);
        let visible = rejected.is_none() && soft_failed.is_none();

        // From here on `c` changes: a failure now is internal and drops the commit.
        let before_group = match before.group {
            BeforeGroup::Stored(group) => group,
            BeforeGroup::Resolved { base } => self.save_group(c, base, before.state.clone()).await?,
        };
        // The state after: the state before, plus the event if it is accepted state.
        let (after_group, after_state) = match (&pdu.state_key, &rejected) {
            (Some(state_key), None) => {
                let mut after = (*before.state).clone();
                after.insert((pdu.kind.to_string().into(), state_key.clone()), pdu.event_id.clone());
                let after = Arc::new(after);
                (self.save_group(c, before_group, after.clone()).await?, after)
            }
            _ => (before_group, before.state.clone()),
        };

        let mut new_room = match &room {
            Some(room) => room.clone(),
            None => RoomRecord { version: create_event_version(&pdu.json)?, state: 0, extremities: vec![] },
        };
        let mut stream = None;
        if visible {
            let mut counters = self.counters(c).await?;
            counters.stream += 1;
            stream = Some(counters.stream);
            if let Some((_, now)) = &mut c.counters {
                now.stream = counters.stream;
            }
            new_room.extremities.retain(|(id, _)| !pdu.prev_events.contains(id));
            new_room.extremities.push((pdu.event_id.clone(), pdu.depth));
            new_room.state = if new_room.extremities.len() == 1 {
                after_group
            } else {
                let mut forks = Vec::new();
                for (id, _) in &new_room.extremities {
                    forks.push(if *id == pdu.event_id {
                        after_state.clone()
                    } else {
                        let group = self.event_or_corrupt(c, id).await?.record.state_after;
                        self.load_group(c, group).await?
                    });
                }
                let resolved = self.resolve(c, rules, &pdu.room_id, &forks, Some(&pdu)).await?;
                self.save_group(c, after_group, Arc::new(resolved)).await?
            };
        }

        let record = EventRecord {
            room_id: pdu.room_id.clone(),
            version: new_room.version.clone(),
            pdu: pdu.json.clone(),
            rejected,
            soft_failed,
            state_before: before_group,
            state_after: after_group,
            stream,
        };
        let mut batch = Events::write(std::mem::take(&mut c.batch), &pdu, &record)?;
        if let Some(stream) = stream {
            let depth = u64::from(pdu.depth);
            batch = batch
                .put(TIMELINE, room_key(&pdu.room_id, &stream.to_be_bytes()), pdu.event_id.as_bytes())
                .put(TOPOLOGY, room_key(&pdu.room_id, &topological_key((depth, stream))), pdu.event_id.as_bytes());
        }
        c.batch = batch;
        if let (Some(target), true) = (&pdu.redacts, visible) {
            if let Some(target) = self.redact(c, rules, &before.state, &pdu, target).await? {
                let record = serde_json::to_vec(&target.record).map_err(RoomError::corrupt)?;
                c.batch = std::mem::take(&mut c.batch).put(super::events::EVENTS, target.pdu.event_id.as_bytes(), record);
                c.events.insert(target.pdu.event_id.clone(), Arc::new(target));
            }
        }
        c.rooms.entry(pdu.room_id.clone()).or_insert((None, None)).1 = Some(new_room);
        let stored = Arc::new(StoredEvent { pdu, record });
        c.events.insert(stored.pdu.event_id.clone(), stored.clone());
        Ok(stored)
    }

    /// The reason `pdu` is not authorized, if it is not: the state-independent
    /// rules and those at its auth events (for remote events; a local event's auth
    /// events come from `state` itself), then the rules at `state`.
    async fn authorize(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        auths: &HashMap<OwnedEventId, Arc<StoredEvent>>,
        state: &State,
        check_auth_events: bool,
    ) -> Result<Option<String>, RoomError> {
        let rules_auth = &rules.authorization;
        if check_auth_events {
            // Since v12 the create event is not among the auth events, but the rules read it.
            let create = match EventId::parse(format!("${}", pdu.room_id.strip_sigil())) {
                Ok(id) if rules_auth.room_create_event_id_as_room_id => self.event_in(c, &id).await?,
                _ => None,
            };
            let fetch = |id: &EventId| {
                auths.get(id).or(create.as_ref().filter(|c| c.pdu.event_id == id)).map(|e| &*e.pdu)
            };
            if let Err(reason) = check_state_independent_auth_rules(rules_auth, pdu, fetch) {
                return Ok(Some(reason));
            }
            let by_key: HashMap<(StateEventType, String), &Pdu> = auths
                .values()
                .chain(create.as_ref())
                .filter_map(|e| Some(((e.pdu.kind.to_string().into(), e.pdu.state_key.clone()?), &*e.pdu)))
                .collect();
            if let Err(reason) =
                check_state_dependent_auth_rules(rules_auth, pdu, |kind, key| by_key.get(&(kind.clone(), key.to_owned())).copied())
            {
                return Ok(Some(reason));
            }
        } else if pdu.kind == TimelineEventType::RoomCreate {
            if let Err(reason) = check_state_independent_auth_rules(rules_auth, pdu, |_: &EventId| None::<&Pdu>) {
                return Ok(Some(reason));
            }
        }

        let keys = match auth_types_for_event(&pdu.kind, &pdu.sender, pdu.state_key.as_deref(), &pdu.content, rules_auth) {
            Ok(keys) => keys,
            Err(reason) => return Ok(Some(reason)),
        };
        let mut at_state = HashMap::new();
        for key in keys.iter().chain([&(StateEventType::RoomCreate, String::new())]) {
            if let Some(id) = state.get(key) {
                at_state.insert(key.clone(), self.event_or_corrupt(c, id).await?);
            }
        }
        let fetch = |kind: &StateEventType, key: &str| at_state.get(&(kind.clone(), key.to_owned())).map(|e| &*e.pdu);
        Ok(check_state_dependent_auth_rules(rules_auth, pdu, fetch).err())
    }

    /// The redacted form of `target`, if `redaction` (accepted, with `state` before
    /// it) may redact it. The auth rules let every redaction through since room
    /// version 3; whether one applies is for the server to decide, as here: the
    /// same sender, or a sender with the power to redact the events of others.
    /// A redaction whose target the node does not have yet is not applied.
    async fn redact(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        state: &State,
        redaction: &Pdu,
        target: &EventId,
    ) -> Result<Option<StoredEvent>, RoomError> {
        let Some(target) = self.event_in(c, target).await? else { return Ok(None) };
        if target.pdu.room_id != redaction.room_id || target.record.rejected.is_some() {
            return Ok(None);
        }
        if target.pdu.sender != redaction.sender
            && !self.power_levels(c, rules, state).await?.user_can_redact_event_of_other(&redaction.sender)
        {
            return Ok(None);
        }
        let because = RedactedBecause::from_json(redaction.json.clone());
        let json = redact(target.record.pdu.clone(), &rules.redaction, Some(because)).map_err(RoomError::corrupt)?;
        let record = EventRecord { pdu: json, ..target.record.clone() };
        Ok(Some(StoredEvent::from_record(target.pdu.event_id.clone(), record)?))
    }

    /// The power levels in force in `state`, as the room version reads them.
    async fn power_levels(&self, c: &Commit, rules: &RoomVersionRules, state: &State) -> Result<RoomPowerLevels, RoomError> {
        let create = self.state_entry(c, state, &StateEventType::RoomCreate, "").await?;
        let levels = self.state_entry(c, state, &StateEventType::RoomPowerLevels, "").await?;
        let source: RoomPowerLevelsSource =
            levels.and_then(|e| serde_json::from_str::<RoomPowerLevelsEventContent>(e.pdu.content.get()).ok()).into();
        #[derive(Deserialize)]
        struct Creators {
            #[serde(default)]
            additional_creators: Vec<OwnedUserId>,
        }
        let creators: Vec<OwnedUserId> = create
            .map(|e| {
                let extra = serde_json::from_str::<Creators>(e.pdu.content.get()).map(|c| c.additional_creators).unwrap_or_default();
                std::iter::once(e.pdu.sender.clone()).chain(extra).collect()
            })
            .unwrap_or_default();
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// The state before an event whose `prev_events` are `prevs`: the state after
    /// each, resolved when they differ.
    async fn state_before(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        prevs: &HashMap<OwnedEventId, Arc<StoredEvent>>,
    ) -> Result<Before, RoomError> {
        let mut groups: Vec<u64> = prevs.values().map(|e| e.record.state_after).collect();
        groups.sort_unstable();
        groups.dedup();
        let Some(&first) = groups.first() else {
            return Err(RoomError::Invalid("only a create event may have no prev_events".into()));
        };
        if groups.len() == 1 {
            return Ok(Before { state: self.load_group(c, first).await?, group: BeforeGroup::Stored(first) });
        }
        let mut forks = Vec::new();
        for group in &groups {
            forks.push(self.load_group(c, *group).await?);
        }
        let resolved = Arc::new(self.resolve(c, rules, room_id, &forks, None).await?);
        Ok(Before { state: resolved, group: BeforeGroup::Resolved { base: first } })
    }

    /// State resolution, seeing the events `c` gathered and `new`, which is not
    /// even in `c` yet.
    async fn resolve(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        forks: &[Arc<State>],
        new: Option<&Arc<Pdu>>,
    ) -> Result<State, RoomError> {
        let gathered: Vec<Arc<Pdu>> = c.events.values().map(|e| e.pdu.clone()).chain(new.cloned()).collect();
        state::resolve(self.store(), &self.events, rules, room_id, forks, &gathered).await
    }

    async fn load_group(&self, c: &Commit, group: u64) -> Result<Arc<State>, RoomError> {
        match c.groups.iter().find(|g| g.id == group) {
            Some(pending) => Ok(pending.state.clone()),
            None => self.groups.load(self.store(), group).await,
        }
    }

    /// Gathers `state` into `c` as a group derived from `base`, and returns the
    /// group that holds it (`base` itself if nothing changed).
    async fn save_group(&self, c: &mut Commit, base: u64, state: Arc<State>) -> Result<u64, RoomError> {
        let mut counters = self.counters(c).await?;
        let batch = std::mem::take(&mut c.batch);
        let (batch, group, pending) =
            self.groups.save(self.store(), batch, base, &c.groups, state, &mut counters.state_group).await?;
        c.batch = batch;
        c.groups.extend(pending);
        if let Some((_, now)) = &mut c.counters {
            now.state_group = counters.state_group;
        }
        Ok(group)
    }

    async fn event_in(&self, c: &Commit, id: &EventId) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        match c.events.get(id) {
            Some(event) => Ok(Some(event.clone())),
            None if c.absent.contains(id) => Ok(None),
            None => self.events.get(self.store(), id).await,
        }
    }

    async fn events_or_missing(&self, c: &Commit, ids: &[OwnedEventId]) -> Result<HashMap<OwnedEventId, Arc<StoredEvent>>, RoomError> {
        let (mut found, mut missing) = (HashMap::new(), Vec::new());
        for id in ids {
            match self.event_in(c, id).await? {
                Some(event) => drop(found.insert(id.clone(), event)),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() { Ok(found) } else { Err(RoomError::MissingEvents(missing)) }
    }

    async fn event_or_corrupt(&self, c: &Commit, id: &EventId) -> Result<Arc<StoredEvent>, RoomError> {
        self.event_in(c, id).await?.ok_or_else(|| RoomError::Corrupt(format!("{id} is referenced but not stored")))
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

    pub async fn room(&self, room_id: &RoomId) -> Result<RoomRecord, RoomError> {
        if let Some(room) = self.written().rooms.get(room_id) {
            return Ok(room.clone());
        }
        let bytes = self.store().get(ROOMS, room_id.as_bytes()).await?;
        let bytes = bytes.ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))?;
        serde_json::from_slice(&bytes).map_err(RoomError::corrupt)
    }

    pub async fn event(&self, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        self.events.get(self.store(), event_id).await
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

    pub async fn state_event(&self, room_id: &RoomId, kind: &StateEventType, key: &str) -> Result<Option<Arc<Pdu>>, RoomError> {
        let state = self.current_state(room_id).await?;
        Ok(self.state_entry(&Commit::default(), &state, kind, key).await?.map(|event| event.pdu.clone()))
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

    pub async fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<MembershipState>, RoomError> {
        let Some(member) = self.state_event(room_id, &StateEventType::RoomMember, user.as_str()).await? else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Content {
            membership: MembershipState,
        }
        let content: Content = serde_json::from_str(member.content.get()).map_err(RoomError::corrupt)?;
        Ok(Some(content.membership))
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
        let entries = self.page(TIMELINE, room_id, from.map(|s| s.to_be_bytes().to_vec()), direction, limit).await?;
        let mut page = Vec::with_capacity(entries.len());
        for (key, id) in entries {
            let position = u64::from_be_bytes(key.try_into().map_err(|_| RoomError::corrupt("bad timeline key"))?);
            page.push((position, self.event_or_corrupt(&Commit::default(), &id).await?.pdu.clone()));
        }
        Ok(page)
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
        let mut page = Vec::with_capacity(entries.len());
        for (key, id) in entries {
            let key: [u8; 16] = key.try_into().map_err(|_| RoomError::corrupt("bad topology key"))?;
            let position = (u64::from_be_bytes(key[..8].try_into().unwrap_or_default()), u64::from_be_bytes(key[8..].try_into().unwrap_or_default()));
            page.push((position, self.event_or_corrupt(&Commit::default(), &id).await?.pdu.clone()));
        }
        Ok(page)
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
        NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), json!({ "membership": "join" })),
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
    #[cfg(test)]
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
