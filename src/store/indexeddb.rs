//! The browser [`Store`]: one IndexedDB database, one object store per table,
//! binary keys (IndexedDB orders `ArrayBuffer` keys bytewise, as the contract asks).
//!
//! A batch is one `readwrite` transaction over every table it touches; a
//! precondition that fails aborts it, so nothing of the batch lands. Built on the
//! `idb` crate (what `rexie` wraps), because writes need a transaction option
//! rexie does not expose: see [`IndexedDbStore::transaction`].

use async_trait::async_trait;
use idb::{
    builder::{DatabaseBuilder, ObjectStoreBuilder},
    request::GetAllStoreRequest,
    CursorDirection, ObjectStore, Query, Transaction, TransactionMode,
};
use js_sys::{Array, Uint8Array};
use wasm_bindgen::{
    prelude::{wasm_bindgen, Closure},
    JsCast, JsValue,
};
use web_sys::{IdbDatabase, IdbObjectStore, IdbRequest, IdbTransaction};

use super::{Batch, Direction, KeyRange, Op, Result, Schema, Store, StoreError};

#[wasm_bindgen]
extern "C" {
    /// `IDBDatabase`, for its `transaction(names, mode, options)`, which web-sys
    /// has only behind its unstable-API flag.
    #[wasm_bindgen(js_name = IDBDatabase)]
    type DatabaseWithOptions;

    #[wasm_bindgen(catch, method, js_name = transaction)]
    fn transaction(
        this: &DatabaseWithOptions,
        names: &Array,
        mode: &str,
        options: &JsValue,
    ) -> std::result::Result<IdbTransaction, JsValue>;

    /// `IDBObjectStore`, for `getAllRecords` (Chromium 141 and later), which
    /// web-sys lacks: a range's keys and values, in either direction, in one
    /// request.
    #[wasm_bindgen(js_name = IDBObjectStore)]
    type ObjectStoreWithRecords;

    #[wasm_bindgen(catch, method, js_name = getAllRecords)]
    fn get_all_records(this: &ObjectStoreWithRecords, options: &JsValue) -> std::result::Result<IdbRequest, JsValue>;
}

/// Whether this browser's IndexedDB has `getAllRecords`.
fn has_get_all_records() -> bool {
    let prototype = js_sys::Reflect::get(&js_sys::global(), &"IDBObjectStore".into())
        .and_then(|class| js_sys::Reflect::get(&class, &"prototype".into()));
    prototype.is_ok_and(|prototype| js_sys::Reflect::has(&prototype, &"getAllRecords".into()).unwrap_or(false))
}

pub struct IndexedDbStore {
    schema: Schema,
    db: IdbDatabase,
    /// Whether scans can read with `getAllRecords`.
    records: bool,
    /// Closes this connection when another asks to upgrade the database (a new
    /// Service Worker with a newer schema), which would otherwise wait on it
    /// forever; this store's later calls then fail with a clear error.
    _on_version_change: Closure<dyn FnMut()>,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// A JavaScript exception, which has no `Display`, as a backend error.
fn thrown(err: JsValue) -> StoreError {
    backend(format!("{err:?}"))
}

fn bytes(value: &JsValue) -> Vec<u8> {
    Uint8Array::new(value).to_vec()
}

fn js(bytes: &[u8]) -> JsValue {
    Uint8Array::from(bytes).into()
}

fn key_query(range: &KeyRange) -> Result<Option<Query>> {
    use std::ops::Bound::*;
    let open = |bound: &std::ops::Bound<Vec<u8>>| Some(matches!(bound, Excluded(_)));
    let range = match (&range.start, &range.end) {
        (Unbounded, Unbounded) => return Ok(None),
        (Included(s) | Excluded(s), Unbounded) => idb::KeyRange::lower_bound(&js(s), open(&range.start)),
        (Unbounded, Included(e) | Excluded(e)) => idb::KeyRange::upper_bound(&js(e), open(&range.end)),
        (Included(s) | Excluded(s), Included(e) | Excluded(e)) => {
            idb::KeyRange::bound(&js(s), &js(e), open(&range.start), open(&range.end))
        }
    };
    range.map(|r| Some(Query::KeyRange(r))).map_err(backend)
}

impl IndexedDbStore {
    /// Opens (or creates, or upgrades to `schema.version`) the database `name`:
    /// an upgrade creates the tables that are new and drops those no longer listed.
    pub async fn open(name: &str, schema: Schema) -> Result<Self> {
        let builder = schema.tables.iter().fold(DatabaseBuilder::new(name).version(schema.version), |b, table| {
            b.add_object_store(ObjectStoreBuilder::new(table))
        });
        let db = builder.build().await.map_err(backend)?;
        let db: IdbDatabase = db.into();
        let closing = db.clone();
        let on_version_change = Closure::<dyn FnMut()>::new(move || closing.close());
        db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        Ok(Self { schema, db, records: has_get_all_records(), _on_version_change: on_version_change })
    }

    /// A transaction over `tables`. Writes use `relaxed` durability: the commit
    /// completes once the browser has handed the data to the OS, which survives
    /// the worker or the browser being killed (the store's contract); `strict`
    /// would also wait for the disk, guarding only against an OS crash, at about
    /// twice the cost per commit in Chromium.
    fn transaction(&self, tables: &[&str], mode: TransactionMode) -> Result<Transaction> {
        tables.iter().try_for_each(|table| self.schema.check_table(table))?;
        let names: Array = tables.iter().map(|t| JsValue::from_str(t)).collect();
        let options = js_sys::Object::new();
        js_sys::Reflect::set(&options, &"durability".into(), &"relaxed".into()).map_err(thrown)?;
        let mode = match mode {
            TransactionMode::ReadWrite => "readwrite",
            _ => "readonly",
        };
        let db: &DatabaseWithOptions = self.db.unchecked_ref();
        let txn = db.transaction(&names, mode, &options).map_err(thrown)?;
        Ok(Transaction::from(txn))
    }

    #[cfg(test)]
    fn table_names(&self) -> Vec<String> {
        let names = self.db.object_store_names();
        (0..names.length()).filter_map(|i| names.item(i)).collect()
    }
}

impl Drop for IndexedDbStore {
    fn drop(&mut self) {
        // A later schema upgrade of the same database waits for every connection
        // to close.
        self.db.set_onversionchange(None);
        self.db.close();
    }
}

#[async_trait(?Send)]
impl Store for IndexedDbStore {
    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.transaction(&[table], TransactionMode::ReadOnly)?;
        let store = txn.object_store(table).map_err(backend)?;
        let value = store.get(Query::Key(js(key))).map_err(backend)?.await.map_err(backend)?;
        Ok(value.as_ref().map(bytes))
    }

    async fn get_many(&self, table: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let txn = self.transaction(&[table], TransactionMode::ReadOnly)?;
        let store = txn.object_store(table).map_err(backend)?;
        let requests =
            keys.iter().map(|key| store.get(Query::Key(js(key))).map_err(backend)).collect::<Result<Vec<_>>>()?;
        let mut values = Vec::with_capacity(requests.len());
        for request in requests {
            values.push(request.await.map_err(backend)?.as_ref().map(bytes));
        }
        Ok(values)
    }

    async fn scan_nonempty(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.transaction(&[table], TransactionMode::ReadOnly)?;
        let store = txn.object_store(table).map_err(backend)?;
        let query = key_query(&range)?;
        if self.records {
            return scan_records(store, query, direction, limit).await;
        }
        if direction == Direction::Forward {
            // Two bulk requests over one transaction's snapshot, instead of a cursor
            // round trip per entry (about three times the scans per second).
            let limit = Some(u32::try_from(limit).unwrap_or(u32::MAX));
            let keys = store.get_all_keys(query.clone(), limit).map_err(backend)?;
            let values = store.get_all(query, limit).map_err(backend)?;
            let (keys, values) = (keys.await.map_err(backend)?, values.await.map_err(backend)?);
            return Ok(keys.iter().map(bytes).zip(values.iter().map(bytes)).collect());
        }
        let cursor = store.open_cursor(query, Some(CursorDirection::Prev)).map_err(backend)?;
        let Some(cursor) = cursor.await.map_err(backend)? else { return Ok(Vec::new()) };
        let mut cursor = cursor.into_managed();
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (cursor.key().map_err(backend)?, cursor.value().map_err(backend)?) {
            entries.push((bytes(&key), bytes(&value)));
            if entries.len() == limit {
                break;
            }
            cursor.next(None).await.map_err(backend)?;
        }
        Ok(entries)
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        let tables = batch.tables();
        // IndexedDB refuses a transaction over no object stores.
        if tables.is_empty() {
            return Ok(());
        }
        let txn = self.transaction(&tables, TransactionMode::ReadWrite)?;
        if let Err(err) = apply(&txn, &batch).await {
            // A failed request has usually aborted the transaction already.
            let _ = txn.abort();
            return Err(err);
        }
        let result = txn.commit().map_err(backend)?.await.map_err(backend)?;
        if result.is_committed() {
            Ok(())
        } else {
            Err(StoreError::Backend("IndexedDB aborted the transaction".into()))
        }
    }
}

/// A scan in one request, where a cursor would make a round trip to the
/// browser's storage process per few entries: on a cold start, with many
/// requests queued there, reading a room's last ten events backwards took
/// 50 ms that way.
async fn scan_records(
    store: ObjectStore,
    query: Option<Query>,
    direction: Direction,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let options = js_sys::Object::new();
    let set =
        |name: &str, value: JsValue| js_sys::Reflect::set(&options, &name.into(), &value).map(drop).map_err(thrown);
    if let Some(query) = query {
        set("query", query.into())?;
    }
    set("count", u32::try_from(limit).unwrap_or(u32::MAX).into())?;
    set("direction", if direction == Direction::Forward { "next" } else { "prev" }.into())?;
    let store: IdbObjectStore = store.into();
    let store: &ObjectStoreWithRecords = store.unchecked_ref();
    let request = store.get_all_records(&options).map_err(thrown)?;
    let records = GetAllStoreRequest::from(request).await.map_err(backend)?;
    records
        .iter()
        .map(|record| {
            let field = |name: &str| js_sys::Reflect::get(record, &name.into()).map_err(thrown);
            Ok((bytes(&field("key")?), bytes(&field("value")?)))
        })
        .collect()
}

/// Queues a read for every precondition and then the writes, in one go, and
/// only then waits for the reads: IndexedDB runs a transaction's requests in
/// order, so the reads see the state before the batch, and a failed precondition
/// aborts the transaction with the writes. Waiting for the reads before queuing
/// the writes would cost a round trip to the browser's storage process, about
/// half of an event's write time in Chromium.
async fn apply(txn: &Transaction, batch: &Batch) -> Result<()> {
    let mut checks = Vec::new();
    for op in &batch.ops {
        if let Op::Expect { table, key, value } = op {
            let request = txn.object_store(table).map_err(backend)?.get(Query::Key(js(key))).map_err(backend)?;
            checks.push((table, key, value, request));
        }
    }
    // A failing write aborts the transaction, which the commit then reports.
    for op in &batch.ops {
        match op {
            Op::Put { table, key, value } => {
                txn.object_store(table).map_err(backend)?.put(&js(value), Some(&js(key))).map_err(backend)?;
            }
            Op::Delete { table, key } => {
                txn.object_store(table).map_err(backend)?.delete(Query::Key(js(key))).map_err(backend)?;
            }
            Op::Expect { .. } => {}
        }
    }
    for (table, key, expected, request) in checks {
        let current = request.await.map_err(backend)?;
        if current.as_ref().map(bytes) != *expected {
            return Err(StoreError::Conflict { table: table.to_string(), key: key.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;
    use crate::store::conformance::SCHEMA;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

    /// Each test run gets databases of its own, so a rerun in the same profile
    /// starts empty.
    fn run_id() -> &'static str {
        thread_local!(static ID: &'static str = format!("{}", js_sys::Date::now()).leak());
        ID.with(|id| *id)
    }

    async fn open(name: &str) -> IndexedDbStore {
        IndexedDbStore::open(&format!("{}-{name}", run_id()), SCHEMA).await.unwrap()
    }

    store_conformance!(persistent: open);

    #[wasm_bindgen_test]
    async fn scans_read_records_in_one_request_here() {
        // So the suite above runs the fast path; the one below, the fallback.
        assert!(open("records").await.records);
    }

    /// A browser without `getAllRecords` scans with `getAll` and cursors.
    mod without_get_all_records {
        use super::*;

        async fn open(name: &str) -> IndexedDbStore {
            let mut store = super::open(&format!("cursors-{name}")).await;
            store.records = false;
            store
        }

        store_conformance!(persistent: open);
    }

    #[wasm_bindgen_test]
    async fn upgrades_keep_data_and_drop_removed_tables() {
        let name = format!("{}-upgrade", run_id());
        let v1 = IndexedDbStore::open(&name, Schema { version: 1, tables: &["one"] }).await.unwrap();
        v1.put("one", b"k", b"v").await.unwrap();
        drop(v1);

        let v2 = IndexedDbStore::open(&name, Schema { version: 2, tables: &["one", "two"] }).await.unwrap();
        assert_eq!(v2.get("one", b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        v2.put("two", b"k", b"w").await.unwrap();
        drop(v2);

        let v3 = IndexedDbStore::open(&name, Schema { version: 3, tables: &["two"] }).await.unwrap();
        assert_eq!(v3.table_names(), vec!["two".to_owned()]);
        assert!(matches!(v3.get("one", b"k").await, Err(StoreError::UnknownTable(_))));
        assert_eq!(v3.get("two", b"k").await.unwrap().as_deref(), Some(&b"w"[..]));
        drop(v3);

        // A connection still open does not hold up an upgrade: it closes itself.
        let old = IndexedDbStore::open(&name, Schema { version: 3, tables: &["two"] }).await.unwrap();
        let new = IndexedDbStore::open(&name, Schema { version: 4, tables: &["two"] }).await.unwrap();
        assert_eq!(new.get("two", b"k").await.unwrap().as_deref(), Some(&b"w"[..]));
        assert!(matches!(old.get("two", b"k").await, Err(StoreError::Backend(_))));
        drop((old, new));

        let downgrade = IndexedDbStore::open(&name, Schema { version: 1, tables: &["one"] }).await;
        assert!(matches!(downgrade, Err(StoreError::Backend(_))));
    }
}
