//! Tests of the event engine through its own storage path, natively.

mod auth_rules;
mod fixtures;
mod forged;
mod rooms;
mod vectors;

use std::sync::Arc;

use ruma::{
    room_version_rules::RoomVersionRules, state_res::auth_types_for_event, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};

use crate::{
    core::{
        identity::NodeKey,
        pdu::{self, NewEvent, Pdu, PduError, Placement},
        Clock, Homeserver, OsRandom, SCHEMA,
    },
    store::{Direction, KeyRange, MemoryStore, Store},
};

/// A clock tests set by hand, so timestamps (and so event IDs) are repeatable.
pub struct FixedClock(pub std::sync::atomic::AtomicU64);

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn sleep(&self, millis: u64) -> crate::core::Sleep {
        crate::core::SystemClock.sleep(millis)
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

/// Every entry of every table of `hs`'s store, to show a refused event changed nothing.
pub async fn dump(hs: &Homeserver) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut tables = Vec::new();
    for table in SCHEMA.tables {
        tables.push(hs.store().scan(table, KeyRange::all(), Direction::Forward, usize::MAX).await.unwrap());
    }
    tables
}

/// An event another server is about to sign, placed as `Rooms::send_locked`
/// places a local one, from what that server can read of `hs`: after the room's
/// forward extremities, one deeper than the deepest, with the auth events the
/// spec selects from the current state. Tests bend the fields before signing.
pub struct Draft {
    pub rules: RoomVersionRules,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub event: NewEvent,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

impl Draft {
    pub async fn new(
        hs: &Homeserver,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
    ) -> Self {
        let room = hs.rooms().room(room_id).await.unwrap();
        let rules = pdu::rules(&room.version).unwrap();
        let prev_events = room.extremities.iter().map(|(id, _)| id.clone()).collect();
        let depth = room.extremities.iter().map(|(_, depth)| *depth).max().unwrap().saturating_add(UInt::from(1u32));
        let state = hs.rooms().current_state(room_id).await.unwrap();
        let content = serde_json::value::to_raw_value(&event.content).unwrap();
        // An event too malformed to select auth events for (no membership...)
        // goes with none: it is the auth rules' job to reject it.
        let auth_types =
            auth_types_for_event(&event.kind, sender, event.state_key.as_deref(), &content, &rules.authorization)
                .unwrap_or_default();
        let auth_events = auth_types.iter().filter_map(|key| state.get(key).cloned()).collect();
        let (room_id, sender) = (room_id.to_owned(), sender.to_owned());
        Self { rules, room_id, sender, event, prev_events, auth_events, depth, origin_server_ts }
    }

    /// The event hashed and signed by `key`, through the engine's own builder.
    pub fn sign(&self, key: &NodeKey) -> Result<Pdu, PduError> {
        let placement = Placement {
            room_id: Some(&self.room_id),
            prev_events: &self.prev_events,
            auth_events: &self.auth_events,
            depth: self.depth,
            origin_server_ts: self.origin_server_ts,
        };
        pdu::build(key, &self.rules, &self.sender, &self.event, placement)
    }
}
