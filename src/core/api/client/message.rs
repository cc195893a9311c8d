//! Sending and redacting events, and reading a room's history: `/messages` and
//! `/context`. Paging back past the oldest event the node has asks a server in
//! the room for the history before it (backfill).

use std::collections::{BTreeSet, HashMap};

use ruma::{
    api::{
        client::{
            context::get_context,
            filter::RoomEventFilter,
            message::{get_message_events, send_message_event},
            redact::redact_event,
        },
        federation::{backfill::get_backfill, event::get_room_state},
        Direction as ApiDirection,
    },
    canonical_json::CanonicalJsonObject,
    events::{room::member::MembershipState, AnyStateEvent, StateEventType, TimelineEventType},
    serde::Raw,
    OwnedUserId, RoomId, UInt,
};
use serde_json::{json, value::RawValue, Value};

use super::{filter, format, tokens, visibility::may_see};
use crate::{
    core::{
        pdu::{NewEvent, Pdu},
        service::{
            accounts::Session,
            rooms::{GivenState, TopologicalPosition},
        },
        Error, Homeserver,
    },
    store::Direction,
};

/// The most events one `/messages` or `/context` request returns.
const MAX_LIMIT: usize = 1000;
/// Events asked of another server at once for the history before the oldest
/// one this node has.
const BACKFILL_LIMIT: u32 = 100;
/// Events of one backfill answer whose state before is asked for, at most:
/// those that follow nothing else of the answer (one, in a room without forks).
const MAX_BACKFILL_ROOTS: usize = 5;

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub(crate) async fn send(
    hs: &Homeserver,
    session: Session,
    request: send_message_event::v3::Request,
) -> Result<send_message_event::v3::Response, Error> {
    // Sending is what being active means for presence.
    hs.ephemeral().touch(&session.user_id, true);
    let content: Value = serde_json::from_str(request.body.json().get()).map_err(|e| Error::BadJson(e.to_string()))?;
    let event = NewEvent::message(request.event_type.to_string().into(), content);
    let scope = format!("send/{}/{}", request.room_id, request.event_type);
    let event_id = hs
        .transactions()
        .once(&session.user_id, &session.device_id, &scope, &request.txn_id, |also| {
            hs.rooms().send_with(&request.room_id, &session.user_id, &event, also)
        })
        .await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub(crate) async fn redact(
    hs: &Homeserver,
    session: Session,
    request: redact_event::v3::Request,
) -> Result<redact_event::v3::Response, Error> {
    match hs.rooms().event(&request.event_id).await? {
        Some(target) if target.pdu.room_id == request.room_id => {
            let others = target.pdu.sender != session.user_id;
            if others
                && !hs.rooms().power_levels_of(&request.room_id).await?.user_can_redact_event_of_other(&session.user_id)
            {
                return Err(Error::Forbidden("redacting the events of others needs the redact power level".into()));
            }
        }
        _ => return Err(Error::NotFound(format!("no event {} in {}", request.event_id, request.room_id))),
    }
    let mut content = json!({ "redacts": request.event_id });
    if let Some(reason) = &request.reason {
        content["reason"] = reason.as_str().into();
    }
    let event = NewEvent {
        kind: TimelineEventType::RoomRedaction,
        state_key: None,
        content,
        redacts: Some(request.event_id.clone()),
    };
    let scope = format!("redact/{}/{}", request.room_id, request.event_id);
    let event_id = hs
        .transactions()
        .once(&session.user_id, &session.device_id, &scope, &request.txn_id, |also| {
            hs.rooms().send_with(&request.room_id, &session.user_id, &event, also)
        })
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}

/// A page of a room's history in topological order, as the viewer may see it.
struct Page {
    events: Vec<(TopologicalPosition, std::sync::Arc<Pdu>)>,
    /// Where the next page starts, if there may be more.
    next: Option<TopologicalPosition>,
    /// The last event looked at, shown or not.
    scanned: Option<TopologicalPosition>,
}

/// Up to `limit` events matching `filter` from the gap `from`, stopping at the
/// gap `to`.
async fn page(
    hs: &Homeserver,
    viewer: &OwnedUserId,
    room_id: &RoomId,
    (from, to): (Option<TopologicalPosition>, Option<TopologicalPosition>),
    direction: Direction,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Page, Error> {
    let mut events = Vec::new();
    // The exclusive bound of the next scan.
    let mut cursor = from.map(|(depth, stream)| match direction {
        Direction::Backward => (depth, stream),
        Direction::Forward => (depth, stream.saturating_sub(1)),
    });
    loop {
        let batch = hs.rooms().topological(room_id, cursor, direction, limit.max(20)).await?;
        let exhausted = batch.len() < limit.max(20);
        for (position, pdu) in batch {
            let past_to = to.is_some_and(|to| match direction {
                Direction::Backward => position < to,
                Direction::Forward => position >= to,
            });
            if past_to {
                return Ok(Page { events, next: None, scanned: cursor });
            }
            cursor = Some(position);
            if filter::room_event_matches(filter, &pdu) && may_see(hs, viewer, &pdu).await? {
                events.push((position, pdu));
                if events.len() == limit {
                    let next = match direction {
                        Direction::Backward => position,
                        Direction::Forward => (position.0, position.1 + 1),
                    };
                    return Ok(Page { events, next: Some(next), scanned: cursor });
                }
            }
        }
        if exhausted {
            return Ok(Page { events, next: None, scanned: cursor });
        }
    }
}

/// Members of `room_id` must have been in it to read its history.
async fn require_member(hs: &Homeserver, room_id: &RoomId, user: &OwnedUserId) -> Result<(), Error> {
    match hs.rooms().membership(room_id, user).await? {
        Some(MembershipState::Join | MembershipState::Leave | MembershipState::Ban | MembershipState::Invite) => Ok(()),
        _ => Err(Error::Forbidden(format!("{user} is not in the room {room_id}"))),
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub(crate) async fn messages(
    hs: &Homeserver,
    session: Session,
    request: get_message_events::v3::Request,
) -> Result<get_message_events::v3::Response, Error> {
    let room_id = &request.room_id;
    hs.rooms().room(room_id).await?;
    require_member(hs, room_id, &session.user_id).await?;
    let direction = match request.dir {
        ApiDirection::Backward => Direction::Backward,
        ApiDirection::Forward => Direction::Forward,
    };
    let from = match &request.from {
        Some(token) => tokens::room_position(hs, room_id, token).await?,
        None => None,
    };
    // A sync token from before the room existed: nothing lies behind it.
    if let (Some(token), None, Direction::Backward) = (&request.from, from, direction) {
        let mut response = get_message_events::v3::Response::new();
        response.start = token.clone();
        return Ok(response);
    }
    let to = match &request.to {
        Some(token) => tokens::room_position(hs, room_id, token).await?,
        None => None,
    };
    let limit = usize::try_from(request.limit).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let mut page = page(hs, &session.user_id, room_id, (from, to), direction, limit, &request.filter).await?;
    // The oldest event here reached, the history before it may be on other servers.
    if let (Direction::Backward, None, None) = (direction, to, page.next) {
        if let Some((at, oldest)) = oldest_placed(hs, room_id).await? {
            let now = match oldest.prev_events.is_empty() {
                // The room's create event: nothing lies before it.
                true => Some((at, oldest)),
                false => {
                    backfill(hs, room_id, &oldest).await?;
                    oldest_placed(hs, room_id).await?
                }
            };
            // Events now lie before where the page stopped (placed by this
            // request or, meanwhile, another): it is made again.
            let before_page = |(at, _): &(TopologicalPosition, _)| page.scanned.is_none_or(|scanned| *at < scanned);
            if let Some((_, now)) = now.filter(before_page) {
                page = self::page(hs, &session.user_id, room_id, (from, to), direction, limit, &request.filter).await?;
                // One answer may not reach the start: the client asks again,
                // and the next page asks for more.
                if !now.prev_events.is_empty() {
                    page.next = page.next.or(page.scanned);
                }
            }
        }
    }

    let start = match (&request.from, page.events.first()) {
        (Some(token), _) => token.clone(),
        (None, Some((position, _))) if direction == Direction::Backward => tokens::after(*position),
        (None, Some((position, _))) => tokens::before(*position),
        (None, None) => tokens::before((0, 0)),
    };
    let mut response = get_message_events::v3::Response::new();
    response.start = start;
    response.end = page.next.map(tokens::before);
    let senders: BTreeSet<OwnedUserId> = page.events.iter().map(|(_, pdu)| pdu.sender.clone()).collect();
    format::prefetch(hs, page.events.iter().map(|(_, pdu)| &**pdu), &session).await?;
    for (_, pdu) in &page.events {
        response.chunk.push(format::raw_event(hs, pdu, Some(&session)).await?);
    }
    if !request.filter.lazy_load_options.is_disabled() {
        response.state = member_events(hs, room_id, &senders, &session).await?;
    }
    Ok(response)
}

/// The first event of the room in topological order, and its position.
async fn oldest_placed(
    hs: &Homeserver,
    room_id: &RoomId,
) -> Result<Option<(TopologicalPosition, std::sync::Arc<Pdu>)>, Error> {
    Ok(hs.rooms().topological(room_id, None, Direction::Forward, 1).await?.pop())
}

/// Asks the servers in the room, one after another, for the events before
/// `oldest`, the oldest one this node has placed, and places those the first
/// answer brings (with the state before the oldest of them).
async fn backfill(hs: &Homeserver, room_id: &RoomId, oldest: &Pdu) -> Result<(), Error> {
    let servers = hs.rooms().joined_servers(&*hs.rooms().current_state(room_id).await?).await?;
    for server in servers.iter().filter(|s| **s != hs.key().server_name()) {
        let request = get_backfill::v1::Request::new(
            room_id.to_owned(),
            vec![oldest.event_id.clone()],
            UInt::from(BACKFILL_LIMIT),
        );
        let Ok(answer) = hs.federation().request(server, request, false).await else { continue };
        let pdus = hs.rooms().check_history(room_id, objects(&answer.pdus)).await?;
        let mut given = HashMap::new();
        for root in hs.rooms().history_roots(&pdus).await?.into_iter().take(MAX_BACKFILL_ROOTS) {
            let request = get_room_state::v1::Request::new(root.clone(), room_id.to_owned());
            if let Ok(state) = hs.federation().request(server, request, false).await {
                given.insert(root, GivenState { state: objects(&state.pdus), auth_chain: objects(&state.auth_chain) });
            }
        }
        match hs.rooms().receive_history(room_id, pdus, given).await {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            // A bad answer is that server's; another may give a good one.
            Err(err) if !err.is_internal() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The JSON objects among `raws`; the rest could be no PDU.
fn objects(raws: &[Box<RawValue>]) -> Vec<CanonicalJsonObject> {
    raws.iter().filter_map(|raw| serde_json::from_str(raw.get()).ok()).collect()
}

/// The current member events of `users`, for lazy-loading clients.
pub(crate) async fn member_events(
    hs: &Homeserver,
    room_id: &RoomId,
    users: &BTreeSet<OwnedUserId>,
    session: &Session,
) -> Result<Vec<Raw<AnyStateEvent>>, Error> {
    let state = hs.rooms().current_state(room_id).await?;
    let mut events = Vec::new();
    for user in users {
        if let Some(pdu) = hs.rooms().state_event_in(&state, &StateEventType::RoomMember, user.as_str()).await? {
            events.push(format::raw_event(hs, &pdu, Some(session)).await?);
        }
    }
    Ok(events)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub(crate) async fn context(
    hs: &Homeserver,
    session: Session,
    request: get_context::v3::Request,
) -> Result<get_context::v3::Response, Error> {
    let room_id = &request.room_id;
    let not_found = || Error::NotFound(format!("no event {} in {room_id}", request.event_id));
    let event = hs.rooms().event(&request.event_id).await?.ok_or_else(not_found)?;
    let stream = event.record.stream.ok_or_else(not_found)?;
    if event.pdu.room_id != *room_id || !may_see(hs, &session.user_id, &event.pdu).await? {
        return Err(not_found());
    }
    let position = (u64::from(event.pdu.depth), stream);
    let limit = usize::try_from(request.limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let (before_limit, after_limit) = (limit / 2, limit - limit / 2);
    let around =
        around(hs, &session.user_id, &event.pdu, position, (before_limit, after_limit), &request.filter).await?;
    let (before, after) = (around.before, around.after);
    let mut response = get_context::v3::Response::new();
    (response.start, response.end) = (Some(around.start), Some(around.end));
    let mut senders = BTreeSet::from([event.pdu.sender.clone()]);
    for (_, pdu) in &before {
        senders.insert(pdu.sender.clone());
        response.events_before.push(format::raw_event(hs, pdu, Some(&session)).await?);
    }
    response.event = Some(format::raw_event(hs, &event.pdu, Some(&session)).await?);
    for (_, pdu) in &after {
        senders.insert(pdu.sender.clone());
        response.events_after.push(format::raw_event(hs, pdu, Some(&session)).await?);
    }
    response.state = match request.filter.lazy_load_options.is_disabled() {
        false => member_events(hs, room_id, &senders, &session).await?,
        true => {
            let state = hs.rooms().current_state(room_id).await?;
            let mut events = Vec::new();
            for id in state.values() {
                if let Some(event) = hs.rooms().event(id).await? {
                    events.push(format::raw_event(hs, &event.pdu, Some(&session)).await?);
                }
            }
            events
        }
    };
    Ok(response)
}

/// The events around one, as the viewer may see them, with the tokens to
/// page on from either end: what `/context` and search results show.
pub(crate) struct Around {
    pub before: Vec<(TopologicalPosition, std::sync::Arc<Pdu>)>,
    pub after: Vec<(TopologicalPosition, std::sync::Arc<Pdu>)>,
    pub start: String,
    pub end: String,
}

/// Up to `before_limit` events before `pdu` (at `position`) and `after_limit`
/// after it that match `filter`.
pub(crate) async fn around(
    hs: &Homeserver,
    viewer: &OwnedUserId,
    pdu: &Pdu,
    position: TopologicalPosition,
    (before_limit, after_limit): (usize, usize),
    filter: &RoomEventFilter,
) -> Result<Around, Error> {
    let room_id = &pdu.room_id;
    let mut before = Vec::new();
    if before_limit > 0 {
        before =
            page(hs, viewer, room_id, (Some(position), None), Direction::Backward, before_limit, filter).await?.events;
    }
    let after_from = (position.0, position.1 + 1);
    let mut after = Vec::new();
    if after_limit > 0 {
        after =
            page(hs, viewer, room_id, (Some(after_from), None), Direction::Forward, after_limit, filter).await?.events;
    }
    let start = tokens::before(before.last().map_or(position, |(p, _)| *p));
    let end = tokens::after(after.last().map_or(position, |(p, _)| *p));
    Ok(Around { before, after, start, end })
}
