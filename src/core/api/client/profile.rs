//! Display names and avatars of this node's users, mirrored into their member
//! events in every room they are in.

use ruma::{
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
    events::room::member::MembershipState,
    profile::ProfileFieldValue,
    OwnedMxcUri, UserId,
};

use super::{filter::own, membership};
use crate::core::{
    service::accounts::{Session, UserRecord},
    Error, Homeserver,
};

/// The profile of a user of this node.
pub(crate) async fn profile(hs: &Homeserver, user: &UserId) -> Result<UserRecord, Error> {
    match hs.accounts().user(user).await? {
        Some(record) if !record.deactivated => Ok(record),
        _ => Err(Error::NotFound(format!("no profile for {user}"))),
    }
}

/// The fields a profile has set.
pub(crate) fn fields(record: UserRecord) -> Vec<ProfileFieldValue> {
    let mut fields = Vec::new();
    if let Some(name) = record.displayname {
        fields.push(ProfileFieldValue::DisplayName(name));
    }
    if let Some(url) = record.avatar_url {
        fields.push(ProfileFieldValue::AvatarUrl(url.into()));
    }
    fields
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub(crate) async fn get(
    hs: &Homeserver,
    _: (),
    request: get_profile::v3::Request,
) -> Result<get_profile::v3::Response, Error> {
    Ok(fields(profile(hs, &request.user_id).await?).into_iter().collect())
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname`
pub(crate) async fn get_displayname(
    hs: &Homeserver,
    _: (),
    request: get_display_name::v3::Request,
) -> Result<get_display_name::v3::Response, Error> {
    Ok(get_display_name::v3::Response::new(profile(hs, &request.user_id).await?.displayname))
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
pub(crate) async fn get_avatar(
    hs: &Homeserver,
    _: (),
    request: get_avatar_url::v3::Request,
) -> Result<get_avatar_url::v3::Response, Error> {
    let avatar_url = profile(hs, &request.user_id).await?.avatar_url.map(OwnedMxcUri::from);
    Ok(get_avatar_url::v3::Response::new(avatar_url))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
pub(crate) async fn set_displayname(
    hs: &Homeserver,
    session: Session,
    request: set_display_name::v3::Request,
) -> Result<set_display_name::v3::Response, Error> {
    own(&session, &request.user_id)?;
    hs.accounts().set_profile(&session.user_id, |p| p.displayname = request.displayname).await?;
    propagate(hs, &session.user_id).await?;
    Ok(set_display_name::v3::Response::new())
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
pub(crate) async fn set_avatar(
    hs: &Homeserver,
    session: Session,
    request: set_avatar_url::v3::Request,
) -> Result<set_avatar_url::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let url = request.avatar_url.map(|u| u.to_string());
    hs.accounts().set_profile(&session.user_id, |p| p.avatar_url = url).await?;
    propagate(hs, &session.user_id).await?;
    Ok(set_avatar_url::v3::Response::new())
}

/// A new member event with the profile in every room the user is in.
async fn propagate(hs: &Homeserver, user: &UserId) -> Result<(), Error> {
    for (room_id, membership) in hs.rooms().rooms_of(user).await?.iter() {
        if membership.membership == MembershipState::Join {
            membership::change(hs, user, room_id, user, MembershipState::Join, None).await?;
        }
    }
    Ok(())
}
