//! The routing index: `(field, value) → slots` plus the firehose set. Owned
//! by the hub task alone, so it needs no lock; every lookup is O(matching
//! connections).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A connection's position in the hub's slot table.
pub type Slot = usize;

/// Who subscribed to what.
#[derive(Debug, Default)]
pub struct Index {
    by_key: HashMap<Arc<str>, HashMap<Box<str>, HashSet<Slot>>>,
    firehose: HashSet<Slot>,
    entries: usize,
}

impl Index {
    /// The field name as an `Arc` shared with the index's own copy, so a
    /// subscription does not allocate the field name again.
    pub fn intern(&self, field: String) -> Arc<str> {
        match self.by_key.get_key_value(field.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(field),
        }
    }

    /// Adds `slot` under `(field, value)`.
    pub fn insert(&mut self, field: Arc<str>, value: Box<str>, slot: Slot) {
        if self
            .by_key
            .entry(field)
            .or_default()
            .entry(value)
            .or_default()
            .insert(slot)
        {
            self.entries += 1;
        }
    }

    /// Removes `slot` from `(field, value)`, dropping emptied maps.
    pub fn remove(&mut self, field: &str, value: &str, slot: Slot) {
        let Some(values) = self.by_key.get_mut(field) else {
            return;
        };
        if let Some(set) = values.get_mut(value) {
            if set.remove(&slot) {
                self.entries -= 1;
            }
            if set.is_empty() {
                values.remove(value);
            }
        }
        if values.is_empty() {
            self.by_key.remove(field);
        }
    }

    /// Turns the firehose on or off for `slot`.
    pub fn set_firehose(&mut self, slot: Slot, on: bool) {
        let changed = if on {
            self.firehose.insert(slot)
        } else {
            self.firehose.remove(&slot)
        };
        if changed {
            if on {
                self.entries += 1;
            } else {
                self.entries -= 1;
            }
        }
    }

    /// Slots subscribed to `(field, value)`.
    pub fn matching(&self, field: &str, value: &str) -> impl Iterator<Item = Slot> + '_ {
        self.by_key
            .get(field)
            .and_then(|m| m.get(value))
            .into_iter()
            .flatten()
            .copied()
    }

    /// Slots in firehose mode.
    pub fn firehose(&self) -> impl Iterator<Item = Slot> + '_ {
        self.firehose.iter().copied()
    }

    /// `(field, value)` subscriptions plus firehose members.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// True when nothing is indexed (and no empty map was left behind).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.firehose.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_counts() {
        let mut ix = Index::default();
        let f = ix.intern("agentId".into());
        ix.insert(f.clone(), "a".into(), 1);
        ix.insert(f.clone(), "a".into(), 1);
        ix.insert(ix.intern("agentId".into()), "a".into(), 2);
        ix.set_firehose(3, true);
        ix.set_firehose(3, true);
        assert_eq!(ix.entries(), 3);
        let mut m: Vec<Slot> = ix.matching("agentId", "a").collect();
        m.sort();
        assert_eq!(m, [1, 2]);
        assert_eq!(ix.matching("agentId", "b").count(), 0);
        ix.remove("agentId", "a", 1);
        ix.remove("agentId", "a", 1);
        ix.remove("agentId", "a", 2);
        ix.remove("nope", "a", 2);
        ix.set_firehose(3, false);
        assert_eq!(ix.entries(), 0);
        assert!(ix.is_empty());
    }
}
