//! The in-memory org: records per object, validated against the [`Schema`] the way Salesforce
//! validates DML (field existence, types, required fields, restricted picklists, unique external
//! ids, lookups, external-id relationship references), with Salesforce's error codes.
//!
//! Everything here is synchronous and runs under the emulator's single state lock, so a
//! Collections or Composite call with `allOrNone` rolls back by restoring a snapshot
//! ([`Store::snapshot`] / [`Store::restore`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::{FieldDef, FieldType, ObjectDef, Schema};

/// A record: field name (schema spelling) → JSON value.
pub type Record = Map<String, Value>;

/// The mutable part of the store (what a snapshot copies and a data file holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreData {
    /// Object name → id → record.
    tables: BTreeMap<String, BTreeMap<String, Record>>,
    /// Deleted id → object name, so reads answer ENTITY_IS_DELETED rather than NOT_FOUND.
    deleted: BTreeMap<String, String>,
    next_id: u64,
    /// "Object.Field" → last auto-number issued.
    autonumbers: BTreeMap<String, u64>,
}

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

/// Outcome of an upsert.
#[derive(Debug)]
pub struct Upserted {
    pub id: String,
    pub created: bool,
}

/// Why an upsert failed.
#[derive(Debug)]
pub enum UpsertError {
    /// The external-id field does not exist (404 NOT_FOUND).
    UnknownField,
    /// Several records match (300 with their URLs).
    Multiple(Vec<String>),
    Record(RecordError),
}

impl From<RecordError> for UpsertError {
    fn from(e: RecordError) -> Self {
        Self::Record(e)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Insert,
    Update,
}

/// One change, recorded while a transaction is open so it can be undone.
#[derive(Debug, Clone)]
enum Undo {
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
    schema: Arc<Schema>,
    data: StoreData,
    user_id: String,
    index: Index,
    /// Undo log of the open transactions (`allOrNone`), innermost last.
    journal: Vec<Undo>,
    depth: usize,
}

/// Salesforce's datetime format in API responses.
pub fn sf_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

fn invalid_type(name: &str) -> RecordError {
    RecordError::new(
        "INVALID_TYPE",
        format!("sObject type '{name}' is not supported."),
    )
}

fn no_such_column(field: &str, obj: &str) -> RecordError {
    RecordError::new(
        "INVALID_FIELD",
        format!("No such column '{field}' on sobject of type {obj}"),
    )
    .with_fields(vec![field.to_owned()])
}

fn parse_error(ty: &str, v: &Value) -> RecordError {
    RecordError::new(
        "JSON_PARSER_ERROR",
        format!(
            "Cannot deserialize instance of {ty} from VALUE_STRING value {v} or request may be missing a required field"
        ),
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

    fn index_remove(&mut self, obj: &str, id: &str, rec: &Record) {
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
    fn put(&mut self, obj: &str, id: &str, rec: Record) {
        let old = self.data.tables.get_mut(obj).and_then(|t| t.remove(id));
        if let Some(old) = &old {
            self.index_remove(obj, id, old);
        }
        self.index_add(obj, id, &rec);
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
    fn remove(&mut self, obj: &str, id: &str) {
        let Some(old) = self.data.tables.get_mut(obj).and_then(|t| t.remove(id)) else {
            return;
        };
        self.index_remove(obj, id, &old);
        self.data.deleted.insert(id.to_owned(), obj.to_owned());
        if self.depth > 0 {
            self.journal.push(Undo::Deleted {
                obj: obj.to_owned(),
                id: id.to_owned(),
                old,
            });
        }
    }

    /// Opens a (possibly nested) transaction; returns its savepoint.
    pub fn begin(&mut self) -> usize {
        self.depth += 1;
        self.journal.len()
    }

    /// Keeps the changes since `savepoint`.
    pub fn commit(&mut self, savepoint: usize) {
        let _ = savepoint;
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
        self.depth = depth.saturating_sub(1);
        if self.depth == 0 {
            self.journal.clear();
        }
    }

    fn init_standard_pricebook(&mut self) {
        if self.schema.object("Pricebook2").is_none() {
            return;
        }
        let mut rec = Record::new();
        rec.insert("Name".into(), json!("Standard Price Book"));
        rec.insert("IsActive".into(), json!(true));
        rec.insert("IsStandard".into(), json!(true));
        self.insert_raw("Pricebook2", rec);
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn data(&self) -> &StoreData {
        &self.data
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
        rec.insert("Id".into(), json!(id));
        rec.insert("IsDeleted".into(), json!(false));
        rec.insert("CreatedDate".into(), now.clone());
        rec.insert("LastModifiedDate".into(), now.clone());
        rec.insert("SystemModstamp".into(), now);
        rec.insert("CreatedById".into(), json!(self.user_id));
        rec.insert("LastModifiedById".into(), json!(self.user_id));
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

    /// The keys a lock fault can name for a record: its Id and its external-id values.
    fn lock_keys(def: &ObjectDef, id: &str, rec: Option<&Record>) -> Vec<String> {
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

    fn check_lock(locks: &mut Locks, keys: &[String], id: &str) -> Result<(), RecordError> {
        match locks.check(keys) {
            Some(_) => Err(RecordError::new(
                "UNABLE_TO_LOCK_ROW",
                format!("unable to obtain exclusive access to this record or 1 records: {id}"),
            )),
            None => Ok(()),
        }
    }

    /// Converts a JSON value to what `field` stores, with Salesforce's errors.
    fn coerce(&self, field: &FieldDef, v: &Value) -> Result<Value, RecordError> {
        if v.is_null() {
            return Ok(match field.ty {
                FieldType::Boolean => Value::Bool(false),
                _ => Value::Null,
            });
        }
        match field.ty {
            FieldType::String
            | FieldType::Textarea
            | FieldType::Phone
            | FieldType::Url
            | FieldType::Email
            | FieldType::Picklist => {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(parse_error("String", v)),
                };
                if s.is_empty() {
                    // Salesforce stores an empty string as null.
                    return Ok(Value::Null);
                }
                if let Some(max) = field.max_length()
                    && s.chars().count() > max
                {
                    return Err(RecordError::new(
                        "STRING_TOO_LONG",
                        format!(
                            "{}: data value too large: {s} (max length={max})",
                            field.name
                        ),
                    )
                    .with_fields(vec![field.name.clone()]));
                }
                if field.ty == FieldType::Email && !(s.contains('@') && s.contains('.')) {
                    return Err(RecordError::new(
                        "INVALID_EMAIL_ADDRESS",
                        format!("{}: invalid email address: {s}", field.name),
                    )
                    .with_fields(vec![field.name.clone()]));
                }
                if field.ty == FieldType::Picklist && field.restricted {
                    return match field
                        .picklist_values
                        .iter()
                        .find(|p| p.value.eq_ignore_ascii_case(&s))
                    {
                        Some(p) => Ok(json!(p.value)),
                        None => Err(RecordError::new(
                            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                            format!(
                                "{}: bad value for restricted picklist field: {s}",
                                field.name
                            ),
                        )
                        .with_fields(vec![field.name.clone()])),
                    };
                }
                Ok(json!(s))
            }
            FieldType::Boolean => match v {
                Value::Bool(b) => Ok(json!(b)),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(json!(true)),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(json!(false)),
                _ => Err(parse_error("boolean", v)),
            },
            FieldType::Double | FieldType::Currency | FieldType::Percent | FieldType::Int => {
                let n = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .filter(|n| n.is_finite())
                .ok_or_else(|| parse_error("double", v))?;
                if field.ty == FieldType::Int {
                    if n.fract() != 0.0 {
                        return Err(parse_error("int", v));
                    }
                    // Integral and finite: the cast is exact for any value Salesforce accepts.
                    return Ok(json!(n as i64));
                }
                Ok(json!(n))
            }
            FieldType::Date => {
                let s = v.as_str().ok_or_else(|| parse_error("date", v))?;
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| json!(d.format("%Y-%m-%d").to_string()))
                    .map_err(|_| parse_error("date", v))
            }
            FieldType::Datetime => {
                let s = v.as_str().ok_or_else(|| parse_error("datetime", v))?;
                DateTime::parse_from_rfc3339(s)
                    .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
                    .map(|d| json!(sf_datetime(d.with_timezone(&Utc))))
                    .map_err(|_| parse_error("datetime", v))
            }
            FieldType::Reference => {
                let s = v.as_str().ok_or_else(|| parse_error("reference", v))?;
                self.check_reference(field, s)
            }
            FieldType::Id | FieldType::Autonumber => Err(not_writable(field)),
        }
    }

    /// Checks a lookup id: well formed, of the right object, existing.
    fn check_reference(&self, field: &FieldDef, s: &str) -> Result<Value, RecordError> {
        let target = field.reference_to.as_deref().unwrap_or_default();
        let label = field.relationship_name.as_deref().unwrap_or(&field.name);
        let Some(id) = ids::normalize(s) else {
            return Err(RecordError::new(
                "MALFORMED_ID",
                format!("{label} ID: id value of incorrect type: {s}"),
            )
            .with_fields(vec![field.name.clone()]));
        };
        let target_def = self.schema.object(target);
        if target_def.is_some_and(|t| t.key_prefix != ids::prefix(&id)) {
            return Err(RecordError::new(
                "FIELD_INTEGRITY_EXCEPTION",
                format!("{label} ID: id value of incorrect type: {s}"),
            )
            .with_fields(vec![field.name.clone()]));
        }
        if target_def.is_some() && self.get(Some(target), &id).is_err() {
            let code = if self.data.deleted.contains_key(&id) {
                "ENTITY_IS_DELETED"
            } else {
                "INVALID_CROSS_REFERENCE_KEY"
            };
            return Err(
                RecordError::new(code, format!("invalid cross reference id: {s}"))
                    .with_fields(vec![field.name.clone()]),
            );
        }
        Ok(json!(id))
    }

    /// Resolves `"Account": {"External_Id__c": "C-1"}` to the Account's id.
    fn resolve_relationship(
        &self,
        field: &FieldDef,
        key: &str,
        v: &Value,
    ) -> Result<Value, RecordError> {
        let target = field.reference_to.as_deref().unwrap_or_default();
        let target_def = self
            .schema
            .object(target)
            .ok_or_else(|| invalid_type(target))?;
        let Some(obj) = v.as_object() else {
            return Err(parse_error(target, v));
        };
        let keys: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| *k != "attributes").collect();
        let [(ext_name, ext_value)] = keys.as_slice() else {
            return Err(RecordError::new(
                "INVALID_FIELD",
                format!("The relationship {key} must name exactly one external ID field"),
            )
            .with_fields(vec![key.to_owned()]));
        };
        let ext_def = target_def
            .field(ext_name)
            .ok_or_else(|| no_such_column(ext_name, target))?;
        if !ext_def.external_id && ext_def.ty != FieldType::Id {
            return Err(RecordError::new(
                "INVALID_FIELD",
                format!(
                    "Field {} is not an External ID or indexed field for {target}",
                    ext_def.name
                ),
            )
            .with_fields(vec![ext_def.name.clone()]));
        }
        let value = text_of(ext_value).unwrap_or_default();
        let matches = if ext_def.ty == FieldType::Id {
            ids::normalize(&value)
                .filter(|id| self.get(Some(target), id).is_ok())
                .into_iter()
                .collect()
        } else {
            self.find_by(&target_def.name, &ext_def.name, &value)
        };
        match matches.as_slice() {
            [id] => Ok(json!(id)),
            [] => Err(RecordError::new(
                "INVALID_FIELD",
                format!(
                    "Foreign key external ID: {value} not found for field {} in entity {}",
                    ext_def.name, target_def.name
                ),
            )
            .with_fields(vec![key.to_owned()])),
            _ => Err(RecordError::new(
                "INVALID_FIELD",
                format!(
                    "Foreign key external ID: {value} matched more than one record for field {} in entity {}",
                    ext_def.name, target_def.name
                ),
            )
            .with_fields(vec![key.to_owned()])),
        }
    }

    /// Validates a request body into the field values to write.
    fn prepare(
        &self,
        def: &ObjectDef,
        body: &Map<String, Value>,
        mode: Mode,
    ) -> Result<Vec<(String, Value)>, RecordError> {
        let mut out: Vec<(String, Value)> = Vec::new();
        for (key, v) in body {
            if key == "attributes" {
                continue;
            }
            if key.eq_ignore_ascii_case("Id") {
                if mode == Mode::Insert {
                    return Err(RecordError::new(
                        "INVALID_FIELD",
                        "Cannot specify Id in an insert call",
                    )
                    .with_fields(vec!["Id".into()]));
                }
                // An update body may repeat the Id (Collections requires it); the caller checks it.
                continue;
            }
            if let Some(field) = def.field(key) {
                let writable = match mode {
                    Mode::Insert => field.createable,
                    Mode::Update => field.updateable,
                };
                if !writable {
                    return Err(not_writable(field));
                }
                let value = self.coerce(field, v)?;
                out.push((field.name.clone(), value));
            } else if let Some(field) = def.relationship(key) {
                if v.is_object() {
                    let writable = match mode {
                        Mode::Insert => field.createable,
                        Mode::Update => field.updateable,
                    };
                    if !writable {
                        return Err(not_writable(field));
                    }
                    let value = self.resolve_relationship(field, key, v)?;
                    out.push((field.name.clone(), value));
                } else {
                    return Err(no_such_column(key, &def.name));
                }
            } else {
                return Err(no_such_column(key, &def.name));
            }
        }
        Ok(out)
    }

    /// Required fields, unique values, picklist insert rules and object-specific rules on the
    /// record as it would be after the write.
    fn validate(
        &self,
        def: &ObjectDef,
        id: Option<&str>,
        rec: &Record,
        changes: &[(String, Value)],
        mode: Mode,
    ) -> Result<(), RecordError> {
        let missing: Vec<String> = def
            .fields
            .iter()
            .filter(|f| f.required && rec.get(&f.name).is_none_or(Value::is_null))
            .filter(|f| mode == Mode::Update || f.required_on_insert())
            .map(|f| f.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(RecordError::new(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
            )
            .with_fields(missing));
        }
        for f in def.fields.iter().filter(|f| f.unique) {
            let Some(value) = rec.get(&f.name).and_then(text_of) else {
                continue;
            };
            if let Some(other) = self
                .find_by(&def.name, &f.name, &value)
                .into_iter()
                .find(|other| Some(other.as_str()) != id)
            {
                return Err(RecordError::new(
                    "DUPLICATE_VALUE",
                    format!(
                        "duplicate value found: {} duplicates value on record with id: {other}",
                        f.name
                    ),
                )
                .with_fields(vec![f.name.clone()]));
            }
        }
        for (name, value) in changes {
            let Some(field) = def.field(name) else {
                continue;
            };
            let Some(pv) = value
                .as_str()
                .and_then(|s| field.picklist_values.iter().find(|p| p.value == s))
            else {
                continue;
            };
            if mode == Mode::Insert && !pv.insertable {
                return Err(RecordError::new(
                    "FIELD_INTEGRITY_EXCEPTION",
                    format!(
                        "{}: you can't insert a record with the value '{}': insert it with a Draft value, then update {} alone",
                        field.name, pv.value, field.name
                    ),
                )
                .with_fields(vec![field.name.clone()]));
            }
            if mode == Mode::Update && pv.sole_field_on_update && changes.len() > 1 {
                return Err(RecordError::new(
                    "FIELD_INTEGRITY_EXCEPTION",
                    format!(
                        "{}: setting '{}' must be an update of {} alone; update the other fields first",
                        field.name, pv.value, field.name
                    ),
                )
                .with_fields(vec![field.name.clone()]));
            }
        }
        self.object_rules(def, id, rec, mode)
    }

    /// Rules of standard objects that an order integration runs into.
    fn object_rules(
        &self,
        def: &ObjectDef,
        id: Option<&str>,
        rec: &Record,
        mode: Mode,
    ) -> Result<(), RecordError> {
        let str_of = |r: &Record, f: &str| r.get(f).and_then(Value::as_str).map(str::to_owned);
        match def.name.as_str() {
            "PricebookEntry" if mode == Mode::Insert => {
                let (Some(pb), Some(product)) =
                    (str_of(rec, "Pricebook2Id"), str_of(rec, "Product2Id"))
                else {
                    return Ok(());
                };
                let existing: Vec<&Record> = self
                    .records("PricebookEntry")
                    .filter(|(other, _)| Some(other.as_str()) != id)
                    .map(|(_, r)| r)
                    .filter(|r| str_of(r, "Product2Id").as_deref() == Some(product.as_str()))
                    .collect();
                if existing
                    .iter()
                    .any(|r| str_of(r, "Pricebook2Id").as_deref() == Some(pb.as_str()))
                {
                    return Err(RecordError::new(
                        "DUPLICATE_VALUE",
                        "This price definition already exists in this price book",
                    ));
                }
                let standard = self.standard_pricebook_id();
                if standard.as_deref() != Some(pb.as_str())
                    && !existing
                        .iter()
                        .any(|r| str_of(r, "Pricebook2Id") == standard)
                {
                    return Err(RecordError::new(
                        "STANDARD_PRICE_NOT_DEFINED",
                        "No standard price defined for this product",
                    ));
                }
                Ok(())
            }
            "OrderItem" if mode == Mode::Insert => {
                let (Some(order_id), Some(pbe_id)) =
                    (str_of(rec, "OrderId"), str_of(rec, "PricebookEntryId"))
                else {
                    return Ok(());
                };
                let order_pb = self
                    .get(Some("Order"), &order_id)
                    .ok()
                    .and_then(|(_, o)| str_of(o, "Pricebook2Id"));
                let entry_pb = self
                    .get(Some("PricebookEntry"), &pbe_id)
                    .ok()
                    .and_then(|(_, e)| str_of(e, "Pricebook2Id"));
                if order_pb.is_none() || order_pb != entry_pb {
                    return Err(RecordError::new(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "field integrity exception: PricebookEntryId (pricebook entry is in a different pricebook than the one assigned to the order, or Order has no pricebook assigned)",
                    )
                    .with_fields(vec!["PricebookEntryId".into()]));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Values derived from other records or fields (OrderItem.Product2Id from its price book
    /// entry, OrderItem.TotalPrice = Quantity × UnitPrice).
    fn derive(&self, def: &ObjectDef, rec: &mut Record) -> Result<(), RecordError> {
        if def.name == "OrderItem" && def.field("TotalPrice").is_some() {
            let total = line_total(rec);
            rec.insert("TotalPrice".into(), json!(total));
        }
        if def.name == "OrderItem"
            && let Some(pbe) = rec.get("PricebookEntryId").and_then(Value::as_str)
            && let Ok((_, entry)) = self.get(Some("PricebookEntry"), pbe)
            && let Some(product) = entry.get("Product2Id").cloned()
        {
            match rec.get("Product2Id") {
                Some(given) if !given.is_null() && *given != product => {
                    return Err(RecordError::new(
                        "FIELD_INTEGRITY_EXCEPTION",
                        "field integrity exception: Product2Id does not match the price book entry's product",
                    )
                    .with_fields(vec!["Product2Id".into()]));
                }
                _ => {
                    rec.insert("Product2Id".into(), product);
                }
            }
        }
        Ok(())
    }

    fn parent_keys(&self, def: &ObjectDef, changes: &[(String, Value)]) -> Vec<String> {
        let mut keys = Vec::new();
        for (name, value) in changes {
            let Some(field) = def.field(name) else {
                continue;
            };
            if field.ty != FieldType::Reference {
                continue;
            }
            if let Some(id) = value.as_str()
                && let Ok((pdef, prec)) = self.get(None, id)
            {
                keys.extend(Self::lock_keys(pdef, id, Some(prec)));
            }
        }
        keys
    }

    /// Inserts a record from a request body; returns its id.
    pub fn create(
        &mut self,
        locks: &mut Locks,
        obj: &str,
        body: &Map<String, Value>,
    ) -> Result<String, RecordError> {
        let schema = Arc::clone(&self.schema);
        let def = schema.object(obj).ok_or_else(|| invalid_type(obj))?;
        let changes = self.prepare(def, body, Mode::Insert)?;
        let mut rec = Record::new();
        for f in &def.fields {
            if let Some(d) = &f.default {
                rec.insert(f.name.clone(), d.clone());
            }
        }
        for (k, v) in &changes {
            rec.insert(k.clone(), v.clone());
        }
        self.derive(def, &mut rec)?;
        self.validate(def, None, &rec, &changes, Mode::Insert)?;
        let parent_keys = self.parent_keys(def, &changes);
        if !parent_keys.is_empty() {
            Self::check_lock(locks, &parent_keys, &parent_keys[0])?;
        }
        for f in def.fields.iter().filter(|f| f.ty == FieldType::Autonumber) {
            let counter = self
                .data
                .autonumbers
                .entry(format!("{}.{}", def.name, f.name))
                .or_insert(99);
            *counter += 1;
            rec.insert(f.name.clone(), json!(format!("{:08}", *counter)));
        }
        let total = line_total(&rec);
        let order = rec
            .get("OrderId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = self.insert_raw(&def.name, rec);
        if def.name == "OrderItem"
            && let Some(order) = order
        {
            self.add_to_order_total(&order, total);
        }
        Ok(id)
    }

    /// Keeps `Order.TotalAmount` equal to the sum of its lines' `TotalPrice`, as Salesforce's
    /// roll-up does; incremental, so bulk loads stay linear.
    fn add_to_order_total(&mut self, order_id: &str, delta: f64) {
        if delta == 0.0
            || self
                .schema
                .object("Order")
                .and_then(|o| o.field("TotalAmount"))
                .is_none()
        {
            return;
        }
        // In place: TotalAmount is not indexed, so only the undo log needs the old version
        // (copying the whole order for every line made bulk loads allocation-bound).
        let in_transaction = self.depth > 0;
        let Some(order) = self
            .data
            .tables
            .get_mut("Order")
            .and_then(|t| t.get_mut(order_id))
        else {
            return;
        };
        let old = in_transaction.then(|| order.clone());
        let current = order
            .get("TotalAmount")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        // Currency: keep cents exact despite binary floating point.
        let total = ((current + delta) * 100.0).round() / 100.0;
        order.insert("TotalAmount".into(), json!(total));
        if let Some(old) = old {
            self.journal.push(Undo::Replaced {
                obj: "Order".to_owned(),
                id: order_id.to_owned(),
                old,
            });
        }
    }

    /// Updates a record from a request body.
    pub fn update(
        &mut self,
        locks: &mut Locks,
        obj: Option<&str>,
        id: &str,
        body: &Map<String, Value>,
    ) -> Result<String, RecordError> {
        let schema = Arc::clone(&self.schema);
        let (def_name, id, current) = {
            let (def, rec) = self.get(obj, id)?;
            (
                def.name.clone(),
                rec.get("Id")
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_owned(),
                rec.clone(),
            )
        };
        let def = schema
            .object(&def_name)
            .ok_or_else(|| invalid_type(&def_name))?;
        if let Some(body_id) = body
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
            .map(|(_, v)| v)
            && body_id.as_str().and_then(ids::normalize).as_deref() != Some(id.as_str())
        {
            return Err(RecordError::new(
                "INVALID_FIELD",
                "The Id in the body does not match the record being updated",
            )
            .with_fields(vec!["Id".into()]));
        }
        let changes = self.prepare(def, body, Mode::Update)?;
        // What the old version is needed for, taken before it becomes the new one (one copy
        // of the record per update, not two).
        let lock_keys = Self::lock_keys(def, &id, Some(&current));
        let old_total = line_total(&current);
        let mut rec = current;
        for (k, v) in &changes {
            rec.insert(k.clone(), v.clone());
        }
        self.derive(def, &mut rec)?;
        self.validate(def, Some(&id), &rec, &changes, Mode::Update)?;
        Self::check_lock(locks, &lock_keys, &id)?;
        let now = json!(sf_datetime(Utc::now()));
        rec.insert("LastModifiedDate".into(), now.clone());
        rec.insert("SystemModstamp".into(), now);
        let delta = line_total(&rec) - old_total;
        let order = rec
            .get("OrderId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.put(&def.name, &id, rec);
        if def.name == "OrderItem"
            && let Some(order) = order
        {
            self.add_to_order_total(&order, delta);
        }
        Ok(id)
    }

    /// Upsert by external id (`field` is the external-id field, `value` its value).
    pub fn upsert(
        &mut self,
        locks: &mut Locks,
        obj: &str,
        field: &str,
        value: &str,
        body: &Map<String, Value>,
        update_only: bool,
    ) -> Result<Upserted, UpsertError> {
        let schema = Arc::clone(&self.schema);
        let def = schema.object(obj).ok_or_else(|| invalid_type(obj))?;
        let fdef = def.field(field).ok_or(UpsertError::UnknownField)?;
        if fdef.ty == FieldType::Id {
            let id = ids::normalize(value).ok_or(UpsertError::UnknownField)?;
            let id = self.update(locks, Some(&def.name), &id, body)?;
            return Ok(Upserted { id, created: false });
        }
        if !fdef.external_id {
            return Err(RecordError::new(
                "INVALID_FIELD",
                format!(
                    "Field {} is not an External ID or indexed field for {}",
                    fdef.name, def.name
                ),
            )
            .with_fields(vec![fdef.name.clone()])
            .into());
        }
        let mut body = body.clone();
        let in_body = body
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&fdef.name))
            .cloned();
        if let Some(k) = in_body {
            let same = body
                .get(&k)
                .and_then(text_of)
                .is_some_and(|v| v.eq_ignore_ascii_case(value));
            if !same {
                return Err(RecordError::new(
                    "INVALID_FIELD",
                    format!(
                        "The value of {} in the body does not match the external id in the URL",
                        fdef.name
                    ),
                )
                .with_fields(vec![fdef.name.clone()])
                .into());
            }
            body.remove(&k);
        }
        let matches = self.find_by(&def.name, &fdef.name, value);
        match matches.as_slice() {
            [] if update_only => {
                Err(RecordError::new("NOT_FOUND", "The requested resource does not exist").into())
            }
            [] => {
                body.insert(fdef.name.clone(), json!(value));
                let id = self.create(locks, &def.name, &body)?;
                Ok(Upserted { id, created: true })
            }
            [id] => {
                let id = id.clone();
                let id = self.update(locks, Some(&def.name), &id, &body)?;
                Ok(Upserted { id, created: false })
            }
            _ => Err(UpsertError::Multiple(matches)),
        }
    }

    /// Deletes a record.
    pub fn delete(
        &mut self,
        locks: &mut Locks,
        obj: Option<&str>,
        id: &str,
    ) -> Result<String, RecordError> {
        let (def_name, id, keys) = {
            let (def, rec) = self.get(obj, id)?;
            let id = rec
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned();
            (
                def.name.clone(),
                id.clone(),
                Self::lock_keys(def, &id, Some(rec)),
            )
        };
        Self::check_lock(locks, &keys, &id)?;
        if def_name == "Pricebook2" && self.standard_pricebook_id().as_deref() == Some(id.as_str())
        {
            return Err(RecordError::new(
                "ENTITY_IS_LOCKED",
                "the standard price book cannot be deleted",
            ));
        }
        let old = self
            .data
            .tables
            .get(&def_name)
            .and_then(|t| t.get(&id))
            .cloned();
        self.remove(&def_name, &id);
        match def_name.as_str() {
            "OrderItem" => {
                if let Some(old) = old
                    && let Some(order) = old.get("OrderId").and_then(Value::as_str)
                {
                    self.add_to_order_total(order, -line_total(&old));
                }
            }
            // Order products are details of their order: deleting the order deletes them.
            "Order" => {
                let lines: Vec<String> = self
                    .records("OrderItem")
                    .filter(|(_, r)| r.get("OrderId").and_then(Value::as_str) == Some(id.as_str()))
                    .map(|(line, _)| line.clone())
                    .collect();
                for line in lines {
                    self.remove("OrderItem", &line);
                }
            }
            _ => {}
        }
        Ok(id)
    }
}

/// Quantity × UnitPrice of an order line, in cents-exact currency.
fn line_total(rec: &Record) -> f64 {
    let q = rec.get("Quantity").and_then(Value::as_f64).unwrap_or(0.0);
    let p = rec.get("UnitPrice").and_then(Value::as_f64).unwrap_or(0.0);
    ((q * p) * 100.0).round() / 100.0
}

fn not_writable(field: &FieldDef) -> RecordError {
    RecordError::new(
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        format!(
            "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
            field.name
        ),
    )
    .with_fields(vec![field.name.clone()])
}

/// A record as the REST API returns it: `attributes` first, then the requested fields (all
/// schema fields when `fields` is `None`).
pub fn render(def: &ObjectDef, rec: &Record, base: &str, fields: Option<&[String]>) -> Value {
    let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert(
        "attributes".into(),
        json!({"type": def.name, "url": format!("{base}/sobjects/{}/{id}", def.name)}),
    );
    match fields {
        Some(list) => {
            for f in list {
                let name = def.field(f).map_or(f.as_str(), |d| d.name.as_str());
                out.insert(
                    name.to_owned(),
                    rec.get(name).cloned().unwrap_or(Value::Null),
                );
            }
        }
        None => {
            for f in &def.fields {
                out.insert(
                    f.name.clone(),
                    rec.get(&f.name).cloned().unwrap_or(Value::Null),
                );
            }
        }
    }
    Value::Object(out)
}
