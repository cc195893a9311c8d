//! Pushers: where a user's apps want push notifications sent. No push gateway
//! is reachable from a node yet, so they are only kept, for clients to list,
//! replace and delete; each belongs to the device that set it and goes with it.
//!
//! Key encodings (app IDs and pushkeys are any strings, NUL included, so each
//! is preceded by its length in bytes, u16 BE):
//! - `pushers`: user ID, 0, app ID, pushkey → [`StoredPusher`] as JSON
//! - `pushers_by_key`: app ID, pushkey, user ID → empty, to find the other
//!   users with the same pusher

use std::sync::Arc;

use ruma::{
    api::client::push::{Pusher, PusherIds},
    DeviceId, OwnedDeviceId, UserId,
};
use serde::{Deserialize, Serialize};

use super::rooms::RoomError;
use crate::store::{Batch, Direction, KeyRange, Store};

pub(crate) const PUSHERS: &str = "pushers";
pub(crate) const PUSHERS_BY_KEY: &str = "pushers_by_key";

#[derive(Serialize, Deserialize)]
struct StoredPusher {
    pusher: Pusher,
    device_id: OwnedDeviceId,
}

pub struct Pushers {
    store: Arc<dyn Store>,
    /// Held by every write: replacing a pusher reads the index it then changes.
    write: async_lock::Mutex<()>,
}

impl Pushers {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, write: async_lock::Mutex::new(()) }
    }

    /// The user's pushers, by app ID and pushkey.
    pub async fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>, RoomError> {
        Ok(self.stored(user).await?.into_iter().map(|(_, stored)| stored.pusher).collect())
    }

    /// Creates or replaces the user's pusher with the same app ID and pushkey,
    /// owned by `device`. Unless `append`, the other users' pushers with them
    /// go: the pushkey names one app on one device, which one user has now.
    pub async fn set(&self, user: &UserId, device: &DeviceId, pusher: Pusher, append: bool) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        let ids = ids_key(&pusher.ids);
        let mut batch = Batch::new();
        if !append {
            let others =
                self.store.scan(PUSHERS_BY_KEY, KeyRange::prefix(&ids), Direction::Forward, usize::MAX).await?;
            for (key, _) in others {
                let other = UserId::parse(std::str::from_utf8(&key[ids.len()..]).map_err(RoomError::corrupt)?)
                    .map_err(RoomError::corrupt)?;
                if other != user {
                    batch = batch.delete(PUSHERS, user_key(&other, &ids)).delete(PUSHERS_BY_KEY, key);
                }
            }
        }
        let stored = StoredPusher { pusher, device_id: device.to_owned() };
        let value = serde_json::to_vec(&stored).map_err(RoomError::corrupt)?;
        let batch = batch.put(PUSHERS, user_key(user, &ids), value).put(PUSHERS_BY_KEY, index_key(&ids, user), []);
        Ok(self.store.write(batch).await?)
    }

    /// Deletes the user's pusher with these IDs, if there is one.
    pub async fn delete(&self, user: &UserId, ids: &PusherIds) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        let ids = ids_key(ids);
        let batch = Batch::new().delete(PUSHERS, user_key(user, &ids)).delete(PUSHERS_BY_KEY, index_key(&ids, user));
        Ok(self.store.write(batch).await?)
    }

    /// Deletes the pushers that deleted devices set: their notifications
    /// would go to an app that is logged out.
    pub async fn forget_devices(&self, user: &UserId, devices: &[OwnedDeviceId]) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        let mut batch = Batch::new();
        for (ids, stored) in self.stored(user).await? {
            if devices.contains(&stored.device_id) {
                batch = batch.delete(PUSHERS, user_key(user, &ids)).delete(PUSHERS_BY_KEY, index_key(&ids, user));
            }
        }
        Ok(self.store.write(batch).await?)
    }

    /// The user's pushers with their encoded IDs.
    async fn stored(&self, user: &UserId) -> Result<Vec<(Vec<u8>, StoredPusher)>, RoomError> {
        let prefix = user_key(user, &[]);
        let entries = self.store.scan(PUSHERS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let stored = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
                Ok((key[prefix.len()..].to_vec(), stored))
            })
            .collect()
    }
}

/// The app ID, then the pushkey, each after its length.
fn ids_key(ids: &PusherIds) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + ids.app_id.len() + ids.pushkey.len());
    for part in [&ids.app_id, &ids.pushkey] {
        // Both are far shorter than 64 KiB: the endpoint refuses longer ones.
        key.extend_from_slice(&(part.len() as u16).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn user_key(user: &UserId, ids: &[u8]) -> Vec<u8> {
    [user.as_bytes(), b"\0", ids].concat()
}

fn index_key(ids: &[u8], user: &UserId) -> Vec<u8> {
    [ids, user.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_nul_bytes_do_not_collide() {
        let a = ids_key(&PusherIds::new("b\0c".into(), "a".into()));
        let b = ids_key(&PusherIds::new("c".into(), "a\0b".into()));
        assert_ne!(a, b);
    }
}
