//! Transactions for `allOrNone` (sObject Collections, Composite, admin seeding): savepoints over
//! the undo journal that `put` and `remove` keep while a transaction is open.
//!
//! An undo journal rather than a copy of the data: a rollback then costs what the request
//! changed, not the size of the org.

use super::records::{Store, Undo};

impl Store {
    /// Opens a (possibly nested) transaction; returns its savepoint.
    pub fn begin(&mut self) -> usize {
        self.depth += 1;
        self.changes.marks.push(self.changes.changes.len());
        self.journal.len()
    }

    /// Keeps the changes since `savepoint`.
    pub fn commit(&mut self, savepoint: usize) {
        let _ = savepoint;
        self.changes.marks.pop();
        self.depth = self.depth.saturating_sub(1);
        if self.depth == 0 {
            self.journal.clear();
        }
    }

    /// Undoes every change since `savepoint`, newest first. Ids and auto-numbers stay consumed,
    /// as they do in Salesforce.
    pub fn rollback(&mut self, savepoint: usize) {
        let depth = std::mem::take(&mut self.depth);
        while self.journal.len() > savepoint {
            let Some(undo) = self.journal.pop() else {
                break;
            };
            match undo {
                Undo::Inserted { obj, id } => {
                    if let Some(old) = self.data.tables.get_mut(&obj).and_then(|t| t.remove(&id)) {
                        self.index_remove(&obj, &id, &old);
                    }
                }
                Undo::Replaced { obj, id, old } => self.put(&obj, &id, old),
                Undo::Deleted { obj, id, old } => {
                    self.data.deleted.remove(&id);
                    self.put(&obj, &id, old);
                }
            }
        }
        // The restores above were recorded as changes too: dropping everything since the
        // mark removes them with the changes they undo.
        if let Some(mark) = self.changes.marks.pop() {
            self.changes.changes.truncate(mark);
        }
        self.depth = depth.saturating_sub(1);
        if self.depth == 0 {
            self.journal.clear();
        }
    }
}
