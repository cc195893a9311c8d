//! Events as clients see them: the PDU's client-visible keys plus `unsigned`
//! (age, the previous content of state, the sender's transaction ID, the
//! aggregations of its relations), written straight from the parsed PDU:
//! `/sync` writes thousands of them.

use ruma::{
    events::TimelineEventType, serde::Raw, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedTransactionId, RoomId, UserId,
};
use serde::Serialize;
use serde_json::{
    value::{to_raw_value, RawValue},
    Value,
};

use std::sync::Arc;

use serde_json::json;

use crate::{
    core::{
        pdu::Pdu,
        service::{
            accounts::Session,
            events::StoredEvent,
            relations::{self, Child},
        },
        Error, Homeserver,
    },
    store::Direction,
};

/// An event in the client format, written straight from the parsed PDU.
#[derive(Serialize)]
struct ClientEvent<'a> {
    content: &'a RawValue,
    event_id: &'a EventId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// At the top level for every room version: before v11 it was in the content.
    #[serde(skip_serializing_if = "Option::is_none")]
    redacts: Option<&'a EventId>,
    /// Left out in `/sync`, where the room is the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a RoomId>,
    sender: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a TimelineEventType,
    unsigned: Unsigned,
}

#[derive(Serialize)]
struct Unsigned {
    age: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_content: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces_state: Option<OwnedEventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted_because: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<OwnedTransactionId>,
    #[serde(rename = "m.relations", skip_serializing_if = "Option::is_none")]
    relations: Option<Value>,
}

/// The keys of a redaction a client sees in `redacted_because`; the rest
/// (hashes, signatures, DAG links) are the federation's business.
const CLIENT_KEYS: &[&str] =
    &["content", "event_id", "origin_server_ts", "redacts", "room_id", "sender", "state_key", "type"];

/// The event in the client format, `unsigned` filled in for `viewer`, with its
/// room ID unless it goes into a `/sync` room.
pub(crate) async fn client_event(
    hs: &Homeserver,
    pdu: &Pdu,
    viewer: Option<&Session>,
    with_room_id: bool,
) -> Result<Box<RawValue>, Error> {
    let relations = match hs.rooms().relations().has_bundled(&pdu.room_id, &pdu.event_id).await? {
        true => bundled(hs, pdu, viewer).await?,
        false => None,
    };
    unbundled_event(hs, pdu, viewer, with_room_id, relations).await
}

/// [`client_event`] with the aggregations given: the events bundled into
/// another's get none of their own.
async fn unbundled_event(
    hs: &Homeserver,
    pdu: &Pdu,
    viewer: Option<&Session>,
    with_room_id: bool,
    relations: Option<Value>,
) -> Result<Box<RawValue>, Error> {
    let mut unsigned = Unsigned {
        relations,
        age: hs.clock().now_millis().saturating_sub(u64::from(pdu.origin_server_ts.0)),
        prev_content: None,
        replaces_state: None,
        redacted_because: None,
        transaction_id: None,
    };
    if let Some(CanonicalJsonValue::Object(stored)) = pdu.json.get("unsigned") {
        // Set by redaction: the redaction that emptied this event.
        if let Some(CanonicalJsonValue::Object(because)) = stored.get("redacted_because") {
            let keys = CLIENT_KEYS.iter().filter_map(|k| Some(((*k).to_owned(), because.get(*k)?.clone().into())));
            unsigned.redacted_because = Some(Value::Object(keys.collect()));
        }
    }
    if pdu.state_key.is_some() {
        if let Some(prev) = previous(hs, pdu).await? {
            unsigned.prev_content = Some(prev.content.clone());
            unsigned.replaces_state = Some(prev.event_id.clone());
        }
    }
    if let Some(viewer) = viewer.filter(|v| v.user_id == pdu.sender) {
        unsigned.transaction_id = hs.transactions().txn_of(&pdu.event_id, &viewer.device_id).await?;
    }
    let event = ClientEvent {
        content: &pdu.content,
        event_id: &pdu.event_id,
        origin_server_ts: pdu.origin_server_ts,
        redacts: pdu.redacts.as_deref(),
        room_id: with_room_id.then_some(&*pdu.room_id),
        sender: &pdu.sender,
        state_key: pdu.state_key.as_deref(),
        kind: &pdu.kind,
        unsigned,
    };
    serde_json::value::to_raw_value(&event).map_err(Error::internal)
}

/// Reads what formatting `pdus` needs (the transaction IDs of `viewer`'s own
/// events, which events have aggregations) in one go per table, before they
/// are formatted one by one.
pub(crate) async fn prefetch<'p>(
    hs: &Homeserver,
    pdus: impl Iterator<Item = &'p Pdu> + Clone,
    viewer: &Session,
) -> Result<(), Error> {
    let own: Vec<&EventId> = pdus.clone().filter(|p| p.sender == viewer.user_id).map(|p| &*p.event_id).collect();
    hs.transactions().prefetch(&own).await?;
    let all: Vec<(&RoomId, &EventId)> = pdus.clone().map(|p| (&*p.room_id, &*p.event_id)).collect();
    hs.rooms().relations().prefetch(&all).await?;
    // The events state events replaced, for their `prev_content`.
    let mut replaced_ids = Vec::new();
    for pdu in pdus.filter(|p| p.state_key.is_some()) {
        replaced_ids.extend(replaced(hs, pdu).await?);
    }
    let ids: Vec<&EventId> = replaced_ids.iter().map(|id| &**id).collect();
    Ok(hs.rooms().prefetch_events(&ids).await?)
}

/// The aggregations of the relations of `pdu` the spec bundles into it:
/// its thread's summary, its latest edit, the events referencing it.
async fn bundled(hs: &Homeserver, pdu: &Pdu, viewer: Option<&Session>) -> Result<Option<Value>, Error> {
    let relations = hs.rooms().relations();
    let children =
        relations.children(&pdu.room_id, &pdu.event_id, (None, None), None, Direction::Backward, usize::MAX).await?;
    let mut bundle = serde_json::Map::new();
    let thread: Vec<&Child> = children.iter().filter(|c| c.rel_type == relations::THREAD).collect();
    if !thread.is_empty() {
        let participated =
            viewer.is_some_and(|v| pdu.sender == v.user_id || thread.iter().any(|c| c.sender == v.user_id));
        if let Some(latest) = latest_in_thread(hs, pdu, &thread).await? {
            let event = unbundled_event(hs, &latest.pdu, viewer, true, None).await?;
            bundle.insert(
                relations::THREAD.into(),
                json!({ "latest_event": event, "count": thread.len(), "current_user_participated": participated }),
            );
        }
    }
    if let Some(edit) = latest_edit(hs, pdu, &children).await? {
        let event = unbundled_event(hs, &edit, viewer, true, None).await?;
        bundle.insert(relations::REPLACE.into(), json!(event));
    }
    let references: Vec<Value> = children
        .iter()
        .filter(|c| c.rel_type == relations::REFERENCE)
        .map(|c| json!({ "event_id": c.event_id }))
        .collect();
    if !references.is_empty() {
        bundle.insert(relations::REFERENCE.into(), json!({ "chunk": references }));
    }
    Ok((!bundle.is_empty()).then_some(Value::Object(bundle)))
}

/// The latest reply of a thread (its replies newest first by stream
/// position): the first, unless the room has had history backfilled, whose
/// replies came after newer ones did; then the latest in the room's
/// topological order, as Synapse has it.
async fn latest_in_thread(hs: &Homeserver, root: &Pdu, thread: &[&Child]) -> Result<Option<Arc<StoredEvent>>, Error> {
    let Some(newest) = thread.first() else { return Ok(None) };
    if hs.rooms().room(&root.room_id).await?.backfilled == 0 {
        return Ok(hs.rooms().event(&newest.event_id).await?);
    }
    let ids: Vec<&EventId> = thread.iter().map(|c| &*c.event_id).collect();
    let replies = hs.rooms().events(&ids).await?.into_iter().flatten();
    Ok(replies.max_by_key(|reply| (reply.pdu.depth, reply.record.stream)))
}

/// The edit of `pdu` that applies: among the replacements by its sender, of its
/// type and still replacing it (not redacted since), the latest by
/// `origin_server_ts`, then event ID, as the spec orders them. A redacted
/// event shows no edit.
async fn latest_edit(hs: &Homeserver, pdu: &Pdu, children: &[Child]) -> Result<Option<Arc<Pdu>>, Error> {
    if pdu.is_redacted() {
        return Ok(None);
    }
    let mut latest: Option<Arc<Pdu>> = None;
    let edits = children.iter().filter(|c| c.rel_type == relations::REPLACE && c.sender == pdu.sender);
    for edit in edits.filter(|c| c.kind == pdu.kind.to_string()) {
        let Some(edit) = hs.rooms().event(&edit.event_id).await? else { continue };
        if relations::relation_of(&edit.pdu).is_none_or(|(_, parent)| parent != pdu.event_id) {
            continue;
        }
        let newer = |l: &Pdu| (edit.pdu.origin_server_ts, &edit.pdu.event_id) > (l.origin_server_ts, &l.event_id);
        if latest.as_deref().is_none_or(newer) {
            latest = Some(edit.pdu.clone());
        }
    }
    Ok(latest)
}

/// [`client_event`] as the typed raw JSON ruma's responses hold.
pub(crate) async fn raw_event<T>(hs: &Homeserver, pdu: &Pdu, viewer: Option<&Session>) -> Result<Raw<T>, Error> {
    Ok(Raw::from_json(client_event(hs, pdu, viewer, true).await?))
}

/// [`client_event`] for a room in a `/sync` response.
pub(crate) async fn sync_event<T>(hs: &Homeserver, pdu: &Pdu, viewer: &Session) -> Result<Raw<T>, Error> {
    Ok(Raw::from_json(client_event(hs, pdu, Some(viewer), false).await?))
}

pub(crate) fn to_raw<T>(value: &Value) -> Result<Raw<T>, Error> {
    Ok(Raw::from_json(to_raw_value(value).map_err(Error::internal)?))
}

/// The state event this one replaced.
async fn previous(hs: &Homeserver, pdu: &Pdu) -> Result<Option<std::sync::Arc<Pdu>>, Error> {
    let Some(prev_id) = replaced(hs, pdu).await? else { return Ok(None) };
    Ok(hs.rooms().event(&prev_id).await?.map(|prev| prev.pdu.clone()))
}

/// The ID of the state event `pdu` replaced: as its record says, or, for a
/// record stored before records said, as the state before it says.
async fn replaced(hs: &Homeserver, pdu: &Pdu) -> Result<Option<OwnedEventId>, Error> {
    let (Some(entry), Some(event)) = (pdu.state_entry(), hs.rooms().event(&pdu.event_id).await?) else {
        return Ok(None);
    };
    if let Some(replaces) = &event.record.replaces {
        return Ok(replaces.event_id.clone());
    }
    let before = hs.rooms().state_group(event.record.state_before).await?;
    Ok(before.get(&entry).cloned())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use ruma::EventId;

    use super::client_event;
    use crate::{
        core::{
            pdu::{NewEvent, Pdu},
            service::{
                events::{EventRecord, EVENTS},
                rooms::CreateRoom,
                tests::{node_on, user},
            },
            Homeserver, SCHEMA,
        },
        store::{MemoryStore, Store},
    };

    async fn record(hs: &Homeserver, id: &EventId) -> EventRecord {
        hs.rooms().event(id).await.unwrap().unwrap().record.clone()
    }

    async fn prev_content(hs: &Homeserver, pdu: &Pdu) -> Value {
        let event = client_event(hs, pdu, None, true).await.unwrap();
        serde_json::from_str::<Value>(event.get()).unwrap()["unsigned"]["prev_content"].clone()
    }

    /// `prev_content` comes from what an event's record says it replaced, and
    /// for a record stored before records said, from the state before it.
    #[tokio::test]
    async fn prev_content_from_the_record_and_from_older_records() {
        let store = Arc::new(MemoryStore::new(SCHEMA));
        let hs = node_on(store.clone()).await;
        let alice = user(&hs, "alice");
        let room_id = hs.rooms().create_room(&alice, CreateRoom::default()).await.unwrap();
        let topic = |t: &str| NewEvent::state("m.room.topic".into(), "", json!({ "topic": t }));
        let first = hs.rooms().send(&room_id, &alice, &topic("one")).await.unwrap();
        let second = hs.rooms().send(&room_id, &alice, &topic("two")).await.unwrap();
        assert_eq!(record(&hs, &first.event_id).await.replaces.unwrap().event_id, None);
        let replaced = record(&hs, &second.event_id).await.replaces.unwrap().event_id;
        assert_eq!(replaced.as_ref(), Some(&first.event_id));
        assert_eq!(prev_content(&hs, &second).await, json!({ "topic": "one" }));
        assert_eq!(prev_content(&hs, &first).await, Value::Null);

        // As an older glia stored it, read by a node with nothing cached.
        let legacy = EventRecord { replaces: None, ..record(&hs, &second.event_id).await };
        store.put(EVENTS, second.event_id.as_bytes(), &serde_json::to_vec(&legacy).unwrap()).await.unwrap();
        drop(hs);
        let hs = node_on(store).await;
        assert_eq!(prev_content(&hs, &second).await, json!({ "topic": "one" }));
    }
}
