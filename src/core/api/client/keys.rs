//! End-to-end encryption keys: devices publish their identity keys and
//! one-time keys, and other devices look them up and claim one-time keys to
//! start encrypted sessions. Only this node's users for now: users of other
//! servers are answered in `failures` until device keys federate.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    api::client::keys::{claim_keys, get_key_changes, get_keys, upload_keys},
    encryption::DeviceKeys,
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, ServerName, UInt, UserId,
};
use serde_json::{json, Value};

use super::tokens::SyncToken;
use crate::core::{
    service::{accounts::Session, keys::Upload, rooms::RoomError, state::State},
    Error, Homeserver,
};

/// `POST /_matrix/client/v3/keys/upload`
pub(crate) async fn upload(
    hs: &Homeserver,
    session: Session,
    request: upload_keys::v3::Request,
) -> Result<upload_keys::v3::Response, Error> {
    if let Some(keys) = &request.device_keys {
        check_device_keys(&session, keys)?;
    }
    for (key_id, key) in request.one_time_keys.iter().chain(&request.fallback_keys) {
        key.deserialize().map_err(|err| Error::BadJson(format!("one-time key {key_id}: {err}")))?;
    }
    let upload = Upload {
        device_keys: request.device_keys,
        one_time_keys: request.one_time_keys,
        fallback_keys: request.fallback_keys,
    };
    hs.keys().upload(hs.user_data(), &session.user_id, &session.device_id, upload).await?;
    Ok(upload_keys::v3::Response::new(one_time_key_counts(hs, &session).await?))
}

/// Device keys must be the session's own device's, carry its ed25519 key and
/// be signed with it.
fn check_device_keys(session: &Session, keys: &Raw<DeviceKeys>) -> Result<(), Error> {
    let parsed = keys.deserialize().map_err(|err| Error::BadJson(format!("device_keys: {err}")))?;
    if parsed.user_id != session.user_id || parsed.device_id != session.device_id {
        return Err(Error::InvalidParam(format!(
            "device_keys are for {} {}, but this session is {} {}",
            parsed.user_id, parsed.device_id, session.user_id, session.device_id
        )));
    }
    let value: Value = keys.deserialize_as().map_err(|err| Error::BadJson(format!("device_keys: {err}")))?;
    let signing_key = format!("ed25519:{}", session.device_id);
    if !value["keys"][&signing_key].is_string() {
        return Err(Error::InvalidParam(format!("device_keys have no {signing_key} key")));
    }
    if !value["signatures"][session.user_id.as_str()][&signing_key].is_string() {
        return Err(Error::InvalidParam(format!("device_keys are not signed by {signing_key}")));
    }
    Ok(())
}

/// The device's one-time key counts; `signed_curve25519` always, as clients
/// read its absence as an old server.
pub(crate) async fn one_time_key_counts(
    hs: &Homeserver,
    session: &Session,
) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>, Error> {
    let mut counts = hs.keys().counts(&session.user_id, &session.device_id).await?;
    counts.entry(OneTimeKeyAlgorithm::SignedCurve25519).or_default();
    Ok(counts)
}

/// What `failures` says of a server whose users' keys were asked for.
fn not_federated(server: &ServerName) -> (String, Value) {
    let error = "this node does not fetch keys from other servers yet";
    (server.to_string(), json!({ "errcode": "M_UNRECOGNIZED", "error": error }))
}

/// `POST /_matrix/client/v3/keys/query`
pub(crate) async fn query(
    hs: &Homeserver,
    _: Session,
    request: get_keys::v3::Request,
) -> Result<get_keys::v3::Response, Error> {
    let mut response = get_keys::v3::Response::new();
    for (user, devices) in request.device_keys {
        if user.server_name() != hs.key().server_name() {
            // Federation hook: ask the user's server (`/federation/v1/user/keys/query`).
            response.failures.extend([not_federated(user.server_name())]);
            continue;
        }
        let keys = match devices.is_empty() {
            true => hs.keys().user_keys(&user).await?,
            false => {
                let mut keys = Vec::new();
                for device in devices {
                    if let Some(device_keys) = hs.keys().device_keys(&user, &device).await? {
                        keys.push((device, device_keys));
                    }
                }
                keys
            }
        };
        let mut named = BTreeMap::new();
        for (device, device_keys) in keys {
            let device_keys = with_display_name(hs, &user, &device, device_keys).await?;
            named.insert(device, device_keys);
        }
        response.device_keys.insert(user, named);
    }
    Ok(response)
}

/// The keys with the device's display name in `unsigned`, where the spec
/// puts it; the signed fields stay as uploaded.
async fn with_display_name(
    hs: &Homeserver,
    user: &UserId,
    device: &OwnedDeviceId,
    keys: Raw<DeviceKeys>,
) -> Result<Raw<DeviceKeys>, Error> {
    let Some(name) = hs.accounts().device(user, device).await?.and_then(|d| d.display_name) else { return Ok(keys) };
    let mut value: Value = keys.deserialize_as().map_err(Error::internal)?;
    if !value["unsigned"].is_object() {
        value["unsigned"] = json!({});
    }
    value["unsigned"]["device_display_name"] = name.into();
    Raw::new(&value).map(Raw::cast_unchecked).map_err(Error::internal)
}

/// `POST /_matrix/client/v3/keys/claim`
pub(crate) async fn claim(
    hs: &Homeserver,
    _: Session,
    request: claim_keys::v3::Request,
) -> Result<claim_keys::v3::Response, Error> {
    let mut claimed: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for (user, devices) in request.one_time_keys {
        if user.server_name() != hs.key().server_name() {
            // Federation hook: claim from the user's server (`/federation/v1/user/keys/claim`).
            failures.extend([not_federated(user.server_name())]);
            continue;
        }
        for (device, algorithm) in devices {
            if let Some((key_id, key)) = hs.keys().claim(&user, &device, &algorithm).await? {
                claimed.entry(user.clone()).or_default().entry(device).or_default().insert(key_id, key);
            }
        }
    }
    let mut response = claim_keys::v3::Response::new(claimed);
    response.failures = failures;
    Ok(response)
}

/// `GET /_matrix/client/v3/keys/changes`
pub(crate) async fn changes(
    hs: &Homeserver,
    session: Session,
    request: get_key_changes::v3::Request,
) -> Result<get_key_changes::v3::Response, Error> {
    let (from, to) = (SyncToken::parse(&request.from)?, SyncToken::parse(&request.to)?);
    let (changed, left) = device_list_changes(hs, &session.user_id, from, to).await?;
    Ok(get_key_changes::v3::Response::new(changed.into_iter().collect(), left.into_iter().collect()))
}

/// How the device lists `user`'s devices follow moved between two sync
/// positions: who to look at again (`changed`: users sharing a joined room
/// whose devices changed or who came to share one, and `user`'s own) and who
/// to forget (`left`: users who no longer share any).
pub(crate) async fn device_list_changes(
    hs: &Homeserver,
    user: &UserId,
    from: SyncToken,
    to: SyncToken,
) -> Result<(BTreeSet<OwnedUserId>, BTreeSet<OwnedUserId>), Error> {
    let mine = joined_rooms(hs, user).await?;
    let mut changed = BTreeSet::new();
    for other in hs.keys().changed(from.user, to.user).await? {
        if other == user || shares_room(hs, &mine, &other).await? {
            changed.insert(other);
        }
    }
    let mut lost = BTreeSet::new();
    for (room_id, membership) in hs.rooms().rooms_of(user).await?.iter() {
        // A room left before `from` brings no one into sight or out of it.
        if membership.membership != MembershipState::Join && membership.stream <= from.events {
            continue;
        }
        let room = match hs.rooms().room(room_id).await {
            Ok(room) => room,
            // An invite refused to a room this node never had: no members here.
            Err(RoomError::UnknownRoom(_)) => continue,
            Err(err) => return Err(err.into()),
        };
        if room.stream <= from.events {
            continue;
        }
        let before = super::sync::state_after_position(hs, room_id, from.events).await?;
        let now = hs.rooms().current_state(room_id).await?;
        // Most new events change no membership: then nothing more is read.
        let moved = now.iter().any(|(key, id)| key.0 == StateEventType::RoomMember && before.get(key) != Some(id));
        if !moved {
            continue;
        }
        let (before, now) = (joined_members(hs, &before).await?, joined_members(hs, &now).await?);
        // A side counts only while `user` is joined on it.
        let before = if before.contains(user) { before } else { BTreeSet::new() };
        let now = if membership.membership == MembershipState::Join { now } else { BTreeSet::new() };
        changed.extend(now.difference(&before).filter(|other| *other != user).cloned());
        lost.extend(before.difference(&now).filter(|other| *other != user).cloned());
    }
    let mut left = BTreeSet::new();
    for other in lost {
        if !shares_room(hs, &mine, &other).await? {
            left.insert(other);
        }
    }
    Ok((changed, left))
}

async fn joined_rooms(hs: &Homeserver, user: &UserId) -> Result<BTreeSet<OwnedRoomId>, Error> {
    let rooms = hs.rooms().rooms_of(user).await?;
    let joined = rooms.iter().filter(|(_, m)| m.membership == MembershipState::Join);
    Ok(joined.map(|(room, _)| room.clone()).collect())
}

/// Whether `other`, a user of any server, is joined to one of `rooms`.
async fn shares_room(hs: &Homeserver, rooms: &BTreeSet<OwnedRoomId>, other: &UserId) -> Result<bool, Error> {
    for room in rooms {
        if hs.rooms().membership(room, other).await? == Some(MembershipState::Join) {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn joined_members(hs: &Homeserver, state: &State) -> Result<BTreeSet<OwnedUserId>, Error> {
    let members = super::membership::members_in(hs, state).await?;
    let joined = members.into_iter().filter(|(_, content)| content.membership == MembershipState::Join);
    Ok(joined.filter_map(|(pdu, _)| UserId::parse(pdu.state_key.as_deref()?).ok()).collect())
}
