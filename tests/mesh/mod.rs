//! Nodes in one process, joined by the in-process network (each node's
//! inbound frames handled on a task of its own, as a shell would) or by a
//! real relay on loopback ([`Node::over_relay`], [`LoopbackRelay`]).

#![allow(dead_code)] // Each test crate uses its own subset.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use glia::{
    core::{OsRandom, SystemClock, SCHEMA},
    native::{
        peer::{RelayClient, RelayClientConfig},
        relay::{self, Relay, RelayConfig},
    },
    p2p::{memory::MemoryNetwork, PeerKey},
    store::MemoryStore,
    Homeserver,
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

#[path = "../common/mod.rs"]
mod common;
pub use common::enc;

pub struct Node {
    pub hs: Arc<Homeserver>,
    pub key: PeerKey,
    pub name: String,
    /// The in-process network, for nodes made by [`Node::start`].
    network: Option<MemoryNetwork>,
    /// The links to relays, for nodes made by [`Node::over_relay`].
    pub relays: Option<RelayClient>,
    /// Stops the driver, which then hands back the frames it had not taken.
    driver: std::sync::Mutex<Option<(futures_channel::oneshot::Sender<()>, JoinHandle<()>)>>,
    sender: JoinHandle<()>,
}

impl Node {
    pub async fn start(network: &MemoryNetwork) -> Self {
        Self::start_on(network, Arc::new(MemoryStore::new(SCHEMA))).await
    }

    /// A node linked to the relay at `url` as `glia node --relay` is, except that
    /// it reconnects within 100 ms of the relay coming back; returns once the
    /// relay has welcomed it.
    pub async fn over_relay(url: &str) -> Self {
        let node = Self::open(Arc::new(MemoryStore::new(SCHEMA))).await;
        let config = RelayClientConfig {
            backoff_start: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..Default::default()
        };
        let relays = RelayClient::start(node.hs.clone(), vec![url.to_owned()], config);
        assert!(relays.wait_connected(1, WAIT).await, "{:?}", relays.status());
        Self { relays: Some(relays), ..node }
    }

    /// The node's links to relays (a node made by [`Node::over_relay`]).
    pub fn relays(&self) -> &RelayClient {
        self.relays.as_ref().expect("a node linked to a relay")
    }

    /// A node on the on-disk store in `dir`: stopped and started again, it is
    /// the same node with what it had stored.
    pub async fn start_on_disk(network: &MemoryNetwork, dir: &std::path::Path) -> Self {
        // A write the stopped node had started may still hold the file for a moment.
        let store = eventually("the store to be free", || async {
            glia::store::DiskStore::open(dir.join("glia.redb"), SCHEMA).await.ok()
        })
        .await;
        Self::start_on(network, Arc::new(store)).await
    }

    pub async fn start_on(network: &MemoryNetwork, store: Arc<dyn glia::store::Store>) -> Self {
        let node = Self { network: Some(network.clone()), ..Self::open(store).await };
        node.connect();
        node
    }

    async fn open(store: Arc<dyn glia::store::Store>) -> Self {
        let hs = Arc::new(Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap());
        let key = hs.federation().me();
        let running = hs.clone();
        let sender = tokio::spawn(async move { running.run_background().await });
        Self { name: key.to_string(), hs, key, network: None, relays: None, driver: Default::default(), sender }
    }

    fn network(&self) -> &MemoryNetwork {
        self.network.as_ref().expect("a node on the in-process network")
    }

    /// Stops the node as a killed process would stop: its tasks end where they
    /// are, and only what it stored remains.
    pub async fn stop(self) {
        self.disconnect().await;
        self.sender.abort();
        let _ = self.sender.await;
        // Requests taken in before the stop finish their answers.
        eventually("the node's last answers", || async { (Arc::strong_count(&self.hs) == 1).then_some(()) }).await;
    }

    /// Brings the node (back) online; what waited in its mailbox arrives.
    pub fn connect(&self) {
        let (transport, mut inbound) = self.network().connect(self.key);
        self.hs.attach(Arc::new(transport));
        let (hs, network, key) = (self.hs.clone(), self.network().clone(), self.key);
        let (stop, mut stopped) = futures_channel::oneshot::channel();
        let driver = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    _ = &mut stopped => break,
                };
                let Some(message) = message else { break };
                let admitted = hs.admit(message);
                let hs = hs.clone();
                tokio::spawn(async move { hs.answer(admitted).await });
            }
            network.disconnect(key);
            let left = std::iter::from_fn(|| inbound.try_recv().ok());
            network.unhandled(
                key,
                left.filter_map(|message| match message {
                    glia::p2p::Inbound::Frame(bytes) => Some(bytes),
                    _ => None,
                }),
            );
        });
        *self.driver.lock().unwrap() = Some((stop, driver));
    }

    /// Takes the node offline, as a relay sees a node drop: what it had not
    /// taken in yet goes back to its mailbox.
    pub async fn disconnect(&self) {
        let driver = self.driver.lock().unwrap().take();
        if let Some((stop, driver)) = driver {
            let _ = stop.send(());
            let _ = driver.await;
        }
    }

    /// A user of this node whose session is already stored.
    pub fn session(&self, id: &str, token: &str) -> User<'_> {
        User { node: self, id: id.to_owned(), token: token.to_owned() }
    }

    /// A raw request to this node's core.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = http::Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = self.hs.handle(request.body(body).unwrap()).await;
        let json = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (response.status().as_u16(), json)
    }

    /// Registers `name` and returns a logged-in user.
    pub async fn user(&self, name: &str) -> User<'_> {
        let mut body = json!({ "username": name, "password": "correct horse" });
        // Registration is user-interactive: the first answer opens the session.
        let (status, challenge) = self.call("POST", "/_matrix/client/v3/register", None, Some(body.clone())).await;
        assert_eq!(status, 401, "register {name}: {challenge}");
        body["auth"] = json!({ "type": "m.login.dummy", "session": challenge["session"] });
        let (status, json) = self.call("POST", "/_matrix/client/v3/register", None, Some(body)).await;
        assert_eq!(status, 200, "register {name}: {json}");
        User {
            node: self,
            id: json["user_id"].as_str().unwrap().to_owned(),
            token: json["access_token"].as_str().unwrap().to_owned(),
        }
    }
}

pub struct User<'a> {
    pub node: &'a Node,
    pub id: String,
    pub token: String,
}

impl User<'_> {
    /// A client request; paths not starting with `/` are under `/_matrix/client/v3/`.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = if path.starts_with('/') { path.to_owned() } else { format!("/_matrix/client/v3/{path}") };
        self.node.call(method, &path, Some(&self.token), body).await
    }

    pub async fn create_room(&self, body: Value) -> String {
        let room = ok(self.call("POST", "createRoom", Some(body)).await);
        room["room_id"].as_str().unwrap().to_owned()
    }

    /// Invites `other` (of another node) to `room` and waits until their sync
    /// shows the invite.
    pub async fn invite(&self, room: &str, other: &User<'_>) {
        ok(self.call("POST", &format!("rooms/{}/invite", enc(room)), Some(json!({ "user_id": other.id }))).await);
        other.sees("the invite", |s| s["rooms"]["invite"][room].is_object().then_some(())).await;
    }

    /// Invites `other` to `room`, has them join, and waits until this node
    /// sees them in it.
    pub async fn brings_in(&self, room: &str, other: &User<'_>) {
        self.invite(room, other).await;
        ok(other.call("POST", &format!("join/{}", enc(room)), Some(json!({}))).await);
        self.sees_joined(room, &other.id).await;
    }

    /// Sends a text message and returns its event ID.
    pub async fn say(&self, room: &str, body: &str) -> String {
        let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("rooms/{}/send/m.room.message/t{txn}", enc(room));
        let sent = ok(self.call("PUT", &path, Some(json!({ "msgtype": "m.text", "body": body }))).await);
        sent["event_id"].as_str().unwrap().to_owned()
    }

    /// The newest event of the room's timeline.
    pub async fn last_event(&self, room: &str) -> String {
        let messages = ok(self.call("GET", &format!("rooms/{}/messages?dir=b&limit=1", enc(room)), None).await);
        messages["chunk"][0]["event_id"].as_str().unwrap().to_owned()
    }

    /// A full sync, from the start.
    pub async fn sync(&self) -> Value {
        ok(self.call("GET", "sync?timeout=0", None).await)
    }

    /// Waits until the user's sync shows something `found` picks out.
    pub async fn sees<T>(&self, what: &str, found: impl Fn(&Value) -> Option<T>) -> T {
        let what = format!("{}: {what}", self.id);
        eventually(&what, || async { found(&self.sync().await) }).await
    }

    pub async fn sees_message(&self, room: &str, body: &str) {
        let messages = format!("rooms/{}/messages?dir=b&limit=50", enc(room));
        self.eventually(&format!("the message {body:?}"), || async {
            let chunk = self.call("GET", &messages, None).await.1;
            chunk["chunk"].as_array()?.iter().any(|e| e["content"]["body"] == body).then_some(())
        })
        .await
    }

    pub async fn sees_joined(&self, room: &str, member: &str) {
        let path = format!("rooms/{}/joined_members", enc(room));
        self.eventually(&format!("{member} joined"), || async {
            self.call("GET", &path, None).await.1["joined"][member].is_object().then_some(())
        })
        .await
    }

    pub async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(&format!("{}: {what}", self.id), check).await
    }
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The JSON of a 200 response; anything else fails the test with the body.
#[track_caller]
pub fn ok((status, json): (u16, Value)) -> Value {
    assert_eq!(status, 200, "{json}");
    json
}

/// Waits (bounded) until `check` returns `Some`, polling after each change the
/// node's notifier reports or every 50 ms at most.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long any wait of these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A relay in this process on a loopback port, with its mailbox on disk in a
/// directory of its own; it can stop and start again on the same port and
/// directory, as `glia relay` restarted with the same `--listen` and `--data`.
pub struct LoopbackRelay {
    pub url: String,
    pub addr: SocketAddr,
    dir: PathBuf,
    running: Option<(Relay, oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

impl LoopbackRelay {
    pub async fn start(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut relay = Self { url: format!("ws://{addr}/"), addr, dir: dir.to_owned(), running: None };
        relay.serve(listener).await;
        relay
    }

    /// The relay itself (its mailbox, who is online), while it runs.
    pub fn relay(&self) -> &Relay {
        &self.running.as_ref().expect("a running relay").0
    }

    async fn serve(&mut self, listener: TcpListener) {
        let relay = Relay::open(&self.dir, RelayConfig::default()).await.unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(relay::run(listener, relay.clone(), async move {
            let _ = stopped.await;
        }));
        self.running = Some((relay, stop, task));
    }

    /// Stops the relay (its connections end, its store closes).
    pub async fn stop(&mut self) {
        let (_, stop, task) = self.running.take().expect("a running relay");
        let _ = stop.send(());
        tokio::time::timeout(WAIT, task).await.expect("the relay stops in time").unwrap().unwrap();
    }

    /// Starts the stopped relay again on the same port and mailbox.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "the relay is running");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener).await;
    }
}
