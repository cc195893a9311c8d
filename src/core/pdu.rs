//! PDUs: building, hashing, signing, event IDs, redaction and the checks on a
//! received PDU, for room versions 10, 11 and 12, all through ruma.

use ruma::{
    canonical_json::{redact, to_canonical_value, CanonicalJsonObject, CanonicalJsonValue},
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room_version_rules::{RoomIdFormatVersion, RoomVersionRules},
    signatures::{
        hash_and_sign_event, reference_hash, required_server_signatures_to_verify_event, verify_event, Verified,
    },
    state_res::check_pdu_format,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

use super::identity::{public_key_map, NodeKey};

/// The largest PDU, in canonical JSON, that any room version allows.
pub const MAX_PDU_BYTES: usize = 65_536;

/// Version 12 by default: its room IDs are the hash of the create event, which
/// needs no server to vouch for them — the natural fit for peer-to-peer rooms.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("room version {0} is not supported (glia supports 10, 11 and 12)")]
    UnsupportedVersion(RoomVersionId),
    #[error("malformed PDU: {0}")]
    Malformed(String),
    #[error("PDU is larger than {MAX_PDU_BYTES} bytes")]
    TooLarge,
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error(transparent)]
    UnknownServer(#[from] super::identity::NotAGliaServer),
}

/// The rules of a room version glia supports.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, PduError> {
    match version {
        RoomVersionId::V10 | RoomVersionId::V11 | RoomVersionId::V12 => {
            version.rules().ok_or_else(|| PduError::UnsupportedVersion(version.clone()))
        }
        _ => Err(PduError::UnsupportedVersion(version.clone())),
    }
}

/// A PDU: the canonical JSON that is hashed, signed and stored, with the fields
/// authorization and state resolution read parsed once.
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: UInt,
    /// Set when the event failed authorization: it is kept, but never becomes state.
    pub rejected: bool,
    pub json: CanonicalJsonObject,
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Whether a redaction emptied the event (it then carries the redaction in
    /// `unsigned.redacted_because`).
    pub fn is_redacted(&self) -> bool {
        self.json.get("unsigned").and_then(|u| u.as_object()?.get("redacted_because")).is_some()
    }

    /// Where a state event goes in a room's state: its type and state key.
    pub fn state_entry(&self) -> Option<(StateEventType, String)> {
        Some((self.kind.to_string().into(), self.state_key.clone()?))
    }

    /// Whether `prev_events` or `auth_events` names one event twice, which the
    /// spec forbids.
    pub fn repeats_an_event(&self) -> bool {
        [&self.prev_events, &self.auth_events]
            .iter()
            .any(|ids| ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id)))
    }

    /// The user a member event is about and their membership in it.
    pub fn member(&self) -> Option<(OwnedUserId, MembershipState)> {
        #[derive(Deserialize)]
        struct Content {
            membership: MembershipState,
        }
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        let user = UserId::parse(self.state_key.as_deref()?).ok()?;
        let content: Content = serde_json::from_str(self.content.get()).ok()?;
        Some((user, content.membership))
    }

    /// Reads a PDU whose hashes and signatures are already checked (or made here).
    pub fn from_canonical(json: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Self, PduError> {
        let event_id = event_id(&json, rules)?;
        Self::from_stored(event_id, json, rules)
    }

    /// Reads a PDU from the store, where its event ID is already known.
    pub fn from_stored(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<Self, PduError> {
        let text = serde_json::to_string(&json).map_err(|err| PduError::Malformed(err.to_string()))?;
        let fields: Fields = serde_json::from_str(&text).map_err(|err| PduError::Malformed(err.to_string()))?;

        let room_id = match fields.room_id {
            Some(room_id) => room_id,
            // Since v12 the create event has no room ID: the room's ID is its hash.
            None if fields.kind == TimelineEventType::RoomCreate && rules.room_id_format == RoomIdFormatVersion::V2 => {
                RoomId::parse(format!("!{}", &event_id.as_str()[1..]))
                    .map_err(|err| PduError::Malformed(err.to_string()))?
            }
            None => return Err(PduError::Malformed("missing room_id".into())),
        };
        let redacts = match fields.redacts {
            Some(redacts) if !rules.redaction.content_field_redacts => Some(redacts),
            _ if fields.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(fields.content.get()).ok().and_then(|c| c.redacts)
            }
            _ => None,
        };
        Ok(Self {
            event_id,
            room_id,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            redacts,
            depth: fields.depth,
            rejected: false,
            json,
        })
    }

    /// Runs the checks on a PDU received from another server that need nothing
    /// but the PDU: format and size, then hashes and signatures, with keys read
    /// from the server names. A PDU whose content hash is wrong is redacted, as
    /// the spec says, rather than dropped.
    pub fn from_remote(mut json: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Self, PduError> {
        // Not covered by signatures: whatever a sender put there is not to be trusted.
        json.remove("unsigned");
        check_format(&json, rules)?;
        let servers = required_server_signatures_to_verify_event(&json, &rules.signatures)
            .map_err(|err| PduError::Malformed(err.to_string()))?;
        let keys = public_key_map(servers.iter().map(|s| &**s))?;
        match verify_event(&keys, &json, rules).map_err(|err| PduError::Signature(err.to_string()))? {
            Verified::All => {}
            Verified::Signatures => {
                json = redact(json, &rules.redaction, None).map_err(|err| PduError::Malformed(err.to_string()))?;
            }
        }
        Self::from_canonical(json, rules)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The PDU as servers exchange it. The stored JSON may carry an `unsigned`
    /// object this node added (the redaction that emptied the event), which is
    /// its own business, not the event's.
    pub fn federation_json(&self) -> CanonicalJsonObject {
        let mut json = self.json.clone();
        json.remove("unsigned");
        json
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        // A v12 create event has no `room_id` field, and the auth rules check that.
        self.json.contains_key("room_id").then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// An event a local user wants to send, before it is placed in the room's DAG.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: TimelineEventType, state_key: impl Into<String>, content: serde_json::Value) -> Self {
        Self { kind, state_key: Some(state_key.into()), content, redacts: None }
    }

    pub fn message(kind: TimelineEventType, content: serde_json::Value) -> Self {
        Self { kind, state_key: None, content, redacts: None }
    }
}

/// Where a new event goes in its room's DAG.
pub struct Placement<'a> {
    /// `None` only for a version 12 create event.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: &'a [OwnedEventId],
    pub depth: UInt,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

/// The event ID of a PDU: its reference hash.
pub fn event_id(json: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, PduError> {
    let hash = reference_hash(json, rules).map_err(|err| match err {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        err => PduError::Malformed(err.to_string()),
    })?;
    EventId::parse(format!("${hash}")).map_err(|err| PduError::Malformed(err.to_string()))
}

/// Builds, hashes and signs an event as this node.
pub fn build(
    key: &NodeKey,
    rules: &RoomVersionRules,
    sender: &UserId,
    event: &NewEvent,
    placement: Placement<'_>,
) -> Result<Pdu, PduError> {
    let canonical = |value: serde_json::Value| {
        to_canonical_value(value).map_err(|err| PduError::Malformed(format!("not canonical JSON: {err}")))
    };
    let ids = |ids: &[OwnedEventId]| CanonicalJsonValue::Array(ids.iter().map(|id| id.to_string().into()).collect());

    let mut content = event.content.clone();
    let mut json = CanonicalJsonObject::new();
    if let Some(redacts) = &event.redacts {
        if rules.redaction.content_field_redacts {
            if let Some(content) = content.as_object_mut() {
                content.insert("redacts".into(), redacts.to_string().into());
            }
        } else {
            json.insert("redacts".into(), redacts.to_string().into());
        }
    }
    if !content.is_object() {
        return Err(PduError::Malformed("content must be a JSON object".into()));
    }
    json.insert("auth_events".into(), ids(placement.auth_events));
    json.insert("content".into(), canonical(content)?);
    json.insert("depth".into(), CanonicalJsonValue::Integer(placement.depth.into()));
    json.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(placement.origin_server_ts.0.into()));
    json.insert("prev_events".into(), ids(placement.prev_events));
    if let Some(room_id) = placement.room_id {
        json.insert("room_id".into(), room_id.to_string().into());
    }
    json.insert("sender".into(), sender.to_string().into());
    if let Some(state_key) = &event.state_key {
        json.insert("state_key".into(), state_key.clone().into());
    }
    json.insert("type".into(), event.kind.to_string().into());

    hash_and_sign_event(key.server_name().as_str(), key.key_pair(), &mut json, &rules.redaction)
        .map_err(|err| PduError::Malformed(err.to_string()))?;
    check_format(&json, rules)?;
    Pdu::from_canonical(json, rules)
}

/// An event built by another server for a user of this node (a `make_join`
/// template): stamped now, hashed and signed here.
pub fn sign_template(
    key: &NodeKey,
    rules: &RoomVersionRules,
    mut json: CanonicalJsonObject,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<Pdu, PduError> {
    for field in ["signatures", "hashes", "event_id", "unsigned"] {
        json.remove(field);
    }
    json.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(now.0.into()));
    hash_and_sign_event(key.server_name().as_str(), key.key_pair(), &mut json, &rules.redaction)
        .map_err(|err| PduError::Malformed(err.to_string()))?;
    check_format(&json, rules)?;
    Pdu::from_canonical(json, rules)
}

/// `json` as a template for another server to sign: without this node's hashes
/// and signatures.
pub fn template(mut json: CanonicalJsonObject) -> CanonicalJsonObject {
    json.remove("signatures");
    json.remove("hashes");
    json
}

/// Adds this node's signature to another server's event (an invite of a user
/// of this node).
pub fn countersign(key: &NodeKey, rules: &RoomVersionRules, json: &mut CanonicalJsonObject) -> Result<(), PduError> {
    ruma::signatures::sign_event(key.server_name().as_str(), key.key_pair(), json, &rules.redaction)
        .map_err(|err| PduError::Malformed(err.to_string()))
}

/// The spec's size limits and field formats, through ruma.
fn check_format(json: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<(), PduError> {
    check_pdu_format(json, &rules.event_format).map_err(|err| {
        // ruma reports the size limit only in its message.
        if err.starts_with("PDU is larger") {
            PduError::TooLarge
        } else {
            PduError::Malformed(err)
        }
    })
}
