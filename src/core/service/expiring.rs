//! Keys a table keeps for a while: the IDs of what other servers sent, to
//! drop what they send again while unsure it arrived. Beside them, in the
//! same table, a time index: 0, when the key was stored (ms, u64 BE), the
//! key → empty, so the oldest are found first and forgotten a few at a time
//! as new ones come. The table's own keys must not start with a 0 byte.

use std::ops::Bound;

use crate::store::{Batch, Direction, KeyRange, Store, StoreError};

/// How long the tables keep such keys: a server sends something again only
/// until it knows it arrived, which takes minutes unless this node is offline.
pub(crate) const A_WEEK_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Expired keys forgotten with each key stored.
const FORGOTTEN_AT_ONCE: usize = 16;

pub(crate) struct Expiring {
    pub table: &'static str,
    pub keep_for_ms: u64,
}

impl Expiring {
    /// Where the time index puts the keys stored at `millis`.
    fn at(millis: u64) -> Vec<u8> {
        [&[0][..], &millis.to_be_bytes()].concat()
    }

    /// The index entries of a few keys kept longer than `keep_for_ms` at `now`.
    pub async fn expired(&self, store: &dyn Store, now: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let before = Self::at(now.saturating_sub(self.keep_for_ms));
        let range = KeyRange::new(Bound::Included(vec![0]), Bound::Excluded(before));
        let entries = store.scan(self.table, range, Direction::Forward, FORGOTTEN_AT_ONCE).await?;
        Ok(entries.into_iter().map(|(index, _)| index).collect())
    }

    /// `batch`, with `key` → `value` stored at `now`, and the keys of the
    /// `expired` index entries forgotten.
    pub fn keep(&self, batch: Batch, key: Vec<u8>, value: Vec<u8>, now: u64, expired: Vec<Vec<u8>>) -> Batch {
        let by_time = [Self::at(now).as_slice(), &key].concat();
        let mut batch = batch.put(self.table, key, value).put(self.table, by_time, Vec::new());
        for index in expired {
            if let Some(key) = index.get(Self::at(0).len()..) {
                batch = batch.delete(self.table, key.to_vec());
            }
            batch = batch.delete(self.table, index);
        }
        batch
    }
}
