//! Joining, leaving, inviting, kicking and banning, and who is in a room. Every
//! change is a member event through the event engine, whose auth rules decide.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    OwnedEventId, OwnedServerName, RoomId, UserId,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{format, visibility::visible_state};
use crate::core::api::federation::membership as remote;
use crate::core::{
    pdu::{NewEvent, Pdu},
    service::{accounts::Session, state::State},
    Error, Homeserver,
};

/// Sends `sender`'s member event making `target`'s membership `membership`,
/// with the target's profile on joins and invites of local users.
pub(crate) async fn change(
    hs: &Homeserver,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    membership: MembershipState,
    reason: Option<String>,
) -> Result<OwnedEventId, Error> {
    change_with(hs, sender, room_id, target, membership, reason, Map::new()).await
}

pub(crate) async fn change_with(
    hs: &Homeserver,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    membership: MembershipState,
    reason: Option<String>,
    extra: Map<String, Value>,
) -> Result<OwnedEventId, Error> {
    let mut content = extra;
    content.insert("membership".into(), membership.as_str().into());
    if let Some(reason) = reason {
        content.insert("reason".into(), reason.into());
    }
    if matches!(membership, MembershipState::Join | MembershipState::Invite) {
        content.extend(profile_content(hs, target).await?);
    }
    if membership == MembershipState::Invite && target.server_name() != hs.key().server_name() {
        return remote::invite_remote(hs, sender, room_id, target, Value::Object(content)).await;
    }
    let event = NewEvent::state(TimelineEventType::RoomMember, target.as_str(), Value::Object(content));
    Ok(hs.rooms().send(room_id, sender, &event).await?.event_id.clone())
}

/// The profile keys of a member event: the user's display name and avatar,
/// when they are a user of this node and have them.
pub(crate) async fn profile_content(hs: &Homeserver, user: &UserId) -> Result<Map<String, Value>, Error> {
    let mut content = Map::new();
    if let Some(profile) = hs.accounts().user(user).await? {
        if let Some(name) = profile.displayname {
            content.insert("displayname".into(), name.into());
        }
        if let Some(url) = profile.avatar_url {
            content.insert("avatar_url".into(), url.into());
        }
    }
    Ok(content)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub(crate) async fn join_by_id(
    hs: &Homeserver,
    session: Session,
    request: join_room_by_id::v3::Request,
) -> Result<join_room_by_id::v3::Response, Error> {
    join(hs, &session.user_id, &request.room_id, request.reason, &[]).await?;
    Ok(join_room_by_id::v3::Response::new(request.room_id))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub(crate) async fn join_by_id_or_alias(
    hs: &Homeserver,
    session: Session,
    request: join_room_by_id_or_alias::v3::Request,
) -> Result<join_room_by_id_or_alias::v3::Response, Error> {
    let mut via = request.via;
    let room_id = match <&RoomId>::try_from(&*request.room_id_or_alias) {
        Ok(room_id) => room_id.to_owned(),
        Err(alias) => {
            let (room_id, servers) = super::room::resolve_alias(hs, alias).await?;
            via.extend(servers);
            room_id
        }
    };
    join(hs, &session.user_id, &room_id, request.reason, &via).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn join(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    reason: Option<String>,
    via: &[OwnedServerName],
) -> Result<(), Error> {
    let membership = hs.rooms().user_membership(user, room_id).await?.map(|m| m.membership);
    // Joining a room one is in succeeds without a new event, as the spec allows.
    if membership == Some(MembershipState::Join) {
        return Ok(());
    }
    // Where no user of this node is in the room, only a server that is can
    // place the join in it.
    if !remote::resident(hs, room_id).await? {
        let servers = servers_to_join(hs, user, room_id, via).await?;
        if !servers.is_empty() {
            return remote::join_remote(hs, user, room_id, &servers).await;
        }
    }
    change(hs, user, room_id, user, MembershipState::Join, reason).await?;
    Ok(())
}

/// The servers to ask to join a room through: those the client named, the
/// inviter's, then those of the room's members as this node last saw them.
async fn servers_to_join(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    via: &[OwnedServerName],
) -> Result<Vec<OwnedServerName>, Error> {
    let mut servers = via.to_vec();
    if let Some(invite) = hs.rooms().remote_invite_of(user, room_id).await? {
        let sender = invite.event.get("sender").and_then(|s| s.as_str()).and_then(|s| UserId::parse(s).ok());
        servers.extend(sender.map(|s| s.server_name().to_owned()));
    }
    if let Ok(state) = hs.rooms().current_state(room_id).await {
        for (pdu, content) in members_in(hs, &state).await? {
            if content.membership == MembershipState::Join {
                servers.extend(
                    UserId::parse(pdu.state_key.as_deref().unwrap_or_default())
                        .ok()
                        .map(|u| u.server_name().to_owned()),
                );
            }
        }
    }
    servers.extend(room_id.server_name().map(ToOwned::to_owned));
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| *s != hs.key().server_name() && seen.insert(s.clone()));
    Ok(servers)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub(crate) async fn leave(
    hs: &Homeserver,
    session: Session,
    request: leave_room::v3::Request,
) -> Result<leave_room::v3::Response, Error> {
    let user = &session.user_id;
    if hs.rooms().remote_invite_of(user, &request.room_id).await?.is_some() {
        remote::leave_remote(hs, user, &request.room_id).await?;
        return Ok(leave_room::v3::Response::new());
    }
    match hs.rooms().membership(&request.room_id, user).await? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            change(hs, user, &request.room_id, user, MembershipState::Leave, request.reason).await?;
            Ok(leave_room::v3::Response::new())
        }
        Some(MembershipState::Leave | MembershipState::Ban) => Ok(leave_room::v3::Response::new()),
        _ => Err(Error::Forbidden(format!("{user} is not in {}", request.room_id))),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub(crate) async fn forget(
    hs: &Homeserver,
    session: Session,
    request: forget_room::v3::Request,
) -> Result<forget_room::v3::Response, Error> {
    match hs.rooms().membership(&request.room_id, &session.user_id).await {
        Ok(Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)) => {
            Err(Error::Unknown("leave the room before forgetting it".into()))
        }
        Ok(_) | Err(crate::core::service::rooms::RoomError::UnknownRoom(_)) => {
            hs.rooms().forget(&session.user_id, &request.room_id).await?;
            Ok(forget_room::v3::Response::new())
        }
        Err(err) => Err(err.into()),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub(crate) async fn invite(
    hs: &Homeserver,
    session: Session,
    request: invite_user::v3::Request,
) -> Result<invite_user::v3::Response, Error> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = request.recipient else {
        return Err(Error::Unknown("third-party invites are not supported".into()));
    };
    let current = hs.rooms().membership(&request.room_id, &recipient.user_id).await?;
    match current {
        Some(MembershipState::Join) => Err(Error::Forbidden(format!("{} is already in the room", recipient.user_id))),
        Some(MembershipState::Ban) => Err(Error::Forbidden(format!("{} is banned from the room", recipient.user_id))),
        _ => {
            let (room, invitee) = (&request.room_id, &recipient.user_id);
            change(hs, &session.user_id, room, invitee, MembershipState::Invite, recipient.reason).await?;
            Ok(invite_user::v3::Response::new())
        }
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub(crate) async fn kick(
    hs: &Homeserver,
    session: Session,
    request: kick_user::v3::Request,
) -> Result<kick_user::v3::Response, Error> {
    match hs.rooms().membership(&request.room_id, &request.user_id).await? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            let (room, target) = (&request.room_id, &request.user_id);
            change(hs, &session.user_id, room, target, MembershipState::Leave, request.reason).await?;
            Ok(kick_user::v3::Response::new())
        }
        _ => Err(Error::Forbidden(format!("{} is not in the room", request.user_id))),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub(crate) async fn ban(
    hs: &Homeserver,
    session: Session,
    request: ban_user::v3::Request,
) -> Result<ban_user::v3::Response, Error> {
    let (room, target) = (&request.room_id, &request.user_id);
    change(hs, &session.user_id, room, target, MembershipState::Ban, request.reason).await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub(crate) async fn unban(
    hs: &Homeserver,
    session: Session,
    request: unban_user::v3::Request,
) -> Result<unban_user::v3::Response, Error> {
    if hs.rooms().membership(&request.room_id, &request.user_id).await? != Some(MembershipState::Ban) {
        return Err(Error::Forbidden(format!("{} is not banned", request.user_id)));
    }
    let (room, target) = (&request.room_id, &request.user_id);
    change(hs, &session.user_id, room, target, MembershipState::Leave, request.reason).await?;
    Ok(unban_user::v3::Response::new())
}

/// `GET /_matrix/client/v3/joined_rooms`
pub(crate) async fn joined(
    hs: &Homeserver,
    session: Session,
    _: joined_rooms::v3::Request,
) -> Result<joined_rooms::v3::Response, Error> {
    Ok(joined_rooms::v3::Response::new(hs.rooms().joined_rooms(&session.user_id).await?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub(crate) async fn members(
    hs: &Homeserver,
    session: Session,
    request: get_member_events::v3::Request,
) -> Result<get_member_events::v3::Response, Error> {
    let state = visible_state(hs, &request.room_id, &session.user_id).await?;
    let mut chunk = Vec::new();
    for (pdu, content) in members_in(hs, &state).await? {
        if request.membership.as_ref().is_some_and(|m| *m != content.membership)
            || request.not_membership.as_ref().is_some_and(|m| *m == content.membership)
        {
            continue;
        }
        chunk.push(format::raw_event(hs, &pdu, Some(&session)).await?);
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub(crate) async fn joined_members(
    hs: &Homeserver,
    session: Session,
    request: joined_members::v3::Request,
) -> Result<joined_members::v3::Response, Error> {
    let state = visible_state(hs, &request.room_id, &session.user_id).await?;
    let mut joined = BTreeMap::new();
    for (pdu, content) in members_in(hs, &state).await? {
        if content.membership != MembershipState::Join {
            continue;
        }
        let Some(Ok(user)) = pdu.state_key.as_deref().map(UserId::parse) else { continue };
        let member = json!({ "display_name": content.displayname, "avatar_url": content.avatar_url });
        joined.insert(user, serde_json::from_value(member).map_err(Error::internal)?);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// The member events of `state`, with their contents.
pub(crate) async fn members_in(hs: &Homeserver, state: &State) -> Result<Vec<(Arc<Pdu>, MemberContent)>, Error> {
    let ids: Vec<_> =
        state.iter().filter(|((kind, _), _)| *kind == StateEventType::RoomMember).map(|(_, id)| &**id).collect();
    let events = hs.rooms().events(&ids).await?;
    Ok(events.into_iter().flatten().map(|event| (event.pdu.clone(), member_content(&event.pdu.content))).collect())
}

#[derive(Deserialize)]
pub(crate) struct MemberContent {
    pub membership: MembershipState,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// A member event's content; one the auth rules accepted always parses, but a
/// redacted one may lack the profile.
pub(crate) fn member_content(content: &serde_json::value::RawValue) -> MemberContent {
    serde_json::from_str(content.get()).unwrap_or(MemberContent {
        membership: MembershipState::Leave,
        displayname: None,
        avatar_url: None,
    })
}
