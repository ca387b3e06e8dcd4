//! The writes of the data API. Create and update run the same stages in the same order: field
//! checks (`fields`), derived values (`objects`), record rules (`validate`), the injected lock
//! check (`locks`), then the write (`records`) and the order roll-up (`objects`). Delete checks
//! the lock and the objects' delete rules, then cascades.
//!
//! One file for the three so the order of the stages, which decides which error a bad request
//! gets, can be read in one place. Upsert by external id picks create or update (`upsert`).

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::{FieldType, ObjectDef};

use super::fields::Mode;
use super::locks::{Locks, check_lock, lock_keys};
use super::objects::line_total;
use super::records::{Record, Store, invalid_type, sf_datetime};

impl Store {
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
                keys.extend(lock_keys(pdef, id, Some(prec)));
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
                rec.insert(&f.name, d.clone());
            }
        }
        for (k, v) in &changes {
            rec.insert(k, v.clone());
        }
        self.derive(def, &mut rec)?;
        self.validate(def, None, &rec, &changes, Mode::Insert)?;
        let parent_keys = self.parent_keys(def, &changes);
        if !parent_keys.is_empty() {
            check_lock(locks, &parent_keys, &parent_keys[0])?;
        }
        for f in def.fields.iter().filter(|f| f.ty == FieldType::Autonumber) {
            let counter = self
                .data
                .autonumbers
                .entry(format!("{}.{}", def.name, f.name))
                .or_insert(99);
            *counter += 1;
            rec.insert(&f.name, json!(format!("{:08}", *counter)));
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
        let keys = lock_keys(def, &id, Some(&current));
        let old_total = line_total(&current);
        let mut rec = current;
        for (k, v) in &changes {
            rec.insert(k, v.clone());
        }
        self.derive(def, &mut rec)?;
        self.validate(def, Some(&id), &rec, &changes, Mode::Update)?;
        check_lock(locks, &keys, &id)?;
        let now = json!(sf_datetime(Utc::now()));
        rec.insert("LastModifiedDate", now.clone());
        rec.insert("SystemModstamp", now);
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
            (def.name.clone(), id.clone(), lock_keys(def, &id, Some(rec)))
        };
        check_lock(locks, &keys, &id)?;
        self.check_deletable(&def_name, &id)?;
        let old = self
            .data
            .tables
            .get(&def_name)
            .and_then(|t| t.get(&id))
            .cloned();
        self.remove(&def_name, &id);
        self.after_delete(&def_name, &id, old);
        Ok(id)
    }
}
