//! End-to-end encryption keys: devices publish their identity keys and
//! one-time keys, users their cross-signing keys, and other devices look them
//! up (asking other users' servers over federation) and claim one-time keys to
//! start encrypted sessions. Changes reach the servers of everyone sharing a
//! room with the user as `m.device_list_update` and `m.signing_key_update`
//! EDUs, queued durably.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    api::{
        client::{
            keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
            uiaa::AuthType,
        },
        federation::keys::{claim_keys as federation_claim, get_keys as federation_query},
    },
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedRoomId, OwnedServerName, OwnedUserId,
    ServerName, UInt, UserId,
};
use serde_json::{json, value::RawValue, Value};

use super::tokens::SyncToken;
use crate::core::{
    api::{
        answer::{Answered, JsonAnswer},
        federation::transactions::servers_sharing_rooms_with,
    },
    service::{
        accounts::Session,
        keys::{Change, CrossSigning, Signable, Upload},
        rooms::RoomError,
        state::State,
    },
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
    let device_keys = upload.device_keys.clone();
    let change = hs.keys().upload(hs.user_data(), &session.user_id, &session.device_id, upload).await?;
    if let Some(change) = change {
        announce_device(hs, &session.user_id, &session.device_id, change, device_keys.as_ref()).await?;
    }
    let available = hs.keys().available(&session.user_id, &session.device_id).await?;
    Ok(upload_keys::v3::Response::new(client_counts(available.counts)))
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

/// One-time key counts as clients get them: with `signed_curve25519` always,
/// as clients read its absence as an old server.
pub(crate) fn client_counts(mut counts: BTreeMap<OneTimeKeyAlgorithm, UInt>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts.entry(OneTimeKeyAlgorithm::SignedCurve25519).or_default();
    counts
}

/// Tells the servers sharing a room with this node's `user` that one of their
/// devices changed: its keys, or, without keys, that it is gone.
pub(crate) async fn announce_device(
    hs: &Homeserver,
    user: &UserId,
    device: &DeviceId,
    change: Change,
    keys: Option<&Raw<DeviceKeys>>,
) -> Result<(), Error> {
    let mut content = json!({
        "user_id": user,
        "device_id": device,
        "stream_id": change.stream,
        "prev_id": change.prev.into_iter().collect::<Vec<_>>(),
    });
    match keys {
        Some(keys) => {
            content["keys"] = serde_json::from_str(keys.json().get()).map_err(Error::internal)?;
            let name = hs.accounts().device(user, device).await?.and_then(|d| d.display_name);
            if let Some(name) = name {
                content["device_display_name"] = name.into();
            }
        }
        None => content["deleted"] = true.into(),
    }
    announce(hs, user, json!({ "edu_type": "m.device_list_update", "content": content })).await
}

/// Tells the servers sharing a room with this node's `user` of their public
/// cross-signing keys (the user-signing key stays on this node).
async fn announce_signing_keys(hs: &Homeserver, user: &UserId) -> Result<(), Error> {
    let keys = hs.keys().cross_signing(user).await?;
    let content = json!({ "user_id": user, "master_key": keys.master, "self_signing_key": keys.self_signing });
    announce(hs, user, json!({ "edu_type": "m.signing_key_update", "content": content })).await
}

async fn announce(hs: &Homeserver, user: &UserId, edu: Value) -> Result<(), Error> {
    let servers = servers_sharing_rooms_with(hs, user).await?;
    if !servers.is_empty() {
        hs.sender().queue_durable_edu(hs, &servers, &edu).await?;
    }
    Ok(())
}

/// What `failures` says of a server that did not answer.
fn unreachable(server: &ServerName, err: impl std::fmt::Display) -> (String, Value) {
    (server.to_string(), json!({ "errcode": "M_UNKNOWN", "error": format!("{server} did not answer: {err}") }))
}

/// Groups `requested` by server: this node's users first, as `None`.
fn by_server<T>(
    hs: &Homeserver,
    requested: BTreeMap<OwnedUserId, T>,
) -> BTreeMap<Option<OwnedServerName>, BTreeMap<OwnedUserId, T>> {
    let mut servers: BTreeMap<Option<OwnedServerName>, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (user, value) in requested {
        let server = (user.server_name() != hs.key().server_name()).then(|| user.server_name().to_owned());
        servers.entry(server).or_default().insert(user, value);
    }
    servers
}

/// The keys of this node's users, as `/keys/query` over either API answers.
#[derive(Default)]
pub(crate) struct LocalKeys {
    pub(crate) device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub(crate) master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub(crate) self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub(crate) user_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
}

/// The keys of this node's `users` (all their devices when none are named);
/// `requester`'s own user-signing key too, when asked for.
pub(crate) async fn local_keys(
    hs: &Homeserver,
    users: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    requester: Option<&UserId>,
) -> Result<LocalKeys, Error> {
    let mut found = LocalKeys::default();
    for (user, devices) in users {
        if user.server_name() != hs.key().server_name() {
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
        let CrossSigning { master, self_signing, user_signing } = hs.keys().cross_signing(&user).await?;
        found.master_keys.extend(master.map(|key| (user.clone(), key)));
        found.self_signing_keys.extend(self_signing.map(|key| (user.clone(), key)));
        if requester == Some(&*user) {
            found.user_signing_keys.extend(user_signing.map(|key| (user.clone(), key)));
        }
        found.device_keys.insert(user, named);
    }
    Ok(found)
}

/// `POST /_matrix/client/v3/keys/query`
pub(crate) async fn query(
    hs: &Homeserver,
    session: Session,
    request: get_keys::v3::Request,
) -> Result<get_keys::v3::Response, Error> {
    let mut response = get_keys::v3::Response::new();
    let mut remote = Vec::new();
    for (server, users) in by_server(hs, request.device_keys) {
        match server {
            None => {
                let local = local_keys(hs, users, Some(&session.user_id)).await?;
                response.device_keys.extend(local.device_keys);
                response.master_keys.extend(local.master_keys);
                response.self_signing_keys.extend(local.self_signing_keys);
                response.user_signing_keys.extend(local.user_signing_keys);
            }
            Some(server) => remote.push(async move {
                let answer = hs.federation().request(&server, federation_query::v1::Request::new(users), false).await;
                (server, answer)
            }),
        }
    }
    for (server, answer) in futures_util::future::join_all(remote).await {
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                response.failures.extend([unreachable(&server, err)]);
                continue;
            }
        };
        // A server speaks for its own users only.
        let own = |user: &OwnedUserId| user.server_name() == server;
        response.device_keys.extend(answer.device_keys.into_iter().filter(|(user, _)| own(user)));
        response.master_keys.extend(answer.master_keys.into_iter().filter(|(user, _)| own(user)));
        response.self_signing_keys.extend(answer.self_signing_keys.into_iter().filter(|(user, _)| own(user)));
    }
    // What the requester signed of others' master keys, which only they see.
    for (user, key) in response.master_keys.iter_mut() {
        if *user != session.user_id {
            *key = with_kept_signatures(hs, &session.user_id, user, key).await?;
        }
    }
    Ok(response)
}

async fn with_kept_signatures(
    hs: &Homeserver,
    signer: &UserId,
    user: &UserId,
    key: &Raw<CrossSigningKey>,
) -> Result<Raw<CrossSigningKey>, Error> {
    let kept = hs.keys().kept_signatures(signer, user).await?;
    if kept.is_empty() {
        return Ok(key.clone());
    }
    let mut value: Value = key.deserialize_as().map_err(Error::internal)?;
    let public_keys: Vec<String> = value["keys"].as_object().map(|k| k.keys().cloned().collect()).unwrap_or_default();
    for (signed, signatures) in kept {
        if !public_keys.iter().any(|id| id.split_once(':').map(|(_, name)| name) == Some(&*signed)) {
            continue;
        }
        let signatures: Value = serde_json::from_str(signatures.get()).map_err(Error::internal)?;
        merge_signatures(&mut value, signer, &signatures);
    }
    Raw::new(&value).map(Raw::cast_unchecked).map_err(Error::internal)
}

/// Adds `signatures` (key ID → signature) to `signer`'s in `value`.
fn merge_signatures(value: &mut Value, signer: &UserId, signatures: &Value) {
    if !value["signatures"].is_object() {
        value["signatures"] = json!({});
    }
    if !value["signatures"][signer.as_str()].is_object() {
        value["signatures"][signer.as_str()] = json!({});
    }
    if let (Some(into), Some(from)) = (value["signatures"][signer.as_str()].as_object_mut(), signatures.as_object()) {
        into.extend(from.iter().map(|(id, signature)| (id.clone(), signature.clone())));
    }
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

type Claimed = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>>>;

/// Claims a one-time key of each named device of this node's users.
pub(crate) async fn claim_local(
    hs: &Homeserver,
    claims: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> Result<Claimed, Error> {
    let mut claimed: Claimed = BTreeMap::new();
    for (user, devices) in claims {
        if user.server_name() != hs.key().server_name() {
            continue;
        }
        for (device, algorithm) in devices {
            if let Some((key_id, key)) = hs.keys().claim(&user, &device, &algorithm).await? {
                claimed.entry(user.clone()).or_default().entry(device).or_default().insert(key_id, key);
            }
        }
    }
    Ok(claimed)
}

/// `POST /_matrix/client/v3/keys/claim`
pub(crate) async fn claim(
    hs: &Homeserver,
    _: Session,
    Answered(request): Answered<claim_keys::v3::Request>,
) -> Result<JsonAnswer, Error> {
    let mut claimed = Claimed::new();
    let mut failures = BTreeMap::new();
    let mut remote = Vec::new();
    for (server, claims) in by_server(hs, request.one_time_keys) {
        match server {
            None => claimed.extend(claim_local(hs, claims).await?),
            Some(server) => remote.push(async move {
                let answer = hs.federation().request(&server, federation_claim::v1::Request::new(claims), false).await;
                (server, answer)
            }),
        }
    }
    for (server, answer) in futures_util::future::join_all(remote).await {
        match answer {
            Ok(answer) => {
                claimed.extend(answer.one_time_keys.into_iter().filter(|(user, _)| user.server_name() == server))
            }
            Err(err) => failures.extend([unreachable(&server, err)]),
        }
    }
    // `failures` always, empty or not: the spec lets an empty one be left out
    // (as ruma's type does), but Hydrogen 0.3.1 reads it without looking.
    Ok(JsonAnswer(json!({ "failures": failures, "one_time_keys": claimed })))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
pub(crate) async fn upload_signing_keys(
    hs: &Homeserver,
    session: Session,
    request: upload_signing_keys::v3::Request,
) -> Result<upload_signing_keys::v3::Response, Error> {
    let user = &session.user_id;
    let stored = hs.keys().cross_signing(user).await?;
    let given = CrossSigning {
        master: request.master_key,
        self_signing: request.self_signing_key,
        user_signing: request.user_signing_key,
    };
    // The spec asks for no authentication to set the first keys, or to send
    // the same keys again (a retry after a lost response).
    let same = |given: &Option<Raw<CrossSigningKey>>, stored: &Option<Raw<CrossSigningKey>>| match (given, stored) {
        (None, _) => true,
        (Some(given), Some(stored)) => same_json(given.json(), stored.json()),
        (Some(_), None) => false,
    };
    let first = stored.master.is_none();
    let repeated = stored.master.is_some()
        && same(&given.master, &stored.master)
        && same(&given.self_signing, &stored.self_signing)
        && same(&given.user_signing, &stored.user_signing);
    if repeated {
        return Ok(upload_signing_keys::v3::Response::new());
    }
    if !first {
        hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Password], Some(&session), hs).await?;
    }
    let master = match (&given.master, &stored.master) {
        (Some(master), _) => check_cross_signing_key(user, master, "master", None)?,
        (None, Some(master)) => master.deserialize().map_err(Error::internal)?,
        (None, None) if given.self_signing.is_none() && given.user_signing.is_none() => {
            return Ok(upload_signing_keys::v3::Response::new())
        }
        (None, None) => return Err(Error::InvalidParam("upload a master key first".into())),
    };
    let master_id = master.keys.keys().next().ok_or_else(|| Error::InvalidParam("the master key has no key".into()))?;
    for (key, usage) in [(&given.self_signing, "self_signing"), (&given.user_signing, "user_signing")] {
        if let Some(key) = key {
            check_cross_signing_key(user, key, usage, Some(master_id.as_str()))?;
        }
    }
    hs.keys().upload_cross_signing(hs.user_data(), user, given).await?;
    announce_signing_keys(hs, user).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

fn same_json(a: &RawValue, b: &RawValue) -> bool {
    serde_json::from_str::<Value>(a.get()).ok() == serde_json::from_str::<Value>(b.get()).ok()
}

/// A cross-signing key must be the user's, for `usage`, with one key, and
/// signed by the master key `signed_by` names (if any).
fn check_cross_signing_key(
    user: &UserId,
    key: &Raw<CrossSigningKey>,
    usage: &str,
    signed_by: Option<&str>,
) -> Result<CrossSigningKey, Error> {
    let parsed = key.deserialize().map_err(|err| Error::BadJson(format!("{usage} key: {err}")))?;
    if parsed.user_id != user {
        return Err(Error::InvalidParam(format!("the {usage} key is for {}, not {user}", parsed.user_id)));
    }
    if !parsed.usage.iter().any(|u| u.as_str() == usage) {
        return Err(Error::InvalidParam(format!("the {usage} key does not say it is for {usage}")));
    }
    if parsed.keys.len() != 1 {
        return Err(Error::InvalidParam(format!("the {usage} key must hold exactly one key")));
    }
    if let Some(master) = signed_by {
        let value: Value = key.deserialize_as().map_err(Error::internal)?;
        if !value["signatures"][user.as_str()][master].is_string() {
            return Err(Error::InvalidParam(format!("the {usage} key is not signed by the master key {master}")));
        }
    }
    Ok(parsed)
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub(crate) async fn upload_signatures(
    hs: &Homeserver,
    session: Session,
    request: upload_signatures::v3::Request,
) -> Result<upload_signatures::v3::Response, Error> {
    let signer = &session.user_id;
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in request.signed_keys {
        for (key, signed) in keys.iter() {
            if let Err(reason) = add_signatures(hs, signer, &user, key, signed).await? {
                let failure = json!({ "errcode": "M_INVALID_SIGNATURE", "error": reason });
                let failure = serde_json::from_value(failure).map_err(Error::internal)?;
                response.failures.entry(user.clone()).or_default().insert(key.to_owned(), failure);
            }
        }
    }
    Ok(response)
}

/// Stores `signer`'s new signatures of `user`'s `key`; the inner error says
/// why they were refused.
async fn add_signatures(
    hs: &Homeserver,
    signer: &UserId,
    user: &UserId,
    key: &str,
    signed: &RawValue,
) -> Result<Result<(), String>, Error> {
    let Ok(mut signed) = serde_json::from_str::<Value>(signed.get()) else { return Ok(Err("not JSON".into())) };
    let signatures = signed["signatures"][signer.as_str()].take();
    if !signatures.as_object().is_some_and(|s| !s.is_empty() && s.values().all(Value::is_string)) {
        return Ok(Err(format!("no signatures of {signer}")));
    }
    if user != signer {
        // Another user's master key, signed with the signer's user-signing key.
        let signatures = serde_json::value::to_raw_value(&signatures).map_err(Error::internal)?;
        hs.keys().keep_signatures(signer, user, key, &signatures).await?;
        hs.keys().remote_changed(hs.user_data(), signer).await?;
        return Ok(Ok(()));
    }
    let Some((target, stored)) = hs.keys().signable(user, key).await? else {
        return Ok(Err(format!("{user} has no key {key}")));
    };
    let mut stored: Value = serde_json::from_str(stored.get()).map_err(Error::internal)?;
    let unsigned = |value: &Value| {
        let mut value = value.clone();
        if let Some(object) = value.as_object_mut() {
            object.remove("signatures");
            object.remove("unsigned");
        }
        value
    };
    if unsigned(&signed) != unsigned(&stored) {
        return Ok(Err("the signed object is not the key as uploaded".into()));
    }
    merge_signatures(&mut stored, signer, &signatures);
    let stored = serde_json::value::to_raw_value(&stored).map_err(Error::internal)?;
    let change = hs.keys().replace_signed(hs.user_data(), user, &target, &stored).await?;
    match target {
        Signable::Device(device) => {
            let keys = Raw::from_json(stored);
            announce_device(hs, user, &device, change, Some(&keys)).await?;
        }
        Signable::CrossSigning(_) => announce_signing_keys(hs, user).await?,
    }
    Ok(Ok(()))
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
