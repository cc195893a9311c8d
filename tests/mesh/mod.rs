//! Nodes in one process, joined by the in-process network: each node's
//! inbound frames are handled on a task of its own, as a shell would.

#![allow(dead_code)] // Each test crate uses its own subset.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use glia::{
    core::{OsRandom, SystemClock, SCHEMA},
    p2p::{memory::MemoryNetwork, PeerKey},
    store::MemoryStore,
    Homeserver,
};
use serde_json::{json, Value};

pub struct Node {
    pub hs: Arc<Homeserver>,
    pub key: PeerKey,
    pub name: String,
    network: MemoryNetwork,
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    pub async fn start(network: &MemoryNetwork) -> Self {
        let store = Arc::new(MemoryStore::new(SCHEMA));
        let hs = Arc::new(Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap());
        let key = hs.federation().me();
        let mut node = Self { name: key.to_string(), hs, key, network: network.clone(), driver: None };
        node.connect();
        node
    }

    /// Brings the node (back) online; what waited in its mailbox arrives.
    pub fn connect(&mut self) {
        let (transport, mut inbound) = self.network.connect(self.key);
        self.hs.attach(Arc::new(transport));
        let hs = self.hs.clone();
        self.driver = Some(tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let hs = hs.clone();
                tokio::spawn(async move { hs.inbound(message).await });
            }
        }));
    }

    pub fn disconnect(&mut self) {
        self.network.disconnect(self.key);
        if let Some(driver) = self.driver.take() {
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

    #[track_caller]
    pub fn ok((status, json): (u16, Value)) -> Value {
        assert_eq!(status, 200, "{json}");
        json
    }
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
