//! The event engine on IndexedDB, in the browser: a room made, forked, merged and
//! read back after the node is closed and opened again, as a Service Worker
//! restart does. The native suite covers the rules in depth.

use std::sync::Arc;

use ruma::{events::StateEventType, RoomVersionId, UserId};
use serde_json::json;
use wasm_bindgen_test::wasm_bindgen_test;

use crate::{
    core::{
        pdu::NewEvent,
        service::rooms::{CreateRoom, Preset},
        Homeserver, OsRandom, SystemClock, SCHEMA,
    },
    store::{Direction, IndexedDbStore},
};

async fn open(name: &str) -> Homeserver {
    let store = IndexedDbStore::open(name, SCHEMA).await.unwrap();
    Homeserver::open(Arc::new(store), Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap()
}

#[wasm_bindgen_test]
async fn rooms_survive_closing_the_node() {
    let name = format!("engine-{}", js_sys::Date::now());
    let hs = open(&name).await;
    let server = hs.key().server_name().to_owned();
    let alice = UserId::parse(format!("@alice:{server}")).unwrap();
    let options = CreateRoom { version: Some(RoomVersionId::V12), preset: Preset::PublicChat, ..Default::default() };
    let room_id = hs.rooms().create_room(&alice, options).await.unwrap();

    let rooms = hs.rooms();
    let base = rooms.room(&room_id).await.unwrap().extremities[0].0.clone();
    let topic = |t: &str| NewEvent::state("m.room.topic".into(), "", json!({ "topic": t }));
    rooms.send_after(&room_id, &alice, &topic("left"), vec![base.clone()]).await.unwrap();
    rooms.send_after(&room_id, &alice, &topic("right"), vec![base]).await.unwrap();
    let message = NewEvent::message("m.room.message".into(), json!({ "msgtype": "m.text", "body": "merged" }));
    let merged = rooms.send(&room_id, &alice, &message).await.unwrap();
    let topic_before =
        rooms.current_state(&room_id).await.unwrap()[&(StateEventType::RoomTopic, String::new())].clone();
    drop(hs);

    let hs = open(&name).await;
    assert_eq!(hs.key().server_name(), &*server, "the node key is kept");
    let rooms = hs.rooms();
    let state = rooms.current_state(&room_id).await.unwrap();
    assert_eq!(state[&(StateEventType::RoomTopic, String::new())], topic_before);
    assert_eq!(rooms.room(&room_id).await.unwrap().extremities, vec![(merged.event_id.clone(), merged.depth)]);
    let page = rooms.timeline(&room_id, None, Direction::Backward, 1).await.unwrap();
    assert_eq!(page[0].1.event_id, merged.event_id);
    let membership = rooms.membership(&room_id, &alice).await.unwrap();
    assert_eq!(membership, Some(ruma::events::room::member::MembershipState::Join));
}

#[wasm_bindgen_test]
async fn search_index_and_relations_are_kept_in_indexeddb() {
    let name = format!("search-{}", js_sys::Date::now());
    let hs = open(&name).await;
    let alice = UserId::parse(format!("@alice:{}", hs.key().server_name())).unwrap();
    let room_id = hs.rooms().create_room(&alice, CreateRoom::default()).await.unwrap();
    let say = |body: &str, relates_to: serde_json::Value| {
        NewEvent::message(
            "m.room.message".into(),
            json!({ "msgtype": "m.text", "body": body, "m.relates_to": relates_to }),
        )
    };
    let root = hs.rooms().send(&room_id, &alice, &say("Hello brave new world", json!(null))).await.unwrap();
    let thread = json!({ "rel_type": "m.thread", "event_id": root.event_id });
    let reply = hs.rooms().send(&room_id, &alice, &say("hello again", thread)).await.unwrap();
    hs.search().catch_up(hs.rooms(), &[room_id.clone()]).await.unwrap();
    drop(hs);

    // Read back without catching up: what the index holds was stored.
    let hs = open(&name).await;
    let hello = hs.search().postings("hel").await.unwrap();
    let streams: Vec<u64> = hello.iter().map(|p| p.stream).collect();
    assert_eq!(hello.len(), 2);
    assert!(streams[0] < streams[1], "postings come in stream order: {streams:?}");
    assert_eq!((hello[0].term.as_str(), hello[0].count, hello[0].words), ("hello", 1, 4));
    assert_eq!(hs.search().postings("world").await.unwrap().len(), 1);
    assert_eq!(hs.search().indexed_events().await.unwrap(), 2);
    let filter = (Some("m.thread"), None);
    let children =
        hs.rooms().relations().children(&room_id, &root.event_id, filter, None, Direction::Backward, 10).await.unwrap();
    assert_eq!(children.iter().map(|c| &c.event_id).collect::<Vec<_>>(), [&reply.event_id]);
    assert!(hs.rooms().relations().has_bundled(&room_id, &root.event_id).await.unwrap());
    assert!(!hs.rooms().relations().has_bundled(&room_id, &reply.event_id).await.unwrap());
}
