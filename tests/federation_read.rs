//! The read side of the Federation API between nodes in one process: events,
//! state, auth chains, backfill, missing events, queries and the public room
//! directory, each answer checked against what the answering node stored.
//!
//! A remote user joins a room without the federation join: the test signs the
//! join PDU with the remote node's key and hands it to the room's node, as a
//! transaction would.

// Native only: the nodes run on tokio, and wasm-pack builds every test crate.
#![cfg(not(target_arch = "wasm32"))]

mod mesh;

use std::collections::BTreeSet;

use glia::{
    core::{
        pdu::{self, NewEvent, Pdu, Placement},
        service::rooms::Outcome,
    },
    p2p::memory::MemoryNetwork,
    Homeserver,
};
use mesh::{enc, ok, Node, User};
use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        directory::{get_public_rooms, get_public_rooms_filtered},
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        query::{get_profile_information, get_room_information},
    },
    canonical_json::CanonicalJsonObject,
    events::{StateEventType, TimelineEventType},
    profile::ProfileFieldName,
    room_version_rules::RoomVersionRules,
    state_res::auth_types_for_event,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName,
    UInt, UserId,
};
use serde_json::{json, value::RawValue, Value};

fn server(node: &Node) -> OwnedServerName {
    ServerName::parse(&node.name).unwrap()
}

/// A room made through the client API of `user`'s node.
async fn create_room(user: &User<'_>, body: Value) -> OwnedRoomId {
    RoomId::parse(user.create_room(body).await).unwrap()
}

/// Sends a text message as `user` and returns its event ID.
async fn say(user: &User<'_>, room_id: &RoomId, body: &str) -> OwnedEventId {
    EventId::parse(user.say(room_id.as_str(), body).await).unwrap()
}

async fn set_state(user: &User<'_>, room_id: &RoomId, kind: &str, content: Value) -> OwnedEventId {
    let path = format!("rooms/{}/state/{kind}/", enc(room_id.as_str()));
    let sent = ok(user.call("PUT", &path, Some(content)).await);
    EventId::parse(sent["event_id"].as_str().unwrap()).unwrap()
}

/// An event by `sender`, a user of `signer`, signed by `signer` and placed as
/// `host` places its own: after the room's forward extremities, with the auth
/// events the spec selects from its current state.
async fn remote_event(
    host: &Homeserver,
    signer: &Homeserver,
    room_id: &RoomId,
    sender: &UserId,
    event: &NewEvent,
) -> Pdu {
    let room = host.rooms().room(room_id).await.unwrap();
    let rules = pdu::rules(&room.version).unwrap();
    let prev_events: Vec<OwnedEventId> = room.extremities.iter().map(|(id, _)| id.clone()).collect();
    let depth = room.extremities.iter().map(|(_, depth)| *depth).max().unwrap().saturating_add(UInt::from(1u32));
    let state = host.rooms().current_state(room_id).await.unwrap();
    let content = serde_json::value::to_raw_value(&event.content).unwrap();
    let auth_types =
        auth_types_for_event(&event.kind, sender, event.state_key.as_deref(), &content, &rules.authorization).unwrap();
    let auth_events: Vec<OwnedEventId> = auth_types.iter().filter_map(|key| state.get(key).cloned()).collect();
    let placement = Placement {
        room_id: Some(room_id),
        prev_events: &prev_events,
        auth_events: &auth_events,
        depth,
        origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
    };
    pdu::build(signer.key(), &rules, sender, event, placement).unwrap()
}

/// `@name` of `remote` joins `host`'s room, whose join rule lets anyone in.
async fn remote_join(host: &Node, remote: &Node, room_id: &RoomId, name: &str) -> OwnedEventId {
    let user = UserId::parse(format!("@{name}:{}", remote.name)).unwrap();
    let join = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "join" }));
    let pdu = remote_event(&host.hs, &remote.hs, room_id, &user, &join).await;
    assert_eq!(host.hs.rooms().receive(room_id, pdu.json.clone()).await.unwrap(), Outcome::Accepted);
    pdu.event_id
}

/// A PDU as another server reads it: signatures and hashes checked (a PDU
/// whose content does not match its hash comes back redacted), its ID computed.
fn read_pdu(raw: &RawValue, rules: &RoomVersionRules) -> Pdu {
    let json: CanonicalJsonObject = serde_json::from_str(raw.get()).unwrap();
    assert!(!json.contains_key("unsigned"), "a PDU carries no local unsigned data: {raw}");
    Pdu::from_remote(json, rules).unwrap_or_else(|err| panic!("{err}: {raw}"))
}

fn ids(pdus: &[Box<RawValue>], rules: &RoomVersionRules) -> Vec<OwnedEventId> {
    pdus.iter().map(|raw| read_pdu(raw, rules).event_id).collect()
}

async fn rules_of(host: &Homeserver, room_id: &RoomId) -> RoomVersionRules {
    pdu::rules(&host.rooms().room(room_id).await.unwrap().version).unwrap()
}

fn set(ids: impl IntoIterator<Item = OwnedEventId>) -> BTreeSet<OwnedEventId> {
    ids.into_iter().collect()
}

/// The status and `errcode` of a request another node refused.
fn refusal<T: std::fmt::Debug>(result: Result<T, glia::core::service::federation::FederationError>) -> (u16, String) {
    match result {
        Err(glia::core::service::federation::FederationError::Remote { status, body, .. }) => {
            let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
            (status, body["errcode"].as_str().unwrap_or_default().to_owned())
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Three nodes: A holds the rooms, B's user joins them, C has nobody in them.
struct World {
    a: Node,
    b: Node,
    c: Node,
}

async fn world() -> World {
    let network = MemoryNetwork::new();
    World { a: Node::start(&network).await, b: Node::start(&network).await, c: Node::start(&network).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_auth_chains_at_an_event() {
    let World { a, b, c } = world().await;
    let alice = a.user("alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let bob_join = remote_join(&a, &b, &room, "bob").await;
    let before_topic = say(&alice, &room, "first").await;
    set_state(&alice, &room, "m.room.topic", json!({ "topic": "tea" })).await;
    let message = say(&alice, &room, "second").await;
    let a_name = server(&a);
    let fed = b.hs.federation();
    let rules = rules_of(&a.hs, &room).await;

    // The state at the message is the state before it: the topic is in it.
    let answer = fed.request(&a_name, get_room_state_ids::v1::Request::new(message.clone(), room.clone()), false);
    let answer = answer.await.unwrap();
    let expected = a.hs.rooms().state_at(&message).await.unwrap().unwrap();
    assert_eq!(set(answer.pdu_ids.clone()), set(expected.values().cloned()));
    assert_eq!(answer.pdu_ids.len(), 8, "create, alice, power levels, join rules, visibility, guests, bob, topic");
    let [create, alice_join, levels, join_rules] = [
        ("m.room.create", ""),
        ("m.room.member", alice.id.as_str()),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
    ]
    .map(|(kind, key)| expected.get(&(StateEventType::from(kind), key.to_owned())).unwrap().clone());
    // Auth events name the sender's membership, the power levels and (for a
    // join) the join rules; since room version 12 never the create event, which
    // every check still reads, so it is in the chain too.
    assert_eq!(
        set(answer.auth_chain_ids.clone()),
        set([create.clone(), alice_join.clone(), levels.clone(), join_rules.clone()])
    );

    // The same as whole PDUs, checked as any server checks them.
    let full = fed.request(&a_name, get_room_state::v1::Request::new(message.clone(), room.clone()), false);
    let full = full.await.unwrap();
    assert_eq!(set(ids(&full.pdus, &rules)), set(answer.pdu_ids.clone()));
    assert_eq!(set(ids(&full.auth_chain, &rules)), set(answer.auth_chain_ids.clone()));
    let depths: Vec<UInt> = full.pdus.iter().map(|raw| read_pdu(raw, &rules).depth).collect();
    assert!(depths.windows(2).all(|w| w[0] <= w[1]), "shallowest first: {depths:?}");

    // Before the topic was set, the state had no topic.
    let earlier = fed.request(&a_name, get_room_state_ids::v1::Request::new(before_topic.clone(), room.clone()), false);
    let earlier = earlier.await.unwrap();
    assert_eq!(earlier.pdu_ids.len(), 7);

    // Auth chains of single events: a message's, and bob's join's.
    let auth = fed.request(&a_name, get_event_authorization::v1::Request::new(room.clone(), message.clone()), false);
    assert_eq!(
        set(ids(&auth.await.unwrap().auth_chain, &rules)),
        set([create.clone(), alice_join.clone(), levels.clone()])
    );
    let auth = fed.request(&a_name, get_event_authorization::v1::Request::new(room.clone(), bob_join.clone()), false);
    assert_eq!(
        set(ids(&auth.await.unwrap().auth_chain, &rules)),
        set([create.clone(), alice_join, levels, join_rules])
    );
    let auth = fed.request(&a_name, get_event_authorization::v1::Request::new(room.clone(), create.clone()), false);
    assert!(auth.await.unwrap().auth_chain.is_empty(), "nothing authorizes the create event");

    // A single event, as stored.
    let event = fed.request(&a_name, get_event::v1::Request::new(message.clone()), false).await.unwrap();
    assert_eq!(event.origin, a_name);
    let pdu = read_pdu(&event.pdu, &rules);
    assert_eq!(pdu.event_id, message);
    assert_eq!(pdu.json, a.hs.rooms().event(&message).await.unwrap().unwrap().pdu.json);

    // Unknown events and rooms are 404; a server with nobody in the room, 403.
    let unknown = EventId::parse("$unknownunknownunknownunknownunknownunknown0").unwrap();
    let nowhere = RoomId::parse("!nowhere:example.org").unwrap();
    assert_eq!(
        refusal(fed.request(&a_name, get_event::v1::Request::new(unknown.clone()), false).await),
        (404, "M_NOT_FOUND".into())
    );
    let r = fed.request(&a_name, get_room_state_ids::v1::Request::new(unknown.clone(), room.clone()), false).await;
    assert_eq!(refusal(r), (404, "M_NOT_FOUND".into()));
    let r = fed.request(&a_name, get_room_state_ids::v1::Request::new(message.clone(), nowhere.clone()), false).await;
    assert_eq!(refusal(r), (404, "M_NOT_FOUND".into()));
    let r = fed.request(&a_name, get_event_authorization::v1::Request::new(nowhere, message.clone()), false).await;
    assert_eq!(refusal(r), (404, "M_NOT_FOUND".into()));

    let outsider = c.hs.federation();
    assert_eq!(
        refusal(outsider.request(&a_name, get_event::v1::Request::new(message.clone()), false).await),
        (403, "M_FORBIDDEN".into())
    );
    let r = outsider.request(&a_name, get_room_state_ids::v1::Request::new(message.clone(), room.clone()), false).await;
    assert_eq!(refusal(r), (403, "M_FORBIDDEN".into()));
    let r = outsider.request(&a_name, get_room_state::v1::Request::new(message.clone(), room.clone()), false).await;
    assert_eq!(refusal(r), (403, "M_FORBIDDEN".into()));
    let r = outsider
        .request(&a_name, get_event_authorization::v1::Request::new(room.clone(), message.clone()), false)
        .await;
    assert_eq!(refusal(r), (403, "M_FORBIDDEN".into()));
    let r = outsider
        .request(&a_name, get_backfill::v1::Request::new(room.clone(), vec![message.clone()], UInt::from(5u32)), false)
        .await;
    assert_eq!(refusal(r), (403, "M_FORBIDDEN".into()));
    let r = outsider
        .request(&a_name, get_missing_events::v1::Request::new(room.clone(), vec![], vec![message]), false)
        .await;
    assert_eq!(refusal(r), (403, "M_FORBIDDEN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_walks_back_newest_first_within_its_limit() {
    let World { a, b, .. } = world().await;
    let alice = a.user("alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    remote_join(&a, &b, &room, "bob").await;
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(say(&alice, &room, &format!("message {n}")).await);
    }
    let (a_name, fed, rules) = (server(&a), b.hs.federation(), rules_of(&a.hs, &room).await);
    // The room is one chain here: its topological order, newest first, is the answer.
    let history: Vec<OwnedEventId> =
        a.hs.rooms()
            .topological(&room, None, glia::store::Direction::Backward, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, pdu)| pdu.event_id.clone())
            .collect();
    assert_eq!(history[0], sent[4]);

    let backfill = |v: Vec<OwnedEventId>, limit: u32| {
        fed.request(&a_name, get_backfill::v1::Request::new(room.clone(), v, UInt::from(limit)), false)
    };
    let all = backfill(vec![sent[4].clone()], 100).await.unwrap();
    assert_eq!(all.origin, a_name);
    assert_eq!(ids(&all.pdus, &rules), history, "every event, newest first, from the one asked for");
    let three = backfill(vec![sent[4].clone()], 3).await.unwrap();
    assert_eq!(ids(&three.pdus, &rules), &history[..3]);
    let from_middle = backfill(vec![sent[2].clone()], 2).await.unwrap();
    assert_eq!(ids(&from_middle.pdus, &rules), [sent[2].clone(), sent[1].clone()]);
    // Two starting points on one chain: the deeper one's walk covers the other.
    let both = backfill(vec![sent[1].clone(), sent[3].clone()], 3).await.unwrap();
    assert_eq!(ids(&both.pdus, &rules), [sent[3].clone(), sent[2].clone(), sent[1].clone()]);
    // Unknown starting points are passed over; none known is 404.
    let unknown = EventId::parse("$unknownunknownunknownunknownunknownunknown0").unwrap();
    let partly = backfill(vec![unknown.clone(), sent[0].clone()], 1).await.unwrap();
    assert_eq!(ids(&partly.pdus, &rules), [sent[0].clone()]);
    assert_eq!(refusal(backfill(vec![unknown], 5).await), (404, "M_NOT_FOUND".into()));
    // A limit past the cap is cut to it, not refused.
    let capped = backfill(vec![sent[4].clone()], 10_000).await.unwrap();
    assert_eq!(capped.pdus.len(), history.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_events_lie_between_what_a_server_has_and_what_it_got() {
    let World { a, b, .. } = world().await;
    let alice = a.user("alice").await;
    let alice_id = UserId::parse(&alice.id).unwrap();
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    remote_join(&a, &b, &room, "bob").await;
    let mut sent = Vec::new();
    for n in 0..6 {
        sent.push(say(&alice, &room, &format!("message {n}")).await);
    }
    let (a_name, fed, rules) = (server(&a), b.hs.federation(), rules_of(&a.hs, &room).await);
    let missing = |earliest: Vec<OwnedEventId>, latest: Vec<OwnedEventId>, limit: u32, min_depth: u32| {
        let mut request = get_missing_events::v1::Request::new(room.clone(), earliest, latest);
        request.limit = UInt::from(limit);
        request.min_depth = UInt::from(min_depth);
        fed.request(&a_name, request, false)
    };

    // Between message 1 (had) and message 5 (got): 2, 3, 4, oldest first.
    let between = missing(vec![sent[1].clone()], vec![sent[5].clone()], 10, 0).await.unwrap();
    assert_eq!(ids(&between.events, &rules), &sent[2..5]);
    // The limit keeps those nearest to the event got.
    let nearest = missing(vec![sent[1].clone()], vec![sent[5].clone()], 2, 0).await.unwrap();
    assert_eq!(ids(&nearest.events, &rules), &sent[3..5]);
    // Nothing shallower than min_depth.
    let depth = a.hs.rooms().event(&sent[4]).await.unwrap().unwrap().pdu.depth;
    let shallow = missing(vec![], vec![sent[5].clone()], 10, u32::try_from(u64::from(depth)).unwrap()).await.unwrap();
    assert_eq!(ids(&shallow.events, &rules), [sent[4].clone()]);

    // A fork: x and y both follow message 5, z merges them. A server that has
    // x has everything before it, so it misses y alone.
    let rooms = a.hs.rooms();
    let text = |body: &str| NewEvent::message("m.room.message".into(), json!({ "msgtype": "m.text", "body": body }));
    let x = rooms.send_after(&room, &alice_id, &text("x"), vec![sent[5].clone()]).await.unwrap().event_id.clone();
    let y = rooms.send_after(&room, &alice_id, &text("y"), vec![sent[5].clone()]).await.unwrap().event_id.clone();
    let z = rooms.send_after(&room, &alice_id, &text("z"), vec![x.clone(), y.clone()]).await.unwrap().event_id.clone();
    let fork = missing(vec![x.clone()], vec![z.clone()], 10, 0).await.unwrap();
    assert_eq!(ids(&fork.events, &rules), std::slice::from_ref(&y));
    let fork = missing(vec![sent[3].clone()], vec![z.clone()], 10, 0).await.unwrap();
    let got = ids(&fork.events, &rules);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(set(got[2..].iter().cloned()), set([x, y]), "the fork, after what it follows");
    assert_eq!(&got[..2], &sent[4..6]);

    let unknown = EventId::parse("$unknownunknownunknownunknownunknownunknown0").unwrap();
    assert_eq!(refusal(missing(vec![], vec![unknown], 10, 0).await), (404, "M_NOT_FOUND".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_history_is_hidden_from_servers_that_were_not_there() {
    let World { a, b, .. } = world().await;
    let alice = a.user("alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let shared = say(&alice, &room, "before joined-only").await;
    set_state(&alice, &room, "m.room.history_visibility", json!({ "history_visibility": "joined" })).await;
    let secret = say(&alice, &room, "before bob").await;
    let bob_join = remote_join(&a, &b, &room, "bob").await;
    let after = say(&alice, &room, "after bob").await;
    let (a_name, fed, rules) = (server(&a), b.hs.federation(), rules_of(&a.hs, &room).await);

    let get = |id: &OwnedEventId| fed.request(&a_name, get_event::v1::Request::new(id.clone()), false);
    assert_eq!(refusal(get(&secret).await), (403, "M_FORBIDDEN".into()));
    let seen = read_pdu(&get(&after).await.unwrap().pdu, &rules);
    assert_eq!(seen.event_id, after);
    assert_eq!(read_pdu(&get(&bob_join).await.unwrap().pdu, &rules).event_id, bob_join);
    // Shared history stays visible to a server in the room now.
    assert_eq!(read_pdu(&get(&shared).await.unwrap().pdu, &rules).event_id, shared);
    let state = fed.request(&a_name, get_room_state_ids::v1::Request::new(secret.clone(), room.clone()), false).await;
    assert_eq!(refusal(state), (403, "M_FORBIDDEN".into()));
    let backfill = get_backfill::v1::Request::new(room.clone(), vec![secret.clone()], UInt::from(5u32));
    assert_eq!(refusal(fed.request(&a_name, backfill, false).await), (403, "M_FORBIDDEN".into()));

    // Walking back from what it may see, the server gets what it may not
    // redacted: the DAG whole, the content gone.
    let backfill = get_backfill::v1::Request::new(room.clone(), vec![after.clone()], UInt::from(5u32));
    let walked = fed.request(&a_name, backfill, false).await.unwrap();
    let walked: Vec<Pdu> = walked.pdus.iter().map(|raw| read_pdu(raw, &rules)).collect();
    let walked_ids: Vec<&EventId> = walked.iter().map(|pdu| &*pdu.event_id).collect();
    assert_eq!(walked_ids[..3], [&*after, &*bob_join, &*secret]);
    let body = |pdu: &Pdu| serde_json::from_str::<Value>(pdu.content.get()).unwrap()["body"].clone();
    assert_eq!(body(&walked[0]), "after bob");
    assert_eq!(walked[2].content.get(), "{}", "redacted");
    assert_eq!(walked[3].kind, TimelineEventType::RoomHistoryVisibility);
    assert_eq!((&*walked[4].event_id, body(&walked[4])), (&*shared, json!("before joined-only")), "sent under shared");
    let missing = get_missing_events::v1::Request::new(room.clone(), vec![shared.clone()], vec![after.clone()]);
    let missing = fed.request(&a_name, missing, false).await.unwrap();
    let missing: Vec<Pdu> = missing.events.iter().map(|raw| read_pdu(raw, &rules)).collect();
    let missing_ids: Vec<&EventId> = missing.iter().map(|pdu| &*pdu.event_id).collect();
    assert_eq!(missing_ids[1..], [&*secret, &*bob_join]);
    assert_eq!(missing[1].content.get(), "{}", "redacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_aliases_of_this_node_answer_queries() {
    let World { a, b, .. } = world().await;
    let alice = a.user("alice").await;
    ok(alice
        .call("PUT", &format!("profile/{}/displayname", enc(&alice.id)), Some(json!({ "displayname": "Alice" })))
        .await);
    let room = create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "lobby" })).await;
    remote_join(&a, &b, &room, "bob").await;
    let (a_name, fed) = (server(&a), b.hs.federation());
    let alice_id = UserId::parse(&alice.id).unwrap();

    let profile =
        fed.request(&a_name, get_profile_information::v1::Request::new(alice_id.clone()), false).await.unwrap();
    assert_eq!(profile.get("displayname"), Some(&json!("Alice")));
    assert_eq!(profile.iter().count(), 1, "no avatar set");
    let mut one_field = get_profile_information::v1::Request::new(alice_id.clone());
    one_field.field = Some(ProfileFieldName::AvatarUrl);
    assert_eq!(fed.request(&a_name, one_field, false).await.unwrap().iter().count(), 0);
    let mut one_field = get_profile_information::v1::Request::new(alice_id);
    one_field.field = Some(ProfileFieldName::DisplayName);
    assert_eq!(fed.request(&a_name, one_field, false).await.unwrap().get("displayname"), Some(&json!("Alice")));
    for user in [format!("@nobody:{}", a.name), format!("@bob:{}", b.name)] {
        let request = get_profile_information::v1::Request::new(UserId::parse(user).unwrap());
        assert_eq!(refusal(fed.request(&a_name, request, false).await), (404, "M_NOT_FOUND".into()));
    }

    let alias = RoomAliasId::parse(format!("#lobby:{}", a.name)).unwrap();
    let resolved = fed.request(&a_name, get_room_information::v1::Request::new(alias), false).await.unwrap();
    assert_eq!(resolved.room_id, room);
    assert_eq!(resolved.servers, [a_name.clone(), server(&b)], "the servers joined, this node first");
    for alias in [format!("#nothing:{}", a.name), format!("#lobby:{}", b.name)] {
        let request = get_room_information::v1::Request::new(RoomAliasId::parse(alias).unwrap());
        assert_eq!(refusal(fed.request(&a_name, request, false).await), (404, "M_NOT_FOUND".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rooms_are_listed_here_and_through_federation() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let alice = a.user("alice").await;
    let lobby = create_room(
        &alice,
        json!({ "visibility": "public", "preset": "public_chat", "name": "The Lobby", "topic": "Say hello", "room_alias_name": "lobby" }),
    )
    .await;
    let kitchen =
        create_room(&alice, json!({ "visibility": "public", "preset": "public_chat", "name": "Kitchen" })).await;
    let attic = create_room(&alice, json!({ "preset": "private_chat", "name": "Attic" })).await;
    remote_join(&a, &b, &lobby, "bob").await;
    let (a_name, fed) = (server(&a), b.hs.federation());

    // Most joined members first; every field the spec lists.
    let listed = fed.request(&a_name, get_public_rooms::v1::Request::new(), false).await.unwrap();
    let rooms = serde_json::to_value(&listed.chunk).unwrap();
    assert_eq!(
        rooms,
        json!([
            {
                "room_id": lobby, "name": "The Lobby", "topic": "Say hello",
                "canonical_alias": format!("#lobby:{}", a.name), "num_joined_members": 2,
                "world_readable": false, "guest_can_join": false,
            },
            { "room_id": kitchen, "name": "Kitchen", "num_joined_members": 1, "world_readable": false, "guest_can_join": false },
        ])
    );
    assert_eq!(listed.total_room_count_estimate, Some(UInt::from(2u32)));
    assert_eq!((listed.next_batch, listed.prev_batch), (None, None));

    // Pages of one.
    let mut first = get_public_rooms::v1::Request::new();
    first.limit = Some(UInt::from(1u32));
    let first = fed.request(&a_name, first, false).await.unwrap();
    assert_eq!(first.chunk.iter().map(|r| &r.room_id).collect::<Vec<_>>(), [&lobby]);
    let mut second = get_public_rooms::v1::Request::new();
    second.limit = Some(UInt::from(1u32));
    second.since = first.next_batch.clone();
    let second = fed.request(&a_name, second, false).await.unwrap();
    assert_eq!(second.chunk.iter().map(|r| &r.room_id).collect::<Vec<_>>(), [&kitchen]);
    assert_eq!(second.next_batch, None);
    assert!(second.prev_batch.is_some());
    let mut bad = get_public_rooms::v1::Request::new();
    bad.since = Some("not a token".into());
    assert_eq!(refusal(fed.request(&a_name, bad, false).await), (400, "M_INVALID_PARAM".into()));

    // A search term, in the name, topic or alias.
    for (term, expected) in
        [("KITCHEN", vec![&kitchen]), ("hello", vec![&lobby]), ("lobby", vec![&lobby]), ("attic", vec![])]
    {
        let mut search = get_public_rooms_filtered::v1::Request::new();
        search.filter.generic_search_term = Some(term.into());
        let found = fed.request(&a_name, search, false).await.unwrap();
        assert_eq!(found.chunk.iter().map(|r| &r.room_id).collect::<Vec<_>>(), expected, "{term}");
    }

    // Publishing: the attic is private until its creator lists it.
    let path = format!("directory/list/room/{}", enc(attic.as_str()));
    assert_eq!(ok(alice.call("GET", &path, None).await), json!({ "visibility": "private" }));
    assert_eq!(
        ok(alice.call("GET", &format!("directory/list/room/{}", enc(lobby.as_str())), None).await)["visibility"],
        "public"
    );
    let carol = a.user("carol").await;
    assert_eq!(carol.call("PUT", &path, Some(json!({ "visibility": "public" }))).await.0, 403, "not in the room");
    ok(carol.call("POST", &format!("rooms/{}/join", enc(kitchen.as_str())), Some(json!({}))).await);
    let kitchen_path = format!("directory/list/room/{}", enc(kitchen.as_str()));
    let (status, body) = carol.call("PUT", &kitchen_path, Some(json!({ "visibility": "private" }))).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "no power over the canonical alias");
    ok(alice.call("PUT", &path, Some(json!({ "visibility": "public" }))).await);
    ok(alice.call("PUT", &kitchen_path, Some(json!({ "visibility": "private" }))).await);
    let (status, body) = alice.call("GET", "directory/list/room/%21nowhere%3Aexample.org", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));

    // The client API lists this node's rooms, and another node's through it.
    let here = a.call("GET", &format!("/_matrix/client/v3/publicRooms?server={}", a.name), None, None).await;
    let names = |body: &Value| -> Vec<String> {
        body["chunk"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(here.0, 200);
    assert_eq!(names(&here.1), ["The Lobby", "Attic"]);
    let remote_path = format!("/_matrix/client/v3/publicRooms?server={}", a.name);
    let there = b.call("GET", &remote_path, None, None).await;
    assert_eq!(there, here, "B relays A's answer");
    let dave = b.user("dave").await;
    let searched =
        ok(dave.call("POST", &remote_path, Some(json!({ "filter": { "generic_search_term": "attic" } }))).await);
    assert_eq!(names(&searched), ["Attic"]);
    assert_eq!(searched["total_room_count_estimate"], 1);
    let own = ok(dave.call("POST", &format!("publicRooms?server={}", b.name), Some(json!({}))).await);
    assert_eq!(own["chunk"], json!([]), "B publishes nothing");
    // With no server named, the directory spans the nodes online now.
    let network_wide = ok(dave.call("POST", "publicRooms", Some(json!({}))).await);
    assert_eq!(names(&network_wide), ["The Lobby", "Attic"]);
    let searched =
        ok(dave.call("POST", "publicRooms", Some(json!({ "filter": { "generic_search_term": "lobby" } }))).await);
    assert_eq!(names(&searched), ["The Lobby"]);

    // A node that cannot be reached is the client's clear 502.
    let gone = Node::start(&network).await;
    gone.disconnect().await;
    let (status, body) =
        b.call("GET", &format!("/_matrix/client/v3/publicRooms?server={}", gone.name), None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{body}");
    let (status, body) = b.call("GET", "/_matrix/client/v3/publicRooms?server=example.org", None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
}
