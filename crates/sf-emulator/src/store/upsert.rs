//! Upsert by external id (`PATCH /sobjects/{o}/{field}/{value}` and the Collections upsert):
//! no match creates, one match updates, several matches are reported (the API answers 300 with
//! their URLs), and a value in the body must agree with the one in the URL.
//!
//! Matching is case-insensitive and goes through the index, so an upsert costs the same however
//! many records the org holds.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::ids;
use crate::reply::RecordError;
use crate::schema::FieldType;

use super::locks::Locks;
use super::records::{Store, invalid_type, text_of};

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

impl Store {
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
}
