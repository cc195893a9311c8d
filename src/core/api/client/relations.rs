//! Relations between events: `/relations` lists an event's children and
//! `/threads` a room's threads, as their viewer may see them.
//!
//! Pagination tokens are `r{stream}`: the gap before that stream position.
//! `from` and `to` also take `/sync` and `/messages` tokens, as the spec asks.

use ruma::{
    api::{
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads::{self, v1::IncludeThreads},
        },
        Direction as ApiDirection,
    },
    serde::Raw,
    EventId, OwnedEventId, RoomId, UInt,
};

use super::{format, tokens::SyncToken, visibility::may_see};
use crate::{
    core::{
        pdu::Pdu,
        service::{
            accounts::Session,
            relations::{relation_of, Child, THREAD},
        },
        Error, Homeserver,
    },
    store::Direction,
};

/// A page when the client names no limit, and the most a page holds.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// How deep `recurse` follows relations of relations: the spec asks for 3.
const RECURSION_DEPTH: u32 = 3;

/// The stream position a token stands for the gap before.
fn gap(token: &str) -> Result<u64, Error> {
    let bad = || Error::InvalidParam(format!("not a pagination token: {token}"));
    match token.as_bytes().first() {
        Some(b'r') => token[1..].parse().map_err(|_| bad()),
        // After the last event the sync saw.
        Some(b's') => Ok(SyncToken::parse(token)?.events + 1),
        Some(b't') => token[1..].split_once('_').and_then(|(_, stream)| stream.parse().ok()).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn limit(limit: Option<UInt>) -> usize {
    limit.map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT)).clamp(1, MAX_LIMIT)
}

/// What a `/relations` request asks for, whichever of its three paths it came by.
struct Query<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: ApiDirection,
    limit: Option<UInt>,
    recurse: bool,
}

struct Page<T> {
    chunk: Vec<Raw<T>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

/// The [`Query`] of one of the three `/relations` requests, which have the
/// same fields but for the types.
macro_rules! query {
    ($request:expr, $rel_type:expr, $event_type:expr) => {{
        let request = &$request;
        Query {
            room_id: &request.room_id,
            event_id: &request.event_id,
            rel_type: $rel_type,
            event_type: $event_type,
            from: request.from.as_deref(),
            to: request.to.as_deref(),
            dir: request.dir,
            limit: request.limit,
            recurse: request.recurse,
        }
    }};
}

/// Moves a page into one of the three `/relations` responses, which have the
/// same four fields.
macro_rules! respond {
    ($module:ident, $page:expr) => {{
        let page = $page;
        let mut response = $module::v1::Response::new(page.chunk);
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.recursion_depth = page.recursion_depth;
        response
    }};
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
pub(crate) async fn children(
    hs: &Homeserver,
    session: Session,
    request: get_relating_events::v1::Request,
) -> Result<get_relating_events::v1::Response, Error> {
    let query = query!(request, None, None);
    Ok(respond!(get_relating_events, relating(hs, &session, query).await?))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
pub(crate) async fn children_of_type(
    hs: &Homeserver,
    session: Session,
    request: get_relating_events_with_rel_type::v1::Request,
) -> Result<get_relating_events_with_rel_type::v1::Response, Error> {
    let query = query!(request, Some(request.rel_type.to_string()), None);
    Ok(respond!(get_relating_events_with_rel_type, relating(hs, &session, query).await?))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub(crate) async fn children_of_types(
    hs: &Homeserver,
    session: Session,
    request: get_relating_events_with_rel_type_and_event_type::v1::Request,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response, Error> {
    let query = query!(request, Some(request.rel_type.to_string()), Some(request.event_type.to_string()));
    Ok(respond!(get_relating_events_with_rel_type_and_event_type, relating(hs, &session, query).await?))
}

/// The parent must exist in the room and be visible to the viewer: if not,
/// 404 either way, so the answer tells nothing of events one may not see.
async fn visible_event(hs: &Homeserver, session: &Session, room_id: &RoomId, event_id: &EventId) -> Result<(), Error> {
    let not_found = || Error::NotFound(format!("no event {event_id} in {room_id}"));
    let event = hs.rooms().event(event_id).await?.ok_or_else(not_found)?;
    if event.pdu.room_id != room_id
        || event.record.stream.is_none()
        || !may_see(hs, &session.user_id, &event.pdu).await?
    {
        return Err(not_found());
    }
    Ok(())
}

async fn relating<T>(hs: &Homeserver, session: &Session, query: Query<'_>) -> Result<Page<T>, Error> {
    visible_event(hs, session, query.room_id, query.event_id).await?;
    let limit = limit(query.limit);
    let direction = match query.dir {
        ApiDirection::Backward => Direction::Backward,
        ApiDirection::Forward => Direction::Forward,
    };
    let from = query.from.map(gap).transpose()?;
    let to = query.to.map(gap).transpose()?;
    let filter = (query.rel_type.as_deref(), query.event_type.as_deref());
    let relations = hs.rooms().relations();
    // One more than a page, to tell whether another follows.
    let mut children = match query.recurse {
        false => relations.children(query.room_id, query.event_id, filter, from, direction, limit + 1).await?,
        true => descendants(hs, query.room_id, query.event_id, filter, from, direction).await?,
    };
    if let Some(to) = to {
        children.retain(|c| match direction {
            Direction::Backward => c.stream >= to,
            Direction::Forward => c.stream < to,
        });
    }
    let more = children.len() > limit;
    children.truncate(limit);
    let next_batch = match (more, children.last()) {
        (true, Some(last)) => Some(match direction {
            Direction::Backward => format!("r{}", last.stream),
            Direction::Forward => format!("r{}", last.stream + 1),
        }),
        _ => None,
    };
    let chunk = visible_events(hs, session, children.iter().map(|c| &c.event_id)).await?;
    Ok(Page {
        chunk,
        next_batch,
        prev_batch: query.from.map(str::to_owned),
        recursion_depth: query.recurse.then(|| UInt::from(RECURSION_DEPTH)),
    })
}

/// The children of `parent`, theirs, and so on to [`RECURSION_DEPTH`], the
/// filter applied at every level, in stream order from the gap `from`.
async fn descendants(
    hs: &Homeserver,
    room_id: &RoomId,
    parent: &EventId,
    filter: (Option<&str>, Option<&str>),
    from: Option<u64>,
    direction: Direction,
) -> Result<Vec<Child>, Error> {
    let relations = hs.rooms().relations();
    let mut found: Vec<Child> = Vec::new();
    let mut parents: Vec<OwnedEventId> = vec![parent.to_owned()];
    for _ in 0..RECURSION_DEPTH {
        let mut next = Vec::new();
        for parent in &parents {
            let children = relations.children(room_id, parent, filter, None, Direction::Forward, usize::MAX).await?;
            for child in children {
                if !found.iter().any(|f| f.event_id == child.event_id) {
                    next.push(child.event_id.clone());
                    found.push(child);
                }
            }
        }
        parents = next;
    }
    found.retain(|c| match (from, direction) {
        (None, _) => true,
        (Some(gap), Direction::Backward) => c.stream < gap,
        (Some(gap), Direction::Forward) => c.stream >= gap,
    });
    found.sort_by_key(|c| c.stream);
    if direction == Direction::Backward {
        found.reverse();
    }
    Ok(found)
}

/// The events, formatted for the viewer, leaving out those they may not see
/// and those no longer related (redacted since they were indexed).
async fn visible_events<'e, T>(
    hs: &Homeserver,
    session: &Session,
    ids: impl Iterator<Item = &'e OwnedEventId>,
) -> Result<Vec<Raw<T>>, Error> {
    let mut events = Vec::new();
    for id in ids {
        let Some(event) = hs.rooms().event(id).await? else { continue };
        if relation_of(&event.pdu).is_some() && may_see(hs, &session.user_id, &event.pdu).await? {
            events.push(event.pdu.clone());
        }
    }
    format::prefetch(hs, events.iter().map(|p| &**p), session).await?;
    let mut chunk = Vec::with_capacity(events.len());
    for pdu in &events {
        chunk.push(format::raw_event(hs, pdu, Some(session)).await?);
    }
    Ok(chunk)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
pub(crate) async fn threads(
    hs: &Homeserver,
    session: Session,
    request: get_threads::v1::Request,
) -> Result<get_threads::v1::Response, Error> {
    hs.rooms().room(&request.room_id).await?;
    let limit = limit(request.limit);
    let relations = hs.rooms().relations();
    let mut before = request.from.as_deref().map(gap).transpose()?;
    let participated_only = matches!(request.include, IncludeThreads::Participated);
    let mut roots = Vec::new();
    let mut next_batch = None;
    // Roots are filtered after they are read, so a page may take several reads.
    'pages: loop {
        let page = relations.thread_roots(&request.room_id, before, limit).await?;
        let last_page = page.len() < limit;
        for (stream, root_id) in page {
            before = Some(stream);
            let Some(root) = hs.rooms().event(&root_id).await? else { continue };
            if root.pdu.room_id != request.room_id || !may_see(hs, &session.user_id, &root.pdu).await? {
                continue;
            }
            if participated_only && !participated(hs, &session, &root.pdu).await? {
                continue;
            }
            roots.push(root.pdu.clone());
            if roots.len() == limit {
                next_batch = Some(format!("r{stream}"));
                break 'pages;
            }
        }
        if last_page {
            break;
        }
    }
    format::prefetch(hs, roots.iter().map(|p| &**p), &session).await?;
    let mut chunk = Vec::with_capacity(roots.len());
    for root in &roots {
        chunk.push(format::raw_event(hs, root, Some(&session)).await?);
    }
    let mut response = get_threads::v1::Response::new(chunk);
    response.next_batch = next_batch;
    Ok(response)
}

/// Whether the viewer sent the thread's root or any event in it.
async fn participated(hs: &Homeserver, session: &Session, root: &Pdu) -> Result<bool, Error> {
    if root.sender == session.user_id {
        return Ok(true);
    }
    let relations = hs.rooms().relations();
    let thread =
        relations.children(&root.room_id, &root.event_id, (Some(THREAD), None), None, Direction::Forward, usize::MAX);
    Ok(thread.await?.iter().any(|c| c.sender == session.user_id))
}
