//! Typing notices, read receipts and markers, and presence.

use ruma::{
    api::client::{
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        typing::create_typing_event::{self, v3::Typing},
    },
    events::receipt::ReceiptThread,
    presence::PresenceState,
    EventId, OwnedEventId, RoomId, UserId,
};
use serde_json::json;

use super::{filter::own, visibility::require_joined};
use crate::core::api::federation::transactions;
use crate::core::{service::accounts::Session, Error, Homeserver};

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub(crate) async fn typing(
    hs: &Homeserver,
    session: Session,
    request: create_typing_event::v3::Request,
) -> Result<create_typing_event::v3::Response, Error> {
    own(&session, &request.user_id)?;
    require_joined(hs, &request.room_id, &session.user_id).await?;
    let timeout = match request.state {
        Typing::Yes(info) => Some(info.timeout.as_millis() as u64),
        _ => None,
    };
    hs.ephemeral().set_typing(&request.room_id, &session.user_id, timeout);
    transactions::send_typing(hs, &request.room_id, &session.user_id, timeout.is_some()).await?;
    Ok(create_typing_event::v3::Response::new())
}

/// The event must be one of the room's, for a receipt or marker to point at it.
async fn room_event(hs: &Homeserver, room_id: &RoomId, event_id: &EventId) -> Result<OwnedEventId, Error> {
    match hs.rooms().event(event_id).await? {
        Some(event) if event.pdu.room_id == room_id => Ok(event_id.to_owned()),
        _ => Err(Error::NotFound(format!("no event {event_id} in {room_id}"))),
    }
}

async fn fully_read(hs: &Homeserver, user: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<(), Error> {
    let content = serde_json::value::to_raw_value(&json!({ "event_id": event_id })).map_err(Error::internal)?;
    hs.user_data().set_account_data(user, Some(room_id), "m.fully_read", content).await?;
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub(crate) async fn receipt(
    hs: &Homeserver,
    session: Session,
    request: create_receipt::v3::Request,
) -> Result<create_receipt::v3::Response, Error> {
    let room_id = &request.room_id;
    require_joined(hs, room_id, &session.user_id).await?;
    let event_id = room_event(hs, room_id, &request.event_id).await?;
    let thread = match &request.thread {
        ReceiptThread::Unthreaded => None,
        thread => thread.as_str(),
    };
    match request.receipt_type {
        ReceiptType::FullyRead => {
            if thread.is_some() {
                return Err(Error::InvalidParam("m.fully_read has no threads".into()));
            }
            fully_read(hs, &session.user_id, room_id, &event_id).await?;
        }
        kind @ (ReceiptType::Read | ReceiptType::ReadPrivate) => {
            hs.user_data().set_receipt(room_id, &session.user_id, kind.as_str(), thread, event_id.clone()).await?;
            if kind == ReceiptType::Read {
                transactions::send_receipt(hs, room_id, &session.user_id, &request.thread, &event_id).await?;
            }
        }
        kind => return Err(Error::InvalidParam(format!("unknown receipt type {kind}"))),
    }
    Ok(create_receipt::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub(crate) async fn read_markers(
    hs: &Homeserver,
    session: Session,
    request: set_read_marker::v3::Request,
) -> Result<set_read_marker::v3::Response, Error> {
    let room_id = &request.room_id;
    require_joined(hs, room_id, &session.user_id).await?;
    if let Some(event_id) = &request.fully_read {
        let event_id = room_event(hs, room_id, event_id).await?;
        fully_read(hs, &session.user_id, room_id, &event_id).await?;
    }
    for (kind, event_id) in [("m.read", &request.read_receipt), ("m.read.private", &request.private_read_receipt)] {
        if let Some(event_id) = event_id {
            let event_id = room_event(hs, room_id, event_id).await?;
            hs.user_data().set_receipt(room_id, &session.user_id, kind, None, event_id.clone()).await?;
            if kind == "m.read" {
                transactions::send_receipt(hs, room_id, &session.user_id, &ReceiptThread::Unthreaded, &event_id)
                    .await?;
            }
        }
    }
    Ok(set_read_marker::v3::Response::new())
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub(crate) async fn set_status(
    hs: &Homeserver,
    session: Session,
    request: set_presence::v3::Request,
) -> Result<set_presence::v3::Response, Error> {
    own(&session, &request.user_id)?;
    if !matches!(request.presence, PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable) {
        return Err(Error::InvalidParam(format!("unknown presence {}", request.presence)));
    }
    hs.ephemeral().set_presence(&session.user_id, request.presence, Some(request.status_msg));
    hs.ephemeral().announce_presence(&session.user_id);
    Ok(set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub(crate) async fn get_status(
    hs: &Homeserver,
    _session: Session,
    request: get_presence::v3::Request,
) -> Result<get_presence::v3::Response, Error> {
    if hs.accounts().user(&request.user_id).await?.is_none() {
        return Err(Error::NotFound(format!("no user {}", request.user_id)));
    }
    let Some(presence) = hs.ephemeral().presence(&request.user_id) else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    };
    let mut response = get_presence::v3::Response::new(presence.state.clone());
    response.status_msg = presence.status_msg;
    response.currently_active = Some(presence.state == PresenceState::Online);
    let ago = hs.clock().now_millis().saturating_sub(presence.last_active);
    response.last_active_ago = Some(std::time::Duration::from_millis(ago));
    Ok(response)
}
