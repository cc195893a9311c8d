//! A room's history from before it reached this node, as another server hands
//! it over (`/backfill`). Each event is checked at the state before it and
//! placed in the room's topological order, where `/messages` pages back through
//! it; none enters the timeline, so `/sync` never shows one as new, and neither
//! the room's current state, its forward extremities nor anyone's membership
//! changes. An event held as an outlier (the state a join brought) is placed
//! the same way once its predecessors are.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{canonical_json::CanonicalJsonObject, EventId, OwnedEventId, RoomId};

use super::{
    commit::{Arrival, Before, BeforeGroup, Commit},
    RoomError, Rooms,
};
use crate::core::{
    pdu::{self, Pdu},
    service::events::StoredEvent,
};

/// The state before an event of a backfill whose predecessors this node has
/// not placed, as the answering server gave it (`/state`): state events and
/// their auth chain.
pub struct GivenState {
    pub state: Vec<CanonicalJsonObject>,
    pub auth_chain: Vec<CanonicalJsonObject>,
}

/// Whether the state before and after `event` is known: it has a place in the
/// room (a stream position), or was soft-failed at its own state. An outlier
/// has neither, nor has a rejected event.
fn placed(event: &StoredEvent) -> bool {
    event.record.rejected.is_none() && (event.record.stream.is_some() || event.record.soft_failed.is_some())
}

impl Rooms {
    /// The PDUs of a backfill answer that belong to `room_id` and whose
    /// format, hashes and signatures check out; the rest are passed over.
    pub async fn check_history(&self, room_id: &RoomId, pdus: Vec<CanonicalJsonObject>) -> Result<Vec<Pdu>, RoomError> {
        let rules = pdu::rules(&self.room(room_id).await?.version)?;
        Ok(pdus
            .into_iter()
            .filter_map(|json| Pdu::from_remote(json, &rules).ok())
            .filter(|pdu| pdu.room_id == room_id)
            .collect())
    }

    /// The events of a checked backfill answer that follow neither events this
    /// node has placed nor others of the answer: the state before each must
    /// come from the server that answered.
    pub async fn history_roots(&self, answer: &[Pdu]) -> Result<Vec<OwnedEventId>, RoomError> {
        let given: HashSet<&EventId> = answer.iter().map(|pdu| &*pdu.event_id).collect();
        let outside: Vec<&EventId> = answer
            .iter()
            .flat_map(|pdu| pdu.prev_events.iter().map(|id| &**id))
            .filter(|id| !given.contains(id))
            .collect();
        let known: HashMap<&EventId, bool> = outside
            .iter()
            .copied()
            .zip(self.events(&outside).await?.iter().map(|e| e.as_deref().is_some_and(placed)))
            .collect();
        let ids: Vec<&EventId> = answer.iter().map(|pdu| &*pdu.event_id).collect();
        let here = self.events(&ids).await?;
        let roots = answer.iter().zip(here).filter(|(pdu, here)| {
            let follows_placed =
                pdu.prev_events.iter().all(|id| given.contains(&**id) || known.get(&**id) == Some(&true));
            !follows_placed && !here.as_deref().is_some_and(placed)
        });
        Ok(roots.map(|(pdu, _)| pdu.event_id.clone()).collect())
    }

    /// Places the events of `room_id` in a checked backfill answer, oldest
    /// first, in one commit: each after its predecessors, or on the state in
    /// `given` for it. Events placed already are passed over, and so are those
    /// whose predecessors or auth events cannot be found. Returns how many were
    /// placed.
    pub async fn receive_history(
        &self,
        room_id: &RoomId,
        mut answer: Vec<Pdu>,
        mut given: HashMap<OwnedEventId, GivenState>,
    ) -> Result<usize, RoomError> {
        let _write = self.write.lock().await;
        let mut c = Commit::default();
        let room =
            self.room_for_write(&mut c, room_id).await?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))?;
        let rules = pdu::rules(&room.version)?;
        answer.retain(|pdu| pdu.room_id == room_id);
        // By depth, so that predecessors come first; an event claiming a depth
        // below its predecessors' finds them unplaced and is passed over.
        answer.sort_by(|a, b| (a.depth, &a.event_id).cmp(&(b.depth, &b.event_id)));
        let ids: Vec<&EventId> = answer.iter().map(|pdu| &*pdu.event_id).collect();
        c.absent = self.events.prefetch(self.store(), &ids).await?.into_iter().collect();
        let mut placed_here: HashSet<OwnedEventId> = HashSet::new();
        for pdu in answer {
            if let Some(known) = self.event_in(&c, &pdu.event_id).await? {
                if placed(&known) || known.record.rejected.is_some() {
                    continue;
                }
            }
            if pdu.repeats_an_event() {
                continue;
            }
            let before = match given.remove(&pdu.event_id) {
                Some(GivenState { state, auth_chain }) => {
                    let (group, state) = self.land_state(&mut c, &room.version, room_id, state, auth_chain).await?;
                    Before { state, group: BeforeGroup::Stored(group) }
                }
                // The create event: the room's first, with nothing before it.
                None if pdu.prev_events.is_empty() => Before::empty(),
                None => {
                    let Some(prevs) = found(self.events_or_missing(&c, &pdu.prev_events).await)? else { continue };
                    let follows = prevs.values().all(|e| placed_here.contains(&e.pdu.event_id) || placed(e));
                    if !follows || prevs.values().any(|e| e.pdu.room_id != room_id) {
                        continue;
                    }
                    self.state_before(&c, &rules, room_id, &prevs).await?
                }
            };
            let Some(auths) = found(self.events_or_missing(&c, &pdu.auth_events).await)? else { continue };
            if auths.values().any(|e| e.pdu.room_id != room_id) {
                continue;
            }
            let id = pdu.event_id.clone();
            self.insert(&mut c, Some(room.clone()), &rules, pdu, &auths, before, Arrival::History).await?;
            placed_here.insert(id);
        }
        if !placed_here.is_empty() {
            self.commit(c).await?;
        }
        Ok(placed_here.len())
    }
}

/// The events found, `None` where some are missing, or the store's failure.
fn found(
    events: Result<HashMap<OwnedEventId, Arc<StoredEvent>>, RoomError>,
) -> Result<Option<HashMap<OwnedEventId, Arc<StoredEvent>>>, RoomError> {
    match events {
        Ok(events) => Ok(Some(events)),
        Err(RoomError::MissingEvents(_)) => Ok(None),
        Err(err) => Err(err),
    }
}
