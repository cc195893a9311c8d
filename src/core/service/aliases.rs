//! Local room aliases.
//!
//! Key encoding: `aliases`: the alias (`#name:server`) → [`Alias`] as JSON.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId};
use serde::{Deserialize, Serialize};

use super::rooms::RoomError;
use crate::store::{Batch, Direction, KeyRange, Store, StoreError};

pub(crate) const ALIASES: &str = "aliases";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alias {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

pub struct Aliases {
    store: Arc<dyn Store>,
}

impl Aliases {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn get(&self, alias: &RoomAliasId) -> Result<Option<Alias>, RoomError> {
        let bytes = self.store.get(ALIASES, alias.as_bytes()).await?;
        bytes.map(|b| serde_json::from_slice(&b)).transpose().map_err(RoomError::corrupt)
    }

    /// Adds the alias; `false` if it is taken.
    pub async fn create(&self, alias: &RoomAliasId, entry: &Alias) -> Result<bool, RoomError> {
        let value = serde_json::to_vec(entry).map_err(RoomError::corrupt)?;
        let batch = Batch::new().expect(ALIASES, alias.as_bytes(), None).put(ALIASES, alias.as_bytes(), value);
        match self.store.write(batch).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn delete(&self, alias: &RoomAliasId) -> Result<(), RoomError> {
        Ok(self.store.delete(ALIASES, alias.as_bytes()).await?)
    }

    /// The local aliases of a room. Aliases are few: one scan of them all.
    pub async fn of_room(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>, RoomError> {
        let entries = self.store.scan(ALIASES, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        let mut aliases = Vec::new();
        for (key, value) in entries {
            let alias: Alias = serde_json::from_slice(&value).map_err(RoomError::corrupt)?;
            if alias.room_id == room_id {
                let name = std::str::from_utf8(&key).map_err(RoomError::corrupt)?;
                aliases.push(RoomAliasId::parse(name).map_err(RoomError::corrupt)?);
            }
        }
        Ok(aliases)
    }
}
