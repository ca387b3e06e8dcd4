//! A stored record in the shape the REST API answers with (`attributes` first).
//!
//! Separate from storage because the shape depends on the request (API version in the URLs,
//! `?fields=`), not on the data.

use serde_json::{Map, Value, json};

use crate::schema::ObjectDef;

use super::records::Record;

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
