//! A bounded cache that keeps what was used recently: two generations, the
//! newer filled until its weight reaches the budget, then retired to the older,
//! which it replaces. A hit in the older generation moves the entry back to the
//! newer. Approximate LRU at the cost of two hash maps, with no per-entry
//! bookkeeping on hits in the newer generation.

use crate::core::lock;
use std::{borrow::Borrow, collections::HashMap, hash::Hash, sync::Mutex};

pub struct Cache<K, V> {
    /// The weight each generation may hold.
    budget: usize,
    inner: Mutex<Generations<K, V>>,
}

struct Generations<K, V> {
    new: HashMap<K, (V, usize)>,
    old: HashMap<K, (V, usize)>,
    weight: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: Mutex::new(Generations { new: HashMap::new(), old: HashMap::new(), weight: 0 }) }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = lock(&self.inner);
        if let Some((value, _)) = inner.new.get(key) {
            return Some(value.clone());
        }
        let (key, (value, weight)) = inner.old.remove_entry(key)?;
        inner.put(self.budget, key, value.clone(), weight);
        Some(value)
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = lock(&self.inner);
        if let Some((_, weight)) = inner.new.remove(key) {
            inner.weight -= weight;
        }
        inner.old.remove(key);
    }

    /// Caches `value`, which weighs `weight` against the budget.
    pub fn insert(&self, key: K, value: V, weight: usize) {
        lock(&self.inner).put(self.budget, key, value, weight);
    }
}

impl<K: Hash + Eq, V> Generations<K, V> {
    fn put(&mut self, budget: usize, key: K, value: V, weight: usize) {
        if self.weight + weight > budget && !self.new.is_empty() {
            self.old = std::mem::take(&mut self.new);
            self.weight = 0;
        }
        self.weight += weight;
        if let Some((_, replaced)) = self.new.insert(key, (value, weight)) {
            self.weight -= replaced;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cache;

    #[test]
    fn recently_used_entries_survive_a_turnover() {
        let cache = Cache::new(3);
        for i in 0..3 {
            cache.insert(i, i * 10, 1);
        }
        // Full: the next insert retires 0, 1 and 2 to the older generation.
        cache.insert(3, 30, 1);
        assert_eq!(cache.get(&1), Some(10), "found in the older generation, and moved back");
        cache.insert(4, 40, 1);
        cache.insert(5, 50, 1);
        // This turnover drops what was left in the older generation (0 and 2).
        assert_eq!(cache.get(&0), None);
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.get(&5), Some(50));
    }

    #[test]
    fn weight_counts_against_the_budget() {
        let cache = Cache::new(10);
        cache.insert("big", 1, 8);
        cache.insert("small", 2, 1);
        cache.insert("other", 3, 4);
        assert_eq!(cache.get("other"), Some(3));
        assert_eq!(cache.get("big"), Some(1), "still in the older generation");
    }
}
