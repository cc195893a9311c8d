//! Stored events: one record per event in `events` (rejected and soft-failed ones
//! too), each room's auth graph in `auth_graph`, and a bounded cache of parsed
//! records, since authorization reads the same few events again and again.
//!
//! Key encodings:
//! - `events`: event ID (UTF-8) → [`EventRecord`] as JSON
//! - `auth_graph`: room ID, 0, event ID → the event's `auth_events` as a JSON array,
//!   so state resolution loads a room's whole auth graph with one prefix scan.
//!   Only state events are in it: auth events are always state events, so no
//!   auth chain passes through a message, and a message's write is one put less.

use std::{collections::HashMap, sync::Arc};

use ruma::{canonical_json::CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId};
use serde::{Deserialize, Serialize};

use super::{cache::Cache, room_key, rooms::RoomError};
use crate::{
    core::pdu::{self, Pdu},
    store::{Batch, Direction, KeyRange, Store},
};

pub(crate) const EVENTS: &str = "events";
pub(crate) const AUTH_GRAPH: &str = "auth_graph";

/// How many parsed events the cache keeps in each of its two generations.
const CACHE_EVENTS: usize = 8192;

/// What the node knows of one event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRecord {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub pdu: CanonicalJsonObject,
    /// Why the event failed authorization; it then never becomes state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// Why the event failed authorization against the room's current state only;
    /// it is kept out of the timeline and the forward extremities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_failed: Option<String>,
    /// State groups before and after the event.
    pub state_before: u64,
    pub state_after: u64,
    /// Position in the node's timeline stream, for events clients see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// For a state event, what it replaced in the state before it (clients
    /// get its content as `prev_content`); absent from records stored before
    /// this was kept, whose state before is read instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Replaces>,
}

/// The event at a state event's type and key in the state before it, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<OwnedEventId>,
}

/// A stored event with its PDU parsed.
#[derive(Debug)]
pub struct StoredEvent {
    pub pdu: Arc<Pdu>,
    pub record: EventRecord,
}

impl StoredEvent {
    pub fn from_record(event_id: OwnedEventId, record: EventRecord) -> Result<Self, RoomError> {
        let rules = pdu::rules(&record.version)?;
        let mut pdu = Pdu::from_stored(event_id, record.pdu.clone(), &rules)?;
        pdu.rejected = record.rejected.is_some();
        Ok(Self { pdu: Arc::new(pdu), record })
    }
}

pub struct Events {
    cache: Cache<OwnedEventId, Arc<StoredEvent>>,
}

impl Default for Events {
    fn default() -> Self {
        Self { cache: Cache::new(CACHE_EVENTS) }
    }
}

impl Events {
    pub async fn get(&self, store: &dyn Store, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        if let Some(event) = self.cache.get(event_id) {
            return Ok(Some(event));
        }
        match store.get(EVENTS, event_id.as_bytes()).await? {
            Some(bytes) => Ok(Some(self.read(event_id, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Parses a stored record and caches it.
    fn read(&self, event_id: &EventId, bytes: &[u8]) -> Result<Arc<StoredEvent>, RoomError> {
        let record: EventRecord = serde_json::from_slice(bytes).map_err(RoomError::corrupt)?;
        let event = Arc::new(StoredEvent::from_record(event_id.to_owned(), record)?);
        self.remember(event.clone());
        Ok(event)
    }

    /// Reads the events of `ids` into the cache in one go, and returns those the
    /// store does not have.
    pub async fn prefetch(&self, store: &dyn Store, ids: &[&EventId]) -> Result<Vec<OwnedEventId>, RoomError> {
        let found = self.get_many(store, ids).await?;
        Ok(ids.iter().zip(found).filter(|(_, event)| event.is_none()).map(|(id, _)| (*id).to_owned()).collect())
    }

    /// Whether the cache holds the event of `id`.
    pub fn cached(&self, id: &EventId) -> bool {
        self.cache.get(id).is_some()
    }

    pub fn remember(&self, event: Arc<StoredEvent>) {
        self.cache.insert(event.pdu.event_id.clone(), event, 1);
    }

    /// The event of each of `ids`, if stored: from the cache, the rest read
    /// from the store in one go.
    pub async fn get_many(
        &self,
        store: &dyn Store,
        ids: &[&EventId],
    ) -> Result<Vec<Option<Arc<StoredEvent>>>, RoomError> {
        let mut found: Vec<Option<Arc<StoredEvent>>> = ids.iter().map(|id| self.cache.get(*id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let keys: Vec<&[u8]> = missing.iter().map(|&i| ids[i].as_bytes()).collect();
            for (&i, value) in missing.iter().zip(store.get_many(EVENTS, &keys).await?) {
                if let Some(bytes) = value {
                    found[i] = Some(self.read(ids[i], &bytes)?);
                }
            }
        }
        Ok(found)
    }

    /// The writes that store `record` for `pdu`.
    pub fn write(batch: Batch, pdu: &Pdu, record: &EventRecord) -> Result<Batch, RoomError> {
        let record = serde_json::to_vec(record).map_err(RoomError::corrupt)?;
        let batch = batch.put(EVENTS, pdu.event_id.as_bytes(), record);
        if !pdu.is_state() {
            return Ok(batch);
        }
        let auth: Vec<&str> = pdu.auth_events.iter().map(|id| id.as_str()).collect();
        let auth = serde_json::to_vec(&auth).map_err(RoomError::corrupt)?;
        Ok(batch.put(AUTH_GRAPH, room_key(&pdu.room_id, pdu.event_id.as_bytes()), auth))
    }
}

/// A room's auth graph: every stored state event's `auth_events`.
pub struct AuthGraph {
    pub edges: HashMap<OwnedEventId, Vec<OwnedEventId>>,
}

impl AuthGraph {
    pub async fn load(store: &dyn Store, room_id: &RoomId) -> Result<Self, RoomError> {
        let prefix = room_key(room_id, b"");
        let entries = store.scan(AUTH_GRAPH, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        let edges = entries
            .into_iter()
            .map(|(key, value)| {
                let id = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
                let id = EventId::parse(id).map_err(RoomError::corrupt)?;
                let auth: Vec<OwnedEventId> = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
                Ok((id, auth))
            })
            .collect::<Result<_, RoomError>>()?;
        Ok(Self { edges })
    }

    /// Every event reachable from `from` along auth edges, `from` excluded unless
    /// reached again.
    pub fn ancestors<'a>(
        &'a self,
        from: impl IntoIterator<Item = &'a OwnedEventId>,
    ) -> ruma::state_res::utils::event_id_set::EventIdSet<OwnedEventId> {
        let mut seen = ruma::state_res::utils::event_id_set::EventIdSet::new();
        let mut stack: Vec<&OwnedEventId> = from.into_iter().flat_map(|id| self.parents(id)).collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id.clone()) {
                stack.extend(self.parents(id));
            }
        }
        seen
    }

    fn parents(&self, id: &EventId) -> impl Iterator<Item = &OwnedEventId> {
        self.edges.get(id).into_iter().flatten()
    }
}
