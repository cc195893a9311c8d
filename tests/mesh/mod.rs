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

pub struct Node {
    pub hs: Arc<Homeserver>,
    pub key: PeerKey,
    pub name: String,
    /// The in-process network, for nodes made by [`Node::start`].
    network: Option<MemoryNetwork>,
    /// The links to relays, for nodes made by [`Node::over_relay`].
    pub relays: Option<RelayClient>,
    driver: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    async fn open() -> Self {
        let store = Arc::new(MemoryStore::new(SCHEMA));
        let hs = Arc::new(Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap());
        let key = hs.federation().me();
        let sender = hs.clone();
        tokio::spawn(async move { sender.run_sender().await });
        Self { name: key.to_string(), hs, key, network: None, relays: None, driver: Default::default() }
    }

    /// A node on the in-process network.
    pub async fn start(network: &MemoryNetwork) -> Self {
        let node = Self { network: Some(network.clone()), ..Self::open().await };
        node.connect();
        node
    }

    /// A node linked to the relay at `url` as `glia node --relay` is, except that
    /// it reconnects within 100 ms of the relay coming back; returns once the
    /// relay has welcomed it.
    pub async fn over_relay(url: &str) -> Self {
        let node = Self::open().await;
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

    /// Brings the node (back) online; what waited in its mailbox arrives.
    pub fn connect(&self) {
        let network = self.network.as_ref().expect("a node on the in-process network");
        let (transport, mut inbound) = network.connect(self.key);
        self.hs.attach(Arc::new(transport));
        let hs = self.hs.clone();
        *self.driver.lock().unwrap() = Some(tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let admitted = hs.admit(message);
                let hs = hs.clone();
                tokio::spawn(async move { hs.answer(admitted).await });
            }
        }));
    }

    pub fn disconnect(&self) {
        self.network.as_ref().expect("a node on the in-process network").disconnect(self.key);
        if let Some(driver) = self.driver.lock().unwrap().take() {
            driver.abort();
        }
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

/// Percent-encodes a path segment.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
