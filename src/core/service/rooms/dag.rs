//! Reading a room's DAG back for other servers: auth chains, and walks back
//! along `prev_events` for backfill and for the events a server is missing.
//! Nothing here writes, and only committed events are read.

use std::{
    collections::{BTreeSet, BinaryHeap, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    EventId, OwnedEventId, OwnedServerName, RoomId, UserId,
};

use super::{RoomError, Rooms};
use crate::core::{
    pdu,
    service::{
        events::{AuthGraph, StoredEvent},
        state::State,
    },
};

/// Events one walk visits at most. A server names the events it already has,
/// and those may lie on forks far from the ones it asks about: walking their
/// ancestors is how they are left out, and must not cost the whole room.
const MAX_STEPS: usize = 10_000;

impl Rooms {
    /// The servers with a user joined in `state`, this node first if it is one.
    pub async fn joined_servers(&self, state: &State) -> Result<Vec<OwnedServerName>, RoomError> {
        let mut servers = BTreeSet::new();
        for ((kind, key), id) in state.iter() {
            let Ok(user) = UserId::parse(key.as_str()) else { continue };
            if *kind != StateEventType::RoomMember || servers.contains(user.server_name()) {
                continue;
            }
            let Some(event) = self.event(id).await? else { continue };
            if event.pdu.member().is_some_and(|(_, membership)| membership == MembershipState::Join) {
                servers.insert(user.server_name().to_owned());
            }
        }
        let own = servers.take(self.key.server_name());
        Ok(own.into_iter().chain(servers).collect())
    }

    /// The stored events of `ids`, in order, read in one go.
    pub async fn events(&self, ids: &[&EventId]) -> Result<Vec<Option<Arc<StoredEvent>>>, RoomError> {
        self.events.get_many(self.store(), ids).await
    }

    /// The auth chain of the events of `room_id` that `of` names: the events
    /// their `auth_events` name, and theirs, recursively, sorted by event ID.
    /// An event of `of` is in it only as another's auth event (the create event
    /// of a room's state, say). Events that fail authorization never get into an
    /// accepted event's chain: the auth rules reject an event whose auth events
    /// were rejected.
    ///
    /// Since room version 12 no event names the create event (the room ID is
    /// its hash), yet every check reads it: it is in every chain but its own,
    /// so a server can check the chain with nothing else.
    pub async fn auth_chain(&self, room_id: &RoomId, of: &[OwnedEventId]) -> Result<Vec<OwnedEventId>, RoomError> {
        let rules = pdu::rules(&self.room(room_id).await?.version)?;
        let mut graph = AuthGraph::load(self.store(), room_id).await?;
        // Only state events are in the graph: another event's edges are its own.
        let outside: Vec<&EventId> = of.iter().filter(|id| !graph.edges.contains_key(*id)).map(|id| &**id).collect();
        for event in self.events(&outside).await?.into_iter().flatten() {
            if event.pdu.room_id == room_id {
                graph.edges.insert(event.pdu.event_id.clone(), event.pdu.auth_events.clone());
            }
        }
        let mut chain = graph.ancestors(of);
        if rules.authorization.room_create_event_id_as_room_id {
            let create = EventId::parse(format!("${}", room_id.strip_sigil())).map_err(RoomError::corrupt)?;
            if of.iter().any(|id| *id != create) {
                chain.insert(create);
            }
        }
        let mut chain: Vec<OwnedEventId> = chain.iter().cloned().collect();
        chain.sort_unstable();
        Ok(chain)
    }

    /// The spec's backfill: up to `limit` events of `room_id`, those of `from`
    /// and the ones before them along `prev_events`, deepest first. Events of
    /// `from` this node does not have in the room are passed over. A rejected
    /// event is walked through but not returned: this node does not vouch for it.
    pub async fn backfill(
        &self,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, RoomError> {
        let mut walk = Walk::default();
        self.find(&mut walk, room_id, from, false, 0).await?;
        let mut events = Vec::new();
        while events.len() < limit {
            let Some((step, event)) = walk.next() else { break };
            self.find(&mut walk, room_id, &event.pdu.prev_events, step.excluded, 0).await?;
            if event.record.rejected.is_none() {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The spec's `get_missing_events`: up to `limit` events before those of
    /// `latest` along `prev_events`, leaving out the events of `earliest` and
    /// every event before them (the asking server has those) and events
    /// shallower than `min_depth`; oldest first. The events of `latest`
    /// themselves are not returned, nor rejected events.
    pub async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Arc<StoredEvent>>, RoomError> {
        let mut walk = Walk::default();
        self.find(&mut walk, room_id, earliest, true, min_depth).await?;
        self.find(&mut walk, room_id, latest, false, min_depth).await?;
        let mut events = Vec::new();
        while events.len() < limit {
            let Some((step, event)) = walk.next() else { break };
            self.find(&mut walk, room_id, &event.pdu.prev_events, step.excluded, min_depth).await?;
            if !step.excluded && !latest.contains(&step.id) && event.record.rejected.is_none() {
                events.push(event);
            }
        }
        events.reverse();
        Ok(events)
    }

    /// Hands `walk` the events of `ids` that are stored in `room_id` and no
    /// shallower than `min_depth`, read in one go.
    async fn find(
        &self,
        walk: &mut Walk,
        room_id: &RoomId,
        ids: &[OwnedEventId],
        excluded: bool,
        min_depth: u64,
    ) -> Result<(), RoomError> {
        let unread: Vec<&EventId> = ids.iter().filter(|id| walk.unread(id)).map(|id| &**id).collect();
        for event in self.events(&unread).await?.into_iter().flatten() {
            if event.pdu.room_id == room_id {
                walk.read(event);
            }
        }
        for id in ids {
            walk.found(id, excluded, min_depth);
        }
        Ok(())
    }
}

/// An event a walk has found and not visited yet. Deeper events come first;
/// of two steps at one depth, one the walk leaves out comes first, so an event
/// found both ways is left out.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    depth: u64,
    excluded: bool,
    id: OwnedEventId,
}

/// A walk back through a room's DAG along `prev_events`, deepest events first:
/// an event's children are deeper than it, so each event is visited after
/// every event above it that the walk found, and an event is known to be left
/// out before it is visited. A server that lies about depths can only reorder
/// the walk; each event is still visited once, and at most [`MAX_STEPS`].
#[derive(Default)]
struct Walk {
    queue: BinaryHeap<Step>,
    /// Events read but not visited yet.
    read: HashMap<OwnedEventId, Arc<StoredEvent>>,
    visited: HashSet<OwnedEventId>,
    /// Steps in the queue that are not left out (an event found twice counts
    /// twice): once none is left, nothing more can be returned.
    included: usize,
}

impl Walk {
    /// Whether `id` still needs reading from the store.
    fn unread(&self, id: &EventId) -> bool {
        !self.read.contains_key(id) && !self.visited.contains(id)
    }

    fn read(&mut self, event: Arc<StoredEvent>) {
        self.read.insert(event.pdu.event_id.clone(), event);
    }

    /// Queues the event `id`, if it was read (it is in the room) and is not
    /// shallower than `min_depth`.
    fn found(&mut self, id: &EventId, excluded: bool, min_depth: u64) {
        let Some(event) = self.read.get(id) else { return };
        let depth = u64::from(event.pdu.depth);
        if depth < min_depth {
            return;
        }
        self.included += usize::from(!excluded);
        self.queue.push(Step { depth, excluded, id: id.to_owned() });
    }

    /// The next event to visit: none once only events to leave out are
    /// queued, or [`MAX_STEPS`] events were visited.
    fn next(&mut self) -> Option<(Step, Arc<StoredEvent>)> {
        while self.included > 0 && self.visited.len() < MAX_STEPS {
            let step = self.queue.pop()?;
            self.included -= usize::from(!step.excluded);
            if let Some(event) = self.read.remove(&step.id) {
                self.visited.insert(step.id.clone());
                return Some((step, event));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use ruma::{canonical_json::CanonicalJsonObject, owned_event_id, RoomVersionId};
    use serde_json::json;

    use super::*;
    use crate::core::service::events::EventRecord;

    /// An event at `depth` after `prev_events`, as the walk reads it.
    fn event(id: &str, depth: u64, prev_events: &[&str]) -> Arc<StoredEvent> {
        let json = json!({
            "room_id": "!room:example.org",
            "sender": "@a:example.org",
            "origin_server_ts": 1,
            "type": "m.room.message",
            "content": {},
            "prev_events": prev_events,
            "auth_events": [],
            "depth": depth,
        });
        let json: CanonicalJsonObject = serde_json::from_value(json).unwrap();
        let record = EventRecord {
            room_id: ruma::owned_room_id!("!room:example.org"),
            version: RoomVersionId::V11,
            pdu: json,
            rejected: None,
            soft_failed: None,
            state_before: 0,
            state_after: 0,
            stream: None,
            replaces: None,
        };
        Arc::new(StoredEvent::from_record(EventId::parse(id).unwrap(), record).unwrap())
    }

    /// Runs a walk over `dag` from `latest` (and `earliest`, left out), as the
    /// service does, and returns the IDs visited and not left out.
    fn walk(dag: &[Arc<StoredEvent>], earliest: &[&str], latest: &[&str], min_depth: u64) -> Vec<String> {
        let by_id: HashMap<&EventId, &Arc<StoredEvent>> = dag.iter().map(|e| (&*e.pdu.event_id, e)).collect();
        let mut walk = Walk::default();
        let find = |walk: &mut Walk, ids: &[OwnedEventId], excluded: bool| {
            for id in ids {
                if walk.unread(id) {
                    if let Some(event) = by_id.get(&**id) {
                        walk.read((*event).clone());
                    }
                }
            }
            for id in ids {
                walk.found(id, excluded, min_depth);
            }
        };
        let ids = |ids: &[&str]| ids.iter().map(|id| EventId::parse(*id).unwrap()).collect::<Vec<_>>();
        find(&mut walk, &ids(earliest), true);
        find(&mut walk, &ids(latest), false);
        let mut visited = Vec::new();
        while let Some((step, event)) = walk.next() {
            find(&mut walk, &event.pdu.prev_events, step.excluded);
            if !step.excluded {
                visited.push(step.id.to_string());
            }
        }
        visited
    }

    /// $1 ← $2 ← $3a ← $4 and $2 ← $3b ← $4: a fork that merges.
    fn diamond() -> Vec<Arc<StoredEvent>> {
        vec![
            event("$1", 1, &[]),
            event("$2", 2, &["$1"]),
            event("$3a", 3, &["$2"]),
            event("$3b", 3, &["$2"]),
            event("$4", 4, &["$3a", "$3b"]),
        ]
    }

    #[test]
    fn a_walk_visits_deepest_first_and_each_event_once() {
        assert_eq!(walk(&diamond(), &[], &["$4"], 0), ["$4", "$3b", "$3a", "$2", "$1"]);
    }

    #[test]
    fn what_is_before_an_excluded_event_is_left_out_even_through_another_fork() {
        // $2 is before $3a, which the server has, though $3b also leads to it.
        assert_eq!(walk(&diamond(), &["$3a"], &["$4"], 0), ["$4", "$3b"]);
        assert_eq!(walk(&diamond(), &["$4"], &["$4"], 0), Vec::<String>::new(), "leaving out wins a tie");
    }

    #[test]
    fn a_walk_stops_at_min_depth_and_at_unknown_events() {
        assert_eq!(walk(&diamond(), &[], &["$4"], 3), ["$4", "$3b", "$3a"]);
        let gap = vec![event("$5", 5, &["$unknown"]), event("$6", 6, &["$5"])];
        assert_eq!(walk(&gap, &[], &["$6"], 0), ["$6", "$5"]);
    }

    #[test]
    fn a_walk_ends_once_only_excluded_events_remain() {
        // A long history before the excluded event is not walked at all once
        // nothing the walk could return is queued.
        let mut chain: Vec<Arc<StoredEvent>> = (1..=50u64)
            .map(|depth| {
                let prev = format!("${}", depth - 1);
                let prevs: Vec<&str> = if depth == 1 { vec![] } else { vec![prev.as_str()] };
                event(&format!("${depth}"), depth, &prevs)
            })
            .collect();
        chain.push(event("$side", 3, &["$2"]));
        let mut walk_state = Walk::default();
        for event in &chain {
            walk_state.read(event.clone());
        }
        walk_state.found(&owned_event_id!("$50"), true, 0);
        assert!(walk_state.next().is_none(), "nothing to return: nothing visited");
        assert_eq!(walk(&chain, &["$50"], &["$side"], 0), ["$side"]);
    }
}
