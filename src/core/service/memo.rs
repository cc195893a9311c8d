//! What a service read from the store, kept until one of its writes changes
//! it. Readers run without the writers' lock, so a read that overlapped a
//! write may have missed it: such a read is not kept (the writes count, and a
//! reader keeps what it read only if none landed since it began).

use crate::core::lock;
use std::{collections::HashMap, hash::Hash, sync::Mutex};

pub struct Memo<K, V> {
    /// Entries kept at most; past it the memo starts again empty.
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    writes: u64,
    kept: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::new(Inner { writes: 0, kept: HashMap::new() }) }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        lock(&self.inner).kept.get(key).cloned()
    }

    /// Where the writes stand: what a reader notes before reading the store.
    pub fn mark(&self) -> u64 {
        lock(&self.inner).writes
    }

    /// Keeps `value`, read from the store after [`Memo::mark`] gave `mark`,
    /// unless a write landed since.
    pub fn keep(&self, key: K, value: V, mark: u64) {
        let mut inner = lock(&self.inner);
        if inner.writes != mark {
            return;
        }
        if inner.kept.len() >= self.capacity {
            inner.kept.clear();
        }
        inner.kept.insert(key, value);
    }

    /// Forgets what was kept of `keys`: a write that changed them landed.
    pub fn wrote<'a>(&self, keys: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let mut inner = lock(&self.inner);
        inner.writes += 1;
        for key in keys {
            inner.kept.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_overlapping_a_write_is_not_kept() {
        let memo = Memo::new(2);
        let mark = memo.mark();
        memo.wrote([&"a"]);
        memo.keep("a", 1, mark);
        assert_eq!(memo.get(&"a"), None, "the read began before the write landed");

        let mark = memo.mark();
        memo.keep("a", 2, mark);
        assert_eq!(memo.get(&"a"), Some(2));
        memo.wrote([&"a"]);
        assert_eq!(memo.get(&"a"), None);
    }

    #[test]
    fn it_holds_at_most_its_capacity() {
        let memo = Memo::new(2);
        for (key, value) in [("a", 1), ("b", 2), ("c", 3)] {
            memo.keep(key, value, memo.mark());
        }
        assert_eq!(memo.get(&"c"), Some(3));
        assert_eq!([memo.get(&"a"), memo.get(&"b")], [None, None], "full: started again");
    }
}
