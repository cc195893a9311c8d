//! Creating rooms, reading single events, and room aliases.

use std::sync::Arc;

use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        room::{aliases, create_room, get_room_event, Visibility},
    },
    events::{room::member::MembershipState, TimelineEventType},
    EventId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    format, membership,
    visibility::{self, may_see},
};
use crate::core::{
    pdu::{self, NewEvent, DEFAULT_ROOM_VERSION},
    service::{
        accounts::Session,
        aliases::Alias,
        events::StoredEvent,
        rooms::{CreateRoom, Preset},
    },
    Error, Homeserver,
};

/// `POST /_matrix/client/v3/createRoom`
pub(crate) async fn create(
    hs: &Homeserver,
    session: Session,
    request: create_room::v3::Request,
) -> Result<create_room::v3::Response, Error> {
    let user = &session.user_id;
    let version = request.room_version.clone().unwrap_or(DEFAULT_ROOM_VERSION);
    let rules = pdu::rules(&version).map_err(|err| Error::UnsupportedRoomVersion(err.to_string()))?;
    let preset = match &request.preset {
        Some(create_room::v3::RoomPreset::PublicChat) => Preset::PublicChat,
        Some(create_room::v3::RoomPreset::TrustedPrivateChat) => Preset::TrustedPrivateChat,
        Some(create_room::v3::RoomPreset::PrivateChat) => Preset::PrivateChat,
        None if request.visibility == Visibility::Public => Preset::PublicChat,
        _ => Preset::PrivateChat,
    };
    let object = |raw: Option<&str>, what: &str| -> Result<Map<String, Value>, Error> {
        match raw.map(serde_json::from_str::<Value>) {
            None => Ok(Map::new()),
            Some(Ok(Value::Object(map))) => Ok(map),
            _ => Err(Error::BadJson(format!("{what} must be a JSON object"))),
        }
    };
    let creation_content = object(request.creation_content.as_ref().map(|r| r.json().get()), "creation_content")?;
    let mut power_levels_override =
        object(request.power_level_content_override.as_ref().map(|r| r.json().get()), "power_level_content_override")?;
    // The trusted preset makes every invitee an admin like the creator.
    if preset == Preset::TrustedPrivateChat && !power_levels_override.contains_key("users") {
        let mut users = Map::new();
        if !rules.authorization.explicitly_privilege_room_creators {
            users.insert(user.to_string(), 100.into());
        }
        for invitee in &request.invite {
            users.insert(invitee.to_string(), 100.into());
        }
        power_levels_override.insert("users".into(), Value::Object(users));
    }

    let alias = match &request.room_alias_name {
        Some(name) => {
            let alias = ruma::RoomAliasId::parse(format!("#{name}:{}", hs.key().server_name()))
                .map_err(|err| Error::InvalidParam(format!("room_alias_name: {err}")))?;
            if hs.aliases().get(&alias).await?.is_some() {
                return Err(Error::RoomInUse(alias.to_string()));
            }
            Some(alias)
        }
        None => None,
    };
    let mut initial_state = Vec::new();
    if let Some(alias) = &alias {
        let content = json!({ "alias": alias });
        initial_state.push(NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", content));
    }
    for raw in &request.initial_state {
        let event: Value = serde_json::from_str(raw.json().get()).map_err(|err| Error::BadJson(err.to_string()))?;
        let kind = event["type"].as_str().ok_or_else(|| Error::BadJson("initial_state: event without type".into()))?;
        let state_key = event.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push(NewEvent::state(kind.into(), state_key, content));
    }
    let options = CreateRoom {
        version: Some(version),
        preset,
        name: request.name.clone(),
        topic: request.topic.clone(),
        creation_content,
        power_levels_override,
        initial_state,
        creator_profile: membership::profile_content(hs, user).await?,
    };
    let room_id = hs.rooms().create_room(user, options).await?;
    if let Some(alias) = alias {
        hs.aliases().create(&alias, &Alias { room_id: room_id.clone(), creator: user.clone() }).await?;
    }
    if request.visibility == Visibility::Public {
        hs.directory().set_published(&room_id, true).await?;
    }
    for invitee in &request.invite {
        let mut extra = Map::new();
        if request.is_direct {
            extra.insert("is_direct".into(), true.into());
        }
        membership::change_with(hs, user, &room_id, invitee, MembershipState::Invite, None, extra).await?;
    }
    Ok(create_room::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub(crate) async fn event(
    hs: &Homeserver,
    session: Session,
    request: get_room_event::v3::Request,
) -> Result<get_room_event::v3::Response, Error> {
    let event = visible_event(hs, &session.user_id, &request.room_id, &request.event_id).await?;
    Ok(get_room_event::v3::Response::new(format::raw_event(hs, &event.pdu, Some(&session)).await?))
}

/// The event, if it is in the room, accepted and `user` may see it: the
/// same 404 otherwise, so that nobody learns of events they may not see.
pub(crate) async fn visible_event(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Arc<StoredEvent>, Error> {
    let not_found = || Error::NotFound(format!("no event {event_id} in {room_id}"));
    let event = hs.rooms().event(event_id).await?.ok_or_else(not_found)?;
    let hidden = event.record.rejected.is_some() || event.record.soft_failed.is_some();
    if event.pdu.room_id != room_id || hidden || !may_see(hs, user, &event.pdu).await? {
        return Err(not_found());
    }
    Ok(event)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub(crate) async fn room_aliases(
    hs: &Homeserver,
    session: Session,
    request: aliases::v3::Request,
) -> Result<aliases::v3::Response, Error> {
    visibility::require_joined(hs, &request.room_id, &session.user_id).await?;
    Ok(aliases::v3::Response::new(hs.aliases().of_room(&request.room_id).await?))
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub(crate) async fn create_alias(
    hs: &Homeserver,
    session: Session,
    request: create_alias::v3::Request,
) -> Result<create_alias::v3::Response, Error> {
    if request.room_alias.server_name() != hs.key().server_name() {
        return Err(Error::InvalidParam("aliases of other servers cannot be made here".into()));
    }
    hs.rooms().room(&request.room_id).await?;
    visibility::require_joined(hs, &request.room_id, &session.user_id).await?;
    let alias = Alias { room_id: request.room_id, creator: session.user_id };
    if !hs.aliases().create(&request.room_alias, &alias).await? {
        return Err(Error::AliasInUse(request.room_alias.to_string()));
    }
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub(crate) async fn get_alias(
    hs: &Homeserver,
    _: (),
    request: get_alias::v3::Request,
) -> Result<get_alias::v3::Response, Error> {
    let (room_id, servers) = resolve_alias(hs, &request.room_alias).await?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// The room an alias names, and the servers to join it through: for a local
/// alias those of its joined members, this node first; for another server's,
/// what that server answers.
pub(crate) async fn resolve_alias(
    hs: &Homeserver,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), Error> {
    if alias.server_name() != hs.key().server_name() {
        let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
        let answer = hs.federation().request(alias.server_name(), request, false).await?;
        return Ok((answer.room_id, answer.servers));
    }
    let not_found = || Error::NotFound(format!("no room has the alias {alias}"));
    let room_id = hs.aliases().get(alias).await?.ok_or_else(not_found)?.room_id;
    let state = hs.rooms().current_state(&room_id).await?;
    Ok((room_id, hs.rooms().joined_servers(&state).await?))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub(crate) async fn delete_alias(
    hs: &Homeserver,
    session: Session,
    request: delete_alias::v3::Request,
) -> Result<delete_alias::v3::Response, Error> {
    let alias = hs.aliases().get(&request.room_alias).await?;
    let alias = alias.ok_or_else(|| Error::NotFound(format!("no room has the alias {}", request.room_alias)))?;
    // The alias's creator may remove it, and so may whoever may change the
    // room's canonical alias.
    if alias.creator != session.user_id {
        let event = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({}));
        if !hs.rooms().may_send(&alias.room_id, &session.user_id, &event).await? {
            return Err(Error::Forbidden("only the alias's creator or a room moderator may remove it".into()));
        }
    }
    hs.aliases().delete(&request.room_alias).await?;
    Ok(delete_alias::v3::Response::new())
}
