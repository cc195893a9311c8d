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
        assert!(redacted.record.pdu.get("unsigned").is_some(), "redacted_because is kept");
    }
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
    assert_eq!(latest.iter().map(|(_, e)| e.event_id.clone()).collect::<Vec<_>>(), vec![sent[4].clone(), sent[3].clone()]);
    let older = rooms.timeline(&room_id, Some(latest[1].0), Direction::Backward, 2).await.unwrap();
    assert_eq!(older.iter().map(|(_, e)| e.event_id.clone()).collect::<Vec<_>>(), vec![sent[2].clone(), sent[1].clone()]);
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
