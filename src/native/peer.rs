//! A native node's links to relays: the client side of [`crate::p2p::relay`].
//!
//! [`RelayClient::start`] connects a [`Homeserver`] to one or more relays and
//! attaches itself as the node's [`Transport`]. For each relay it answers the
//! challenge with the node key, then hands every frame that arrives to
//! [`Homeserver::admit`] in arrival order, answered on a task of its own, and acks mailbox frames once
//! that returns (by then a request has been answered), so a relay forgets a
//! frame only after the node has handled it. `stored` and frame-level `error`
//! messages become [`Inbound::Delivery`]. Requests sent through a link that
//! drops before they are answered (or stored, or refused) fail at once, as a
//! [`Delivery::Failed`]: no answer can come back on that connection, and their
//! callers would otherwise wait out the request timeout. A link that drops is reconnected with
//! capped exponential backoff until the client shuts down; each welcome makes
//! the node's sender retry every destination at once.
//!
//! With several relays, a frame goes out through the relay its destination was
//! last heard from, or else the first relay (in the order given) that is
//! connected. Relays do not talk to each other: two nodes reach each other only
//! through a relay both are connected to.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ruma::serde::{base64::Standard, Base64};
use tokio::{
    sync::{mpsc, watch, Semaphore},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message, Utf8Bytes};

use crate::{
    core::{lock, service::federation::REQUEST_TIMEOUT_MS},
    p2p::{
        frame::{self, Frame},
        relay::{self as protocol, Control, ErrorCode},
        Delivery, Inbound, PeerKey, Transport, TransportError,
    },
    Homeserver,
};

#[derive(Clone, Debug)]
pub struct RelayClientConfig {
    /// The first wait before reconnecting; it doubles after each failure.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// How long connecting, the challenge and the welcome may each take.
    pub handshake_timeout: Duration,
    /// Frames queued for one relay before `send` fails.
    pub send_queue: usize,
    /// Inbound frames handled at once; reading from the relay waits beyond it.
    pub inbound_tasks: usize,
    /// How often to ask the relay who is online (for the network-wide directory).
    pub peers_every: Duration,
}

impl Default for RelayClientConfig {
    fn default() -> Self {
        Self {
            backoff_start: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            send_queue: 1024,
            inbound_tasks: 256,
            peers_every: Duration::from_secs(10),
        }
    }
}

/// Why a link to a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tungstenite::Error),
    #[error("timed out waiting for the {0}")]
    Timeout(&'static str),
    #[error("the relay closed the connection")]
    Closed,
    #[error("the relay broke the protocol: {0}")]
    Protocol(String),
    #[error("the relay refused this node ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
}

/// What a relay link is doing, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    pub url: String,
    /// Welcomed by the relay and able to send.
    pub connected: bool,
    /// Why the link last failed, if it ever did.
    pub last_error: Option<String>,
    /// How many times the relay has welcomed this node (1 + reconnections).
    pub welcomes: u64,
    /// What this node sent through the relay, over all its connections.
    pub sent: Traffic,
    /// What the relay sent this node, over all its connections.
    pub received: Traffic,
}

/// Messages and bytes through one relay link since [`RelayClient::start`], counted
/// from each connection's welcome on as WebSocket message payloads: frames are the
/// binary messages (byte for byte [`Frame::encode`]), control messages (acks,
/// `stored`, errors...) the text ones. WebSocket's own few header bytes per
/// message and TCP's are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub frames: u64,
    pub frame_bytes: u64,
    pub controls: u64,
    pub control_bytes: u64,
}

/// [`Traffic`] as it is counted, from the link's reader and writer tasks.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    frame_bytes: AtomicU64,
    controls: AtomicU64,
    control_bytes: AtomicU64,
}

impl Counters {
    fn count(&self, message: &Message) {
        let (count, bytes) = match message {
            Message::Binary(_) => (&self.frames, &self.frame_bytes),
            Message::Text(_) => (&self.controls, &self.control_bytes),
            _ => return,
        };
        count.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(message.len() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> Traffic {
        Traffic {
            frames: self.frames.load(Ordering::Relaxed),
            frame_bytes: self.frame_bytes.load(Ordering::Relaxed),
            controls: self.controls.load(Ordering::Relaxed),
            control_bytes: self.control_bytes.load(Ordering::Relaxed),
        }
    }
}

pub struct RelayClient {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    links: Vec<Link>,
    /// The relay each peer was last heard from, by index in `links`.
    routes: Mutex<HashMap<PeerKey, usize>>,
    /// Bumped whenever a link's status changes, for waiters.
    changes: watch::Sender<u64>,
}

struct Link {
    url: String,
    state: Mutex<LinkState>,
    sent: Arc<Counters>,
    received: Counters,
}

#[derive(Default)]
struct LinkState {
    /// Set while the relay has welcomed this node.
    frames: Option<mpsc::Sender<Bytes>>,
    /// Requests sent on this connection (destination, frame id) that have had
    /// no answer, `stored` or refusal through it yet, with when they left.
    unanswered: HashMap<(PeerKey, u64), Instant>,
    last_error: Option<String>,
    welcomes: u64,
    /// The keys the relay last said are online.
    peers: Vec<PeerKey>,
}

/// Unanswered requests a link keeps before it forgets those older than the
/// request timeout (answered through another relay, or given up on).
const UNANSWERED_PRUNE_AT: usize = 1024;

impl LinkState {
    fn sent(&mut self, to: PeerKey, id: u64) {
        if self.unanswered.len() >= UNANSWERED_PRUNE_AT {
            let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
            self.unanswered.retain(|_, sent| sent.elapsed() < timeout);
        }
        self.unanswered.insert((to, id), Instant::now());
    }
}

impl RelayClient {
    /// Connects `hs` to the relays at `urls` (`ws://host:port/path`) and makes
    /// them its transport.
    pub fn start(hs: Arc<Homeserver>, urls: Vec<String>, config: RelayClientConfig) -> Self {
        let shared = Arc::new(Shared {
            links: urls
                .into_iter()
                .map(|url| Link { url, state: Mutex::default(), sent: Arc::default(), received: Counters::default() })
                .collect(),
            routes: Mutex::default(),
            changes: watch::channel(0).0,
        });
        hs.attach(Arc::new(RelayTransport(shared.clone())));
        let (stop, _) = watch::channel(false);
        let tasks = (0..shared.links.len())
            .map(|index| {
                let link = LinkTask {
                    hs: hs.clone(),
                    shared: shared.clone(),
                    index,
                    config: config.clone(),
                    stop: stop.subscribe(),
                };
                tokio::spawn(link.run())
            })
            .collect();
        Self { shared, stop, tasks }
    }

    pub fn status(&self) -> Vec<RelayStatus> {
        self.shared
            .links
            .iter()
            .map(|link| {
                let state = lock(&link.state);
                RelayStatus {
                    url: link.url.clone(),
                    connected: state.frames.is_some(),
                    last_error: state.last_error.clone(),
                    welcomes: state.welcomes,
                    sent: link.sent.get(),
                    received: link.received.get(),
                }
            })
            .collect()
    }

    /// Waits until `check` holds for the links' status, looking again whenever
    /// it changes; false if `timeout` passes first.
    pub async fn wait_until(&self, timeout: Duration, check: impl Fn(&[RelayStatus]) -> bool) -> bool {
        let mut changes = self.shared.changes.subscribe();
        tokio::time::timeout(timeout, changes.wait_for(|_| check(&self.status()))).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until at least `count` relays are connected; false if `timeout` passes first.
    pub async fn wait_connected(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |links| links.iter().filter(|link| link.connected).count() >= count).await
    }

    /// Closes every link and stops reconnecting.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The node's [`Transport`] over its relay links.
struct RelayTransport(Arc<Shared>);

impl Transport for RelayTransport {
    fn send(&self, destination: PeerKey, frame: Bytes) -> Result<(), TransportError> {
        let fail = |reason: &str| TransportError { to: destination, reason: reason.to_owned() };
        let links = &self.0.links;
        let preferred = lock(&self.0.routes).get(&destination).copied();
        let request = Frame::route(&frame).ok().filter(|route| !route.response);
        for link in preferred.into_iter().chain(0..links.len()).filter_map(|index| links.get(index)) {
            // Queued and noted under one lock, so a link that drops either sees
            // the request among its unanswered ones or was gone before it came.
            let mut state = lock(&link.state);
            let Some(sender) = &state.frames else { continue };
            sender.try_send(frame).map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => fail("the relay link's send queue is full"),
                mpsc::error::TrySendError::Closed(_) => fail("the relay link just closed"),
            })?;
            if let Some(request) = request {
                state.sent(request.destination, request.id);
            }
            return Ok(());
        }
        Err(fail("not connected to any relay"))
    }

    fn peers(&self) -> Vec<PeerKey> {
        let mut peers = std::collections::BTreeSet::new();
        for link in &self.0.links {
            let state = lock(&link.state);
            if state.frames.is_some() {
                peers.extend(state.peers.iter().copied());
            }
        }
        peers.into_iter().collect()
    }
}

/// One relay link's reconnect loop.
struct LinkTask {
    hs: Arc<Homeserver>,
    shared: Arc<Shared>,
    index: usize,
    config: RelayClientConfig,
    stop: watch::Receiver<bool>,
}

impl LinkTask {
    fn link(&self) -> &Link {
        &self.shared.links[self.index]
    }

    async fn run(mut self) {
        let mut backoff = self.config.backoff_start;
        let mut reported: Option<String> = None;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let mut welcomed = false;
            let result = self.session(&mut welcomed).await;
            if welcomed {
                backoff = self.config.backoff_start;
            }
            let error = match result {
                Ok(()) => return,
                Err(err) => err.to_string(),
            };
            // Say it once, not on every retry of a relay that stays down.
            if welcomed || reported.as_deref() != Some(error.as_str()) {
                eprintln!("glia: relay {}: {error}; reconnecting", self.link().url);
                reported = Some(error.clone());
            }
            lock(&self.link().state).last_error = Some(error);
            self.shared.changes.send_modify(|n| *n += 1);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = self.stop.wait_for(|stopped| *stopped) => return,
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// One connection, from connecting to its end; `Ok` only when told to stop.
    async fn session(&mut self, welcomed: &mut bool) -> Result<(), LinkError> {
        let limit = Some(frame::MAX_FRAME_BYTES * 2);
        let ws_config = WebSocketConfig::default().max_message_size(limit).max_frame_size(limit);
        let connect = tokio_tungstenite::connect_async_with_config(self.link().url.as_str(), Some(ws_config), true);
        let timeout = self.config.handshake_timeout;
        let (socket, _) =
            tokio::time::timeout(timeout, connect).await.map_err(|_| LinkError::Timeout("connection"))??;
        let (mut sink, mut source) = socket.split();

        let nonce = match next_control(&mut source, timeout, "challenge").await? {
            Control::Challenge { nonce } => Base64::<Standard>::parse(&nonce)
                .map_err(|err| LinkError::Protocol(format!("bad challenge: {err}")))?
                .into_inner(),
            other => return Err(unexpected(other, "a challenge")),
        };
        let key = self.hs.key();
        let sig = Base64::<Standard>::new(key.sign(&protocol::hello_message(&nonce))).encode();
        let hello = Control::Hello { key: PeerKey::of(key).to_string(), sig };
        sink.send(text(&hello)).await?;
        match next_control(&mut source, timeout, "welcome").await? {
            Control::Welcome { .. } => {}
            Control::Error { code, message, .. } => return Err(LinkError::Refused { code, message }),
            other => return Err(unexpected(other, "a welcome")),
        }
        *welcomed = true;

        let (frames, frame_queue) = mpsc::channel(self.config.send_queue);
        let (acks, ack_queue) = mpsc::unbounded_channel();
        let mut writer =
            tokio::spawn(write_loop(sink, frame_queue, ack_queue, self.link().sent.clone(), self.config.peers_every));
        {
            let mut state = lock(&self.link().state);
            state.frames = Some(frames);
            state.last_error = None;
            state.welcomes += 1;
        }
        // What failed to go out while this link was down (for want of any relay,
        // say) waits out a backoff of up to a minute: now that frames can leave
        // again, retry every destination at once, as `Homeserver::attach` does
        // when a node first joins a network.
        self.hs.sender().retry_all();
        self.shared.changes.send_modify(|n| *n += 1);
        eprintln!("glia: relay {}: connected", self.link().url);

        let handlers = Arc::new(Semaphore::new(self.config.inbound_tasks.max(1)));
        let result = loop {
            let message = tokio::select! {
                message = source.next() => message,
                written = &mut writer => break Err(match written {
                    Ok(Err(err)) => err,
                    _ => LinkError::Closed,
                }),
                _ = self.stop.wait_for(|stopped| *stopped) => break Ok(()),
            };
            if let Some(Ok(message)) = &message {
                self.link().received.count(message);
            }
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    // Waits while `inbound_tasks` frames are being handled, which
                    // slows the relay down rather than piling up tasks.
                    let Ok(permit) = handlers.clone().acquire_owned().await else { break Ok(()) };
                    self.on_frame(bytes, acks.clone(), permit);
                }
                Some(Ok(Message::Text(text))) => self.on_control(text.as_str()).await,
                Some(Ok(Message::Close(_))) | None => break Err(LinkError::Closed),
                Some(Ok(_)) => {}
                Some(Err(err)) => break Err(err.into()),
            }
        };

        if result.is_ok() && !writer.is_finished() {
            // Shutting down with the link up: let frames being handled finish,
            // so their acks go out and the relay need not hand them over again.
            let all = u32::try_from(self.config.inbound_tasks.max(1)).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(Duration::from_secs(5), handlers.acquire_many(all)).await;
        }
        let unanswered = {
            let mut state = lock(&self.link().state);
            state.frames = None;
            std::mem::take(&mut state.unanswered)
        };
        // No answer to what went out on this connection can come back on it:
        // its callers hear so now (a transaction is then retried, through
        // this relay once it welcomes the node again or another one).
        for (to, id) in unanswered.into_keys() {
            let reason = format!("the link to relay {} dropped before {to} answered", self.link().url);
            let _ = self.hs.admit(Inbound::Delivery { to, id, delivery: Delivery::Failed(reason) });
        }
        self.shared.changes.send_modify(|n| *n += 1);
        // Dropping the queues' senders ends the writer, which sends the acks
        // still queued and closes the socket.
        drop(acks);
        if !writer.is_finished() && tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
            writer.abort();
        }
        result
    }

    fn on_frame(
        &self,
        bytes: Bytes,
        acks: mpsc::UnboundedSender<(PeerKey, u64)>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Ok(route) = Frame::route(&bytes) else { return };
        lock(&self.shared.routes).insert(route.origin, self.index);
        if route.response {
            lock(&self.link().state).unanswered.remove(&(route.origin, route.id));
        }
        let hs = self.hs.clone();
        // Admitted here, in arrival order, so one node's transactions apply in
        // the order they came; answered on a task of its own, since handling a
        // request may take a while and must not be cancelled if this link drops.
        let admitted = hs.admit(Inbound::Frame(bytes));
        tokio::spawn(async move {
            if hs.answer(admitted).await && route.mailbox {
                // The link may be gone by now: the relay then hands it over again.
                let _ = acks.send((route.origin, route.id));
            }
            drop(permit);
        });
    }

    async fn on_control(&self, message: &str) {
        let Ok(control) = serde_json::from_str::<Control>(message) else { return };
        let (to, id, delivery) = match control {
            Control::Stored { to, id } => (to, id, Delivery::Stored),
            Control::Error { code, message, to: Some(to), id: Some(id) } => {
                (to, id, Delivery::Failed(format!("{}: {message}", code_name(code))))
            }
            Control::Error { code, message, .. } => {
                lock(&self.link().state).last_error = Some(format!("{}: {message}", code_name(code)));
                return;
            }
            Control::Peers { keys } => {
                let peers: Vec<PeerKey> = keys.iter().filter_map(|key| protocol::parse_key(key)).collect();
                let changed = std::mem::replace(&mut lock(&self.link().state).peers, peers.clone()) != peers;
                if changed {
                    self.shared.changes.send_modify(|n| *n += 1);
                }
                return;
            }
            // Signalling is for the browser's WebRTC, which a native node does not speak.
            _ => return,
        };
        if let Some(to) = protocol::parse_key(&to) {
            lock(&self.link().state).unanswered.remove(&(to, id));
            self.hs.inbound(Inbound::Delivery { to, id, delivery }).await;
        }
    }
}

/// The code as the protocol writes it (`mailbox_full`).
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{code:?}"))
}

fn unexpected(control: Control, wanted: &str) -> LinkError {
    LinkError::Protocol(format!("expected {wanted}, got {control:?}"))
}

fn text(control: &Control) -> Message {
    Message::Text(Utf8Bytes::from(serde_json::to_string(control).expect("control messages serialize")))
}

async fn next_control<S>(source: &mut S, timeout: Duration, what: &'static str) -> Result<Control, LinkError>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(timeout, source.next()).await.map_err(|_| LinkError::Timeout(what))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|err| LinkError::Protocol(format!("bad control message: {err}")));
            }
            Some(Ok(Message::Binary(_))) => return Err(LinkError::Protocol(format!("a frame before the {what}"))),
            Some(Ok(Message::Close(_))) | None => return Err(LinkError::Closed),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// Writes queued frames and acks, flushing once per batch; acks that pile up
/// go as one message.
async fn write_loop<S>(
    sink: S,
    mut frames: mpsc::Receiver<Bytes>,
    mut acks: mpsc::UnboundedReceiver<(PeerKey, u64)>,
    sent: Arc<Counters>,
    peers_every: Duration,
) -> Result<(), LinkError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut sink = sink.with(|message: Message| {
        sent.count(&message);
        std::future::ready(Ok::<_, tungstenite::Error>(message))
    });
    const BATCH: usize = 256;
    let mut acks_open = true;
    // Who is online changes all the time: ask again every so often.
    let mut peers = tokio::time::interval(peers_every);
    loop {
        tokio::select! {
            _ = peers.tick() => sink.feed(text(&Control::Peers { keys: Vec::new() })).await?,
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                sink.feed(Message::Binary(frame)).await?;
                for _ in 1..BATCH {
                    let Ok(frame) = frames.try_recv() else { break };
                    sink.feed(Message::Binary(frame)).await?;
                }
            }
            ack = acks.recv(), if acks_open => {
                let Some(first) = ack else { acks_open = false; continue };
                let mut batch = vec![first];
                while batch.len() < 1024 {
                    let Ok(ack) = acks.try_recv() else { break };
                    batch.push(ack);
                }
                let frames = batch.into_iter().map(|(origin, id)| (origin.to_string(), id)).collect();
                sink.feed(text(&Control::Ack { frames })).await?;
            }
        }
        sink.flush().await?;
    }
    let frames: Vec<_> = std::iter::from_fn(|| acks.try_recv().ok()).map(|(o, id)| (o.to_string(), id)).collect();
    if !frames.is_empty() {
        sink.send(text(&Control::Ack { frames })).await?;
    }
    let _ = sink.close().await;
    Ok(())
}
