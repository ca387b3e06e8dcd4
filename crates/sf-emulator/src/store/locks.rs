//! Injected row locks (`lock_records` of `POST /__admin/faults`): which records answer
//! `UNABLE_TO_LOCK_ROW`, and the keys (Id, external-id values) a record can be named by.
//!
//! A lock is an injected fault, not a rule about the data, so it lives apart from the checks in
//! `fields` and `validate`; the writes in `dml` consult it, for the record written and, on a
//! create, for the records it points at (a locked parent refuses new children).

use serde::{Deserialize, Serialize};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::ObjectDef;

use super::records::{Record, text_of};

/// Records that the fault injector says are locked by another transaction.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Locks {
    pub rules: Vec<LockRule>,
}

/// A record (by Id or external-id value) that answers UNABLE_TO_LOCK_ROW.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRule {
    /// Record Id (15 or 18 characters) or external-id value.
    pub key: String,
    /// How many more writes fail; `None` until the fault is cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Locks {
    /// Whether one of `keys` is locked; consumes one failure of the matching rule.
    fn check(&mut self, keys: &[String]) -> Option<String> {
        let idx = self.rules.iter().position(|r| {
            keys.iter().any(|k| {
                k.eq_ignore_ascii_case(&r.key) || ids::normalize(&r.key).is_some_and(|n| n == *k)
            })
        })?;
        let rule = self.rules.get_mut(idx)?;
        let key = rule.key.clone();
        if let Some(t) = rule.times.as_mut() {
            *t = t.saturating_sub(1);
            if *t == 0 {
                self.rules.remove(idx);
            }
        }
        Some(key)
    }
}

/// The keys a lock fault can name for a record: its Id and its external-id values.
pub(super) fn lock_keys(def: &ObjectDef, id: &str, rec: Option<&Record>) -> Vec<String> {
    let mut keys = vec![id.to_owned()];
    if let Some(rec) = rec {
        for f in def.fields.iter().filter(|f| f.external_id) {
            if let Some(v) = rec.get(&f.name).and_then(text_of) {
                keys.push(v);
            }
        }
    }
    keys
}

pub(super) fn check_lock(locks: &mut Locks, keys: &[String], id: &str) -> Result<(), RecordError> {
    match locks.check(keys) {
        Some(_) => Err(RecordError::new(
            "UNABLE_TO_LOCK_ROW",
            format!("unable to obtain exclusive access to this record or 1 records: {id}"),
        )),
        None => Ok(()),
    }
}
