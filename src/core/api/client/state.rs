//! Reading and setting a room's state.

use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use serde_json::Value;

use super::{format, visibility::visible_state};
use crate::core::{pdu::NewEvent, service::accounts::Session, Error, Homeserver};

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub(crate) async fn send(
    hs: &Homeserver,
    session: Session,
    request: send_state_event::v3::Request,
) -> Result<send_state_event::v3::Response, Error> {
    let content: Value = serde_json::from_str(request.body.json().get()).map_err(|e| Error::BadJson(e.to_string()))?;
    if !content.is_object() {
        return Err(Error::BadJson("state content must be a JSON object".into()));
    }
    let event = NewEvent::state(request.event_type.to_string().into(), request.state_key, content);
    let pdu = hs.rooms().send(&request.room_id, &session.user_id, &event).await?;
    Ok(send_state_event::v3::Response::new(pdu.event_id.clone()))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub(crate) async fn get(
    hs: &Homeserver,
    session: Session,
    request: get_state_event_for_key::v3::Request,
) -> Result<get_state_event_for_key::v3::Response, Error> {
    let state = visible_state(hs, &request.room_id, &session.user_id).await?;
    let pdu = hs.rooms().state_event_in(&state, &request.event_type, &request.state_key).await?;
    let pdu = pdu.ok_or_else(|| {
        Error::NotFound(format!("no {} state with key {:?} in the room", request.event_type, request.state_key))
    })?;
    let body = match request.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            format::client_event(hs, &pdu, Some(&session), true).await?
        }
        _ => pdu.content.clone(),
    };
    Ok(get_state_event_for_key::v3::Response::new(body))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub(crate) async fn all(
    hs: &Homeserver,
    session: Session,
    request: get_state_events::v3::Request,
) -> Result<get_state_events::v3::Response, Error> {
    let state = visible_state(hs, &request.room_id, &session.user_id).await?;
    let mut events = Vec::with_capacity(state.len());
    for id in state.values() {
        if let Some(event) = hs.rooms().event(id).await? {
            events.push(format::raw_event(hs, &event.pdu, Some(&session)).await?);
        }
    }
    Ok(get_state_events::v3::Response::new(events))
}
