//! To-device messages for this node's devices: kept until the device's client
//! acknowledges them by syncing from a position at or after the one that
//! carried them, as the spec asks, so a lost `/sync` response loses nothing.
//!
//! Key encodings:
//! - `to_device`: user ID, 0, device ID, 0, user data stream position (u64 BE)
//!   → [`Message`]. One request's messages share a position: a device named
//!   twice in one request (by ID and by `*`) keeps one of its messages.
//! - `to_device_seen`: sender user ID, 0, message ID → when it came (ms, u64
//!   BE; empty if stored before that was kept): messages of other servers'
//!   users stored already (their servers send again when unsure); and 0,
//!   that time (u64 BE), the same key → empty, to forget them oldest first
//!   ([`super::expiring`]).
//!   User IDs start with `@`, so the two never meet.

use std::{ops::Bound, sync::Arc};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    expiring::{Expiring, A_WEEK_MS},
    memo::Memo,
    rooms::RoomError,
    user_data::UserData,
};
use crate::store::{Batch, Direction, KeyRange, Store};

pub(crate) const TO_DEVICE: &str = "to_device";
pub(crate) const SEEN: &str = "to_device_seen";

/// A message as `/sync` hands it out.
#[derive(Debug, Serialize, Deserialize)]
pub struct Message {
    pub sender: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Box<RawValue>,
}

pub struct ToDevice {
    store: Arc<dyn Store>,
    /// Devices seen to have no messages waiting: most syncs find none, and
    /// then read nothing (on IndexedDB each read is a transaction).
    empty: Memo<(OwnedUserId, OwnedDeviceId), ()>,
}

/// Devices whose emptiness is kept at most.
const KEPT_EMPTY: usize = 4_096;
/// Other servers' message IDs: a server sends a message again only while no
/// transaction carrying it has been acknowledged.
const SEEN_IDS: Expiring = Expiring { table: SEEN, keep_for_ms: A_WEEK_MS };

impl ToDevice {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, empty: Memo::new(KEPT_EMPTY) }
    }

    /// Stores one message of `kind` from `sender` for each (user, device), with
    /// `also` (the request's transaction record) in the same write.
    pub async fn send(
        &self,
        user_data: &UserData,
        sender: &UserId,
        kind: &str,
        messages: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
        also: Batch,
    ) -> Result<(), RoomError> {
        let mut values = Vec::with_capacity(messages.len());
        let mut devices = Vec::with_capacity(messages.len());
        for (user, device, content) in messages {
            let message = Message { sender: sender.to_owned(), kind: kind.to_owned(), content };
            values.push((prefix(&user, &device), serde_json::to_vec(&message).map_err(RoomError::corrupt)?));
            devices.push((user, device));
        }
        // The devices' "nothing waiting" memo goes before a woken sync reads it.
        let put = |position: u64| {
            Ok(values.into_iter().fold(also, |batch, (prefix, value)| {
                batch.put(TO_DEVICE, [&prefix[..], &position.to_be_bytes()].concat(), value)
            }))
        };
        user_data.write_at_next(put, || self.empty.wrote(&devices)).await?;
        Ok(())
    }

    /// Stores the messages another server passed on from its user `sender`
    /// at `now` (ms), unless a message of that ID was stored already, and
    /// forgets a few IDs kept longer than a week.
    pub async fn receive(
        &self,
        user_data: &UserData,
        sender: &UserId,
        message_id: &str,
        kind: &str,
        messages: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
        now: u64,
    ) -> Result<(), RoomError> {
        let seen = [sender.as_bytes(), b"\0", message_id.as_bytes()].concat();
        let (stored, expired) =
            futures_util::future::join(self.store.get(SEEN, &seen), SEEN_IDS.expired(&*self.store, now)).await;
        if stored?.is_some() {
            return Ok(());
        }
        let batch = SEEN_IDS.keep(Batch::new(), seen, now.to_be_bytes().to_vec(), now, expired?);
        self.send(user_data, sender, kind, messages, batch).await
    }

    /// The device's first `limit` messages up to stream position `to`, oldest
    /// first, and the position up to which they are all of them: `to`, or
    /// the last one's when more wait.
    pub async fn pending(
        &self,
        user: &UserId,
        device: &DeviceId,
        to: u64,
        limit: usize,
    ) -> Result<(Vec<Message>, u64), RoomError> {
        let device = (user.to_owned(), device.to_owned());
        if self.empty.get(&device).is_some() {
            return Ok((Vec::new(), to));
        }
        // Past `to` too: only a device with no message at all is kept as empty.
        let mark = self.empty.mark();
        let all = up_to(&device.0, &device.1, u64::MAX);
        let mut entries = self.store.scan(TO_DEVICE, all, Direction::Forward, limit + 1).await?;
        if entries.is_empty() {
            self.empty.keep(device, (), mark);
            return Ok((Vec::new(), to));
        }
        let wanted = up_to(&device.0, &device.1, to);
        entries.retain(|(key, _)| wanted.contains(key));
        let mut through = to;
        if entries.len() > limit {
            entries.truncate(limit);
            if let Some((key, _)) = entries.last() {
                let position = key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok());
                through = u64::from_be_bytes(position.ok_or_else(|| RoomError::corrupt("bad to-device key"))?);
            }
        }
        let messages = entries.into_iter().map(|(_, value)| serde_json::from_slice(&value).map_err(RoomError::corrupt));
        Ok((messages.collect::<Result<_, _>>()?, through))
    }

    /// Deletes the device's messages up to stream position `to`: its client
    /// synced from there, so it has them.
    pub async fn acknowledge(&self, user: &UserId, device: &DeviceId, to: u64) -> Result<(), RoomError> {
        if self.empty.get(&(user.to_owned(), device.to_owned())).is_some() {
            return Ok(());
        }
        let entries = self.store.scan(TO_DEVICE, up_to(user, device, to), Direction::Forward, usize::MAX).await?;
        if entries.is_empty() {
            return Ok(());
        }
        Ok(self
            .store
            .write(entries.into_iter().fold(Batch::new(), |batch, (key, _)| batch.delete(TO_DEVICE, key)))
            .await?)
    }

    /// Deletes every message of devices that are gone.
    pub async fn forget_devices(&self, user: &UserId, devices: &[OwnedDeviceId]) -> Result<(), RoomError> {
        let mut batch = Batch::new();
        for device in devices {
            let entries =
                self.store.scan(TO_DEVICE, up_to(user, device, u64::MAX), Direction::Forward, usize::MAX).await?;
            batch = entries.into_iter().fold(batch, |batch, (key, _)| batch.delete(TO_DEVICE, key));
        }
        self.store.write(batch).await?;
        let gone: Vec<_> = devices.iter().map(|device| (user.to_owned(), device.clone())).collect();
        self.empty.wrote(&gone);
        Ok(())
    }
}

fn prefix(user: &UserId, device: &DeviceId) -> Vec<u8> {
    [user.as_bytes(), b"\0", device.as_bytes(), b"\0"].concat()
}

fn up_to(user: &UserId, device: &DeviceId, to: u64) -> KeyRange {
    let prefix = prefix(user, device);
    KeyRange::new(Bound::Included(prefix.clone()), Bound::Included([&prefix[..], &to.to_be_bytes()].concat()))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ruma::user_id;

    use super::*;
    use crate::core::service::tests::node;

    /// Another server's message IDs are kept for a week, to drop its resends,
    /// then forgotten.
    #[tokio::test]
    async fn seen_message_ids_are_kept_for_a_week() {
        let hs = node().await;
        let sender = user_id!("@bob:elsewhere.example");
        let receive = |id: &'static str, now: u64| {
            let hs = &hs;
            async move { hs.to_device().receive(hs.user_data(), sender, id, "m.test", Vec::new(), now).await.unwrap() }
        };
        let kept = || async {
            let entries = hs.store().scan(SEEN, KeyRange::all(), Direction::Forward, usize::MAX).await.unwrap();
            entries.into_iter().filter(|(key, _)| key.first() != Some(&0)).map(|(key, _)| key).collect::<Vec<_>>()
        };
        let key = |id: &str| [sender.as_bytes(), b"\0", id.as_bytes()].concat();
        let start = 1_700_000_000_000;

        receive("one", start).await;
        let position = hs.user_data().position().await.unwrap();
        receive("one", start + 1).await;
        assert_eq!(hs.user_data().position().await.unwrap(), position, "a resend is dropped");
        assert_eq!(kept().await, vec![key("one")]);

        receive("two", start + SEEN_IDS.keep_for_ms + 1).await;
        assert_eq!(kept().await, vec![key("two")], "a week on, the first ID is forgotten");
        let all = hs.store().scan(SEEN, KeyRange::all(), Direction::Forward, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 2, "one ID and its place in time");
    }
}
