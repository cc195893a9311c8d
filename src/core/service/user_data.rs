//! What users keep on their node besides rooms: account data (global and per
//! room), read receipts and stored sync filters. Account data and receipts are
//! numbered in one stream of their own, so `/sync` hands out what changed since
//! a position; device list changes and to-device messages are numbered in it
//! too ([`UserData::write_at_next`]).
//!
//! Key encodings:
//! - `account_data`: user ID, 0, room ID (empty for global), 0, type → [`Entry`]
//! - `receipts`: room ID, 0, user ID, 0, receipt type, 0, thread ID (empty for
//!   unthreaded) → [`Receipt`]
//! - `filters`: user ID, 0, filter ID → the filter's JSON
//! - `meta`: `user_stream` → the last position handed out (u64 BE)

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{cache::Cache, notifier::Notifier, rooms::RoomError};
use crate::{
    core::Clock,
    store::{Batch, Direction, KeyRange, Store},
};

pub(crate) const ACCOUNT_DATA: &str = "account_data";
pub(crate) const RECEIPTS: &str = "receipts";
pub(crate) const FILTERS: &str = "filters";
const META: &str = "meta";
const USER_STREAM: &[u8] = b"user_stream";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub content: Box<RawValue>,
    pub stream: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub event_id: OwnedEventId,
    pub ts: u64,
    pub stream: u64,
}

/// One account data entry: its room (none for global), type and content.
pub type AccountData = (Option<OwnedRoomId>, String, Entry);

/// One receipt as `/sync` reports it.
#[derive(Clone, Debug)]
pub struct RoomReceipt {
    pub user_id: OwnedUserId,
    pub kind: String,
    pub thread: Option<String>,
    pub receipt: Receipt,
}

pub struct UserData {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    notifier: Arc<Notifier>,
    /// The last stream position, once read; writers take it in turn.
    stream: async_lock::Mutex<Option<u64>>,
    /// Each user's account data, as read: every `/sync` asks for it.
    account_data: Cache<OwnedUserId, Arc<Vec<AccountData>>>,
    /// Each room's receipts, as read: every `/sync` asks for them, to hand out
    /// new ones and to count unread events.
    receipts: Cache<OwnedRoomId, Arc<Vec<RoomReceipt>>>,
    /// Held while a room's receipts are read into the cache or written, so a
    /// slow reader cannot put back a copy older than a write.
    receipts_lock: async_lock::Mutex<()>,
}

/// Receipts, and account data entries, cached per generation.
const CACHED_ENTRIES: usize = 65_536;

impl UserData {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, notifier: Arc<Notifier>) -> Self {
        Self {
            store,
            clock,
            notifier,
            stream: async_lock::Mutex::new(None),
            receipts: Cache::new(CACHED_ENTRIES),
            account_data: Cache::new(CACHED_ENTRIES),
            receipts_lock: async_lock::Mutex::new(()),
        }
    }

    /// The last position handed out.
    pub async fn position(&self) -> Result<u64, RoomError> {
        let mut stream = self.stream.lock().await;
        self.read_position(&mut stream).await
    }

    async fn read_position(&self, stream: &mut Option<u64>) -> Result<u64, RoomError> {
        if let Some(position) = *stream {
            return Ok(position);
        }
        let position = match self.store.get(META, USER_STREAM).await? {
            Some(bytes) => u64::from_be_bytes(bytes.try_into().map_err(|_| RoomError::corrupt("bad user_stream"))?),
            None => 0,
        };
        *stream = Some(position);
        Ok(position)
    }

    /// Writes `put(position)`'s entry at the next position, with the counter,
    /// then runs `forget` to drop what it made stale (whether or not it
    /// landed) before waking readers, so that none of them reads a stale copy.
    async fn write_next(
        &self,
        put: impl FnOnce(u64) -> Result<Batch, RoomError>,
        forget: impl FnOnce(),
    ) -> Result<u64, RoomError> {
        let mut stream = self.stream.lock().await;
        let next = self.read_position(&mut stream).await? + 1;
        let batch = put(next)?.put(META, USER_STREAM, next.to_be_bytes());
        let written = self.store.write(batch).await;
        forget();
        written?;
        *stream = Some(next);
        drop(stream);
        self.notifier.notify();
        Ok(next)
    }

    /// Writes another service's batch at the next position, waking `/sync`
    /// after `forget` has dropped what the service kept that it made stale.
    pub async fn write_at_next(
        &self,
        put: impl FnOnce(u64) -> Result<Batch, RoomError>,
        forget: impl FnOnce(),
    ) -> Result<u64, RoomError> {
        self.write_next(put, forget).await
    }

    pub async fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Box<RawValue>,
    ) -> Result<u64, RoomError> {
        let key = account_data_key(user, room, Some(kind));
        self.write_next(
            |stream| {
                let entry = serde_json::to_vec(&Entry { content, stream }).map_err(RoomError::corrupt)?;
                Ok(Batch::new().put(ACCOUNT_DATA, key, entry))
            },
            || self.account_data.remove(user),
        )
        .await
    }

    pub async fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Entry>, RoomError> {
        let all = self.all_account_data(user).await?;
        let found = all.iter().find(|(r, k, _)| r.as_deref() == room && k == kind);
        Ok(found.map(|(_, _, entry)| entry.clone()))
    }

    /// The user's account data changed after `since`: (room, type, entry).
    pub async fn account_data_since(&self, user: &UserId, since: u64) -> Result<Vec<AccountData>, RoomError> {
        let all = self.all_account_data(user).await?;
        Ok(all.iter().filter(|(_, _, entry)| entry.stream > since).cloned().collect())
    }

    /// All of the user's account data, kept: each `/sync` reads what changed,
    /// and counting unread events reads the push rules of every room it counts.
    async fn all_account_data(&self, user: &UserId) -> Result<Arc<Vec<AccountData>>, RoomError> {
        if let Some(all) = self.account_data.get(user) {
            return Ok(all);
        }
        // Read under the writers' lock, so no write lands unseen meanwhile.
        let _stream = self.stream.lock().await;
        let all = Arc::new(self.read_account_data(user).await?);
        self.account_data.insert(user.to_owned(), all.clone(), all.len().max(1));
        Ok(all)
    }

    async fn read_account_data(&self, user: &UserId) -> Result<Vec<AccountData>, RoomError> {
        let prefix = [user.as_bytes(), b"\0"].concat();
        let entries = self.store.scan(ACCOUNT_DATA, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        let mut all = Vec::new();
        for (key, value) in entries {
            let entry: Entry = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
            let rest = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
            let (room, kind) = rest.split_once('\0').ok_or_else(|| RoomError::corrupt("bad account data key"))?;
            let room = match room {
                "" => None,
                room => Some(RoomId::parse(room).map_err(RoomError::corrupt)?),
            };
            all.push((room, kind.to_owned(), entry));
        }
        Ok(all)
    }

    /// Records `user`'s receipt; an older event than the one already receipted
    /// is still recorded, as clients decide what "read" means.
    pub async fn set_receipt(
        &self,
        room: &RoomId,
        user: &UserId,
        kind: &str,
        thread: Option<&str>,
        event_id: OwnedEventId,
    ) -> Result<u64, RoomError> {
        let key =
            [room.as_bytes(), b"\0", user.as_bytes(), b"\0", kind.as_bytes(), b"\0", thread.unwrap_or("").as_bytes()]
                .concat();
        let ts = self.clock.now_millis();
        // Held while writing, so a reader that misses the cache waits for
        // this receipt to land before reading the room's receipts again.
        let _writing = self.receipts_lock.lock().await;
        self.write_next(
            |stream| {
                let receipt = serde_json::to_vec(&Receipt { event_id, ts, stream }).map_err(RoomError::corrupt)?;
                Ok(Batch::new().put(RECEIPTS, key, receipt))
            },
            || self.receipts.remove(room),
        )
        .await
    }

    /// The room's receipts set after `since`.
    pub async fn receipts_since(&self, room: &RoomId, since: u64) -> Result<Vec<RoomReceipt>, RoomError> {
        Ok(self.receipts(room).await?.iter().filter(|r| r.receipt.stream > since).cloned().collect())
    }

    /// `user`'s receipts in the room.
    pub async fn receipts_of(&self, room: &RoomId, user: &UserId) -> Result<Vec<RoomReceipt>, RoomError> {
        Ok(self.receipts(room).await?.iter().filter(|r| r.user_id == user).cloned().collect())
    }

    async fn receipts(&self, room: &RoomId) -> Result<Arc<Vec<RoomReceipt>>, RoomError> {
        if let Some(receipts) = self.receipts.get(room) {
            return Ok(receipts);
        }
        let _reading = self.receipts_lock.lock().await;
        if let Some(receipts) = self.receipts.get(room) {
            return Ok(receipts);
        }
        let receipts = Arc::new(self.read_receipts(room).await?);
        self.receipts.insert(room.to_owned(), receipts.clone(), receipts.len().max(1));
        Ok(receipts)
    }

    async fn read_receipts(&self, room: &RoomId) -> Result<Vec<RoomReceipt>, RoomError> {
        let prefix = [room.as_bytes(), b"\0"].concat();
        let entries = self.store.scan(RECEIPTS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        let mut receipts = Vec::new();
        for (key, value) in entries {
            let receipt: Receipt = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
            let rest = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
            let mut parts = rest.split('\0');
            let (Some(user), Some(kind), Some(thread)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(RoomError::corrupt("bad receipt key"));
            };
            receipts.push(RoomReceipt {
                user_id: UserId::parse(user).map_err(RoomError::corrupt)?,
                kind: kind.to_owned(),
                thread: (!thread.is_empty()).then(|| thread.to_owned()),
                receipt,
            });
        }
        Ok(receipts)
    }

    /// Stores a filter and returns its ID.
    pub async fn create_filter(&self, user: &UserId, filter: &[u8]) -> Result<String, RoomError> {
        let prefix = [user.as_bytes(), b"\0"].concat();
        let last = self.store.scan(FILTERS, KeyRange::prefix(&prefix), Direction::Backward, 1).await?;
        let next = match last.first() {
            Some((key, _)) => {
                let id = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
                id.parse::<u64>().map_err(RoomError::corrupt)? + 1
            }
            None => 0,
        };
        // Zero-padded so that key order is number order.
        let id = format!("{next:010}");
        self.store.put(FILTERS, &[&prefix[..], id.as_bytes()].concat(), filter).await?;
        Ok(id)
    }

    pub async fn filter(&self, user: &UserId, id: &str) -> Result<Option<Vec<u8>>, RoomError> {
        Ok(self.store.get(FILTERS, &[user.as_bytes(), b"\0", id.as_bytes()].concat()).await?)
    }
}

fn account_data_key(user: &UserId, room: Option<&RoomId>, kind: Option<&str>) -> Vec<u8> {
    let room = room.map_or(&b""[..], |r| r.as_bytes());
    [user.as_bytes(), b"\0", room, b"\0", kind.unwrap_or("").as_bytes()].concat()
}
