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
