//! A map keyed by sequence number, laid out for queues: one sorted, contiguous run of slots.
//!
//! Messages enter a queue in rising sequence order (sends, topic copies, a restore) and mostly
//! leave from its head, so appends are O(1), lookups a binary search, and a removal leaves a
//! tombstone that is trimmed from either end at once and compacted away once tombstones
//! outnumber the live entries (amortised O(1)). Out-of-order inserts (a dead-letter sub-queue
//! fed from the middle of its queue) shift the shorter side of the run. A `BTreeMap` costs
//! about twice the memory per entry for sequential inserts (its nodes are left half full),
//! which is what a queue of a million messages is made of.

use std::collections::VecDeque;

/// Sorted `(sequence number, entry)` slots; `None` marks a removed entry.
#[derive(Debug)]
pub(crate) struct SeqMap<V> {
    slots: VecDeque<(i64, Option<V>)>,
    len: usize,
}

impl<V> Default for SeqMap<V> {
    fn default() -> Self {
        SeqMap {
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<V> SeqMap<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn find(&self, seq: i64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&seq, |(s, _)| *s)
    }

    pub(crate) fn get(&self, seq: &i64) -> Option<&V> {
        let i = self.find(*seq).ok()?;
        self.slots[i].1.as_ref()
    }

    pub(crate) fn get_mut(&mut self, seq: &i64) -> Option<&mut V> {
        let i = self.find(*seq).ok()?;
        self.slots[i].1.as_mut()
    }

    /// Insert or replace; returns the entry it replaced.
    pub(crate) fn insert(&mut self, seq: i64, value: V) -> Option<V> {
        if self.slots.back().is_none_or(|(last, _)| *last < seq) {
            self.slots.push_back((seq, Some(value)));
            self.len += 1;
            return None;
        }
        match self.find(seq) {
            Ok(i) => {
                let old = self.slots[i].1.replace(value);
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
            Err(i) => {
                self.slots.insert(i, (seq, Some(value)));
                self.len += 1;
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, seq: &i64) -> Option<V> {
        let i = self.find(*seq).ok()?;
        let old = self.slots[i].1.take()?;
        self.len -= 1;
        while self.slots.front().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_back();
        }
        let tombstones = self.slots.len() - self.len;
        if tombstones > 32 && tombstones > self.len {
            self.slots.retain(|(_, v)| v.is_some());
        }
        if self.slots.capacity() > 64 && self.slots.capacity() > 4 * self.slots.len() {
            self.slots.shrink_to(2 * self.slots.len());
        }
        Some(old)
    }

    /// Entries with sequence number ≥ `from`, in order.
    pub(crate) fn range_from(&self, from: i64) -> impl Iterator<Item = (i64, &V)> {
        let start = match self.find(from) {
            Ok(i) | Err(i) => i,
        };
        self.slots
            .range(start..)
            .filter_map(|(s, v)| v.as_ref().map(|v| (*s, v)))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = i64> + '_ {
        self.range_from(i64::MIN).map(|(s, _)| s)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.range_from(i64::MIN).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::SeqMap;

    /// A deterministic mix of appends, out-of-order inserts, removals and lookups agrees with
    /// a `BTreeMap` at every step.
    #[test]
    fn behaves_like_a_btree_map() {
        let mut m = SeqMap::default();
        let mut want = BTreeMap::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = 0i64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pick = (x % 1000) as i64;
            match x % 7 {
                0..=2 => {
                    next += 1 + (x % 3) as i64;
                    assert_eq!(m.insert(next, step), want.insert(next, step));
                }
                3 => {
                    let seq = pick.min(next);
                    assert_eq!(m.insert(seq, step), want.insert(seq, step));
                }
                4 | 5 => {
                    let seq = want.keys().next().copied().unwrap_or(0) + pick % 5;
                    assert_eq!(m.remove(&seq), want.remove(&seq));
                }
                _ => {
                    let seq = pick.min(next);
                    assert_eq!(m.remove(&seq), want.remove(&seq));
                }
            }
            assert_eq!(m.len(), want.len());
            if step % 97 == 0 {
                let got: Vec<(i64, u32)> = m.range_from(pick).map(|(s, v)| (s, *v)).collect();
                let exp: Vec<(i64, u32)> = want.range(pick..).map(|(s, v)| (*s, *v)).collect();
                assert_eq!(got, exp);
                assert_eq!(m.get(&pick), want.get(&pick));
                if let Some(v) = m.get_mut(&pick) {
                    *v += 1;
                    *want.get_mut(&pick).unwrap() += 1;
                }
            }
        }
        assert!(m.keys().eq(want.keys().copied()));
        assert!(m.values().eq(want.values()));
    }

    #[test]
    fn tombstones_are_trimmed_and_compacted() {
        let mut m = SeqMap::default();
        for s in 0..1000 {
            m.insert(s, ());
        }
        // Every other one from the middle: tombstones stay until they outnumber the rest.
        for s in (1..999).step_by(2) {
            m.remove(&s);
        }
        assert_eq!(m.len(), 501);
        assert!(m.slots.len() <= 2 * m.len() + 1);
        for s in (0..1000).step_by(2) {
            m.remove(&s);
        }
        m.remove(&999);
        assert_eq!(m.len(), 0);
        assert!(m.slots.is_empty());
    }
}
