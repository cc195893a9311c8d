//! The room directory: publishing rooms, and listing the published rooms of
//! this node, of another through federation, or (with no server named) of
//! every node online on the network, a directory no one has to run.

use ruma::{
    api::{
        client::{
            directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
            room::Visibility,
        },
        federation::directory as remote,
    },
    directory::{Filter, PublicRoomsChunk, RoomNetwork, RoomTypeFilter},
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room::{JoinRule, JoinRuleSummary, RoomSummary, RoomType},
    EventEncryptionAlgorithm, OwnedMxcUri, RoomAliasId, RoomId, ServerName, UInt,
};
use serde_json::{json, Value};

use super::{
    membership::members_in,
    visibility::{self, history_visibility},
};
use crate::core::{
    pdu::NewEvent,
    service::{accounts::Session, rooms::RoomError, state::State},
    Error, Homeserver,
};

/// Moves a page's fields into a public rooms response, of either API: they
/// are four types with the same four fields.
macro_rules! page_into {
    ($response:expr, $page:expr) => {{
        let (mut response, page) = ($response, $page);
        response.chunk = page.chunk;
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total_room_count_estimate;
        response
    }};
}
pub(crate) use page_into;

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub(crate) async fn get_visibility(
    hs: &Homeserver,
    _: (),
    request: get_room_visibility::v3::Request,
) -> Result<get_room_visibility::v3::Response, Error> {
    hs.rooms().room(&request.room_id).await?;
    let visibility = match hs.directory().is_published(&request.room_id).await? {
        true => Visibility::Public,
        false => Visibility::Private,
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub(crate) async fn set_visibility(
    hs: &Homeserver,
    session: Session,
    request: set_room_visibility::v3::Request,
) -> Result<set_room_visibility::v3::Response, Error> {
    let (room_id, user) = (&request.room_id, &session.user_id);
    hs.rooms().room(room_id).await?;
    visibility::require_joined(hs, room_id, user).await?;
    // Listing a room shows its name and alias to the world: whoever may change
    // its canonical alias may, and so may its creator.
    let alias = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({}));
    if !hs.rooms().may_send(room_id, user, &alias).await? {
        let create = hs.rooms().state_event(room_id, &StateEventType::RoomCreate, "").await?;
        if create.is_none_or(|create| create.sender != *user) {
            return Err(Error::Forbidden(format!(
                "only the room's creator or those who may set its canonical alias may publish {room_id}"
            )));
        }
    }
    let published = match request.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => return Err(Error::InvalidParam(format!("unknown visibility {}", other.as_str()))),
    };
    hs.directory().set_published(room_id, published).await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `GET /_matrix/client/v3/publicRooms`
pub(crate) async fn public_rooms(
    hs: &Homeserver,
    _: (),
    request: get_public_rooms::v3::Request,
) -> Result<get_public_rooms::v3::Response, Error> {
    if let Some(server) = remote_server(hs, request.server.as_deref()) {
        let mut ask = remote::get_public_rooms::v1::Request::new();
        ask.limit = request.limit;
        ask.since = request.since;
        let answer = hs.federation().request(server, ask, false).await?;
        return Ok(page_into!(get_public_rooms::v3::Response::new(Vec::new()), answer));
    }
    let (since, filter, network) = (request.since.as_deref(), Filter::new(), RoomNetwork::Matrix);
    let page = match request.server {
        // This node's own rooms, when it is named.
        Some(_) => public_rooms_in(hs, Scope::Node, request.limit, since, &filter, &network).await?,
        None => public_rooms_in(hs, Scope::Network, request.limit, since, &filter, &network).await?,
    };
    Ok(page_into!(get_public_rooms::v3::Response::new(Vec::new()), page))
}

/// `POST /_matrix/client/v3/publicRooms`
pub(crate) async fn public_rooms_filtered(
    hs: &Homeserver,
    _: Session,
    request: get_public_rooms_filtered::v3::Request,
) -> Result<get_public_rooms_filtered::v3::Response, Error> {
    if let Some(server) = remote_server(hs, request.server.as_deref()) {
        let mut ask = remote::get_public_rooms_filtered::v1::Request::new();
        ask.limit = request.limit;
        ask.since = request.since;
        ask.filter = request.filter;
        ask.room_network = request.room_network;
        let answer = hs.federation().request(server, ask, false).await?;
        return Ok(page_into!(get_public_rooms_filtered::v3::Response::new(), answer));
    }
    let (since, filter, network) = (request.since.as_deref(), &request.filter, &request.room_network);
    let page = match request.server {
        Some(_) => public_rooms_in(hs, Scope::Node, request.limit, since, filter, network).await?,
        None => public_rooms_in(hs, Scope::Network, request.limit, since, filter, network).await?,
    };
    Ok(page_into!(get_public_rooms_filtered::v3::Response::new(), page))
}

/// The server named by a `server` parameter, unless it names this node.
fn remote_server<'a>(hs: &Homeserver, server: Option<&'a ServerName>) -> Option<&'a ServerName> {
    server.filter(|server| *server != hs.key().server_name())
}

/// A page of published rooms, in the fields every public rooms response has.
pub(crate) struct PublicRooms {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total_room_count_estimate: Option<UInt>,
}

/// Whose rooms a listing shows.
pub(crate) enum Scope {
    /// This node's.
    Node,
    /// This node's and those of every node online now, each asked at once and
    /// given a short while, so one slow node does not hold up the list: the
    /// network-wide directory.
    Network,
}

/// The published rooms in `scope` that match `filter`, most joined members
/// first, in pages of `limit` from the token `since`.
pub(crate) async fn public_rooms_in(
    hs: &Homeserver,
    scope: Scope,
    limit: Option<UInt>,
    since: Option<&str>,
    filter: &Filter,
    network: &RoomNetwork,
) -> Result<PublicRooms, Error> {
    let start = start_of(since)?;
    let mut rooms = published(hs, filter, network).await?;
    if let Scope::Network = scope {
        let asks = hs.federation().peers().into_iter().map(|peer| async move {
            let mut ask = remote::get_public_rooms_filtered::v1::Request::new();
            ask.filter = filter.clone();
            ask.room_network = network.clone();
            let server = peer.server_name();
            let answer = std::pin::pin!(hs.federation().request(&server, ask, false));
            match futures_util::future::select(answer, hs.clock().sleep(PEER_WAIT_MS)).await {
                futures_util::future::Either::Left((Ok(answer), _)) => answer.chunk,
                _ => Vec::new(),
            }
        });
        let mut seen: std::collections::HashSet<_> = rooms.iter().map(|room| room.room_id.clone()).collect();
        for chunk in futures_util::future::join_all(asks).await.into_iter().flatten() {
            if seen.insert(chunk.room_id.clone()) {
                rooms.push(chunk);
            }
        }
    }
    paged(rooms, start, limit)
}

/// How long the network-wide directory waits for each node.
const PEER_WAIT_MS: u64 = 3_000;

fn start_of(since: Option<&str>) -> Result<usize, Error> {
    match since {
        None => Ok(0),
        Some(token) => token.parse().map_err(|_| Error::InvalidParam(format!("not a public rooms token: {token}"))),
    }
}

/// Every room this node publishes that matches `filter`.
async fn published(hs: &Homeserver, filter: &Filter, network: &RoomNetwork) -> Result<Vec<PublicRoomsChunk>, Error> {
    let mut rooms = Vec::new();
    // glia bridges no third-party networks: their directories are empty.
    if !matches!(network, RoomNetwork::ThirdParty(_)) {
        for room_id in hs.directory().published().await? {
            match chunk(hs, &room_id).await {
                Ok(chunk) if matches(filter, &chunk) => rooms.push(chunk),
                Ok(_) | Err(Error::Room(RoomError::UnknownRoom(_))) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(rooms)
}

/// `rooms`, most joined members first, as the page of `limit` from `start`.
fn paged(mut rooms: Vec<PublicRoomsChunk>, start: usize, limit: Option<UInt>) -> Result<PublicRooms, Error> {
    rooms.sort_by(|a, b| b.num_joined_members.cmp(&a.num_joined_members).then_with(|| a.room_id.cmp(&b.room_id)));
    let total = UInt::try_from(rooms.len()).ok();
    let limit = limit.map_or(usize::MAX, |limit| usize::try_from(u64::from(limit)).unwrap_or(usize::MAX));
    let (chunk, next, prev) = page(rooms, start, limit);
    Ok(PublicRooms {
        chunk,
        next_batch: next.map(|n| n.to_string()),
        prev_batch: prev.map(|p| p.to_string()),
        total_room_count_estimate: total,
    })
}

/// The items from `start`, `limit` of them (at least one, so paging always
/// moves on), with where the next and previous pages start, if there are any.
/// Tokens are offsets: a room whose member count changes between two pages
/// may move past the boundary, and show twice or not at all.
fn page<T>(items: Vec<T>, start: usize, limit: usize) -> (Vec<T>, Option<usize>, Option<usize>) {
    let limit = limit.max(1);
    let end = start.saturating_add(limit);
    let next = (end < items.len()).then_some(end);
    let prev = (start > 0).then(|| start.saturating_sub(limit));
    (items.into_iter().skip(start).take(limit).collect(), next, prev)
}

/// Whether a room matches the filter: the search term in its name, topic or
/// canonical alias (ignoring case), and its type among the types asked for.
fn matches(filter: &Filter, room: &PublicRoomsChunk) -> bool {
    let term = filter.generic_search_term.as_deref().map(str::to_lowercase);
    let fields = [room.name.as_deref(), room.topic.as_deref(), room.canonical_alias.as_ref().map(|a| a.as_str())];
    let found = term.is_none_or(|term| fields.into_iter().flatten().any(|field| field.to_lowercase().contains(&term)));
    let typed =
        filter.room_types.is_empty() || filter.room_types.contains(&RoomTypeFilter::from(room.room_type.clone()));
    found && typed
}

/// What the directory shows of a room, from its current state.
async fn chunk(hs: &Homeserver, room_id: &RoomId) -> Result<PublicRoomsChunk, Error> {
    let state = hs.rooms().current_state(room_id).await?;
    Ok(summary(hs, room_id, &state).await?.into())
}

/// A room's summary as `state` has it: what the room directory and the space
/// hierarchy show of a room.
pub(crate) async fn summary(hs: &Homeserver, room_id: &RoomId, state: &State) -> Result<RoomSummary, Error> {
    let joined = members_in(hs, state).await?.iter().filter(|(_, m)| m.membership == MembershipState::Join).count();
    let world_readable = history_visibility(hs, state).await? == "world_readable";
    let text = |content: Option<Value>, key: &str| content.and_then(|c| c.get(key)?.as_str().map(str::to_owned));
    let guest_access = text(content(hs, state, StateEventType::RoomGuestAccess).await?, "guest_access");
    // Without a join rule only the invited may join.
    let join_rule = content(hs, state, StateEventType::RoomJoinRules)
        .await?
        .and_then(|content| serde_json::from_value::<JoinRule>(content).ok())
        .map_or(JoinRuleSummary::Invite, JoinRuleSummary::from);
    let mut summary = RoomSummary::new(
        room_id.to_owned(),
        join_rule,
        guest_access.as_deref() == Some("can_join"),
        UInt::try_from(joined).unwrap_or(UInt::MAX),
        world_readable,
    );
    summary.name = text(content(hs, state, StateEventType::RoomName).await?, "name");
    summary.topic = text(content(hs, state, StateEventType::RoomTopic).await?, "topic");
    let alias = text(content(hs, state, StateEventType::RoomCanonicalAlias).await?, "alias");
    summary.canonical_alias = alias.and_then(|alias| RoomAliasId::parse(alias).ok());
    summary.avatar_url = text(content(hs, state, StateEventType::RoomAvatar).await?, "url").map(OwnedMxcUri::from);
    summary.room_type = text(content(hs, state, StateEventType::RoomCreate).await?, "type").map(RoomType::from);
    summary.room_version = Some(hs.rooms().room(room_id).await?.version);
    let algorithm = text(content(hs, state, StateEventType::RoomEncryption).await?, "algorithm");
    summary.encryption = algorithm.map(EventEncryptionAlgorithm::from);
    Ok(summary)
}

/// The content of the state event `(kind, "")` in `state`, if any.
async fn content(hs: &Homeserver, state: &State, kind: StateEventType) -> Result<Option<Value>, Error> {
    let event = hs.rooms().state_event_in(state, &kind, "").await?;
    Ok(event.and_then(|event| serde_json::from_str(event.content.get()).ok()))
}

#[cfg(test)]
mod tests {
    use ruma::{directory::PublicRoomsChunkInit, owned_room_id};

    use super::*;

    fn room(name: Option<&str>, topic: Option<&str>, alias: Option<&str>, kind: Option<&str>) -> PublicRoomsChunk {
        let mut chunk = PublicRoomsChunk::from(PublicRoomsChunkInit {
            num_joined_members: UInt::from(1u32),
            room_id: owned_room_id!("!r:example.org"),
            world_readable: false,
            guest_can_join: false,
        });
        chunk.name = name.map(str::to_owned);
        chunk.topic = topic.map(str::to_owned);
        chunk.canonical_alias = alias.map(|a| RoomAliasId::parse(a).unwrap());
        chunk.room_type = kind.map(RoomType::from);
        chunk
    }

    fn searching(term: &str) -> Filter {
        let mut filter = Filter::new();
        filter.generic_search_term = Some(term.to_owned());
        filter
    }

    #[test]
    fn the_search_term_is_looked_for_in_name_topic_and_alias_ignoring_case() {
        let lobby = room(Some("The Lobby"), Some("Say hello"), Some("#entrance:example.org"), None);
        for term in ["lobby", "HELLO", "entrance", "", "the l"] {
            assert!(matches(&searching(term), &lobby), "{term}");
        }
        for term in ["kitchen", "!r:example.org", "lobby!"] {
            assert!(!matches(&searching(term), &lobby), "{term}");
        }
        assert!(!matches(&searching("x"), &room(None, None, None, None)));
        assert!(matches(&Filter::new(), &room(None, None, None, None)));
    }

    #[test]
    fn room_types_filter_rooms_and_default_means_no_type() {
        let mut spaces = Filter::new();
        spaces.room_types = vec![RoomTypeFilter::Space];
        assert!(matches(&spaces, &room(None, None, None, Some("m.space"))));
        assert!(!matches(&spaces, &room(None, None, None, None)));
        spaces.room_types.push(RoomTypeFilter::Default);
        assert!(matches(&spaces, &room(None, None, None, None)));
        assert!(!matches(&spaces, &room(None, None, None, Some("org.example.game"))));
    }

    #[test]
    fn pages_move_on_and_know_their_neighbours() {
        let items: Vec<u32> = (0..5).collect();
        assert_eq!(page(items.clone(), 0, 2), (vec![0, 1], Some(2), None));
        assert_eq!(page(items.clone(), 2, 2), (vec![2, 3], Some(4), Some(0)));
        assert_eq!(page(items.clone(), 4, 2), (vec![4], None, Some(2)));
        assert_eq!(page(items.clone(), 1, 2), (vec![1, 2], Some(3), Some(0)));
        assert_eq!(page(items.clone(), 0, usize::MAX), (items.clone(), None, None));
        assert_eq!(page(items.clone(), 0, 0), (vec![0], Some(1), None), "a page holds at least one room");
        assert_eq!(page(items.clone(), 9, 2), (vec![], None, Some(7)), "past the end: empty");
        assert_eq!(page(items, usize::MAX, 2).0, Vec::<u32>::new());
    }
}
