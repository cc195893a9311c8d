//! The storage contract: an async key-value store with named tables, ordered byte
//! keys, range scans in both directions and atomic batch writes.
//!
//! Every backend (memory, IndexedDB, on-disk) runs the same conformance suite, so the
//! core can be tested natively against [`MemoryStore`] and trusted in the browser.

use std::ops::Bound;

use async_trait::async_trait;

#[cfg(test)]
#[macro_use]
pub(crate) mod conformance;
#[cfg(not(target_arch = "wasm32"))]
mod disk;
#[cfg(target_arch = "wasm32")]
mod indexeddb;
mod memory;
#[cfg(any(target_arch = "wasm32", test))]
mod overlay;

#[cfg(not(target_arch = "wasm32"))]
pub use disk::DiskStore;
#[cfg(target_arch = "wasm32")]
pub use indexeddb::IndexedDbStore;
pub use memory::MemoryStore;

/// `Send + Sync` natively, nothing on wasm32, where futures and JS handles are `!Send`.
#[cfg(not(target_arch = "wasm32"))]
pub trait SendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> SendSync for T {}
#[cfg(target_arch = "wasm32")]
pub trait SendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> SendSync for T {}

/// The tables a store holds, fixed when it is opened.
///
/// Backends with explicit schemas (IndexedDB) upgrade when `version` grows: tables
/// that are new get created and tables no longer listed are dropped.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    pub version: u32,
    pub tables: &'static [&'static str],
}

impl Schema {
    pub(crate) fn check_table(&self, table: &str) -> Result<(), StoreError> {
        if self.tables.contains(&table) {
            Ok(())
        } else {
            Err(StoreError::UnknownTable(table.to_owned()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no table named {0:?} in this store's schema")]
    UnknownTable(String),
    /// An [`Batch::expect`] precondition did not hold; the batch wrote nothing.
    #[error("conflicting write to table {table:?}: key {key:02x?} changed")]
    Conflict { table: String, key: Vec<u8> },
    #[error("storage backend failed: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A range of keys, compared as unsigned bytes (lexicographically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    pub fn new(start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Self {
        Self { start, end }
    }

    pub fn all() -> Self {
        Self::new(Bound::Unbounded, Bound::Unbounded)
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let mut end = prefix.to_vec();
        // The first key after the prefix range: drop trailing 0xff bytes and
        // increment the last byte; a prefix of only 0xff bytes has no upper bound.
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let end = match end.last_mut() {
            Some(last) => {
                *last += 1;
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        Self::new(Bound::Included(prefix.to_vec()), end)
    }

    /// Whether no key can lie in the range. Backends reject such ranges in their own
    /// ways (a panic in `BTreeMap::range`, a `DataError` in IndexedDB), so
    /// [`Store::scan`] answers them before a backend sees them.
    pub fn is_empty(&self) -> bool {
        use Bound::*;
        match (&self.start, &self.end) {
            (Unbounded, _) | (_, Unbounded) => false,
            (Included(s), Included(e)) => s > e,
            (Included(s) | Excluded(s), Excluded(e)) | (Excluded(s), Included(e)) => s >= e,
        }
    }

    /// The bounds as borrowed slices, the form `BTreeMap::range` and redb take.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (self.start.as_ref().map(Vec::as_slice), self.end.as_ref().map(Vec::as_slice))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
    /// Precondition: the key holds `value` (`None`: is absent) when the batch applies.
    Expect {
        table: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

/// Writes applied all together or not at all.
///
/// All `expect` preconditions are checked against the state before the batch; if one
/// fails, the batch fails with [`StoreError::Conflict`] and nothing is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(mut self, table: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put { table, key: key.into(), value: value.into() });
        self
    }

    pub fn delete(mut self, table: &'static str, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Delete { table, key: key.into() });
        self
    }

    pub fn expect(mut self, table: &'static str, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        self.ops.push(Op::Expect { table, key: key.into(), value });
        self
    }

    pub(crate) fn tables(&self) -> Vec<&'static str> {
        let mut tables: Vec<_> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { table, .. } | Op::Delete { table, .. } | Op::Expect { table, .. } => *table,
            })
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    /// Checks every table the batch touches against `schema`, before anything is written.
    pub(crate) fn check_tables(&self, schema: &Schema) -> Result<()> {
        self.tables().into_iter().try_for_each(|table| schema.check_table(table))
    }

    /// Applies the batch inside a synchronous backend's open transaction: every
    /// precondition first, then the writes in order. On `Err` the caller must drop
    /// the transaction rather than commit it.
    pub(crate) fn apply_to(self, txn: &mut impl SyncTxn) -> Result<()> {
        for op in &self.ops {
            if let Op::Expect { table, key, value } = op {
                if txn.get(table, key)? != *value {
                    return Err(StoreError::Conflict { table: table.to_string(), key: key.clone() });
                }
            }
        }
        for op in self.ops {
            match op {
                Op::Put { table, key, value } => txn.put(table, key, value)?,
                Op::Delete { table, key } => txn.delete(table, &key)?,
                Op::Expect { .. } => {}
            }
        }
        Ok(())
    }
}

/// A synchronous backend's write transaction, as [`Batch::apply_to`] drives it.
pub(crate) trait SyncTxn {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, table: &str, key: Vec<u8>, value: Vec<u8>) -> Result<()>;
    fn delete(&mut self, table: &str, key: &[u8]) -> Result<()>;
}

#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
pub trait Store: SendSync {
    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values of `keys`, in order. Backends where each read is a round trip
    /// (IndexedDB) read them all at once.
    async fn get_many(&self, table: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(table, key).await?);
        }
        Ok(values)
    }

    /// Up to `limit` entries in `range`, in key order or its reverse.
    async fn scan(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if range.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.scan_nonempty(table, range, direction, limit).await
    }

    /// [`Store::scan`] for backends: `range` is not empty and `limit` is at least 1.
    async fn scan_nonempty(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Applies the batch atomically; once this returns `Ok`, the writes are durable.
    async fn write(&self, batch: Batch) -> Result<()>;

    async fn put(&self, table: &'static str, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(Batch::new().put(table, key, value)).await
    }

    async fn delete(&self, table: &'static str, key: &[u8]) -> Result<()> {
        self.write(Batch::new().delete(table, key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(KeyRange::prefix(b"ab").end, Bound::Excluded(b"ac".to_vec()));
        assert_eq!(KeyRange::prefix(&[1, 0xff, 0xff]).end, Bound::Excluded(vec![2]));
        assert_eq!(KeyRange::prefix(&[0xff]).end, Bound::Unbounded);
        assert_eq!(KeyRange::prefix(b"").end, Bound::Unbounded);
        let r = KeyRange::prefix(&[1, 0xff]);
        assert!(r.contains(&[1, 0xff, 0]) && !r.contains(&[2]) && !r.contains(&[1, 0xfe]));
    }

    #[test]
    fn empty_ranges() {
        let r = |s, e| KeyRange::new(s, e);
        use Bound::*;
        assert!(r(Included(vec![2]), Included(vec![1])).is_empty());
        assert!(r(Excluded(vec![1]), Excluded(vec![1])).is_empty());
        assert!(r(Included(vec![1]), Excluded(vec![1])).is_empty());
        assert!(!r(Included(vec![1]), Included(vec![1])).is_empty());
        assert!(!r(Excluded(vec![1]), Unbounded).is_empty());
    }
}
