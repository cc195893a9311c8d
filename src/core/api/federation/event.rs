//! Reading rooms for other servers: single events, the state at an event, auth
//! chains, backfill and the events a server is missing.
//!
//! A server reads what history visibility lets its users see
//! ([`ServerSight`]). An event it asks about by ID that it may not see is
//! refused; one it may not see met on a walk back through history goes out
//! redacted, so the DAG it gets has no holes but no hidden content either. The
//! node never hands out an event it rejected: it does not vouch for those.

use std::sync::Arc;

use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
    canonical_json::redact,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName, UInt,
};
use serde_json::value::{to_raw_value, RawValue};

use crate::core::{
    api::client::visibility::ServerSight,
    pdu,
    router::Origin,
    service::{events::StoredEvent, rooms::RoomError, state::State},
    Error, Homeserver,
};

/// The most events one backfill or `get_missing_events` answer holds.
const MAX_EVENTS: usize = 100;

/// `GET /_matrix/federation/v1/event/{eventId}`
pub(crate) async fn get_event(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_event::v1::Request,
) -> Result<get_event::v1::Response, Error> {
    let event = find(hs, None, &request.event_id).await?;
    let mut sight = ServerSight::new(hs, &origin, &event.pdu.room_id);
    require_visible(&mut sight, &event).await?;
    Ok(get_event::v1::Response::new(hs.key().server_name().to_owned(), now(hs), pdu_for(&event, true)?))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
pub(crate) async fn state_ids(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_room_state_ids::v1::Request,
) -> Result<get_room_state_ids::v1::Response, Error> {
    let state = state_at(hs, &origin, &request.room_id, &request.event_id).await?;
    let pdu_ids = state_ids_of(&state);
    let auth_chain_ids = hs.rooms().auth_chain(&request.room_id, &pdu_ids).await?;
    Ok(get_room_state_ids::v1::Response::new(auth_chain_ids, pdu_ids))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
pub(crate) async fn state(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_room_state::v1::Request,
) -> Result<get_room_state::v1::Response, Error> {
    let state = state_at(hs, &origin, &request.room_id, &request.event_id).await?;
    let ids = state_ids_of(&state);
    let auth_chain = hs.rooms().auth_chain(&request.room_id, &ids).await?;
    Ok(get_room_state::v1::Response::new(pdus(hs, &auth_chain).await?, pdus(hs, &ids).await?))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub(crate) async fn event_auth(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_event_authorization::v1::Request,
) -> Result<get_event_authorization::v1::Response, Error> {
    hs.rooms().room(&request.room_id).await?;
    let event = find(hs, Some(&request.room_id), &request.event_id).await?;
    require_visible(&mut ServerSight::new(hs, &origin, &request.room_id), &event).await?;
    let chain = hs.rooms().auth_chain(&request.room_id, std::slice::from_ref(&event.pdu.event_id)).await?;
    Ok(get_event_authorization::v1::Response::new(pdus(hs, &chain).await?))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
pub(crate) async fn backfill(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_backfill::v1::Request,
) -> Result<get_backfill::v1::Response, Error> {
    hs.rooms().room(&request.room_id).await?;
    let mut sight = ServerSight::new(hs, &origin, &request.room_id);
    let from = readable_among(hs, &mut sight, &request.room_id, &request.v).await?;
    let events = hs.rooms().backfill(&request.room_id, &from, capped(request.limit)).await?;
    let pdus = for_server(&mut sight, &events).await?;
    Ok(get_backfill::v1::Response::new(hs.key().server_name().to_owned(), now(hs), pdus))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub(crate) async fn missing_events(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_missing_events::v1::Request,
) -> Result<get_missing_events::v1::Response, Error> {
    hs.rooms().room(&request.room_id).await?;
    let mut sight = ServerSight::new(hs, &origin, &request.room_id);
    let latest = readable_among(hs, &mut sight, &request.room_id, &request.latest_events).await?;
    let (earliest, limit, min_depth) = (&request.earliest_events, capped(request.limit), u64::from(request.min_depth));
    let events = hs.rooms().missing_events(&request.room_id, earliest, &latest, limit, min_depth).await?;
    Ok(get_missing_events::v1::Response::new(for_server(&mut sight, &events).await?))
}

/// The event `event_id`, of `room_id` if one is given, unless this node does
/// not have it there or rejected it.
async fn find(hs: &Homeserver, room_id: Option<&RoomId>, event_id: &EventId) -> Result<Arc<StoredEvent>, Error> {
    match hs.rooms().event(event_id).await? {
        Some(event) if event.record.rejected.is_none() && room_id.is_none_or(|r| event.pdu.room_id == r) => Ok(event),
        _ => Err(Error::NotFound(match room_id {
            Some(room_id) => format!("no event {event_id} in {room_id}"),
            None => format!("no event {event_id}"),
        })),
    }
}

async fn require_visible(sight: &mut ServerSight<'_>, event: &StoredEvent) -> Result<(), Error> {
    match sight.may_see(event).await? {
        true => Ok(()),
        false => Err(Error::Forbidden(format!(
            "{} is not in the room at {}, or its history visibility hides the event from the server",
            sight.server(),
            event.pdu.event_id
        ))),
    }
}

/// The events of `ids` this node has in the room, each of which the server
/// must be allowed to see; at least one must be there.
async fn readable_among(
    hs: &Homeserver,
    sight: &mut ServerSight<'_>,
    room_id: &RoomId,
    ids: &[OwnedEventId],
) -> Result<Vec<OwnedEventId>, Error> {
    let mut readable = Vec::new();
    for id in ids {
        match find(hs, Some(room_id), id).await {
            Ok(event) => {
                require_visible(sight, &event).await?;
                readable.push(event.pdu.event_id.clone());
            }
            // Servers name what they know; this node may not know all of it.
            Err(Error::NotFound(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    match readable.is_empty() {
        true => Err(Error::NotFound(format!("none of the events named is known in {room_id}"))),
        false => Ok(readable),
    }
}

/// The state before `event_id`, the spec's state at it, if the server may see
/// the event.
async fn state_at(
    hs: &Homeserver,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Arc<State>, Error> {
    hs.rooms().room(room_id).await?;
    let event = find(hs, Some(room_id), event_id).await?;
    require_visible(&mut ServerSight::new(hs, origin, room_id), &event).await?;
    Ok(hs.rooms().state_group(event.record.state_before).await?)
}

/// The event IDs of `state`, in the order of their keys: a `State` is a hash
/// map, whose order must not leak.
fn state_ids_of(state: &State) -> Vec<OwnedEventId> {
    let mut entries: Vec<_> = state.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(_, id)| id.clone()).collect()
}

/// The PDUs of `ids`, shallowest first, so a server can check each after the
/// events it names.
async fn pdus(hs: &Homeserver, ids: &[OwnedEventId]) -> Result<Vec<Box<RawValue>>, Error> {
    let refs: Vec<&EventId> = ids.iter().map(|id| &**id).collect();
    let mut events = Vec::with_capacity(ids.len());
    for (id, event) in ids.iter().zip(hs.rooms().events(&refs).await?) {
        events.push(event.ok_or_else(|| RoomError::Corrupt(format!("{id} is referenced but not stored")))?);
    }
    events.sort_by(|a, b| (a.pdu.depth, &a.pdu.event_id).cmp(&(b.pdu.depth, &b.pdu.event_id)));
    events.iter().map(|event| pdu_for(event, true)).collect()
}

/// `events` as the server may see them: whole, or redacted.
async fn for_server(sight: &mut ServerSight<'_>, events: &[Arc<StoredEvent>]) -> Result<Vec<Box<RawValue>>, Error> {
    let mut pdus = Vec::with_capacity(events.len());
    for event in events {
        let visible = sight.may_see(event).await?;
        pdus.push(pdu_for(event, visible)?);
    }
    Ok(pdus)
}

/// The event in the federation format; redacted as its room version says when
/// the server may not see its content. Its signatures still hold, and a server
/// that checks its content hash redacts it too.
fn pdu_for(event: &StoredEvent, visible: bool) -> Result<Box<RawValue>, Error> {
    let mut json = event.pdu.federation_json();
    if !visible {
        let rules = pdu::rules(&event.record.version).map_err(RoomError::from)?;
        json = redact(json, &rules.redaction, None).map_err(Error::internal)?;
    }
    to_raw_value(&json).map_err(Error::internal)
}

fn capped(limit: UInt) -> usize {
    usize::try_from(u64::from(limit)).unwrap_or(usize::MAX).min(MAX_EVENTS)
}

fn now(hs: &Homeserver) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new_saturating(hs.clock().now_millis()))
}
