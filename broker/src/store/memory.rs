//! A [`Store`] in memory: ordered maps behind a lock. For the ledger's unit
//! and property tests and for simulations; it survives nothing, so the
//! broker never serves from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use super::{Batch, Entries, Op, Store, StoreError, Table};

/// Every record, by table and key.
type Records = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Records>,
}

impl MemoryStore {
    /// Number of records (all tables).
    pub fn len(&self) -> usize {
        self.tables.lock().expect("memory store lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut t = self.tables.lock().expect("memory store lock");
        for op in &batch.ops {
            match op {
                Op::Put(table, k, v) => {
                    t.insert((*table, k.clone()), v.clone());
                }
                Op::Delete(table, k) => {
                    t.remove(&(*table, k.clone()));
                }
            }
        }
        Ok(())
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.lock().expect("memory store lock").get(&(table, key.to_vec())).cloned())
    }

    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let t = self.tables.lock().expect("memory store lock");
        Ok(t.range((table, start.to_vec())..(table, end.to_vec()))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn backup_to(&self, _dir: &Path) -> Result<u64, StoreError> {
        Err(StoreError::Io("a memory store cannot be backed up".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_within_their_table_and_bounds() {
        let s = MemoryStore::default();
        let mut b = Batch::default();
        b.put(Table::Queue, vec![1], vec![10]);
        b.put(Table::Queue, vec![2], vec![20]);
        b.put(Table::Queue, vec![3], vec![30]);
        b.put(Table::Receipts, vec![2], vec![99]);
        s.commit(&b).unwrap();
        assert_eq!(s.range(Table::Queue, &[2], &[9], 10).unwrap(), vec![(vec![2], vec![20]), (vec![3], vec![30])]);
        assert_eq!(s.range(Table::Queue, &[1], &[9], 1).unwrap(), vec![(vec![1], vec![10])]);
        assert!(s.range(Table::Queue, &[3], &[3], 10).unwrap().is_empty());
        let mut d = Batch::default();
        d.delete(Table::Queue, vec![2]);
        s.commit(&d).unwrap();
        assert_eq!(s.get(Table::Queue, &[2]).unwrap(), None);
        assert_eq!(s.get(Table::Receipts, &[2]).unwrap(), Some(vec![99]));
    }
}
