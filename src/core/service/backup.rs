//! Server-side key backups: each user's backup versions (an algorithm and its
//! public auth data, as the client chose them) and, in each, the room keys
//! the client encrypted for it. Only the client can read them.
//!
//! Key encodings:
//! - `backup_versions`: user ID, 0, version (u64 BE) → [`Version`] as JSON
//! - `backup_keys`: user ID, 0, version (u64 BE), room ID, 0, session ID → the
//!   session's `KeyBackupData` JSON
//! - `backup_counters`: user ID → the last version handed out (u64 BE), so a
//!   deleted version's number never comes back

use std::{collections::BTreeMap, sync::Arc};

use ruma::{api::client::backup::KeyBackupData, serde::Raw, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::rooms::RoomError;
use crate::store::{Batch, Direction, KeyRange, Store};

pub(crate) const BACKUP_VERSIONS: &str = "backup_versions";
pub(crate) const BACKUP_KEYS: &str = "backup_keys";
pub(crate) const BACKUP_COUNTERS: &str = "backup_counters";

/// A backup version as stored: its algorithm with the auth data, how many
/// sessions it holds, and a number that moves whenever they change.
#[derive(Clone, Serialize, Deserialize)]
pub struct Version {
    /// `{"algorithm", "auth_data"}`, as the client sent it.
    pub algorithm: Box<RawValue>,
    pub count: u64,
    pub etag: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup version {0}")]
    NoVersion(String),
    #[error("version {given} is not the current backup version {current}")]
    NotCurrent { given: String, current: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl From<crate::store::StoreError> for BackupError {
    fn from(err: crate::store::StoreError) -> Self {
        Self::Room(err.into())
    }
}

pub struct Backups {
    store: Arc<dyn Store>,
    /// Held by every write: a version's count and etag follow its keys.
    write: async_lock::Mutex<()>,
}

impl Backups {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, write: async_lock::Mutex::new(()) }
    }

    /// Starts a new version, which becomes the current one.
    pub async fn create(&self, user: &UserId, algorithm: &RawValue) -> Result<String, BackupError> {
        let _write = self.write.lock().await;
        let last = self.store.get(BACKUP_COUNTERS, user.as_bytes()).await?;
        let last = last.map(|bytes| bytes.try_into().map(u64::from_be_bytes)).transpose();
        let next = last.map_err(|_| RoomError::corrupt("a backup counter is not 8 bytes"))?.unwrap_or(0) + 1;
        let version = Version { algorithm: algorithm.to_owned(), count: 0, etag: 0 };
        let batch = Batch::new().put(BACKUP_VERSIONS, version_key(user, next), encode(&version)?).put(
            BACKUP_COUNTERS,
            user.as_bytes(),
            next.to_be_bytes(),
        );
        self.store.write(batch).await?;
        Ok(next.to_string())
    }

    /// The current (newest) version, if any.
    pub async fn latest(&self, user: &UserId) -> Result<Option<(String, Version)>, BackupError> {
        let prefix = [user.as_bytes(), b"\0"].concat();
        let newest = self.store.scan(BACKUP_VERSIONS, KeyRange::prefix(&prefix), Direction::Backward, 1).await?;
        let Some((key, value)) = newest.into_iter().next() else { return Ok(None) };
        let number: [u8; 8] =
            key[prefix.len()..].try_into().map_err(|_| RoomError::corrupt("bad backup version key"))?;
        Ok(Some((u64::from_be_bytes(number).to_string(), decode(&value)?)))
    }

    pub async fn version(&self, user: &UserId, version: &str) -> Result<Version, BackupError> {
        let number = parse(version)?;
        match self.store.get(BACKUP_VERSIONS, &version_key(user, number)).await? {
            Some(value) => Ok(decode(&value)?),
            None => Err(BackupError::NoVersion(version.to_owned())),
        }
    }

    /// Replaces a version's auth data; its algorithm stays what it was.
    pub async fn update(&self, user: &UserId, version: &str, algorithm: &RawValue) -> Result<(), BackupError> {
        let _write = self.write.lock().await;
        let mut stored = self.version(user, version).await?;
        if algorithm_name(&stored.algorithm)? != algorithm_name(algorithm)? {
            return Err(BackupError::Invalid("a backup version's algorithm cannot change".into()));
        }
        stored.algorithm = algorithm.to_owned();
        let key = version_key(user, parse(version)?);
        Ok(self.store.write(Batch::new().put(BACKUP_VERSIONS, key, encode(&stored)?)).await?)
    }

    /// Deletes a version and every key in it.
    pub async fn delete(&self, user: &UserId, version: &str) -> Result<(), BackupError> {
        let _write = self.write.lock().await;
        self.version(user, version).await?;
        let number = parse(version)?;
        let mut batch = Batch::new().delete(BACKUP_VERSIONS, version_key(user, number));
        for (key, _) in self.scan(user, number, &[]).await? {
            batch = batch.delete(BACKUP_KEYS, key);
        }
        Ok(self.store.write(batch).await?)
    }

    /// Stores sessions' keys in the current version `version`, each replacing
    /// the one stored unless that one is better as the spec ranks them;
    /// returns the version's etag and count after.
    pub async fn put(
        &self,
        user: &UserId,
        version: &str,
        sessions: Vec<(OwnedRoomId, String, Raw<KeyBackupData>)>,
    ) -> Result<(String, u64), BackupError> {
        let _write = self.write.lock().await;
        let (current, mut stored) = self.latest(user).await?.ok_or_else(|| BackupError::NoVersion(version.into()))?;
        if current != version {
            self.version(user, version).await?;
            return Err(BackupError::NotCurrent { given: version.into(), current });
        }
        let number = parse(version)?;
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, data) in sessions {
            let new: Ranked = serde_json::from_str(data.json().get())
                .map_err(|err| BackupError::Invalid(format!("session {session}: {err}")))?;
            let key = session_key(user, number, &room, &session);
            match self.store.get(BACKUP_KEYS, &key).await? {
                Some(old) => {
                    let old: Ranked = serde_json::from_slice(&old).map_err(RoomError::corrupt)?;
                    if new.rank() >= old.rank() {
                        continue;
                    }
                }
                None => stored.count += 1,
            }
            batch = batch.put(BACKUP_KEYS, key, data.json().get());
            changed = true;
        }
        if changed {
            stored.etag += 1;
            batch = batch.put(BACKUP_VERSIONS, version_key(user, number), encode(&stored)?);
            self.store.write(batch).await?;
        }
        Ok((stored.etag.to_string(), stored.count))
    }

    /// The keys of `version`, all or of one room (`within`: a room ID) or one
    /// session (a room ID and session ID), by room and session.
    pub async fn keys(
        &self,
        user: &UserId,
        version: &str,
        within: (Option<&RoomId>, Option<&str>),
    ) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>, BackupError> {
        self.version(user, version).await?;
        let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
        for (key, value) in self.scan(user, parse(version)?, &suffix(within)).await? {
            let (room, session) = split_session_key(user, &key)?;
            let text = String::from_utf8(value).map_err(RoomError::corrupt)?;
            let data = Raw::from_json(RawValue::from_string(text).map_err(RoomError::corrupt)?);
            rooms.entry(room).or_default().insert(session, data);
        }
        Ok(rooms)
    }

    /// Deletes the keys of `version` that `within` names (see [`Backups::keys`]);
    /// returns the version's etag and count after.
    pub async fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        within: (Option<&RoomId>, Option<&str>),
    ) -> Result<(String, u64), BackupError> {
        let _write = self.write.lock().await;
        let mut stored = self.version(user, version).await?;
        let number = parse(version)?;
        let gone = self.scan(user, number, &suffix(within)).await?;
        if !gone.is_empty() {
            stored.count = stored.count.saturating_sub(gone.len() as u64);
            stored.etag += 1;
            let batch = Batch::new().put(BACKUP_VERSIONS, version_key(user, number), encode(&stored)?);
            let batch = gone.into_iter().fold(batch, |batch, (key, _)| batch.delete(BACKUP_KEYS, key));
            self.store.write(batch).await?;
        }
        Ok((stored.etag.to_string(), stored.count))
    }

    async fn scan(&self, user: &UserId, version: u64, suffix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, BackupError> {
        let prefix = [&version_key(user, version)[..], suffix].concat();
        Ok(self.store.scan(BACKUP_KEYS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?)
    }
}

/// A session's backed-up key as far as the spec ranks it. The session data
/// is the client's business: only its presence is checked.
#[derive(Deserialize)]
struct Ranked {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    #[serde(rename = "session_data")]
    _session_data: serde::de::IgnoredAny,
}

impl Ranked {
    /// The lesser the better: verified first, then the key that decrypts from
    /// an earlier message, then the one forwarded fewer times.
    fn rank(&self) -> (bool, u64, u64) {
        (!self.is_verified, self.first_message_index, self.forwarded_count)
    }
}

fn parse(version: &str) -> Result<u64, BackupError> {
    version.parse().map_err(|_| BackupError::NoVersion(version.to_owned()))
}

fn algorithm_name(algorithm: &RawValue) -> Result<String, BackupError> {
    #[derive(Deserialize)]
    struct Named {
        algorithm: String,
    }
    let named: Named =
        serde_json::from_str(algorithm.get()).map_err(|err| BackupError::Invalid(format!("algorithm: {err}")))?;
    Ok(named.algorithm)
}

fn encode(version: &Version) -> Result<Vec<u8>, RoomError> {
    serde_json::to_vec(version).map_err(RoomError::corrupt)
}

fn decode(bytes: &[u8]) -> Result<Version, RoomError> {
    serde_json::from_slice(bytes).map_err(RoomError::corrupt)
}

fn version_key(user: &UserId, version: u64) -> Vec<u8> {
    [user.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

fn session_key(user: &UserId, version: u64, room: &RoomId, session: &str) -> Vec<u8> {
    [&version_key(user, version)[..], room.as_bytes(), b"\0", session.as_bytes()].concat()
}

/// The key suffix after the version that selects a room, or one session of it.
fn suffix((room, session): (Option<&RoomId>, Option<&str>)) -> Vec<u8> {
    match (room, session) {
        (Some(room), Some(session)) => [room.as_bytes(), b"\0", session.as_bytes()].concat(),
        (Some(room), None) => [room.as_bytes(), b"\0"].concat(),
        (None, _) => Vec::new(),
    }
}

fn split_session_key(user: &UserId, key: &[u8]) -> Result<(OwnedRoomId, String), BackupError> {
    let rest = key.get(user.as_bytes().len() + 1 + 8..).ok_or_else(|| RoomError::corrupt("bad backup key"))?;
    let split = rest.iter().position(|b| *b == 0).ok_or_else(|| RoomError::corrupt("bad backup key"))?;
    let room = std::str::from_utf8(&rest[..split]).map_err(RoomError::corrupt)?;
    let session = std::str::from_utf8(&rest[split + 1..]).map_err(RoomError::corrupt)?;
    Ok((RoomId::parse(room).map_err(RoomError::corrupt)?, session.to_owned()))
}
