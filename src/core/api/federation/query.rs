//! Queries about this node's users and room aliases.

use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::core::{
    api::client::{profile, room},
    router::Origin,
    Error, Homeserver,
};

/// `GET /_matrix/federation/v1/query/profile`
pub(crate) async fn profile(
    hs: &Homeserver,
    _: Origin,
    request: get_profile_information::v1::Request,
) -> Result<get_profile_information::v1::Response, Error> {
    if request.user_id.server_name() != hs.key().server_name() {
        return Err(Error::NotFound(format!("{} is not a user of this server", request.user_id)));
    }
    let fields = profile::fields(profile::profile(hs, &request.user_id).await?);
    let wanted =
        |field: &ruma::profile::ProfileFieldValue| request.field.as_ref().is_none_or(|f| field.field_name() == *f);
    Ok(fields.into_iter().filter(wanted).collect())
}

/// `GET /_matrix/federation/v1/query/directory`
pub(crate) async fn directory(
    hs: &Homeserver,
    _: Origin,
    request: get_room_information::v1::Request,
) -> Result<get_room_information::v1::Response, Error> {
    if request.room_alias.server_name() != hs.key().server_name() {
        return Err(Error::NotFound(format!("{} is not an alias of this server", request.room_alias)));
    }
    let (room_id, servers) = room::resolve_alias(hs, &request.room_alias).await?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}
