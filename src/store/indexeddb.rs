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

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
};

use crate::core::{Clock, SystemClock};

use super::{
    overlay::{self, Overlay},
    Batch, Direction, KeyRange, Op, Result, Schema, Store, StoreError,
};

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
    inner: Rc<Inner>,
    /// Whether scans can read with `getAllRecords`.
    records: bool,
}

struct Inner {
    schema: Schema,
    db: IdbDatabase,
    /// Writes logged but not yet in their tables: see [`overlay`](super::overlay).
    overlay: RefCell<Overlay>,
    /// One write at a time: each checks its preconditions against the overlay,
    /// which must not change under it until its record lands.
    writing: async_lock::Mutex<()>,
    applying: Cell<bool>,
    /// Records logged so far, and whether a wait for them to pause is on.
    logged: Cell<u64>,
    /// [`PAUSE_MS`], longer in tests that look at the overlay.
    pause_ms: Cell<u64>,
    /// Told of every catch-up, for tests to wait on.
    #[cfg(test)]
    caught_up: event_listener::Event,
    waiting: Cell<bool>,
    /// Set once the connection closed for an upgrade: the overlay is then
    /// no longer the database's, so reads of it fail too.
    closed: Rc<Cell<bool>>,
    /// Closes this connection when another asks to upgrade the database (a new
    /// Service Worker with a newer schema), which would otherwise wait on it
    /// forever; this store's later calls then fail with a clear error.
    _on_version_change: Closure<dyn FnMut()>,
}

/// The object store of the write log, beside the schema's tables. Its keys:
/// [`APPLIED`] → the log position the tables hold every write up to (u64 BE);
/// `1`, position (u64 BE) → a record of one batch's writes, not yet applied.
const LOG: &str = "_log";
const APPLIED: [u8; 1] = [0];

/// How long writes must pause before the tables catch up with the log.
const PAUSE_MS: u64 = 100;

fn log_key(position: u64) -> Vec<u8> {
    [&[1][..], &position.to_be_bytes()].concat()
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
    /// an upgrade creates the tables that are new and drops those no longer
    /// listed. Writes logged but not yet applied to their tables are read back.
    pub async fn open(name: &str, schema: Schema) -> Result<Self> {
        let builder =
            schema.tables.iter().chain([&LOG]).fold(DatabaseBuilder::new(name).version(schema.version), |b, table| {
                b.add_object_store(ObjectStoreBuilder::new(table))
            });
        let db = builder.build().await.map_err(backend)?;
        let db: IdbDatabase = db.into();
        let (closing, closed) = (db.clone(), Rc::new(Cell::new(false)));
        let on_version_change = Closure::<dyn FnMut()>::new({
            let closed = closed.clone();
            move || {
                closed.set(true);
                closing.close();
            }
        });
        db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        let inner = Inner {
            schema,
            db,
            overlay: RefCell::new(Overlay::new(schema, 0)),
            writing: async_lock::Mutex::new(()),
            applying: Cell::new(false),
            logged: Cell::new(0),
            pause_ms: Cell::new(PAUSE_MS),
            #[cfg(test)]
            caught_up: event_listener::Event::new(),
            waiting: Cell::new(false),
            closed,
            _on_version_change: on_version_change,
        };
        inner.reload().await?;
        Ok(Self { inner: Rc::new(inner), records: has_get_all_records() })
    }

    /// A read-only transaction over `table`.
    fn reading(&self, table: &str) -> Result<(Transaction, ObjectStore)> {
        let txn = Transaction::from(self.inner.transaction(&[table], TransactionMode::ReadOnly)?);
        let store = txn.object_store(table).map_err(backend)?;
        Ok((txn, store))
    }

    /// Up to `limit` entries of the table itself, without the overlay.
    async fn scan_table(
        &self,
        table: &str,
        range: KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (_txn, store) = self.reading(table)?;
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

    #[cfg(test)]
    fn table_names(&self) -> Vec<String> {
        let names = self.inner.db.object_store_names();
        (0..names.length()).filter_map(|i| names.item(i)).collect()
    }
}

impl Inner {
    fn overlay(&self) -> Result<std::cell::Ref<'_, Overlay>> {
        match self.closed.get() {
            true => Err(StoreError::Backend("the database closed for an upgrade by a newer glia".into())),
            false => Ok(self.overlay.borrow()),
        }
    }

    /// A transaction over `tables`. Writes use `relaxed` durability: the commit
    /// completes once the browser has handed the data to the OS, which survives
    /// the worker or the browser being killed (the store's contract); `strict`
    /// would also wait for the disk, guarding only against an OS crash, at about
    /// twice the cost per commit in Chromium.
    fn transaction(&self, tables: &[&str], mode: TransactionMode) -> Result<IdbTransaction> {
        tables.iter().filter(|t| **t != LOG).try_for_each(|table| self.schema.check_table(table))?;
        let names: Array = tables.iter().map(|t| JsValue::from_str(t)).collect();
        let options = js_sys::Object::new();
        js_sys::Reflect::set(&options, &"durability".into(), &"relaxed".into()).map_err(thrown)?;
        let mode = match mode {
            TransactionMode::ReadWrite => "readwrite",
            _ => "readonly",
        };
        let db: &DatabaseWithOptions = self.db.unchecked_ref();
        db.transaction(&names, mode, &options).map_err(thrown)
    }

    /// Reads the log back into a fresh overlay: on opening, and when another
    /// connection to the database has written to it.
    async fn reload(&self) -> Result<()> {
        let txn = Transaction::from(self.transaction(&[LOG], TransactionMode::ReadOnly)?);
        let log = txn.object_store(LOG).map_err(backend)?;
        let records = Some(Query::KeyRange(idb::KeyRange::lower_bound(&js(&log_key(0)), None).map_err(backend)?));
        let applied = log.get(Query::Key(js(&APPLIED))).map_err(backend)?;
        let keys = log.get_all_keys(records.clone(), None).map_err(backend)?;
        let values = log.get_all(records, None).map_err(backend)?;
        let applied = position(applied.await.map_err(backend)?)?;
        let (keys, values) = (keys.await.map_err(backend)?, values.await.map_err(backend)?);
        let mut overlay = Overlay::new(self.schema, applied);
        for (key, record) in keys.iter().zip(values.iter()) {
            let at = position(Some(JsValue::from(Uint8Array::new(key).subarray(1, 9))))?;
            // Records at or below the applied position were logged by a
            // connection that had not seen the tables catch up past them:
            // they failed, and the next catch-up deletes them.
            if at > applied {
                overlay.replay(at, &bytes(record))?;
            }
        }
        *self.overlay.borrow_mut() = overlay;
        Ok(())
    }

    /// Logs the batch's writes as one record, once its preconditions hold:
    /// those on keys the overlay has are checked against it, the others with
    /// reads in the same transaction, before it commits.
    async fn write(self: &Rc<Self>, batch: Batch) -> Result<()> {
        let turn = self.writing.lock().await;
        let mut unresolved = Vec::new();
        for op in &batch.ops {
            let Op::Expect { table, key, value } = op else { continue };
            match self.overlay()?.get(table, key) {
                Some(current) if current != value.as_deref() => {
                    return Err(StoreError::Conflict { table: table.to_string(), key: key.clone() })
                }
                Some(_) => {}
                None => unresolved.push((*table, key, value)),
            }
        }
        let record = overlay::record(&batch.ops);
        if record.is_empty() && unresolved.is_empty() {
            return Ok(());
        }
        let at = self.overlay.borrow().next();
        let mut tables: Vec<&str> = unresolved.iter().map(|(table, ..)| *table).chain([LOG]).collect();
        tables.sort_unstable();
        tables.dedup();
        let raw = self.transaction(&tables, TransactionMode::ReadWrite)?;
        let txn = Transaction::from(raw.clone());
        let log = txn.object_store(LOG).map_err(backend)?;
        // Answered before the commit completes, so it costs no round trip.
        let applied = log.get(Query::Key(js(&APPLIED))).map_err(backend)?;
        let applied = std::future::IntoFuture::into_future(applied);
        let mut checks = Vec::new();
        for (table, key, _) in &unresolved {
            checks.push(txn.object_store(table).map_err(backend)?.get(Query::Key(js(key))).map_err(backend)?);
        }
        // `add` fails where another connection logged at this position first.
        let add = match record.is_empty() {
            true => None,
            false => Some(log.add(&js(&record), Some(&js(&log_key(at)))).map_err(backend)?),
        };
        for ((table, key, expected), check) in unresolved.iter().zip(checks) {
            let current = check.await.map_err(backend)?;
            if current.as_ref().map(bytes) != **expected {
                let _ = txn.abort();
                return Err(StoreError::Conflict { table: table.to_string(), key: key.to_vec() });
            }
        }
        let outcome = txn.commit().map_err(backend)?.await;
        if !matches!(outcome, Ok(result) if result.is_committed()) {
            let taken = add.and_then(|add| idb::Request::error(&add).ok().flatten());
            if taken.is_some_and(|err| err.name() == "ConstraintError") {
                self.reload().await?;
                return Err(StoreError::Conflict { table: LOG.into(), key: log_key(at) });
            }
            return Err(outcome.err().map_or_else(|| backend("IndexedDB aborted the transaction"), backend));
        }
        if add.is_none() {
            return Ok(());
        }
        // Another connection applied the log past this position before the
        // record landed: it landed where nobody reads.
        if position(applied.await.map_err(backend)?)? >= at {
            self.reload().await?;
            return Err(StoreError::Conflict { table: LOG.into(), key: log_key(at) });
        }
        self.overlay.borrow_mut().logged(at, record.len(), batch.ops);
        self.logged.set(self.logged.get() + 1);
        drop(turn);
        self.apply_later();
        Ok(())
    }

    /// Has the tables catch up with the log once writes pause for
    /// [`PAUSE_MS`], so that a burst of writes costs one put each, or at
    /// once when the overlay is full.
    fn apply_later(self: &Rc<Self>) {
        if self.overlay.borrow().is_full() {
            self.start_applying();
        }
        if self.waiting.replace(true) {
            return;
        }
        let inner = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let logged = inner.logged.get();
                SystemClock.sleep(inner.pause_ms.get()).await;
                if inner.logged.get() == logged {
                    break;
                }
            }
            inner.waiting.set(false);
            inner.start_applying();
        });
    }

    fn start_applying(self: &Rc<Self>) {
        if self.applying.get() || self.closed.get() || self.overlay.borrow().is_empty() {
            return;
        }
        self.applying.set(true);
        let inner = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            // What fails stays logged, for the next pause to apply.
            while !inner.closed.get() && matches!(inner.apply().await, Ok(true)) {}
            inner.applying.set(false);
        });
    }

    /// Copies the writes of the next few logged records (see
    /// [`overlay::APPLY_RECORDS`]) into their tables and deletes those records,
    /// in one transaction; `true` if more are left.
    async fn apply(&self) -> Result<bool> {
        let tables: Vec<&str> = self.schema.tables.iter().copied().chain([LOG]).collect();
        let txn = Transaction::from(self.transaction(&tables, TransactionMode::ReadWrite)?);
        let log = txn.object_store(LOG).map_err(backend)?;
        // Another connection may have applied some already.
        let applied = position(log.get(Query::Key(js(&APPLIED))).map_err(backend)?.await.map_err(backend)?)?;
        let Some(unapplied) = self.overlay.borrow().unapplied(applied, overlay::APPLY_RECORDS, overlay::APPLY_BYTES)
        else {
            return Ok(false);
        };
        for (table, key, write) in &unapplied.writes {
            let store = txn.object_store(table).map_err(backend)?;
            match write {
                Some(value) => store.put(&js(value), Some(&js(key))).map(drop),
                None => store.delete(Query::Key(js(key))).map(drop),
            }
            .map_err(backend)?;
        }
        let upto = unapplied.upto.max(applied);
        let records = idb::KeyRange::bound(&js(&log_key(0)), &js(&log_key(upto)), None, None).map_err(backend)?;
        log.delete(Query::KeyRange(records)).map_err(backend)?;
        log.put(&js(&upto.to_be_bytes()), Some(&js(&APPLIED))).map_err(backend)?;
        let result = txn.commit().map_err(backend)?.await.map_err(backend)?;
        if !result.is_committed() {
            return Err(StoreError::Backend("IndexedDB aborted the transaction".into()));
        }
        self.overlay.borrow_mut().applied(upto);
        let more = !self.overlay.borrow().is_empty();
        #[cfg(test)]
        if !more {
            self.caught_up.notify(usize::MAX);
        }
        Ok(more)
    }
}

/// A log position as stored (u64 BE), 0 where there is none.
fn position(value: Option<JsValue>) -> Result<u64> {
    let Some(value) = value else { return Ok(0) };
    let bytes: [u8; 8] =
        bytes(&value).try_into().map_err(|_| StoreError::Backend("a write log position is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Drop for Inner {
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
        if let Some(write) = self.inner.overlay()?.get(table, key) {
            return Ok(write.map(<[u8]>::to_vec));
        }
        let (_txn, store) = self.reading(table)?;
        let value = store.get(Query::Key(js(key))).map_err(backend)?.await.map_err(backend)?;
        Ok(value.as_ref().map(bytes))
    }

    async fn get_many(&self, table: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.schema.check_table(table)?;
        let logged: Vec<_> = {
            let overlay = self.inner.overlay()?;
            keys.iter().map(|key| overlay.get(table, key).map(|write| write.map(<[u8]>::to_vec))).collect()
        };
        if logged.iter().all(Option::is_some) {
            return Ok(logged.into_iter().flatten().collect());
        }
        let (_txn, store) = self.reading(table)?;
        let mut requests = Vec::with_capacity(keys.len());
        for (key, logged) in keys.iter().zip(logged) {
            requests.push(match logged {
                Some(write) => Err(write),
                None => Ok(store.get(Query::Key(js(key))).map_err(backend)?),
            });
        }
        let mut values = Vec::with_capacity(requests.len());
        for request in requests {
            values.push(match request {
                Ok(request) => request.await.map_err(backend)?.as_ref().map(bytes),
                Err(logged) => logged,
            });
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
        // Taken with the table's read below, before anything can apply it.
        let pending = self.inner.overlay()?.range(table, &range);
        // Each delete may hide one of the table's entries; writes only replace them.
        let hidden = pending.iter().filter(|(_, write)| write.is_none()).count();
        let stored = self.scan_table(table, range, direction, limit.saturating_add(hidden)).await?;
        if pending.is_empty() {
            return Ok(stored);
        }
        Ok(overlay::merge(stored, pending, direction, limit))
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        batch.check_tables(&self.inner.schema)?;
        self.inner.write(batch).await
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

    /// The same contract with every write applied to its tables at once, so
    /// reads come from the tables rather than the overlay.
    mod applied {
        use super::*;

        struct Applied(IndexedDbStore);

        #[async_trait(?Send)]
        impl Store for Applied {
            async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
                self.0.get(table, key).await
            }

            async fn scan_nonempty(
                &self,
                table: &str,
                range: KeyRange,
                direction: Direction,
                limit: usize,
            ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                self.0.scan_nonempty(table, range, direction, limit).await
            }

            async fn write(&self, batch: Batch) -> Result<()> {
                self.0.write(batch).await?;
                self.0.inner.apply().await?;
                assert!(self.0.inner.overlay.borrow().is_empty());
                Ok(())
            }
        }

        async fn open(name: &str) -> Applied {
            Applied(super::open(&format!("applied-{name}")).await)
        }

        store_conformance!(persistent: open);
    }

    /// A model of one table, for checking the store's answers against.
    type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

    async fn matches(store: &IndexedDbStore, model: &Model) {
        for limit in [1, 2, 3, 5, 8, 100] {
            let forward: Vec<_> = model.iter().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            let backward: Vec<_> = model.iter().rev().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(store.scan("one", KeyRange::all(), Direction::Forward, limit).await.unwrap(), forward);
            assert_eq!(store.scan("one", KeyRange::all(), Direction::Backward, limit).await.unwrap(), backward);
        }
        for key in 0..24u8 {
            assert_eq!(store.get("one", &[key]).await.unwrap().as_ref(), model.get(&vec![key]));
        }
    }

    #[wasm_bindgen_test]
    async fn reads_see_logged_writes_over_applied_ones() {
        let name = format!("{}-overlay", run_id());
        let store = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        // Applied only where this test says.
        store.inner.pause_ms.set(u64::from(u32::MAX));
        let mut model = Model::new();
        for key in 0..16u8 {
            store.put("one", &[key], &[0]).await.unwrap();
            model.insert(vec![key], vec![0]);
        }
        store.inner.apply().await.unwrap();
        // Logged only: deletes hiding applied entries, new keys between and
        // after them, and keys written twice.
        for key in (0..16u8).step_by(2) {
            store.delete("one", &[key]).await.unwrap();
            model.remove(&vec![key]);
        }
        for key in [3u8, 5, 17, 20, 3] {
            store.put("one", &[key], &[key]).await.unwrap();
            model.insert(vec![key], vec![key]);
        }
        assert!(!store.inner.overlay.borrow().is_empty());
        matches(&store, &model).await;
        let values = store.get_many("one", &[&[1], &[2], &[3], &[30]]).await.unwrap();
        assert_eq!(values, vec![Some(vec![0]), None, Some(vec![3]), None]);

        // Read back from the log by a new connection, then applied.
        drop(store);
        let store = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        matches(&store, &model).await;
        store.inner.apply().await.unwrap();
        assert!(store.inner.overlay.borrow().is_empty());
        matches(&store, &model).await;
        drop(store);
        let store = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        assert!(store.inner.overlay.borrow().is_empty());
        matches(&store, &model).await;
    }

    #[wasm_bindgen_test]
    async fn the_log_is_applied_a_few_records_at_a_time_and_a_restart_between_loses_nothing() {
        let name = format!("{}-chunks", run_id());
        let store = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        store.inner.pause_ms.set(u64::from(u32::MAX));
        let mut model = Model::new();
        // Each key written 13 times in a row, some across two chunks.
        for i in 0..300u16 {
            let key = [(i / 13) as u8];
            store.put("one", &key, &i.to_be_bytes()).await.unwrap();
            model.insert(key.to_vec(), i.to_be_bytes().to_vec());
        }
        assert!(store.inner.apply().await.unwrap(), "the whole log applied at once");
        matches(&store, &model).await;
        drop(store);

        let store = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        store.inner.pause_ms.set(u64::from(u32::MAX));
        matches(&store, &model).await;
        while store.inner.apply().await.unwrap() {
            matches(&store, &model).await;
        }
        assert!(store.inner.overlay.borrow().is_empty());
        matches(&store, &model).await;
    }

    #[wasm_bindgen_test]
    async fn the_log_is_applied_when_full_and_when_writes_pause() {
        let store = open("full").await;
        store.inner.pause_ms.set(u64::from(u32::MAX));
        let pending = |store: &IndexedDbStore| {
            store.inner.overlay.borrow().unapplied(0, usize::MAX, usize::MAX).map_or(0, |u| u.writes.len())
        };
        let mut written = 0u16;
        // The write that fills the overlay starts applying it; the overlay
        // only shrinks once that lands.
        while written < 2000 && pending(&store) == usize::from(written) {
            store.put("one", &written.to_be_bytes(), b"v").await.unwrap();
            written += 1;
        }
        assert!(written < 2000, "the overlay never shrank");
        for key in 0..written {
            assert_eq!(store.get("one", &key.to_be_bytes()).await.unwrap().as_deref(), Some(&b"v"[..]));
        }

        let store = open("paused").await;
        let caught_up = store.inner.caught_up.listen();
        store.put("one", b"k", b"v").await.unwrap();
        assert_eq!(pending(&store), 1);
        let bound = SystemClock.sleep(10_000);
        let applied = futures_util::future::select(caught_up, bound).await;
        assert!(matches!(applied, futures_util::future::Either::Left(_)), "not applied within 10 s");
        assert_eq!(pending(&store), 0);
        assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// Two connections to one database, as an old and a new Service Worker
    /// have while one replaces the other: a write from a stale view fails and
    /// brings the view up to date, whether the other's writes are still
    /// logged or already applied.
    #[wasm_bindgen_test]
    async fn a_second_connection_fails_its_stale_write_then_sees_the_other() {
        let name = format!("{}-two", run_id());
        let a = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        let b = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        a.put("one", b"k", b"a").await.unwrap();
        let stale = b.write(Batch::new().expect("one", b"k".to_vec(), None).put("one", b"k".to_vec(), b"b".to_vec()));
        assert!(matches!(stale.await, Err(StoreError::Conflict { .. })));
        assert_eq!(b.get("one", b"k").await.unwrap().as_deref(), Some(&b"a"[..]));
        b.write(Batch::new().expect("one", b"k".to_vec(), Some(b"a".to_vec())).put(
            "one",
            b"k".to_vec(),
            b"b".to_vec(),
        ))
        .await
        .unwrap();

        // `a` has not seen `b`'s write; `b` applies it, so `a`'s next record
        // would land below what the tables hold.
        b.inner.apply().await.unwrap();
        assert!(matches!(a.put("one", b"other", b"a").await, Err(StoreError::Conflict { .. })));
        assert_eq!(a.get("one", b"k").await.unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(a.get("one", b"other").await.unwrap(), None);
        a.put("one", b"other", b"a").await.unwrap();
        drop((a, b));

        let reopened = IndexedDbStore::open(&name, SCHEMA).await.unwrap();
        assert_eq!(reopened.get("one", b"k").await.unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(reopened.get("one", b"other").await.unwrap().as_deref(), Some(&b"a"[..]));
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
        assert_eq!(v3.table_names(), vec![LOG.to_owned(), "two".to_owned()]);
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
