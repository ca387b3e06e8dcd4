//! Record-level checks on a record as it would be after a write: required fields, unique
//! values, picklist values that cannot be inserted or must be set alone, then the object rules
//! (`objects`).
//!
//! These need the whole record and the rest of the org, so they run after the field-level
//! checks (`fields`) have turned the body into typed changes.

use serde_json::Value;

use crate::reply::RecordError;
use crate::schema::ObjectDef;

use super::fields::Mode;
use super::records::{Record, Store, text_of};

impl Store {
    /// Required fields, unique values, picklist insert rules and object-specific rules on the
    /// record as it would be after the write.
    pub(super) fn validate(
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
}
