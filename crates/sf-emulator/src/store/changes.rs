//! The change log Change Data Capture is built from: every committed create, update and delete
//! of a captured object, with the record before and after.
//!
//! Recorded by the primitive writes (`put`, `remove`), so every path that writes a record
//! (single calls, Collections, Composite, upsert, cascades) is covered without each handler
//! remembering to publish. A rolled-back `allOrNone` transaction drops its changes with its
//! data. The HTTP layer takes the log after each request and publishes it; anything else that
//! writes (admin seeding, start-up) takes and discards it, so the log never outlives a request.
//!
//! Only objects named in [`Store::capture_changes`] are recorded: copying records costs, and
//! most objects are not watched.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::records::{Record, Store};

/// One committed change of one record.
#[derive(Debug, Clone)]
pub struct Change {
    /// Object name, schema spelling.
    pub object: String,
    pub id: String,
    /// The record before (None: created).
    pub old: Option<Record>,
    /// The record after (None: deleted).
    pub new: Option<Record>,
}

/// Which objects are captured, and the changes since the log was last taken.
#[derive(Debug, Clone, Default)]
pub(super) struct ChangeLog {
    pub(super) capture: Arc<BTreeSet<String>>,
    pub(super) changes: Vec<Change>,
    /// Length of `changes` when each open transaction began, innermost last.
    pub(super) marks: Vec<usize>,
}

impl Store {
    /// Records changes of these objects (schema spelling) from now on.
    pub fn capture_changes(&mut self, objects: impl IntoIterator<Item = String>) {
        self.changes.capture = Arc::new(objects.into_iter().collect());
    }

    /// The objects whose changes are recorded.
    pub fn captured_objects(&self) -> Arc<BTreeSet<String>> {
        Arc::clone(&self.changes.capture)
    }

    /// Takes the recorded changes, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes.changes)
    }

    pub(super) fn record_change(
        &mut self,
        obj: &str,
        id: &str,
        old: Option<&Record>,
        new: Option<&Record>,
    ) {
        if !self.changes.capture.contains(obj) {
            return;
        }
        self.changes.changes.push(Change {
            object: obj.to_owned(),
            id: id.to_owned(),
            old: old.cloned(),
            new: new.cloned(),
        });
    }
}
