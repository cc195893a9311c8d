//! Who may see what: events under the room's history visibility, and the room
//! state of rooms a user is in or has left.

use std::sync::Arc;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    RoomId, UserId,
};
use serde_json::Value;

use super::membership::member_content;
use crate::core::{
    pdu::Pdu,
    service::{rooms::RoomError, state::State},
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

async fn membership_in(hs: &Homeserver, state: &State, user: &UserId) -> Result<Option<MembershipState>, Error> {
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
    let visibility = hs.rooms().state_event_in(&state, &StateEventType::RoomHistoryVisibility, "").await?;
    let visibility = visibility
        .and_then(|e| serde_json::from_str::<Value>(e.content.get()).ok())
        .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "shared".into());
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
