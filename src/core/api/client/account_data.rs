//! Account data: a user's own key-value store, global and per room, handed to
//! their clients through `/sync`.

use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};

use super::filter::own;
use crate::core::{service::accounts::Session, Error, Homeserver};

/// Types the server manages itself and clients may not set this way.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn settable(kind: &str) -> Result<(), Error> {
    match SERVER_MANAGED.contains(&kind) {
        true => Err(Error::ServerManaged(kind.to_owned())),
        false => Ok(()),
    }
}

/// The content as given, if it is a JSON object.
pub(crate) fn object(raw: &serde_json::value::RawValue) -> Result<Box<serde_json::value::RawValue>, Error> {
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Object(_)) => Ok(raw.to_owned()),
        _ => Err(Error::BadJson("content must be a JSON object".into())),
    }
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub(crate) async fn set_global(
    hs: &Homeserver,
    session: Session,
    request: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let kind = request.event_type.to_string();
    settable(&kind)?;
    hs.user_data().set_account_data(&session.user_id, None, &kind, object(request.data.json())?).await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub(crate) async fn get_global(
    hs: &Homeserver,
    session: Session,
    request: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let kind = request.event_type.to_string();
    let entry = hs.user_data().account_data(&session.user_id, None, &kind).await?;
    let entry = entry.ok_or_else(|| Error::NotFound(format!("no account data of type {kind}")))?;
    Ok(get_global_account_data::v3::Response::new(ruma::serde::Raw::from_json(entry.content)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub(crate) async fn set_room(
    hs: &Homeserver,
    session: Session,
    request: set_room_account_data::v3::Request,
) -> Result<set_room_account_data::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let kind = request.event_type.to_string();
    settable(&kind)?;
    hs.rooms().room(&request.room_id).await?;
    let content = object(request.data.json())?;
    hs.user_data().set_account_data(&session.user_id, Some(&request.room_id), &kind, content).await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub(crate) async fn get_room(
    hs: &Homeserver,
    session: Session,
    request: get_room_account_data::v3::Request,
) -> Result<get_room_account_data::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let kind = request.event_type.to_string();
    let entry = hs.user_data().account_data(&session.user_id, Some(&request.room_id), &kind).await?;
    let entry = entry.ok_or_else(|| Error::NotFound(format!("no account data of type {kind} for the room")))?;
    Ok(get_room_account_data::v3::Response::new(ruma::serde::Raw::from_json(entry.content)))
}
