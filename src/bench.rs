//! The benchmark workloads, shared by `cargo bench` (memory and disk stores) and
//! the browser bench page (IndexedDB in Chromium), so their figures compare.

use std::sync::Arc;

use ruma::{events::TimelineEventType, RoomVersionId, UInt, UserId};
use serde_json::json;
use web_time::{Duration, Instant};

use crate::{
    core::{
        identity::NodeKey,
        pdu::{self, NewEvent, Pdu, Placement, DEFAULT_ROOM_VERSION},
        service::rooms::{CreateRoom, Preset, RoomError},
        Homeserver, OsRandom, SystemClock, SCHEMA as NODE_SCHEMA,
    },
    store::{Batch, Direction, KeyRange, MemoryStore, Result, Schema, Store},
};

pub const SCHEMA: Schema = Schema { version: 1, tables: &["bench"] };
const TABLE: &str = "bench";
const VALUE: [u8; 256] = [0x5a; 256];
const BATCH: usize = 100;
const SCAN: usize = 100;

pub struct Figure {
    pub operation: String,
    pub count: usize,
    pub seconds: f64,
}

fn key(i: usize) -> [u8; 8] {
    (i as u64).to_be_bytes()
}

/// Times `n` of each operation on an empty `store` and returns ops per second.
pub async fn run(store: &dyn Store, n: usize) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut time = |operation: &str, count, start: Instant| {
        figures.push(Figure { operation: operation.into(), count, seconds: start.elapsed().as_secs_f64() })
    };

    let start = Instant::now();
    for i in 0..n {
        store.put(TABLE, &key(i), &VALUE).await?;
    }
    time("put (one per transaction)", n, start);

    let start = Instant::now();
    for chunk in (n..2 * n).collect::<Vec<_>>().chunks(BATCH) {
        let batch = chunk.iter().fold(Batch::new(), |b, &i| b.put(TABLE, key(i), VALUE));
        store.write(batch).await?;
    }
    time("put (batches of 100)", n, start);

    // The shape of one event's write: two compare-and-set preconditions and six
    // puts, one transaction each.
    let start = Instant::now();
    for i in 0..n {
        let mut batch = Batch::new().expect(TABLE, key(i).to_vec(), Some(VALUE.to_vec())).expect(
            TABLE,
            key(n + i).to_vec(),
            Some(VALUE.to_vec()),
        );
        for j in 0..6u8 {
            batch = batch.put(TABLE, [&key(i)[..], &[j]].concat(), VALUE);
        }
        store.write(batch).await?;
    }
    time("batch of 2 preconditions + 6 puts", n, start);

    // A fixed stride through all keys: every key once, in no useful order.
    let start = Instant::now();
    for i in 0..n {
        let found = store.get(TABLE, &key(i * 7919 % (2 * n))).await?;
        debug_assert!(found.is_some());
    }
    time("get", n, start);

    let scans = (n / SCAN).max(1);
    for (operation, direction) in [("scan 100 forward", Direction::Forward), ("scan 100 backward", Direction::Backward)]
    {
        let start = Instant::now();
        for s in 0..scans {
            let from = key(s * 2 * n / scans).to_vec();
            let range = match direction {
                Direction::Forward => KeyRange::new(std::ops::Bound::Included(from), std::ops::Bound::Unbounded),
                Direction::Backward => KeyRange::new(std::ops::Bound::Unbounded, std::ops::Bound::Included(from)),
            };
            store.scan(TABLE, range, direction, SCAN).await?;
        }
        time(operation, scans, start);
    }
    Ok(figures)
}

/// The figures as rows of the Markdown table scripts/bench prints:
/// backend, operation, count, total ms, per second.
pub fn rows(backend: &str, figures: &[Figure]) -> String {
    figures
        .iter()
        .map(|f| {
            let per_second = f.count as f64 / f.seconds;
            format!("| {backend} | {} | {} | {:.1} | {per_second:.0} |\n", f.operation, f.count, f.seconds * 1000.0)
        })
        .collect()
}

/// A plain text message.
fn text(body: String) -> NewEvent {
    NewEvent::message(TimelineEventType::RoomMessage, json!({ "msgtype": "m.text", "body": body }))
}

fn timed(operation: impl Into<String>, count: usize, start: Instant) -> Figure {
    Figure { operation: operation.into(), count, seconds: start.elapsed().as_secs_f64() }
}

/// A node on `store` with a room created by `@bench` in `version`.
async fn node_with_room(
    store: Arc<dyn Store>,
    version: RoomVersionId,
) -> Result<(Homeserver, ruma::OwnedUserId, ruma::OwnedRoomId), RoomError> {
    let hs = Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await?;
    let creator = UserId::parse(format!("@bench:{}", hs.key().server_name())).map_err(RoomError::corrupt)?;
    let options = CreateRoom { version: Some(version), preset: Preset::PublicChat, ..Default::default() };
    let room_id = hs.rooms().create_room(&creator, options).await?;
    Ok((hs, creator, room_id))
}

/// Messages created, hashed, signed, authorized and persisted, one after another;
/// the slowest one says how long a client can be kept waiting meanwhile.
pub async fn send_messages(store: Arc<dyn Store>, n: usize) -> Result<Figure, RoomError> {
    let (hs, sender, room_id) = node_with_room(store, DEFAULT_ROOM_VERSION).await?;
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let message = text(format!("message {i}"));
        let sent = Instant::now();
        hs.rooms().send(&room_id, &sender, &message).await?;
        slowest = slowest.max(sent.elapsed());
    }
    let slowest = slowest.as_secs_f64() * 1000.0;
    Ok(timed(
        format!("events created+signed+persisted (room v{DEFAULT_ROOM_VERSION}; slowest {slowest:.1} ms)"),
        n,
        start,
    ))
}

/// Messages sent by `senders` clients at once, each waiting for its event to be
/// stored before sending the next: what a node serving several clients sees.
pub async fn send_messages_concurrently(store: Arc<dyn Store>, n: usize, senders: usize) -> Result<Figure, RoomError> {
    let (hs, sender, room_id) = node_with_room(store, DEFAULT_ROOM_VERSION).await?;
    let per_sender = n / senders;
    let client = |c: usize| {
        let (hs, sender, room_id) = (&hs, &sender, &room_id);
        async move {
            for i in 0..per_sender {
                hs.rooms().send(room_id, sender, &text(format!("client {c} message {i}"))).await?;
            }
            Ok::<_, RoomError>(())
        }
    };
    let start = Instant::now();
    for result in futures_util::future::join_all((0..senders).map(client)).await {
        result?;
    }
    Ok(timed(format!("events created+signed+persisted, {senders} clients at once"), per_sender * senders, start))
}

/// Messages from another server received as federation transactions do: 50 PDUs
/// at a time, each checked and stored, one commit per transaction.
pub async fn receive_transactions(store: Arc<dyn Store>, n: usize) -> Result<Figure, RoomError> {
    const TRANSACTION: usize = 50;
    let (hs, _, room_id) = node_with_room(store, DEFAULT_ROOM_VERSION).await?;
    let remote = NodeKey::from_seed(&[7; 32]);
    let rules = pdu::rules(&DEFAULT_ROOM_VERSION)?;
    let bob = UserId::parse(format!("@bob:{}", remote.server_name())).map_err(RoomError::corrupt)?;
    let mut state = (*hs.rooms().current_state(&room_id).await?).clone();
    let room = hs.rooms().room(&room_id).await?;
    let mut prev: Vec<_> = room.extremities.iter().map(|(id, _)| id.clone()).collect();
    let mut depth = room.extremities.iter().map(|(_, d)| *d).max().unwrap_or_default();

    let mut events =
        vec![NewEvent::state(TimelineEventType::RoomMember, bob.as_str(), json!({ "membership": "join" }))];
    events.extend((0..n).map(|i| text(format!("message {i}"))));
    let mut pdus = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let content = serde_json::value::to_raw_value(&event.content).map_err(RoomError::corrupt)?;
        let keys = ruma::state_res::auth_types_for_event(
            &event.kind,
            &bob,
            event.state_key.as_deref(),
            &content,
            &rules.authorization,
        )
        .map_err(RoomError::Invalid)?;
        let auth_events: Vec<_> = keys.iter().filter_map(|key| state.get(key).cloned()).collect();
        depth = depth.saturating_add(UInt::from(1u32));
        let placement = Placement {
            room_id: Some(&room_id),
            prev_events: &prev,
            auth_events: &auth_events,
            depth,
            origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(UInt::from(i as u32)),
        };
        let pdu = pdu::build(&remote, &rules, &bob, event, placement)?;
        if let Some(key) = &pdu.state_key {
            state.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
        }
        prev = vec![pdu.event_id.clone()];
        pdus.push(pdu.json);
    }
    let join = pdus.remove(0);
    hs.rooms().receive(&room_id, join).await?;

    let start = Instant::now();
    for transaction in pdus.chunks(TRANSACTION) {
        for outcome in hs.rooms().receive_all(&room_id, transaction.to_vec()).await? {
            if outcome? != crate::core::service::rooms::Outcome::Accepted {
                return Err(RoomError::Invalid("a benchmark PDU was not accepted".into()));
            }
        }
    }
    Ok(timed(format!("events received+verified+persisted, transactions of {TRANSACTION}"), n, start))
}

/// The checks on received PDUs that need only the PDU: format, content hash,
/// signature (key from the server name) and event ID.
pub fn verify_pdus(n: usize) -> Result<Figure, RoomError> {
    let key = NodeKey::from_seed(&[42; 32]);
    let rules = pdu::rules(&DEFAULT_ROOM_VERSION)?;
    let sender = UserId::parse(format!("@remote:{}", key.server_name())).map_err(RoomError::corrupt)?;
    let room_id = ruma::RoomId::parse("!Qx0CzpCq2VQrRxBYQAdqlFGUmCTAXDJkSRCz0u1bPH4").map_err(RoomError::corrupt)?;
    let prev = [ruma::EventId::parse("$Vm8pYX9xVHWZ2HN6bJmKhc3vNXRRHI0C6hgGdUUtdqw").map_err(RoomError::corrupt)?];
    let pdus = (0..n)
        .map(|i| {
            let message = text(format!("message {i}"));
            let placement = Placement {
                room_id: Some(&room_id),
                prev_events: &prev,
                auth_events: &prev,
                depth: UInt::from(i as u32 + 2),
                origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(UInt::from(i as u32)),
            };
            Ok(pdu::build(&key, &rules, &sender, &message, placement)?.json)
        })
        .collect::<Result<Vec<_>, RoomError>>()?;
    let start = Instant::now();
    for json in pdus {
        Pdu::from_remote(json, &rules)?;
    }
    Ok(timed("received PDUs verified", n, start))
}

/// A public room with `members` joined, forked into two branches that each set
/// the same `fork_len` state keys differently, then merged: the merge event's
/// state is the resolution of the two branches.
pub async fn resolve_forks(members: usize, fork_len: usize) -> Result<Figure, RoomError> {
    let (hs, creator, room_id) = node_with_room(Arc::new(MemoryStore::new(NODE_SCHEMA)), DEFAULT_ROOM_VERSION).await?;
    let rooms = hs.rooms();
    for i in 0..members {
        let user = UserId::parse(format!("@member{i}:{}", hs.key().server_name())).map_err(RoomError::corrupt)?;
        let join = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), json!({ "membership": "join" }));
        rooms.send(&room_id, &user, &join).await?;
    }
    let base = rooms.room(&room_id).await?.extremities[0].0.clone();
    let mut tips = Vec::new();
    for branch in ["left", "right"] {
        let mut tip = base.clone();
        for i in 0..fork_len {
            let event = NewEvent::state("org.glia.bench".into(), format!("key{i}"), json!({ "branch": branch }));
            tip = rooms.send_after(&room_id, &creator, &event, vec![tip]).await?.event_id.clone();
        }
        tips.push(tip);
    }
    let merge = text("merge".into());
    let start = Instant::now();
    let merged = rooms.send_after(&room_id, &creator, &merge, tips).await?;
    let figure = timed(format!("merge two forks of {fork_len} state events, {members} members"), 1, start);
    debug_assert_eq!(merged.prev_events.len(), 2);
    Ok(figure)
}

/// One request through the node's router, as a client makes it.
async fn call(
    hs: &Homeserver,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut request = http::Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if body.is_null() { bytes::Bytes::new() } else { bytes::Bytes::from(body.to_string()) };
    let response = hs.handle(request.body(body).unwrap_or_default()).await;
    serde_json::from_slice(response.body()).unwrap_or_default()
}

/// Registers `@bench` through the API: its user ID and access token.
async fn register(hs: &Homeserver) -> Result<(ruma::OwnedUserId, String), RoomError> {
    let register = |session: Option<String>| {
        let auth = session.map(|s| json!({ "type": "m.login.dummy", "session": s }));
        json!({ "username": "bench", "password": "bench password", "auth": auth })
    };
    let challenge = call(hs, "POST", "/_matrix/client/v3/register", None, register(None)).await;
    let session = challenge["session"].as_str().map(str::to_owned);
    let registered = call(hs, "POST", "/_matrix/client/v3/register", None, register(session)).await;
    let token = registered["access_token"].as_str().unwrap_or_default().to_owned();
    let user = UserId::parse(registered["user_id"].as_str().unwrap_or_default()).map_err(RoomError::corrupt)?;
    Ok((user, token))
}

/// `/sync` for an account in `rooms` rooms of `events` messages each: the first
/// sync of a new device (no `since`), as clients make it with a timeline limit
/// of 10, then an incremental sync after one new message. Through the router, so
/// the figures include parsing, authentication and serialization.
pub async fn sync(store: Arc<dyn Store>, rooms: usize, events: usize, runs: usize) -> Result<Vec<Figure>, RoomError> {
    let hs = Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await?;
    let (user, token) = register(&hs).await?;
    let mut room_ids = Vec::new();
    for r in 0..rooms {
        let options = CreateRoom { name: Some(format!("room {r}")), ..Default::default() };
        let room_id = hs.rooms().create_room(&user, options).await?;
        for i in 0..events {
            hs.rooms().send(&room_id, &user, &text(format!("room {r} message {i}"))).await?;
        }
        room_ids.push(room_id);
    }
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A10%7D%7D%7D";
    let mut figures = Vec::new();
    let mut next_batch = String::new();
    let start = Instant::now();
    for _ in 0..runs {
        let synced =
            call(&hs, "GET", &format!("/_matrix/client/v3/sync?filter={filter}"), Some(&token), json!(null)).await;
        next_batch = synced["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    figures.push(timed(format!("initial /sync, {rooms} rooms x {events} messages, timeline limit 10"), runs, start));
    let start = Instant::now();
    for i in 0..runs {
        hs.rooms().send(&room_ids[i % rooms], &user, &text(format!("new message {i}"))).await?;
        let uri = format!("/_matrix/client/v3/sync?filter={filter}&since={next_batch}");
        let synced = call(&hs, "GET", &uri, Some(&token), json!(null)).await;
        next_batch = synced["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    figures.push(timed("message sent + incremental /sync", runs, start));
    Ok(figures)
}

/// A made-up message of 8 to 15 words from a vocabulary of 2,000, the same for
/// the same `i`; every tenth holds "common", one in 10,000 "rare".
fn prose(i: usize) -> String {
    let mut state = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let count = 8 + next() % 8;
    let mut words: Vec<String> = (0..count).map(|_| format!("w{}", next() % 2000)).collect();
    if i % 10 == 0 {
        words.push("common".into());
    }
    if i % 10_000 == 0 {
        words.push("rare".into());
    }
    words.join(" ")
}

/// `POST /search` over a room of `messages` messages through the router: the
/// first search, which indexes them all, then `runs` searches each for a rare
/// word, a common one (by rank and by recency) and two words together.
pub async fn search(store: Arc<dyn Store>, messages: usize, runs: usize) -> Result<Vec<Figure>, RoomError> {
    let hs = Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await?;
    let (user, token) = register(&hs).await?;
    let room_id = hs.rooms().create_room(&user, CreateRoom::default()).await?;
    // Eight senders at once, as a busy node's commits are shared.
    let senders = 8;
    let sender = |s: usize| {
        let (hs, user, room_id) = (&hs, &user, &room_id);
        async move {
            for i in (s..messages).step_by(senders) {
                hs.rooms().send(room_id, user, &text(prose(i))).await?;
            }
            Ok::<_, RoomError>(())
        }
    };
    for result in futures_util::future::join_all((0..senders).map(sender)).await {
        result?;
    }
    let search = |term: &str, order: &str| {
        let body = json!({ "search_categories": { "room_events": { "search_term": term, "order_by": order } } });
        call(&hs, "POST", "/_matrix/client/v3/search", Some(&token), body)
    };
    let start = Instant::now();
    let first = search("rare", "rank").await;
    let found = first["search_categories"]["room_events"]["count"].as_u64().unwrap_or_default();
    if found != messages.div_ceil(10_000) as u64 {
        return Err(RoomError::Corrupt(format!("the first search found {found} events: {first}")));
    }
    let mut figures = vec![timed(format!("first search: {messages} messages indexed"), messages, start)];
    for (label, term, order) in [
        ("rare word (1 in 10,000), ranked", "rare", "rank"),
        ("common word (1 in 10), ranked", "common", "rank"),
        ("common word (1 in 10), recent", "common", "recent"),
        ("two words, ranked", "common w1234", "rank"),
    ] {
        let start = Instant::now();
        for _ in 0..runs {
            search(term, order).await;
        }
        figures.push(timed(format!("search over {messages} messages: {label}"), runs, start));
    }
    Ok(figures)
}
