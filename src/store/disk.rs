//! The native on-disk [`Store`]: one `redb` file, one redb table per store table.
//!
//! redb commits with fsync, so a write that returned `Ok` survives the process
//! being killed. Its calls block, so they run on tokio's blocking pool.

use std::{fmt::Display, path::Path, sync::Arc};

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Batch, Direction, KeyRange, Result, Schema, Store, StoreError, SyncTxn};

#[derive(Clone)]
pub struct DiskStore {
    schema: Schema,
    db: Arc<redb::Database>,
}

fn backend(err: impl Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn definition(table: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(table)
}

impl DiskStore {
    /// Opens (or creates) the store file at `path` and makes sure every table in
    /// `schema` exists.
    pub async fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Self> {
        let path = path.as_ref().to_owned();
        blocking(move || {
            let db = redb::Database::create(&path).map_err(|e| backend(format_args!("{}: {e}", path.display())))?;
            let txn = db.begin_write().map_err(backend)?;
            for table in schema.tables {
                txn.open_table(definition(table)).map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(Self { schema, db: Arc::new(db) })
        })
        .await
    }
}

/// Writes go to a blocking thread: a commit waits for the disk (fsync).
/// Reads run in place: redb answers them from its page cache in microseconds,
/// less than a hop to the blocking pool costs, and `/sync` makes hundreds.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(backend)?
}

impl SyncTxn for WriteTransaction {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let table = self.open_table(definition(table)).map_err(backend)?;
        let value = table.get(key).map_err(backend)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn put(&mut self, table: &str, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut table = self.open_table(definition(table)).map_err(backend)?;
        table.insert(key.as_slice(), value.as_slice()).map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<()> {
        let mut table = self.open_table(definition(table)).map_err(backend)?;
        table.remove(key).map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl Store for DiskStore {
    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(table, &[key]).await?.pop().flatten())
    }

    async fn get_many(&self, table: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.schema.check_table(table)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(definition(table)).map_err(backend)?;
        keys.iter().map(|key| Ok(table.get(*key).map_err(backend)?.map(|v| v.value().to_vec()))).collect()
    }

    async fn scan_nonempty(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.schema.check_table(table)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(definition(table)).map_err(backend)?;
        let entries = table.range::<&[u8]>(range.bounds()).map_err(backend)?;
        type Entry<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);
        let owned = |entry: Result<Entry, redb::StorageError>| {
            let (k, v) = entry.map_err(backend)?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        };
        match direction {
            Direction::Forward => entries.take(limit).map(owned).collect(),
            Direction::Backward => entries.rev().take(limit).map(owned).collect(),
        }
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        batch.check_tables(&self.schema)?;
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().map_err(backend)?;
            // On error `txn` drops uncommitted, which aborts it.
            batch.apply_to(&mut txn)?;
            txn.commit().map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::store::conformance::SCHEMA;

    async fn open(name: &str) -> DiskStore {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        DiskStore::open(dir.path().join(format!("{name}.redb")), SCHEMA).await.unwrap()
    }

    store_conformance!(persistent: open);

    #[tokio::test]
    async fn unopenable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DiskStore::open(dir.path().join("missing/sub/dir.redb"), SCHEMA).await.err().unwrap();
        assert!(err.to_string().contains("missing/sub/dir.redb"), "{err}");
    }
}
