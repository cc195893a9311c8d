//! The state resolution fixtures of ruma-state-res 0.18.0 (its `tests/it/resolve`
//! fixtures and `insta` snapshots, copied to `tests/fixtures/state-res/`),
//! replayed through glia's own storage path.
//!
//! ruma's harness resolves the fixture events in memory. Here every event goes
//! into a fresh node through `Rooms::insert_verified`: the checks on receipt of
//! a remote PDU but for hashes and signatures, as the fixture events are unsigned
//! and their event IDs made up. Then:
//!
//! - for the batch fixtures, the room's current state (glia's resolution of its
//!   forward extremities), and the resolution of the states after every leaf of
//!   the DAG (what ruma's harness resolves, soft-failed leaves included), must
//!   both equal the snapshot;
//! - for the MSC4297 fixtures, glia's [`state::resolve`] of the two given state
//!   maps, over the stored events, must equal the snapshot.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    canonical_json::{to_canonical_value, CanonicalJsonObject, CanonicalJsonValue},
    room_version_rules::RoomVersionRules,
    EventId, Int, OwnedEventId, OwnedRoomId, RoomVersionId,
};

use super::node;
use crate::core::{
    pdu::{self, Pdu},
    service::{
        events::Events,
        rooms::Outcome,
        state::{self, State},
    },
    Homeserver,
};

/// A file of `tests/fixtures/state-res/`, built into the test binary.
macro_rules! data {
    ($path:literal) => {
        include_str!(concat!("../../../../tests/fixtures/state-res/", $path))
    };
}

/// A resolved state as (event type, state key) → event ID, in one form for glia's
/// states and ruma's snapshots, sorted so a failing comparison reads well.
type Resolved = BTreeMap<(String, String), String>;

fn resolved(state: &State) -> Resolved {
    state.iter().map(|((kind, key), id)| ((kind.to_string(), key.clone()), id.to_string())).collect()
}

/// The state in an `insta` snapshot: a YAML header between `---` lines, then the
/// JSON array ruma's harness printed.
fn snapshot(text: &str) -> Resolved {
    let body = text
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map(|(_, body)| body)
        .expect("an insta snapshot");
    let entries: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array of state events");
    entries
        .iter()
        .map(|entry| {
            let field = |name: &str| entry[name].as_str().unwrap_or_else(|| panic!("no {name} in {entry}")).to_owned();
            ((field("type"), field("state_key")), field("event_id"))
        })
        .collect()
}

/// A fixture set replayed into a fresh node.
struct Replay {
    hs: Homeserver,
    room_id: OwnedRoomId,
    rules: RoomVersionRules,
    /// Every event in the order it was inserted, with what glia made of it.
    outcomes: Vec<(OwnedEventId, Outcome)>,
    /// Events that are no event's `prev_events`: the DAG's leaves.
    leaves: Vec<OwnedEventId>,
}

impl Replay {
    /// Inserts the events of `batches`, batch after batch and in file order, the
    /// first being the room's create event.
    async fn new(batches: &[&str]) -> Self {
        let hs = node().await;
        let mut rules: Option<RoomVersionRules> = None;
        let mut room_id = None;
        let mut depths: HashMap<OwnedEventId, u32> = HashMap::new();
        let mut referenced: HashSet<OwnedEventId> = HashSet::new();
        let mut outcomes = Vec::new();
        for batch in batches {
            let events: Vec<serde_json::Value> = serde_json::from_str(batch).expect("a JSON array of PDUs");
            for event in events {
                let CanonicalJsonValue::Object(mut json) = to_canonical_value(event).expect("canonical JSON") else {
                    panic!("a PDU is a JSON object");
                };
                // Not part of a PDU: the fixtures carry the event ID alongside, and
                // some carry notes for their readers.
                let event_id = match json.remove("event_id") {
                    Some(CanonicalJsonValue::String(id)) => EventId::parse(id).expect("a valid event ID"),
                    other => panic!("no event_id: {other:?}"),
                };
                json.remove("test-comments");
                let rules = rules.get_or_insert_with(|| version_rules(&json));
                let prev_events = prev_events(&json);
                // The fixtures have no depths (ruma's resolution does not read them)
                // but glia's PDUs need one: what a sender would give, one more than
                // the deepest prev event.
                let depth = prev_events.iter().map(|id| depths[id] + 1).max().unwrap_or(1);
                json.insert("depth".into(), CanonicalJsonValue::Integer(Int::from(depth)));
                depths.insert(event_id.clone(), depth);
                referenced.extend(prev_events);

                let pdu = Pdu::from_stored(event_id.clone(), json, rules).expect("a readable PDU");
                room_id.get_or_insert_with(|| pdu.room_id.clone());
                let outcome = hs
                    .rooms()
                    .insert_verified(pdu)
                    .await
                    .unwrap_or_else(|err| panic!("{event_id} was not stored: {err}\nbefore it: {outcomes:#?}"));
                outcomes.push((event_id, outcome));
            }
        }
        let leaves = outcomes.iter().map(|(id, _)| id.clone()).filter(|id| !referenced.contains(id)).collect();
        Self {
            hs,
            room_id: room_id.expect("at least one event"),
            rules: rules.expect("at least one event"),
            outcomes,
            leaves,
        }
    }

    /// Resolves `forks` with glia's state resolution over the node's stored events.
    async fn resolve(&self, forks: &[Arc<State>]) -> Resolved {
        // `Events` is only a cache over the store the node writes to, so a fresh
        // one reads the same events as the node's own.
        let state = state::resolve(self.hs.store(), &Events::default(), &self.rules, &self.room_id, forks, &[])
            .await
            .unwrap_or_else(|err| panic!("state resolution failed: {err}\noutcomes: {:#?}", self.outcomes));
        resolved(&state)
    }

    /// The state after `event_id`: the state before it, plus the event if it is
    /// state and was not rejected.
    async fn state_after(&self, event_id: &EventId) -> Arc<State> {
        let rooms = self.hs.rooms();
        let mut state = (*rooms.state_at(event_id).await.unwrap().expect("a stored event")).clone();
        let event = rooms.event(event_id).await.unwrap().expect("a stored event");
        if let (Some(key), None) = (&event.pdu.state_key, &event.record.rejected) {
            state.insert((event.pdu.kind.to_string().into(), key.clone()), event_id.to_owned());
        }
        Arc::new(state)
    }

    /// A state map given as a list of event IDs (the MSC4297 fixtures), keyed by
    /// the stored events' types and state keys.
    async fn state_map(&self, ids: &str) -> Arc<State> {
        let ids: Vec<OwnedEventId> = serde_json::from_str(ids).expect("a JSON array of event IDs");
        let mut state = State::new();
        for id in ids {
            let event = self.hs.rooms().event(&id).await.unwrap().unwrap_or_else(|| panic!("{id} is not stored"));
            let key = event.pdu.state_key.clone().unwrap_or_else(|| panic!("{id} is not a state event"));
            state.insert((event.pdu.kind.to_string().into(), key), id);
        }
        Arc::new(state)
    }

    /// Every event glia did not simply accept, for failure messages.
    fn not_accepted(&self) -> Vec<&(OwnedEventId, Outcome)> {
        self.outcomes.iter().filter(|(_, outcome)| *outcome != Outcome::Accepted).collect()
    }

    fn assert_none_rejected(&self) {
        let rejected: Vec<_> =
            self.outcomes.iter().filter(|(_, outcome)| matches!(outcome, Outcome::Rejected(_))).collect();
        assert!(rejected.is_empty(), "every fixture event is authorized by the state before it: {rejected:#?}");
    }
}

/// The rules of the version the create event's content names.
fn version_rules(create: &CanonicalJsonObject) -> RoomVersionRules {
    let version = match create.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("room_version") {
            Some(CanonicalJsonValue::String(version)) => version.clone(),
            other => panic!("the first event is not a create event with a room version: {other:?}"),
        },
        other => panic!("no content: {other:?}"),
    };
    pdu::rules(&RoomVersionId::try_from(version).unwrap()).expect("a version glia supports")
}

fn prev_events(json: &CanonicalJsonObject) -> Vec<OwnedEventId> {
    match json.get("prev_events") {
        Some(CanonicalJsonValue::Array(ids)) => ids
            .iter()
            .map(|id| match id {
                CanonicalJsonValue::String(id) => EventId::parse(id).expect("a valid event ID"),
                other => panic!("not an event ID: {other:?}"),
            })
            .collect(),
        other => panic!("no prev_events: {other:?}"),
    }
}

/// Replays `batches` and checks glia reaches `expected` two ways: as the room's
/// current state, and as the resolution of the states after all the leaves
/// (ruma's harness resolves the leaves, soft-failed ones included, where glia's
/// current state leaves soft-failed events out of the forward extremities).
/// Returns the replay for checks particular to a fixture.
async fn check_batches(batches: &[&str], expected: &str) -> Replay {
    let replay = Replay::new(batches).await;
    let expected = snapshot(expected);
    let not_accepted = replay.not_accepted();

    let current = resolved(&replay.hs.rooms().current_state(&replay.room_id).await.unwrap());
    assert_eq!(current, expected, "current state vs ruma's snapshot; events not accepted: {not_accepted:#?}");

    let mut forks = Vec::new();
    for leaf in &replay.leaves {
        forks.push(replay.state_after(leaf).await);
    }
    let at_leaves = replay.resolve(&forks).await;
    assert_eq!(
        at_leaves, expected,
        "resolution of leaves {:?} vs ruma's snapshot; events not accepted: {not_accepted:#?}",
        replay.leaves
    );
    replay
}

/// Replays `pdus`, then checks glia's resolution of the two state maps.
async fn check_state_maps(pdus: &str, state_maps: [&str; 2], expected: &str) {
    let replay = Replay::new(&[pdus]).await;
    replay.assert_none_rejected();
    let forks = [replay.state_map(state_maps[0]).await, replay.state_map(state_maps[1]).await];
    assert_eq!(replay.resolve(&forks).await, snapshot(expected), "events not accepted: {:#?}", replay.not_accepted());
}

/// A fixture of two sibling branches after `common` events: `first` then `second`
/// in the fixture's order, checked in both orders against the same snapshot.
///
/// In the fixture's order, an event of `second` that the room's current state
/// (holding `first`) does not authorize is soft-failed, as the Server-Server API's
/// "Soft failure" asks: stored, but not a forward extremity, so the current state
/// is `first`'s alone and only the resolution of the leaves takes it in. Those
/// events are `soft_failed`, and none is rejected, since every fixture event is
/// authorized by the state before it.
///
/// In the other order nothing arrives after its rival, so nothing is soft-failed,
/// the room forks and its current state is glia's resolution of both branches,
/// which must not depend on the order they arrived in (ruma's harness likewise
/// checks that batching does not change its result).
async fn check_siblings(common: &[&str], first: &str, second: &str, expected: &str, soft_failed: &[&str]) {
    let in_order: Vec<&str> = common.iter().copied().chain([first, second]).collect();
    let replay = check_batches(&in_order, expected).await;
    replay.assert_none_rejected();
    let found: Vec<&str> = replay
        .outcomes
        .iter()
        .filter(|(_, outcome)| matches!(outcome, Outcome::SoftFailed(_)))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(found, soft_failed, "soft-failed events: {:#?}", replay.outcomes);

    let other_order: Vec<&str> = common.iter().copied().chain([second, first]).collect();
    let replay = check_batches(&other_order, expected).await;
    assert!(replay.not_accepted().is_empty(), "in the other order: {:#?}", replay.outcomes);
    assert_eq!(replay.hs.rooms().room(&replay.room_id).await.unwrap().extremities.len(), 2);
}

const PRIVATE_CHAT: &str = data!("fixtures/bootstrap-private-chat.json");
const PUBLIC_CHAT: &str = data!("fixtures/bootstrap-public-chat.json");

/// The minimal events of a room made with the "private_chat" preset.
#[tokio::test]
async fn minimal_private_chat() {
    let replay = check_batches(&[PRIVATE_CHAT], data!("snapshots/minimal_private_chat@resolved_state.snap")).await;
    assert!(replay.not_accepted().is_empty(), "{:#?}", replay.outcomes);
}

/// A "public_chat" room where bob joins and becomes a moderator.
#[tokio::test]
async fn minimal_public_chat() {
    let replay = check_batches(&[PUBLIC_CHAT], data!("snapshots/minimal_public_chat@resolved_state.snap")).await;
    assert!(replay.not_accepted().is_empty(), "{:#?}", replay.outcomes);
}

/// Two join rules changes by alice on sibling branches, tied in the topological
/// ordering and in power: the later `origin_server_ts` wins, not the greater event ID.
#[tokio::test]
async fn origin_server_ts_tiebreak() {
    let replay = check_batches(
        &[PRIVATE_CHAT, data!("fixtures/origin-server-ts-tiebreak.json")],
        data!("snapshots/origin_server_ts_tiebreak@resolved_state.snap"),
    )
    .await;
    // Both are authorized by the current state too, so the room really forks
    // and its current state is a resolution.
    assert!(replay.not_accepted().is_empty(), "{:#?}", replay.outcomes);
    assert_eq!(replay.hs.rooms().room(&replay.room_id).await.unwrap().extremities.len(), 2);
}

/// Bob, a moderator, sends power levels while alice bans him on a sibling
/// branch: the ban wins.
#[tokio::test]
async fn ban_vs_power_levels() {
    check_siblings(
        &[PUBLIC_CHAT],
        data!("fixtures/ban-vs-power-levels-alice.json"),
        data!("fixtures/ban-vs-power-levels-bob.json"),
        data!("snapshots/ban_vs_power_levels@resolved_state.snap"),
        // Bob is banned in the current state.
        &["$02-m-room-power_levels"],
    )
    .await;
}

/// Bob sets the topic while alice, on a sibling branch, sets it and then demotes
/// him: alice's topic and power levels win.
#[tokio::test]
async fn topic_vs_power_levels() {
    check_siblings(
        &[PUBLIC_CHAT],
        data!("fixtures/topic-vs-power-levels-alice.json"),
        data!("fixtures/topic-vs-power-levels-bob.json"),
        data!("snapshots/topic_vs_power_levels@resolved_state.snap"),
        // Bob's level is 0 in the current state.
        &["$01-m-room-topic-bob"],
    )
    .await;
}

/// Alice (admin) demotes bob while bob (moderator) changes the power levels on a
/// sibling branch: the admin's change wins.
#[tokio::test]
async fn power_levels_admin_vs_mod() {
    check_siblings(
        &[PUBLIC_CHAT],
        data!("fixtures/power-levels-admin-vs-mod-alice.json"),
        data!("fixtures/power-levels-admin-vs-mod-bob.json"),
        data!("snapshots/power_levels_admin_vs_mod@resolved_state.snap"),
        // Bob's level is 0 in the current state.
        &["$02-m-room-power_levels-bob"],
    )
    .await;
}

/// Bob changes the topic while alice bans him on a sibling branch: the ban wins
/// and the topic stays alice's.
#[tokio::test]
async fn topic_vs_ban() {
    check_siblings(
        &[PUBLIC_CHAT, data!("fixtures/topic-vs-ban-common.json")],
        data!("fixtures/topic-vs-ban-alice.json"),
        data!("fixtures/topic-vs-ban-bob.json"),
        data!("snapshots/topic_vs_ban@resolved_state.snap"),
        // Bob is banned in the current state.
        &["$01-m-room-topic"],
    )
    .await;
}

/// Ella joins a public room while alice, on a sibling branch, makes it invite
/// only: the join rules win and ella is not in the room.
#[tokio::test]
async fn join_rules_vs_join() {
    check_siblings(
        &[PUBLIC_CHAT, data!("fixtures/join-rules-vs-join-common.json")],
        data!("fixtures/join-rules-vs-join-alice.json"),
        data!("fixtures/join-rules-vs-join-ella.json"),
        data!("snapshots/join_rules_vs_join@resolved_state.snap"),
        // The room is invite only in the current state.
        &["$00-m-room-member-join-ella"],
    )
    .await;
}

/// Charlie and ella join on sibling branches: both are in the room.
#[tokio::test]
async fn concurrent_joins() {
    check_siblings(
        &[PUBLIC_CHAT],
        data!("fixtures/concurrent-joins-charlie.json"),
        data!("fixtures/concurrent-joins-ella.json"),
        data!("snapshots/concurrent_joins@resolved_state.snap"),
        // Either join is authorized after the other.
        &[],
    )
    .await;
}

const PROBLEM_A_STATES: [&str; 2] =
    [data!("fixtures/MSC4297-problem-A/state-bob.json"), data!("fixtures/MSC4297-problem-A/state-charlie.json")];
const PROBLEM_B_STATES: [&str; 2] =
    [data!("fixtures/MSC4297-problem-B/state-eve.json"), data!("fixtures/MSC4297-problem-B/state-zara.json")];

/// MSC4297 "Problem A", room version 11: state resolution v2.0 starts from the
/// unconflicted state, so the join rules are lost.
#[tokio::test]
async fn msc4297_problem_a_state_res_v2_0() {
    check_state_maps(
        data!("fixtures/MSC4297-problem-A/pdus-v11.json"),
        PROBLEM_A_STATES,
        data!("snapshots/msc4297_problem_a_state_res_v2_0@resolved_state.snap"),
    )
    .await;
}

/// MSC4297 "Problem A", room version 12: state resolution v2.1 starts from the
/// empty state, so alice's last join rules are kept.
#[tokio::test]
async fn msc4297_problem_a_state_res_v2_1() {
    check_state_maps(
        data!("fixtures/MSC4297-problem-A/pdus-v12.json"),
        PROBLEM_A_STATES,
        data!("snapshots/msc4297_problem_a_state_res_v2_1@resolved_state.snap"),
    )
    .await;
}

/// MSC4297 "Problem B", room version 11: state resolution v2.0 leaves the
/// conflicted state subgraph out, so the power levels reset to the first event.
#[tokio::test]
async fn msc4297_problem_b_state_res_v2_0() {
    check_state_maps(
        data!("fixtures/MSC4297-problem-B/pdus-v11.json"),
        PROBLEM_B_STATES,
        data!("snapshots/msc4297_problem_b_state_res_v2_0@resolved_state.snap"),
    )
    .await;
}

/// MSC4297 "Problem B", room version 12: state resolution v2.1 counts the
/// conflicted state subgraph, so the latest power levels are kept.
#[tokio::test]
async fn msc4297_problem_b_state_res_v2_1() {
    check_state_maps(
        data!("fixtures/MSC4297-problem-B/pdus-v12.json"),
        PROBLEM_B_STATES,
        data!("snapshots/msc4297_problem_b_state_res_v2_1@resolved_state.snap"),
    )
    .await;
}
