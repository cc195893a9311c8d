//! Relations between events (`m.relates_to`): an index from each parent to the
//! events relating to it, written with the child in the same commit, for
//! `/relations`, `/threads` and the aggregations bundled into served events.
//!
//! Only events clients see are indexed (accepted, not soft-failed). A redacted
//! child stays in the index but loses its `m.relates_to`, so readers check the
//! child's content again: [`relation_of`] is the one judge of a relation.
//!
//! Key encodings:
//! - `relations`: room ID, 0, parent event ID, 0, the child's stream position
//!   (8 bytes big-endian) → relation type, 0, event type, 0, child event ID, 0,
//!   sender: a parent's children are one prefix range, in stream order.
//! - `related`: room ID, 0, parent event ID → empty: the parent has a relation
//!   whose aggregation is bundled (a thread, an edit or a reference), so serving
//!   an event reads its children only when this says so.
//! - `thread_activity`: room ID, 0, stream position (8 bytes), thread root ID →
//!   empty, one entry per thread event: a backward scan meets each thread first
//!   at its latest activity, the order `/threads` lists them in.

use std::sync::Arc;

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId};
use serde::Deserialize;

use super::{cache::Cache, room_key, rooms::RoomError};
use crate::{
    core::pdu::Pdu,
    store::{Batch, Direction, KeyRange, Store},
};

pub(crate) const RELATIONS: &str = "relations";
pub(crate) const RELATED: &str = "related";
pub(crate) const THREAD_ACTIVITY: &str = "thread_activity";

pub(crate) const THREAD: &str = "m.thread";
pub(crate) const REPLACE: &str = "m.replace";
pub(crate) const REFERENCE: &str = "m.reference";

/// Relation types whose aggregations are bundled into the parent.
const BUNDLED: [&str; 3] = [THREAD, REPLACE, REFERENCE];

/// How many parents' "has bundled relations" answers the cache keeps.
const KNOWN: usize = 16384;

/// The relation an event's content declares: its type and its parent.
pub(crate) fn relation_of(pdu: &Pdu) -> Option<(String, OwnedEventId)> {
    #[derive(Deserialize)]
    struct Content {
        #[serde(rename = "m.relates_to")]
        relates_to: RelatesTo,
    }
    #[derive(Deserialize)]
    struct RelatesTo {
        rel_type: String,
        event_id: OwnedEventId,
    }
    // State events take part in no relation the spec aggregates or lists.
    if pdu.state_key.is_some() {
        return None;
    }
    let content: Content = serde_json::from_str(pdu.content.get()).ok()?;
    Some((content.relates_to.rel_type, content.relates_to.event_id))
}

/// Adds the index entries of `pdu`, stored at `stream`, to `batch`.
pub(crate) fn index(batch: Batch, pdu: &Pdu, stream: u64) -> Batch {
    let Some((rel_type, parent)) = relation_of(pdu) else { return batch };
    let room = &pdu.room_id;
    let value = [rel_type.as_bytes(), pdu.kind.to_string().as_bytes(), pdu.event_id.as_bytes(), pdu.sender.as_bytes()]
        .join(&0u8);
    let mut batch = batch.put(RELATIONS, child_key(room, &parent, stream), value);
    if BUNDLED.contains(&rel_type.as_str()) {
        batch = batch.put(RELATED, room_key(room, parent.as_bytes()), Vec::new());
    }
    if rel_type == THREAD {
        let suffix = [&stream.to_be_bytes()[..], parent.as_bytes()].concat();
        batch = batch.put(THREAD_ACTIVITY, room_key(room, &suffix), Vec::new());
    }
    batch
}

/// `batch`, on the condition that no bundled relation to `event` is stored.
pub(crate) fn expect_childless(batch: Batch, room: &RoomId, event: &EventId) -> Batch {
    batch.expect(RELATED, room_key(room, event.as_bytes()), None)
}

fn parent_prefix(room: &RoomId, parent: &EventId) -> Vec<u8> {
    room_key(room, &[parent.as_bytes(), b"\0"].concat())
}

fn child_key(room: &RoomId, parent: &EventId, stream: u64) -> Vec<u8> {
    [parent_prefix(room, parent), stream.to_be_bytes().to_vec()].concat()
}

/// An indexed child of a parent event.
#[derive(Clone, Debug)]
pub struct Child {
    pub stream: u64,
    pub rel_type: String,
    pub kind: String,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
}

impl Child {
    fn decode(key: &[u8], value: &[u8]) -> Result<Self, RoomError> {
        let corrupt = || RoomError::corrupt("a bad relations entry");
        let stream = key.len().checked_sub(8).map(|at| &key[at..]).ok_or_else(corrupt)?;
        let stream = u64::from_be_bytes(stream.try_into().map_err(|_| corrupt())?);
        let text = std::str::from_utf8(value).map_err(|_| corrupt())?;
        let mut parts = text.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(rel_type), Some(kind), Some(event_id), Some(sender), None) => Ok(Self {
                stream,
                rel_type: rel_type.to_owned(),
                kind: kind.to_owned(),
                event_id: event_id.try_into().map_err(|_| corrupt())?,
                sender: sender.try_into().map_err(|_| corrupt())?,
            }),
            _ => Err(corrupt()),
        }
    }
}

pub struct Relations {
    store: Arc<dyn Store>,
    /// Whether an event has children whose aggregations are bundled.
    related: Cache<OwnedEventId, bool>,
}

impl Relations {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, related: Cache::new(KNOWN) }
    }

    /// Up to `limit` children of `parent` of the relation and event types
    /// given, from the gap before the stream position `from` in `direction`
    /// (backward: those before it; forward: it and those after). Scans on past
    /// entries of other types, so a page is full when it can be.
    pub async fn children(
        &self,
        room: &RoomId,
        parent: &EventId,
        filter: (Option<&str>, Option<&str>),
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Child>, RoomError> {
        let prefix = parent_prefix(room, parent);
        let mut range = KeyRange::prefix(&prefix);
        let mut children = Vec::new();
        let mut gap = from;
        loop {
            if let Some(gap) = gap {
                let key = [prefix.as_slice(), &gap.to_be_bytes()].concat();
                match direction {
                    Direction::Backward => range.end = std::ops::Bound::Excluded(key),
                    Direction::Forward => range.start = std::ops::Bound::Included(key),
                }
            }
            let size = limit.clamp(20, 500);
            let page = self.store.scan(RELATIONS, range.clone(), direction, size).await?;
            let full = page.len() == size;
            for (key, value) in page {
                let child = Child::decode(&key, &value)?;
                gap = Some(match direction {
                    Direction::Backward => child.stream,
                    Direction::Forward => child.stream + 1,
                });
                let wanted = filter.0.is_none_or(|t| t == child.rel_type) && filter.1.is_none_or(|t| t == child.kind);
                if wanted {
                    children.push(child);
                    if children.len() == limit {
                        return Ok(children);
                    }
                }
            }
            if !full {
                return Ok(children);
            }
        }
    }

    /// Reads in one go whether each of `parents` (with their rooms) has bundled
    /// aggregations: a page of events is served at a time.
    pub async fn prefetch(&self, parents: &[(&RoomId, &EventId)]) -> Result<(), RoomError> {
        let missing: Vec<_> = parents.iter().copied().filter(|(_, id)| self.related.get(*id).is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = missing.iter().map(|(room, id)| room_key(room, id.as_bytes())).collect();
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        for ((_, id), value) in missing.iter().zip(self.store.get_many(RELATED, &keys).await?) {
            self.related.insert((*id).to_owned(), value.is_some(), 1);
        }
        Ok(())
    }

    /// Whether `parent` has children whose aggregations are bundled.
    pub async fn has_bundled(&self, room: &RoomId, parent: &EventId) -> Result<bool, RoomError> {
        if let Some(known) = self.related.get(parent) {
            return Ok(known);
        }
        self.prefetch(&[(room, parent)]).await?;
        Ok(self.related.get(parent).unwrap_or(false))
    }

    /// Knows `events` have no children whose aggregations are bundled.
    pub(crate) fn childless(&self, events: impl IntoIterator<Item = OwnedEventId>) {
        for event in events {
            self.related.insert(event, false, 1);
        }
    }

    /// Forgets what is cached of the parents of events just stored.
    pub(crate) fn wrote(&self, parents: impl IntoIterator<Item = OwnedEventId>) {
        for parent in parents {
            self.related.remove(&parent);
        }
    }

    /// Thread roots of the room by latest activity, most recent first, starting
    /// below the stream position `before`: up to `limit` of them, each with the
    /// position of its latest thread event. A thread with activity above
    /// `before` is left out: an earlier page listed it.
    pub async fn thread_roots(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedEventId)>, RoomError> {
        let prefix = room_key(room, b"");
        let mut range = KeyRange::prefix(&prefix);
        let mut cursor = before;
        let mut roots: Vec<(u64, OwnedEventId)> = Vec::new();
        loop {
            if let Some(at) = cursor {
                range.end = std::ops::Bound::Excluded([prefix.as_slice(), &at.to_be_bytes()].concat());
            }
            let page = self.store.scan(THREAD_ACTIVITY, range.clone(), Direction::Backward, 100).await?;
            let full = page.len() == 100;
            for (key, _) in page {
                let corrupt = || RoomError::corrupt("a bad thread activity entry");
                let rest = key.get(prefix.len()..).filter(|r| r.len() > 8).ok_or_else(corrupt)?;
                let stream = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
                let root: OwnedEventId =
                    std::str::from_utf8(&rest[8..]).ok().and_then(|s| s.try_into().ok()).ok_or_else(corrupt)?;
                cursor = Some(stream);
                if roots.iter().any(|(_, r)| *r == root) {
                    continue;
                }
                // A thread seen first below `before` may have newer activity,
                // for which an earlier page listed it.
                if before.is_some() && self.latest_thread_event(room, &root).await? > stream {
                    continue;
                }
                roots.push((stream, root));
                if roots.len() == limit {
                    return Ok(roots);
                }
            }
            if !full {
                return Ok(roots);
            }
        }
    }

    /// The stream position of the latest event in the thread of `root`.
    async fn latest_thread_event(&self, room: &RoomId, root: &EventId) -> Result<u64, RoomError> {
        let latest = self.children(room, root, (Some(THREAD), None), None, Direction::Backward, 1).await?;
        Ok(latest.first().map_or(0, |c| c.stream))
    }
}
