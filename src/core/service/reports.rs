//! Reports of events, rooms and users that users found inappropriate, kept
//! for the node's owner to read.
//!
//! Key encodings:
//! - `reports`: the time received (ms, u64 BE), a number counting the reports
//!   received in the same millisecond (u32 BE) → [`Report`] as JSON

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

use super::rooms::RoomError;
use crate::{
    core::Clock,
    store::{Direction, KeyRange, Store},
};

pub(crate) const REPORTS: &str = "reports";

/// What a report is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reported {
    Event { room_id: OwnedRoomId, event_id: OwnedEventId },
    Room { room_id: OwnedRoomId },
    User { user_id: OwnedUserId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub reporter: OwnedUserId,
    #[serde(flatten)]
    pub reported: Reported,
    /// As the reporter gave it; may be empty or missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub received_ts: u64,
}

pub struct Reports {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Held while a report takes the next key, so two in one millisecond
    /// do not take the same.
    write: async_lock::Mutex<()>,
}

impl Reports {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, write: async_lock::Mutex::new(()) }
    }

    pub async fn add(
        &self,
        reporter: OwnedUserId,
        reported: Reported,
        reason: Option<String>,
    ) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        let received_ts = self.clock.now_millis();
        let now = received_ts.to_be_bytes();
        let last = self.store.scan(REPORTS, KeyRange::prefix(&now), Direction::Backward, 1).await?;
        let count = match last.first() {
            Some((key, _)) => {
                let count: [u8; 4] = key[now.len()..].try_into().map_err(|_| RoomError::corrupt("bad report key"))?;
                u32::from_be_bytes(count) + 1
            }
            None => 0,
        };
        let report = Report { reporter, reported, reason, received_ts };
        let value = serde_json::to_vec(&report).map_err(RoomError::corrupt)?;
        Ok(self.store.put(REPORTS, &[&now[..], &count.to_be_bytes()].concat(), &value).await?)
    }

    /// Every report, oldest first.
    pub async fn reports(&self) -> Result<Vec<Report>, RoomError> {
        let entries = self.store.scan(REPORTS, KeyRange::all(), Direction::Forward, usize::MAX).await?;
        entries.iter().map(|(_, value)| serde_json::from_slice(value).map_err(RoomError::corrupt)).collect()
    }
}
