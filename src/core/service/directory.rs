//! The room directory: which rooms this node publishes, as their members set
//! it. What a published room shows (its name, topic, members...) is read from
//! its current state when the directory is listed, never copied here.
//!
//! Key encoding: `directory`: room ID → empty. A room is published while its
//! key exists, and private (the spec's default) otherwise.

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId};

use super::rooms::RoomError;
use crate::store::{Direction, KeyRange, Store};

pub(crate) const DIRECTORY: &str = "directory";

pub struct Directory {
    store: Arc<dyn Store>,
}

impl Directory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn is_published(&self, room_id: &RoomId) -> Result<bool, RoomError> {
        Ok(self.store.get(DIRECTORY, room_id.as_bytes()).await?.is_some())
    }

    pub async fn set_published(&self, room_id: &RoomId, published: bool) -> Result<(), RoomError> {
        match published {
            true => self.store.put(DIRECTORY, room_id.as_bytes(), &[]).await?,
            false => self.store.delete(DIRECTORY, room_id.as_bytes()).await?,
        }
        Ok(())
    }

    /// Every published room, by room ID.
    pub async fn published(&self) -> Result<Vec<OwnedRoomId>, RoomError> {
        let entries = self.store.scan(DIRECTORY, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        entries
            .into_iter()
            .map(|(key, _)| {
                let room_id = std::str::from_utf8(&key).map_err(RoomError::corrupt)?;
                RoomId::parse(room_id).map_err(RoomError::corrupt)
            })
            .collect()
    }
}
