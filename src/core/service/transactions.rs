//! Client transaction IDs: a `PUT` retried with the same transaction ID by the
//! same device on the same path gets the event it already sent, not a second one.
//!
//! Key encodings, in one table `transactions`:
//! - `t`, user ID, 0, device ID, 0, scope (the request path's variable part), 0,
//!   transaction ID → event ID (empty for a request that sends no event)
//! - `e`, event ID → device ID, 0, transaction ID: for the sender's `unsigned`,
//!   which names the transaction to the device that sent it

use crate::core::lock;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedTransactionId, TransactionId, UserId};

use super::{
    cache::Cache,
    rooms::{Also, RoomError},
};
use crate::{
    core::pdu::Pdu,
    store::{Batch, Store, StoreError},
};

pub(crate) const TRANSACTIONS: &str = "transactions";

type InFlight = HashMap<Vec<u8>, Arc<async_lock::Mutex<()>>>;

/// The device and transaction an event was sent with, if any.
type Sent = Option<(OwnedDeviceId, OwnedTransactionId)>;

/// Events whose transactions are cached, per generation: every sync asks for
/// those of the viewer's own events.
const KNOWN: usize = 65_536;

pub struct Transactions {
    store: Arc<dyn Store>,
    in_flight: Mutex<InFlight>,
    known: Cache<OwnedEventId, Sent>,
}

impl Transactions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, in_flight: Default::default(), known: Cache::new(KNOWN) }
    }

    /// Runs `send` once per (user, device, scope, transaction ID), where the
    /// scope names the endpoint and its path arguments: a retry, even one racing
    /// the first attempt, gets the first attempt's event. `send` must land the
    /// writes it is given with its event.
    pub async fn once<F, Fut>(
        &self,
        user: &UserId,
        device: &DeviceId,
        scope: &str,
        txn: &TransactionId,
        send: F,
    ) -> Result<OwnedEventId, RoomError>
    where
        F: Fn(Also) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<Pdu>, RoomError>>,
    {
        let key = txn_key(user, device, scope, txn);
        self.exclusive(key.clone(), async {
            loop {
                // Both mappings land in the event's own commit: a retry after a
                // crash finds the event, or finds neither. That the transaction
                // is new is a precondition of that commit rather than a read
                // first, which would cost every message a round trip to the store.
                let (new, sent) = (key.clone(), [device.as_bytes(), b"\0", txn.as_bytes()].concat());
                let also: Also = Box::new(move |pdu| {
                    let reverse = reverse_key(&pdu.event_id);
                    Batch::new()
                        .expect(TRANSACTIONS, new.clone(), None)
                        .put(TRANSACTIONS, new, pdu.event_id.as_bytes())
                        .put(TRANSACTIONS, reverse, sent)
                });
                match send(also).await {
                    Ok(pdu) => {
                        self.known.insert(pdu.event_id.clone(), Some((device.to_owned(), txn.to_owned())), 1);
                        return Ok(pdu.event_id.clone());
                    }
                    Err(RoomError::Store(StoreError::Conflict { table, key: taken })) if table == TRANSACTIONS => {
                        if taken == key {
                            return self.sent_with(&key).await;
                        }
                        // Another transaction's, in a commit this event shared:
                        // its sender answers with its first event, this one goes again.
                    }
                    Err(err) => return Err(err),
                }
            }
        })
        .await
    }

    /// The event the transaction stored at `key` sent.
    async fn sent_with(&self, key: &[u8]) -> Result<OwnedEventId, RoomError> {
        let bytes =
            self.store.get(TRANSACTIONS, key).await?.ok_or_else(|| RoomError::corrupt("a transaction vanished"))?;
        let id = std::str::from_utf8(&bytes).map_err(RoomError::corrupt)?;
        EventId::parse(id).map_err(RoomError::corrupt)
    }

    /// As [`Transactions::once`], for requests that send no event (to-device
    /// messages): `send` must land the batch it is given with its writes, and
    /// a retry does nothing.
    pub async fn once_without_event<F, Fut, E>(
        &self,
        user: &UserId,
        device: &DeviceId,
        scope: &str,
        txn: &TransactionId,
        send: F,
    ) -> Result<(), E>
    where
        F: FnOnce(Batch) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: From<RoomError>,
    {
        let key = txn_key(user, device, scope, txn);
        self.exclusive(key.clone(), async {
            if self.store.get(TRANSACTIONS, &key).await.map_err(RoomError::from)?.is_some() {
                return Ok(());
            }
            send(Batch::new().put(TRANSACTIONS, key.clone(), Vec::new())).await
        })
        .await
    }

    /// Runs `run` while no other holder of `key` runs, so a retry racing the
    /// first attempt waits for it.
    async fn exclusive<T>(&self, key: Vec<u8>, run: impl std::future::Future<Output = T>) -> T {
        let slot = lock(&self.in_flight).entry(key.clone()).or_default().clone();
        let guard = slot.lock().await;
        let result = run.await;
        drop(guard);
        let mut in_flight = lock(&self.in_flight);
        // The last one out removes the entry (the map holds one reference).
        if Arc::strong_count(&slot) == 2 {
            in_flight.remove(&key);
        }
        result
    }

    /// The transaction ID `device` sent `event_id` with, if it did.
    pub async fn txn_of(&self, event_id: &EventId, device: &DeviceId) -> Result<Option<OwnedTransactionId>, RoomError> {
        let sent = match self.known.get(event_id) {
            Some(sent) => sent,
            None => {
                self.prefetch(&[event_id]).await?;
                self.known.get(event_id).flatten()
            }
        };
        Ok(sent.filter(|(d, _)| d == device).map(|(_, txn)| txn))
    }

    /// Reads what is not cached of the events' transactions in one go: a sync
    /// asks for a page of events at a time.
    pub async fn prefetch(&self, event_ids: &[&EventId]) -> Result<(), RoomError> {
        let missing: Vec<&EventId> = event_ids.iter().copied().filter(|id| self.known.get(*id).is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = missing.iter().map(|id| reverse_key(id)).collect();
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        for (id, value) in missing.iter().zip(self.store.get_many(TRANSACTIONS, &keys).await?) {
            let sent = value
                .map(|bytes| {
                    let text = String::from_utf8(bytes).map_err(RoomError::corrupt)?;
                    let (device, txn) = text.split_once('\0').ok_or_else(|| RoomError::corrupt("bad transaction"))?;
                    Ok::<_, RoomError>((device.into(), txn.into()))
                })
                .transpose()?;
            self.known.insert((*id).to_owned(), sent, 1);
        }
        Ok(())
    }
}

fn txn_key(user: &UserId, device: &DeviceId, scope: &str, txn: &TransactionId) -> Vec<u8> {
    [b"t", user.as_bytes(), b"\0", device.as_bytes(), b"\0", scope.as_bytes(), b"\0", txn.as_bytes()].concat()
}

fn reverse_key(event_id: &EventId) -> Vec<u8> {
    [b"e", event_id.as_bytes()].concat()
}
