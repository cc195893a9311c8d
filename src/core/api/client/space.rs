//! Spaces: the tree of rooms the `m.space.child` events of a space make,
//! walked depth first for one user. The rooms this node is not in are asked of
//! a server their child event names.

use std::collections::{HashMap, HashSet};

use ruma::{
    api::{
        client::space::{get_hierarchy, SpaceHierarchyRoomsChunk},
        federation::space::get_hierarchy as remote,
    },
    events::{room::member::MembershipState, space::child::HierarchySpaceChildEvent, StateEventType},
    room::{JoinRuleSummary, RoomSummary, RoomType},
    serde::Raw,
    EventId, OwnedRoomId, OwnedServerName, RoomId, ServerName, UInt, UserId,
};
use serde_json::json;

use super::{
    directory::summary,
    visibility::{membership_in, server_memberships},
};
use crate::core::{
    api::federation::membership::resident,
    service::{accounts::Session, rooms::RoomError, state::State},
    Error, Homeserver,
};

/// Rooms in a page when the client asks for no number, and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// How far below the space a walk goes at most: every level may cost a
/// request to another server per room, and every page walks again from the top.
const MAX_DEPTH: usize = 10;

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
pub(crate) async fn hierarchy(
    hs: &Homeserver,
    session: Session,
    request: get_hierarchy::v1::Request,
) -> Result<get_hierarchy::v1::Response, Error> {
    let options = Token { start: 0, max_depth: request.max_depth, suggested_only: request.suggested_only };
    let start = match request.from.as_deref() {
        None => 0,
        Some(from) => options.resumed_by(from)?,
    };
    let limit = match request.limit.map(u64::from) {
        Some(0) => return Err(Error::InvalidParam("limit must be greater than zero".into())),
        Some(limit) => usize::try_from(limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let max_depth = request.max_depth.map_or(MAX_DEPTH, |depth| usize::try_from(u64::from(depth)).unwrap_or(MAX_DEPTH));
    let max_depth = max_depth.min(MAX_DEPTH);

    let user = &session.user_id;
    let root_id = &request.room_id;
    // The spec answers 403 alike for a room that does not exist and one the
    // user may not see, so neither tells the other apart.
    let forbidden = || Error::Forbidden(format!("{user} may not see the space {root_id}"));
    let state = match hs.rooms().current_state(root_id).await {
        Ok(state) => state,
        Err(RoomError::UnknownRoom(_)) => return Err(forbidden()),
        Err(err) => return Err(err.into()),
    };
    let root = Room::local(hs, root_id, &state, request.suggested_only).await?;
    if !may_see(hs, Viewer::User(user), &root.summary, Some(&state)).await? {
        return Err(forbidden());
    }

    // Each page walks the tree again from the top, and skips the rooms of the
    // pages before it: the token is the place in that walk, and needs nothing
    // kept between requests.
    let mut walk = Walk::new(hs, user, request.suggested_only);
    let mut stack = Vec::new();
    let mut seen = HashSet::from([root_id.clone()]);
    let (mut current, mut index) = (Some((root, 0)), 0);
    let mut response = get_hierarchy::v1::Response::new();
    while let Some((room, depth)) = current {
        if response.rooms.len() == limit {
            response.next_batch = Some(Token { start: index, ..options }.to_string());
            break;
        }
        if depth < max_depth {
            let children = room.children.iter().rev();
            stack.extend(children.map(|(child, _)| (child.state_key.clone(), depth + 1, child.content.via.clone())));
        }
        if index >= start {
            let (summary, children_state) = room.into_parts();
            response.rooms.push(SpaceHierarchyRoomsChunk::new(summary, children_state));
        }
        index += 1;
        current = walk.next(&mut stack, &mut seen).await?;
    }
    Ok(response)
}

/// Where a page starts in the walk, with the options of the walk it goes on
/// with, which the spec does not let change between pages.
#[derive(Clone, Copy)]
struct Token {
    start: usize,
    max_depth: Option<UInt>,
    suggested_only: bool,
}

impl Token {
    /// Where the page the token `from` names starts, if the walk it was made
    /// for is this one.
    fn resumed_by(self, from: &str) -> Result<usize, Error> {
        let bad = || Error::InvalidParam(format!("not a hierarchy token: {from}"));
        let mut parts = from.split('_');
        let (Some(start), Some(depth), Some(suggested), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let start = start.parse().map_err(|_| bad())?;
        let max_depth = match depth {
            "" => None,
            depth => Some(depth.parse().map_err(|_| bad())?),
        };
        let suggested_only = match suggested {
            "0" => false,
            "1" => true,
            _ => return Err(bad()),
        };
        if max_depth != self.max_depth || suggested_only != self.suggested_only {
            return Err(Error::InvalidParam("max_depth and suggested_only cannot change between pages".into()));
        }
        Ok(start)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let depth = self.max_depth.map(|depth| depth.to_string()).unwrap_or_default();
        write!(f, "{}_{depth}_{}", self.start, u8::from(self.suggested_only))
    }
}

/// A room of a hierarchy: its summary, and its valid `m.space.child` events
/// (the suggested ones only, when only those are asked for) in the order the
/// spec gives a space's children.
pub(crate) struct Room {
    pub summary: RoomSummary,
    pub children: Vec<(HierarchySpaceChildEvent, Raw<HierarchySpaceChildEvent>)>,
}

impl Room {
    fn new(summary: RoomSummary, events: Vec<Raw<HierarchySpaceChildEvent>>, suggested_only: bool) -> Self {
        // A child event without servers to join through (cleared or redacted)
        // takes the room out of the space.
        let mut children: Vec<_> = events
            .into_iter()
            .filter_map(|raw| Some((raw.deserialize().ok()?, raw)))
            .filter(|(child, _): &(HierarchySpaceChildEvent, _)| {
                !child.content.via.is_empty() && (child.content.suggested || !suggested_only)
            })
            .collect();
        children.sort_by(|(a, _), (b, _)| a.cmp(b));
        Self { summary, children }
    }

    /// A room this node has, as `state` has it.
    pub(crate) async fn local(
        hs: &Homeserver,
        room_id: &RoomId,
        state: &State,
        suggested_only: bool,
    ) -> Result<Self, Error> {
        let ids: Vec<&EventId> =
            state.iter().filter(|((kind, _), _)| *kind == StateEventType::SpaceChild).map(|(_, id)| &**id).collect();
        let mut events = Vec::new();
        for event in hs.rooms().events(&ids).await?.into_iter().flatten() {
            let pdu = &event.pdu;
            let stripped = json!({
                "type": pdu.kind,
                "state_key": pdu.state_key,
                "content": pdu.content,
                "sender": pdu.sender,
                "origin_server_ts": pdu.origin_server_ts,
            });
            events.push(Raw::from_json(serde_json::value::to_raw_value(&stripped).map_err(Error::internal)?));
        }
        Ok(Self::new(summary(hs, room_id, state).await?, events, suggested_only))
    }

    /// The summary, and the child events as they were received: what the
    /// responses of both APIs show of a space.
    pub(crate) fn into_parts(self) -> (RoomSummary, Vec<Raw<HierarchySpaceChildEvent>>) {
        (self.summary, self.children.into_iter().map(|(_, raw)| raw).collect())
    }
}

/// One user's walk through a tree, with what other servers said of the rooms
/// this node is not in.
struct Walk<'a> {
    hs: &'a Homeserver,
    user: &'a UserId,
    suggested_only: bool,
    /// The summaries other servers gave of the children of the rooms asked
    /// for: a child that is no space is known from them without asking again.
    answered: HashMap<OwnedRoomId, RoomSummary>,
    /// Rooms another server said this node's users can neither peek nor join.
    inaccessible: HashSet<OwnedRoomId>,
}

impl<'a> Walk<'a> {
    fn new(hs: &'a Homeserver, user: &'a UserId, suggested_only: bool) -> Self {
        Self { hs, user, suggested_only, answered: HashMap::new(), inaccessible: HashSet::new() }
    }

    /// The next room on `stack` the user may see, with its depth. A room met
    /// again through another parent (the spec forbids loops, but they can
    /// happen) is passed over.
    async fn next(
        &mut self,
        stack: &mut Vec<(OwnedRoomId, usize, Vec<OwnedServerName>)>,
        seen: &mut HashSet<OwnedRoomId>,
    ) -> Result<Option<(Room, usize)>, Error> {
        while let Some((room_id, depth, via)) = stack.pop() {
            if !seen.insert(room_id.clone()) {
                continue;
            }
            if let Some(room) = self.room(&room_id, &via).await? {
                return Ok(Some((room, depth)));
            }
        }
        Ok(None)
    }

    /// The room, if the user may see it: from this node's state where it is in
    /// the room, otherwise from the first server of `via` that answers.
    async fn room(&mut self, room_id: &RoomId, via: &[OwnedServerName]) -> Result<Option<Room>, Error> {
        let viewer = Viewer::User(self.user);
        if resident(self.hs, room_id).await? {
            let state = self.hs.rooms().current_state(room_id).await?;
            let room = Room::local(self.hs, room_id, &state, self.suggested_only).await?;
            return Ok(may_see(self.hs, viewer, &room.summary, Some(&state)).await?.then_some(room));
        }
        if self.inaccessible.contains(room_id) {
            return Ok(None);
        }
        let room = match self.answered.remove(room_id) {
            Some(summary) if summary.room_type != Some(RoomType::Space) => Some(Room::new(summary, Vec::new(), false)),
            _ => self.ask(room_id, via).await,
        };
        match room {
            Some(room) if may_see(self.hs, viewer, &room.summary, None).await? => Ok(Some(room)),
            _ => Ok(None),
        }
    }

    /// The room as the first server of `via` that answers for it has it; a
    /// server that fails is only one fewer to ask.
    async fn ask(&mut self, room_id: &RoomId, via: &[OwnedServerName]) -> Option<Room> {
        let own = self.hs.key().server_name();
        for server in via.iter().filter(|server| **server != own) {
            let mut request = remote::v1::Request::new(room_id.to_owned());
            request.suggested_only = self.suggested_only;
            let Ok(answer) = self.hs.federation().request(server, request, false).await else { continue };
            if answer.room.summary.room_id != room_id {
                continue;
            }
            self.inaccessible.extend(answer.inaccessible_children);
            self.answered.extend(answer.children.into_iter().map(|child| (child.room_id.clone(), child)));
            return Some(Room::new(answer.room.summary, answer.room.children_state, self.suggested_only));
        }
        None
    }
}

/// Who a hierarchy is for: a user of this node, or another server asking for
/// its users.
#[derive(Clone, Copy)]
pub(crate) enum Viewer<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
}

/// Whether `viewer` may see the room `summary` describes, by the spec's rules:
/// those in it or invited to it, and anyone who may join it, knock on it or
/// read it, but no one banned from it. `state` is the room's current state
/// where this node has the room.
pub(crate) async fn may_see(
    hs: &Homeserver,
    viewer: Viewer<'_>,
    summary: &RoomSummary,
    state: Option<&State>,
) -> Result<bool, Error> {
    let memberships = match (viewer, state) {
        (Viewer::User(user), Some(state)) => membership_in(hs, state, user).await?.into_iter().collect(),
        // Of a room this node is not in, it knows at most an invite.
        (Viewer::User(user), None) => match hs.rooms().remote_invite_of(user, &summary.room_id).await? {
            Some(_) => vec![MembershipState::Invite],
            None => Vec::new(),
        },
        (Viewer::Server(server), Some(state)) => server_memberships(hs, state, server).await?,
        (Viewer::Server(_), None) => Vec::new(),
    };
    if matches!(viewer, Viewer::User(_)) && memberships.contains(&MembershipState::Ban) {
        return Ok(false);
    }
    if memberships.iter().any(|m| matches!(m, MembershipState::Join | MembershipState::Invite)) {
        return Ok(true);
    }
    match &summary.join_rule {
        JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_) => Ok(true),
        _ if summary.world_readable => Ok(true),
        JoinRuleSummary::Restricted(rule) => joined_any(hs, viewer, &rule.allowed_room_ids).await,
        _ => Ok(false),
    }
}

/// Whether the user, or a user of the server, is in one of `rooms`, as far as
/// this node knows: what lets them join a restricted room.
async fn joined_any(hs: &Homeserver, viewer: Viewer<'_>, rooms: &[OwnedRoomId]) -> Result<bool, Error> {
    for room_id in rooms {
        let joined = match viewer {
            Viewer::User(user) => hs.rooms().membership(room_id, user).await.map(|m| m == Some(MembershipState::Join)),
            Viewer::Server(server) => match hs.rooms().current_state(room_id).await {
                Ok(state) => hs.rooms().joined_servers(&state).await.map(|servers| servers.iter().any(|s| s == server)),
                Err(err) => Err(err),
            },
        };
        match joined {
            Ok(true) => return Ok(true),
            Ok(false) | Err(RoomError::UnknownRoom(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_walk_options_and_refuse_changed_ones() {
        let options = Token { start: 0, max_depth: Some(UInt::from(2u32)), suggested_only: true };
        let token = Token { start: 7, ..options }.to_string();
        assert_eq!(options.resumed_by(&token).unwrap(), 7);
        let unbounded = Token { start: 3, max_depth: None, suggested_only: false };
        assert_eq!(unbounded.resumed_by(&unbounded.to_string()).unwrap(), 3);
        for changed in [Token { max_depth: None, ..options }, Token { suggested_only: false, ..options }] {
            assert!(matches!(changed.resumed_by(&token), Err(Error::InvalidParam(_))));
        }
        for bad in ["", "7", "x_2_1", "7_2_2", "7_2_1_0", "7_y_1"] {
            assert!(matches!(options.resumed_by(bad), Err(Error::InvalidParam(_))), "{bad}");
        }
    }
}
