//! End-to-end encryption keys of this node's devices: each device's signed
//! identity keys, its one-time keys (each handed out once) and a fallback key
//! per algorithm (handed out when the one-time keys run out). Changes to a
//! user's devices are numbered in the user data stream, so `/sync` and
//! `/keys/changes` can tell whose device lists moved between two positions.
//!
//! Key encodings:
//! - `device_keys`: user ID, 0, device ID → the device keys JSON as uploaded
//! - `one_time_keys`: user ID, 0, device ID, 0, algorithm, 0, upload number
//!   (u64 BE), key ID (`algorithm:name`) → the key JSON. The upload number
//!   hands keys out in the order they came, as the spec asks.
//! - `fallback_keys`: user ID, 0, device ID, 0, algorithm → [`Fallback`]
//! - `key_changes`: user data stream position (u64 BE) → the user ID whose
//!   devices, device keys or cross-signing keys changed then (users of other
//!   servers too, as their servers tell)
//! - `device_streams`: user ID → the position of the user's last change (u64
//!   BE), for this node's users: the `stream_id` and `prev_id` other servers
//!   are told
//! - `cross_signing_keys`: user ID, 0, usage (`master`, `self_signing`,
//!   `user_signing`) → the key JSON, with every signature it was given
//! - `key_signatures`: signer's user ID, 0, signed user's ID, 0, the signed key
//!   → the signer's signatures as JSON: what a user signed of another's keys,
//!   which only the signer sees

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    sync::Arc,
};

use ruma::{
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::Raw,
    DeviceId, OneTimeKeyAlgorithm, OneTimeKeyId, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{memo::Memo, rooms::RoomError, user_data::UserData};
use crate::core::lock;
use crate::store::{Batch, Direction, KeyRange, Store};

pub(crate) const DEVICE_KEYS: &str = "device_keys";
pub(crate) const ONE_TIME_KEYS: &str = "one_time_keys";
pub(crate) const FALLBACK_KEYS: &str = "fallback_keys";
pub(crate) const KEY_CHANGES: &str = "key_changes";
pub(crate) const DEVICE_STREAMS: &str = "device_streams";
pub(crate) const CROSS_SIGNING_KEYS: &str = "cross_signing_keys";
pub(crate) const KEY_SIGNATURES: &str = "key_signatures";

#[derive(Serialize, Deserialize)]
struct Fallback {
    key_id: OwnedOneTimeKeyId,
    key: Box<RawValue>,
    /// Whether it was handed out; the client replaces a used one.
    used: bool,
}

/// A change to a user's devices or keys as other servers are told of it: its
/// position, and the one of the change before it.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub stream: u64,
    pub prev: Option<u64>,
}

/// A user's cross-signing keys, as far as uploaded.
#[derive(Default)]
pub struct CrossSigning {
    pub master: Option<Raw<CrossSigningKey>>,
    pub self_signing: Option<Raw<CrossSigningKey>>,
    pub user_signing: Option<Raw<CrossSigningKey>>,
}

impl CrossSigning {
    fn usages(&self) -> [(&'static str, &Option<Raw<CrossSigningKey>>); 3] {
        [("master", &self.master), ("self_signing", &self.self_signing), ("user_signing", &self.user_signing)]
    }
}

/// The keys of one upload, already checked by the endpoint.
pub struct Upload {
    pub device_keys: Option<Raw<DeviceKeys>>,
    pub one_time_keys: BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    pub fallback_keys: BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
}

/// What a device has left to hand out: its one-time keys by algorithm, and the
/// algorithms of its fallback keys not handed out yet. Every sync tells it.
#[derive(Clone, Default)]
pub struct Available {
    pub counts: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub unused_fallback: Vec<OneTimeKeyAlgorithm>,
}

pub struct Keys {
    store: Arc<dyn Store>,
    /// Held by every write: one-time keys are numbered and claimed under it,
    /// so no key is numbered twice or handed out twice.
    write: async_lock::Mutex<()>,
    /// Devices' [`Available`], so a sync reads no keys while none changed.
    available: Memo<(OwnedUserId, OwnedDeviceId), Available>,
    /// The position of the newest `key_changes` entry, once known, so a sync
    /// with none after its `since` reads nothing. Raised before each change is
    /// written: no sync sees a position before its write landed.
    latest_change: std::sync::Mutex<Option<u64>>,
}

/// Devices whose [`Available`] is kept at most.
const KEPT_AVAILABLE: usize = 4_096;

impl Keys {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            write: async_lock::Mutex::new(()),
            available: Memo::new(KEPT_AVAILABLE),
            latest_change: std::sync::Mutex::new(None),
        }
    }

    /// Stores a device's keys. New or changed device keys are recorded as a
    /// change of the user's devices. A one-time key ID uploaded again must
    /// come with the same key.
    pub async fn upload(
        &self,
        user_data: &UserData,
        user: &UserId,
        device: &DeviceId,
        upload: Upload,
    ) -> Result<Option<Change>, RoomError> {
        let _write = self.write.lock().await;
        let mut batch = Batch::new();
        let existing = self.one_time_keys(user, device).await?;
        let mut next = existing.iter().map(|(number, ..)| number + 1).max().unwrap_or(0);
        for (key_id, key) in upload.one_time_keys {
            match existing.iter().find(|(_, id, _)| *id == key_id) {
                Some((_, _, old)) if old.get() == key.json().get() => continue,
                Some(_) => {
                    return Err(RoomError::Invalid(format!("one-time key {key_id} was uploaded with another key")))
                }
                None => {}
            }
            let key_name = [&device_prefix(user, device)[..], key_id.algorithm().as_str().as_bytes(), b"\0"].concat();
            let key_name = [&key_name[..], &next.to_be_bytes(), key_id.as_bytes()].concat();
            batch = batch.put(ONE_TIME_KEYS, key_name, key.json().get());
            next += 1;
        }
        for (key_id, key) in upload.fallback_keys {
            let fallback = Fallback { key: key.into_json(), used: false, key_id };
            let value = serde_json::to_vec(&fallback).map_err(RoomError::corrupt)?;
            batch = batch.put(FALLBACK_KEYS, fallback_key(user, device, fallback.key_id.algorithm()), value);
        }
        let changed = match &upload.device_keys {
            Some(keys) => {
                let key = device_prefix_of(user, device);
                let old = self.store.get(DEVICE_KEYS, &key).await?;
                batch = batch.put(DEVICE_KEYS, key, keys.json().get());
                old.as_deref() != Some(keys.json().get().as_bytes())
            }
            None => false,
        };
        let change = match changed {
            true => Some(self.record(user_data, user, batch).await?),
            false => self.store.write(batch).await.map(|()| None)?,
        };
        self.available.wrote([&(user.to_owned(), device.to_owned())]);
        Ok(change)
    }

    /// Writes `batch` with a change of this node's `user`'s devices or keys.
    /// The caller holds the write lock, so changes of a user never interleave.
    async fn record(&self, user_data: &UserData, user: &UserId, batch: Batch) -> Result<Change, RoomError> {
        let prev = self.store.get(DEVICE_STREAMS, user.as_bytes()).await?;
        let prev = prev.map(|bytes| bytes.try_into().map(u64::from_be_bytes)).transpose();
        let prev = prev.map_err(|_| RoomError::corrupt("a device stream position is not 8 bytes"))?;
        let stream = user_data
            .write_at_next(
                |position| {
                    self.raise_latest_change(position);
                    Ok(batch.put(KEY_CHANGES, position.to_be_bytes(), user.as_bytes()).put(
                        DEVICE_STREAMS,
                        user.as_bytes(),
                        position.to_be_bytes(),
                    ))
                },
                || (),
            )
            .await?;
        Ok(Change { stream, prev })
    }

    fn raise_latest_change(&self, position: u64) {
        let mut latest = lock(&self.latest_change);
        *latest = Some(latest.map_or(position, |known| known.max(position)));
    }

    /// The position of this node's `user`'s last change of devices or keys.
    pub async fn stream(&self, user: &UserId) -> Result<u64, RoomError> {
        let bytes = self.store.get(DEVICE_STREAMS, user.as_bytes()).await?;
        let bytes = bytes.map(<[u8; 8]>::try_from).transpose();
        Ok(bytes
            .map_err(|_| RoomError::corrupt("a device stream position is not 8 bytes"))?
            .map_or(0, u64::from_be_bytes))
    }

    /// Notes that another server's `user` changed their devices or keys, so
    /// the clients who follow them look again.
    pub async fn remote_changed(&self, user_data: &UserData, user: &UserId) -> Result<(), RoomError> {
        user_data
            .write_at_next(
                |position| {
                    self.raise_latest_change(position);
                    Ok(Batch::new().put(KEY_CHANGES, position.to_be_bytes(), user.as_bytes()))
                },
                || (),
            )
            .await?;
        Ok(())
    }

    /// The user's cross-signing keys.
    pub async fn cross_signing(&self, user: &UserId) -> Result<CrossSigning, RoomError> {
        let prefix = [user.as_bytes(), b"\0"].concat();
        let entries =
            self.store.scan(CROSS_SIGNING_KEYS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        let mut keys = CrossSigning::default();
        for (key, value) in entries {
            let slot = match &key[prefix.len()..] {
                b"master" => &mut keys.master,
                b"self_signing" => &mut keys.self_signing,
                b"user_signing" => &mut keys.user_signing,
                _ => continue,
            };
            *slot = Some(raw(value)?);
        }
        Ok(keys)
    }

    /// Stores the cross-signing keys `keys` has (the others stay), as a change.
    pub async fn upload_cross_signing(
        &self,
        user_data: &UserData,
        user: &UserId,
        keys: CrossSigning,
    ) -> Result<Change, RoomError> {
        let _write = self.write.lock().await;
        let mut batch = Batch::new();
        for (usage, key) in keys.usages() {
            if let Some(key) = key {
                batch = batch.put(CROSS_SIGNING_KEYS, cross_signing_key(user, usage), key.json().get());
            }
        }
        self.record(user_data, user, batch).await
    }

    /// Replaces the stored device keys or cross-signing key of this node's
    /// `user` by `signed`, the same key with more signatures, as a change.
    /// `signed` must be what [`Keys::signable`] gave, merged.
    pub async fn replace_signed(
        &self,
        user_data: &UserData,
        user: &UserId,
        target: &Signable,
        signed: &RawValue,
    ) -> Result<Change, RoomError> {
        let _write = self.write.lock().await;
        let (table, key) = match target {
            Signable::Device(device) => (DEVICE_KEYS, device_prefix_of(user, device)),
            Signable::CrossSigning(usage) => (CROSS_SIGNING_KEYS, cross_signing_key(user, usage)),
        };
        self.record(user_data, user, Batch::new().put(table, key, signed.get())).await
    }

    /// What of `user`'s keys `key` names, as `/keys/signatures/upload` names
    /// them (a device ID, or a cross-signing key's public key), with its JSON.
    pub async fn signable(&self, user: &UserId, key: &str) -> Result<Option<(Signable, Box<RawValue>)>, RoomError> {
        let cross_signing = self.cross_signing(user).await?;
        for (usage, stored) in cross_signing.usages() {
            let Some(stored) = stored else { continue };
            let parsed: CrossSigningKey = stored.deserialize().map_err(RoomError::corrupt)?;
            if parsed.keys.keys().any(|id| id.key_name() == key) {
                return Ok(Some((Signable::CrossSigning(usage), stored.json().to_owned())));
            }
        }
        let device: &DeviceId = key.into();
        let keys = self.device_keys(user, device).await?;
        Ok(keys.map(|keys| (Signable::Device(device.to_owned()), keys.into_json())))
    }

    /// Keeps `signer`'s signatures of another user's key, for the signer's eyes.
    pub async fn keep_signatures(
        &self,
        signer: &UserId,
        user: &UserId,
        key: &str,
        signatures: &RawValue,
    ) -> Result<(), RoomError> {
        let name = [signer.as_bytes(), b"\0", user.as_bytes(), b"\0", key.as_bytes()].concat();
        Ok(self.store.put(KEY_SIGNATURES, &name, signatures.get().as_bytes()).await?)
    }

    /// The signatures `signer` made of `user`'s keys, by the public key signed.
    pub async fn kept_signatures(
        &self,
        signer: &UserId,
        user: &UserId,
    ) -> Result<Vec<(String, Box<RawValue>)>, RoomError> {
        let prefix = [signer.as_bytes(), b"\0", user.as_bytes(), b"\0"].concat();
        let entries =
            self.store.scan(KEY_SIGNATURES, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let key = String::from_utf8(key[prefix.len()..].to_vec()).map_err(RoomError::corrupt)?;
                Ok((key, raw::<()>(value)?.into_json()))
            })
            .collect()
    }

    /// The device's keys as uploaded.
    pub async fn device_keys(&self, user: &UserId, device: &DeviceId) -> Result<Option<Raw<DeviceKeys>>, RoomError> {
        let bytes = self.store.get(DEVICE_KEYS, &device_prefix_of(user, device)).await?;
        bytes.map(raw).transpose()
    }

    /// Every device of the user that uploaded keys, with them.
    pub async fn user_keys(&self, user: &UserId) -> Result<Vec<(OwnedDeviceId, Raw<DeviceKeys>)>, RoomError> {
        let prefix = [user.as_bytes(), b"\0"].concat();
        let entries = self.store.scan(DEVICE_KEYS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let device = std::str::from_utf8(&key[prefix.len()..]).map_err(RoomError::corrupt)?;
                Ok((device.into(), raw(value)?))
            })
            .collect()
    }

    /// What the device has left to hand out.
    pub async fn available(&self, user: &UserId, device: &DeviceId) -> Result<Available, RoomError> {
        let key = (user.to_owned(), device.to_owned());
        if let Some(available) = self.available.get(&key) {
            return Ok(available);
        }
        let mark = self.available.mark();
        let mut available = Available::default();
        let prefix = device_prefix(user, device);
        let (one_time, fallback) = futures_util::future::join(
            self.one_time_keys(user, device),
            self.store.scan(FALLBACK_KEYS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX),
        )
        .await;
        for (_, key_id, _) in one_time? {
            *available.counts.entry(key_id.algorithm()).or_default() += UInt::from(1u8);
        }
        for (_, value) in fallback? {
            let fallback: Fallback = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
            if !fallback.used {
                available.unused_fallback.push(fallback.key_id.algorithm());
            }
        }
        self.available.keep(key, available.clone(), mark);
        Ok(available)
    }

    /// Hands out the device's oldest one-time key of `algorithm`, deleting it;
    /// when none is left, its fallback key, marked used.
    pub async fn claim(
        &self,
        user: &UserId,
        device: &DeviceId,
        algorithm: &OneTimeKeyAlgorithm,
    ) -> Result<Option<(OwnedOneTimeKeyId, Raw<OneTimeKey>)>, RoomError> {
        let _write = self.write.lock().await;
        let prefix = [&device_prefix(user, device)[..], algorithm.as_str().as_bytes(), b"\0"].concat();
        let oldest = self.store.scan(ONE_TIME_KEYS, KeyRange::prefix(&prefix), Direction::Forward, 1).await?;
        if let Some((key, value)) = oldest.into_iter().next() {
            let key_id = parse_key_id(key.get(prefix.len() + 8..).unwrap_or_default())?;
            self.store
                .write(Batch::new().expect(ONE_TIME_KEYS, key.clone(), Some(value.clone())).delete(ONE_TIME_KEYS, key))
                .await?;
            self.available.wrote([&(user.to_owned(), device.to_owned())]);
            return Ok(Some((key_id, raw(value)?)));
        }
        let key = fallback_key(user, device, algorithm.clone());
        let Some(bytes) = self.store.get(FALLBACK_KEYS, &key).await? else { return Ok(None) };
        let mut fallback: Fallback = serde_json::from_slice(&bytes).map_err(RoomError::corrupt)?;
        if !fallback.used {
            fallback.used = true;
            self.store.put(FALLBACK_KEYS, &key, &serde_json::to_vec(&fallback).map_err(RoomError::corrupt)?).await?;
            self.available.wrote([&(user.to_owned(), device.to_owned())]);
        }
        Ok(Some((fallback.key_id, Raw::from_json(fallback.key))))
    }

    /// The users whose devices changed after stream position `from` up to `to`.
    pub async fn changed(&self, from: u64, to: u64) -> Result<BTreeSet<OwnedUserId>, RoomError> {
        if to <= from {
            return Ok(BTreeSet::new());
        }
        let known = *lock(&self.latest_change);
        let latest = match known {
            Some(latest) => latest,
            None => {
                let newest = self.store.scan(KEY_CHANGES, KeyRange::all(), Direction::Backward, 1).await?;
                let newest = newest.first().map(|(key, _)| key.as_slice().try_into().map(u64::from_be_bytes));
                let newest =
                    newest.transpose().map_err(|_| RoomError::corrupt("a key change position is not 8 bytes"))?;
                self.raise_latest_change(newest.unwrap_or(0));
                newest.unwrap_or(0)
            }
        };
        if latest <= from {
            return Ok(BTreeSet::new());
        }
        let range =
            KeyRange::new(Bound::Excluded(from.to_be_bytes().to_vec()), Bound::Included(to.to_be_bytes().to_vec()));
        let entries = self.store.scan(KEY_CHANGES, range, Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(_, user)| {
                let user = String::from_utf8(user).map_err(RoomError::corrupt)?;
                UserId::parse(user).map_err(RoomError::corrupt)
            })
            .collect()
    }

    /// Deletes the keys of devices that are gone, recording the change.
    pub async fn forget_devices(
        &self,
        user_data: &UserData,
        user: &UserId,
        devices: &[OwnedDeviceId],
    ) -> Result<Option<Change>, RoomError> {
        if devices.is_empty() {
            return Ok(None);
        }
        let _write = self.write.lock().await;
        let mut batch = Batch::new();
        for device in devices {
            let prefix = device_prefix(user, device);
            batch = batch.delete(DEVICE_KEYS, device_prefix_of(user, device));
            for table in [ONE_TIME_KEYS, FALLBACK_KEYS] {
                for (key, _) in
                    self.store.scan(table, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?
                {
                    batch = batch.delete(table, key);
                }
            }
        }
        let change = self.record(user_data, user, batch).await?;
        let gone: Vec<_> = devices.iter().map(|device| (user.to_owned(), device.clone())).collect();
        self.available.wrote(&gone);
        Ok(Some(change))
    }

    /// The device's one-time keys: upload number, key ID and key.
    async fn one_time_keys(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Vec<(u64, OwnedOneTimeKeyId, Box<RawValue>)>, RoomError> {
        let prefix = device_prefix(user, device);
        let entries = self.store.scan(ONE_TIME_KEYS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let rest = &key[prefix.len()..];
                let algorithm_end = rest.iter().position(|b| *b == 0).ok_or_else(|| RoomError::corrupt("bad key"))?;
                let number =
                    rest.get(algorithm_end + 1..algorithm_end + 9).ok_or_else(|| RoomError::corrupt("bad key"))?;
                let number = u64::from_be_bytes(number.try_into().map_err(RoomError::corrupt)?);
                let key_id = parse_key_id(&rest[algorithm_end + 9..])?;
                let value = RawValue::from_string(String::from_utf8(value).map_err(RoomError::corrupt)?)
                    .map_err(RoomError::corrupt)?;
                Ok((number, key_id, value))
            })
            .collect()
    }
}

fn raw<T>(bytes: Vec<u8>) -> Result<Raw<T>, RoomError> {
    let text = String::from_utf8(bytes).map_err(RoomError::corrupt)?;
    Ok(Raw::from_json(RawValue::from_string(text).map_err(RoomError::corrupt)?))
}

fn parse_key_id(bytes: &[u8]) -> Result<OwnedOneTimeKeyId, RoomError> {
    OneTimeKeyId::parse(std::str::from_utf8(bytes).map_err(RoomError::corrupt)?).map_err(RoomError::corrupt)
}

/// User ID, 0, device ID: a device's key in `device_keys`.
fn device_prefix_of(user: &UserId, device: &DeviceId) -> Vec<u8> {
    [user.as_bytes(), b"\0", device.as_bytes()].concat()
}

/// User ID, 0, device ID, 0: the prefix of a device's keys in `one_time_keys`
/// and `fallback_keys`.
fn device_prefix(user: &UserId, device: &DeviceId) -> Vec<u8> {
    [&device_prefix_of(user, device)[..], b"\0"].concat()
}

fn cross_signing_key(user: &UserId, usage: &str) -> Vec<u8> {
    [user.as_bytes(), b"\0", usage.as_bytes()].concat()
}

/// A key of a user's that others sign: a device's keys, or a cross-signing key.
pub enum Signable {
    Device(OwnedDeviceId),
    CrossSigning(&'static str),
}

fn fallback_key(user: &UserId, device: &DeviceId, algorithm: OneTimeKeyAlgorithm) -> Vec<u8> {
    [&device_prefix(user, device)[..], algorithm.as_str().as_bytes()].concat()
}
