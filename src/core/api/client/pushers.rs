//! Pushers, which the node keeps but cannot yet push to, and the list of the
//! events the user's push rules notify them of, read from the timelines.

use std::sync::Arc;

use ruma::{
    api::{
        client::push::{get_notifications, get_pushers, set_pusher, PusherIds, PusherKind},
        error::DeserializationError,
        IncomingRequest, Metadata,
    },
    events::room::member::MembershipState,
    push::{Action, Ruleset},
    OwnedRoomId, RoomId, UserId,
};
use serde_json::{Map, Value};

use super::{
    format,
    push::{actions, read_upto},
};
use crate::{
    core::{
        pdu::Pdu,
        service::{accounts::Session, rooms::StreamPosition},
        Error, Homeserver,
    },
    store::Direction,
};

/// The spec's limits: 64 characters for an app ID, 512 bytes for a pushkey.
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;

/// Where a push gateway takes notifications; the spec allows no other path.
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// `GET /_matrix/client/v3/pushers`
pub(crate) async fn list(
    hs: &Homeserver,
    session: Session,
    _: get_pushers::v3::Request,
) -> Result<get_pushers::v3::Response, Error> {
    Ok(get_pushers::v3::Response::new(hs.pushers().pushers(&session.user_id).await?))
}

/// Ruma's `set_pusher` request, or why the spec refuses it where ruma does
/// otherwise: ruma takes a missing `kind` for `null` (deleting the pusher), and
/// refuses an `http` pusher without `data.url` as malformed JSON, which the
/// spec answers with `M_INVALID_PARAM`.
pub(crate) struct SetPusher(Result<set_pusher::v3::Request, Error>);

impl Metadata for SetPusher {
    const METHOD: http::Method = set_pusher::v3::Request::METHOD;
    const RATE_LIMITED: bool = set_pusher::v3::Request::RATE_LIMITED;
    type Authentication = <set_pusher::v3::Request as Metadata>::Authentication;
    type PathBuilder = <set_pusher::v3::Request as Metadata>::PathBuilder;
    const PATH_BUILDER: Self::PathBuilder = set_pusher::v3::Request::PATH_BUILDER;
}

impl IncomingRequest for SetPusher {
    type EndpointError = <set_pusher::v3::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = set_pusher::v3::Response;

    fn try_from_http_request_inner(request: http::Request<&[u8]>, args: &[&str]) -> Result<Self, DeserializationError> {
        // A body that is no JSON object is ruma's to refuse.
        let body = serde_json::from_slice::<Map<String, Value>>(request.body()).ok();
        match body.and_then(|body| refusal(&body)) {
            Some(refused) => Ok(Self(Err(refused))),
            None => set_pusher::v3::Request::try_from_http_request_inner(request, args).map(|r| Self(Ok(r))),
        }
    }
}

/// Why the spec refuses a `set_pusher` body that ruma takes, or refuses with
/// another error.
fn refusal(body: &Map<String, Value>) -> Option<Error> {
    match body.get("kind") {
        None => Some(Error::BadJson("kind is required: a pusher's, or null to delete it".into())),
        Some(kind) if kind == "http" && !body.get("data").is_some_and(|data| data["url"].is_string()) => {
            Some(Error::InvalidParam("an http pusher needs data.url".into()))
        }
        Some(_) => None,
    }
}

/// `POST /_matrix/client/v3/pushers/set`
pub(crate) async fn set(
    hs: &Homeserver,
    session: Session,
    request: SetPusher,
) -> Result<set_pusher::v3::Response, Error> {
    match request.0?.action {
        set_pusher::v3::PusherAction::Post(post) => {
            check_ids(&post.pusher.ids)?;
            match &post.pusher.kind {
                PusherKind::Http(data) => check_url(&data.url)?,
                PusherKind::Email(_) => {}
                _ => return Err(Error::InvalidParam("a pusher's kind is http or email".into())),
            }
            hs.pushers().set(&session.user_id, &session.device_id, post.pusher, post.append).await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            check_ids(&ids)?;
            hs.pushers().delete(&session.user_id, &ids).await?;
        }
        // Ruma's enum may grow; what it parses today is one of the above.
        _ => return Err(Error::BadJson("unknown pusher action".into())),
    }
    Ok(set_pusher::v3::Response::new())
}

fn check_ids(ids: &PusherIds) -> Result<(), Error> {
    if ids.app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::InvalidParam(format!("app_id is longer than {MAX_APP_ID_CHARS} characters")));
    }
    if ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::InvalidParam(format!("pushkey is longer than {MAX_PUSHKEY_BYTES} bytes")));
    }
    Ok(())
}

/// A push gateway's notify URL. The spec asks for HTTPS; plain HTTP is let
/// through, as for a gateway on the same machine during development.
fn check_url(url: &str) -> Result<(), Error> {
    let invalid = || Error::InvalidParam(format!("data.url {url:?} is not an http(s) URL with the path {NOTIFY_PATH}"));
    let uri: http::Uri = url.parse().map_err(|_| invalid())?;
    let web = matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some();
    match web && uri.path() == NOTIFY_PATH {
        true => Ok(()),
        false => Err(invalid()),
    }
}

/// Notifications listed per page unless the client asks for another number,
/// and at most.
const DEFAULT_NOTIFICATIONS: usize = 20;
const MAX_NOTIFICATIONS: usize = 100;

/// Events looked at per room and page at most, so that a page costs the
/// same however quiet the rooms are; the page then ends where the rooms
/// looked at least far back stopped.
const SCANNED_PER_ROOM: usize = 300;
const SCAN_PAGE: usize = 50;

/// An event that notifies the user, at its stream position.
struct Found {
    position: StreamPosition,
    pdu: Arc<Pdu>,
    actions: Vec<Action>,
    read: bool,
}

/// `GET /_matrix/client/v3/notifications`
///
/// The pagination token is a stream position: the next page holds what came
/// before it. Only what arrived after the user joined notifies them.
pub(crate) async fn notifications(
    hs: &Homeserver,
    session: Session,
    request: get_notifications::v3::Request,
) -> Result<get_notifications::v3::Response, Error> {
    let from = match request.from.as_deref() {
        Some(token) => {
            Some(token.parse().map_err(|_| Error::InvalidParam(format!("{token:?} is not a /notifications token")))?)
        }
        None => None,
    };
    let limit = request.limit.map_or(DEFAULT_NOTIFICATIONS, |l| {
        usize::try_from(u64::from(l)).unwrap_or(MAX_NOTIFICATIONS).clamp(1, MAX_NOTIFICATIONS)
    });
    let only_highlight = request.only.as_deref() == Some("highlight");
    let user = &session.user_id;
    let rules = hs.unread_counts().rules(hs, user).await?;
    let mut found: Vec<(OwnedRoomId, Found)> = Vec::new();
    // Every room was looked at from `from` down to here.
    let mut scanned_to: StreamPosition = 0;
    for (room_id, membership) in hs.rooms().rooms_of(user).await?.iter() {
        if membership.membership != MembershipState::Join {
            continue;
        }
        let scan = Scan { hs, rules: &rules, user, room_id, joined_at: membership.stream, only_highlight };
        let (in_room, stopped_at) = scan.run(from, limit).await?;
        scanned_to = scanned_to.max(stopped_at);
        found.extend(in_room.into_iter().map(|f| (room_id.clone(), f)));
    }
    found.retain(|(_, f)| f.position >= scanned_to);
    found.sort_unstable_by_key(|(_, f)| std::cmp::Reverse(f.position));
    // Past a full page, the next one starts after its last notification;
    // short of one, below where the scans stopped, if any stopped early.
    let more = found.len() > limit;
    found.truncate(limit);
    let next_token = match more {
        true => found.last().map(|(_, f)| f.position),
        false => (scanned_to > 0).then_some(scanned_to),
    };
    let mut notifications = Vec::with_capacity(found.len());
    for (room_id, f) in found {
        let event = format::sync_event(hs, &f.pdu, &session).await?;
        let ts = f.pdu.origin_server_ts;
        notifications.push(get_notifications::v3::Notification::new(f.actions, event, f.read, room_id, ts));
    }
    let mut response = get_notifications::v3::Response::new(notifications);
    response.next_token = next_token.map(|p| p.to_string());
    Ok(response)
}

/// One room's part of a `/notifications` page.
struct Scan<'a> {
    hs: &'a Homeserver,
    rules: &'a Ruleset,
    user: &'a UserId,
    room_id: &'a RoomId,
    joined_at: StreamPosition,
    only_highlight: bool,
}

impl Scan<'_> {
    /// Up to `limit` notifying events before `from` (or the end), newest
    /// first, and the position the scan stopped at: 0 when nothing earlier
    /// can notify.
    async fn run(&self, from: Option<StreamPosition>, limit: usize) -> Result<(Vec<Found>, StreamPosition), Error> {
        let (hs, room_id) = (self.hs, self.room_id);
        let mut found = Vec::new();
        // Read once a page needs them, and not for rooms with nothing new.
        let (mut context, mut read_to) = (None, None);
        let (mut cursor, mut scanned) = (from, 0);
        while scanned < SCANNED_PER_ROOM {
            let page_size = SCAN_PAGE.min(SCANNED_PER_ROOM - scanned);
            let page = hs.rooms().timeline(room_id, cursor, Direction::Backward, page_size).await?;
            let last_page = page.len() < page_size;
            for (position, pdu) in page {
                if position <= self.joined_at {
                    return Ok((found, 0));
                }
                cursor = Some(position);
                scanned += 1;
                if pdu.sender == self.user {
                    continue;
                }
                if context.is_none() {
                    context = Some(hs.unread_counts().context(hs, self.user, room_id).await?);
                }
                let Some(context) = &context else { continue };
                let actions = actions(hs, self.rules, context, &pdu).await?;
                let highlight = actions.iter().any(Action::is_highlight);
                if !actions.iter().any(Action::should_notify) || self.only_highlight && !highlight {
                    continue;
                }
                if read_to.is_none() {
                    read_to = Some(read_upto(hs, self.user, room_id).await?);
                }
                let read = read_to.is_some_and(|upto| position <= upto);
                found.push(Found { position, pdu, actions: actions.to_vec(), read });
                if found.len() == limit {
                    return Ok((found, position));
                }
            }
            if last_page {
                return Ok((found, 0));
            }
        }
        Ok((found, cursor.unwrap_or(0)))
    }
}
