//! Federation between nodes in one process over the in-process network.

// Native only: the nodes run on tokio, and wasm-pack builds every test crate.
#![cfg(not(target_arch = "wasm32"))]

mod mesh;

use std::time::Duration;

use glia::core::service::federation::FederationError;
use glia::p2p::memory::MemoryNetwork;
use glia::store::{Batch, Direction, KeyRange, Op, Store, StoreError};
use mesh::{enc, ok, LoopbackRelay, Node, User, WAIT};
use ruma::{
    api::federation::{discovery::get_server_version::v1, space::get_hierarchy},
    ServerName,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_another_through_frames() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let b_name = ServerName::parse(&b.name).unwrap();
    let version = a.hs.federation().request(&b_name, v1::Request::new(), false).await.unwrap();
    assert_eq!(version.server.unwrap().name.as_deref(), Some("glia"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_invite_join_talk_type_read_and_leave() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({ "name": "P2P" })).await;
    ok(alice.call("POST", &format!("rooms/{}/invite", enc(&room)), Some(json!({ "user_id": bob.id }))).await);

    let state =
        bob.sees("bob's invite", |s| s["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned()).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "P2P"), "{state:?}");
    assert!(state.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.id.as_str()), "{state:?}");

    ok(bob.call("POST", &format!("join/{}", enc(&room)), Some(json!({}))).await);
    let members = ok(bob.call("GET", &format!("rooms/{}/joined_members", enc(&room)), None).await);
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");
    alice.sees_joined(&room, &bob.id).await;

    alice.say(&room, "hello bob").await;
    bob.sees_message(&room, "hello bob").await;
    bob.say(&room, "hello alice").await;
    alice.sees_message(&room, "hello alice").await;

    // Typing and receipts cross too.
    let typing = json!({ "typing": true, "timeout": 10_000 });
    ok(bob.call("PUT", &format!("rooms/{}/typing/{}", enc(&room), enc(&bob.id)), Some(typing)).await);
    alice
        .sees("bob typing", |s| {
            let ephemeral = s["rooms"]["join"][&room]["ephemeral"]["events"].as_array()?.clone();
            ephemeral
                .iter()
                .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"][0] == bob.id.as_str())
                .then_some(())
        })
        .await;
    let last = alice.last_event(&room).await;
    ok(alice.call("POST", &format!("rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)), Some(json!({}))).await);
    bob.sees("alice's receipt", |s| {
        let ephemeral = s["rooms"]["join"][&room]["ephemeral"]["events"].as_array()?.clone();
        ephemeral
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][&last]["m.read"][&alice.id].is_object())
            .then_some(())
    })
    .await;

    // And presence.
    let status = json!({ "presence": "unavailable", "status_msg": "lunch" });
    ok(alice.call("PUT", &format!("presence/{}/status", enc(&alice.id)), Some(status)).await);
    bob.sees("alice's presence", |s| {
        let events = s["presence"]["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| {
                e["sender"] == alice.id.as_str()
                    && e["content"]["presence"] == "unavailable"
                    && e["content"]["status_msg"] == "lunch"
            })
            .then_some(())
    })
    .await;

    ok(bob.call("POST", &format!("rooms/{}/leave", enc(&room)), Some(json!({}))).await);
    alice
        .eventually("bob's leave on alice's node", || async {
            let members = alice.call("GET", &format!("rooms/{}/joined_members", enc(&room)), None).await.1;
            (members["joined"].is_object() && members["joined"][&bob.id].is_null()).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_refused_goes_back_to_the_inviting_node() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.invite(&room, &bob).await;
    ok(bob.call("POST", &format!("rooms/{}/leave", enc(&room)), Some(json!({}))).await);
    bob.sees("the invite gone", |s| s["rooms"]["invite"][&room].is_null().then_some(())).await;
    let member =
        ok(alice.call("GET", &format!("rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob.id)), None).await);
    assert_eq!(member["membership"], "leave");
}

/// An invite to a node that is offline: it is in the room at once, and the
/// invitee sees it (with the room's name) and joins once the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_waits_for_a_node_that_is_offline() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({ "name": "While you were away" })).await;
    b.disconnect().await;
    ok(alice.call("POST", &format!("rooms/{}/invite", enc(&room)), Some(json!({ "user_id": bob.id }))).await);
    let member =
        ok(alice.call("GET", &format!("rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob.id)), None).await);
    assert_eq!(member["membership"], "invite");
    alice.say(&room, "before bob was back").await;

    b.connect();
    let state =
        bob.sees("bob's invite", |s| s["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned()).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "While you were away"));
    ok(bob.call("POST", &format!("join/{}", enc(&room)), Some(json!({}))).await);
    alice.sees_joined(&room, &bob.id).await;
    alice.say(&room, "welcome back").await;
    bob.sees_message(&room, "welcome back").await;
}

/// Three nodes: a room on all three, concurrent state changes that every node
/// resolves alike, a node offline for 100 messages, and a partition that heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_catch_up_and_heal() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let c = Node::start(&network).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let carol = c.user("carol").await;
    let levels = json!({ "users": { bob.id.clone(): 100, carol.id.clone(): 100 } });
    let room = alice.create_room(json!({ "power_level_content_override": levels })).await;
    for user in [&bob, &carol] {
        ok(alice.call("POST", &format!("rooms/{}/invite", enc(&room)), Some(json!({ "user_id": user.id }))).await);
        user.sees("the invite", |s| s["rooms"]["invite"][&room].is_object().then_some(())).await;
        ok(user.call("POST", &format!("join/{}", enc(&room)), Some(json!({}))).await);
    }
    for user in [&alice, &bob, &carol] {
        for member in [&alice, &bob, &carol] {
            user.sees_joined(&room, &member.id).await;
        }
    }

    // Two topics set at once on two nodes: all three settle on the same state.
    let topic = |t: &str| json!({ "topic": t });
    let path = format!("rooms/{}/state/m.room.topic/", enc(&room));
    let (one, two) = tokio::join!(
        alice.call("PUT", &path, Some(topic("from alice"))),
        bob.call("PUT", &path, Some(topic("from bob"))),
    );
    ok(one);
    ok(two);
    carol.say(&room, "after the topics").await;
    let states = same_state(&room, &[&alice, &bob, &carol]).await;
    assert!(states.contains("m.room.topic"), "{states}");

    // Carol's node goes offline for 100 messages, then catches up by itself.
    c.disconnect().await;
    for n in 0..100 {
        alice.say(&room, &format!("while carol was away {n}")).await;
    }
    c.connect();
    carol.sees_message(&room, "while carol was away 99").await;
    let messages = ok(carol.call("GET", &format!("rooms/{}/messages?dir=b&limit=200", enc(&room)), None).await);
    let away = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("while carol was away")));
    assert_eq!(away.count(), 100);

    // A partition between alice and bob: each talks, then it heals.
    network.partition(a.key, b.key);
    alice.say(&room, "alice in the partition").await;
    bob.say(&room, "bob in the partition").await;
    carol.sees_message(&room, "alice in the partition").await;
    carol.sees_message(&room, "bob in the partition").await;
    network.heal(a.key, b.key);
    bob.sees_message(&room, "alice in the partition").await;
    alice.sees_message(&room, "bob in the partition").await;
    same_state(&room, &[&alice, &bob, &carol]).await;
}

/// Two nodes linked by a relay on loopback that goes down for a few seconds
/// while alice talks: node A's send queue backs off (0.5 s, 1 s, 2 s, 4 s...)
/// with each attempt the missing relay fails, and the relay coming back must
/// end that wait. A node welcomed by a relay again retries every destination at
/// once, as it does when first attached to a network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sends_as_soon_as_its_relay_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = LoopbackRelay::start(dir.path()).await;
    let (a, b) = (Node::over_relay(&relay.url).await, Node::over_relay(&relay.url).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;

    relay.stop().await;
    for node in [&a, &b] {
        assert!(node.relays().wait_until(WAIT, |links| !links[0].connected).await);
    }
    alice.say(&room, "while the relay was down").await;
    // The outage itself: node A tries at about 0, 0.5, 1.5 and 3.5 s, each
    // attempt failing at once for want of a relay, and would next try at 7.5 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.restart().await;
    for node in [&a, &b] {
        assert!(node.relays().wait_until(WAIT, |links| links[0].welcomes == 2).await);
    }
    // Delivered now, not when node A's backoff runs out 3.5 s later.
    let delivered =
        tokio::time::timeout(Duration::from_millis(1500), bob.sees_message(&room, "while the relay was down"));
    delivered.await.expect("node A sends within 1.5 s of its relay welcoming it back");
}

/// Waits until every user's node has the same current state in `room`, and returns it.
async fn same_state(room: &str, users: &[&User<'_>]) -> String {
    mesh::eventually("the same state on every node", || async {
        let mut states = Vec::new();
        for user in users {
            let (status, state) = user.call("GET", &format!("rooms/{}/state", enc(room)), None).await;
            assert_eq!(status, 200, "{state}");
            let mut ids: Vec<String> =
                state.as_array().unwrap().iter().map(|e| format!("{} {}", e["type"], e["event_id"])).collect();
            ids.sort();
            states.push(ids.join("\n"));
        }
        states.windows(2).all(|w| w[0] == w[1]).then(|| states[0].clone())
    })
    .await
}

/// What a node queued for another stays queued through a restart, and goes out
/// once the other is reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_queue_survives_a_restart() {
    let network = MemoryNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start_on_disk(&network, dir.path()).await;
    let b = Node::start(&network).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;

    network.partition(a.key, b.key);
    alice.say(&room, "queued through a restart").await;
    mesh::eventually("the message in node A's send queue", || async { (queued(&a).await > 0).then_some(()) }).await;
    let (id, token) = (alice.id.clone(), alice.token.clone());
    drop(alice);
    let key = a.key;
    a.stop().await;

    let a = Node::start_on_disk(&network, dir.path()).await;
    assert_eq!(a.key, key, "the node keeps its key");
    assert!(queued(&a).await > 0, "the queue is on disk");
    network.heal(a.key, b.key);
    let alice = a.session(&id, &token);
    bob.sees_message(&room, "queued through a restart").await;
    mesh::eventually("node A's send queue emptied", || async { (queued(&a).await == 0).then_some(()) }).await;
    alice.say(&room, "and after it").await;
    bob.sees_message(&room, "and after it").await;
}

async fn queued(node: &Node) -> usize {
    node.hs.sender().queued(&node.hs).await.unwrap()
}

/// A gap wider than `get_missing_events` answers at once closes on the state
/// the sending node gives for the new event: the room goes on, and the node
/// that missed history is back in the conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_gap_closes_on_the_senders_state() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;

    b.disconnect().await;
    for n in 0..150 {
        alice.say(&room, &format!("lost {n}")).await;
    }
    ok(alice
        .call("PUT", &format!("rooms/{}/state/m.room.topic/", enc(&room)), Some(json!({ "topic": "while away" })))
        .await);
    assert!(network.lose_mailbox(b.key) > 0, "nothing reached bob's mailbox");
    b.connect();

    alice.say(&room, "after the gap").await;
    bob.sees_message(&room, "after the gap").await;
    let topic = ok(bob.call("GET", &format!("rooms/{}/state/m.room.topic/", enc(&room)), None).await);
    assert_eq!(topic["topic"], "while away", "the state the gap hid is known");
    bob.say(&room, "bob after the gap").await;
    alice.sees_message(&room, "bob after the gap").await;
}

/// A picture uploaded on node A is shown by node B's clients: node B fetches
/// it over federation once, keeps it, and thumbnails it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_another_node_is_fetched_and_kept() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut picture = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(300, 150, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .write_to(&mut picture, image::ImageFormat::Jpeg)
        .unwrap();
    let picture = picture.into_inner();

    let raw = |node: &Node, method: &str, path: &str, token: &str, body: Vec<u8>| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "image/jpeg")
            .body(bytes::Bytes::from(body))
            .unwrap();
        let hs = node.hs.clone();
        async move { hs.handle(request).await }
    };
    let uploaded = raw(&a, "POST", "/_matrix/media/v3/upload?filename=photo.jpg", &alice.token, picture.clone()).await;
    let uri: serde_json::Value = serde_json::from_slice(uploaded.body()).unwrap();
    let mxc = uri["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();

    let download = format!("/_matrix/client/v1/media/download/{mxc}");
    let got = raw(&b, "GET", &download, &bob.token, Vec::new()).await;
    assert_eq!(got.status(), 200, "{:?}", String::from_utf8_lossy(got.body()));
    assert_eq!(got.body().as_ref(), picture.as_slice());
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.headers()["content-disposition"], "inline; filename=photo.jpg");
    let thumbnail =
        raw(&b, "GET", &format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=60&height=60"), &bob.token, Vec::new())
            .await;
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    let size = image::ImageReader::new(std::io::Cursor::new(thumbnail.body().to_vec())).with_guessed_format().unwrap();
    assert_eq!(size.into_dimensions().unwrap(), (60, 30));

    // A file larger than a frame holds comes over a part at a time.
    let large: Vec<u8> = (0..3_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let uploaded = raw(&a, "POST", "/_matrix/media/v3/upload?filename=big.bin", &alice.token, large.clone()).await;
    let uri: serde_json::Value = serde_json::from_slice(uploaded.body()).unwrap();
    let large_mxc = uri["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let large_download = format!("/_matrix/client/v1/media/download/{large_mxc}");
    let got = raw(&b, "GET", &large_download, &bob.token, Vec::new()).await;
    assert_eq!(got.status(), 200, "{:?}", String::from_utf8_lossy(&got.body()[..got.body().len().min(300)]));
    assert!(got.body().as_ref() == large.as_slice(), "{} bytes, not {}", got.body().len(), large.len());

    // Kept: node B serves them with node A out of reach.
    network.partition(a.key, b.key);
    let again = raw(&b, "GET", &download, &bob.token, Vec::new()).await;
    assert_eq!(again.body().as_ref(), picture.as_slice());
    assert!(raw(&b, "GET", &large_download, &bob.token, Vec::new()).await.body().as_ref() == large.as_slice());
    let missing =
        raw(&b, "GET", &format!("/_matrix/client/v1/media/download/{}/nosuch", a.name), &bob.token, Vec::new()).await;
    assert_eq!(missing.status(), 502, "node A is out of reach: {:?}", String::from_utf8_lossy(missing.body()));
    network.heal(a.key, b.key);
    let missing =
        raw(&b, "GET", &format!("/_matrix/client/v1/media/download/{}/nosuch", a.name), &bob.token, Vec::new()).await;
    assert_eq!(missing.status(), 404, "{:?}", String::from_utf8_lossy(missing.body()));
}

/// A user of node B walks a space of node A through a relay. Node B has the
/// space, which the user joined, but none of its rooms: it asks node A for
/// each, and knows a subspace's rooms from node A's answer for the subspace. A
/// room node A holds private, and one whose only server does not answer, are
/// left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_hierarchy_of_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let relay = LoopbackRelay::start(dir.path()).await;
    let (a, b) = (Node::over_relay(&relay.url).await, Node::over_relay(&relay.url).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let space_of =
        |name: &str| json!({ "preset": "public_chat", "name": name, "creation_content": { "type": "m.space" } });
    let space = alice.create_room(space_of("Space")).await;
    let sub = alice.create_room(space_of("Subspace")).await;
    let lobby = alice.create_room(json!({ "preset": "public_chat", "name": "Lobby", "topic": "Hello" })).await;
    let deep = alice.create_room(json!({ "preset": "public_chat", "name": "Deep" })).await;
    let secret = alice.create_room(json!({ "preset": "private_chat", "name": "Secret" })).await;
    let elsewhere = "!elsewhere:nosuch.example";
    let add = |parent: &str, child: &str, via: &str, order: &str| {
        let path = format!("rooms/{}/state/m.space.child/{}", enc(parent), enc(child));
        let content = json!({ "via": [via], "order": order });
        let alice = &alice;
        async move { alice.call("PUT", &path, Some(content)).await }
    };
    for (child, via, order) in [(&*lobby, &*a.name, "a"), (&sub, &a.name, "b"), (&secret, &a.name, "c")] {
        ok(add(&space, child, via, order).await);
    }
    ok(add(&space, elsewhere, "nosuch.example", "d").await);
    ok(add(&sub, &deep, &a.name, "a").await);
    alice.brings_in(&space, &bob).await;

    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space));
    let page = ok(bob.call("GET", &path, None).await);
    let ids: Vec<&str> = page["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [&*space, &lobby, &sub, &deep], "{page}");
    let lobby_summary = &page["rooms"][1];
    assert_eq!((&lobby_summary["name"], &lobby_summary["topic"]), (&json!("Lobby"), &json!("Hello")));
    assert_eq!(lobby_summary["num_joined_members"], 1);
    assert_eq!(page["rooms"][2]["room_type"], "m.space");
    assert_eq!(page["rooms"][2]["children_state"][0]["state_key"], deep.as_str());
    assert_eq!(page["rooms"][0]["num_joined_members"], 2);

    // What node A answers node B: the room, the children node B's users may
    // see, and those they may not; 404 for a room node A does not have.
    let a_name = ServerName::parse(&a.name).unwrap();
    let ask = |room: &str| {
        let request = get_hierarchy::v1::Request::new(room.try_into().unwrap());
        b.hs.federation().request(&a_name, request, false)
    };
    let answer = ask(&space).await.unwrap();
    assert_eq!(answer.room.summary.name.as_deref(), Some("Space"));
    assert_eq!(answer.room.children_state.len(), 4);
    let children: Vec<&str> = answer.children.iter().map(|c| c.room_id.as_str()).collect();
    assert_eq!(children, [&*lobby, &sub]);
    assert_eq!(answer.inaccessible_children, [secret.as_str()]);
    let missing = ask(&format!("!nosuch:{}", a.name)).await.unwrap_err();
    assert!(matches!(missing, FederationError::Remote { status: 404, .. }), "{missing:?}");
    ask(&secret).await.unwrap_err();
}

/// A memory store whose writes queueing for other servers fail while `failing`.
struct FailingQueue {
    store: glia::store::MemoryStore,
    failing: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for FailingQueue {
    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key).await
    }

    async fn scan_nonempty(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.store.scan_nonempty(table, range, direction, limit).await
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let queues = batch.ops.iter().any(|op| matches!(op, Op::Put { table: "outbound", .. }));
        if queues && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(StoreError::Backend("the disk is full".into()));
        }
        self.store.write(batch).await
    }
}

/// Events whose queueing for the other node failed still reach it, once, and
/// nothing stays queued: the sender reads the outbox again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_out_after_their_queueing_failed() {
    let network = MemoryNetwork::new();
    let store = std::sync::Arc::new(FailingQueue {
        store: glia::store::MemoryStore::new(glia::core::SCHEMA),
        failing: Default::default(),
        failed: Default::default(),
    });
    let a = Node::start_on(&network, store.clone()).await;
    let b = Node::start(&network).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;

    store.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    alice.say(&room, "while the queue fails").await;
    alice
        .eventually("the queueing to fail", || async {
            (store.failed.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
        })
        .await;
    store.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    alice.say(&room, "after").await;
    bob.sees_message(&room, "while the queue fails").await;
    bob.sees_message(&room, "after").await;
    alice
        .eventually("nothing queued", || async {
            let outbox = a.hs.store().scan("outbox", KeyRange::all(), Direction::Forward, 1).await.unwrap();
            (outbox.is_empty() && a.hs.sender().queued(&a.hs).await.unwrap() == 0).then_some(())
        })
        .await;
    let messages = ok(bob.call("GET", &format!("rooms/{}/messages?dir=b&limit=50", enc(&room)), None).await);
    let bodies: Vec<_> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["after", "while the queue fails"], "{messages}");
}

/// A kick or a ban reaches the node of the user it puts out, though that node
/// has no one left in the room once it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_and_a_ban_reach_the_node_of_their_target() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    let bobs_membership = format!("rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob.id));
    for (action, membership) in [("kick", "leave"), ("ban", "ban")] {
        alice.brings_in(&room, &bob).await;
        let body = json!({ "user_id": bob.id, "reason": action });
        ok(alice.call("POST", &format!("rooms/{}/{action}", enc(&room)), Some(body)).await);
        bob.eventually(&format!("the {action} on bob's node"), || async {
            let member = bob.call("GET", &bobs_membership, None).await.1;
            (member["membership"] == membership).then_some(())
        })
        .await;
    }
}

/// What one member changes shows on the other's node: a redaction, a new
/// display name (a member event in every room the user is in), a power level
/// granted and used, and the room's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactions_profiles_and_power_reach_the_other_node() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;

    let oops = alice.say(&room, "oops").await;
    bob.sees_message(&room, "oops").await;
    let redact = format!("rooms/{}/redact/{}/r1", enc(&room), enc(&oops));
    ok(alice.call("PUT", &redact, Some(json!({ "reason": "typo" }))).await);
    let event = format!("rooms/{}/event/{}", enc(&room), enc(&oops));
    bob.eventually("the message redacted", || async {
        let event = bob.call("GET", &event, None).await.1;
        (event["content"] == json!({}) && event["unsigned"]["redacted_because"].is_object()).then_some(())
    })
    .await;

    let name = json!({ "displayname": "Alice A." });
    ok(alice.call("PUT", &format!("profile/{}/displayname", enc(&alice.id)), Some(name)).await);
    let member = format!("rooms/{}/state/m.room.member/{}", enc(&room), enc(&alice.id));
    bob.eventually("alice's new name", || async {
        (bob.call("GET", &member, None).await.1["displayname"] == "Alice A.").then_some(())
    })
    .await;

    let levels_path = format!("rooms/{}/state/m.room.power_levels/", enc(&room));
    let mut levels = ok(alice.call("GET", &levels_path, None).await);
    levels["users"][&bob.id] = json!(50);
    ok(alice.call("PUT", &levels_path, Some(levels)).await);
    let name_path = format!("rooms/{}/state/m.room.name/", enc(&room));
    bob.eventually("bob allowed to name the room", || async {
        let (status, _) = bob.call("PUT", &name_path, Some(json!({ "name": "Bob's" }))).await;
        (status == 200).then_some(())
    })
    .await;
    alice
        .eventually("the name bob gave", || async {
            (alice.call("GET", &name_path, None).await.1["name"] == "Bob's").then_some(())
        })
        .await;
}

/// A user who left a public room joins it again, through the servers their
/// node remembers it by, or one they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_left_a_public_room_joins_again() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let via = alice.id.split(':').nth(1).unwrap().to_owned();
    ok(bob.call("POST", &format!("join/{}?server_name={via}", enc(&room)), Some(json!({}))).await);
    alice.sees_joined(&room, &bob.id).await;
    for rejoin in [format!("join/{}", enc(&room)), format!("rooms/{}/join", enc(&room))] {
        ok(bob.call("POST", &format!("rooms/{}/leave", enc(&room)), Some(json!({}))).await);
        alice
            .eventually("bob gone", || async {
                let members = alice.call("GET", &format!("rooms/{}/joined_members", enc(&room)), None).await.1;
                members["joined"][&bob.id].is_null().then_some(())
            })
            .await;
        ok(bob.call("POST", &rejoin, Some(json!({}))).await);
        alice.sees_joined(&room, &bob.id).await;
        alice.say(&room, &format!("welcome back through {rejoin}")).await;
        bob.sees_message(&room, &format!("welcome back through {rejoin}")).await;
    }
}

/// An invite withdrawn (the invited user kicked before joining) leaves the
/// invited user's node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_invite_goes_from_the_invited_node() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({})).await;
    alice.invite(&room, &bob).await;
    ok(alice.call("POST", &format!("rooms/{}/kick", enc(&room)), Some(json!({ "user_id": bob.id }))).await);
    bob.sees("the invite gone", |s| s["rooms"]["invite"][&room].is_null().then_some(())).await;
}

/// The bodies of the messages starting with `prefix` that `user` can page back
/// to in `room`, `limit` events a page, oldest first, and the types of every
/// event in those pages.
async fn history(user: &User<'_>, room: &str, prefix: &str, limit: usize) -> (Vec<String>, Vec<String>) {
    let (mut bodies, mut types, mut from) = (Vec::new(), Vec::new(), String::new());
    loop {
        let path = format!("rooms/{}/messages?dir=b&limit={limit}{from}", enc(room));
        let page = ok(user.call("GET", &path, None).await);
        for event in page["chunk"].as_array().unwrap() {
            types.push(event["type"].as_str().unwrap().to_owned());
            let body = event["content"]["body"].as_str().unwrap_or_default();
            if event["type"] == "m.room.message" && body.starts_with(prefix) {
                bodies.push(body.to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = format!("&from={}", enc(end)),
            None => break,
        }
    }
    bodies.reverse();
    (bodies, types)
}

/// A user who joins a room that has history pages back through it (asked of
/// the room's node as `/messages` reaches the join), in order, each event once,
/// from the room's creation on; none of it shows in `/sync` as new. Where the
/// history is for members only, the messages from before the join stay hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_joins_later_pages_back_through_the_history() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Old times" })).await;
    // More than one backfill answer holds: the first ends on the state before its oldest event.
    let said: Vec<String> = (0..130).map(|n| format!("before bob {n}")).collect();
    let mut ids = Vec::new();
    for body in &said {
        ids.push(alice.say(&room, body).await);
    }
    // An old message, edited and reacted to before bob came.
    let old = &ids[5];
    let edit = json!({
        "msgtype": "m.text", "body": "* edited",
        "m.new_content": { "msgtype": "m.text", "body": "edited" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": old },
    });
    let reaction = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": old, "key": "👍" } });
    ok(alice.call("PUT", &format!("rooms/{}/send/m.room.message/edit", enc(&room)), Some(edit)).await);
    ok(alice.call("PUT", &format!("rooms/{}/send/m.reaction/like", enc(&room)), Some(reaction)).await);
    // A thread on an old message, with a reply from before bob came.
    let thread = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": ids[7] } });
    ok(alice
        .call("PUT", &format!("rooms/{}/send/m.room.message/old-reply", enc(&room)), Some(thread("old reply")))
        .await);
    let via = alice.id.split(':').nth(1).unwrap().to_owned();
    let since = bob.sync().await["next_batch"].as_str().unwrap().to_owned();
    ok(bob.call("POST", &format!("join/{}?server_name={via}", enc(&room)), Some(json!({}))).await);
    let joined = ok(bob.call("GET", &format!("sync?timeout=0&since={}", enc(&since)), None).await);
    let timeline = joined["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().clone();
    assert!(timeline.iter().all(|e| e["type"] != "m.room.message"), "nothing from before the join is new");
    // A reply in the thread and a message after the join, which bob has
    // before paging back.
    ok(alice
        .call("PUT", &format!("rooms/{}/send/m.room.message/new-reply", enc(&room)), Some(thread("new reply")))
        .await);
    let hello = alice.say(&room, "hello bob").await;
    let next = bob
        .sees("hello bob", |s| {
            let timeline = s["rooms"]["join"][&room]["timeline"]["events"].as_array()?;
            timeline.iter().any(|e| e["event_id"] == hello.as_str()).then(|| s["next_batch"].clone())
        })
        .await;

    // Pages larger than one backfill answer: a page short of its limit still
    // says where to go on while the room's start is not here.
    let (bodies, types) = history(&bob, &room, "before bob", 150).await;
    assert_eq!(bodies, said);
    assert_eq!(types.last().map(String::as_str), Some("m.room.create"), "back to the room's creation");
    assert_eq!(types.iter().filter(|t| *t == "m.room.create").count(), 1);
    // Placed once: paging again asks nothing more and finds the same.
    assert_eq!(history(&bob, &room, "before bob", 7).await.0, said);
    // With their relations: the edit bundled, the reaction listed.
    let event = ok(bob.call("GET", &format!("rooms/{}/event/{}", enc(&room), enc(old)), None).await);
    assert_eq!(event["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"], "edited", "{event}");
    let path = format!("/_matrix/client/v1/rooms/{}/relations/{}/m.annotation", enc(&room), enc(old));
    let related = ok(bob.call("GET", &path, None).await);
    let keys: Vec<&Value> =
        related["chunk"].as_array().unwrap().iter().map(|e| &e["content"]["m.relates_to"]["key"]).collect();
    assert_eq!(keys, [&json!("👍")], "{related}");
    // The thread's latest reply is the newest, not the one that reached bob last.
    let root = ok(bob.call("GET", &format!("rooms/{}/event/{}", enc(&room), enc(&ids[7])), None).await);
    let summary = &root["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        (summary["count"].clone(), summary["latest_event"]["content"]["body"].clone()),
        (json!(2), json!("new reply"))
    );
    let after = ok(bob.call("GET", &format!("sync?timeout=0&since={}", enc(next.as_str().unwrap())), None).await);
    assert!(after["rooms"]["join"][&room]["timeline"]["events"].as_array().is_none_or(|events| events.is_empty()));
    // Found by search, by rank and by recency: by when they were sent, so the
    // message since the join comes before those backfilled after it.
    let bob = &bob;
    let search = |criteria: Value| async move {
        let found =
            ok(bob.call("POST", "search", Some(json!({ "search_categories": { "room_events": criteria } }))).await);
        let results = found["search_categories"]["room_events"]["results"].as_array().unwrap().clone();
        let bodies: Vec<String> =
            results.iter().map(|r| r["result"]["content"]["body"].as_str().unwrap().to_owned()).collect();
        (found["search_categories"]["room_events"]["count"].clone(), bodies)
    };
    assert_eq!(search(json!({ "search_term": "before 77" })).await.1, ["before bob 77"]);
    let (count, bodies) = search(json!({ "search_term": "bob", "order_by": "recent", "filter": { "limit": 3 } })).await;
    assert_eq!((count, bodies), (json!(131), vec!["hello bob".to_owned(), said[129].clone(), said[128].clone()]));

    // Members only: a second room, where bob joins after the messages.
    let hidden = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    alice.say(&hidden, "members only").await;
    ok(bob.call("POST", &format!("join/{}?server_name={via}", enc(&hidden)), Some(json!({}))).await);
    alice.say(&hidden, "after bob").await;
    bob.sees_message(&hidden, "after bob").await;
    let (bodies, _) = history(bob, &hidden, "", 7).await;
    assert_eq!(bodies, ["after bob"]);
}
