//! Client transaction IDs: a `PUT` retried with the same transaction ID by the
//! same device on the same path gets the event it already sent, not a second one.
//!
//! Key encodings, in one table `transactions`:
//! - `t`, user ID, 0, device ID, 0, scope (the request path's variable part), 0,
//!   transaction ID → event ID
//! - `e`, event ID, 0, device ID → transaction ID, for the sender's `unsigned`

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedTransactionId, TransactionId, UserId};

use super::rooms::{Also, RoomError};
use crate::store::{Batch, Store};

pub(crate) const TRANSACTIONS: &str = "transactions";

type InFlight = HashMap<Vec<u8>, Arc<async_lock::Mutex<()>>>;

/// The transaction IDs of events, as read or written: every sync asks for
/// those of the viewer's own events.
type Known = HashMap<(OwnedEventId, OwnedDeviceId), Option<OwnedTransactionId>>;

/// Entries the cache of known transaction IDs keeps before starting over.
const KNOWN: usize = 65_536;

pub struct Transactions {
    store: Arc<dyn Store>,
    in_flight: Mutex<InFlight>,
    known: Mutex<Known>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transactions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, in_flight: Default::default(), known: Default::default() }
    }

    fn remember(&self, event_id: &EventId, device: &DeviceId, txn: Option<OwnedTransactionId>) {
        let mut known = lock(&self.known);
        if known.len() >= KNOWN {
            known.clear();
        }
        known.insert((event_id.to_owned(), device.to_owned()), txn);
    }

    /// Runs `send` once per (user, device, scope, transaction ID), where the
    /// scope names the endpoint and its path arguments: a retry, even one racing
    /// the first attempt, gets the first attempt's event.
    pub async fn once<F, Fut, E>(
        &self,
        user: &UserId,
        device: &DeviceId,
        scope: &str,
        txn: &TransactionId,
        send: F,
    ) -> Result<OwnedEventId, E>
    where
        F: FnOnce(Also) -> Fut,
        Fut: std::future::Future<Output = Result<OwnedEventId, E>>,
        E: From<RoomError>,
    {
        let key =
            [b"t", user.as_bytes(), b"\0", device.as_bytes(), b"\0", scope.as_bytes(), b"\0", txn.as_bytes()].concat();
        let lock = lock(&self.in_flight).entry(key.clone()).or_default().clone();
        let guard = lock.lock().await;
        let result = self.once_locked(&key, device, txn, send).await;
        drop(guard);
        let mut in_flight = self::lock(&self.in_flight);
        // The last one out removes the entry (the map holds one reference).
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(&key);
        }
        result
    }

    async fn once_locked<F, Fut, E>(
        &self,
        key: &[u8],
        device: &DeviceId,
        txn: &TransactionId,
        send: F,
    ) -> Result<OwnedEventId, E>
    where
        F: FnOnce(Also) -> Fut,
        Fut: std::future::Future<Output = Result<OwnedEventId, E>>,
        E: From<RoomError>,
    {
        if let Some(bytes) = self.store.get(TRANSACTIONS, key).await.map_err(RoomError::from)? {
            let id = std::str::from_utf8(&bytes).map_err(RoomError::corrupt)?;
            return Ok(EventId::parse(id).map_err(RoomError::corrupt)?);
        }
        // Both mappings land in the event's own commit: a retry after a crash
        // finds the event, or finds neither.
        let (key, owned_device, owned_txn) = (key.to_vec(), device.to_owned(), txn.to_owned());
        let also: Also = Box::new(move |pdu| {
            let reverse = [b"e", pdu.event_id.as_bytes(), b"\0", owned_device.as_bytes()].concat();
            Batch::new().put(TRANSACTIONS, key, pdu.event_id.as_bytes()).put(TRANSACTIONS, reverse, owned_txn.as_bytes())
        });
        let event_id = send(also).await?;
        self.remember(&event_id, device, Some(txn.to_owned()));
        Ok(event_id)
    }

    /// The transaction ID `device` sent `event_id` with, if it did.
    pub async fn txn_of(&self, event_id: &EventId, device: &DeviceId) -> Result<Option<OwnedTransactionId>, RoomError> {
        if let Some(known) = lock(&self.known).get(&(event_id.to_owned(), device.to_owned())) {
            return Ok(known.clone());
        }
        let key = [b"e", event_id.as_bytes(), b"\0", device.as_bytes()].concat();
        let bytes = self.store.get(TRANSACTIONS, &key).await?;
        let txn: Option<OwnedTransactionId> =
            bytes.map(|b| String::from_utf8(b).map(Into::into).map_err(RoomError::corrupt)).transpose()?;
        self.remember(event_id, device, txn.clone());
        Ok(txn)
    }
}
