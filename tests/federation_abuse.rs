//! A malicious peer: forged signatures, events for rooms it is not in, events
//! with wrong auth, replayed transactions, oversized bodies and floods. Each is
//! refused as the spec says, nothing it sent is stored, and the honest nodes
//! keep talking.

// Native only: the nodes run on tokio, and wasm-pack builds every test crate.
#![cfg(not(target_arch = "wasm32"))]

mod mesh;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use glia::{
    core::pdu::{self, NewEvent, Placement},
    p2p::{memory::MemoryNetwork, Frame, Inbound, Payload, PeerKey},
};
use mesh::{enc, ok, Node};
use ruma::{
    api::federation::{
        authentication::{XMatrix, XMatrixSigningInput},
        backfill::get_backfill,
        transactions::send_transaction_message::v1 as send,
    },
    canonical_json::CanonicalJsonObject,
    events::TimelineEventType,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt, UserId,
};
use serde_json::{json, value::to_raw_value, Value};

/// A `/send` of `pdus` from `from` to `to`, with its answer or the error status.
async fn transact(from: &Node, to: &Node, txn: &str, pdus: Vec<serde_json::Value>) -> Result<send::Response, u16> {
    let mut request = send::Request::new(txn.into(), from.hs.key().server_name().to_owned(), now());
    request.pdus = pdus.iter().map(|p| to_raw_value(p).unwrap()).collect();
    let to = ServerName::parse(&to.name).unwrap();
    match from.hs.federation().request(&to, request, false).await {
        Ok(response) => Ok(response),
        Err(glia::core::service::federation::FederationError::Remote { status, .. }) => Err(status),
        Err(err) => panic!("unexpected failure: {err}"),
    }
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

/// A message signed by `signer` as `sender`, placed after `prev` with `auth` events.
fn forged_message(
    signer: &Node,
    sender: &UserId,
    room: &RoomId,
    prev: &[OwnedEventId],
    auth: &[OwnedEventId],
) -> (OwnedEventId, serde_json::Value) {
    let rules = pdu::rules(&ruma::RoomVersionId::V12).unwrap();
    let event = NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": "forged" }));
    let placement = Placement {
        room_id: Some(room),
        prev_events: prev,
        auth_events: auth,
        depth: UInt::from(100u32),
        origin_server_ts: now(),
    };
    let pdu = pdu::build(signer.hs.key(), &rules, sender, &event, placement).unwrap();
    (pdu.event_id.clone(), serde_json::to_value(&pdu.json).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_peer_changes_nothing() {
    let network = MemoryNetwork::new();
    let (a, b, rogue) = (Node::start(&network).await, Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mallory = rogue.user("mallory").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.brings_in(&room_id, &bob).await;
    let room = RoomId::parse(&room_id).unwrap();
    let latest = EventId::parse(alice.last_event(&room_id).await).unwrap();
    let state = a.hs.rooms().current_state(&room).await.unwrap();
    let auth: Vec<OwnedEventId> = state
        .iter()
        .filter(|((kind, _), _)| kind.to_string() == "m.room.power_levels")
        .map(|(_, id)| id.clone())
        .collect();

    // A request signed by the rogue in another server's name.
    let mut forged = http::Request::builder()
        .method("PUT")
        .uri("/_matrix/federation/v1/send/forged")
        .body(Bytes::from(json!({ "origin": b.name, "origin_server_ts": 1, "pdus": [] }).to_string()))
        .unwrap();
    let input = XMatrixSigningInput::new(
        ServerName::parse(&b.name).unwrap(),
        ServerName::parse(&a.name).unwrap(),
        rogue.hs.key().key_pair(),
    );
    let header = XMatrix::sign_http_request(&forged, input).unwrap();
    forged.headers_mut().insert("authorization", (&header).into());
    let answer = a.hs.handle(forged).await;
    assert_eq!(answer.status(), 401);
    let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // A message in a room the rogue's user is not in.
    let (outsider, pdu) =
        forged_message(&rogue, &UserId::parse(&mallory.id).unwrap(), &room, &[latest.to_owned()], &auth);
    let answer = transact(&rogue, &a, "outsider", vec![pdu.clone()]).await.unwrap();
    assert!(answer.pdus[&outsider].is_err(), "{:?}", answer.pdus);
    // Replayed, it gets the same answer and still changes nothing.
    let again = transact(&rogue, &a, "outsider", vec![pdu]).await.unwrap();
    assert_eq!(again.pdus, answer.pdus);

    // A message in alice's name, signed by the rogue.
    let (impostor, pdu) =
        forged_message(&rogue, &UserId::parse(&alice.id).unwrap(), &room, &[latest.to_owned()], &auth);
    let answer = transact(&rogue, &a, "impostor", vec![pdu]).await.unwrap();
    assert!(answer.pdus[&impostor].is_err(), "{:?}", answer.pdus);
    assert!(a.hs.rooms().event(&impostor).await.unwrap().is_none(), "a forged event was stored");

    // A room of the rogue's own making, pushed by transaction.
    let rules = pdu::rules(&ruma::RoomVersionId::V12).unwrap();
    let create = NewEvent::state(TimelineEventType::RoomCreate, "", json!({ "room_version": "12" }));
    let placement = Placement {
        room_id: None,
        prev_events: &[],
        auth_events: &[],
        depth: UInt::from(1u32),
        origin_server_ts: now(),
    };
    let create = pdu::build(rogue.hs.key(), &rules, &UserId::parse(&mallory.id).unwrap(), &create, placement).unwrap();
    let answer = transact(&rogue, &a, "room", vec![serde_json::to_value(&create.json).unwrap()]).await;
    // Its room is unknown here, so the PDU has no event ID to answer for.
    assert!(answer.is_ok());
    assert!(a.hs.rooms().room(&create.room_id).await.is_err(), "a pushed room was created");

    // Too many PDUs, and a body over the limit.
    let many = vec![json!({}); 51];
    assert_eq!(transact(&rogue, &a, "many", many).await.unwrap_err(), 400);
    let huge = vec![json!({ "padding": "x".repeat(1 << 20) })];
    assert_eq!(transact(&rogue, &a, "huge", huge).await.unwrap_err(), 413);

    // A flood: refused past the limit, while the honest nodes go on.
    let flood = (0..1000).map(|n| {
        let (rogue, a) = (&rogue, &a);
        async move { transact(rogue, a, &format!("flood{n}"), vec![]).await.err() }
    });
    let limited = futures_util::future::join_all(flood).await.into_iter().filter(|e| *e == Some(429)).count();
    assert!(limited > 0, "1000 requests at once were all let through");
    bob.say(&room_id, "still here").await;
    alice.sees_message(&room_id, "still here").await;

    let messages = ok(alice.call("GET", &format!("rooms/{}/messages?dir=b&limit=100", enc(&room_id)), None).await);
    let bodies: Vec<&str> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(!bodies.contains(&"forged"), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_transaction_applies_once() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room_id = alice.create_room(json!({})).await;
    alice.invite(&room_id, &bob).await;
    ok(bob.call("POST", &format!("join/{}", enc(&room_id)), Some(json!({}))).await);
    bob.say(&room_id, "once").await;
    alice.sees_message(&room_id, "once").await;
    let id = EventId::parse(bob.last_event(&room_id).await).unwrap();
    let pdu = serde_json::to_value(&b.hs.rooms().event(&id).await.unwrap().unwrap().record.pdu).unwrap();
    let first = transact(&b, &a, "replay", vec![pdu.clone()]).await.unwrap();
    let second = transact(&b, &a, "replay", vec![pdu]).await.unwrap();
    assert_eq!(first.pdus, second.pdus);
    let messages = ok(alice.call("GET", &format!("rooms/{}/messages?dir=b&limit=100", enc(&room_id)), None).await);
    let once = messages["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "once").count();
    assert_eq!(once, 1);
}

/// Only the server that invited a user can withdraw the invite on the user's
/// node, which does not have the room: a kick from anyone else, or in the
/// inviter's name under another key, leaves the invite as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_withdrawn_by_its_inviter_only() {
    let network = MemoryNetwork::new();
    let (a, b, rogue) = (Node::start(&network).await, Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mallory = rogue.user("mallory").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.invite(&room_id, &bob).await;
    let room = RoomId::parse(&room_id).unwrap();
    let latest = EventId::parse(alice.last_event(&room_id).await).unwrap();

    let rules = pdu::rules(&ruma::RoomVersionId::V12).unwrap();
    let kick = NewEvent::state(TimelineEventType::RoomMember, bob.id.as_str(), json!({ "membership": "leave" }));
    for (n, sender) in [&mallory.id, &alice.id].into_iter().enumerate() {
        let placement = Placement {
            room_id: Some(&room),
            prev_events: std::slice::from_ref(&latest),
            auth_events: &[],
            depth: UInt::from(100u32),
            origin_server_ts: now(),
        };
        let pdu = pdu::build(rogue.hs.key(), &rules, &UserId::parse(sender).unwrap(), &kick, placement).unwrap();
        let sent = transact(&rogue, &b, &format!("withdraw{n}"), vec![serde_json::to_value(&pdu.json).unwrap()]).await;
        assert!(sent.is_ok(), "{sent:?}");
        let sync = ok(bob.call("GET", "sync?timeout=0", None).await);
        assert!(
            sync["rooms"]["invite"][&room_id].is_object(),
            "a kick signed by {sender}'s impostor withdrew the invite"
        );
    }
    ok(bob.call("POST", &format!("join/{}", enc(&room_id)), Some(json!({}))).await);
    alice.sees_joined(&room_id, &bob.id).await;
}

/// A backfill answer is checked as any PDU is: an event whose signature no
/// longer holds, or of another room, is not placed, and an answer of only
/// those changes nothing; the genuine events of an answer are placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_backfill_answer_places_nothing_forged() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    let message = EventId::parse(alice.say(&room_id, "genuine").await).unwrap();
    let elsewhere = EventId::parse(alice.say(&other, "of another room").await).unwrap();
    let via = alice.id.split(':').nth(1).unwrap().to_owned();
    ok(bob.call("POST", &format!("join/{}?server_name={via}", enc(&room_id)), Some(json!({}))).await);
    let room = RoomId::parse(&room_id).unwrap();
    let join = EventId::parse(bob.last_event(&room_id).await).unwrap();

    // What a backfill from bob's join brings, asked of alice's node directly.
    let a_name = ServerName::parse(&a.name).unwrap();
    let ask = get_backfill::v1::Request::new(room.clone(), vec![join], UInt::from(100u32));
    let answer = b.hs.federation().request(&a_name, ask, false).await.unwrap();
    let genuine: Vec<CanonicalJsonObject> =
        answer.pdus.iter().map(|raw| serde_json::from_str(raw.get()).unwrap()).collect();
    let mut forged = genuine.iter().find(|pdu| pdu["content"].to_string().contains("genuine")).unwrap().clone();
    forged.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(1u32.into()));
    let forged_id = pdu::event_id(&forged, &pdu::rules(&RoomVersionId::V12).unwrap()).unwrap();
    // Genuine, but of a room bob's node has not joined.
    let foreign = a.hs.rooms().event(&elsewhere).await.unwrap().unwrap().pdu.federation_json();

    let rooms = b.hs.rooms();
    let bad = rooms.check_history(&room, vec![forged, foreign]).await.unwrap();
    assert!(bad.is_empty());
    assert_eq!(rooms.history_roots(&bad).await.unwrap(), Vec::<OwnedEventId>::new());
    assert_eq!(rooms.receive_history(&room, bad, HashMap::new()).await.unwrap(), 0);
    for id in [&forged_id, &elsewhere, &message] {
        assert!(rooms.event(id).await.unwrap().is_none(), "{id} stored");
    }

    let genuine = rooms.check_history(&room, genuine).await.unwrap();
    assert!(rooms.receive_history(&room, genuine, HashMap::new()).await.unwrap() > 0);
    assert!(rooms.event(&message).await.unwrap().is_some_and(|e| e.record.stream.is_some()));
    assert!(rooms.event(&forged_id).await.unwrap().is_none());
}

/// What a lying peer answers: a status and a body, set between requests.
type Lie = Arc<Mutex<(u16, String)>>;

/// A peer on `network` that answers every request it gets with the current lie.
fn liar(network: &MemoryNetwork, lie: Lie) -> String {
    let key = glia::core::identity::NodeKey::from_seed(&rand_seed());
    let peer = PeerKey::of(&key);
    let (transport, mut inbound) = network.connect(peer);
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let Inbound::Frame(bytes) = message else { continue };
            let Ok(frame) = Frame::decode(bytes) else { continue };
            let Payload::Request(request) = &frame.payload else { continue };
            let (mut status, mut body) = lie.lock().unwrap().clone();
            // A join template as it should be, so that the lie is the join's answer.
            if request.uri().path().contains("/make_join/") {
                let user =
                    request.uri().path().rsplit('/').next().unwrap_or_default().replace("%40", "@").replace("%3A", ":");
                let event = json!({
                    "type": "m.room.member", "state_key": user, "sender": user, "room_id": "!r",
                    "content": { "membership": "join" }, "origin_server_ts": 1, "depth": 2,
                    "prev_events": [], "auth_events": [],
                });
                (status, body) = (200, json!({ "room_version": "12", "event": event }).to_string());
            }
            let response = http::Response::builder().status(status).header("content-type", "application/json");
            let answer = frame.respond(response.body(Bytes::from(body)).unwrap());
            let _ = glia::p2p::Transport::send(&transport, frame.origin, answer.encode());
        }
    });
    peer.to_string()
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    glia::core::Random::fill(&glia::core::OsRandom, &mut seed);
    seed
}

/// A peer answering with nonsense (not JSON, JSON of the wrong shapes, the
/// right shapes holding wrong things, under every status) makes each request
/// that reached it fail as a request to another server fails, with a Matrix
/// error: the node neither panics, nor hangs, nor answers 500 (an error of
/// its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answering_nonsense_fails_requests_cleanly() {
    let network = MemoryNetwork::new();
    let a = Node::start(&network).await;
    let alice = a.user("alice").await;
    let lie: Lie = Arc::default();
    let liar = liar(&network, lie.clone());
    let room = alice.create_room(json!({})).await;
    let bob = format!("@bob:{liar}");

    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let member = json!({
        "type": "m.room.member", "state_key": bob, "sender": bob, "room_id": "!r", "content": { "membership": 5 },
        "depth": "x", "prev_events": 1, "auth_events": [[]], "origin_server_ts": -1,
    });
    let bodies = [
        String::new(),
        "{".into(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        deep,
        json!({ "room_version": "12", "event": member, "state": [1, {}], "auth_chain": "x", "members_omitted": 1 })
            .to_string(),
        json!({ "room_version": "99", "event": {}, "state": [member], "auth_chain": [member] }).to_string(),
        json!({
            "displayname": 5, "avatar_url": [], "room_id": "x", "servers": "x", "chunk": [1], "rooms": 1,
            "device_keys": { bob.clone(): { "DEV": { "keys": 1, "user_id": "@other:x" } } }, "devices": "x",
            "one_time_keys": { bob.clone(): { "DEV": { "signed_curve25519:A": 1 } } }, "master_keys": [],
            "room": {}, "children": 1, "inaccessible_children": "x", "stream_id": -1, "user_id": 1,
        })
        .to_string(),
    ];
    let requests = [
        ("GET", format!("profile/{}", enc(&bob))),
        ("GET", format!("profile/{}/displayname", enc(&bob))),
        ("POST", "keys/query".to_owned()),
        ("POST", "keys/claim".to_owned()),
        ("GET", format!("/_matrix/client/v1/media/download/{liar}/abc")),
        ("GET", format!("/_matrix/client/v1/media/thumbnail/{liar}/abc?width=32&height=32")),
        ("POST", format!("publicRooms?server={liar}")),
        ("GET", format!("directory/room/{}", enc(&format!("#a:{liar}")))),
        ("POST", format!("join/{}?server_name={liar}", enc("!r"))),
        ("POST", format!("rooms/{}/invite", enc(&room))),
        ("GET", format!("/_matrix/client/v1/rooms/{}/hierarchy?via={liar}", enc("!r"))),
    ];
    let body_of = |path: &str| match path {
        "keys/query" => json!({ "device_keys": { bob.clone(): [] } }),
        "keys/claim" => json!({ "one_time_keys": { bob.clone(): { "DEV": "signed_curve25519" } } }),
        _ if path.ends_with("/invite") => json!({ "user_id": bob }),
        _ => json!({}),
    };
    let mut wrong = Vec::new();
    for status in [200, 404, 500] {
        for body in &bodies {
            *lie.lock().unwrap() = (status, body.clone());
            for (method, path) in &requests {
                let asked = alice.call(method, path, Some(body_of(path)));
                let said = |what: &str| format!("{method} {path} ← {status} {:.60}: {what}", body);
                match tokio::time::timeout(Duration::from_secs(15), asked).await {
                    Err(_) => wrong.push(said("no answer in 15 s")),
                    // 502 is how a failed request to another server is told.
                    Ok((500, answer)) => wrong.push(said(&answer.to_string())),
                    Ok((400.., answer)) if !answer["errcode"].as_str().is_some_and(|c| c.starts_with("M_")) => {
                        wrong.push(said(&answer.to_string()))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
}

/// State events whose content is of the wrong shape or at the edges (power
/// levels as strings or past the integer range, unknown join rules and
/// memberships, allow lists and invites that are not objects...), made by a
/// member with the power to send them: through the client API of the room's
/// own node, and as PDUs from the member's node. Each is refused or taken
/// (the auth rules judge what they can parse), never a panic or an internal
/// error, and the room goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_every_odd_shape_is_judged_without_breaking_the_room() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let via = a.name.clone();
    ok(bob.call("POST", &format!("join/{}?server_name={via}", enc(&room_id)), Some(json!({}))).await);
    alice.sees_joined(&room_id, &bob.id).await;
    let levels = json!({ "users": { bob.id.clone(): 100 } });
    ok(alice.call("PUT", &format!("rooms/{}/state/m.room.power_levels/", enc(&room_id)), Some(levels)).await);
    let room = RoomId::parse(&room_id).unwrap();
    let bob_id = UserId::parse(&bob.id).unwrap();
    let levels_path = format!("rooms/{}/state/m.room.power_levels/", enc(&room_id));
    bob.eventually("his power", || async {
        (bob.call("GET", &levels_path, None).await.1["users"][&bob.id] == 100).then_some(())
    })
    .await;

    let odd: Vec<(&str, String, Value)> = vec![
        ("m.room.power_levels", String::new(), json!({ "users": { alice.id.clone(): "100" } })),
        ("m.room.power_levels", String::new(), json!({ "users_default": 1e30, "ban": "x" })),
        (
            "m.room.power_levels",
            String::new(),
            json!({ "users": { "x": 1 }, "events": { "m.room.name": -9007199254740991i64 } }),
        ),
        ("m.room.power_levels", String::new(), json!({ "users": { bob.id.clone(): 9007199254740992u64 } })),
        ("m.room.power_levels", String::new(), json!({ "notifications": { "room": [] }, "events": [] })),
        ("m.room.join_rules", String::new(), json!({ "join_rule": 5 })),
        (
            "m.room.join_rules",
            String::new(),
            json!({ "join_rule": "restricted", "allow": [1, { "type": "m.room_membership" }] }),
        ),
        ("m.room.join_rules", String::new(), json!({ "join_rule": "knock_restricted", "allow": "x" })),
        ("m.room.member", bob.id.clone(), json!({ "membership": "foo" })),
        ("m.room.member", bob.id.clone(), json!({ "membership": 5 })),
        (
            "m.room.member",
            "@carol:example.org".into(),
            json!({ "membership": "invite", "third_party_invite": { "signed": 1 } }),
        ),
        ("m.room.member", bob.id.clone(), json!({ "membership": "join", "join_authorised_via_users_server": 5 })),
        ("m.room.member", "not a user".into(), json!({ "membership": "ban" })),
        ("m.room.history_visibility", String::new(), json!({ "history_visibility": [] })),
        ("m.room.server_acl", String::new(), json!({ "allow": "x", "deny": [1], "allow_ip_literals": "no" })),
        ("m.room.encryption", String::new(), json!({ "algorithm": 5, "rotation_period_ms": -1 })),
        (
            "m.room.third_party_invite",
            "t".into(),
            json!({ "display_name": 1, "key_validity_url": [], "public_key": {} }),
        ),
        ("m.room.create", String::new(), json!({ "room_version": "1", "creator": 5 })),
        ("m.room.name", String::new(), json!({ "name": 5 })),
        ("m.room.canonical_alias", String::new(), json!({ "alias": 5, "alt_aliases": "x" })),
        ("m.room.tombstone", String::new(), json!({ "replacement_room": 5 })),
        ("m.room.redaction", String::new(), json!({ "redacts": 5 })),
        ("m.space.child", "x".repeat(300), json!({ "via": "x" })),
    ];

    let mut wrong = Vec::new();
    for (n, (kind, key, content)) in odd.iter().enumerate() {
        // Through alice's client.
        let path = format!("rooms/{}/state/{kind}/{}", enc(&room_id), enc(key));
        let (status, answer) = alice.call("PUT", &path, Some(content.clone())).await;
        if status >= 500 || (status >= 400 && !answer["errcode"].as_str().is_some_and(|c| c.starts_with("M_"))) {
            wrong.push(format!("local {kind} {content}: {status} {answer}"));
        }
        // From bob's node, signed by it, after what the room's node has.
        let state = a.hs.rooms().current_state(&room).await.unwrap();
        let auth: Vec<OwnedEventId> = state
            .iter()
            .filter(|((state, state_key), _)| match state.to_string().as_str() {
                "m.room.power_levels" => true,
                "m.room.join_rules" => *kind == "m.room.member",
                "m.room.member" => state_key == bob.id.as_str(),
                _ => false,
            })
            .map(|(_, id)| id.clone())
            .collect();
        let latest = EventId::parse(alice.last_event(&room_id).await).unwrap();
        let rules = pdu::rules(&ruma::RoomVersionId::V12).unwrap();
        let event = NewEvent::state(TimelineEventType::from(*kind), key.clone(), content.clone());
        let placement = Placement {
            room_id: Some(&room),
            prev_events: &[latest],
            auth_events: &auth,
            depth: UInt::from(1000u32),
            origin_server_ts: now(),
        };
        // Content that is not canonical JSON (floats, integers past 2^53) cannot be signed.
        let Ok(pdu) = pdu::build(b.hs.key(), &rules, &bob_id, &event, placement) else { continue };
        let sent = serde_json::to_value(&pdu.json).unwrap();
        match transact(&b, &a, &format!("odd{n}"), vec![sent]).await {
            Ok(_) | Err(400..=499) => {}
            Err(status) => wrong.push(format!("remote {kind} {content}: {status}")),
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    bob.say(&room_id, "still here").await;
    alice.sees_message(&room_id, "still here").await;
    alice.say(&room_id, "and here").await;
    bob.sees_message(&room_id, "and here").await;
}
