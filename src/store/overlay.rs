//! Writes a backend has made durable as whole batches in a log, but not yet
//! copied into their tables: kept in memory over those tables, and read through.
//!
//! IndexedDB charges for every request in a transaction, not only for the
//! transaction: in Chromium an event's six puts and two preconditions cost
//! about three times one put (`benches/bench.html`), while a put among
//! hundreds in one transaction costs a tenth of a lone one. Logging each
//! batch as one record acknowledges it at the price of one put; the tables
//! catch up in large transactions, where later writes to the same key (a
//! room's record, the stream counters) have replaced earlier ones, a hundred
//! or so records at a time so that writes meanwhile are not held up long.

use std::collections::{BTreeMap, VecDeque};

use super::{Direction, KeyRange, Op, Result, Schema, StoreError};

/// A key's latest write: its value, or `None` where it was deleted.
pub(crate) type Write = Option<Vec<u8>>;

/// Log records (and their bytes) held before the tables must catch up even
/// while writes keep coming: a bound on the memory they take and on what a
/// restart reads back.
const FULL_RECORDS: usize = 1024;
const FULL_BYTES: usize = 4 << 20;

/// Records (and their bytes) applied to the tables in one transaction at most:
/// a write that comes meanwhile waits for these (tens of milliseconds in
/// Chromium), not for the whole log (about half a second when full).
pub(crate) const APPLY_RECORDS: usize = 128;
pub(crate) const APPLY_BYTES: usize = 256 << 10;

pub(crate) struct Overlay {
    schema: Schema,
    /// Per table, in schema order: key → the log position of its latest write, and the write.
    tables: Vec<BTreeMap<Vec<u8>, (u64, Write)>>,
    /// The records not yet applied to the tables: log position and size.
    records: VecDeque<(u64, usize)>,
    bytes: usize,
    /// The last log position this overlay knows of, applied or not.
    last: u64,
}

/// The writes to apply to the tables, up to a log position.
pub(crate) struct Unapplied {
    pub upto: u64,
    pub writes: Vec<(&'static str, Vec<u8>, Write)>,
}

impl Overlay {
    /// An empty overlay over tables that hold every write up to log position `applied`.
    pub(crate) fn new(schema: Schema, applied: u64) -> Self {
        let tables = schema.tables.iter().map(|_| BTreeMap::new()).collect();
        Self { schema, tables, records: VecDeque::new(), bytes: 0, last: applied }
    }

    /// The position the next record takes.
    pub(crate) fn next(&self) -> u64 {
        self.last + 1
    }

    fn table(&self, table: &str) -> Option<usize> {
        self.schema.tables.iter().position(|t| *t == table)
    }

    /// The key's latest unapplied write, or `None` where the table has the answer.
    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Option<Option<&[u8]>> {
        let (_, write) = self.tables[self.table(table)?].get(key)?;
        Some(write.as_deref())
    }

    /// The unapplied writes to keys in `range`, in key order.
    pub(crate) fn range(&self, table: &str, range: &KeyRange) -> Vec<(Vec<u8>, Write)> {
        let Some(table) = self.table(table) else { return Vec::new() };
        self.tables[table]
            .range::<[u8], _>(range.bounds())
            .map(|(key, (_, write))| (key.clone(), write.clone()))
            .collect()
    }

    /// Takes in the batch `ops` logged at `position` in a record of `size` bytes.
    pub(crate) fn logged(&mut self, position: u64, size: usize, ops: Vec<Op>) {
        for op in ops {
            let (table, key, write) = match op {
                Op::Put { table, key, value } => (table, key, Some(value)),
                Op::Delete { table, key } => (table, key, None),
                Op::Expect { .. } => continue,
            };
            if let Some(table) = self.table(table) {
                self.tables[table].insert(key, (position, write));
            }
        }
        self.records.push_back((position, size));
        self.bytes += size;
        self.last = position;
    }

    /// Takes in a record read back from the log. Writes to tables this schema no
    /// longer has are dropped, as an upgrade drops the tables themselves.
    pub(crate) fn replay(&mut self, position: u64, record: &[u8]) -> Result<()> {
        let mut ops = Vec::new();
        let mut rest = record;
        while !rest.is_empty() {
            let (table, key, write) = decode_op(&mut rest)?;
            let Some(table) = self.table(&table).map(|t| self.schema.tables[t]) else { continue };
            ops.push(match write {
                Some(value) => Op::Put { table, key, value },
                None => Op::Delete { table, key },
            });
        }
        self.logged(position, record.len(), ops);
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether the tables must catch up now, rather than when writes pause.
    pub(crate) fn is_full(&self) -> bool {
        self.records.len() >= FULL_RECORDS || self.bytes >= FULL_BYTES
    }

    /// The latest write to each key logged after `applied` (the tables have the
    /// rest) in the records that follow, as many as fit in `records` and
    /// `bytes` (one at least). A key written again in a later record waits for
    /// that record: the log keeps it, so a restart still reads the key's latest
    /// write back.
    pub(crate) fn unapplied(&self, applied: u64, records: usize, bytes: usize) -> Option<Unapplied> {
        let &(last, _) = self.records.back()?;
        let mut upto = applied.min(last);
        let mut taken = (0, 0);
        for &(position, size) in self.records.iter().filter(|(position, _)| *position > applied) {
            taken = (taken.0 + 1, taken.1 + size);
            if taken.0 > 1 && (taken.0 > records || taken.1 > bytes) {
                break;
            }
            upto = position;
        }
        let writes = self
            .schema
            .tables
            .iter()
            .zip(&self.tables)
            .flat_map(|(table, writes)| {
                writes
                    .iter()
                    .filter(|(_, (position, _))| (applied + 1..=upto).contains(position))
                    .map(|(key, (_, write))| (*table, key.clone(), write.clone()))
            })
            .collect();
        Some(Unapplied { upto, writes })
    }

    /// Forgets the writes logged up to `upto`, which the tables now have.
    pub(crate) fn applied(&mut self, upto: u64) {
        for writes in &mut self.tables {
            writes.retain(|_, (position, _)| *position > upto);
        }
        while let Some(&(position, size)) = self.records.front() {
            if position > upto {
                break;
            }
            self.records.pop_front();
            self.bytes -= size;
        }
    }
}

/// The record that logs a batch's writes (its preconditions were checked
/// before): per write, a tag, the table's name, the key and the value.
pub(crate) fn record(ops: &[Op]) -> Vec<u8> {
    let mut record = Vec::new();
    for op in ops {
        let (tag, table, key, value) = match op {
            Op::Put { table, key, value } => (PUT, table, key, Some(value)),
            Op::Delete { table, key } => (DELETE, table, key, None),
            Op::Expect { .. } => continue,
        };
        record.push(tag);
        record.push(table.len() as u8);
        record.extend_from_slice(table.as_bytes());
        for bytes in [Some(key), value].into_iter().flatten() {
            record.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            record.extend_from_slice(bytes);
        }
    }
    record
}

const PUT: u8 = 0;
const DELETE: u8 = 1;

fn decode_op(rest: &mut &[u8]) -> Result<(String, Vec<u8>, Write)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if rest.len() < n {
            return Err(StoreError::Backend("a write log record is cut short".into()));
        }
        let (taken, left) = rest.split_at(n);
        *rest = left;
        Ok(taken)
    }
    fn bytes(rest: &mut &[u8]) -> Result<Vec<u8>> {
        let len = u32::from_be_bytes(take(rest, 4)?.try_into().expect("four bytes"));
        Ok(take(rest, len as usize)?.to_vec())
    }
    let tag = take(rest, 1)?[0];
    let table_len = take(rest, 1)?[0];
    let table = String::from_utf8_lossy(take(rest, table_len.into())?).into_owned();
    let key = bytes(rest)?;
    let write = match tag {
        PUT => Some(bytes(rest)?),
        DELETE => None,
        _ => return Err(StoreError::Backend(format!("a write log record has an unknown write {tag}"))),
    };
    Ok((table, key, write))
}

/// A scan's answer from the table's `stored` entries and the overlay's
/// `pending` writes in the same range. `stored` must hold `limit` entries
/// more than `pending` has deletes (or all the range has): as many as the
/// deletes can hide.
pub(crate) fn merge(
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    pending: Vec<(Vec<u8>, Write)>,
    direction: Direction,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
    for (key, write) in pending {
        match write {
            Some(value) => merged.insert(key, value),
            None => merged.remove(&key),
        };
    }
    match direction {
        Direction::Forward => merged.into_iter().take(limit).collect(),
        Direction::Backward => merged.into_iter().rev().take(limit).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{conformance::SCHEMA, Batch};

    #[test]
    fn records_read_back_as_the_writes_they_log() {
        let batch = Batch::new()
            .expect("one", b"a".to_vec(), None)
            .put("one", b"a".to_vec(), b"1".to_vec())
            .delete("two", b"b".to_vec())
            .put("two", Vec::new(), Vec::new());
        let record = record(&batch.ops);
        let mut overlay = Overlay::new(SCHEMA, 4);
        overlay.replay(5, &record).unwrap();
        assert_eq!(overlay.get("one", b"a"), Some(Some(&b"1"[..])));
        assert_eq!(overlay.get("two", b"b"), Some(None));
        assert_eq!(overlay.get("two", b""), Some(Some(&b""[..])));
        assert_eq!(overlay.get("one", b"b"), None);
        assert_eq!(overlay.next(), 6);

        // Cut inside its last write (a cut between writes leaves a shorter record).
        let before_last = super::record(&batch.ops[..3]).len();
        for cut in before_last + 1..record.len() {
            assert!(Overlay::new(SCHEMA, 0).replay(1, &record[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn writes_to_dropped_tables_are_not_replayed() {
        let record = record(
            &Batch::new().put("gone", b"k".to_vec(), b"v".to_vec()).put("one", b"k".to_vec(), b"v".to_vec()).ops,
        );
        let mut overlay = Overlay::new(SCHEMA, 0);
        overlay.replay(1, &record).unwrap();
        assert_eq!(overlay.range("one", &KeyRange::all()), vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
        assert_eq!(overlay.range("gone", &KeyRange::all()), Vec::new());
    }

    #[test]
    fn only_writes_the_tables_lack_are_applied_and_then_forgotten() {
        let mut overlay = Overlay::new(SCHEMA, 0);
        let put = |key: &[u8], value: &[u8]| Batch::new().put("one", key.to_vec(), value.to_vec()).ops;
        overlay.logged(1, 10, put(b"a", b"1"));
        overlay.logged(2, 10, put(b"b", b"1"));
        overlay.logged(3, 10, put(b"a", b"2"));
        // Another writer applied up to 1: `a` was written again since, `b` was not.
        let unapplied = overlay.unapplied(1, usize::MAX, usize::MAX).unwrap();
        assert_eq!(unapplied.upto, 3);
        let keys: Vec<_> = unapplied.writes.iter().map(|(t, k, w)| (*t, k.clone(), w.clone())).collect();
        assert_eq!(
            keys,
            vec![("one", b"a".to_vec(), Some(b"2".to_vec())), ("one", b"b".to_vec(), Some(b"1".to_vec()))]
        );

        // A write logged while the tables caught up stays.
        overlay.logged(4, 10, put(b"b", b"2"));
        overlay.applied(3);
        assert_eq!(overlay.get("one", b"a"), None);
        assert_eq!(overlay.get("one", b"b"), Some(Some(&b"2"[..])));
        assert_eq!(overlay.unapplied(0, usize::MAX, usize::MAX).unwrap().upto, 4);
        assert!(!overlay.is_empty());
        overlay.applied(4);
        assert!(overlay.is_empty());
        assert!(overlay.unapplied(0, usize::MAX, usize::MAX).is_none());
        assert_eq!(overlay.next(), 5);
    }

    #[test]
    fn a_few_records_at_a_time_leave_keys_written_later_for_later() {
        let mut overlay = Overlay::new(SCHEMA, 0);
        let put = |key: &[u8], value: &[u8]| Batch::new().put("one", key.to_vec(), value.to_vec()).ops;
        overlay.logged(1, 10, put(b"a", b"1"));
        overlay.logged(2, 10, put(b"b", b"1"));
        overlay.logged(3, 10, put(b"a", b"2"));
        overlay.logged(4, 10, put(b"c", b"1"));
        let writes = |unapplied: Unapplied| (unapplied.upto, unapplied.writes.into_iter().map(|(_, k, _)| k).collect());
        // `a` was written again in record 3: its write goes with that record.
        assert_eq!(writes(overlay.unapplied(0, 2, usize::MAX).unwrap()), (2, vec![b"b".to_vec()]));
        assert_eq!(writes(overlay.unapplied(0, usize::MAX, 25).unwrap()), (2, vec![b"b".to_vec()]));
        overlay.applied(2);
        assert_eq!(overlay.get("one", b"a"), Some(Some(&b"2"[..])));
        // One record at least, however small the bound.
        assert_eq!(writes(overlay.unapplied(2, 0, 0).unwrap()), (3, vec![b"a".to_vec()]));
        assert_eq!(writes(overlay.unapplied(2, 2, usize::MAX).unwrap()), (4, vec![b"a".to_vec(), b"c".to_vec()]));
        // Another writer applied up to 3: the next records start after it.
        assert_eq!(writes(overlay.unapplied(3, 1, usize::MAX).unwrap()), (4, vec![b"c".to_vec()]));
    }

    #[test]
    fn a_full_overlay_is_applied_in_several_chunks() {
        let mut overlay = Overlay::new(SCHEMA, 0);
        (1..=FULL_RECORDS as u64).for_each(|p| overlay.logged(p, 1, Vec::new()));
        assert_eq!(overlay.unapplied(0, APPLY_RECORDS, APPLY_BYTES).unwrap().upto, APPLY_RECORDS as u64);
        let mut overlay = Overlay::new(SCHEMA, 0);
        (1..=3).for_each(|p| overlay.logged(p, APPLY_BYTES / 2, Vec::new()));
        assert_eq!(overlay.unapplied(0, APPLY_RECORDS, APPLY_BYTES).unwrap().upto, 2);
    }

    #[test]
    fn fills_up_by_records_or_by_bytes() {
        let mut overlay = Overlay::new(SCHEMA, 0);
        (1..FULL_RECORDS as u64).for_each(|p| overlay.logged(p, 1, Vec::new()));
        assert!(!overlay.is_full());
        overlay.logged(FULL_RECORDS as u64, 1, Vec::new());
        assert!(overlay.is_full());
        overlay.applied(FULL_RECORDS as u64);
        overlay.logged(FULL_RECORDS as u64 + 1, FULL_BYTES, Vec::new());
        assert!(overlay.is_full());
    }

    #[test]
    fn scans_see_pending_writes_over_stored_entries() {
        let entry = |k: u8, v: u8| (vec![k], vec![v]);
        let stored = vec![entry(1, 0), entry(2, 0), entry(3, 0), entry(4, 0)];
        let pending = vec![(vec![2], None), (vec![3], Some(vec![9])), (vec![5], Some(vec![9]))];
        assert_eq!(
            merge(stored.clone(), pending.clone(), Direction::Forward, 3),
            vec![entry(1, 0), entry(3, 9), entry(4, 0)]
        );
        assert_eq!(merge(stored, pending, Direction::Backward, 2), vec![entry(5, 9), entry(4, 0)]);
    }
}
