//! Field-level checks of a request body: every key must name a writable field (or a
//! relationship given by external id), and every value is converted to what its field stores,
//! with Salesforce's error codes (`INVALID_FIELD`, `JSON_PARSER_ERROR`, `STRING_TOO_LONG`,
//! `MALFORMED_ID`, `INVALID_CROSS_REFERENCE_KEY`, …).
//!
//! The output, a list of changes, is what the record-level rules (`validate`, `objects`) and the
//! writes (`dml`) work from.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value, json};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::{FieldDef, FieldType, ObjectDef};

use super::records::{Store, invalid_type, sf_datetime, text_of};

/// Which kind of write a body is checked for (`createable` vs `updateable` fields, insert-only
/// rules).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Insert,
    Update,
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

impl Store {
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
    pub(super) fn prepare(
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
}
