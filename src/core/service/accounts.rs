//! Accounts of this node's users: passwords (argon2), devices, access tokens and
//! profiles.
//!
//! Key encodings:
//! - `users`: localpart (UTF-8) → [`UserRecord`] as JSON
//! - `devices`: user ID, 0, device ID → [`DeviceRecord`] as JSON
//! - `tokens`: SHA-256 of the access token → [`Session`] as JSON. Only the hash is
//!   stored, so a copy of the store lets nobody act as a user.

use crate::core::lock;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    core::{Clock, Random},
    store::{Batch, Direction, KeyRange, Store, StoreError},
};

pub(crate) const USERS: &str = "users";
pub(crate) const DEVICES: &str = "devices";
pub(crate) const TOKENS: &str = "tokens";

/// Sessions the token cache keeps before starting over.
const CACHED_SESSIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the user ID {0} is taken")]
    UserInUse(OwnedUserId),
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    #[error("invalid username or password")]
    WrongPassword,
    #[error("unknown device {0}")]
    UnknownDevice(OwnedDeviceId),
    #[error("stored account data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    fn corrupt(err: impl std::fmt::Display) -> Self {
        Self::Corrupt(err.to_string())
    }
}

/// Who an access token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// The argon2 hash in PHC format; `None` for an account that cannot log in.
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deactivated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The hash of the device's current access token, to revoke it with the device.
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<u64>,
}

/// A newly issued access token and the device it belongs to.
#[derive(Clone, Debug)]
pub struct Login {
    pub session: Session,
    pub access_token: String,
}

pub struct Accounts {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    server_name: ruma::OwnedServerName,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        server_name: ruma::OwnedServerName,
    ) -> Self {
        Self { store, clock, random, server_name, sessions: Default::default() }
    }

    /// The full user ID for `localpart` (or an already full ID of this node),
    /// refusing names the spec does not allow for new users.
    pub fn user_id(&self, name: &str) -> Result<OwnedUserId, AccountError> {
        let id = match name.starts_with('@') {
            true => UserId::parse(name),
            false => UserId::parse(format!("@{}:{}", name.to_lowercase(), self.server_name)),
        }
        .map_err(|err| AccountError::InvalidUsername(err.to_string()))?;
        if id.server_name() != self.server_name {
            return Err(AccountError::InvalidUsername(format!("{id} is not a user of this node")));
        }
        let valid = id
            .localpart()
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
        if !valid || id.localpart().is_empty() {
            return Err(AccountError::InvalidUsername(format!(
                "{name}: user IDs may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'"
            )));
        }
        Ok(id)
    }

    /// A localpart no user holds, for registrations that do not choose one.
    pub fn random_localpart(&self) -> String {
        format!("user-{}", self.random_string(12).to_lowercase())
    }

    pub async fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>, AccountError> {
        if user_id.server_name() != self.server_name {
            return Ok(None);
        }
        let bytes = self.store.get(USERS, user_id.localpart().as_bytes()).await?;
        bytes.map(|b| serde_json::from_slice(&b)).transpose().map_err(AccountError::corrupt)
    }

    /// Every account of this node, deactivated ones too.
    pub async fn users(&self) -> Result<Vec<(OwnedUserId, UserRecord)>, AccountError> {
        let entries = self.store.scan(USERS, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(localpart, record)| {
                let localpart = String::from_utf8(localpart).map_err(AccountError::corrupt)?;
                let user_id = self.user_id(&localpart).map_err(AccountError::corrupt)?;
                Ok((user_id, serde_json::from_slice(&record).map_err(AccountError::corrupt)?))
            })
            .collect()
    }

    /// Creates the account and, unless `device` is `None`, logs it in.
    pub async fn register(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        device: Option<(Option<OwnedDeviceId>, Option<String>)>,
    ) -> Result<Option<Login>, AccountError> {
        let record = UserRecord {
            password: password.map(|p| self.hash(p)).transpose()?,
            displayname: Some(user_id.localpart().to_owned()),
            ..Default::default()
        };
        let key = user_id.localpart().as_bytes();
        let mut batch = Batch::new().expect(USERS, key, None).put(USERS, key, json(&record)?);
        let mut login = None;
        if let Some((device_id, display_name)) = device {
            let (b, l) = self.new_device(batch, user_id, device_id, display_name)?;
            batch = b;
            login = Some(l);
        }
        match self.store.write(batch).await {
            Err(StoreError::Conflict { .. }) => Err(AccountError::UserInUse(user_id.to_owned())),
            Err(err) => Err(err.into()),
            Ok(()) => Ok(login),
        }
    }

    /// Checks the password and issues a new access token on a device.
    pub async fn login(
        &self,
        user_id: &UserId,
        password: &str,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
    ) -> Result<Login, AccountError> {
        self.check_password(user_id, password).await?;
        let mut batch = Batch::new();
        // Logging in again on a known device replaces its token.
        if let Some(device_id) = &device_id {
            if let Some(old) = self.device(user_id, device_id).await? {
                batch = batch.delete(TOKENS, hex_decode(&old.token));
                self.forget_sessions(|s| s.user_id == user_id && &s.device_id == device_id);
            }
        }
        let (batch, login) = self.new_device(batch, user_id, device_id, display_name)?;
        self.store.write(batch).await?;
        Ok(login)
    }

    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<(), AccountError> {
        let record = self.user(user_id).await?.filter(|u| !u.deactivated).ok_or(AccountError::WrongPassword)?;
        let hash = record.password.ok_or(AccountError::WrongPassword)?;
        let parsed = PasswordHash::new(&hash).map_err(AccountError::corrupt)?;
        Argon2::default().verify_password(password.as_bytes(), &parsed).map_err(|_| AccountError::WrongPassword)
    }

    /// The session an access token speaks for, if it is live.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, AccountError> {
        if let Some(session) = lock(&self.sessions).get(token) {
            return Ok(Some(session.clone()));
        }
        let Some(bytes) = self.store.get(TOKENS, &token_hash(token)).await? else { return Ok(None) };
        let session: Session = serde_json::from_slice(&bytes).map_err(AccountError::corrupt)?;
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= CACHED_SESSIONS {
            sessions.clear();
        }
        sessions.insert(token.to_owned(), session.clone());
        Ok(Some(session))
    }

    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>, AccountError> {
        let prefix = device_key(user_id, "".into());
        let entries = self.store.scan(DEVICES, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let id = std::str::from_utf8(&key[prefix.len()..]).map_err(AccountError::corrupt)?;
                Ok((id.into(), serde_json::from_slice(&value).map_err(AccountError::corrupt)?))
            })
            .collect()
    }

    pub async fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceRecord>, AccountError> {
        let bytes = self.store.get(DEVICES, &device_key(user_id, device_id)).await?;
        bytes.map(|b| serde_json::from_slice(&b)).transpose().map_err(AccountError::corrupt)
    }

    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<(), AccountError> {
        let mut device =
            self.device(user_id, device_id).await?.ok_or_else(|| AccountError::UnknownDevice(device_id.to_owned()))?;
        device.display_name = display_name;
        self.store.put(DEVICES, &device_key(user_id, device_id), &json(&device)?).await?;
        Ok(())
    }

    /// Deletes the devices and revokes their tokens, and returns those it
    /// deleted. Unknown devices are skipped, as `POST /delete_devices` asks.
    pub async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<OwnedDeviceId>, AccountError> {
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for device_id in device_ids {
            if let Some(device) = self.device(user_id, device_id).await? {
                batch = batch.delete(TOKENS, hex_decode(&device.token)).delete(DEVICES, device_key(user_id, device_id));
                deleted.push(device_id.clone());
            }
        }
        self.store.write(batch).await?;
        self.forget_sessions(|s| s.user_id == user_id && device_ids.contains(&s.device_id));
        Ok(deleted)
    }

    /// Every device of the user but `keep`; returns those it deleted.
    pub async fn delete_other_devices(
        &self,
        user_id: &UserId,
        keep: Option<&DeviceId>,
    ) -> Result<Vec<OwnedDeviceId>, AccountError> {
        let others: Vec<OwnedDeviceId> =
            self.devices(user_id).await?.into_iter().map(|(id, _)| id).filter(|id| Some(&**id) != keep).collect();
        self.delete_devices(user_id, &others).await
    }

    pub async fn set_password(&self, user_id: &UserId, password: &str) -> Result<(), AccountError> {
        let mut record = self.user(user_id).await?.ok_or(AccountError::WrongPassword)?;
        record.password = Some(self.hash(password)?);
        self.put_user(user_id, &record).await
    }

    /// Marks the account deactivated (its ID stays taken, as the spec requires),
    /// drops its password and profile, and logs out every device, which it returns.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<Vec<OwnedDeviceId>, AccountError> {
        let record = UserRecord { password: None, deactivated: true, displayname: None, avatar_url: None };
        self.put_user(user_id, &record).await?;
        self.delete_other_devices(user_id, None).await
    }

    pub async fn set_profile(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<UserRecord, AccountError> {
        let mut record = self.user(user_id).await?.unwrap_or_default();
        change(&mut record);
        self.put_user(user_id, &record).await?;
        Ok(record)
    }

    async fn put_user(&self, user_id: &UserId, record: &UserRecord) -> Result<(), AccountError> {
        Ok(self.store.put(USERS, user_id.localpart().as_bytes(), &json(record)?).await?)
    }

    fn new_device(
        &self,
        batch: Batch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
    ) -> Result<(Batch, Login), AccountError> {
        let device_id = device_id.unwrap_or_else(|| self.random_string(10).to_uppercase().into());
        // 32 random characters from 62: about 190 bits.
        let access_token = format!("glia_{}", self.random_string(32));
        let hash = token_hash(&access_token);
        let session = Session { user_id: user_id.to_owned(), device_id: device_id.clone() };
        let device = DeviceRecord { display_name, token: hex(&hash), last_seen_ts: Some(self.clock.now_millis()) };
        let batch =
            batch.put(TOKENS, hash, json(&session)?).put(DEVICES, device_key(user_id, &device_id), json(&device)?);
        Ok((batch, Login { session, access_token }))
    }

    fn forget_sessions(&self, matches: impl Fn(&Session) -> bool) {
        lock(&self.sessions).retain(|_, session| !matches(session));
    }

    fn hash(&self, password: &str) -> Result<String, AccountError> {
        let mut salt = [0u8; 16];
        self.random.fill(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(AccountError::corrupt)?;
        Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(AccountError::corrupt)?.to_string())
    }

    /// `len` random characters from `[A-Za-z0-9]`.
    pub fn random_string(&self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = vec![0u8; len];
        self.random.fill(&mut bytes);
        // 256 % 62 skews the first 8 characters by under 1%: fine for identifiers.
        bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, AccountError> {
    serde_json::to_vec(value).map_err(AccountError::corrupt)
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    [user_id.as_bytes(), b"\0", device_id.as_bytes()].concat()
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}
