//! Reporting events, rooms and users to the node's owner, who reads them with
//! [`Reports::reports`](crate::core::service::reports::Reports::reports).

use ruma::{
    api::client::{
        reporting::report_user,
        room::{report_content, report_room},
    },
    events::room::member::MembershipState,
};

use super::room::visible_event;
use crate::core::{
    service::{accounts::Session, reports::Reported},
    Error, Homeserver,
};

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
pub(crate) async fn event(
    hs: &Homeserver,
    session: Session,
    request: report_content::v3::Request,
) -> Result<report_content::v3::Response, Error> {
    // The spec answers 404 to a reporter outside the room, as to an unknown event.
    let membership = hs.rooms().user_membership(&session.user_id, &request.room_id).await?;
    if membership.is_none_or(|m| m.membership != MembershipState::Join) {
        return Err(Error::NotFound(format!("{} is not in the room {}", session.user_id, request.room_id)));
    }
    visible_event(hs, &session.user_id, &request.room_id, &request.event_id).await?;
    let reported = Reported::Event { room_id: request.room_id, event_id: request.event_id };
    hs.reports().add(session.user_id, reported, request.reason).await?;
    Ok(report_content::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
pub(crate) async fn room(
    hs: &Homeserver,
    session: Session,
    request: report_room::v3::Request,
) -> Result<report_room::v3::Response, Error> {
    // Any room this node knows of, whether or not the reporter is in it.
    hs.rooms().room(&request.room_id).await?;
    hs.reports().add(session.user_id, Reported::Room { room_id: request.room_id }, Some(request.reason)).await?;
    Ok(report_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/users/{userId}/report`
pub(crate) async fn user(
    hs: &Homeserver,
    session: Session,
    request: report_user::v3::Request,
) -> Result<report_user::v3::Response, Error> {
    // Only this node's own users are known not to exist.
    let local = request.user_id.server_name() == hs.key().server_name();
    if local && hs.accounts().user(&request.user_id).await?.is_none() {
        return Err(Error::NotFound(format!("no user {}", request.user_id)));
    }
    hs.reports().add(session.user_id, Reported::User { user_id: request.user_id }, Some(request.reason)).await?;
    Ok(report_user::v3::Response::new())
}
