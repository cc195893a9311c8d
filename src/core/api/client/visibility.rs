//! Who may see what: events under the room's history visibility, for users
//! and for other servers, and the room state of rooms a user is in or has left.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    RoomId, ServerName, UserId,
};
use serde_json::Value;

use super::membership::member_content;
use crate::core::{
    pdu::Pdu,
    service::{events::StoredEvent, rooms::RoomError, state::State},
    Error, Homeserver,
};

/// Refuses users who are not in the room now.
pub(crate) async fn require_joined(hs: &Homeserver, room_id: &RoomId, user: &UserId) -> Result<(), Error> {
    match hs.rooms().membership(room_id, user).await {
        Ok(Some(MembershipState::Join)) => Ok(()),
        Ok(_) | Err(RoomError::UnknownRoom(_)) => Err(not_member(room_id, user)),
        Err(err) => Err(err.into()),
    }
}

fn not_member(room_id: &RoomId, user: &UserId) -> Error {
    Error::Forbidden(format!("{user} is not in the room {room_id}"))
}

/// The room's state as `user` may see it: the current state for a member, the
/// state when they left for a former member, and nothing for anyone else.
pub(crate) async fn visible_state(hs: &Homeserver, room_id: &RoomId, user: &UserId) -> Result<Arc<State>, Error> {
    let membership = hs.rooms().user_membership(user, room_id).await?.ok_or_else(|| not_member(room_id, user))?;
    match membership.membership {
        MembershipState::Join => Ok(hs.rooms().current_state(room_id).await?),
        MembershipState::Leave | MembershipState::Ban => {
            let left = hs.rooms().event(&membership.event_id).await?.ok_or_else(|| not_member(room_id, user))?;
            let before = hs.rooms().state_group(left.record.state_before).await?;
            if membership_in(hs, &before, user).await? != Some(MembershipState::Join) {
                return Err(not_member(room_id, user));
            }
            Ok(hs.rooms().state_group(left.record.state_after).await?)
        }
        _ => Err(not_member(room_id, user)),
    }
}

pub(crate) async fn membership_in(
    hs: &Homeserver,
    state: &State,
    user: &UserId,
) -> Result<Option<MembershipState>, Error> {
    let member = hs.rooms().state_event_in(state, &StateEventType::RoomMember, user.as_str()).await?;
    Ok(member.map(|e| member_content(&e.content).membership))
}

/// Whether `user` may see `pdu`, by the spec's history visibility rules: the
/// world sees `world_readable` history; members see what was sent while they
/// were joined (or invited, for `invited`); with `shared`, also what was sent
/// before they joined, once they have joined.
pub(crate) async fn may_see(hs: &Homeserver, user: &UserId, pdu: &Pdu) -> Result<bool, Error> {
    // The event that changes the user's own membership is theirs to see.
    if pdu.state_key.as_deref() == Some(user.as_str()) {
        return Ok(true);
    }
    let Some(event) = hs.rooms().event(&pdu.event_id).await? else { return Ok(false) };
    let state = hs.rooms().state_group(event.record.state_before).await?;
    let visibility = history_visibility(hs, &state).await?;
    if visibility == "world_readable" {
        return Ok(true);
    }
    match (membership_in(hs, &state, user).await?, visibility.as_str()) {
        (Some(MembershipState::Join), _) => return Ok(true),
        (Some(MembershipState::Invite), "invited") => return Ok(true),
        _ => {}
    }
    if visibility != "shared" {
        return Ok(false);
    }
    // Shared: visible if the user joined at some point after the event. They
    // did if they are joined now, or were joined right before leaving later.
    let Some(membership) = hs.rooms().user_membership(user, &pdu.room_id).await? else { return Ok(false) };
    match membership.membership {
        MembershipState::Join => Ok(true),
        MembershipState::Leave | MembershipState::Ban => {
            let Some(left) = hs.rooms().event(&membership.event_id).await? else { return Ok(false) };
            let after_pdu = left.record.stream > event.record.stream;
            let before = hs.rooms().state_group(left.record.state_before).await?;
            Ok(after_pdu && membership_in(hs, &before, user).await? == Some(MembershipState::Join))
        }
        _ => Ok(false),
    }
}

/// The history visibility in `state`: `shared` where none is set, as the spec says.
pub(crate) async fn history_visibility(hs: &Homeserver, state: &State) -> Result<String, Error> {
    let visibility = hs.rooms().state_event_in(state, &StateEventType::RoomHistoryVisibility, "").await?;
    Ok(visibility
        .and_then(|e| serde_json::from_str::<Value>(e.content.get()).ok())
        .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "shared".into()))
}

/// What one server may see of one room's history: the rules users see it by,
/// applied to the server's users together. An event is visible if one of them
/// was joined when it was sent (or invited, under `invited`), and under
/// `shared` and `world_readable` also once one of them is joined now. Answers
/// are kept per state group: a walk through history asks about many events
/// that share a few states.
pub(crate) struct ServerSight<'a> {
    hs: &'a Homeserver,
    server: &'a ServerName,
    room_id: &'a RoomId,
    joined_now: Option<bool>,
    by_state: HashMap<u64, bool>,
}

impl<'a> ServerSight<'a> {
    pub(crate) fn new(hs: &'a Homeserver, server: &'a ServerName, room_id: &'a RoomId) -> Self {
        Self { hs, server, room_id, joined_now: None, by_state: HashMap::new() }
    }

    pub(crate) fn server(&self) -> &ServerName {
        self.server
    }

    /// Whether one of the server's users is joined to the room now.
    async fn in_room(&mut self) -> Result<bool, Error> {
        if let Some(joined) = self.joined_now {
            return Ok(joined);
        }
        let state = self.hs.rooms().current_state(self.room_id).await?;
        let joined = server_memberships(self.hs, &state, self.server).await?.contains(&MembershipState::Join);
        self.joined_now = Some(joined);
        Ok(joined)
    }

    /// Whether the server may see `event`, an event of the room.
    pub(crate) async fn may_see(&mut self, event: &StoredEvent) -> Result<bool, Error> {
        // The events that change its own users' membership are the server's to see.
        let own_member = event.pdu.kind == TimelineEventType::RoomMember
            && event.pdu.state_key.as_deref().is_some_and(|key| is_user_of(key, self.server));
        if own_member {
            return Ok(true);
        }
        let group = event.record.state_before;
        if let Some(&visible) = self.by_state.get(&group) {
            return Ok(visible);
        }
        let state = self.hs.rooms().state_group(group).await?;
        let memberships = server_memberships(self.hs, &state, self.server).await?;
        let visible = memberships.contains(&MembershipState::Join)
            || match history_visibility(self.hs, &state).await?.as_str() {
                "invited" => memberships.contains(&MembershipState::Invite),
                "shared" | "world_readable" => self.in_room().await?,
                // `joined`, and values the spec does not know: members only.
                _ => false,
            };
        self.by_state.insert(group, visible);
        Ok(visible)
    }
}

/// The memberships of `server`'s users in `state`.
pub(crate) async fn server_memberships(
    hs: &Homeserver,
    state: &State,
    server: &ServerName,
) -> Result<Vec<MembershipState>, Error> {
    let mut memberships = Vec::new();
    for ((kind, key), id) in state.iter() {
        if *kind != StateEventType::RoomMember || !is_user_of(key, server) {
            continue;
        }
        if let Some(event) = hs.rooms().event(id).await? {
            memberships.push(member_content(&event.pdu.content).membership);
        }
    }
    Ok(memberships)
}

/// Whether a member event's state key is a user of `server`.
fn is_user_of(state_key: &str, server: &ServerName) -> bool {
    UserId::parse(state_key).is_ok_and(|user| user.server_name() == server)
}
