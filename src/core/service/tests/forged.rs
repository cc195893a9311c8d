//! Forged and malformed PDUs from another server. Each is refused with the
//! reason the spec's checks on receipt give (Server-Server API → Checks
//! performed on receipt of a PDU), and a refused PDU leaves the receiving
//! node's store exactly as it was — every entry of every table, not only the
//! room's extremities, state and timeline. The exceptions the spec makes are
//! tested too: a PDU whose content hash is wrong is redacted and kept, and one
//! that fails authorization is kept as rejected.
//!
//! Two nodes play the two servers: `hs` has the room, `remote` signs events
//! with its own node key after reading from `hs` where they go, as it would
//! after a `make_join`.

use ruma::{
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    serde::{base64::Standard, Base64},
    signatures::hash_and_sign_event,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
};
use serde_json::json;

use super::{dump, node, user, Draft};

/// Fixed, so a draft signed twice gives the same event.
fn fixed_ts() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::from(1_700_000_500u32))
}
use crate::{
    core::{
        identity::NodeKey,
        pdu::{self, NewEvent, PduError, Placement},
        service::{
            rooms::{CreateRoom, Outcome, Preset, RoomError},
            state::State,
        },
        Homeserver, SCHEMA,
    },
    store::Direction,
};

/// A public room on `hs`, made by its local user `alice`, and `bob`, a user of `remote`.
struct World {
    hs: Homeserver,
    remote: Homeserver,
    room_id: OwnedRoomId,
    alice: OwnedUserId,
    bob: OwnedUserId,
}

async fn world() -> World {
    let (hs, remote) = (node().await, node().await);
    let alice = user(&hs, "alice");
    let bob = user(&remote, "bob");
    let options = CreateRoom { preset: Preset::PublicChat, topic: Some("welcome".into()), ..Default::default() };
    let room_id = hs.rooms().create_room(&alice, options).await.unwrap();
    World { hs, remote, room_id, alice, bob }
}

fn join(user: &UserId) -> NewEvent {
    NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "join" }))
}

fn message(body: &str) -> NewEvent {
    NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": body }))
}

/// `json`, bent by a test into a shape `pdu::build` refuses to make, hashed and
/// signed again by `key`: its hashes and signatures are then right, so only
/// its shape can be what gets it refused.
fn resign(key: &NodeKey, rules: &RoomVersionRules, mut json: CanonicalJsonObject) -> CanonicalJsonObject {
    json.remove("hashes");
    json.remove("signatures");
    hash_and_sign_event(key.server_name().as_str(), key.key_pair(), &mut json, &rules.redaction).unwrap();
    json
}

fn canonical_len(json: &CanonicalJsonObject) -> usize {
    CanonicalJsonValue::Object(json.clone()).to_string().len()
}

/// What a refused PDU must leave as it was.
struct Snapshot {
    extremities: Vec<(OwnedEventId, UInt)>,
    state: State,
    timeline: Vec<OwnedEventId>,
    /// Every entry of every table.
    store: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

async fn snapshot(hs: &Homeserver, room_id: &RoomId) -> Snapshot {
    let rooms = hs.rooms();
    let extremities = rooms.room(room_id).await.unwrap().extremities;
    let state = (*rooms.current_state(room_id).await.unwrap()).clone();
    let timeline = rooms.timeline(room_id, None, Direction::Forward, usize::MAX).await.unwrap();
    let store = dump(hs).await;
    Snapshot { extremities, state, timeline: timeline.into_iter().map(|(_, e)| e.event_id.clone()).collect(), store }
}

/// That `event_id` was not stored and that nothing else changed since `before`.
#[track_caller]
fn assert_nothing_stored(
    before: &Snapshot,
    after: &Snapshot,
    event_id: &EventId,
    stored: Option<&impl std::fmt::Debug>,
) {
    assert!(stored.is_none(), "{event_id} was stored: {stored:?}");
    assert_eq!(after.extremities, before.extremities, "forward extremities changed");
    assert_eq!(after.state, before.state, "current state changed");
    assert_eq!(after.timeline, before.timeline, "timeline changed");
    for (table, (after, before)) in SCHEMA.tables.iter().zip(after.store.iter().zip(&before.store)) {
        assert!(after == before, "table {table} changed: {} entries before, {} after", before.len(), after.len());
    }
}

impl World {
    async fn draft(&self, sender: &UserId, event: NewEvent) -> Draft {
        Draft::new(&self.hs, &self.room_id, sender, event, fixed_ts()).await
    }

    async fn snapshot(&self) -> Snapshot {
        snapshot(&self.hs, &self.room_id).await
    }

    /// Receives `json` at `room_id`, which must refuse it and store nothing, and
    /// gives back the error.
    async fn refused_in(&self, room_id: &RoomId, event_id: &EventId, json: CanonicalJsonObject) -> RoomError {
        let before = snapshot(&self.hs, room_id).await;
        let result = self.hs.rooms().receive(room_id, json).await;
        let err = match result {
            Ok(outcome) => panic!("{event_id} was not refused: {outcome:?}"),
            Err(err) => err,
        };
        let stored = self.hs.rooms().event(event_id).await.unwrap();
        assert_nothing_stored(
            &before,
            &snapshot(&self.hs, room_id).await,
            event_id,
            stored.map(|e| e.record.clone()).as_ref(),
        );
        err
    }

    async fn refused(&self, event_id: &EventId, json: CanonicalJsonObject) -> RoomError {
        self.refused_in(&self.room_id, event_id, json).await
    }

    /// Bob's join, signed by his server and accepted.
    async fn bob_joins(&self) -> OwnedEventId {
        let pdu = self.draft(&self.bob, join(&self.bob)).await.sign(self.remote.key()).unwrap();
        assert_eq!(self.hs.rooms().receive(&self.room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);
        pdu.event_id
    }
}

fn malformed(err: &RoomError) -> &str {
    match err {
        RoomError::Pdu(PduError::Malformed(reason)) => reason,
        err => panic!("expected PduError::Malformed, got {err:?}"),
    }
}

/// The positive control for everything below: a join by a user of another glia
/// server into a public room, placed and signed as that server would, is
/// accepted and becomes the room's state and its one forward extremity.
#[tokio::test]
async fn a_remote_join_into_a_public_room_is_accepted() {
    let w = world().await;
    let before = w.snapshot().await;
    let pdu = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap();
    assert_eq!(w.hs.rooms().receive(&w.room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);

    let stored = w.hs.rooms().event(&pdu.event_id).await.unwrap().expect("the join is stored");
    assert_eq!(stored.record.rejected, None);
    assert_eq!(stored.record.soft_failed, None);
    assert_eq!(stored.record.pdu, pdu.json);
    assert_eq!(w.hs.rooms().membership(&w.room_id, &w.bob).await.unwrap(), Some(MembershipState::Join));
    let after = w.snapshot().await;
    assert_eq!(after.extremities, vec![(pdu.event_id.clone(), pdu.depth)]);
    assert_eq!(after.state[&(StateEventType::RoomMember, w.bob.to_string())], pdu.event_id);
    assert_eq!(after.timeline[..before.timeline.len()], before.timeline[..]);
    assert_eq!(after.timeline.len(), before.timeline.len() + 1);
    assert_eq!(after.timeline.last(), Some(&pdu.event_id));

    // And the remote user may then talk.
    let said = w.draft(&w.bob, message("hello")).await.sign(w.remote.key()).unwrap();
    assert_eq!(w.hs.rooms().receive(&w.room_id, said.json.clone()).await.unwrap(), Outcome::Accepted);
}

/// Spec: a PDU that fails signature checks is dropped. One byte of the
/// signature changed, the signature removed, or only a signature under a key
/// the server does not have: each is refused as a signature failure.
#[tokio::test]
async fn a_pdu_with_a_bad_signature_is_dropped() {
    let w = world().await;
    let pdu = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap();
    let server = w.remote.key().server_name().as_str();
    fn signatures<'a>(json: &'a mut CanonicalJsonObject, server: &str) -> &'a mut CanonicalJsonObject {
        let Some(CanonicalJsonValue::Object(signatures)) = json.get_mut("signatures") else { panic!("no signatures") };
        let Some(CanonicalJsonValue::Object(ours)) = signatures.get_mut(server) else { panic!("not signed by remote") };
        ours
    }

    let mut flipped = pdu.json.clone();
    let ours = signatures(&mut flipped, server);
    let Some(CanonicalJsonValue::String(signature)) = ours.get_mut(crate::core::identity::KEY_ID) else { panic!() };
    let mut bytes = Base64::<Standard>::parse(&*signature).unwrap().into_inner();
    bytes[10] ^= 0x01;
    *signature = Base64::<Standard>::new(bytes).encode();

    let mut removed = pdu.json.clone();
    removed.insert("signatures".into(), CanonicalJsonValue::Object(Default::default()));

    let mut unknown_key = pdu.json.clone();
    let ours = signatures(&mut unknown_key, server);
    let signature = ours.remove(crate::core::identity::KEY_ID).unwrap();
    ours.insert("ed25519:other".into(), signature);

    for (case, json) in [("one byte changed", flipped), ("no signature", removed), ("unknown key", unknown_key)] {
        let err = w.refused(&pdu.event_id, json).await;
        assert!(matches!(err, RoomError::Pdu(PduError::Signature(_))), "{case}: {err:?}");
    }
    // The untouched PDU is fine: the refusals were for the signatures alone.
    assert_eq!(w.hs.rooms().receive(&w.room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);
}

/// Spec: a PDU that passes signature checks but fails the hash check is
/// redacted before being processed further, not dropped (Server-Server API →
/// Validating hashes and signatures on received events). The body changed after
/// signing is not covered by the signature, which is over the redacted event,
/// so the message is kept, accepted, with its content redacted away.
#[tokio::test]
async fn a_pdu_whose_content_changed_after_signing_is_redacted() {
    let w = world().await;
    w.bob_joins().await;
    let pdu = w.draft(&w.bob, message("what bob said")).await.sign(w.remote.key()).unwrap();
    let mut tampered = pdu.json.clone();
    let Some(CanonicalJsonValue::Object(content)) = tampered.get_mut("content") else { panic!() };
    content.insert("body".into(), "what mallory says bob said".into());

    assert_eq!(w.hs.rooms().receive(&w.room_id, tampered).await.unwrap(), Outcome::Accepted);
    // The event ID is the reference hash, over the redacted event: the same either way.
    let stored = w.hs.rooms().event(&pdu.event_id).await.unwrap().expect("kept, redacted");
    assert_eq!(serde_json::from_str::<serde_json::Value>(stored.pdu.content.get()).unwrap(), json!({}));
    assert_eq!(stored.record.pdu.get("content"), Some(&CanonicalJsonValue::Object(Default::default())));
    assert_eq!(stored.record.rejected, None);
    let timeline = w.hs.rooms().timeline(&w.room_id, None, Direction::Backward, 1).await.unwrap();
    assert_eq!(timeline[0].1.event_id, pdu.event_id);
}

/// Spec: the signature required is that of the sender's server (room versions 3
/// and later). An event another server signed in the name of a local user of
/// `hs` (impersonation), or of a user of a third glia server, is dropped.
#[tokio::test]
async fn a_pdu_signed_by_a_server_other_than_the_senders_is_dropped() {
    let w = world().await;
    let third = node().await;
    let carol = user(&third, "carol");
    for (sender, event) in [(&w.alice, message("alice never said this")), (&carol, join(&carol))] {
        let pdu = w.draft(sender, event).await.sign(w.remote.key()).unwrap();
        let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
        assert!(matches!(err, RoomError::Pdu(PduError::Signature(_))), "{sender}: {err:?}");
    }
}

/// A glia node reads a server's key from its name; a sender on a server whose
/// name is not a key cannot be checked, so its events are dropped as from an
/// unknown server, whoever signed them.
#[tokio::test]
async fn a_pdu_from_a_server_with_no_glia_key_is_dropped() {
    let w = world().await;
    let mallory = UserId::parse("@x:example.org").unwrap();
    let pdu = w.draft(&mallory, join(&mallory)).await.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    match err {
        RoomError::Pdu(PduError::UnknownServer(crate::core::identity::NotAGliaServer(name))) => {
            assert_eq!(name, "example.org");
        }
        err => panic!("expected PduError::UnknownServer, got {err:?}"),
    }
}

/// A PDU is received for one room: one whose `room_id` names another room of
/// the node, or whose prev or auth events are in another room, is refused for
/// the wrong room; one for a room the node does not have, for an unknown room.
/// Neither room changes.
#[tokio::test]
async fn a_pdu_for_another_room_is_refused() {
    let w = world().await;
    let other =
        w.hs.rooms()
            .create_room(&w.alice, CreateRoom { preset: Preset::PublicChat, ..Default::default() })
            .await
            .unwrap();
    let pdu = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap();

    let before = w.snapshot().await;
    let err = w.refused_in(&other, &pdu.event_id, pdu.json.clone()).await;
    match err {
        RoomError::WrongRoom { expected, found } => assert_eq!((expected, found), (other.clone(), w.room_id.clone())),
        err => panic!("expected RoomError::WrongRoom, got {err:?}"),
    }
    let after = w.snapshot().await;
    assert_nothing_stored(&before, &after, &pdu.event_id, None::<&()>);

    let unknown = RoomId::parse(format!("!nowhere:{}", w.remote.key().server_name())).unwrap();
    let err = w.hs.rooms().receive(&unknown, pdu.json.clone()).await.unwrap_err();
    assert!(matches!(&err, RoomError::UnknownRoom(id) if *id == unknown), "{err:?}");
    assert_nothing_stored(
        &after,
        &w.snapshot().await,
        &pdu.event_id,
        w.hs.rooms().event(&pdu.event_id).await.unwrap().map(|e| e.record.clone()).as_ref(),
    );

    // Bob's join to the first room, hung after the other room's events, then
    // authorized by the other room's state.
    let in_other = Draft::new(&w.hs, &other, &w.bob, join(&w.bob), fixed_ts()).await;
    let mut after_other = w.draft(&w.bob, join(&w.bob)).await;
    after_other.prev_events = in_other.prev_events.clone();
    let mut authorized_by_other = w.draft(&w.bob, join(&w.bob)).await;
    authorized_by_other.auth_events = in_other.auth_events.clone();
    for (case, draft) in [("prev events", after_other), ("auth events", authorized_by_other)] {
        let pdu = draft.sign(w.remote.key()).unwrap();
        let before_other = snapshot(&w.hs, &other).await;
        let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
        match err {
            RoomError::WrongRoom { expected, found } => {
                assert_eq!((expected, found), (w.room_id.clone(), other.clone()), "{case}")
            }
            err => panic!("{case}: expected RoomError::WrongRoom, got {err:?}"),
        }
        assert_nothing_stored(&before_other, &snapshot(&w.hs, &other).await, &pdu.event_id, None::<&()>);
    }
}

/// Bob's join, validly hashed and signed, padded to exactly `size` bytes of
/// canonical JSON.
async fn join_of_size(w: &World, size: usize) -> CanonicalJsonObject {
    let draft = w.draft(&w.bob, join(&w.bob)).await;
    let padded = |padding: usize| {
        let mut json = draft.sign(w.remote.key()).unwrap().json;
        let Some(CanonicalJsonValue::Object(content)) = json.get_mut("content") else { panic!() };
        content.insert("padding".into(), "x".repeat(padding).into());
        resign(w.remote.key(), &draft.rules, json)
    };
    // The hash and signature have fixed lengths, so the size grows byte for byte with the padding.
    let json = padded(size - canonical_len(&padded(0)));
    assert_eq!(canonical_len(&json), size);
    json
}

/// Spec: Client-Server API → Size limits: "The complete event MUST NOT be
/// larger than 65536 bytes, when formatted with the federation event format,
/// including any signatures, and encoded as Canonical JSON." Each PDU below is
/// dropped as too large, before any other check:
/// - one byte over, content padded, validly hashed and signed;
/// - 70,000 bytes, content padded after signing: the size check comes before
///   the hash check, so it is not kept in redacted form either (ruma cannot
///   hash content this large to sign it properly);
/// - 1 MiB, validly hashed and signed, with a junk signature from another
///   server, since signatures count towards the limit but are not signed.
#[tokio::test]
async fn a_pdu_past_the_size_limit_is_dropped() {
    let w = world().await;
    let one_over = join_of_size(&w, pdu::MAX_PDU_BYTES + 1).await;

    let mut padded_after_signing = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap().json;
    let Some(CanonicalJsonValue::Object(content)) = padded_after_signing.get_mut("content") else { panic!() };
    content.insert("padding".into(), "x".repeat(70_000).into());

    let mut big_signatures = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap().json;
    let Some(CanonicalJsonValue::Object(signatures)) = big_signatures.get_mut("signatures") else { panic!() };
    let junk = CanonicalJsonObject::from([("ed25519:x".to_owned(), "A".repeat(1 << 20).into())]);
    signatures.insert("example.org".into(), CanonicalJsonValue::Object(junk));

    // The event ID of an oversized PDU cannot be computed (ruma refuses to), so
    // no ID is checked as such: the whole-store comparison covers every ID.
    let placeholder = EventId::parse(format!("${}", "A".repeat(43))).unwrap();
    for (case, json) in [
        ("one byte over", one_over),
        ("padded after signing", padded_after_signing),
        ("1 MiB of signatures", big_signatures),
    ] {
        assert!(canonical_len(&json) > pdu::MAX_PDU_BYTES);
        let err = w.refused(&placeholder, json).await;
        assert!(matches!(err, RoomError::Pdu(PduError::TooLarge)), "{case}: {err:?}");
    }
    assert_eq!(w.hs.rooms().membership(&w.room_id, &w.bob).await.unwrap(), None);
}

/// Spec: Client-Server API → Size limits, the other side of the bound: a PDU
/// of exactly 65,536 bytes is within it (spec v1.1 changelog: "Fix the maximum
/// event size restriction (65535 bytes -> 65536)").
#[tokio::test]
#[ignore = "engine bug: a PDU of exactly 65,536 bytes is refused as TooLarge; ruma's size checks (check_pdu_format, content_hash, reference_hash) use 65,535"]
async fn a_pdu_of_exactly_the_size_limit_is_accepted() {
    let w = world().await;
    let json = join_of_size(&w, pdu::MAX_PDU_BYTES).await;
    assert_eq!(w.hs.rooms().receive(&w.room_id, json).await.unwrap(), Outcome::Accepted);
    assert_eq!(w.hs.rooms().membership(&w.room_id, &w.bob).await.unwrap(), Some(MembershipState::Join));
}

/// The largest PDU the engine does take, one byte under the spec's limit
/// (see the ignored test above): checks that the refusals above are for the
/// size and not for the padding.
#[tokio::test]
async fn a_pdu_just_under_the_size_limit_is_accepted() {
    let w = world().await;
    let json = join_of_size(&w, pdu::MAX_PDU_BYTES - 1).await;
    assert_eq!(w.hs.rooms().receive(&w.room_id, json).await.unwrap(), Outcome::Accepted);
    assert_eq!(w.hs.rooms().membership(&w.room_id, &w.bob).await.unwrap(), Some(MembershipState::Join));
}

/// Spec: a PDU whose prev or auth events the node does not have cannot be
/// checked yet; it is refused with the missing IDs (for the caller to fetch).
#[tokio::test]
async fn a_pdu_after_unknown_events_is_refused_with_their_ids() {
    let w = world().await;
    let unknown = EventId::parse(format!("${}", "A".repeat(43))).unwrap();

    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    draft.prev_events.push(unknown.clone());
    let pdu = draft.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    assert!(matches!(&err, RoomError::MissingEvents(ids) if *ids == [unknown.clone()]), "{err:?}");

    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    draft.auth_events.push(unknown.clone());
    let pdu = draft.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    assert!(matches!(&err, RoomError::MissingEvents(ids) if *ids == [unknown.clone()]), "{err:?}");
}

/// `prev_events` and `auth_events` are sets: a PDU naming the same event twice
/// is invalid, and so is a PDU other than the create event with no prev events.
#[tokio::test]
async fn a_pdu_with_repeated_or_no_prev_events_is_refused() {
    let w = world().await;

    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    draft.prev_events.push(draft.prev_events[0].clone());
    let pdu = draft.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    assert!(matches!(err, RoomError::Invalid(_)), "repeated prev event: {err:?}");

    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    draft.auth_events.push(draft.auth_events[0].clone());
    let pdu = draft.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    assert!(matches!(err, RoomError::Invalid(_)), "repeated auth event: {err:?}");

    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    draft.prev_events.clear();
    let pdu = draft.sign(w.remote.key()).unwrap();
    let err = w.refused(&pdu.event_id, pdu.json.clone()).await;
    assert!(matches!(err, RoomError::Invalid(_)), "no prev events: {err:?}");
}

/// The same PDU received again changes nothing and says so; so does a copy
/// with different `unsigned` data, which no signature covers.
#[tokio::test]
async fn the_same_pdu_twice_is_a_duplicate() {
    let w = world().await;
    let pdu = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap();
    assert_eq!(w.hs.rooms().receive(&w.room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);

    let before = w.snapshot().await;
    let stored = w.hs.rooms().event(&pdu.event_id).await.unwrap().unwrap().record.clone();
    assert_eq!(w.hs.rooms().receive(&w.room_id, pdu.json.clone()).await.unwrap(), Outcome::Duplicate);
    let mut with_unsigned = pdu.json.clone();
    with_unsigned.insert("unsigned".into(), CanonicalJsonValue::Object([("age".into(), "1".into())].into()));
    assert_eq!(w.hs.rooms().receive(&w.room_id, with_unsigned).await.unwrap(), Outcome::Duplicate);
    assert_nothing_stored(&before, &w.snapshot().await, &pdu.event_id, None::<&()>);
    assert_eq!(w.hs.rooms().event(&pdu.event_id).await.unwrap().unwrap().record.pdu, stored.pdu);
}

/// Spec: a PDU that does not follow its room version's event format is
/// dropped. Each shape below is hashed and signed correctly after being bent
/// (`bent`), so the format check alone is what refuses it; ruma cannot sign an
/// event without a string `type` or an object `content`, so those are bent
/// after signing (`broken`), and are refused by the same checks, which run
/// before the hash and signature checks.
#[tokio::test]
async fn malformed_pdus_are_dropped() {
    let w = world().await;
    let draft = w.draft(&w.bob, join(&w.bob)).await;
    let valid = draft.sign(w.remote.key()).unwrap();
    let bent = |change: &dyn Fn(&mut CanonicalJsonObject)| {
        let mut json = valid.json.clone();
        change(&mut json);
        resign(w.remote.key(), &draft.rules, json)
    };
    let broken = |change: &dyn Fn(&mut CanonicalJsonObject)| {
        let mut json = valid.json.clone();
        change(&mut json);
        json
    };
    let too_many: Vec<CanonicalJsonValue> = (0..21).map(|i| format!("${:A>43}", i).into()).collect();
    let integer = |i: i64| CanonicalJsonValue::Integer(i.try_into().unwrap());
    // The field each reason should name, where ruma's reason names one.
    let cases: Vec<(&str, CanonicalJsonObject, Option<&str>)> = vec![
        ("missing type", broken(&|json| drop(json.remove("type"))), Some("type")),
        ("type not a string", broken(&|json| drop(json.insert("type".into(), integer(1)))), Some("type")),
        ("missing sender", bent(&|json| drop(json.remove("sender"))), Some("sender")),
        ("sender not a user ID", bent(&|json| drop(json.insert("sender".into(), "bob".into()))), Some("user ID")),
        ("missing room_id", bent(&|json| drop(json.remove("room_id"))), Some("room_id")),
        ("room_id not a room ID", bent(&|json| drop(json.insert("room_id".into(), "room".into()))), Some("room_id")),
        ("state_key not a string", bent(&|json| drop(json.insert("state_key".into(), integer(1)))), Some("state_key")),
        ("missing depth", bent(&|json| drop(json.remove("depth"))), Some("depth")),
        ("depth negative", bent(&|json| drop(json.insert("depth".into(), integer(-1)))), Some("depth")),
        ("depth a string", bent(&|json| drop(json.insert("depth".into(), "3".into()))), Some("depth")),
        (
            "prev_events an object",
            bent(&|json| drop(json.insert("prev_events".into(), CanonicalJsonValue::Object(Default::default())))),
            Some("prev_events"),
        ),
        (
            "prev_events a string",
            bent(&|json| drop(json.insert("prev_events".into(), valid.prev_events[0].to_string().into()))),
            Some("prev_events"),
        ),
        (
            "prev_events over 20",
            bent(&|json| drop(json.insert("prev_events".into(), CanonicalJsonValue::Array(too_many.clone())))),
            Some("prev_events"),
        ),
        (
            "prev_events holding a number",
            bent(&|json| drop(json.insert("prev_events".into(), CanonicalJsonValue::Array(vec![integer(1)])))),
            None,
        ),
        ("missing auth_events", bent(&|json| drop(json.remove("auth_events"))), Some("auth_events")),
        (
            "auth_events holding a non-ID",
            bent(&|json| drop(json.insert("auth_events".into(), CanonicalJsonValue::Array(vec!["nope".into()])))),
            Some("auth_events"),
        ),
        ("missing origin_server_ts", bent(&|json| drop(json.remove("origin_server_ts"))), Some("origin_server_ts")),
        ("origin_server_ts negative", bent(&|json| drop(json.insert("origin_server_ts".into(), integer(-5)))), None),
        ("missing content", broken(&|json| drop(json.remove("content"))), Some("content")),
        ("content a string", broken(&|json| drop(json.insert("content".into(), "x".into()))), Some("content")),
    ];
    for (case, json, field) in cases {
        let err = w.refused(&valid.event_id, json).await;
        let reason = malformed(&err);
        assert!(field.is_none_or(|field| reason.contains(field)), "{case}: {reason}");
    }

    // Without `hashes` the hash cannot be checked at all; ruma reports that
    // from its signature check, so the PDU is dropped as a signature failure.
    let err = w.refused(&valid.event_id, broken(&|json| drop(json.remove("hashes")))).await;
    assert!(matches!(err, RoomError::Pdu(PduError::Signature(_))), "missing hashes: {err:?}");
}

/// A PDU cannot be its own ancestor. Event IDs are reference hashes of the
/// events, `prev_events` included, so no event can name itself, and no set of
/// events can name each other in a cycle: each ID would have to be known
/// before the event it names is hashed. What a forger can send is an event
/// naming the ID its draft had before the self-reference was added; that ID is
/// then another event's, one never sent, and the PDU is refused as missing it.
#[tokio::test]
async fn a_pdu_cannot_name_itself_as_a_prev_event() {
    let w = world().await;
    let mut draft = w.draft(&w.bob, join(&w.bob)).await;
    let first = draft.sign(w.remote.key()).unwrap();
    draft.prev_events.push(first.event_id.clone());
    let cyclic = draft.sign(w.remote.key()).unwrap();
    assert_ne!(cyclic.event_id, first.event_id, "naming an event changes the namer's ID");
    assert!(!cyclic.prev_events.contains(&cyclic.event_id));

    let err = w.refused(&cyclic.event_id, cyclic.json.clone()).await;
    assert!(matches!(&err, RoomError::MissingEvents(ids) if *ids == [first.event_id.clone()]), "{err:?}");
}

/// Spec: Server-Server API → Rejection: "Subsequent events from other servers
/// that reference rejected events should be allowed if they still pass the
/// auth rules", with the state "calculated as normal, except not updating with
/// the rejected event". A topic bob may not set is kept as rejected, never
/// state nor timeline; his message after it is accepted, and the topic in force
/// is still alice's.
#[tokio::test]
async fn a_pdu_after_a_rejected_pdu_is_judged_on_its_own() {
    let w = world().await;
    w.bob_joins().await;
    let topic_key = (StateEventType::RoomTopic, String::new());
    let alices_topic = w.hs.rooms().current_state(&w.room_id).await.unwrap()[&topic_key].clone();

    let topic = NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": "bob's now" }));
    let topic = w.draft(&w.bob, topic).await.sign(w.remote.key()).unwrap();
    let before = w.snapshot().await;
    let outcome = w.hs.rooms().receive(&w.room_id, topic.json.clone()).await.unwrap();
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    let stored = w.hs.rooms().event(&topic.event_id).await.unwrap().expect("rejected events are kept");
    assert!(stored.record.rejected.is_some());
    let after = w.snapshot().await;
    assert_eq!(after.extremities, before.extremities);
    assert_eq!(after.state, before.state);
    assert_eq!(after.timeline, before.timeline);

    let mut draft = w.draft(&w.bob, message("after the topic")).await;
    draft.prev_events = vec![topic.event_id.clone()];
    draft.depth = topic.depth.saturating_add(UInt::from(1u32));
    let said = draft.sign(w.remote.key()).unwrap();
    assert_eq!(w.hs.rooms().receive(&w.room_id, said.json.clone()).await.unwrap(), Outcome::Accepted);
    let state_at = w.hs.rooms().state_at(&said.event_id).await.unwrap().unwrap();
    assert_eq!(state_at[&topic_key], alices_topic);
    assert_eq!(w.hs.rooms().current_state(&w.room_id).await.unwrap()[&topic_key], alices_topic);
    let timeline = w.hs.rooms().timeline(&w.room_id, None, Direction::Backward, 1).await.unwrap();
    assert_eq!(timeline[0].1.event_id, said.event_id);
}

/// Spec: Server-Server API → Validating hashes and signatures on received
/// events: a third-party invite needs no signature from its sender's server
/// (the sender must match the invite, and "the server which actually sends the
/// event may be a different server"); ruma requires none at all for it. One
/// naming alice as its sender and signed by nobody therefore passes the
/// signature checks — but not the auth rules, which ask for a signed token
/// matching an `m.room.third_party_invite` in the room: it is kept as
/// rejected and never becomes state.
#[tokio::test]
async fn an_unsigned_third_party_invite_is_rejected() {
    let w = world().await;
    let victim = user(&w.remote, "victim");
    let content = json!({
        "membership": "invite",
        "third_party_invite": {
            "display_name": "victim",
            "signed": { "mxid": victim, "token": "no-such-token", "signatures": {} },
        },
    });
    let invite = NewEvent::state(TimelineEventType::RoomMember, victim.as_str(), content);
    let pdu = w.draft(&w.alice, invite).await.sign(w.remote.key()).unwrap();
    let mut unsigned = pdu.json.clone();
    unsigned.insert("signatures".into(), CanonicalJsonValue::Object(Default::default()));

    let before = w.snapshot().await;
    let outcome = w.hs.rooms().receive(&w.room_id, unsigned).await.unwrap();
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    let after = w.snapshot().await;
    assert_eq!(after.state, before.state);
    assert_eq!(after.extremities, before.extremities);
    assert_eq!(after.timeline, before.timeline);
    assert_eq!(w.hs.rooms().membership(&w.room_id, &victim).await.unwrap(), None);
}

/// A create event a third server forges for a room the node does not have yet
/// (signed by its own key, claiming room version 10 whatever the real room's
/// version) fails the auth rules, as its sender is not on the room's server.
/// Whether it is then dropped or kept as rejected, it must not claim the room
/// ID: when the room's genuine create event arrives, it starts the room, in
/// its own version. Checked for a version 10 room (`!id:server`) and a
/// version 12 room (`!<create event hash>`).
#[tokio::test]
async fn a_forged_create_event_does_not_claim_the_room_id() {
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let w = world().await;
        let third = node().await;
        let carol = user(&third, "carol");
        let options = CreateRoom { version: Some(version.clone()), preset: Preset::PublicChat, ..Default::default() };
        let room_id = third.rooms().create_room(&carol, options).await.unwrap();
        let genuine = third.rooms().topological(&room_id, None, Direction::Forward, 1).await.unwrap()[0].1.clone();
        assert_eq!(genuine.kind, TimelineEventType::RoomCreate);

        let rules = pdu::rules(&RoomVersionId::V10).unwrap();
        let create =
            NewEvent::state(TimelineEventType::RoomCreate, "", json!({ "room_version": "10", "creator": w.bob }));
        let placement = Placement {
            room_id: Some(&room_id),
            prev_events: &[],
            auth_events: &[],
            depth: UInt::from(1u32),
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::from(1u32)),
        };
        let forged = pdu::build(w.remote.key(), &rules, &w.bob, &create, placement).unwrap();
        let outcome = w.hs.rooms().receive(&room_id, forged.json.clone()).await;
        assert!(!matches!(outcome, Ok(Outcome::Accepted)), "v{version}: the forged create was accepted");

        let outcome = w.hs.rooms().receive(&room_id, genuine.json.clone()).await;
        assert!(matches!(outcome, Ok(Outcome::Accepted)), "v{version}: the genuine create: {outcome:?}");
        assert_eq!(w.hs.rooms().room(&room_id).await.unwrap().version, version);
    }
}

/// `unsigned` is covered by no signature: whatever the sending server puts
/// there (here a made-up `redacted_because`, which would make clients show
/// the event as redacted) is not kept.
#[tokio::test]
async fn unsigned_data_from_the_sender_is_not_kept() {
    let w = world().await;
    let pdu = w.draft(&w.bob, join(&w.bob)).await.sign(w.remote.key()).unwrap();
    let mut json = pdu.json.clone();
    let unsigned = json!({ "age": 1, "redacted_because": { "type": "m.room.redaction", "sender": w.alice } });
    json.insert("unsigned".into(), ruma::canonical_json::to_canonical_value(unsigned).unwrap());
    assert_eq!(w.hs.rooms().receive(&w.room_id, json).await.unwrap(), Outcome::Accepted);
    let stored = w.hs.rooms().event(&pdu.event_id).await.unwrap().unwrap();
    assert_eq!(stored.record.pdu.get("unsigned"), None);
    assert_eq!(stored.record.pdu, pdu.json);
}

/// Since room version 3 the auth rules let any redaction through; whether it
/// applies is the receiving server's call. A remote user without the power to
/// redact the events of others sends a validly signed redaction of alice's
/// message: it is accepted as an event, and alice's message stays whole.
#[tokio::test]
async fn a_remote_redaction_without_power_does_not_apply() {
    let w = world().await;
    w.bob_joins().await;
    let said = w.hs.rooms().send(&w.room_id, &w.alice, &message("alice's words")).await.unwrap();
    let redaction = NewEvent {
        redacts: Some(said.event_id.clone()),
        ..NewEvent::message(TimelineEventType::RoomRedaction, json!({ "reason": "mine now" }))
    };
    let pdu = w.draft(&w.bob, redaction).await.sign(w.remote.key()).unwrap();
    assert_eq!(w.hs.rooms().receive(&w.room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);
    let target = w.hs.rooms().event(&said.event_id).await.unwrap().unwrap();
    assert_eq!(target.record.pdu, said.json, "the target was changed");
    assert_eq!(target.record.pdu.get("unsigned"), None);
}
