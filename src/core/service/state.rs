//! Room state: state groups, stored as deltas on a parent group with a full
//! snapshot every [`MAX_CHAIN`] deltas (so loading one reads a short chain,
//! named in its first record, and a room of 10,000 members is not copied per
//! event), and state resolution v2,
//! through ruma, over state loaded from the async store beforehand.
//!
//! Key encoding: `state_groups`: group ID (u64 big-endian) → [`GroupRecord`] as
//! JSON. Group 0 is the empty state and is never stored.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ruma::{
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{self, utils::event_id_set::EventIdSet, StateMap},
    EventId, OwnedEventId, RoomId,
};
use serde::{Deserialize, Serialize};

use super::{
    cache::Cache,
    events::{AuthGraph, Events},
    rooms::RoomError,
};
use crate::{
    core::pdu::Pdu,
    store::{Batch, Store},
};

pub(crate) const STATE_GROUPS: &str = "state_groups";

/// The state of a room at some point: (event type, state key) → event ID.
pub type State = StateMap<OwnedEventId>;

/// Deltas in a row before a group is stored whole.
const MAX_CHAIN: u32 = 32;

/// State entries the group cache holds in each of its generations: a few
/// large rooms' states, or many small ones.
const CACHE_ENTRIES: usize = 100_000;

#[derive(Serialize, Deserialize)]
struct GroupRecord {
    parent: Option<u64>,
    /// The groups under this one down to its snapshot, nearest first, so a
    /// chain is read in two round trips, not one a group. Groups stored
    /// before it was have none; their chain is walked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    below: Vec<u64>,
    /// Sorted; `None` removes the entry (state resolution can drop one).
    changes: Vec<(StateEventType, String, Option<OwnedEventId>)>,
}

/// A group's state and the groups under it down to its snapshot (as many as
/// the deltas between them).
#[derive(Clone, Default)]
struct Loaded {
    below: Arc<[u64]>,
    state: Arc<State>,
}

/// A state group computed but not yet committed.
pub struct PendingGroup {
    pub id: u64,
    below: Arc<[u64]>,
    pub state: Arc<State>,
}

pub struct StateGroups {
    cache: Cache<u64, Loaded>,
}

impl Default for StateGroups {
    fn default() -> Self {
        Self { cache: Cache::new(CACHE_ENTRIES) }
    }
}

impl StateGroups {
    pub async fn load(&self, store: &dyn Store, group: u64) -> Result<Arc<State>, RoomError> {
        Ok(self.load_with_chain(store, group).await?.state)
    }

    async fn load_with_chain(&self, store: &dyn Store, group: u64) -> Result<Loaded, RoomError> {
        // The records read, from `group` down, and the IDs they are stored under.
        let mut records = Vec::new();
        let mut next = Some(group);
        let (base_ids, base) = loop {
            let Some(id) = next.filter(|id| *id != 0) else { break (Vec::new(), Loaded::default()) };
            if let Some(cached) = self.cache.get(&id) {
                break ([&[id][..], &cached.below].concat(), cached);
            }
            let record = read_group(store, id).await?;
            next = record.parent;
            // The rest of the chain at once, down to a group in the cache.
            let wanted: Vec<u64> = record.below.iter().copied().take_while(|id| self.cache.get(id).is_none()).collect();
            records.push((id, record));
            let keys: Vec<[u8; 8]> = wanted.iter().map(|id| id.to_be_bytes()).collect();
            let keys: Vec<&[u8]> = keys.iter().map(|key| &key[..]).collect();
            for (id, bytes) in wanted.iter().zip(store.get_many(STATE_GROUPS, &keys).await?) {
                let record = decode_group(*id, bytes)?;
                next = record.parent;
                records.push((*id, record));
            }
        };
        if records.is_empty() {
            return Ok(base);
        }
        let mut state = Arc::unwrap_or_clone(base.state);
        for (_, record) in records.iter().rev() {
            for (kind, key, event) in &record.changes {
                match event {
                    Some(event) => state.insert((kind.clone(), key.clone()), event.clone()),
                    None => state.remove(&(kind.clone(), key.clone())),
                };
            }
        }
        let below = records[1..].iter().map(|(id, _)| *id).chain(base_ids).collect();
        let loaded = Loaded { below, state: Arc::new(state) };
        self.remember_loaded(group, loaded.clone());
        Ok(loaded)
    }

    fn remember_loaded(&self, id: u64, loaded: Loaded) {
        // A group weighs its entries: big rooms' states are what fill memory.
        let weight = loaded.state.len().max(1);
        self.cache.insert(id, loaded, weight);
    }

    /// Adds to `batch` the writes recording `state` as a group derived from group
    /// `base` (stored, or among `uncommitted`), numbered from `counter`. Returns
    /// the group holding `state`: `base` itself when nothing changed.
    pub async fn save(
        &self,
        store: &dyn Store,
        batch: Batch,
        base: u64,
        uncommitted: &[PendingGroup],
        state: Arc<State>,
        counter: &mut u64,
    ) -> Result<(Batch, u64, Option<PendingGroup>), RoomError> {
        let base_group = match uncommitted.iter().find(|group| group.id == base) {
            Some(group) => Loaded { below: group.below.clone(), state: group.state.clone() },
            None => self.load_with_chain(store, base).await?,
        };
        let base_state = &base_group.state;
        if **base_state == *state {
            return Ok((batch, base, None));
        }
        let record = if base_group.below.len() + 1 >= MAX_CHAIN as usize || base == 0 {
            GroupRecord { parent: None, below: Vec::new(), changes: sorted(state.iter().map(|(k, v)| (k, Some(v)))) }
        } else {
            let changed = state.iter().filter(|(k, v)| base_state.get(*k) != Some(*v)).map(|(k, v)| (k, Some(v)));
            let removed = base_state.keys().filter(|k| !state.contains_key(*k)).map(|k| (k, None));
            let below = [&[base][..], &base_group.below].concat();
            GroupRecord { parent: Some(base), below, changes: sorted(changed.chain(removed)) }
        };
        let bytes = serde_json::to_vec(&record).map_err(RoomError::corrupt)?;
        *counter += 1;
        let id = *counter;
        let pending = PendingGroup { id, below: record.below.into(), state };
        Ok((batch.put(STATE_GROUPS, id.to_be_bytes(), bytes), id, Some(pending)))
    }

    /// Caches a group once the batch that stored it has committed.
    pub fn committed(&self, group: PendingGroup) {
        self.remember_loaded(group.id, Loaded { below: group.below, state: group.state });
    }
}

async fn read_group(store: &dyn Store, id: u64) -> Result<GroupRecord, RoomError> {
    decode_group(id, store.get(STATE_GROUPS, &id.to_be_bytes()).await?)
}

fn decode_group(id: u64, bytes: Option<Vec<u8>>) -> Result<GroupRecord, RoomError> {
    let bytes = bytes.ok_or_else(|| RoomError::Corrupt(format!("state group {id} is missing")))?;
    serde_json::from_slice(&bytes).map_err(RoomError::corrupt)
}

fn sorted<'a>(
    changes: impl Iterator<Item = (&'a (StateEventType, String), Option<&'a OwnedEventId>)>,
) -> Vec<(StateEventType, String, Option<OwnedEventId>)> {
    let sorted: BTreeMap<_, _> = changes.collect();
    sorted.into_iter().map(|((kind, key), event)| (kind.clone(), key.clone(), event.cloned())).collect()
}

/// Resolves `forks` (states of one room) with state resolution v2 as the room
/// version defines it. `unstored` are events the forks may hold that are not
/// stored yet (gathered for a commit still being built).
///
/// ruma's resolution reads events through a synchronous closure, so the events it
/// will need are loaded from the store first; any it asks for beyond those are
/// noted, loaded, and the (deterministic) resolution runs again.
pub async fn resolve(
    store: &dyn Store,
    events: &Events,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    forks: &[Arc<State>],
    unstored: &[Arc<Pdu>],
) -> Result<State, RoomError> {
    let Some(first) = forks.first() else { return Ok(State::new()) };
    if forks.iter().all(|fork| fork == first) {
        return Ok((**first).clone());
    }
    let StateResolutionVersion::V2(state_res_rules) = &rules.state_res else {
        return Err(RoomError::Resolution("room version does not use state resolution v2".into()));
    };

    let mut graph = AuthGraph::load(store, room_id).await?;
    for pdu in unstored.iter().filter(|pdu| pdu.room_id == room_id && pdu.is_state()) {
        graph.edges.insert(pdu.event_id.clone(), pdu.auth_events.clone());
    }
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = forks.iter().map(|fork| graph.ancestors(fork.values())).collect();

    // Start with what resolution surely reads: the conflicted events, the auth
    // difference, and their auth events.
    let mut conflicted: Vec<&OwnedEventId> = Vec::new();
    for fork in forks {
        for (key, id) in fork.iter() {
            if forks.iter().any(|other| other.get(key) != Some(id)) {
                conflicted.push(id);
            }
        }
    }
    let union: EventIdSet<OwnedEventId> = auth_chains.iter().flat_map(|c| c.iter().cloned()).collect();
    let difference = union.iter().filter(|id| !auth_chains.iter().all(|c| c.contains(id)));
    let mut wanted: Vec<OwnedEventId> = conflicted.into_iter().cloned().chain(difference.cloned()).collect();

    let mut loaded: HashMap<OwnedEventId, Arc<Pdu>> =
        unstored.iter().map(|pdu| (pdu.event_id.clone(), pdu.clone())).collect();
    loop {
        for id in wanted.drain(..) {
            if loaded.contains_key(&id) {
                continue;
            }
            let event = events
                .get(store, &id)
                .await?
                .ok_or_else(|| RoomError::Corrupt(format!("state resolution needs {id}, which is not stored")))?;
            loaded.insert(id, event.pdu.clone());
        }
        let missing = RefCell::new(Vec::new());
        let fetch = |id: &EventId| {
            let found = loaded.get(id).map(|pdu| (**pdu).clone());
            if found.is_none() {
                missing.borrow_mut().push(id.to_owned());
            }
            found
        };
        let result = state_res::resolve(
            &rules.authorization,
            state_res_rules,
            forks.iter().map(|fork| &**fork),
            auth_chains.clone(),
            fetch,
            |conflicted| Some(conflicted_subgraph(&graph, conflicted)),
        );
        wanted = missing.into_inner();
        if wanted.is_empty() {
            return result.map_err(|err| RoomError::Resolution(err.to_string()));
        }
    }
}

/// The events on auth-event paths from one conflicted event to another (state
/// resolution v2.1, room version 12): both an ancestor and a descendant of a
/// conflicted event, counting a conflicted event only on a path longer than itself.
fn conflicted_subgraph(graph: &AuthGraph, conflicted: &StateMap<Vec<OwnedEventId>>) -> EventIdSet<OwnedEventId> {
    let conflicted: EventIdSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    let ancestors = graph.ancestors(conflicted.iter());
    let mut children: HashMap<&EventId, Vec<&OwnedEventId>> = HashMap::new();
    for (child, parents) in &graph.edges {
        for parent in parents {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut descendants = EventIdSet::new();
    let mut stack: Vec<&OwnedEventId> =
        conflicted.iter().flat_map(|id| children.get(&**id).into_iter().flatten().copied()).collect();
    while let Some(id) = stack.pop() {
        if descendants.insert(id.clone()) {
            stack.extend(children.get(&**id).into_iter().flatten().copied());
        }
    }
    let mut subgraph: EventIdSet<OwnedEventId> =
        ancestors.iter().filter(|id| descendants.contains(id)).cloned().collect();
    subgraph.extend(conflicted.iter().filter(|id| ancestors.contains(id) || descendants.contains(id)).cloned());
    subgraph
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ruma::owned_event_id;

    use super::*;
    use crate::{core::SCHEMA, store::MemoryStore};

    /// Saves `states` one on the other, as commits do; their group IDs.
    async fn save_all(store: &MemoryStore, states: &[State]) -> Vec<u64> {
        let (groups, mut counter, mut base, mut ids) = (StateGroups::default(), 0, 0, Vec::new());
        for state in states {
            let (batch, id, pending) =
                groups.save(store, Batch::new(), base, &[], Arc::new(state.clone()), &mut counter).await.unwrap();
            store.write(batch).await.unwrap();
            groups.committed(pending.unwrap());
            (base, ids) = (id, [ids, vec![id]].concat());
        }
        ids
    }

    /// Each state one more member than the last.
    fn growing(n: usize) -> Vec<State> {
        let mut state = State::new();
        (0..n)
            .map(|i| {
                let event = OwnedEventId::try_from(format!("$e{i}")).unwrap();
                state.insert((StateEventType::RoomMember, format!("@u{i}:a")), event);
                state.clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn chains_load_whole_past_snapshots_and_from_any_cached_group() {
        let store = MemoryStore::new(SCHEMA);
        let states = growing(MAX_CHAIN as usize + 5);
        let ids = save_all(&store, &states).await;
        // A node just started: nothing cached; each load down to the
        // snapshot, or (in order) down to the group loaded before.
        let (backwards, forwards) = (StateGroups::default(), StateGroups::default());
        for (id, state) in ids.iter().zip(&states).rev() {
            assert_eq!(*backwards.load(&store, *id).await.unwrap(), *state, "group {id}");
        }
        for (id, state) in ids.iter().zip(&states) {
            assert_eq!(*forwards.load(&store, *id).await.unwrap(), *state, "group {id}");
        }
        let cold = StateGroups::default();
        let last = cold.load_with_chain(&store, *ids.last().unwrap()).await.unwrap();
        assert_eq!(last.below.len(), 4, "a snapshot came {MAX_CHAIN} groups in");
        // A group stored before chains were named in it is walked.
        let legacy = GroupRecord {
            parent: Some(ids[2]),
            below: Vec::new(),
            changes: vec![(StateEventType::RoomTopic, String::new(), Some(owned_event_id!("$topic")))],
        };
        store.put(STATE_GROUPS, &1000u64.to_be_bytes(), &serde_json::to_vec(&legacy).unwrap()).await.unwrap();
        let loaded = StateGroups::default().load_with_chain(&store, 1000).await.unwrap();
        assert_eq!((loaded.state.len(), &loaded.below[..]), (4, &[ids[2], ids[1], ids[0]][..]));
        let mut expected = states[2].clone();
        expected.insert((StateEventType::RoomTopic, String::new()), owned_event_id!("$topic"));
        assert_eq!(*loaded.state, expected);
    }
}
