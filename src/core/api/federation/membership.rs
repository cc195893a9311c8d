//! Joining, leaving and inviting across servers: the resident side's
//! `make_join`/`send_join`, `make_leave`/`send_leave` and the invitee side's
//! `invite`, and the calls this node makes for its own users.

use ruma::{
    api::federation::membership::{
        create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_leave_event, RawStrippedState,
    },
    canonical_json::CanonicalJsonObject,
    events::{room::member::MembershipState, TimelineEventType},
    OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, value::RawValue, Value};

use crate::core::{
    pdu::{self, NewEvent, Pdu},
    router::Origin,
    service::federation::FederationError,
    service::rooms::{Outcome, RoomError},
    Error, Homeserver,
};

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub(crate) async fn make_join(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: prepare_join_event::v1::Request,
) -> Result<prepare_join_event::v1::Response, Error> {
    let version = hs.rooms().room(&request.room_id).await?.version;
    // A server that names no versions speaks only version 1, which glia does not.
    if !request.ver.contains(&version) {
        return Err(Error::IncompatibleRoomVersion(version));
    }
    let template = template_for(hs, &origin, &request.room_id, &request.user_id, MembershipState::Join).await?;
    let mut response = prepare_join_event::v1::Response::new(template);
    response.room_version = Some(version);
    Ok(response)
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub(crate) async fn make_leave(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: prepare_leave_event::v1::Request,
) -> Result<prepare_leave_event::v1::Response, Error> {
    let version = hs.rooms().room(&request.room_id).await?.version;
    let template = template_for(hs, &origin, &request.room_id, &request.user_id, MembershipState::Leave).await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), template))
}

/// A member event for a user of `origin`, built on this node's view of the room
/// and checked against its auth rules, without this node's signature.
async fn template_for(
    hs: &Homeserver,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: MembershipState,
) -> Result<Box<RawValue>, Error> {
    if user.server_name() != origin {
        return Err(Error::Forbidden(format!("{origin} cannot act for {user}")));
    }
    let event =
        NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": membership.as_str() }));
    let pdu = hs.rooms().prepare(room_id, user, &event).await?;
    serde_json::value::to_raw_value(&pdu::template(pdu.json)).map_err(Error::internal)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub(crate) async fn send_join(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: create_join_event::v2::Request,
) -> Result<create_join_event::v2::Response, Error> {
    let pdu =
        accept_member(hs, &origin, &request.room_id, &request.event_id, &request.pdu, MembershipState::Join).await?;
    let state = hs.rooms().state_at(&pdu.event_id).await?.ok_or_else(|| Error::internal("the join was not stored"))?;
    let mut from: Vec<OwnedEventId> = state.values().cloned().collect();
    from.push(pdu.event_id.clone());
    let chain = hs.rooms().auth_chain(&request.room_id, &from).await?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = federation_json(hs, state.values()).await?;
    room_state.auth_chain = federation_json(hs, chain.iter()).await?;
    let servers = hs.sender().servers_in(hs, &request.room_id).await?;
    let mut names: Vec<String> = vec![hs.key().server_name().to_string()];
    names.extend(servers.iter().map(|s| s.to_string()));
    room_state.servers_in_room = Some(names);
    Ok(create_join_event::v2::Response::new(room_state))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub(crate) async fn send_leave(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: create_leave_event::v2::Request,
) -> Result<create_leave_event::v2::Response, Error> {
    accept_member(hs, &origin, &request.room_id, &request.event_id, &request.pdu, MembershipState::Leave).await?;
    Ok(create_leave_event::v2::Response::new())
}

/// Takes a member event a user of `origin` signed from this node's template:
/// checked, stored and passed on to the room's other servers.
async fn accept_member(
    hs: &Homeserver,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    raw: &RawValue,
    membership: MembershipState,
) -> Result<Pdu, Error> {
    let version = hs.rooms().room(room_id).await?.version;
    let rules = pdu::rules(&version).map_err(RoomError::from)?;
    let json: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|err| Error::BadJson(format!("the event is not a PDU: {err}")))?;
    let pdu = Pdu::from_remote(json.clone(), &rules).map_err(RoomError::from)?;
    let member = crate::core::api::client::membership::member_content(&pdu.content);
    let is_member = pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
    if pdu.event_id != event_id || pdu.room_id != room_id || !is_member || member.membership != membership {
        return Err(Error::BadJson(format!("expected {event_id}, a {membership} of its own sender in {room_id}")));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::Forbidden(format!("{origin} cannot act for {}", pdu.sender)));
    }
    match hs.rooms().receive(room_id, json).await? {
        Outcome::Accepted | Outcome::Duplicate => {}
        Outcome::SoftFailed(reason) | Outcome::Rejected(reason) => return Err(Error::Forbidden(reason)),
    }
    hs.sender().queue_pdu(hs, room_id, &pdu.event_id, origin).await?;
    Ok(pdu)
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub(crate) async fn invite(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: create_invite::v2::Request,
) -> Result<create_invite::v2::Response, Error> {
    let rules =
        pdu::rules(&request.room_version).map_err(|_| Error::IncompatibleRoomVersion(request.room_version.clone()))?;
    let mut json: CanonicalJsonObject = serde_json::from_str(request.event.get())
        .map_err(|err| Error::BadJson(format!("the invite is not a PDU: {err}")))?;
    let pdu = Pdu::from_remote(json.clone(), &rules).map_err(RoomError::from)?;
    let member = crate::core::api::client::membership::member_content(&pdu.content);
    let invitee = pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok());
    let Some(invitee) = invitee.filter(|_| pdu.kind == TimelineEventType::RoomMember) else {
        return Err(Error::BadJson("the event is not a member event".into()));
    };
    if pdu.event_id != request.event_id
        || pdu.room_id != request.room_id
        || member.membership != MembershipState::Invite
    {
        return Err(Error::BadJson(format!("expected {}, an invite in {}", request.event_id, request.room_id)));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::Forbidden(format!("{origin} cannot act for {}", pdu.sender)));
    }
    if invitee.server_name() != hs.key().server_name() {
        return Err(Error::InvalidParam(format!("{invitee} is not a user of this node")));
    }
    if hs.accounts().user(&invitee).await?.is_none() {
        return Err(Error::NotFound(format!("no user {invitee}")));
    }
    pdu::countersign(hs.key(), &rules, &mut json).map_err(RoomError::from)?;
    // A node with a user in the room gets the invite with the room's other
    // events; one without keeps it aside, as its user's way in.
    if !resident(hs, &request.room_id).await? {
        let state = request.invite_room_state.iter().filter_map(stripped).collect();
        hs.rooms().remote_invite(request.room_version.clone(), json.clone(), state).await?;
    }
    let event = serde_json::value::to_raw_value(&json).map_err(Error::internal)?;
    Ok(create_invite::v2::Response::new(event))
}

/// A state event as clients see it in an invite: type, state key, sender and content.
fn stripped(state: &RawStrippedState) -> Option<ruma::serde::Raw<Value>> {
    #[allow(deprecated)]
    let json: Value = match state {
        RawStrippedState::Stripped(raw) => serde_json::from_str(raw.json().get()).ok()?,
        RawStrippedState::Pdu(raw) => serde_json::from_str(raw.get()).ok()?,
        _ => return None,
    };
    let stripped = json!({
        "type": json.get("type")?,
        "state_key": json.get("state_key")?,
        "sender": json.get("sender")?,
        "content": json.get("content")?,
    });
    ruma::serde::Raw::new(&stripped).ok()
}

/// The stored federation form of events, for another server.
async fn federation_json<'a>(
    hs: &Homeserver,
    ids: impl Iterator<Item = &'a OwnedEventId>,
) -> Result<Vec<Box<RawValue>>, Error> {
    let mut out = Vec::new();
    for id in ids {
        if let Some(event) = hs.rooms().event(id).await? {
            out.push(serde_json::value::to_raw_value(&event.pdu.federation_json()).map_err(Error::internal)?);
        }
    }
    Ok(out)
}

// What this node does for its own users.

/// Invites a user of another server: that server signs the invite too (and
/// may refuse it) before it enters the room here. When the invitee's node is
/// offline and a relay keeps the request in its mailbox, the invite enters the
/// room signed by this server alone, which is all the spec asks of an event
/// (Server-Server API, "Validating hashes and signatures on received
/// events"), and the invitee's node takes it (and countersigns its own copy)
/// when it comes back; a node or user that would have refused it is not heard.
pub(crate) async fn invite_remote(
    hs: &Homeserver,
    sender: &UserId,
    room_id: &RoomId,
    invitee: &UserId,
    content: Value,
) -> Result<OwnedEventId, Error> {
    let event = NewEvent::state(TimelineEventType::RoomMember, invitee.as_str(), content);
    let pdu = hs.rooms().prepare(room_id, sender, &event).await?;
    let version = hs.rooms().room(room_id).await?.version;
    let state = hs.rooms().current_state(room_id).await?;
    let ids = crate::core::api::client::sync::invite_state(&state, sender);
    let mut invite_state = Vec::new();
    for event in hs.rooms().events(&ids).await?.into_iter().flatten() {
        let raw = serde_json::value::to_raw_value(&event.pdu.federation_json()).map_err(Error::internal)?;
        invite_state.push(RawStrippedState::Pdu(raw));
    }
    let raw = serde_json::value::to_raw_value(&pdu.json).map_err(Error::internal)?;
    let request =
        create_invite::v2::Request::new(room_id.to_owned(), pdu.event_id.clone(), version.clone(), raw, invite_state);
    let json = match hs.federation().request(invitee.server_name(), request, true).await {
        Ok(signed) => serde_json::from_str(signed.event.get()).map_err(|err| {
            Error::Federation(FederationError::Invalid(format!(
                "{} sent back a broken invite: {err}",
                invitee.server_name()
            )))
        })?,
        Err(FederationError::Stored(_)) => pdu.json,
        Err(err) => return Err(err.into()),
    };
    match hs.rooms().receive(room_id, json).await? {
        Outcome::Accepted | Outcome::Duplicate => Ok(pdu.event_id),
        Outcome::SoftFailed(reason) | Outcome::Rejected(reason) => Err(Error::Forbidden(reason)),
    }
}

/// Joins a room through one of `servers` that is in it.
pub(crate) async fn join_remote(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
) -> Result<(), Error> {
    let mut last = Error::NotFound(format!("no server to join {room_id} through"));
    for server in servers.iter().filter(|s| **s != hs.key().server_name()) {
        match join_through(hs, user, room_id, server).await {
            Ok(()) => return Ok(()),
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn join_through(hs: &Homeserver, user: &UserId, room_id: &RoomId, server: &ServerName) -> Result<(), Error> {
    let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    request.ver = vec![RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];
    let made = hs.federation().request(server, request, false).await?;
    let version = made
        .room_version
        .ok_or_else(|| Error::Federation(FederationError::Invalid(format!("{server} named no room version"))))?;
    let rules = pdu::rules(&version).map_err(|_| Error::IncompatibleRoomVersion(version.clone()))?;
    let mut template: CanonicalJsonObject = serde_json::from_str(made.event.get()).map_err(|err| {
        Error::Federation(FederationError::Invalid(format!("{server} sent a broken join template: {err}")))
    })?;
    let profile = hs.accounts().user(user).await?;
    if let (Some(ruma::CanonicalJsonValue::Object(content)), Some(profile)) = (template.get_mut("content"), profile) {
        if let Some(name) = profile.displayname {
            content.insert("displayname".into(), name.into());
        }
        if let Some(url) = profile.avatar_url {
            content.insert("avatar_url".into(), url.into());
        }
    }
    let join = pdu::sign_template(hs.key(), &rules, template, now(hs)).map_err(RoomError::from)?;
    check_template(&join, room_id, user, MembershipState::Join)?;
    let raw = serde_json::value::to_raw_value(&join.json).map_err(Error::internal)?;
    let request = create_join_event::v2::Request::new(room_id.to_owned(), join.event_id.clone(), raw);
    let answer = hs.federation().request(server, request, false).await?;
    let parse = |raws: &[Box<RawValue>]| -> Vec<CanonicalJsonObject> {
        raws.iter().filter_map(|raw| serde_json::from_str(raw.get()).ok()).collect()
    };
    let state = answer.room_state;
    hs.rooms().join_remote(&version, join.json, parse(&state.state), parse(&state.auth_chain)).await?;
    Ok(())
}

/// Leaves (or refuses an invite to) a room this node does not have, through the
/// server that invited the user.
pub(crate) async fn leave_remote(hs: &Homeserver, user: &UserId, room_id: &RoomId) -> Result<(), Error> {
    let invite = hs
        .rooms()
        .remote_invite_of(user, room_id)
        .await?
        .ok_or_else(|| Error::Forbidden(format!("{user} is not in {room_id}")))?;
    let server = invite
        .inviter()
        .map(|s| s.server_name().to_owned())
        .ok_or_else(|| Error::internal("the stored invite has no sender"))?;
    let made = hs
        .federation()
        .request(&server, prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned()), false)
        .await?;
    let version = made.room_version.unwrap_or(invite.version);
    let rules = pdu::rules(&version).map_err(|_| Error::IncompatibleRoomVersion(version.clone()))?;
    let template: CanonicalJsonObject = serde_json::from_str(made.event.get()).map_err(|err| {
        Error::Federation(FederationError::Invalid(format!("{server} sent a broken leave template: {err}")))
    })?;
    let leave = pdu::sign_template(hs.key(), &rules, template, now(hs)).map_err(RoomError::from)?;
    check_template(&leave, room_id, user, MembershipState::Leave)?;
    let raw = serde_json::value::to_raw_value(&leave.json).map_err(Error::internal)?;
    let request = create_leave_event::v2::Request::new(room_id.to_owned(), leave.event_id.clone(), raw);
    hs.federation().request(&server, request, false).await?;
    hs.rooms().forget_remote_invite(user, &leave).await?;
    Ok(())
}

/// A template must be the member event asked for, not whatever the server chose.
fn check_template(pdu: &Pdu, room_id: &RoomId, user: &UserId, membership: MembershipState) -> Result<(), Error> {
    let content = crate::core::api::client::membership::member_content(&pdu.content);
    if pdu.room_id != room_id
        || pdu.sender != user
        || pdu.kind != TimelineEventType::RoomMember
        || pdu.state_key.as_deref() != Some(user.as_str())
        || content.membership != membership
    {
        return Err(Error::Federation(FederationError::Invalid(format!(
            "the {membership} template is not for {user} in {room_id}"
        ))));
    }
    Ok(())
}

fn now(hs: &Homeserver) -> ruma::MilliSecondsSinceUnixEpoch {
    ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(hs.clock().now_millis()))
}

/// Whether any user of this node is joined to the room, so it can act there
/// without asking another server.
pub(crate) async fn resident(hs: &Homeserver, room_id: &RoomId) -> Result<bool, Error> {
    let state = match hs.rooms().current_state(room_id).await {
        Ok(state) => state,
        Err(RoomError::UnknownRoom(_)) => return Ok(false),
        Err(err) => return Err(err.into()),
    };
    let servers = hs.rooms().joined_servers(&state).await?;
    Ok(servers.first().is_some_and(|first| first == hs.key().server_name()))
}
