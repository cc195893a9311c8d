//! Creating rooms and appending events, for every supported room version.

use ruma::{events::StateEventType, RoomVersionId};
use serde_json::json;

use super::{node, user};
use crate::{
    core::{
        pdu::NewEvent,
        service::rooms::{CreateRoom, Preset, RoomError},
    },
    store::Direction,
};

fn message(body: &str) -> NewEvent {
    NewEvent::message("m.room.message".into(), json!({ "msgtype": "m.text", "body": body }))
}

#[tokio::test]
async fn create_room_and_talk_in_every_version() {
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let hs = node().await;
        let alice = user(&hs, "alice");
        let options = CreateRoom {
            version: Some(version.clone()),
            preset: Preset::PublicChat,
            name: Some("Lobby".into()),
            topic: Some("hello".into()),
            ..Default::default()
        };
        let room_id = hs.rooms().create_room(&alice, options).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        if version == RoomVersionId::V12 {
            assert!(room_id.server_name().is_none(), "v12 room IDs are create event hashes: {room_id}");
        }
        let rooms = hs.rooms();
        assert_eq!(rooms.room(&room_id).await.unwrap().version, version);
        assert_eq!(
            rooms.membership(&room_id, &alice).await.unwrap(),
            Some(ruma::events::room::member::MembershipState::Join)
        );
        let state = rooms.current_state(&room_id).await.unwrap();
        for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name", "m.room.topic"] {
            assert!(state.contains_key(&(StateEventType::from(kind), String::new())), "{version}: {kind}");
        }

        let sent = rooms.send(&room_id, &alice, &message("hi")).await.unwrap();
        let page = rooms.timeline(&room_id, None, Direction::Backward, 2).await.unwrap();
        assert_eq!(page[0].1.event_id, sent.event_id);
        assert_eq!(page.len(), 2);
        assert!(page[0].0 > page[1].0);
        let room = rooms.room(&room_id).await.unwrap();
        assert_eq!(room.extremities.len(), 1);
        assert_eq!(room.extremities[0].0, sent.event_id);
    }
}

#[tokio::test]
async fn users_without_power_are_forbidden() {
    let hs = node().await;
    let (alice, bob) = (user(&hs, "alice"), user(&hs, "bob"));
    let options = CreateRoom { preset: Preset::PublicChat, ..Default::default() };
    let room_id = hs.rooms().create_room(&alice, options).await.unwrap();
    let err = hs.rooms().send(&room_id, &bob, &message("not joined")).await.unwrap_err();
    assert!(matches!(err, RoomError::Forbidden(_)), "{err}");
    let join = NewEvent::state("m.room.member".into(), bob.as_str(), json!({ "membership": "join" }));
    hs.rooms().send(&room_id, &bob, &join).await.unwrap();
    hs.rooms().send(&room_id, &bob, &message("joined")).await.unwrap();
    let topic = NewEvent::state("m.room.topic".into(), "", json!({ "topic": "mine" }));
    let err = hs.rooms().send(&room_id, &bob, &topic).await.unwrap_err();
    assert!(matches!(err, RoomError::Forbidden(_)), "{err}");
}

#[tokio::test]
async fn forks_merge_through_state_resolution() {
    let hs = node().await;
    let alice = user(&hs, "alice");
    let rooms = hs.rooms();
    let room_id = rooms.create_room(&alice, CreateRoom::default()).await.unwrap();
    let base = rooms.room(&room_id).await.unwrap().extremities[0].0.clone();
    let topic = |t: &str| NewEvent::state("m.room.topic".into(), "", json!({ "topic": t }));
    let left = rooms.send_after(&room_id, &alice, &topic("left"), vec![base.clone()]).await.unwrap();
    let right = rooms.send_after(&room_id, &alice, &topic("right"), vec![base]).await.unwrap();
    assert_eq!(rooms.room(&room_id).await.unwrap().extremities.len(), 2);

    let merged = rooms.send(&room_id, &alice, &message("merge")).await.unwrap();
    assert_eq!(merged.prev_events.len(), 2);
    let state = rooms.state_at(&merged.event_id).await.unwrap().unwrap();
    let winner = &state[&(StateEventType::RoomTopic, String::new())];
    assert!(*winner == left.event_id || *winner == right.event_id);
    let current = rooms.current_state(&room_id).await.unwrap();
    assert_eq!(current[&(StateEventType::RoomTopic, String::new())], *winner);
    assert_eq!(rooms.room(&room_id).await.unwrap().extremities.len(), 1);
}

async fn body(hs: &crate::core::Homeserver, id: &ruma::EventId) -> Option<serde_json::Value> {
    let event = hs.rooms().event(id).await.unwrap().unwrap();
    serde_json::from_str::<serde_json::Value>(event.pdu.content.get()).unwrap().get("body").cloned()
}

#[tokio::test]
async fn redactions_apply_for_the_sender_and_for_moderators_only() {
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let hs = node().await;
        let (alice, bob, carol) = (user(&hs, "alice"), user(&hs, "bob"), user(&hs, "carol"));
        let rooms = hs.rooms();
        let options = CreateRoom { version: Some(version.clone()), preset: Preset::PublicChat, ..Default::default() };
        let room_id = rooms.create_room(&alice, options).await.unwrap();
        for who in [&bob, &carol] {
            let join = NewEvent::state("m.room.member".into(), who.as_str(), json!({ "membership": "join" }));
            rooms.send(&room_id, who, &join).await.unwrap();
        }
        let redaction = |target: &ruma::EventId| NewEvent {
            redacts: Some(target.to_owned()),
            ..NewEvent::message("m.room.redaction".into(), json!({ "reason": "test" }))
        };

        // Bob cannot redact Carol's message (redact level 50), but Carol can, and so can Alice.
        let carols = rooms.send(&room_id, &carol, &message("carol's")).await.unwrap();
        rooms.send(&room_id, &bob, &redaction(&carols.event_id)).await.unwrap();
        assert_eq!(body(&hs, &carols.event_id).await, Some(json!("carol's")), "{version}");
        rooms.send(&room_id, &carol, &redaction(&carols.event_id)).await.unwrap();
        assert_eq!(body(&hs, &carols.event_id).await, None, "{version}");

        let bobs = rooms.send(&room_id, &bob, &message("bob's")).await.unwrap();
        rooms.send(&room_id, &alice, &redaction(&bobs.event_id)).await.unwrap();
        let redacted = rooms.event(&bobs.event_id).await.unwrap().unwrap();
        assert_eq!(body(&hs, &bobs.event_id).await, None, "{version}");
        assert!(redacted.record.pdu.contains_key("unsigned"), "redacted_because is kept");
    }
}

/// A redacted message's words leave the search index, which had them.
#[tokio::test]
async fn redacted_messages_leave_the_search_index() {
    let hs = node().await;
    let alice = user(&hs, "alice");
    let rooms = hs.rooms();
    let room_id = rooms.create_room(&alice, CreateRoom::default()).await.unwrap();
    let kept = rooms.send(&room_id, &alice, &message("xylophone kept")).await.unwrap();
    let gone = rooms.send(&room_id, &alice, &message("xylophone secret")).await.unwrap();
    hs.search().catch_up(rooms, std::slice::from_ref(&room_id)).await.unwrap();
    assert_eq!(hs.search().postings("xylophone").await.unwrap().len(), 2);

    let redaction =
        NewEvent { redacts: Some(gone.event_id.clone()), ..NewEvent::message("m.room.redaction".into(), json!({})) };
    rooms.send(&room_id, &alice, &redaction).await.unwrap();
    let position = |id| async move { rooms.event(id).await.unwrap().unwrap().record.stream };
    let postings = hs.search().postings("xylophone").await.unwrap();
    assert_eq!(postings.iter().map(|p| Some(p.stream)).collect::<Vec<_>>(), vec![position(&kept.event_id).await]);
    assert!(hs.search().postings("secret").await.unwrap().is_empty());
}

#[tokio::test]
async fn timelines_page_in_stream_and_topological_order() {
    let hs = node().await;
    let alice = user(&hs, "alice");
    let rooms = hs.rooms();
    let room_id = rooms.create_room(&alice, CreateRoom::default()).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(rooms.send(&room_id, &alice, &message(&format!("m{i}"))).await.unwrap().event_id.clone());
    }
    let latest = rooms.timeline(&room_id, None, Direction::Backward, 2).await.unwrap();
    assert_eq!(
        latest.iter().map(|(_, e)| e.event_id.clone()).collect::<Vec<_>>(),
        vec![sent[4].clone(), sent[3].clone()]
    );
    let older = rooms.timeline(&room_id, Some(latest[1].0), Direction::Backward, 2).await.unwrap();
    assert_eq!(
        older.iter().map(|(_, e)| e.event_id.clone()).collect::<Vec<_>>(),
        vec![sent[2].clone(), sent[1].clone()]
    );
    let newer = rooms.timeline(&room_id, Some(older[1].0), Direction::Forward, 10).await.unwrap();
    assert_eq!(newer.len(), 3);

    let topo = rooms.topological(&room_id, None, Direction::Backward, 3).await.unwrap();
    assert_eq!(topo[0].1.event_id, sent[4]);
    assert!(topo.windows(2).all(|w| w[0].0 > w[1].0));
    let before = rooms.topological(&room_id, Some(topo[2].0), Direction::Backward, 100).await.unwrap();
    assert_eq!(before.len() + 3, rooms.topological(&room_id, None, Direction::Forward, 100).await.unwrap().len());
    assert_eq!(before.last().unwrap().1.kind, ruma::events::TimelineEventType::RoomCreate);

    let unknown = ruma::RoomId::parse("!nope:example.org").unwrap();
    assert!(rooms.timeline(&unknown, None, Direction::Backward, 10).await.unwrap().is_empty());
    assert!(matches!(rooms.current_state(&unknown).await, Err(RoomError::UnknownRoom(_))));
}

#[tokio::test]
async fn rooms_persist_on_disk_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let open = || async {
        let store = crate::store::DiskStore::open(&path, crate::core::SCHEMA).await.unwrap();
        super::node_on(std::sync::Arc::new(store)).await
    };
    let hs = open().await;
    let alice = user(&hs, "alice");
    let room_id = hs.rooms().create_room(&alice, CreateRoom::default()).await.unwrap();
    let base = hs.rooms().room(&room_id).await.unwrap().extremities[0].0.clone();
    let topic = |t: &str| NewEvent::state("m.room.topic".into(), "", json!({ "topic": t }));
    hs.rooms().send_after(&room_id, &alice, &topic("a"), vec![base.clone()]).await.unwrap();
    hs.rooms().send_after(&room_id, &alice, &topic("b"), vec![base]).await.unwrap();
    let state = hs.rooms().current_state(&room_id).await.unwrap();
    let server = hs.key().server_name().to_owned();
    drop(hs);

    let hs = open().await;
    assert_eq!(hs.key().server_name(), &*server);
    assert_eq!(*hs.rooms().current_state(&room_id).await.unwrap(), *state);
    assert_eq!(hs.rooms().room(&room_id).await.unwrap().extremities.len(), 2);
    hs.rooms().send(&room_id, &alice, &message("after restart")).await.unwrap();
    assert_eq!(hs.rooms().room(&room_id).await.unwrap().extremities.len(), 1);
}

#[tokio::test]
async fn a_room_is_created_whole_or_not_at_all() {
    let hs = node().await;
    let alice = user(&hs, "alice");
    let before = super::dump(&hs).await;
    // The last initial state event needs power alice gives away earlier.
    let options = CreateRoom {
        // Version 11: since 12 the creator's power has no limit.
        version: Some(RoomVersionId::V11),
        power_levels_override: json!({ "state_default": 101 }).as_object().unwrap().clone(),
        initial_state: vec![NewEvent::state("m.room.topic".into(), "", json!({ "topic": "too late" }))],
        ..Default::default()
    };
    let err = hs.rooms().create_room(&alice, options).await.unwrap_err();
    assert!(matches!(err, RoomError::Forbidden(_)), "{err}");
    assert!(super::dump(&hs).await == before, "a refused createRoom left data behind");
    // The node goes on working after the refused commit.
    hs.rooms().create_room(&alice, CreateRoom::default()).await.unwrap();
}

#[tokio::test]
async fn a_federation_transaction_lands_in_one_commit_with_an_outcome_per_pdu() {
    use ruma::{MilliSecondsSinceUnixEpoch, UInt};

    use super::Draft;
    use crate::core::service::rooms::Outcome;

    let (hs, remote) = (node().await, node().await);
    let (alice, bob) = (user(&hs, "alice"), user(&remote, "bob"));
    let room_id =
        hs.rooms().create_room(&alice, CreateRoom { preset: Preset::PublicChat, ..Default::default() }).await.unwrap();

    // Bob's join, then two messages, each after the previous: the second and third
    // PDUs build on events only the same commit holds.
    let ts = |i: u32| MilliSecondsSinceUnixEpoch(UInt::from(1_700_000_000u32 + i));
    let join = NewEvent::state("m.room.member".into(), bob.as_str(), json!({ "membership": "join" }));
    let join = Draft::new(&hs, &room_id, &bob, join, ts(0)).await.sign(remote.key()).unwrap();
    let mut pdus = vec![join.json.clone()];
    let mut sent = vec![join.event_id.clone()];
    let mut prev = join.clone();
    for i in 1..3 {
        let mut draft = Draft::new(&hs, &room_id, &bob, message(&format!("m{i}")), ts(i)).await;
        draft.prev_events = vec![prev.event_id.clone()];
        draft.depth = prev.depth.saturating_add(UInt::from(1u32));
        draft.auth_events.push(join.event_id.clone());
        prev = draft.sign(remote.key()).unwrap();
        pdus.push(prev.json.clone());
        sent.push(prev.event_id.clone());
    }
    let mut forged = pdus[1].clone();
    forged.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::int!(5)));
    pdus.insert(2, forged);

    let outcomes = hs.rooms().receive_all(&room_id, pdus).await.unwrap();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0].as_ref().unwrap(), &Outcome::Accepted);
    assert_eq!(outcomes[1].as_ref().unwrap(), &Outcome::Accepted);
    assert!(matches!(outcomes[2], Err(RoomError::Pdu(_))), "{:?}", outcomes[2]);
    assert_eq!(outcomes[3].as_ref().unwrap(), &Outcome::Accepted);

    let rooms = hs.rooms();
    assert_eq!(rooms.room(&room_id).await.unwrap().extremities, vec![(prev.event_id.clone(), prev.depth)]);
    let latest = rooms.timeline(&room_id, None, Direction::Backward, 3).await.unwrap();
    assert_eq!(latest.iter().map(|(_, e)| e.event_id.clone()).rev().collect::<Vec<_>>(), sent);
    assert_eq!(
        rooms.membership(&room_id, &bob).await.unwrap(),
        Some(ruma::events::room::member::MembershipState::Join)
    );
}

#[tokio::test]
async fn concurrent_senders_share_commits_and_all_land_in_order() {
    // On disk, where a commit yields while it is written, so senders pile up
    // behind it and share the next one.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::DiskStore::open(dir.path().join("node.redb"), crate::core::SCHEMA).await.unwrap();
    let hs = super::node_on(std::sync::Arc::new(store)).await;
    let (alice, bob) = (user(&hs, "alice"), user(&hs, "bob"));
    let rooms = hs.rooms();
    let room_id =
        rooms.create_room(&alice, CreateRoom { preset: Preset::PublicChat, ..Default::default() }).await.unwrap();
    // Bob is not in the room: his event is refused without holding up the others.
    let sends = (0..20).map(|i| {
        let (rooms, room_id) = (rooms, &room_id);
        let sender = if i == 7 { bob.clone() } else { alice.clone() };
        async move { rooms.send(room_id, &sender, &message(&format!("m{i}"))).await }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(matches!(results[7], Err(RoomError::Forbidden(_))), "{:?}", results[7]);
    let sent: Vec<_> = results.into_iter().filter_map(Result::ok).map(|pdu| pdu.event_id.clone()).collect();
    assert_eq!(sent.len(), 19);

    let timeline = rooms.timeline(&room_id, None, Direction::Backward, 19).await.unwrap();
    let mut stored: Vec<_> = timeline.into_iter().map(|(_, pdu)| pdu.event_id.clone()).collect();
    stored.reverse();
    assert_eq!(stored, sent, "the timeline holds every event, in the order they were sent");
    let room = rooms.room(&room_id).await.unwrap();
    assert_eq!(room.extremities.len(), 1, "each event builds on the one before");
}

#[tokio::test]
async fn a_redaction_that_comes_before_its_event_applies_when_the_event_arrives() {
    use ruma::{MilliSecondsSinceUnixEpoch, UInt};

    use super::Draft;
    use crate::core::service::rooms::{Outcome, HELD_REDACTIONS};

    let (hs, remote) = (node().await, node().await);
    let (alice, bob) = (user(&hs, "alice"), user(&remote, "bob"));
    let rooms = hs.rooms();
    let room_id =
        rooms.create_room(&alice, CreateRoom { preset: Preset::PublicChat, ..Default::default() }).await.unwrap();
    let ts = |i: u32| MilliSecondsSinceUnixEpoch(UInt::from(1_700_000_000u32 + i));
    let join = NewEvent::state("m.room.member".into(), bob.as_str(), json!({ "membership": "join" }));
    let join = Draft::new(&hs, &room_id, &bob, join, ts(0)).await.sign(remote.key()).unwrap();
    assert_eq!(rooms.receive(&room_id, join.json.clone()).await.unwrap(), Outcome::Accepted);

    let held = || async {
        let index = crate::core::SCHEMA.tables.iter().position(|t| *t == HELD_REDACTIONS).unwrap();
        super::dump(&hs).await.swap_remove(index).len()
    };
    let redaction = |target: &ruma::EventId, i| {
        let event =
            NewEvent { redacts: Some(target.to_owned()), ..NewEvent::message("m.room.redaction".into(), json!({})) };
        Draft::new(&hs, &room_id, &bob, event, ts(i))
    };

    // Bob redacts his own message before it reaches this node.
    let first = Draft::new(&hs, &room_id, &bob, message("first"), ts(1)).await.sign(remote.key()).unwrap();
    let of_first = redaction(&first.event_id, 2).await.sign(remote.key()).unwrap();
    assert_eq!(rooms.receive(&room_id, of_first.json.clone()).await.unwrap(), Outcome::Accepted);
    assert_eq!(held().await, 1, "the redaction is held");
    assert_eq!(rooms.receive(&room_id, first.json.clone()).await.unwrap(), Outcome::Accepted);
    assert_eq!(body(&hs, &first.event_id).await, None, "the message arrives redacted");
    let stored = rooms.event(&first.event_id).await.unwrap().unwrap();
    assert!(stored.record.pdu.contains_key("unsigned"), "with redacted_because");
    assert_eq!(held().await, 0, "and the hold is released");

    // The same within one transaction, the redaction first.
    let second = Draft::new(&hs, &room_id, &bob, message("second"), ts(3)).await.sign(remote.key()).unwrap();
    let of_second = redaction(&second.event_id, 4).await.sign(remote.key()).unwrap();
    let outcomes = rooms.receive_all(&room_id, vec![of_second.json.clone(), second.json.clone()]).await.unwrap();
    assert!(outcomes.iter().all(|o| o.as_ref().unwrap() == &Outcome::Accepted), "{outcomes:?}");
    assert_eq!(body(&hs, &second.event_id).await, None);
    assert_eq!(held().await, 0);

    // Held for alice's message, bob's redaction does not apply: he lacks the power.
    let alices = Draft::new(&hs, &room_id, &alice, message("alice's"), ts(5)).await.sign(hs.key()).unwrap();
    let of_alices = redaction(&alices.event_id, 6).await.sign(remote.key()).unwrap();
    assert_eq!(rooms.receive(&room_id, of_alices.json.clone()).await.unwrap(), Outcome::Accepted);
    assert_eq!(rooms.receive(&room_id, alices.json.clone()).await.unwrap(), Outcome::Accepted);
    assert_eq!(body(&hs, &alices.event_id).await, Some(json!("alice's")));
    assert_eq!(held().await, 0);
}

#[tokio::test]
async fn received_events_are_known_to_be_stored_already_or_related_to_before_they_came() {
    use std::sync::Arc;

    use ruma::{MilliSecondsSinceUnixEpoch, UInt};

    use super::Draft;
    use crate::{core::service::rooms::Outcome, store::Store};

    let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new(crate::core::SCHEMA));
    let (hs, remote) = (super::node_on(store.clone()).await, node().await);
    let (alice, bob) = (user(&hs, "alice"), user(&remote, "bob"));
    let options = CreateRoom { preset: Preset::PublicChat, ..Default::default() };
    let room_id = hs.rooms().create_room(&alice, options).await.unwrap();
    let ts = |i: u32| MilliSecondsSinceUnixEpoch(UInt::from(1_700_000_000u32 + i));
    let join = NewEvent::state("m.room.member".into(), bob.as_str(), json!({ "membership": "join" }));
    let join = Draft::new(&hs, &room_id, &bob, join, ts(0)).await.sign(remote.key()).unwrap();
    assert_eq!(hs.rooms().receive(&room_id, join.json).await.unwrap(), Outcome::Accepted);

    // Bob's reference to his message reaches this node before the message.
    let parent = Draft::new(&hs, &room_id, &bob, message("parent"), ts(1)).await.sign(remote.key()).unwrap();
    let relates_to = json!({ "rel_type": "m.reference", "event_id": parent.event_id });
    let reference = NewEvent::message(
        "m.room.message".into(),
        json!({ "msgtype": "m.text", "body": "see above", "m.relates_to": relates_to }),
    );
    let child = Draft::new(&hs, &room_id, &bob, reference, ts(2)).await.sign(remote.key()).unwrap();
    assert_eq!(hs.rooms().receive(&room_id, child.json).await.unwrap(), Outcome::Accepted);
    assert_eq!(hs.rooms().receive(&room_id, parent.json.clone()).await.unwrap(), Outcome::Accepted);
    assert!(hs.rooms().relations().has_bundled(&room_id, &parent.event_id).await.unwrap());

    // Started again, the node has no event in memory: the message handed over
    // again is still one it has, and changes nothing.
    drop(hs);
    let hs = super::node_on(store).await;
    let before = super::dump(&hs).await;
    assert_eq!(hs.rooms().receive(&room_id, parent.json).await.unwrap(), Outcome::Duplicate);
    assert_eq!(super::dump(&hs).await, before);
    assert!(hs.rooms().relations().has_bundled(&room_id, &parent.event_id).await.unwrap());
}

#[tokio::test]
async fn a_retried_transaction_in_a_shared_commit_holds_up_no_other_event() {
    // On disk, where senders pile up behind a commit and share the next one.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::DiskStore::open(dir.path().join("node.redb"), crate::core::SCHEMA).await.unwrap();
    let hs = super::node_on(std::sync::Arc::new(store)).await;
    let alice = user(&hs, "alice");
    let device: ruma::OwnedDeviceId = "PHONE".into();
    let room_id = hs.rooms().create_room(&alice, CreateRoom::default()).await.unwrap();
    let send = |n: usize| {
        let (hs, alice, device, room_id) = (&hs, &alice, &device, &room_id);
        async move {
            let event = message(&format!("m{n}"));
            let txn = if n == 0 { "retried".into() } else { ruma::TransactionId::new() };
            hs.transactions()
                .once(alice, device, "send", &txn, |also| hs.rooms().send_with(room_id, alice, &event, also))
                .await
        }
    };
    let first = send(0).await.unwrap();

    // The retry among new messages, which wait behind the first of them.
    let sends = futures_util::future::join_all([1, 2, 3, 0, 4, 5, 6].map(send)).await;
    let sent: Vec<_> = sends.into_iter().map(Result::unwrap).collect();
    assert_eq!(sent[3], first, "the retry gets the event it sent");
    let timeline = hs.rooms().timeline(&room_id, None, Direction::Backward, 8).await.unwrap();
    let bodies: Vec<_> = timeline.iter().map(|(_, pdu)| pdu.content.get().to_owned()).collect();
    for n in 0..=6 {
        let times = bodies.iter().filter(|b| b.contains(&format!("\"m{n}\""))).count();
        assert_eq!(times, 1, "m{n} is in the timeline once: {bodies:?}");
    }
}
