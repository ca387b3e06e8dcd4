//! Storage: the records per object, the index of external-id and unique values, system fields,
//! lookups by id and by value, and the primitive writes (`put`, `remove`).
//!
//! The primitives keep the tables, the index and the undo journal in step, so the index cannot
//! drift from the data and a change inside a transaction can be undone (see `transaction`). The
//! one write that bypasses them, the in-place `Order.TotalAmount` roll-up in `objects`, changes
//! no indexed field and journals itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::{ObjectDef, Schema};

use super::changes::ChangeLog;

pub use super::record::Record;

/// The mutable part of the store (what a snapshot copies and a data file holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreData {
    /// Object name → id → record.
    pub(super) tables: BTreeMap<String, BTreeMap<String, Record>>,
    /// Deleted id → object name, so reads answer ENTITY_IS_DELETED rather than NOT_FOUND.
    pub(super) deleted: BTreeMap<String, String>,
    pub(super) next_id: u64,
    /// "Object.Field" → last auto-number issued.
    pub(super) autonumbers: BTreeMap<String, u64>,
}

/// One change, recorded while a transaction is open so it can be undone.
#[derive(Debug, Clone)]
pub(super) enum Undo {
    /// The record was inserted: remove it.
    Inserted { obj: String, id: String },
    /// The record was replaced: put the old version back.
    Replaced {
        obj: String,
        id: String,
        old: Record,
    },
    /// The record was deleted: restore it.
    Deleted {
        obj: String,
        id: String,
        old: Record,
    },
}

/// object → field → lower-cased value → ids, for external-id and unique fields, so upserts and
/// uniqueness checks stay O(1) however many records the org holds.
type Index = BTreeMap<String, BTreeMap<String, std::collections::HashMap<String, Vec<String>>>>;

/// The org's data.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) schema: Arc<Schema>,
    pub(super) data: StoreData,
    user_id: String,
    index: Index,
    /// Undo log of the open transactions (`allOrNone`), innermost last.
    pub(super) journal: Vec<Undo>,
    pub(super) depth: usize,
    /// Changes of captured objects, for Change Data Capture (see `changes`).
    pub(super) changes: ChangeLog,
}

/// Salesforce's datetime format in API responses.
pub fn sf_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

pub(super) fn invalid_type(name: &str) -> RecordError {
    RecordError::new(
        "INVALID_TYPE",
        format!("sObject type '{name}' is not supported."),
    )
}

/// Text form of a value for case-insensitive matching (external ids, SOQL).
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Store {
    /// An empty org with the standard price book, as every real org has.
    pub fn new(schema: Arc<Schema>) -> Self {
        let user_id = ids::make_id("005", 1);
        let mut store = Self {
            schema,
            data: StoreData::default(),
            user_id,
            index: Index::new(),
            journal: Vec::new(),
            depth: 0,
            changes: ChangeLog::default(),
        };
        store.init_standard_pricebook();
        store
    }

    /// A store holding previously saved data.
    pub fn with_data(schema: Arc<Schema>, data: StoreData) -> Self {
        let mut store = Self {
            schema,
            data,
            user_id: ids::make_id("005", 1),
            index: Index::new(),
            journal: Vec::new(),
            depth: 0,
            changes: ChangeLog::default(),
        };
        let all: Vec<(String, String, Record)> = store
            .data
            .tables
            .iter()
            .flat_map(|(obj, t)| {
                t.iter()
                    .map(move |(id, r)| (obj.clone(), id.clone(), r.clone()))
            })
            .collect();
        for (obj, id, rec) in all {
            store.index_add(&obj, &id, &rec);
        }
        store
    }

    /// Whether `field` (schema spelling) of `obj` is kept in the index.
    fn is_indexed(&self, obj: &str, field: &str) -> bool {
        self.schema
            .object(obj)
            .and_then(|d| d.fields.iter().find(|f| f.name == field))
            .is_some_and(|f| f.external_id || f.unique)
    }

    fn index_add(&mut self, obj: &str, id: &str, rec: &Record) {
        // The schema is shared and immutable: hold our own handle so its field list can be
        // walked while the index changes (no per-write copy of the field names).
        let schema = Arc::clone(&self.schema);
        let Some(def) = schema.object(obj) else {
            return;
        };
        for field in def.fields.iter().filter(|f| f.external_id || f.unique) {
            if let Some(v) = rec.get(&field.name).and_then(text_of) {
                self.index
                    .entry(obj.to_owned())
                    .or_default()
                    .entry(field.name.clone())
                    .or_default()
                    .entry(v.to_lowercase())
                    .or_default()
                    .push(id.to_owned());
            }
        }
    }

    pub(super) fn index_remove(&mut self, obj: &str, id: &str, rec: &Record) {
        let schema = Arc::clone(&self.schema);
        let Some(def) = schema.object(obj) else {
            return;
        };
        for field in def.fields.iter().filter(|f| f.external_id || f.unique) {
            let Some(v) = rec.get(&field.name).and_then(text_of) else {
                continue;
            };
            if let Some(values) = self.index.get_mut(obj).and_then(|f| f.get_mut(&field.name)) {
                let key = v.to_lowercase();
                if let Some(list) = values.get_mut(&key) {
                    list.retain(|x| x != id);
                    if list.is_empty() {
                        values.remove(&key);
                    }
                }
            }
        }
    }

    /// Writes a record (insert or replace), keeping the index and the undo log.
    pub(super) fn put(&mut self, obj: &str, id: &str, mut rec: Record) {
        rec.shrink();
        let old = self.data.tables.get_mut(obj).and_then(|t| t.remove(id));
        if let Some(old) = &old {
            self.index_remove(obj, id, old);
        }
        self.index_add(obj, id, &rec);
        self.record_change(obj, id, old.as_ref(), Some(&rec));
        self.data
            .tables
            .entry(obj.to_owned())
            .or_default()
            .insert(id.to_owned(), rec);
        if self.depth > 0 {
            self.journal.push(match old {
                Some(old) => Undo::Replaced {
                    obj: obj.to_owned(),
                    id: id.to_owned(),
                    old,
                },
                None => Undo::Inserted {
                    obj: obj.to_owned(),
                    id: id.to_owned(),
                },
            });
        }
    }

    /// Deletes a record, keeping the index, the deleted list and the undo log.
    pub(super) fn remove(&mut self, obj: &str, id: &str) {
        let Some(old) = self.data.tables.get_mut(obj).and_then(|t| t.remove(id)) else {
            return;
        };
        self.index_remove(obj, id, &old);
        self.record_change(obj, id, Some(&old), None);
        self.data.deleted.insert(id.to_owned(), obj.to_owned());
        if self.depth > 0 {
            self.journal.push(Undo::Deleted {
                obj: obj.to_owned(),
                id: id.to_owned(),
                old,
            });
        }
    }

    fn init_standard_pricebook(&mut self) {
        if self.schema.object("Pricebook2").is_none() {
            return;
        }
        let mut rec = Record::new();
        rec.insert("Name", json!("Standard Price Book"));
        rec.insert("IsActive", json!(true));
        rec.insert("IsStandard", json!(true));
        self.insert_raw("Pricebook2", rec);
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn data(&self) -> &StoreData {
        &self.data
    }

    /// Live records held, over every object.
    pub fn record_count(&self) -> usize {
        self.data.tables.values().map(BTreeMap::len).sum()
    }

    /// A copy of the data (for the data file).
    pub fn snapshot(&self) -> StoreData {
        self.data.clone()
    }

    /// The id of the standard price book, if the schema has price books.
    pub fn standard_pricebook_id(&self) -> Option<String> {
        self.records("Pricebook2")
            .find(|(_, r)| r.get("IsStandard") == Some(&Value::Bool(true)))
            .map(|(id, _)| id.clone())
    }

    /// All live records of an object, in creation order.
    pub fn records<'a>(&'a self, obj: &str) -> impl Iterator<Item = (&'a String, &'a Record)> + 'a {
        self.data.tables.get(obj).into_iter().flat_map(|t| t.iter())
    }

    /// A live record by object and id as stored (no id normalization, no error detail): for
    /// callers that hold ids the store gave them.
    pub fn record(&self, obj: &str, id: &str) -> Option<&Record> {
        self.data.tables.get(obj)?.get(id)
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.data.next_id += 1;
        ids::make_id(prefix, self.data.next_id)
    }

    /// Inserts without validation (system data like the standard price book, platform events).
    pub fn insert_raw(&mut self, obj: &str, mut rec: Record) -> String {
        let prefix = self
            .schema
            .object(obj)
            .map_or_else(|| "e00".to_owned(), |o| o.key_prefix.clone());
        let id = self.new_id(&prefix);
        let now = json!(sf_datetime(Utc::now()));
        rec.insert("Id", json!(id));
        rec.insert("IsDeleted", json!(false));
        rec.insert("CreatedDate", now.clone());
        rec.insert("LastModifiedDate", now.clone());
        rec.insert("SystemModstamp", now);
        rec.insert("CreatedById", json!(self.user_id));
        rec.insert("LastModifiedById", json!(self.user_id));
        self.put(obj, &id, rec);
        id
    }

    /// Looks a record up by id; the object is taken from the key prefix when `obj` is `None`.
    pub fn get(&self, obj: Option<&str>, id: &str) -> Result<(&ObjectDef, &Record), RecordError> {
        let not_found = || RecordError::new("NOT_FOUND", "The requested resource does not exist");
        let id = ids::normalize(id).ok_or_else(not_found)?;
        let def = match obj {
            Some(name) => self.schema.object(name).ok_or_else(|| invalid_type(name))?,
            None => self
                .schema
                .object_by_prefix(ids::prefix(&id))
                .ok_or_else(not_found)?,
        };
        if let Some(r) = self.data.tables.get(&def.name).and_then(|t| t.get(&id)) {
            return Ok((def, r));
        }
        if self.data.deleted.contains_key(&id) {
            return Err(RecordError::new("ENTITY_IS_DELETED", "entity is deleted"));
        }
        Err(not_found())
    }

    /// Ids of the records of `obj` whose `field` equals `value` (case-insensitive, as external
    /// ids match).
    pub fn find_by(&self, obj: &str, field: &str, value: &str) -> Vec<String> {
        if self.is_indexed(obj, field) {
            let mut found = self
                .index
                .get(obj)
                .and_then(|f| f.get(field))
                .and_then(|v| v.get(&value.to_lowercase()))
                .cloned()
                .unwrap_or_default();
            // Creation order, as a scan would give.
            found.sort();
            return found;
        }
        self.records(obj)
            .filter(|(_, r)| {
                r.get(field)
                    .and_then(text_of)
                    .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}
