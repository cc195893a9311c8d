//! Federation between nodes in one process over the in-process network.

mod mesh;

use glia::p2p::memory::MemoryNetwork;
use mesh::Node;
use ruma::{api::federation::discovery::get_server_version::v1, ServerName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_another_through_frames() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let b_name = ServerName::parse(&b.name).unwrap();
    let version = a.hs.federation().request(&b_name, v1::Request::new(), false).await.unwrap();
    assert_eq!(version.server.unwrap().name.as_deref(), Some("glia"));
    drop(a);
}

/// The rooms section of a sync, after `since`.
async fn sync(user: &mesh::User<'_>, since: Option<&str>) -> serde_json::Value {
    let path = match since {
        Some(since) => format!("sync?timeout=0&since={since}"),
        None => "sync?timeout=0".to_owned(),
    };
    mesh::User::ok(user.call("GET", &path, None).await)
}

/// Waits until `user`'s sync shows something `found` picks out.
async fn sees<T>(user: &mesh::User<'_>, what: &str, found: impl Fn(&serde_json::Value) -> Option<T>) -> T {
    mesh::eventually(what, || async { found(&sync(user, None).await) }).await
}

fn timeline_bodies(sync: &serde_json::Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_invite_join_and_talk() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;

    let room = mesh::User::ok(alice.call("POST", "createRoom", Some(serde_json::json!({ "name": "P2P" }))).await);
    let room = room["room_id"].as_str().unwrap().to_owned();
    let invite = serde_json::json!({ "user_id": bob.id });
    mesh::User::ok(alice.call("POST", &format!("rooms/{}/invite", mesh::enc(&room)), Some(invite)).await);

    let state = sees(&bob, "bob's invite", |s| s["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned()).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "P2P"), "{state:?}");

    mesh::User::ok(bob.call("POST", &format!("join/{}", mesh::enc(&room)), Some(serde_json::json!({}))).await);
    let members = mesh::User::ok(bob.call("GET", &format!("rooms/{}/joined_members", mesh::enc(&room)), None).await);
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");

    // Alice's node hears of the join through the resident's send_join.
    mesh::eventually("alice to see bob joined", || async {
        let members = alice.call("GET", &format!("rooms/{}/joined_members", mesh::enc(&room)), None).await.1;
        members["joined"][&bob.id].is_object().then_some(())
    })
    .await;

    let message = |body: &str| serde_json::json!({ "msgtype": "m.text", "body": body });
    let send = |user: &'static str, n: u32| format!("rooms/{}/send/m.room.message/{user}{n}", mesh::enc(&room));
    mesh::User::ok(alice.call("PUT", &send("a", 1), Some(message("hello bob"))).await);
    sees(&bob, "alice's message on bob's node", |s| timeline_bodies(s, &room).contains(&"hello bob".to_owned()).then_some(())).await;
    mesh::User::ok(bob.call("PUT", &send("b", 1), Some(message("hello alice"))).await);
    sees(&alice, "bob's message on alice's node", |s| {
        timeline_bodies(s, &room).contains(&"hello alice".to_owned()).then_some(())
    })
    .await;
}
