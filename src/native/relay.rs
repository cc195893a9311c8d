//! `glia relay`: a WebSocket server that authenticates nodes by their keys,
//! forwards frames between them, keeps a bounded, persistent mailbox for nodes
//! that are offline, and passes WebRTC signalling.
//!
//! The wire protocol is [`crate::p2p::relay`] (control messages, text) and
//! [`crate::p2p::frame`] (frames, binary). The relay reads only a frame's fixed
//! prefix ([`Frame::route`]): it never parses the request inside, holds no
//! private key, and accepts a frame only when its origin is the key the
//! connection proved with its hello, so it cannot forge or redirect a frame.
//!
//! Delivery: a frame for a node that is online goes to that key's newest
//! connection without touching the disk. A frame with the `mailbox` flag is
//! tracked until the receiver acks it; if the connection drops first, it moves
//! into the mailbox (and its sender, if connected, hears `stored`, as it would
//! have had the drop come first). A frame for a node that is offline goes into
//! its mailbox when the flag is set (the sender hears `stored` once it is on
//! disk), and is refused with `offline` otherwise. On connect a node gets `welcome` and then
//! its mailbox; those frames stay stored until it acks them, so a node that
//! drops before acking gets them again on its next connection.
//!
//! Every limit is in [`RelayConfig`] and each refusal is an `error` control
//! message naming it; frame-level refusals carry the frame's `to` and `id`.
//!
//! # Storage
//!
//! The mailbox lives in a [`DiskStore`] (`relay.redb` in the data directory)
//! with two tables, keyed alike:
//!
//! ```text
//! key                          = destination key (32 bytes) ‖ arrival sequence (u64 BE)
//! mailbox        value         = the frame, byte for byte as the origin sent it
//! mailbox_index  value (52 B)  = arrival time (ms since the Unix epoch, u64 BE)
//!                                ‖ frame length (u32 BE) ‖ origin key (32 bytes) ‖ frame id (u64 BE)
//! ```
//!
//! The sequence is one counter for the whole relay, so a destination's frames
//! sort in arrival order and a restarted relay resumes after the largest one it
//! finds. `mailbox_index` is what a starting relay reads to rebuild its
//! in-memory index (without reading every frame); `mailbox` is read only to
//! hand frames over. Writes go through one task that commits whatever has
//! queued up as one batch, so a burst of stores costs one fsync.

use std::{
    collections::{hash_map::Entry as MapEntry, BTreeMap, HashMap},
    future::Future,
    ops::Bound,
    path::Path,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{
        ws::{Message, Utf8Bytes, WebSocket},
        State, WebSocketUpgrade,
    },
    response::Response,
    routing::get,
};
use bytes::Bytes;
use futures_util::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use ruma::serde::Base64;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

use crate::{
    core::lock,
    p2p::{
        frame::{self, Frame, Route},
        relay::{self as protocol, Control, ErrorCode},
        PeerKey,
    },
    store::{Batch, Direction, DiskStore, KeyRange, Schema, Store, StoreError},
};

pub const MAILBOX: &str = "mailbox";
pub const MAILBOX_INDEX: &str = "mailbox_index";

/// The tables of a relay's store; the module doc gives their key encodings.
pub const SCHEMA: Schema = Schema { version: 1, tables: &[MAILBOX, MAILBOX_INDEX] };

/// Where `glia serve` mounts its relay, beside the web app.
pub const PATH: &str = "/_glia/relay";

/// The store's file inside a relay's data directory.
const STORE_FILE: &str = "relay.redb";

/// Most operations one commit of the mailbox writer takes, so one commit
/// never holds a very large batch in memory.
const BATCH_OPS: usize = 4096;
const BATCH_BYTES: usize = 16 << 20;
/// Frames read from disk at a time when a mailbox is handed over.
const HANDOVER_CHUNK: usize = 64;
/// Messages a connection's writer sends before flushing the socket.
const WRITE_BATCH: usize = 256;

/// A token bucket: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Largest frame forwarded or stored.
    pub max_frame_bytes: usize,
    /// Largest control (text) message taken from a node.
    pub max_control_bytes: usize,
    /// Frames held for one key: its mailbox plus frames handed to it and not yet acked.
    pub mailbox_frames: usize,
    /// Bytes held for one key, counted like `mailbox_frames`.
    pub mailbox_bytes: u64,
    /// Bytes held for all keys together, so many keys cannot fill the disk.
    pub total_mailbox_bytes: u64,
    /// Mailbox frames older than this are dropped.
    pub mailbox_max_age: Duration,
    /// Connections one key may hold at once.
    pub connections_per_key: usize,
    /// Messages a connection may send (frames and control messages); `None` is unlimited.
    pub rate: Option<Rate>,
    /// How long a node has to answer the challenge.
    pub hello_timeout: Duration,
    /// A connection whose socket takes longer than this to accept a write is
    /// dropped, so a node that stops reading cannot stall its senders for long.
    pub write_timeout: Duration,
    /// Bytes queued for one connection before its senders wait.
    pub send_queue_bytes: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: frame::MAX_FRAME_BYTES,
            max_control_bytes: 64 * 1024,
            mailbox_frames: 10_000,
            mailbox_bytes: 64 << 20,
            total_mailbox_bytes: 4 << 30,
            mailbox_max_age: Duration::from_secs(7 * 24 * 3600),
            connections_per_key: 4,
            rate: Some(Rate { per_second: 500.0, burst: 1000.0 }),
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            send_queue_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the relay's data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("the relay's mailbox store: {0}")]
    Store(#[from] StoreError),
}

/// Why a hello was refused.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before its hello")]
    Closed,
    #[error("expected a hello, got something else")]
    NotHello,
    #[error("the key is not 64 lowercase hex digits")]
    BadKey,
    #[error("the signature is not 64 bytes of base64")]
    BadSignatureEncoding,
    #[error("the signature does not verify with that key")]
    BadSignature,
}

/// A relay: cheap to clone, every clone is the same relay.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    config: RelayConfig,
    hub: Mutex<Hub>,
    /// Taken out by [`Relay::close`], which releases the store file.
    store: Mutex<Option<DiskStore>>,
    disk: mpsc::UnboundedSender<DiskOp>,
    writer: Mutex<Option<JoinHandle<()>>>,
    sweeper: Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    /// Bumped whenever a connection comes or goes or a mailbox changes.
    changes: watch::Sender<u64>,
    /// Every connection holds a clone; [`Relay::close`] waits for all to drop.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_gone: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// Who is online and what the relay holds for whom.
#[derive(Default)]
struct Hub {
    keys: HashMap<PeerKey, KeyState>,
    next_seq: u64,
    next_conn: u64,
    /// Bytes held for every key together (stored and in flight).
    held_bytes: u64,
}

#[derive(Default)]
struct KeyState {
    /// Oldest first; frames go to the last.
    conns: Vec<Conn>,
    /// The mailbox, by arrival sequence.
    stored: BTreeMap<u64, Stored>,
    /// Stored frames by (origin, id), for acks and to keep a resent frame once.
    by_id: HashMap<(PeerKey, u64), u64>,
    /// Stored plus in flight on any connection.
    held_frames: usize,
    held_bytes: u64,
}

struct Conn {
    id: u64,
    outbox: Outbox,
    /// Mailbox-flagged frames forwarded live and not yet acked.
    in_flight: HashMap<(PeerKey, u64), InFlight>,
}

struct InFlight {
    frame: Bytes,
    arrived: u64,
}

struct Stored {
    origin: PeerKey,
    id: u64,
    arrived: u64,
    len: u32,
    /// The frame until its write commits; after that it is read from disk.
    unwritten: Option<Bytes>,
}

/// Whom to tell, and what, once a stored frame is on disk.
type Notify = Option<(Outbox, Control)>;

/// Mailbox frames to hand a connection: sequence, and the frame if not yet on disk.
type Handover = Vec<(u64, Option<Bytes>)>;

enum DiskOp {
    Put {
        dest: PeerKey,
        seq: u64,
        index: [u8; 52],
        frame: Bytes,
        notify: Notify,
    },
    Delete {
        dest: PeerKey,
        seq: u64,
    },
    /// Answered once everything queued before it is committed; the writer then stops.
    Close(oneshot::Sender<()>),
}

/// What to do with a frame, decided under the hub's lock and done outside it.
enum Decision {
    Forward(Outbox),
    Store(DiskOp),
    Refuse(Control),
}

impl Relay {
    /// Opens the relay whose mailbox lives in `data_dir`, creating it if needed.
    /// Must run inside a tokio runtime: it starts the mailbox writer.
    pub async fn open(data_dir: &Path, config: RelayConfig) -> Result<Self, RelayError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| RelayError::DataDir { path: data_dir.display().to_string(), source })?;
        let store = DiskStore::open(data_dir.join(STORE_FILE), SCHEMA).await?;
        let (hub, expired) = load(&store, &config).await?;
        let (disk, disk_rx) = mpsc::unbounded_channel();
        let (alive, all_gone) = mpsc::channel(1);
        let inner = Arc::new(Inner {
            config,
            hub: Mutex::new(hub),
            store: Mutex::new(Some(store.clone())),
            disk,
            writer: Mutex::new(None),
            sweeper: Mutex::new(None),
            stop: watch::channel(false).0,
            changes: watch::channel(0).0,
            alive: Mutex::new(Some(alive)),
            all_gone: tokio::sync::Mutex::new(all_gone),
        });
        for (dest, seq) in expired {
            let _ = inner.disk.send(DiskOp::Delete { dest, seq });
        }
        *lock(&inner.writer) = Some(tokio::spawn(write_mailbox(store, Arc::downgrade(&inner), disk_rx)));
        *lock(&inner.sweeper) = Some(tokio::spawn(sweep(Arc::downgrade(&inner))));
        Ok(Self { inner })
    }

    /// The relay at `/`.
    pub fn router(&self) -> axum::Router {
        self.router_at("/")
    }

    /// The relay at `path`, to merge with other routes on one listener.
    pub fn router_at(&self, path: &str) -> axum::Router {
        axum::Router::new().route(path, get(upgrade)).with_state(self.clone())
    }

    /// Keys with at least one connection, in order.
    pub fn online(&self) -> Vec<PeerKey> {
        let hub = lock(&self.inner.hub);
        let mut keys: Vec<_> = hub.keys.iter().filter(|(_, state)| !state.conns.is_empty()).map(|(k, _)| *k).collect();
        keys.sort();
        keys
    }

    /// Waits until `check` holds, looking again whenever a connection comes or
    /// goes or a mailbox changes; false if `timeout` passes first.
    pub async fn wait_until(&self, timeout: Duration, check: impl Fn(&Relay) -> bool) -> bool {
        let mut changes = self.inner.changes.subscribe();
        tokio::time::timeout(timeout, changes.wait_for(|_| check(self))).await.is_ok_and(|r| r.is_ok())
    }

    /// Frames waiting in `key`'s mailbox.
    pub fn mailbox_len(&self, key: &PeerKey) -> usize {
        lock(&self.inner.hub).keys.get(key).map_or(0, |state| state.stored.len())
    }

    /// Tells every connection to end; new ones are refused. [`Relay::close`]
    /// waits for them.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
        lock(&self.inner.alive).take();
    }

    /// Stops the relay: ends every connection (their unacked frames move to
    /// the mailbox), commits every queued mailbox write and releases the store
    /// file, so a relay can be opened again on the same directory.
    pub async fn close(&self) {
        self.stop();
        // Connections end promptly once told: each waits at most its write timeout.
        let _ = self.inner.all_gone.lock().await.recv().await;
        let (done, flushed) = oneshot::channel();
        if self.inner.disk.send(DiskOp::Close(done)).is_ok() {
            let _ = flushed.await;
        }
        let writer = lock(&self.inner.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        if let Some(sweeper) = lock(&self.inner.sweeper).take() {
            sweeper.abort();
        }
        lock(&self.inner.store).take();
    }

    fn config(&self) -> &RelayConfig {
        &self.inner.config
    }
}

/// Serves `relay` at `/` on `listener` until `shutdown` resolves, then closes it.
pub async fn run(
    listener: TcpListener,
    relay: Relay,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, relay.router(), relay, shutdown).await
}

/// Serves `router`, which holds `relay` somewhere among other routes, until
/// `shutdown` resolves; then ends the relay's connections and closes it.
pub async fn run_with(
    listener: TcpListener,
    router: axum::Router,
    relay: Relay,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = relay.clone();
    // Upgraded sockets outlive their HTTP connection: stop them first, or the
    // graceful shutdown would not see them.
    let result = super::run(listener, router, async move {
        shutdown.await;
        stopping.stop();
    })
    .await;
    relay.close().await;
    result
}

/// Reads the mailbox index into memory; returns it with the entries that
/// expired while the relay was down.
async fn load(store: &DiskStore, config: &RelayConfig) -> Result<(Hub, Vec<(PeerKey, u64)>), StoreError> {
    let mut hub = Hub::default();
    let mut expired = Vec::new();
    let now = now_ms();
    let max_age = config.mailbox_max_age.as_millis() as u64;
    let mut from = Bound::Unbounded;
    loop {
        let page = store.scan(MAILBOX_INDEX, KeyRange::new(from, Bound::Unbounded), Direction::Forward, 4096).await?;
        let Some((last, _)) = page.last() else { break };
        from = Bound::Excluded(last.clone());
        for (key, value) in page {
            let Some((dest, seq)) = parse_entry_key(&key) else { continue };
            hub.next_seq = hub.next_seq.max(seq + 1);
            match parse_index(&value) {
                Some(entry) if now.saturating_sub(entry.arrived) < max_age => {
                    let state = hub.keys.entry(dest).or_default();
                    state.by_id.insert((entry.origin, entry.id), seq);
                    state.held_frames += 1;
                    state.held_bytes += u64::from(entry.len);
                    hub.held_bytes += u64::from(entry.len);
                    state.stored.insert(seq, entry);
                }
                // Expired, or not an index entry this relay wrote: drop it.
                _ => expired.push((dest, seq)),
            }
        }
    }
    Ok((hub, expired))
}

fn entry_key(dest: &PeerKey, seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&dest.0);
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn parse_entry_key(key: &[u8]) -> Option<(PeerKey, u64)> {
    let key: &[u8; 40] = key.try_into().ok()?;
    let dest = PeerKey(key[..32].try_into().ok()?);
    Some((dest, u64::from_be_bytes(key[32..].try_into().ok()?)))
}

fn index_value(arrived: u64, len: u32, origin: &PeerKey, id: u64) -> [u8; 52] {
    let mut value = [0u8; 52];
    value[..8].copy_from_slice(&arrived.to_be_bytes());
    value[8..12].copy_from_slice(&len.to_be_bytes());
    value[12..44].copy_from_slice(&origin.0);
    value[44..].copy_from_slice(&id.to_be_bytes());
    value
}

fn parse_index(value: &[u8]) -> Option<Stored> {
    let value: &[u8; 52] = value.try_into().ok()?;
    Some(Stored {
        arrived: u64::from_be_bytes(value[..8].try_into().ok()?),
        len: u32::from_be_bytes(value[8..12].try_into().ok()?),
        origin: PeerKey(value[12..44].try_into().ok()?),
        id: u64::from_be_bytes(value[44..].try_into().ok()?),
        unwritten: None,
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Commits queued mailbox writes, as many at once as have queued up, and tells
/// senders their frames are stored once they are on disk.
async fn write_mailbox(store: DiskStore, relay: Weak<Inner>, mut ops: mpsc::UnboundedReceiver<DiskOp>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = ops.recv().await else { break };
        let mut batch = Batch::new();
        let mut puts = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                DiskOp::Put { dest, seq, index, frame, notify } => {
                    let key = entry_key(&dest, seq);
                    bytes += frame.len();
                    batch = batch.put(MAILBOX, key, frame.to_vec()).put(MAILBOX_INDEX, key, index);
                    puts.push((dest, seq, notify));
                }
                DiskOp::Delete { dest, seq } => {
                    let key = entry_key(&dest, seq);
                    batch = batch.delete(MAILBOX, key).delete(MAILBOX_INDEX, key);
                }
                DiskOp::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.ops.len() < BATCH_OPS && bytes < BATCH_BYTES {
                next = ops.try_recv().ok();
            }
        }
        let result = if batch.ops.is_empty() { Ok(()) } else { store.write(batch).await };
        let Some(relay) = relay.upgrade() else { break };
        settle(&relay, puts, result);
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// After a commit: frames written are read from disk from now on and their
/// senders hear `stored`; frames a failed commit lost leave the mailbox and
/// their senders hear why.
fn settle(relay: &Inner, puts: Vec<(PeerKey, u64, Notify)>, result: Result<(), StoreError>) {
    let mut replies = Vec::new();
    {
        let mut hub = lock(&relay.hub);
        for (dest, seq, notify) in puts {
            match &result {
                Ok(()) => {
                    if let Some(entry) = hub.keys.get_mut(&dest).and_then(|state| state.stored.get_mut(&seq)) {
                        entry.unwritten = None;
                    }
                    replies.extend(notify);
                }
                Err(err) => {
                    hub.forget(&dest, seq);
                    if let Some((outbox, Control::Stored { to, id })) = notify {
                        let message =
                            format!("the destination is offline and the relay could not store the frame: {err}");
                        replies.push((outbox, refusal(ErrorCode::Offline, message, Some(to), Some(id))));
                    }
                }
            }
        }
    }
    if let Err(err) = &result {
        eprintln!("glia relay: mailbox write failed: {err}");
    }
    relay.changes.send_modify(|n| *n += 1);
    for (outbox, control) in replies {
        outbox.send_soon(text(&control));
    }
}

/// Drops expired mailbox frames, a few times per max age (at least every minute).
async fn sweep(relay: Weak<Inner>) {
    loop {
        let period = match relay.upgrade() {
            Some(relay) => {
                (relay.config.mailbox_max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
            }
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(relay) = relay.upgrade() else { return };
        let max_age = relay.config.mailbox_max_age.as_millis() as u64;
        let now = now_ms();
        let mut hub = lock(&relay.hub);
        let expired: Vec<(PeerKey, u64)> = hub
            .keys
            .iter()
            .flat_map(|(dest, state)| {
                state
                    .stored
                    .iter()
                    .filter(|(_, e)| now.saturating_sub(e.arrived) >= max_age)
                    .map(|(seq, _)| (*dest, *seq))
            })
            .collect();
        for (dest, seq) in expired {
            hub.forget(&dest, seq);
            let _ = relay.disk.send(DiskOp::Delete { dest, seq });
        }
    }
}

impl Hub {
    /// Takes a frame out of `dest`'s mailbox index (the caller deletes it on disk).
    fn forget(&mut self, dest: &PeerKey, seq: u64) -> bool {
        let Some(state) = self.keys.get_mut(dest) else { return false };
        let Some(entry) = state.stored.remove(&seq) else { return false };
        state.by_id.remove(&(entry.origin, entry.id));
        state.held_frames -= 1;
        state.held_bytes -= u64::from(entry.len);
        self.held_bytes -= u64::from(entry.len);
        self.drop_if_idle(dest);
        true
    }

    fn drop_if_idle(&mut self, key: &PeerKey) {
        if let MapEntry::Occupied(state) = self.keys.entry(*key) {
            if state.get().conns.is_empty() && state.get().held_frames == 0 {
                state.remove();
            }
        }
    }

    /// Whether `dest` may hold one more frame of `len` bytes.
    fn room_for(&self, config: &RelayConfig, dest: &PeerKey, len: usize) -> Result<(), String> {
        let (frames, bytes) = self.keys.get(dest).map_or((0, 0), |state| (state.held_frames, state.held_bytes));
        let len = len as u64;
        if frames >= config.mailbox_frames {
            Err(format!("the destination's mailbox holds its limit of {} frames", config.mailbox_frames))
        } else if bytes + len > config.mailbox_bytes {
            Err(format!("the destination's mailbox holds its limit of {} bytes", config.mailbox_bytes))
        } else if self.held_bytes + len > config.total_mailbox_bytes {
            Err("the relay's mailboxes are full".to_owned())
        } else {
            Ok(())
        }
    }

    /// Where a frame from a proven origin goes.
    fn route(&mut self, config: &RelayConfig, route: &Route, bytes: &Bytes, reply_to: &Outbox) -> Decision {
        let dest = route.destination;
        let to = Some(dest.to_string());
        let full = |message| Decision::Refuse(refusal(ErrorCode::MailboxFull, message, to.clone(), Some(route.id)));
        let online = self.keys.get(&dest).is_some_and(|state| !state.conns.is_empty());
        if online {
            if route.mailbox {
                if let Err(message) = self.room_for(config, &dest, bytes.len()) {
                    return full(message);
                }
            }
            let state = self.keys.get_mut(&dest).expect("online");
            let conn = state.conns.last_mut().expect("online");
            let outbox = conn.outbox.clone();
            if route.mailbox {
                let held = InFlight { frame: bytes.clone(), arrived: now_ms() };
                // The same frame again (a resend) replaces the first and is held once.
                let replaced = conn.in_flight.insert((route.origin, route.id), held).map_or(0, |old| old.frame.len());
                state.held_frames += usize::from(replaced == 0);
                state.held_bytes = state.held_bytes + bytes.len() as u64 - replaced as u64;
                self.held_bytes = self.held_bytes + bytes.len() as u64 - replaced as u64;
            }
            return Decision::Forward(outbox);
        }
        if !route.mailbox {
            return Decision::Refuse(refusal(
                ErrorCode::Offline,
                "the destination is not connected",
                to,
                Some(route.id),
            ));
        }
        let stored = Control::Stored { to: dest.to_string(), id: route.id };
        if self.keys.get(&dest).is_some_and(|state| state.by_id.contains_key(&(route.origin, route.id))) {
            // Already kept: a sender retrying after a lost `stored` must not
            // fill the mailbox with copies.
            return Decision::Refuse(stored);
        }
        if let Err(message) = self.room_for(config, &dest, bytes.len()) {
            return full(message);
        }
        let state = self.keys.entry(dest).or_default();
        state.held_frames += 1;
        state.held_bytes += bytes.len() as u64;
        self.held_bytes += bytes.len() as u64;
        let op = self.keep(dest, route.origin, route.id, now_ms(), bytes.clone(), Some((reply_to.clone(), stored)));
        Decision::Store(op)
    }

    /// Adds a frame to `dest`'s mailbox index; the caller has counted it in
    /// the held totals, and queues the returned write.
    fn keep(&mut self, dest: PeerKey, origin: PeerKey, id: u64, arrived: u64, frame: Bytes, notify: Notify) -> DiskOp {
        let seq = self.next_seq;
        self.next_seq += 1;
        let len = frame.len() as u32;
        let state = self.keys.entry(dest).or_default();
        state.by_id.insert((origin, id), seq);
        state.stored.insert(seq, Stored { origin, id, arrived, len, unwritten: Some(frame.clone()) });
        DiskOp::Put { dest, seq, index: index_value(arrived, len, &origin, id), frame, notify }
    }

    /// The frames `key` acks, from wherever the relay holds them.
    fn ack(&mut self, key: &PeerKey, frames: &[(String, u64)]) -> Vec<DiskOp> {
        let mut deletes = Vec::new();
        let Some(state) = self.keys.get_mut(key) else { return deletes };
        let mut released = 0;
        for (origin, id) in frames {
            let Some(origin) = protocol::parse_key(origin) else { continue };
            // Both, if a resent frame is in flight and in the mailbox too.
            let in_flight = state.conns.iter_mut().find_map(|conn| conn.in_flight.remove(&(origin, *id)));
            if let Some(held) = in_flight {
                state.held_frames -= 1;
                state.held_bytes -= held.frame.len() as u64;
                released += held.frame.len() as u64;
            }
            if let Some(seq) = state.by_id.remove(&(origin, *id)) {
                if let Some(entry) = state.stored.remove(&seq) {
                    state.held_frames -= 1;
                    state.held_bytes -= u64::from(entry.len);
                    released += u64::from(entry.len);
                    deletes.push(DiskOp::Delete { dest: *key, seq });
                }
            }
        }
        self.held_bytes -= released;
        self.drop_if_idle(key);
        deletes
    }

    /// The frames of `key`'s mailbox to hand a new connection, oldest first.
    fn handover(&self, config: &RelayConfig, key: &PeerKey) -> Handover {
        let max_age = config.mailbox_max_age.as_millis() as u64;
        let now = now_ms();
        self.keys.get(key).map_or_else(Vec::new, |state| {
            state
                .stored
                .iter()
                .filter(|(_, entry)| now.saturating_sub(entry.arrived) < max_age)
                .map(|(seq, entry)| (*seq, entry.unwritten.clone()))
                .collect()
        })
    }
}

fn refusal(code: ErrorCode, message: impl Into<String>, to: Option<String>, id: Option<u64>) -> Control {
    Control::Error { code, message: message.into(), to, id }
}

fn text(control: &Control) -> Message {
    Message::Text(Utf8Bytes::from(serde_json::to_string(control).expect("control messages serialize")))
}

/// A connection's outgoing queue, bounded in bytes: senders wait while it is
/// full, and the connection's writer frees room as it writes.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    capacity: u32,
}

/// The connection is gone.
struct Gone;

impl Outbox {
    fn new(capacity: usize) -> (Self, mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>) {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        let (queue, rx) = mpsc::unbounded_channel();
        (Self { queue, room: Arc::new(Semaphore::new(capacity as usize)), capacity }, rx)
    }

    /// What a message costs in queue room: its size, with a floor so many tiny
    /// messages are bounded too, and a ceiling so one large one still fits.
    fn cost(&self, message: &Message) -> u32 {
        let len = match message {
            Message::Binary(bytes) => bytes.len(),
            Message::Text(text) => text.len(),
            _ => 0,
        };
        (len.max(64).min(self.capacity as usize)) as u32
    }

    async fn send(&self, message: Message) -> Result<(), Gone> {
        let permit = self.room.clone().acquire_many_owned(self.cost(&message)).await.map_err(|_| Gone)?;
        self.queue.send((message, permit)).map_err(|_| Gone)
    }

    fn try_send(&self, message: Message) -> Result<(), Option<Message>> {
        match self.room.clone().try_acquire_many_owned(self.cost(&message)) {
            Ok(permit) => self.queue.send((message, permit)).map_err(|_| None),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Some(message)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(None),
        }
    }

    /// Sends without waiting, or on a task of its own if the queue is full.
    fn send_soon(self, message: Message) {
        if let Err(Some(message)) = self.try_send(message) {
            tokio::spawn(async move { self.send(message).await });
        }
    }
}

struct TokenBucket {
    rate: Option<Rate>,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: Option<Rate>) -> Self {
        Self { rate, tokens: rate.map_or(0.0, |r| r.burst), at: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let Some(rate) = self.rate else { return true };
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn upgrade(State(relay): State<Relay>, ws: WebSocketUpgrade) -> Response {
    let config = relay.config();
    // Twice the frame limit, so a frame somewhat over it is read and refused
    // with `frame_too_large` rather than by a dropped connection.
    let limit = config.max_frame_bytes.max(config.max_control_bytes).saturating_mul(2);
    ws.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| relay.serve(socket))
}

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

impl Relay {
    async fn serve(self, socket: WebSocket) {
        let Some(_alive) = lock(&self.inner.alive).clone() else { return };
        let mut stop = self.inner.stop.subscribe();
        let (mut sink, mut source) = socket.split();
        let key = match self.hello(&mut sink, &mut source).await {
            Ok(key) => key,
            Err(err) => {
                return refuse(sink, refusal(ErrorCode::BadHello, err.to_string(), None, None)).await;
            }
        };
        let (outbox, queue) = Outbox::new(self.config().send_queue_bytes);
        let (conn, handover) = match self.register(key, &outbox) {
            Ok(registered) => registered,
            Err(control) => return refuse(sink, control).await,
        };
        let mut writer = tokio::spawn(write_loop(sink, queue, outbox.room.clone(), self.config().write_timeout));
        let handing_over = tokio::spawn(self.clone().hand_over(key, handover, outbox.clone()));
        let mut bucket = TokenBucket::new(self.config().rate);
        let mut writer_done = false;
        loop {
            let message = tokio::select! {
                message = source.next() => message,
                _ = &mut writer => { writer_done = true; break }
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            let reply = match message {
                Some(Ok(Message::Binary(frame))) => self.on_frame(key, &outbox, &mut bucket, frame).await,
                Some(Ok(Message::Text(text))) => self.on_control(key, &mut bucket, text.as_str()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            };
            if let Some(reply) = reply {
                if outbox.send(text(&reply)).await.is_err() {
                    break;
                }
            }
        }
        handing_over.abort();
        self.unregister(key, conn);
        drop(outbox);
        // The writer ends once the hub's and the handover's copies of the
        // outbox are gone, after writing what was queued.
        if !writer_done && tokio::time::timeout(self.config().write_timeout, &mut writer).await.is_err() {
            writer.abort();
        }
    }

    async fn hello(&self, sink: &mut Sink, source: &mut Source) -> Result<PeerKey, HelloError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).expect("the OS has randomness");
        let challenge = Control::Challenge { nonce: Base64::<ruma::serde::base64::Standard, _>::new(nonce).encode() };
        sink.send(text(&challenge)).await.map_err(|_| HelloError::Closed)?;
        let timeout = self.config().hello_timeout;
        let message = loop {
            match tokio::time::timeout(timeout, source.next()).await {
                Err(_) => return Err(HelloError::Timeout(timeout)),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(text)))) => break text,
                Ok(Some(Ok(Message::Binary(_)))) => return Err(HelloError::NotHello),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return Err(HelloError::Closed),
            }
        };
        let Ok(Control::Hello { key, sig }) = serde_json::from_str(message.as_str()) else {
            return Err(HelloError::NotHello);
        };
        verify_hello(&nonce, &key, &sig)
    }

    /// Adds the connection for `key`; its outbox gets `welcome` first.
    fn register(&self, key: PeerKey, outbox: &Outbox) -> Result<(u64, Handover), Control> {
        let config = self.config();
        let mut hub = lock(&self.inner.hub);
        let conns = hub.keys.get(&key).map_or(0, |state| state.conns.len());
        if conns >= config.connections_per_key {
            let message = format!("this key already has {conns} connections, the limit");
            return Err(refusal(ErrorCode::TooManyConnections, message, None, None));
        }
        let handover = hub.handover(config, &key);
        let welcome = text(&Control::Welcome { mailbox: handover.len() as u64 });
        // Queued under the lock, so no frame forwarded to this connection can come before it.
        if outbox.try_send(welcome).is_err() {
            return Err(refusal(ErrorCode::BadMessage, "the relay could not queue the welcome", None, None));
        }
        let id = hub.next_conn;
        hub.next_conn += 1;
        hub.keys.entry(key).or_default().conns.push(Conn { id, outbox: outbox.clone(), in_flight: HashMap::new() });
        drop(hub);
        self.inner.changes.send_modify(|n| *n += 1);
        Ok((id, handover))
    }

    /// Removes a connection; frames it was handed and did not ack go into the
    /// mailbox, and on to the key's other connection if it has one.
    fn unregister(&self, key: PeerKey, conn: u64) {
        let mut hub = lock(&self.inner.hub);
        let Some(state) = hub.keys.get_mut(&key) else { return };
        let Some(at) = state.conns.iter().position(|c| c.id == conn) else { return };
        let gone = state.conns.remove(at);
        let successor = state.conns.last().map(|c| c.outbox.clone());
        let mut in_flight: Vec<_> = gone.in_flight.into_iter().collect();
        in_flight.sort_by_key(|(_, held)| held.arrived);
        for ((origin, id), held) in in_flight {
            let state = hub.keys.get_mut(&key).expect("has a connection until now");
            if state.by_id.contains_key(&(origin, id)) {
                // Also in the mailbox already (sent twice): held once.
                state.held_frames -= 1;
                state.held_bytes -= held.frame.len() as u64;
                hub.held_bytes -= held.frame.len() as u64;
                continue;
            }
            let frame = held.frame.clone();
            // Its sender waits to hear what became of it: `stored`, as if the
            // drop had come first, rather than nothing until it gives up.
            let sender = hub.keys.get(&origin).and_then(|state| state.conns.last());
            let notify = sender.map(|conn| (conn.outbox.clone(), Control::Stored { to: key.to_string(), id }));
            let op = hub.keep(key, origin, id, held.arrived, held.frame, notify);
            let _ = self.inner.disk.send(op);
            if let Some(successor) = &successor {
                // Best effort: what does not fit waits for the next connection.
                let _ = successor.try_send(Message::Binary(frame));
            }
        }
        hub.drop_if_idle(&key);
        drop(hub);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Sends `key`'s mailbox to a new connection, reading from disk what is not
    /// in memory.
    async fn hand_over(self, key: PeerKey, frames: Handover, outbox: Outbox) {
        for chunk in frames.chunks(HANDOVER_CHUNK) {
            let missing: Vec<[u8; 40]> =
                chunk.iter().filter(|(_, frame)| frame.is_none()).map(|(seq, _)| entry_key(&key, *seq)).collect();
            let mut read = if missing.is_empty() {
                Vec::new()
            } else {
                let Some(store) = lock(&self.inner.store).clone() else { return };
                let keys: Vec<&[u8]> = missing.iter().map(|k| &k[..]).collect();
                match store.get_many(MAILBOX, &keys).await {
                    Ok(values) => values,
                    Err(err) => {
                        // The frames stay stored: the next connection gets them.
                        eprintln!("glia relay: cannot read {key}'s mailbox: {err}");
                        return;
                    }
                }
            }
            .into_iter();
            for (_, frame) in chunk {
                let frame = match frame {
                    Some(frame) => Some(frame.clone()),
                    None => read.next().flatten().map(Bytes::from),
                };
                // Absent: acked or expired since the handover began.
                if let Some(frame) = frame {
                    if outbox.send(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// A frame from `key`: forwarded, stored, or refused (the answer).
    async fn on_frame(&self, key: PeerKey, outbox: &Outbox, bucket: &mut TokenBucket, bytes: Bytes) -> Option<Control> {
        let route = Frame::route(&bytes);
        let (to, id) = match &route {
            Ok(route) => (Some(route.destination.to_string()), Some(route.id)),
            Err(_) => (None, None),
        };
        if !bucket.take() {
            return Some(refusal(ErrorCode::RateLimited, "too many messages: slow down", to, id));
        }
        let limit = self.config().max_frame_bytes;
        if bytes.len() > limit {
            let message = format!("a frame of {} bytes is over the limit of {limit}", bytes.len());
            return Some(refusal(ErrorCode::FrameTooLarge, message, to, id));
        }
        let route = match route {
            Ok(route) => route,
            Err(err) => return Some(refusal(ErrorCode::BadMessage, err.to_string(), None, None)),
        };
        if route.origin != key {
            let message = format!("this connection speaks for {key}, not {}", route.origin);
            return Some(refusal(ErrorCode::WrongOrigin, message, to, id));
        }
        let decision = lock(&self.inner.hub).route(self.config(), &route, &bytes, outbox);
        match decision {
            Decision::Forward(destination) => match destination.send(Message::Binary(bytes)).await {
                Ok(()) => None,
                // Gone in between: a mailbox frame was moved to its mailbox with
                // the connection's other unacked frames.
                Err(Gone) if route.mailbox => None,
                Err(Gone) => Some(refusal(ErrorCode::Offline, "the destination disconnected", to, id)),
            },
            Decision::Store(op) => {
                let _ = self.inner.disk.send(op);
                None
            }
            Decision::Refuse(control) => Some(control),
        }
    }

    /// A control message from `key`; returns the answer, if any.
    fn on_control(&self, key: PeerKey, bucket: &mut TokenBucket, message: &str) -> Option<Control> {
        if !bucket.take() {
            return Some(refusal(ErrorCode::RateLimited, "too many messages: slow down", None, None));
        }
        if message.len() > self.config().max_control_bytes {
            let message = format!("control messages are limited to {} bytes", self.config().max_control_bytes);
            return Some(refusal(ErrorCode::BadMessage, message, None, None));
        }
        let control = match serde_json::from_str::<Control>(message) {
            Ok(control) => control,
            Err(err) => {
                return Some(refusal(ErrorCode::BadMessage, format!("not a control message: {err}"), None, None))
            }
        };
        match control {
            Control::Ack { frames } => {
                let deletes = lock(&self.inner.hub).ack(&key, &frames);
                for op in deletes {
                    let _ = self.inner.disk.send(op);
                }
                self.inner.changes.send_modify(|n| *n += 1);
                None
            }
            Control::Peers { .. } => {
                Some(Control::Peers { keys: self.online().iter().map(PeerKey::to_string).collect() })
            }
            Control::Signal { to: Some(to), data, .. } => {
                let Some(dest) = protocol::parse_key(&to) else {
                    return Some(refusal(ErrorCode::BadMessage, "`to` is not a key", Some(to), None));
                };
                let outbox = lock(&self.inner.hub)
                    .keys
                    .get(&dest)
                    .and_then(|state| state.conns.last())
                    .map(|c| c.outbox.clone());
                let Some(outbox) = outbox else {
                    return Some(refusal(ErrorCode::Offline, "the destination is not connected", Some(to), None));
                };
                outbox.send_soon(text(&Control::Signal { to: None, from: Some(key.to_string()), data }));
                None
            }
            Control::Signal { to: None, .. } => Some(refusal(ErrorCode::BadMessage, "a signal needs `to`", None, None)),
            Control::Hello { .. } => {
                Some(refusal(ErrorCode::BadMessage, "this connection already said hello", None, None))
            }
            Control::Challenge { .. } | Control::Welcome { .. } | Control::Stored { .. } | Control::Error { .. } => {
                Some(refusal(ErrorCode::BadMessage, "that message goes from relays to nodes", None, None))
            }
        }
    }
}

/// Checks a hello: `sig` signs the challenge with `key`.
fn verify_hello(nonce: &[u8], key: &str, sig: &str) -> Result<PeerKey, HelloError> {
    let key = protocol::parse_key(key).ok_or(HelloError::BadKey)?;
    let sig = Base64::<ruma::serde::base64::Standard, [u8; 64]>::parse(sig)
        .map_err(|_| HelloError::BadSignatureEncoding)?
        .into_inner();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key.0).map_err(|_| HelloError::BadKey)?;
    verifying
        .verify_strict(&protocol::hello_message(nonce), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| HelloError::BadSignature)?;
    Ok(key)
}

/// Answers a connection the relay will not serve, and closes it.
async fn refuse(mut sink: Sink, control: Control) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sink.send(text(&control)).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Writes a connection's queue to its socket, flushing once per batch; gives
/// up on a socket that does not take a write within `timeout`.
async fn write_loop(
    mut sink: Sink,
    mut queue: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    timeout: Duration,
) {
    while let Some((first, permit)) = queue.recv().await {
        let written = tokio::time::timeout(timeout, async {
            sink.feed(first).await?;
            drop(permit);
            for _ in 1..WRITE_BATCH {
                let Ok((next, permit)) = queue.try_recv() else { break };
                sink.feed(next).await?;
                drop(permit);
            }
            sink.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // Senders waiting for room hear the connection is gone.
            room.close();
            return;
        }
    }
    room.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_index_values_round_trip() {
        let dest = PeerKey([3; 32]);
        assert_eq!(parse_entry_key(&entry_key(&dest, 0x0102)), Some((dest, 0x0102)));
        assert!(entry_key(&dest, 1) < entry_key(&dest, 256), "a destination's frames sort by arrival");
        let entry = parse_index(&index_value(5, 6, &PeerKey([7; 32]), 8)).unwrap();
        assert_eq!((entry.arrived, entry.len, entry.origin, entry.id), (5, 6, PeerKey([7; 32]), 8));
        assert!(parse_index(&[0; 51]).is_none() && parse_entry_key(&[0; 39]).is_none());
    }

    #[test]
    fn hellos_verify_only_with_the_signing_key() {
        let key = crate::core::identity::NodeKey::from_seed(&[1; 32]);
        let other = crate::core::identity::NodeKey::from_seed(&[2; 32]);
        let nonce = [9u8; 32];
        let sig = Base64::<ruma::serde::base64::Standard, _>::new(key.sign(&protocol::hello_message(&nonce))).encode();
        let hex = PeerKey::of(&key).to_string();
        assert_eq!(verify_hello(&nonce, &hex, &sig).unwrap(), PeerKey::of(&key));
        assert!(matches!(verify_hello(&[8; 32], &hex, &sig), Err(HelloError::BadSignature)));
        assert!(matches!(verify_hello(&nonce, &PeerKey::of(&other).to_string(), &sig), Err(HelloError::BadSignature)));
        assert!(matches!(verify_hello(&nonce, "zz", &sig), Err(HelloError::BadKey)));
        assert!(matches!(verify_hello(&nonce, &hex, "!!"), Err(HelloError::BadSignatureEncoding)));
    }

    #[test]
    fn token_buckets_allow_the_burst_then_refuse() {
        let mut bucket = TokenBucket::new(Some(Rate { per_second: 0.001, burst: 3.0 }));
        assert_eq!((0..5).filter(|_| bucket.take()).count(), 3);
        let mut open = TokenBucket::new(None);
        assert!((0..10_000).all(|_| open.take()));
    }
}
