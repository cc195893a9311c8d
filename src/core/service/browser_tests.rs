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
