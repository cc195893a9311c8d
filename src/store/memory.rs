//! An in-memory [`Store`], for tests and for nodes that need no persistence.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;

use super::{Batch, Direction, KeyRange, Result, Schema, Store, SyncTxn};

type Tables = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug)]
pub struct MemoryStore {
    schema: Schema,
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new(schema: Schema) -> Self {
        let tables = schema.tables.iter().map(|&t| (t, BTreeMap::new())).collect();
        Self { schema, tables: Mutex::new(tables) }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Writes validate before they mutate, so a panic elsewhere cannot leave a
        // half-applied batch behind the poison flag.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn table<'t>(&self, tables: &'t Tables, table: &str) -> Result<&'t BTreeMap<Vec<u8>, Vec<u8>>> {
        self.schema.check_table(table)?;
        Ok(&tables[table])
    }
}

struct Txn<'a>(&'a mut Tables);

impl SyncTxn for Txn<'_> {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0[table].get(key).cloned())
    }

    fn put(&mut self, table: &str, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.0.get_mut(table).map(|t| t.insert(key, value));
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<()> {
        self.0.get_mut(table).map(|t| t.remove(key));
        Ok(())
    }
}

#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
impl Store for MemoryStore {
    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tables = self.lock();
        Ok(self.table(&tables, table)?.get(key).cloned())
    }

    async fn scan_nonempty(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tables = self.lock();
        let entries = self.table(&tables, table)?.range::<[u8], _>(range.bounds());
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(match direction {
            Direction::Forward => entries.take(limit).map(clone).collect(),
            Direction::Backward => entries.rev().take(limit).map(clone).collect(),
        })
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        batch.check_tables(&self.schema)?;
        batch.apply_to(&mut Txn(&mut self.lock()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(_name: &str) -> MemoryStore {
        MemoryStore::new(crate::store::conformance::SCHEMA)
    }

    store_conformance!(open);
}
