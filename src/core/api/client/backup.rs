//! Server-side key backups: a client keeps its room keys here, encrypted with
//! a key only the user's devices hold, so a new device can read the history.

use std::collections::BTreeMap;

use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version, BackupAlgorithm, KeyBackupData, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, UInt,
};

use crate::core::{
    service::{accounts::Session, backup::Version},
    Error, Homeserver,
};

/// `POST /_matrix/client/v3/room_keys/version`
pub(crate) async fn create_version(
    hs: &Homeserver,
    session: Session,
    request: create_backup_version::v3::Request,
) -> Result<create_backup_version::v3::Response, Error> {
    let algorithm = checked(&request.algorithm)?;
    let version = hs.backups().create(&session.user_id, algorithm.json()).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// The algorithm must be one the spec's shape allows: a name and auth data.
fn checked(algorithm: &Raw<BackupAlgorithm>) -> Result<&Raw<BackupAlgorithm>, Error> {
    algorithm.deserialize().map_err(|err| Error::BadJson(format!("backup algorithm: {err}")))?;
    Ok(algorithm)
}

fn info(version: String, stored: Version) -> (Raw<BackupAlgorithm>, UInt, String, String) {
    (Raw::from_json(stored.algorithm), UInt::new_saturating(stored.count), stored.etag.to_string(), version)
}

/// `GET /_matrix/client/v3/room_keys/version`
pub(crate) async fn latest_version(
    hs: &Homeserver,
    session: Session,
    _: get_latest_backup_info::v3::Request,
) -> Result<get_latest_backup_info::v3::Response, Error> {
    let Some((version, stored)) = hs.backups().latest(&session.user_id).await? else {
        return Err(Error::NotFound("no backup version".into()));
    };
    let (algorithm, count, etag, version) = info(version, stored);
    Ok(get_latest_backup_info::v3::Response::new(algorithm, count, etag, version))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub(crate) async fn version(
    hs: &Homeserver,
    session: Session,
    request: get_backup_info::v3::Request,
) -> Result<get_backup_info::v3::Response, Error> {
    let stored = hs.backups().version(&session.user_id, &request.version).await?;
    let (algorithm, count, etag, version) = info(request.version, stored);
    Ok(get_backup_info::v3::Response::new(algorithm, count, etag, version))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub(crate) async fn update_version(
    hs: &Homeserver,
    session: Session,
    request: update_backup_version::v3::Request,
) -> Result<update_backup_version::v3::Response, Error> {
    let algorithm = checked(&request.algorithm)?;
    // The body may name the version too; it must be this one.
    let named: serde_json::Value =
        request.algorithm.deserialize_as().map_err(|err| Error::BadJson(format!("backup algorithm: {err}")))?;
    if named.get("version").is_some_and(|v| v.as_str() != Some(request.version.as_str())) {
        return Err(Error::InvalidParam(format!("the body names another version than {}", request.version)));
    }
    hs.backups().update(&session.user_id, &request.version, algorithm.json()).await?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub(crate) async fn delete_version(
    hs: &Homeserver,
    session: Session,
    request: delete_backup_version::v3::Request,
) -> Result<delete_backup_version::v3::Response, Error> {
    hs.backups().delete(&session.user_id, &request.version).await?;
    Ok(delete_backup_version::v3::Response::new())
}

type Sessions = Vec<(OwnedRoomId, String, Raw<KeyBackupData>)>;

fn flatten(rooms: BTreeMap<OwnedRoomId, RoomKeyBackup>) -> Sessions {
    rooms
        .into_iter()
        .flat_map(|(room, backup)| backup.sessions.into_iter().map(move |(id, data)| (room.clone(), id, data)))
        .collect()
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub(crate) async fn put_keys(
    hs: &Homeserver,
    session: Session,
    request: add_backup_keys::v3::Request,
) -> Result<add_backup_keys::v3::Response, Error> {
    let (etag, count) = hs.backups().put(&session.user_id, &request.version, flatten(request.rooms)).await?;
    Ok(add_backup_keys::v3::Response::new(etag, UInt::new_saturating(count)))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub(crate) async fn put_room_keys(
    hs: &Homeserver,
    session: Session,
    request: add_backup_keys_for_room::v3::Request,
) -> Result<add_backup_keys_for_room::v3::Response, Error> {
    let sessions = [(request.room_id, RoomKeyBackup::new(request.sessions))].into();
    let (etag, count) = hs.backups().put(&session.user_id, &request.version, flatten(sessions)).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, UInt::new_saturating(count)))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub(crate) async fn put_session_key(
    hs: &Homeserver,
    session: Session,
    request: add_backup_keys_for_session::v3::Request,
) -> Result<add_backup_keys_for_session::v3::Response, Error> {
    let sessions = vec![(request.room_id, request.session_id, request.session_data)];
    let (etag, count) = hs.backups().put(&session.user_id, &request.version, sessions).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, UInt::new_saturating(count)))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub(crate) async fn keys(
    hs: &Homeserver,
    session: Session,
    request: get_backup_keys::v3::Request,
) -> Result<get_backup_keys::v3::Response, Error> {
    let rooms = hs.backups().keys(&session.user_id, &request.version, (None, None)).await?;
    let rooms = rooms.into_iter().map(|(room, sessions)| (room, RoomKeyBackup::new(sessions))).collect();
    Ok(get_backup_keys::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`: a room without keys has
/// no sessions, which is no error.
pub(crate) async fn room_keys(
    hs: &Homeserver,
    session: Session,
    request: get_backup_keys_for_room::v3::Request,
) -> Result<get_backup_keys_for_room::v3::Response, Error> {
    let within = (Some(&*request.room_id), None);
    let mut rooms = hs.backups().keys(&session.user_id, &request.version, within).await?;
    let sessions = rooms.remove(&request.room_id).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub(crate) async fn session_key(
    hs: &Homeserver,
    session: Session,
    request: get_backup_keys_for_session::v3::Request,
) -> Result<get_backup_keys_for_session::v3::Response, Error> {
    let within = (Some(&*request.room_id), Some(request.session_id.as_str()));
    let rooms = hs.backups().keys(&session.user_id, &request.version, within).await?;
    let found = rooms.into_values().flat_map(|sessions| sessions.into_iter()).find(|(id, _)| *id == request.session_id);
    match found {
        Some((_, data)) => Ok(get_backup_keys_for_session::v3::Response::new(data)),
        None => {
            Err(Error::NotFound(format!("no key for session {} in backup {}", request.session_id, request.version)))
        }
    }
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub(crate) async fn delete_keys(
    hs: &Homeserver,
    session: Session,
    request: delete_backup_keys::v3::Request,
) -> Result<delete_backup_keys::v3::Response, Error> {
    let (etag, count) = hs.backups().delete_keys(&session.user_id, &request.version, (None, None)).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, UInt::new_saturating(count)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub(crate) async fn delete_room_keys(
    hs: &Homeserver,
    session: Session,
    request: delete_backup_keys_for_room::v3::Request,
) -> Result<delete_backup_keys_for_room::v3::Response, Error> {
    let within = (Some(&*request.room_id), None);
    let (etag, count) = hs.backups().delete_keys(&session.user_id, &request.version, within).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, UInt::new_saturating(count)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub(crate) async fn delete_session_key(
    hs: &Homeserver,
    session: Session,
    request: delete_backup_keys_for_session::v3::Request,
) -> Result<delete_backup_keys_for_session::v3::Response, Error> {
    let within = (Some(&*request.room_id), Some(request.session_id.as_str()));
    let (etag, count) = hs.backups().delete_keys(&session.user_id, &request.version, within).await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, UInt::new_saturating(count)))
}
