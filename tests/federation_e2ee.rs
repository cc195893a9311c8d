//! End-to-end encryption between nodes: device keys, one-time keys,
//! cross-signing keys and to-device messages for users of another node, and
//! device list changes reaching the other node's clients; over the in-process
//! network and through a relay.

// Native only: the nodes run on tokio, and wasm-pack builds every test crate.
#![cfg(not(target_arch = "wasm32"))]

mod mesh;

use glia::p2p::memory::MemoryNetwork;
use mesh::{enc, ok, LoopbackRelay, Node, User};
use ruma::{api::federation::device::get_devices::v1 as devices, ServerName, UserId};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_to_device_messages_cross_nodes() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    keys_cross(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_to_device_messages_cross_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = LoopbackRelay::start(dir.path()).await;
    let (a, b) = (Node::over_relay(&relay.url).await, Node::over_relay(&relay.url).await);
    keys_cross(&a, &b).await;
}

async fn keys_cross(a: &Node, b: &Node) {
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let bob_device = device_of(&bob).await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;
    let since = next_batch(&alice).await;

    // Bob's keys reach alice's client through her node asking his.
    let upload = json!({
        "device_keys": device_keys(&bob, &bob_device, "ed"),
        "one_time_keys": {
            "signed_curve25519:AAAA": signed_key(&bob, &bob_device, "one"),
            "signed_curve25519:AAAB": signed_key(&bob, &bob_device, "two"),
        },
        "fallback_keys": { "signed_curve25519:FFFF": signed_key(&bob, &bob_device, "fallback") },
    });
    ok(bob.call("POST", "keys/upload", Some(upload)).await);
    let since = sees_change(&alice, &since, &bob.id, "bob's new device keys").await;
    let keys = ok(alice.call("POST", "keys/query", Some(json!({ "device_keys": { &bob.id: [] } }))).await);
    assert_eq!(keys["device_keys"][&bob.id][&bob_device], device_keys(&bob, &bob_device, "ed"), "{keys}");
    assert!(keys["failures"].as_object().is_none_or(|f| f.is_empty()), "{keys}");

    // One-time keys of bob's are handed out once each, then the fallback key.
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let body = json!({ "one_time_keys": { &bob.id: { &bob_device: "signed_curve25519" } } });
        let answer = ok(alice.call("POST", "keys/claim", Some(body)).await);
        let keys = answer["one_time_keys"][&bob.id][&bob_device].as_object().cloned().unwrap_or_default();
        assert_eq!(keys.len(), 1, "{answer}");
        claimed.extend(keys.keys().cloned());
    }
    assert_eq!(claimed, ["signed_curve25519:AAAA", "signed_curve25519:AAAB", "signed_curve25519:FFFF"]);

    // A to-device message goes to bob's device once, even when sent twice.
    let message = json!({ "messages": { &bob.id: { &bob_device: { "secret": "for bob" } } } });
    for _ in 0..2 {
        ok(alice.call("PUT", "sendToDevice/m.glia.test/t1", Some(message.clone())).await);
    }
    let everywhere = json!({ "messages": { &bob.id: { "*": { "secret": "for every device" } } } });
    ok(alice.call("PUT", "sendToDevice/m.glia.test/t2", Some(everywhere)).await);
    let received = bob
        .sees("alice's to-device messages", |s| {
            let events = s["to_device"]["events"].as_array()?.clone();
            (events.len() >= 2).then_some(events)
        })
        .await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0]["sender"], alice.id.as_str());
    assert_eq!(received[0]["type"], "m.glia.test");
    assert_eq!(received[0]["content"], json!({ "secret": "for bob" }));
    assert_eq!(received[1]["content"], json!({ "secret": "for every device" }));

    // Bob's cross-signing keys: master and self-signing reach alice, the
    // user-signing key stays his.
    let cross_signing = cross_signing_keys(&bob);
    ok(bob.call("POST", "keys/device_signing/upload", Some(cross_signing.clone())).await);
    let since = sees_change(&alice, &since, &bob.id, "bob's cross-signing keys").await;
    let keys = ok(alice.call("POST", "keys/query", Some(json!({ "device_keys": { &bob.id: [] } }))).await);
    assert_eq!(keys["master_keys"][&bob.id], cross_signing["master_key"], "{keys}");
    assert_eq!(keys["self_signing_keys"][&bob.id], cross_signing["self_signing_key"], "{keys}");
    assert!(keys["user_signing_keys"].as_object().is_none_or(|k| k.is_empty()), "{keys}");

    // Bob's self-signing key signs his device: alice sees the signature.
    let mut signed = device_keys(&bob, &bob_device, "ed");
    signed["signatures"][&bob.id] = json!({ "ed25519:self": "self-signature" });
    let body = json!({ &bob.id: { &bob_device: signed } });
    let answer = ok(bob.call("POST", "keys/signatures/upload", Some(body)).await);
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");
    let signature = alice
        .eventually("bob's device signed by his self-signing key", || async {
            let body = json!({ "device_keys": { &bob.id: [&bob_device] } });
            let keys = ok(alice.call("POST", "keys/query", Some(body)).await);
            keys["device_keys"][&bob.id][&bob_device]["signatures"][&bob.id]["ed25519:self"].as_str().map(str::to_owned)
        })
        .await;
    assert_eq!(signature, "self-signature");

    // Node B answers for bob's devices as the spec's `user/devices` has it.
    let bob_id = UserId::parse(&bob.id).unwrap();
    let server = ServerName::parse(&b.name).unwrap();
    let answer = a.hs.federation().request(&server, devices::Request::new(bob_id), false).await.unwrap();
    assert_eq!(answer.devices.len(), 1);
    assert_eq!(answer.devices[0].device_id.as_str(), bob_device);
    assert!(answer.stream_id > 0u32.into());
    assert!(answer.master_key.is_some() && answer.self_signing_key.is_some());

    // A device of bob's going away is news to alice too.
    let (status, challenge) = bob.call("DELETE", &format!("devices/{}", enc(&bob_device)), Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    let auth = json!({ "auth": {
        "type": "m.login.password", "session": challenge["session"],
        "identifier": { "type": "m.id.user", "user": bob.id }, "password": "correct horse",
    } });
    ok(bob.call("DELETE", &format!("devices/{}", enc(&bob_device)), Some(auth)).await);
    sees_change(&alice, &since, &bob.id, "bob's device deleted").await;
    let keys = ok(alice.call("POST", "keys/query", Some(json!({ "device_keys": { &bob.id: [] } }))).await);
    assert_eq!(keys["device_keys"][&bob.id], json!({}), "{keys}");
}

/// A to-device message for a node that cannot be reached waits in the durable
/// send queue, through a restart, and arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_wait_through_a_restart() {
    let network = MemoryNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start_on_disk(&network, dir.path()).await;
    let b = Node::start(&network).await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let bob_device = device_of(&bob).await;

    network.partition(a.key, b.key);
    let message = json!({ "messages": { &bob.id: { &bob_device: { "body": "queued" } } } });
    ok(alice.call("PUT", "sendToDevice/m.glia.test/queued", Some(message)).await);
    assert_eq!(a.hs.sender().queued(&a.hs).await.unwrap(), 1, "one EDU for node B");
    let id = alice.id.clone();
    drop(alice);
    a.stop().await;

    let a = Node::start_on_disk(&network, dir.path()).await;
    assert_eq!(a.hs.sender().queued(&a.hs).await.unwrap(), 1, "the queue is on disk");
    network.heal(a.key, b.key);
    let events = bob
        .sees("the queued message", |s| {
            let events = s["to_device"]["events"].as_array()?.clone();
            (!events.is_empty()).then_some(events)
        })
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["content"]["body"], "queued");
    assert_eq!(events[0]["sender"], id.as_str());
    mesh::eventually("node A's queue emptied", || async {
        (a.hs.sender().queued(&a.hs).await.unwrap() == 0).then_some(())
    })
    .await;
}

async fn device_of(user: &User<'_>) -> String {
    ok(user.call("GET", "account/whoami", None).await)["device_id"].as_str().unwrap().to_owned()
}

async fn next_batch(user: &User<'_>) -> String {
    user.sync().await["next_batch"].as_str().unwrap().to_owned()
}

/// Waits until `user`'s sync from `since` names `other` among those whose
/// devices changed; returns the position after it.
async fn sees_change(user: &User<'_>, since: &str, other: &str, what: &str) -> String {
    user.eventually(what, || async {
        let sync = ok(user.call("GET", &format!("sync?timeout=0&since={since}"), None).await);
        let changed = sync["device_lists"]["changed"].as_array()?.iter().any(|u| u == other);
        changed.then(|| sync["next_batch"].as_str().unwrap().to_owned())
    })
    .await
}

/// Device keys in the shape a client uploads; the node checks the shape only.
fn device_keys(user: &User<'_>, device: &str, ed: &str) -> Value {
    json!({
        "user_id": user.id,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "curve", format!("ed25519:{device}"): ed },
        "signatures": { &user.id: { format!("ed25519:{device}"): "signature" } },
    })
}

fn signed_key(user: &User<'_>, device: &str, key: &str) -> Value {
    json!({ "key": key, "signatures": { &user.id: { format!("ed25519:{device}"): "sig" } } })
}

fn cross_signing_keys(user: &User<'_>) -> Value {
    let key = |usage: &str, name: &str| {
        let mut key = json!({ "user_id": user.id, "usage": [usage], "keys": { format!("ed25519:{name}"): name } });
        if usage != "master" {
            key["signatures"] = json!({ &user.id: { "ed25519:master": "by-master" } });
        }
        key
    };
    json!({
        "master_key": key("master", "master"),
        "self_signing_key": key("self_signing", "self"),
        "user_signing_key": key("user_signing", "user"),
    })
}

/// A peer speaking for users of other servers, or sending what does not
/// parse, changes nothing: its EDUs are dropped and its queries answered for
/// this node's users only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_key_edus_and_queries_change_nothing() {
    use ruma::api::federation::{keys::get_keys::v1 as query, transactions::send_transaction_message::v1 as send};

    let network = MemoryNetwork::new();
    let (a, b, rogue) = (Node::start(&network).await, Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mallory = rogue.user("mallory").await;
    let alice_device = device_of(&alice).await;
    let room = alice.create_room(json!({})).await;
    alice.brings_in(&room, &bob).await;
    alice.brings_in(&room, &mallory).await;
    let since = next_batch(&alice).await;

    let to_device = |sender: &str, messages: Value| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.glia.test", "message_id": format!("m{}", unique()), "messages": messages,
        } })
    };
    let edus = [
        // Bob is not the rogue node's to speak for.
        to_device(&bob.id, json!({ &alice.id: { &alice_device: { "forged": true } } })),
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": bob.id, "device_id": "FORGED", "stream_id": 1, "prev_id": [], "deleted": true,
        } }),
        json!({ "edu_type": "m.signing_key_update", "content": { "user_id": bob.id } }),
        // Its own user's messages must be objects.
        to_device(&mallory.id, json!({ &alice.id: { &alice_device: "not an object" } })),
        to_device(&mallory.id, json!("not a map")),
        // And a message that does check out, to know the others were looked at.
        to_device(&mallory.id, json!({ &alice.id: { &alice_device: { "honest": true } } })),
    ];
    let mut request = send::Request::new("forged".into(), rogue.hs.key().server_name().to_owned(), now());
    request.edus = edus.iter().map(|edu| ruma::serde::Raw::new(edu).unwrap().cast_unchecked()).collect();
    let a_name = ServerName::parse(&a.name).unwrap();
    rogue.hs.federation().request(&a_name, request, false).await.unwrap();

    let sync = ok(alice.call("GET", &format!("sync?timeout=0&since={since}"), None).await);
    let events = sync["to_device"]["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["content"], json!({ "honest": true }));
    assert_eq!(events[0]["sender"], mallory.id.as_str());
    let changed = sync["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(!changed.iter().any(|user| user == bob.id.as_str()), "{sync}");

    // Queries are answered for node A's users only.
    let users = [(UserId::parse(&bob.id).unwrap(), Vec::new()), (UserId::parse(&alice.id).unwrap(), Vec::new())];
    let answer = rogue.hs.federation().request(&a_name, query::Request::new(users.into()), false).await.unwrap();
    assert_eq!(answer.device_keys.keys().map(|u| u.as_str()).collect::<Vec<_>>(), [alice.id.as_str()]);
    let bob_id = UserId::parse(&bob.id).unwrap();
    let refused = rogue.hs.federation().request(&a_name, devices::Request::new(bob_id), false).await;
    assert!(
        matches!(refused, Err(glia::core::service::federation::FederationError::Remote { status: 400, .. })),
        "{refused:?}"
    );
}

fn now() -> ruma::MilliSecondsSinceUnixEpoch {
    ruma::MilliSecondsSinceUnixEpoch::now()
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
