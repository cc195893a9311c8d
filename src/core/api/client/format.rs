//! Events as clients see them: the PDU's client-visible keys plus `unsigned`
//! (age, the previous content of state, the sender's transaction ID).

use ruma::{serde::Raw, CanonicalJsonValue};
use serde_json::{value::to_raw_value, Map, Value};

use crate::core::{pdu::Pdu, service::accounts::Session, Error, Homeserver};

/// The keys of a PDU a client sees; the rest (hashes, signatures, DAG links)
/// are the federation's business.
const CLIENT_KEYS: &[&str] =
    &["content", "event_id", "origin_server_ts", "redacts", "room_id", "sender", "state_key", "type"];

/// The client-visible keys of a PDU's JSON.
fn client_keys(json: &ruma::CanonicalJsonObject) -> Map<String, Value> {
    let mut event = Map::new();
    for key in CLIENT_KEYS {
        if let Some(value) = json.get(*key) {
            event.insert((*key).to_owned(), canonical(value));
        }
    }
    event
}

/// The event in the client format, `unsigned` filled in for `viewer`.
pub(crate) async fn client_event(hs: &Homeserver, pdu: &Pdu, viewer: Option<&Session>) -> Result<Value, Error> {
    let mut event = client_keys(&pdu.json);
    // Room versions 1-10 keep `redacts` in the content, later ones at the top.
    if let (Some(redacts), false) = (&pdu.redacts, event.contains_key("redacts")) {
        event.insert("redacts".into(), redacts.as_str().into());
    }
    event.insert("event_id".into(), pdu.event_id.as_str().into());
    let mut unsigned = Map::new();
    let age = hs.clock().now_millis().saturating_sub(u64::from(pdu.origin_server_ts.0));
    unsigned.insert("age".into(), age.into());
    if let Some(CanonicalJsonValue::Object(stored)) = pdu.json.get("unsigned") {
        // Set by redaction: the redaction that emptied this event.
        if let Some(CanonicalJsonValue::Object(because)) = stored.get("redacted_because") {
            unsigned.insert("redacted_because".into(), Value::Object(client_keys(because)));
        }
    }
    if pdu.state_key.is_some() {
        if let Some(prev) = previous_content(hs, pdu).await? {
            unsigned.insert("prev_content".into(), prev.0);
            unsigned.insert("replaces_state".into(), prev.1.into());
        }
    }
    if let Some(viewer) = viewer.filter(|v| v.user_id == pdu.sender) {
        if let Some(txn_id) = hs.transactions().txn_of(&pdu.event_id, &viewer.device_id).await? {
            unsigned.insert("transaction_id".into(), txn_id.as_str().into());
        }
    }
    event.insert("unsigned".into(), Value::Object(unsigned));
    Ok(Value::Object(event))
}

/// As [`client_event`], as the typed raw JSON ruma's responses hold.
pub(crate) async fn raw_event<T>(hs: &Homeserver, pdu: &Pdu, viewer: Option<&Session>) -> Result<Raw<T>, Error> {
    to_raw(&client_event(hs, pdu, viewer).await?)
}

pub(crate) fn to_raw<T>(value: &Value) -> Result<Raw<T>, Error> {
    Ok(Raw::from_json(to_raw_value(value).map_err(Error::internal)?))
}

/// The content and ID of the state event this one replaced.
async fn previous_content(hs: &Homeserver, pdu: &Pdu) -> Result<Option<(Value, String)>, Error> {
    let Some(before) = hs.rooms().state_at(&pdu.event_id).await? else { return Ok(None) };
    let key = (pdu.kind.to_string().into(), pdu.state_key.clone().unwrap_or_default());
    let Some(prev_id) = before.get(&key) else { return Ok(None) };
    let Some(prev) = hs.rooms().event(prev_id).await? else { return Ok(None) };
    let content = serde_json::from_str(prev.pdu.content.get()).map_err(Error::internal)?;
    Ok(Some((content, prev_id.to_string())))
}

fn canonical(value: &CanonicalJsonValue) -> Value {
    value.clone().into()
}
