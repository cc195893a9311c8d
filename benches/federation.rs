//! Federation through a real relay on loopback, in one process: a relay and two
//! nodes A and B, each a `Homeserver` on the on-disk store (redb, fsync per
//! commit) in a temp dir, with its federation sender running and a
//! `RelayClient` to the relay. alice on A and bob on B share a room, set up and
//! driven through the Client-Server API (`Homeserver::handle`, no HTTP server).
//! bob runs a `/sync` long-poll on B the whole time; a message counts as
//! delivered when a response carrying it returns.
//!
//! Figures: delivery latency (`PUT /send` on A returned → bob's long-poll
//! returns it), sustained throughput A → B, catching up on a relay mailbox
//! after B was offline, the bytes both nodes send through the relay per
//! message, and bob paging back through a room's history from before he
//! joined (backfilled from A). The relay's own forwarding rate is benches/relay.rs.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use glia::{
    core::{OsRandom, SystemClock, SCHEMA},
    native::{
        peer::{RelayClient, RelayClientConfig, Traffic},
        relay::{self, Relay, RelayConfig},
    },
    p2p::PeerKey,
    store::{Direction, DiskStore, KeyRange},
    Homeserver,
};
use serde_json::{json, Value};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};

const LATENCY_MESSAGES: usize = 200;
const SUSTAINED_MESSAGES: usize = 2_000;
const CATCH_UP_MESSAGES: usize = 1_000;
const HISTORY_MESSAGES: usize = 1_000;
const WARM_UP: usize = 10;
/// Clients sending at once in the sustained and catch-up runs.
const SENDERS: usize = 8;
/// The longest one step may take before the bench gives up on its figure.
const STEP: Duration = Duration::from_secs(45);
/// Timeline events a sync response carries per room (glia's maximum).
const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":100}}}"#;

/// One row of the table: measurement, figure, target.
struct Row(String, String, &'static str);

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let mut rows = Vec::new();
    if let Err(err) = run(&mut rows).await {
        rows.push(Row("**the bench stopped early**".into(), err, ""));
    }
    println!("| federation A → relay → B, loopback, disk stores | figure | target |");
    println!("|---|---|---|");
    for Row(what, figure, target) in rows {
        println!("| {what} | {figure} | {target} |");
    }
    eprintln!("federation bench: {:.1} s in all", started.elapsed().as_secs_f64());
    // Tasks still parked in long-polls or sleeps need not be waited for.
    std::process::exit(0);
}

async fn run(rows: &mut Vec<Row>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let relay = Relay::open(&dir.path().join("relay"), RelayConfig::default()).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("ws://{}/", listener.local_addr().map_err(|e| e.to_string())?);
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay::run(listener, relay.clone(), async move {
        let _ = relay_stopped.await;
    }));

    let mut a = Node::start(&dir.path().join("a"), &url).await?;
    let mut b = Node::start(&dir.path().join("b"), &url).await?;
    let alice = Client::register(&a.hs, "alice").await?;
    let bob = Client::register(&b.hs, "bob").await?;
    let room = step("set-up (room, invite, join)", join(&alice, &bob)).await??;
    let seen = Seen::watch(bob.clone(), room.clone()).await?;

    // 1. Delivery latency, one message at a time, after a few to warm up.
    for i in 0..WARM_UP {
        let (id, _) = alice.say(&room, &format!("warm-up {i}")).await?;
        step("warm-up", seen.wait(&id)).await?;
    }
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    let result = step("delivery latency", async {
        for i in 0..LATENCY_MESSAGES {
            let (id, sent) = alice.say(&room, &format!("latency {i}")).await?;
            let at = seen.wait(&id).await;
            latencies.push(at.saturating_duration_since(sent));
        }
        Ok::<_, String>(())
    })
    .await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    if !latencies.is_empty() {
        let n = latencies.len();
        rows.push(Row(format!("delivery latency p50 ({n} messages, one at a time)"), ms(at(0.5)), "< 20 ms"));
        rows.push(Row(format!("delivery latency p99 ({n} messages)"), ms(at(0.99)), "< 100 ms"));
        rows.push(Row(format!("delivery latency max ({n} messages)"), ms(at(1.0)), ""));
    }
    result??;

    // 2. Sustained throughput, and 4. the bytes that took.
    let before = (a.traffic(), b.traffic());
    let start = Instant::now();
    let (ids, accepted) = step("sustained sends", alice.say_many(&room, "sustained", SUSTAINED_MESSAGES)).await??;
    let last = step("sustained delivery", seen.wait_all(&ids)).await?;
    let seconds = last.duration_since(start).as_secs_f64();
    let n = SUSTAINED_MESSAGES;
    rows.push(Row(
        format!("sustained A → B, {n} messages from {SENDERS} clients at once: first sent → last visible to bob"),
        format!("{:.0} messages/s ({:.2} s)", n as f64 / seconds, seconds),
        "",
    ));
    // Whether federation keeps up with what A accepts, or falls behind.
    rows.push(Row(
        "… A accepting those sends (`PUT /send` returned), for comparison".into(),
        format!("{:.0} messages/s", n as f64 / accepted.as_secs_f64()),
        "",
    ));
    rows.push(Row(
        "… and the last message's delay on B after A accepted it".into(),
        ms(last.saturating_duration_since(start + accepted)),
        "",
    ));
    // The last answers and acks follow the last delivery: count them too.
    step("A's queue to drain", a.drained()).await??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a_sent, b_sent) = (a.traffic().minus(before.0), b.traffic().minus(before.1));
    let per = |bytes: u64| format!("{:.0} B", bytes as f64 / n as f64);
    let total = a_sent.frame_bytes + a_sent.control_bytes + b_sent.frame_bytes + b_sent.control_bytes;
    rows.push(Row(
        "bytes per message A and B sent to the relay, sustained run (it forwards the frames on)".into(),
        per(total),
        "",
    ));
    rows.push(Row(
        format!(
            "… A → B frames: {} `/send` transactions (and other requests), {:.1} messages each",
            a_sent.frames,
            n as f64 / a_sent.frames.max(1) as f64
        ),
        per(a_sent.frame_bytes),
        "",
    ));
    rows.push(Row(
        format!("… B → A frames: {} (the responses, and B's own requests)", b_sent.frames),
        per(b_sent.frame_bytes),
        "",
    ));
    rows.push(Row(
        format!(
            "… control messages: {} (acks: B's of the transactions, A's of the responses)",
            a_sent.controls + b_sent.controls
        ),
        per(a_sent.control_bytes + b_sent.control_bytes),
        "",
    ));

    // 3. Catch-up: B offline while alice sends, its frames wait in the relay's mailbox.
    let kb = PeerKey::of(b.hs.key());
    b.disconnect().await;
    step("B offline at the relay", async {
        relay.wait_until(STEP, |r| !r.online().contains(&kb)).await.then_some(()).ok_or("B still online")
    })
    .await??;
    let (ids, _) = step("catch-up sends", alice.say_many(&room, "while bob was away", CATCH_UP_MESSAGES)).await??;
    step("A's queue into the mailbox", a.drained()).await??;
    let stored = relay.mailbox_len(&kb);
    let start = Instant::now();
    b.connect(&url);
    let last = step("catch-up", seen.wait_all(&ids)).await?;
    rows.push(Row(
        format!("catch-up: B reconnects → bob sees all {CATCH_UP_MESSAGES} ({stored} frames in its mailbox)"),
        format!("{:.2} s", last.duration_since(start).as_secs_f64()),
        "< 5 s",
    ));

    // 5. History: bob joins a room after its messages and pages back to its start.
    let past = alice.ok("POST", "createRoom", Some(json!({ "name": "history" }))).await?;
    let past = past["room_id"].as_str().ok_or("no room ID")?.to_owned();
    step("history sends", alice.say_many(&past, "history", HISTORY_MESSAGES)).await??;
    step("history join", bring_in(&alice, &bob, &past)).await??;
    let start = Instant::now();
    let (pages, found) = step("paging back", page_back(&bob, &past, "history")).await??;
    let seconds = start.elapsed().as_secs_f64();
    if found != HISTORY_MESSAGES {
        return Err(format!("bob paged back to {found} of {HISTORY_MESSAGES} messages"));
    }
    rows.push(Row(
        format!("history: bob joins after {found} messages and pages back to the room's start ({pages} `/messages` of 100, backfilled from A)"),
        format!("{:.2} s ({:.0} messages/s)", seconds, found as f64 / seconds),
        "",
    ));

    a.disconnect().await;
    b.disconnect().await;
    let _ = stop_relay.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), relay_task).await;
    Ok(())
}

/// `future`, or an error naming `what` if it takes longer than [`STEP`].
async fn step<T>(what: &str, future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, future).await.map_err(|_| format!("{what}: timed out after {} s", STEP.as_secs()))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A node: its core on a disk store, its sender, its relay link.
struct Node {
    hs: Arc<Homeserver>,
    links: Option<RelayClient>,
    /// Traffic of the links closed so far.
    traffic: Traffic,
    _sender: JoinHandle<()>,
}

impl Node {
    async fn start(dir: &Path, url: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let store = DiskStore::open(dir.join("glia.redb"), SCHEMA).await.map_err(|e| e.to_string())?;
        let hs = Homeserver::open(Arc::new(store), Arc::new(SystemClock), Arc::new(OsRandom))
            .await
            .map_err(|e| e.to_string())?;
        let hs = Arc::new(hs);
        let sender = hs.clone();
        let _sender = tokio::spawn(async move { sender.run_background().await });
        let mut node = Self { hs, links: None, traffic: Traffic::default(), _sender };
        node.connect(url);
        let links = node.links.as_ref().expect("just connected");
        if !links.wait_connected(1, STEP).await {
            return Err(format!("no connection to the relay: {:?}", links.status()));
        }
        Ok(node)
    }

    fn connect(&mut self, url: &str) {
        self.links = Some(RelayClient::start(self.hs.clone(), vec![url.to_owned()], RelayClientConfig::default()));
    }

    async fn disconnect(&mut self) {
        if let Some(links) = self.links.take() {
            self.traffic = self.traffic.plus(links.status()[0].sent);
            links.shutdown().await;
        }
    }

    /// What this node has sent through the relay so far.
    fn traffic(&self) -> Traffic {
        self.links.as_ref().map_or(self.traffic, |links| self.traffic.plus(links.status()[0].sent))
    }

    /// Waits until the sender has handed every event to the network: its
    /// outbox (events not yet queued) and outbound queues (src/core/service/
    /// rooms.rs and sender.rs) are empty.
    async fn drained(&self) -> Result<(), String> {
        loop {
            let mut empty = true;
            for table in ["outbox", "outbound"] {
                let found = self.hs.store().scan(table, KeyRange::all(), Direction::Forward, 1).await;
                empty &= found.map_err(|e| e.to_string())?.is_empty();
            }
            if empty {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

trait Sum {
    fn plus(self, other: Self) -> Self;
    fn minus(self, other: Self) -> Self;
}

impl Sum for Traffic {
    fn plus(self, o: Self) -> Self {
        Traffic {
            frames: self.frames + o.frames,
            frame_bytes: self.frame_bytes + o.frame_bytes,
            controls: self.controls + o.controls,
            control_bytes: self.control_bytes + o.control_bytes,
        }
    }

    fn minus(self, o: Self) -> Self {
        Traffic {
            frames: self.frames - o.frames,
            frame_bytes: self.frame_bytes - o.frame_bytes,
            controls: self.controls - o.controls,
            control_bytes: self.control_bytes - o.control_bytes,
        }
    }
}

/// A logged-in user of one node.
#[derive(Clone)]
struct Client {
    hs: Arc<Homeserver>,
    token: String,
    id: String,
}

impl Client {
    async fn register(hs: &Arc<Homeserver>, name: &str) -> Result<Self, String> {
        let mut client = Self { hs: hs.clone(), token: String::new(), id: String::new() };
        let mut body = json!({ "username": name, "password": "correct horse battery staple" });
        // Registration is user-interactive: the first answer opens the session.
        let (_, challenge) = client.call("POST", "register", Some(body.clone())).await;
        body["auth"] = json!({ "type": "m.login.dummy", "session": challenge["session"] });
        let registered = client.ok("POST", "register", Some(body)).await?;
        client.token = registered["access_token"].as_str().ok_or("no access token")?.to_owned();
        client.id = registered["user_id"].as_str().ok_or("no user ID")?.to_owned();
        Ok(client)
    }

    /// A Client-Server request; `path` is under `/_matrix/client/v3/`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = http::Request::builder().method(method).uri(format!("/_matrix/client/v3/{path}"));
        if !self.token.is_empty() {
            request = request.header("authorization", format!("Bearer {}", self.token));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = self.hs.handle(request.body(body).expect("a valid request")).await;
        (response.status().as_u16(), serde_json::from_slice(response.body()).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        match self.call(method, path, body).await {
            (200, json) => Ok(json),
            (status, json) => Err(format!("{method} {path}: {status} {json}")),
        }
    }

    /// Sends a text message; returns its event ID and when `PUT /send` returned.
    async fn say(&self, room: &str, body: &str) -> Result<(String, Instant), String> {
        static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("rooms/{}/send/m.room.message/t{txn}", enc(room));
        let sent = self.ok("PUT", &path, Some(json!({ "msgtype": "m.text", "body": body }))).await?;
        let at = Instant::now();
        Ok((sent["event_id"].as_str().ok_or("no event ID")?.to_owned(), at))
    }

    /// Sends `n` messages from [`SENDERS`] clients at once, each as soon as
    /// its previous one returned; their event IDs, and how long that took.
    async fn say_many(&self, room: &str, label: &str, n: usize) -> Result<(Vec<String>, Duration), String> {
        let start = Instant::now();
        let clients = (0..SENDERS).map(|c| {
            let (client, room, label) = (self.clone(), room.to_owned(), label.to_owned());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (c..n).step_by(SENDERS) {
                    ids.push(client.say(&room, &format!("{label} {i}")).await?.0);
                }
                Ok::<_, String>(ids)
            })
        });
        let mut ids = Vec::with_capacity(n);
        for client in clients.collect::<Vec<_>>() {
            ids.extend(client.await.map_err(|e| e.to_string())??);
        }
        Ok((ids, start.elapsed()))
    }
}

/// alice creates a room and invites bob, bob joins; done when both nodes
/// show bob joined.
async fn join(alice: &Client, bob: &Client) -> Result<String, String> {
    let room = alice.ok("POST", "createRoom", Some(json!({ "name": "bench" }))).await?;
    let room = room["room_id"].as_str().ok_or("no room ID")?.to_owned();
    bring_in(alice, bob, &room).await?;
    Ok(room)
}

/// alice invites bob to `room`, bob joins; done when both nodes show him joined.
async fn bring_in(alice: &Client, bob: &Client, room: &str) -> Result<(), String> {
    alice.ok("POST", &format!("rooms/{}/invite", enc(room)), Some(json!({ "user_id": bob.id }))).await?;
    until(|| async {
        bob.ok("GET", "sync?timeout=0", None).await.ok()?["rooms"]["invite"][room].is_object().then_some(())
    })
    .await;
    bob.ok("POST", &format!("join/{}", enc(room)), Some(json!({}))).await?;
    for client in [alice, bob] {
        let path = format!("rooms/{}/joined_members", enc(room));
        until(|| async { client.ok("GET", &path, None).await.ok()?["joined"][&bob.id].is_object().then_some(()) })
            .await;
    }
    Ok(())
}

/// Pages `room` back with `/messages` until its start: how many pages that
/// took, and how many messages starting with `label` they held.
async fn page_back(client: &Client, room: &str, label: &str) -> Result<(usize, usize), String> {
    let (mut pages, mut found, mut from) = (0, 0, String::new());
    loop {
        let page = client.ok("GET", &format!("rooms/{}/messages?dir=b&limit=100{from}", enc(room)), None).await?;
        pages += 1;
        let chunk = page["chunk"].as_array().ok_or("no chunk")?;
        found += chunk.iter().filter(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with(label))).count();
        match page["end"].as_str() {
            Some(end) => from = format!("&from={}", enc(end)),
            None => return Ok((pages, found)),
        }
    }
}

/// Polls `check` until it returns `Some` (the caller bounds the wait).
async fn until<T, F: std::future::Future<Output = Option<T>>>(mut check: impl FnMut() -> F) -> T {
    loop {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When each event of the room was first visible to bob: his `/sync`
/// long-poll, running all the time on its own task.
struct Seen {
    events: watch::Receiver<HashMap<String, Instant>>,
}

impl Seen {
    async fn watch(bob: Client, room: String) -> Result<Self, String> {
        let first = bob.ok("GET", "sync?timeout=0", None).await?;
        let mut since = first["next_batch"].as_str().ok_or("no next_batch")?.to_owned();
        let (tx, events) = watch::channel(HashMap::new());
        let filter = enc(SYNC_FILTER);
        tokio::spawn(async move {
            loop {
                let path = format!("sync?since={}&timeout=30000&filter={filter}", enc(&since));
                let response = match bob.ok("GET", &path, None).await {
                    Ok(response) => response,
                    Err(err) => panic!("bob's sync failed: {err}"),
                };
                let at = Instant::now();
                let timeline = &response["rooms"]["join"][&room]["timeline"];
                let mut ids = event_ids(&timeline["events"]);
                // More came than one response carries: what it skipped was
                // visible by now too (/messages reaches back to it).
                if timeline["limited"] == true {
                    let mut from = timeline["prev_batch"].as_str().map(str::to_owned);
                    while let Some(token) = from.take() {
                        let path = format!("rooms/{}/messages?dir=b&limit=100&from={}", enc(&room), enc(&token));
                        let Ok(page) = bob.ok("GET", &path, None).await else { break };
                        let older = event_ids(&page["chunk"]);
                        let known = older.iter().any(|id| tx.borrow().contains_key(id));
                        ids.extend(older);
                        if !known {
                            from = page["end"].as_str().map(str::to_owned);
                        }
                    }
                }
                tx.send_modify(|events| {
                    for id in ids {
                        events.entry(id).or_insert(at);
                    }
                });
                since = response["next_batch"].as_str().expect("a next_batch").to_owned();
            }
        });
        Ok(Self { events })
    }

    /// When `id` was first visible to bob, waiting for it if need be.
    async fn wait(&self, id: &str) -> Instant {
        let mut events = self.events.clone();
        let events = events.wait_for(|events| events.contains_key(id)).await.expect("bob's sync runs");
        events[id]
    }

    /// When the last of `ids` was visible to bob.
    async fn wait_all(&self, ids: &[String]) -> Instant {
        let mut events = self.events.clone();
        let events = events.wait_for(|events| ids.iter().all(|id| events.contains_key(id))).await.expect("sync runs");
        ids.iter().map(|id| events[id]).max().expect("some events")
    }
}

fn event_ids(events: &Value) -> Vec<String> {
    let events = events.as_array().map(Vec::as_slice).unwrap_or_default();
    events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
}

/// Percent-encodes a path segment or query value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
