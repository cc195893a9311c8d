//! Sending to other servers: this node's events and ephemeral updates, queued per
//! destination and delivered as `/send` transactions (up to 50 PDUs and 100
//! EDUs), with retries and backoff.
//!
//! PDUs are durable: the event engine writes every local event to `outbox` in the
//! event's own commit; [`Sender::run`] moves each to the queue of every other
//! server in its room, and a queue entry goes only once its destination (or a
//! relay's mailbox for it) took the transaction. EDUs that must not be lost
//! (to-device messages, device list changes) are queued durably beside them;
//! the rest (typing, receipts, presence) are ephemeral and wait in memory.
//!
//! Key encodings:
//! - `outbound`: destination server name, 0, queue position (u64 BE) → room ID,
//!   0, event ID
//! - `outbound_edus`: destination server name, 0, queue position (u64 BE) → the
//!   EDU (`{"edu_type", "content"}`) as JSON
//! - `meta`: `outbound_position` → the last queue position handed out (u64 BE),
//!   for both queues

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use event_listener::Event;
use futures_util::{
    future::{select, Either},
    stream::{FuturesUnordered, StreamExt},
};
use ruma::{
    api::federation::transactions::send_transaction_message::v1, events::room::member::MembershipState, serde::Raw,
    EventId, MilliSecondsSinceUnixEpoch, OwnedServerName, RoomId, ServerName, UInt,
};
use serde_json::value::{to_raw_value, RawValue};

use super::{cache::Cache, federation::FederationError, rooms::RoomError};
use crate::{
    core::{lock, service::rooms::OUTBOX, Homeserver},
    store::{Batch, Direction, KeyRange},
};

pub(crate) const OUTBOUND: &str = "outbound";
pub(crate) const OUTBOUND_EDUS: &str = "outbound_edus";
const POSITION: &[u8] = b"outbound_position";
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// The first retry waits this long, doubling up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 60_000;
/// EDUs kept per destination while it is unreachable: the newest win.
const MAX_QUEUED_EDUS: usize = 1_000;
/// Outbox entries moved to the queues at once.
const OUTBOX_PAGE: usize = 256;
/// How far [`Sender::queued`] counts the durable queue: a status, not an audit.
const MAX_COUNTED: usize = 10_000;

pub struct Sender {
    wake: Event,
    edus: Mutex<HashMap<OwnedServerName, VecDeque<Box<RawValue>>>>,
    retry: Mutex<HashMap<OwnedServerName, Backoff>>,
    /// Destinations with PDUs in `outbound`, found at start and kept since.
    pending: Mutex<Option<HashSet<OwnedServerName>>>,
    /// The last queue position handed out, once read.
    position: async_lock::Mutex<Option<u64>>,
    /// The other servers in a room at a state group (which never changes).
    servers: Cache<u64, Arc<Vec<OwnedServerName>>>,
    attempts: AtomicU64,
    /// The last outbox key read from the table, until the entries committed
    /// meanwhile are taken.
    outbox_read: Mutex<Option<Vec<u8>>>,
    /// Destinations whose whole durable queue the sender holds, so a
    /// transaction to them reads nothing: those whose queue, once read, fitted
    /// in one transaction, for as long as it does.
    queues: Mutex<HashMap<OwnedServerName, Queue>>,
}

/// Queue entries given their positions, and the batch that stores them;
/// holds the positions until written.
struct Staged<'a> {
    _position: async_lock::MutexGuard<'a, Option<u64>>,
    batch: Batch,
}

/// A key and its value, as a table holds them.
type Entry = (Vec<u8>, Vec<u8>);

/// A destination's durable queue: its entries in `outbound` and `outbound_edus`.
#[derive(Clone, Default)]
struct Queue {
    pdus: Vec<Entry>,
    edus: Vec<Entry>,
}

impl Queue {
    fn fits(&self) -> bool {
        self.pdus.len() < MAX_PDUS && self.edus.len() < MAX_EDUS
    }
}

#[derive(Clone, Copy)]
struct Backoff {
    delay: u64,
    until: u64,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender {
    pub fn new() -> Self {
        Self {
            wake: Event::new(),
            edus: Mutex::default(),
            retry: Mutex::default(),
            pending: Mutex::default(),
            position: async_lock::Mutex::new(None),
            servers: Cache::new(4_096),
            attempts: AtomicU64::new(0),
            outbox_read: Mutex::default(),
            queues: Mutex::default(),
        }
    }

    /// Something may be ready to send: new events, new EDUs, a peer back online.
    pub fn wake(&self) {
        self.wake.notify(usize::MAX);
    }

    /// Retries every destination now, as when the node reconnects to the network.
    pub fn retry_all(&self) {
        lock(&self.retry).clear();
        self.wake();
    }

    /// Retries `server` now: it was just heard from.
    pub fn heard_from(&self, server: &ServerName) {
        if lock(&self.retry).remove(server).is_some() {
            self.wake();
        }
    }

    /// Queues an EDU (its full `{"edu_type", "content"}` form) for `servers`.
    pub fn queue_edu(&self, servers: &[OwnedServerName], edu: &serde_json::Value) {
        let Ok(raw) = to_raw_value(edu) else { return };
        let mut edus = lock(&self.edus);
        for server in servers {
            let queue = edus.entry(server.clone()).or_default();
            if queue.len() == MAX_QUEUED_EDUS {
                queue.pop_front();
            }
            queue.push_back(raw.clone());
        }
        drop(edus);
        self.wake();
    }

    /// Queues an EDU for `servers` durably: it survives a restart and goes
    /// until each destination took it, as PDUs do.
    pub async fn queue_durable_edu(
        &self,
        hs: &Homeserver,
        servers: &[OwnedServerName],
        edu: &serde_json::Value,
    ) -> Result<(), RoomError> {
        let value = serde_json::to_vec(edu).map_err(RoomError::corrupt)?;
        let entries = servers.iter().map(|server| (server.clone(), value.clone())).collect();
        self.enqueue(hs, OUTBOUND_EDUS, entries, Batch::new()).await
    }

    /// How much waits to be sent: an entry per event or durable EDU and
    /// destination (counted up to 10,000 each) and the EDUs held in memory for
    /// unreachable destinations.
    pub async fn queued(&self, hs: &Homeserver) -> Result<usize, RoomError> {
        let mut queued: usize = lock(&self.edus).values().map(VecDeque::len).sum();
        for table in [OUTBOUND, OUTBOUND_EDUS] {
            queued += hs.store().scan(table, KeyRange::all(), Direction::Forward, MAX_COUNTED).await?.len();
        }
        Ok(queued)
    }

    /// The servers other than this one with a user joined to the room now.
    pub async fn servers_in(&self, hs: &Homeserver, room_id: &RoomId) -> Result<Arc<Vec<OwnedServerName>>, RoomError> {
        let group = hs.rooms().room(room_id).await?.state;
        if let Some(servers) = self.servers.get(&group) {
            return Ok(servers);
        }
        let state = hs.rooms().state_group(group).await?;
        let mut servers = hs.rooms().joined_servers(&state).await?;
        servers.retain(|server| server != hs.key().server_name());
        let servers = Arc::new(servers);
        self.servers.insert(group, servers.clone(), servers.len().max(1));
        Ok(servers)
    }

    /// Sends forever: what the shell runs beside the node (a task natively, the
    /// worker's lifetime in a browser, where it resumes from the store).
    pub async fn run(&self, hs: &Homeserver) {
        let mut in_flight = FuturesUnordered::new();
        let mut busy = HashSet::new();
        loop {
            // The engine's commits write the outbox and wake the notifier.
            let listener = select(self.wake.listen(), hs.notifier().listen());
            let step = pin!(async {
                // A store that fails now may not later; the outbox keeps what
                // it has until the next wake-up tries again.
                let staged = self.fan_out(hs).await.ok().flatten();
                (staged, self.ready(hs, hs.clock().now_millis()).await)
            });
            let (staged, ready) = self.alongside(hs, &mut in_flight, &mut busy, step).await;
            // The new events' queue entries are written while their
            // transactions go out.
            if let Some(staged) = staged {
                in_flight.push(Either::Left(async move {
                    if self.write_staged(hs, staged).await.is_err() {
                        hs.rooms().forget_outboxed();
                    }
                    None
                }));
            }
            for server in ready {
                if busy.insert(server.clone()) {
                    in_flight.push(Either::Right(async move {
                        let result = self.deliver(hs, &server).await;
                        Some((server, result))
                    }));
                }
            }
            let now = hs.clock().now_millis();
            let next_retry = lock(&self.retry).values().map(|b| b.until).min();
            let wait = next_retry.map_or(MAX_BACKOFF_MS, |until| until.saturating_sub(now).max(1));
            let woken = select(listener, hs.clock().sleep(wait));
            if in_flight.is_empty() {
                woken.await;
                continue;
            }
            // Until something changes, or a delivery ends and the next retry
            // (or the rest of a long queue) wants working out again.
            if let Either::Right((Some(Some((server, result))), _)) = select(woken, in_flight.next()).await {
                busy.remove(&server);
                self.settle(hs, &server, result);
            }
        }
    }

    /// Runs `work` to its end while the deliveries (and writes) in flight go
    /// on, settling each delivery that ends meanwhile. They must never wait
    /// unpolled, here or anywhere: on IndexedDB a read whose transaction sees
    /// no one take its result never completes.
    async fn alongside<T, F>(
        &self,
        hs: &Homeserver,
        in_flight: &mut FuturesUnordered<F>,
        busy: &mut HashSet<OwnedServerName>,
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> T
    where
        F: Future<Output = Option<(OwnedServerName, Result<bool, FederationError>)>>,
    {
        loop {
            if in_flight.is_empty() {
                return work.await;
            }
            match select(work.as_mut(), in_flight.next()).await {
                Either::Left((done, _)) => return done,
                Either::Right((Some(Some((server, result))), _)) => {
                    busy.remove(&server);
                    self.settle(hs, &server, result);
                }
                Either::Right(_) => {}
            }
        }
    }

    fn settle(&self, hs: &Homeserver, server: &ServerName, result: Result<bool, FederationError>) {
        let mut retry = lock(&self.retry);
        match result {
            Ok(_) => drop(retry.remove(server)),
            Err(_) => {
                let delay = retry.get(server).map_or(FIRST_BACKOFF_MS, |b| (b.delay * 2).min(MAX_BACKOFF_MS));
                retry.insert(server.to_owned(), Backoff { delay, until: hs.clock().now_millis() + delay });
            }
        }
    }

    /// Queues another server's event for the room's servers but `except` (its
    /// origin): a join or leave that came in through this node.
    pub async fn queue_pdu(
        &self,
        hs: &Homeserver,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        except: &ServerName,
    ) -> Result<(), RoomError> {
        let value = crate::core::service::room_key(room_id, event_id.as_bytes());
        let entries: Vec<(OwnedServerName, Vec<u8>)> = self
            .servers_in(hs, room_id)
            .await?
            .iter()
            .filter(|s| **s != except)
            .map(|s| (s.clone(), value.clone()))
            .collect();
        self.enqueue(hs, OUTBOUND, entries, Batch::new()).await
    }

    /// Moves the events in `outbox` to the queues of their rooms' servers: those
    /// the engine's commits handed over since the last time, staged for the
    /// caller to write, or, when the sender does not know the outbox yet, what
    /// the table holds, written here.
    async fn fan_out(&self, hs: &Homeserver) -> Result<Option<Staged<'_>>, RoomError> {
        let moved = match hs.rooms().take_outboxed() {
            Some(entries) => {
                // Not those the last read of the table moved already (the keys
                // are stream positions, and commits land in their order).
                let read_up_to = lock(&self.outbox_read).take();
                let entries: Vec<Entry> =
                    entries.into_iter().filter(|(key, _)| read_up_to.as_ref().is_none_or(|last| key > last)).collect();
                match entries.is_empty() {
                    true => Ok(None),
                    false => self.stage_outboxed(hs, entries).await,
                }
            }
            None => self.read_outbox(hs).await.map(|()| None),
        };
        if moved.is_err() {
            // What was not moved stays in the table, for the next read.
            hs.rooms().forget_outboxed();
        }
        moved
    }

    async fn stage_outboxed(&self, hs: &Homeserver, entries: Vec<Entry>) -> Result<Option<Staged<'_>>, RoomError> {
        let (queued, done) = self.to_queues(hs, entries).await?;
        if queued.is_empty() {
            hs.store().write(done).await?;
            return Ok(None);
        }
        Ok(Some(self.stage(hs, OUTBOUND, queued, done).await?))
    }

    async fn read_outbox(&self, hs: &Homeserver) -> Result<(), RoomError> {
        loop {
            let entries = hs.store().scan(OUTBOX, KeyRange::all(), Direction::Forward, OUTBOX_PAGE).await?;
            let drained = entries.len() < OUTBOX_PAGE;
            if let Some((last, _)) = entries.last() {
                *lock(&self.outbox_read) = Some(last.clone());
            }
            if !entries.is_empty() {
                let (queued, done) = self.to_queues(hs, entries).await?;
                self.enqueue(hs, OUTBOUND, queued, done).await?;
            }
            if drained {
                return Ok(());
            }
        }
    }

    /// The queue entries (destination; room and event) for outbox `entries`,
    /// and the batch that deletes those.
    async fn to_queues(
        &self,
        hs: &Homeserver,
        entries: Vec<Entry>,
    ) -> Result<(Vec<(OwnedServerName, Vec<u8>)>, Batch), RoomError> {
        let mut done = Batch::new();
        let mut parsed = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            done = done.delete(OUTBOX, key);
            let Some(split) = value.iter().position(|b| *b == 0) else { continue };
            let Ok(Ok(room_id)) = std::str::from_utf8(&value[..split]).map(RoomId::parse) else { continue };
            let event_id = std::str::from_utf8(&value[split + 1..]).ok().and_then(|id| EventId::parse(id).ok());
            parsed.push((room_id, event_id, value));
        }
        // Read in one go what the cache lacks (a backlog, after a restart).
        let ids: Vec<&EventId> = parsed.iter().filter_map(|(_, id, _)| id.as_deref()).collect();
        hs.rooms().prefetch_events(&ids).await?;
        let mut queued = Vec::new();
        for (room_id, event_id, value) in parsed {
            let servers = match self.servers_in(hs, &room_id).await {
                Ok(servers) => servers,
                // A room gone from the store has no one to send to; one
                // entry must not hold up the rest of the outbox.
                Err(err) if !err.is_internal() => continue,
                Err(err) => return Err(err),
            };
            let target = match event_id {
                Some(event_id) => self.put_out(hs, &event_id, &servers).await?,
                None => None,
            };
            for server in servers.iter().chain(&target) {
                queued.push((server.clone(), value.clone()));
            }
        }
        Ok((queued, done))
    }

    /// The server of the user a kick, ban or leave put out of the room, where
    /// no one else of it is left: it learns of the event only from this node.
    async fn put_out(
        &self,
        hs: &Homeserver,
        event_id: &EventId,
        servers: &[OwnedServerName],
    ) -> Result<Option<OwnedServerName>, RoomError> {
        let Some(event) = hs.rooms().event(event_id).await? else { return Ok(None) };
        let Some((user, membership)) = event.pdu.member() else { return Ok(None) };
        let server = user.server_name();
        let out = matches!(membership, MembershipState::Leave | MembershipState::Ban);
        Ok((out && server != hs.key().server_name() && !servers.iter().any(|s| s == server)).then(|| server.to_owned()))
    }

    /// Writes `entries` (destination; the queue's value) into `table` at the
    /// next queue positions, with `also`, in one batch.
    async fn enqueue(
        &self,
        hs: &Homeserver,
        table: &'static str,
        entries: Vec<(OwnedServerName, Vec<u8>)>,
        also: Batch,
    ) -> Result<(), RoomError> {
        // Events of rooms no other server is in: only the outbox entries go.
        if entries.is_empty() {
            return Ok(hs.store().write(also).await?);
        }
        let staged = self.stage(hs, table, entries, also).await?;
        self.write_staged(hs, staged).await?;
        self.wake();
        Ok(())
    }

    /// Gives `entries` the next queue positions and counts them queued (in the
    /// queues held in memory, and their destinations as pending), so that
    /// deliveries may take them while the returned batch is written. Until
    /// it is, nothing else is queued and no delivery deletes anything.
    async fn stage(
        &self,
        hs: &Homeserver,
        table: &'static str,
        entries: Vec<(OwnedServerName, Vec<u8>)>,
        also: Batch,
    ) -> Result<Staged<'_>, RoomError> {
        let mut position = self.position.lock().await;
        let mut next = match *position {
            Some(p) => p,
            None => match hs.store().get("meta", POSITION).await? {
                Some(bytes) => {
                    u64::from_be_bytes(bytes.try_into().map_err(|_| RoomError::corrupt("bad outbound_position"))?)
                }
                None => 0,
            },
        };
        let mut batch = also;
        let mut servers = HashSet::new();
        let mut added = Vec::with_capacity(entries.len());
        for (server, value) in entries {
            next += 1;
            let key = queue_key(&server, next);
            batch = batch.put(table, key.clone(), value.clone());
            added.push((server.clone(), (key, value)));
            servers.insert(server);
        }
        batch = batch.put("meta", POSITION, next.to_be_bytes());
        // Positions are never handed out twice, even if the write fails.
        *position = Some(next);
        let mut pending = self.pending(hs).await?;
        pending.extend(servers);
        *lock(&self.pending) = Some(pending);
        self.queued_more(table, added);
        Ok(Staged { _position: position, batch })
    }

    /// Writes what [`Sender::stage`] queued. If that fails, the queues held in
    /// memory are read again, and deliveries that took the entries meanwhile
    /// only sent them early: their outbox entries are still there to queue.
    async fn write_staged(&self, hs: &Homeserver, staged: Staged<'_>) -> Result<(), RoomError> {
        let written = hs.store().write(staged.batch).await;
        if written.is_err() {
            lock(&self.queues).clear();
        }
        Ok(written?)
    }

    async fn pending(&self, hs: &Homeserver) -> Result<HashSet<OwnedServerName>, RoomError> {
        if let Some(pending) = lock(&self.pending).clone() {
            return Ok(pending);
        }
        let mut pending = HashSet::new();
        for table in [OUTBOUND, OUTBOUND_EDUS] {
            let mut from: Vec<u8> = Vec::new();
            // One read per destination: skip to the key after each one's prefix.
            loop {
                let range = KeyRange::new(std::ops::Bound::Included(from.clone()), std::ops::Bound::Unbounded);
                let Some((key, _)) = hs.store().scan(table, range, Direction::Forward, 1).await?.pop() else { break };
                let Some(split) = key.iter().position(|b| *b == 0) else { break };
                if let Ok(Ok(server)) = std::str::from_utf8(&key[..split]).map(ServerName::parse) {
                    pending.insert(server);
                }
                from = key[..split].to_vec();
                from.push(1);
            }
        }
        *lock(&self.pending) = Some(pending.clone());
        Ok(pending)
    }

    /// Destinations with something to send and no backoff running.
    async fn ready(&self, hs: &Homeserver, now: u64) -> Vec<OwnedServerName> {
        let mut servers: HashSet<OwnedServerName> = self.pending(hs).await.unwrap_or_default();
        servers.extend(lock(&self.edus).iter().filter(|(_, q)| !q.is_empty()).map(|(s, _)| s.clone()));
        let retry = lock(&self.retry);
        servers.into_iter().filter(|s| retry.get(s).is_none_or(|b| b.until <= now)).collect()
    }

    /// Sends one transaction to `server`; `Ok(true)` if there may be more.
    async fn deliver(&self, hs: &Homeserver, server: &ServerName) -> Result<bool, FederationError> {
        let Queue { pdus: entries, edus: durable } = self.queue_of(hs, server).await?;
        let edus: Vec<Box<RawValue>> = {
            let mut queues = lock(&self.edus);
            let queue = queues.entry(server.to_owned()).or_default();
            let n = queue.len().min(MAX_EDUS - durable.len());
            queue.drain(..n).collect()
        };
        let mut pdus = Vec::with_capacity(entries.len());
        for (_, value) in &entries {
            let Some(split) = value.iter().position(|b| *b == 0) else { continue };
            let Ok(id) = std::str::from_utf8(&value[split + 1..]).map(ruma::EventId::parse) else { continue };
            let Ok(id) = id else { continue };
            // An event the store lost is not worth holding the queue for.
            if let Ok(Some(event)) = hs.rooms().event(&id).await {
                if let Ok(raw) = to_raw_value(&event.pdu.federation_json()) {
                    pdus.push(raw);
                }
            }
        }
        if entries.is_empty() && durable.is_empty() && edus.is_empty() {
            lock(&self.pending).get_or_insert_with(HashSet::new).remove(server);
            return Ok(false);
        }
        // A new ID per attempt: the receiver's PDUs deduplicate by event ID and
        // EDUs are idempotent, while the same ID would hide EDUs added since.
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let txn: ruma::OwnedTransactionId = format!("{}.{attempt}", hs.clock().now_millis()).into();
        let mut request = v1::Request::new(txn, hs.key().server_name().to_owned(), now(hs));
        request.pdus = pdus;
        // A durable EDU the store holds as something else than JSON is dropped
        // with its queue entry below rather than holding up the queue.
        let stored =
            durable.iter().filter_map(|(_, value)| RawValue::from_string(String::from_utf8(value.clone()).ok()?).ok());
        request.edus = stored.chain(edus.iter().cloned()).map(Raw::from_json).collect();
        match hs.federation().request(server, request, true).await {
            Ok(_) | Err(FederationError::Stored(_)) => {
                let mut batch = Batch::new();
                for (key, _) in &entries {
                    batch = batch.delete(OUTBOUND, key.clone());
                }
                for (key, _) in &durable {
                    batch = batch.delete(OUTBOUND_EDUS, key.clone());
                }
                // After the write of entries staged while this was in flight.
                let _staged = self.position.lock().await;
                let written = hs.store().write(batch).await;
                self.sent(server, (entries.len(), durable.len()), written.is_ok());
                written.map_err(|err| FederationError::Request(err.to_string()))?;
                if entries.len() == MAX_PDUS || durable.len() == MAX_EDUS {
                    self.wake();
                }
                Ok(true)
            }
            Err(err) => {
                let mut queues = lock(&self.edus);
                let queue = queues.entry(server.to_owned()).or_default();
                for edu in edus.into_iter().rev() {
                    if queue.len() < MAX_QUEUED_EDUS {
                        queue.push_front(edu);
                    }
                }
                Err(err)
            }
        }
    }

    /// The head of `server`'s durable queue: up to a transaction's worth of
    /// PDUs and of EDUs, from memory when the sender holds the whole queue.
    async fn queue_of(&self, hs: &Homeserver, server: &ServerName) -> Result<Queue, FederationError> {
        if let Some(queue) = lock(&self.queues).get(server) {
            return Ok(queue.clone());
        }
        // No entry is added to the queue while it is read, so a queue read
        // whole is the queue.
        let _adding = self.position.lock().await;
        let prefix = [server.as_bytes(), b"\0"].concat();
        let (pdus, edus) = futures_util::future::join(
            hs.store().scan(OUTBOUND, KeyRange::prefix(&prefix), Direction::Forward, MAX_PDUS),
            hs.store().scan(OUTBOUND_EDUS, KeyRange::prefix(&prefix), Direction::Forward, MAX_EDUS),
        )
        .await;
        let failed = |err: crate::store::StoreError| FederationError::Request(err.to_string());
        let queue = Queue { pdus: pdus.map_err(failed)?, edus: edus.map_err(failed)? };
        if queue.fits() {
            lock(&self.queues).insert(server.to_owned(), queue.clone());
        }
        Ok(queue)
    }

    /// Adds to the queues the sender holds the `added` entries (destination;
    /// key and value) of `table`.
    fn queued_more(&self, table: &str, added: Vec<(OwnedServerName, Entry)>) {
        let mut queues = lock(&self.queues);
        for (server, entry) in added {
            let Some(queue) = queues.get_mut(&server) else { continue };
            match table {
                OUTBOUND => queue.pdus.push(entry),
                _ => queue.edus.push(entry),
            }
            if !queue.fits() {
                queues.remove(&server);
            }
        }
    }

    /// Keeps `server`'s queue as a delivery left it: its first `(pdus, edus)`
    /// entries deleted, if `written`.
    fn sent(&self, server: &ServerName, (pdus, edus): (usize, usize), written: bool) {
        let mut queues = lock(&self.queues);
        match (written, queues.get_mut(server)) {
            (true, Some(queue)) => {
                queue.pdus.drain(..pdus.min(queue.pdus.len()));
                queue.edus.drain(..edus.min(queue.edus.len()));
            }
            (true, None) => {}
            (false, _) => drop(queues.remove(server)),
        }
    }
}

fn queue_key(server: &ServerName, position: u64) -> Vec<u8> {
    [server.as_bytes(), b"\0", &position.to_be_bytes()].concat()
}

fn now(hs: &Homeserver) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new_saturating(hs.clock().now_millis()))
}
