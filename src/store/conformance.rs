//! The conformance suite every [`Store`] backend runs: [`store_conformance!`]
//! expands to one test per property, natively under tokio and in the browser
//! under `wasm-bindgen-test`.

use std::ops::Bound;

use super::{Batch, Direction, KeyRange, Schema, Store, StoreError};

pub const SCHEMA: Schema = Schema { version: 1, tables: &["one", "two"] };

/// `store_conformance!(open)` with `async fn open(name: &str) -> impl Store`, which
/// opens the store called `name` (a fresh one the first time). The `persistent`
/// form adds a reopen test: `open` must then reopen a dropped store's data.
macro_rules! store_conformance {
    (persistent: $open:path) => {
        store_conformance!($open);

        #[cfg_attr(not(target_arch = "wasm32"), tokio::test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        async fn conformance_reopen_keeps_data() {
            let store = $open("reopen").await;
            crate::store::conformance::write_for_reopen(&store).await;
            drop(store);
            crate::store::conformance::check_after_reopen(&$open("reopen").await).await;
        }
    };
    ($open:path) => {
        store_conformance!(@tests $open;
            get_put_delete, get_many_reads_in_order, tables_are_separate, binary_key_order, scans_with_bounds_and_limits,
            empty_scans, empty_batches, failing_batch_writes_nothing, batch_spans_tables, unknown_table_is_an_error,
            large_values);
    };
    (@tests $open:path; $($name:ident),*) => {
        $(
            #[cfg_attr(not(target_arch = "wasm32"), tokio::test)]
            #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
            async fn $name() {
                crate::store::conformance::$name(&$open(concat!("conformance_", stringify!($name))).await).await;
            }
        )*
    };
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

async fn all(store: &impl Store, table: &str, direction: Direction) -> Entries {
    store.scan(table, KeyRange::all(), direction, usize::MAX).await.unwrap()
}

fn keys(entries: &Entries) -> Vec<Vec<u8>> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

pub async fn get_put_delete(store: &impl Store) {
    assert_eq!(store.get("one", b"k").await.unwrap(), None);
    store.put("one", b"k", b"v1").await.unwrap();
    assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    store.put("one", b"k", b"v2").await.unwrap();
    assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    store.put("one", b"empty", b"").await.unwrap();
    assert_eq!(store.get("one", b"empty").await.unwrap(), Some(Vec::new()));
    store.delete("one", b"k").await.unwrap();
    assert_eq!(store.get("one", b"k").await.unwrap(), None);
    store.delete("one", b"never-there").await.unwrap();
}

pub async fn get_many_reads_in_order(store: &impl Store) {
    store.put("one", b"a", b"1").await.unwrap();
    store.put("one", b"c", b"3").await.unwrap();
    let values = store.get_many("one", &[b"c", b"b", b"a", b"c"]).await.unwrap();
    assert_eq!(values, vec![Some(b"3".to_vec()), None, Some(b"1".to_vec()), Some(b"3".to_vec())]);
    assert_eq!(store.get_many("one", &[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
    assert!(matches!(store.get_many("nope", &[b"a"]).await, Err(StoreError::UnknownTable(_))));
}

pub async fn tables_are_separate(store: &impl Store) {
    store.put("one", b"k", b"in one").await.unwrap();
    store.put("two", b"k", b"in two").await.unwrap();
    assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"in one"[..]));
    store.delete("two", b"k").await.unwrap();
    assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"in one"[..]));
    assert_eq!(all(store, "two", Direction::Forward).await, vec![]);
}

/// Keys compare as unsigned bytes, shorter prefix first: the order the core's key
/// encodings (big-endian integers, separator bytes) rely on.
pub async fn binary_key_order(store: &impl Store) {
    let sorted: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0x01],
        vec![0x01],
        vec![0x01, 0xff],
        vec![0x7f],
        vec![0x80],
        vec![0x80, 0x00],
        vec![0xfe, 0xff, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
    ];
    // Insert in a scrambled order so no backend can pass by keeping insertion order.
    for i in [7, 2, 12, 0, 9, 4, 11, 1, 6, 10, 3, 8, 5] {
        let key = &sorted[i];
        store.put("one", key, &[i as u8]).await.unwrap();
    }
    let forward = all(store, "one", Direction::Forward).await;
    assert_eq!(keys(&forward), sorted);
    assert!(forward.iter().enumerate().all(|(i, (_, v))| v == &[i as u8]));
    let mut reversed = sorted.clone();
    reversed.reverse();
    assert_eq!(keys(&all(store, "one", Direction::Backward).await), reversed);
}

pub async fn scans_with_bounds_and_limits(store: &impl Store) {
    for i in 0u8..10 {
        store.put("one", &[b'a', i], &[i]).await.unwrap();
        store.put("one", &[b'b', i], &[i]).await.unwrap();
    }
    let scan = |range: KeyRange, direction, limit| async move {
        keys(&store.scan("one", range, direction, limit).await.unwrap())
    };
    let a = |i: u8| vec![b'a', i];
    use Bound::*;
    use Direction::*;

    assert_eq!(scan(KeyRange::prefix(b"a"), Forward, 3).await, vec![a(0), a(1), a(2)]);
    assert_eq!(scan(KeyRange::prefix(b"a"), Backward, 3).await, vec![a(9), a(8), a(7)]);
    assert_eq!(scan(KeyRange::prefix(b"a"), Backward, 100).await.len(), 10);
    let closed = KeyRange::new(Included(a(2)), Included(a(4)));
    assert_eq!(scan(closed.clone(), Forward, 10).await, vec![a(2), a(3), a(4)]);
    assert_eq!(scan(closed, Backward, 10).await, vec![a(4), a(3), a(2)]);
    let open = KeyRange::new(Excluded(a(2)), Excluded(a(5)));
    assert_eq!(scan(open.clone(), Forward, 10).await, vec![a(3), a(4)]);
    assert_eq!(scan(open, Backward, 1).await, vec![a(4)]);
    // Paging backwards from an exclusive cursor, as timeline pagination does.
    let before = KeyRange::new(Unbounded, Excluded(vec![b'b', 0]));
    assert_eq!(scan(before, Backward, 2).await, vec![a(9), a(8)]);
    let after = KeyRange::new(Excluded(a(9)), Unbounded);
    assert_eq!(scan(after, Forward, 1).await, vec![vec![b'b', 0]]);
}

/// A batch with nothing in it commits nothing and succeeds: a commit may find
/// nothing to do (every PDU of a transaction already stored, say).
pub async fn empty_batches(store: &impl Store) {
    store.write(Batch::new()).await.unwrap();
    assert_eq!(store.scan("one", KeyRange::all(), Direction::Forward, 10).await.unwrap(), vec![]);
}

pub async fn empty_scans(store: &impl Store) {
    store.put("one", b"m", b"").await.unwrap();
    use Bound::*;
    for range in [
        KeyRange::new(Included(b"z".to_vec()), Included(b"a".to_vec())),
        KeyRange::new(Excluded(b"m".to_vec()), Excluded(b"m".to_vec())),
        KeyRange::new(Included(b"m".to_vec()), Excluded(b"m".to_vec())),
        KeyRange::prefix(b"n"),
    ] {
        for direction in [Direction::Forward, Direction::Backward] {
            assert_eq!(store.scan("one", range.clone(), direction, 10).await.unwrap(), vec![]);
        }
    }
    assert_eq!(store.scan("one", KeyRange::all(), Direction::Forward, 0).await.unwrap(), vec![]);
    let only_m = KeyRange::new(Included(b"m".to_vec()), Included(b"m".to_vec()));
    assert_eq!(store.scan("one", only_m, Direction::Backward, 10).await.unwrap().len(), 1);
}

pub async fn failing_batch_writes_nothing(store: &impl Store) {
    store.put("one", b"guard", b"old").await.unwrap();
    store.put("two", b"doomed", b"still here").await.unwrap();
    let stale = Batch::new()
        .put("one", b"a".to_vec(), b"1".to_vec())
        .put("two", b"b".to_vec(), b"2".to_vec())
        .delete("two", b"doomed".to_vec())
        .expect("one", b"guard".to_vec(), Some(b"older".to_vec()));
    let err = store.write(stale).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { table, key } if table == "one" && key == b"guard"), "{err}");

    let to_unknown_table =
        Batch::new().put("one", b"a".to_vec(), b"1".to_vec()).put("nope", b"b".to_vec(), b"2".to_vec());
    let err = store.write(to_unknown_table).await.unwrap_err();
    assert!(matches!(&err, StoreError::UnknownTable(t) if t == "nope"), "{err}");

    let absent_expected = Batch::new().put("one", b"a".to_vec(), b"1".to_vec()).expect("one", b"guard".to_vec(), None);
    assert!(matches!(store.write(absent_expected).await, Err(StoreError::Conflict { .. })));

    assert_eq!(store.get("one", b"a").await.unwrap(), None);
    assert_eq!(store.get("two", b"b").await.unwrap(), None);
    assert_eq!(store.get("two", b"doomed").await.unwrap().as_deref(), Some(&b"still here"[..]));
    assert_eq!(all(store, "one", Direction::Forward).await, vec![(b"guard".to_vec(), b"old".to_vec())]);
}

pub async fn batch_spans_tables(store: &impl Store) {
    store.put("two", b"gone", b"x").await.unwrap();
    let batch = Batch::new()
        .expect("one", b"counter".to_vec(), None)
        .put("one", b"counter".to_vec(), b"1".to_vec())
        .put("two", b"event".to_vec(), b"e".to_vec())
        .delete("two", b"gone".to_vec())
        // Later operations on the same key win, as in a sequence of single writes.
        .put("one", b"k".to_vec(), b"first".to_vec())
        .put("one", b"k".to_vec(), b"second".to_vec());
    store.write(batch).await.unwrap();
    assert_eq!(store.get("one", b"counter").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.get("one", b"k").await.unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(keys(&all(store, "two", Direction::Forward).await), vec![b"event".to_vec()]);

    // The same precondition now fails: compare-and-set, not blind overwrite.
    let again = Batch::new().expect("one", b"counter".to_vec(), None).put("one", b"counter".to_vec(), b"2".to_vec());
    assert!(matches!(store.write(again).await, Err(StoreError::Conflict { .. })));
    let next = Batch::new().expect("one", b"counter".to_vec(), Some(b"1".to_vec())).put(
        "one",
        b"counter".to_vec(),
        b"2".to_vec(),
    );
    store.write(next).await.unwrap();
    assert_eq!(store.get("one", b"counter").await.unwrap().as_deref(), Some(&b"2"[..]));
}

pub async fn unknown_table_is_an_error(store: &impl Store) {
    assert!(matches!(store.get("nope", b"k").await, Err(StoreError::UnknownTable(_))));
    let scan = store.scan("nope", KeyRange::all(), Direction::Forward, 1).await;
    assert!(matches!(scan, Err(StoreError::UnknownTable(_))));
    assert!(matches!(store.put("nope", b"k", b"v").await, Err(StoreError::UnknownTable(_))));
}

pub async fn large_values(store: &impl Store) {
    let value: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    store.put("one", b"big", &value).await.unwrap();
    assert_eq!(store.get("one", b"big").await.unwrap(), Some(value));
}

pub async fn write_for_reopen(store: &impl Store) {
    let batch = Batch::new().put("one", vec![1], b"kept".to_vec()).put("two", vec![2], b"also kept".to_vec()).put(
        "one",
        vec![3],
        b"deleted later".to_vec(),
    );
    store.write(batch).await.unwrap();
    store.delete("one", &[3]).await.unwrap();
}

pub async fn check_after_reopen(store: &impl Store) {
    assert_eq!(all(store, "one", Direction::Forward).await, vec![(vec![1], b"kept".to_vec())]);
    assert_eq!(all(store, "two", Direction::Forward).await, vec![(vec![2], b"also kept".to_vec())]);
}
