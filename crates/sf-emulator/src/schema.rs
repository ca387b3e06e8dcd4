//! The object schema the emulator enforces: which sObjects exist, their key prefixes, and their
//! fields (type, required, external id, unique, picklist values, lookups).
//!
//! The built-in default (`default_schema.json`, also a template for your own file) holds the
//! objects an order integration touches. Names are matched case-insensitively, as Salesforce does,
//! and answered in their schema spelling.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The built-in schema, as shipped in `src/default_schema.json`.
pub const DEFAULT_SCHEMA_JSON: &str = include_str!("default_schema.json");

/// A field's data type (a subset of Salesforce's describe types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Id,
    String,
    Textarea,
    Phone,
    Url,
    Email,
    Picklist,
    Boolean,
    Double,
    Currency,
    Int,
    Percent,
    Date,
    Datetime,
    Reference,
    Autonumber,
}

impl FieldType {
    fn is_text(self) -> bool {
        matches!(
            self,
            Self::String | Self::Textarea | Self::Phone | Self::Url | Self::Email | Self::Picklist
        )
    }
}

/// One value of a picklist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PicklistValue {
    pub value: String,
    /// Status category (Order `Status`: `Draft` or `Activated`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// False when a record cannot be inserted with this value (an Order is inserted as Draft).
    #[serde(default = "yes")]
    pub insertable: bool,
    /// When true, an update that sets this value may change no other field (Order activation).
    #[serde(default)]
    pub sole_field_on_update: bool,
}

fn yes() -> bool {
    true
}

/// One field of an object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Must be non-null on insert (unless `default` is set) and cannot be cleared.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub external_id: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub picklist_values: Vec<PicklistValue>,
    /// Only listed picklist values are accepted.
    #[serde(default)]
    pub restricted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default = "yes")]
    pub createable: bool,
    #[serde(default = "yes")]
    pub updateable: bool,
    /// Maximum text length (default 255 for text fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Significant digits of a number field, as describe reports them (`int`: its `digits`).
    /// Default: 18 (`int`: 9), Salesforce's for standard number and currency fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// Digits after the point of a `double`, `currency` or `percent` field. Default: 2 for
    /// currency and percent, 0 for double.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
}

impl FieldDef {
    fn system(name: &str, ty: FieldType, reference_to: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            ty,
            required: false,
            external_id: false,
            unique: false,
            reference_to: reference_to.map(str::to_owned),
            relationship_name: None,
            picklist_values: Vec::new(),
            restricted: false,
            default: None,
            createable: false,
            updateable: false,
            length: None,
            precision: None,
            scale: None,
        }
    }

    /// (precision, scale) of a number field, as describe reports them; `None` for other types.
    pub fn digits(&self) -> Option<(u32, u32)> {
        let (precision, scale) = match self.ty {
            FieldType::Currency | FieldType::Percent => (18, 2),
            FieldType::Double => (18, 0),
            FieldType::Int => (9, 0),
            _ => return None,
        };
        let scale = if self.ty == FieldType::Int {
            0
        } else {
            self.scale.unwrap_or(scale)
        };
        Some((self.precision.unwrap_or(precision), scale))
    }

    /// Maximum text length, for text types.
    pub fn max_length(&self) -> Option<usize> {
        if self.ty.is_text() {
            Some(self.length.unwrap_or(255))
        } else {
            None
        }
    }

    /// Whether a value must be given on insert.
    pub fn required_on_insert(&self) -> bool {
        self.required && self.default.is_none() && self.ty != FieldType::Autonumber
    }
}

/// One sObject type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectDef {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    pub key_prefix: String,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

impl ObjectDef {
    /// The field named `name`, case-insensitively.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The lookup field whose relationship name is `name` (`Account` → `AccountId`).
    pub fn relationship(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| {
            f.ty == FieldType::Reference
                && f.relationship_name
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(name))
        })
    }
}

/// A platform event (`Name__e`): published over REST or Pub/Sub, delivered on `/event/Name__e`.
/// Its fields are the custom ones; `CreatedDate` and `CreatedById` are added to every event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDef {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

/// The whole schema file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaFile {
    pub objects: Vec<ObjectDef>,
    #[serde(default)]
    pub platform_events: Vec<EventDef>,
}

/// Why a schema could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid schema JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid schema: {0}")]
    Invalid(String),
}

/// The loaded schema, with lookups by name and key prefix.
#[derive(Debug, Clone)]
pub struct Schema {
    objects: Vec<ObjectDef>,
    platform_events: Vec<EventDef>,
    by_name: HashMap<String, usize>,
    /// The same, by the schema's own spelling: the store asks by it on every record write, and
    /// this spares lower-casing (an allocation) each time.
    by_exact_name: HashMap<String, usize>,
    by_prefix: HashMap<String, usize>,
}

impl Schema {
    /// The built-in default schema.
    pub fn builtin() -> Result<Self, SchemaError> {
        Self::from_json(DEFAULT_SCHEMA_JSON)
    }

    /// Loads a schema file (JSON, same shape as `default_schema.json`).
    pub fn from_file(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and checks a schema, adding the system fields every object has.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let file: SchemaFile = serde_json::from_str(text)?;
        let mut objects = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_exact_name = HashMap::new();
        let mut by_prefix = HashMap::new();
        for mut obj in file.objects {
            if obj.key_prefix.len() != 3
                || !obj.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(SchemaError::Invalid(format!(
                    "object {}: key_prefix must be 3 letters or digits",
                    obj.name
                )));
            }
            let mut fields = vec![
                FieldDef::system("Id", FieldType::Id, None),
                FieldDef::system("IsDeleted", FieldType::Boolean, None),
                FieldDef::system("CreatedDate", FieldType::Datetime, None),
                FieldDef::system("CreatedById", FieldType::Reference, Some("User")),
                FieldDef::system("LastModifiedDate", FieldType::Datetime, None),
                FieldDef::system("LastModifiedById", FieldType::Reference, Some("User")),
                FieldDef::system("SystemModstamp", FieldType::Datetime, None),
            ];
            for f in obj.fields.drain(..) {
                if fields
                    .iter()
                    .any(|g: &FieldDef| g.name.eq_ignore_ascii_case(&f.name))
                {
                    return Err(SchemaError::Invalid(format!(
                        "object {}: field {} defined twice (system fields are added automatically)",
                        obj.name, f.name
                    )));
                }
                if f.ty == FieldType::Reference && f.reference_to.is_none() {
                    return Err(SchemaError::Invalid(format!(
                        "object {}: reference field {} needs reference_to",
                        obj.name, f.name
                    )));
                }
                let mut f = f;
                if f.ty == FieldType::Autonumber {
                    f.createable = false;
                    f.updateable = false;
                }
                fields.push(f);
            }
            obj.fields = fields;
            let idx = objects.len();
            if by_name.insert(obj.name.to_ascii_lowercase(), idx).is_some() {
                return Err(SchemaError::Invalid(format!(
                    "object {} defined twice",
                    obj.name
                )));
            }
            by_exact_name.insert(obj.name.clone(), idx);
            if by_prefix.insert(obj.key_prefix.clone(), idx).is_some() {
                return Err(SchemaError::Invalid(format!(
                    "key prefix {} used twice",
                    obj.key_prefix
                )));
            }
            objects.push(obj);
        }
        for event in &file.platform_events {
            if !event.name.ends_with("__e") {
                return Err(SchemaError::Invalid(format!(
                    "platform event {}: the name must end in __e",
                    event.name
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for f in &event.fields {
                if !seen.insert(f.name.to_ascii_lowercase())
                    || ["createddate", "createdbyid"]
                        .contains(&f.name.to_ascii_lowercase().as_str())
                {
                    return Err(SchemaError::Invalid(format!(
                        "platform event {}: field {} defined twice (CreatedDate and CreatedById are added automatically)",
                        event.name, f.name
                    )));
                }
            }
        }
        let schema = Self {
            objects,
            platform_events: file.platform_events,
            by_name,
            by_exact_name,
            by_prefix,
        };
        for obj in &schema.objects {
            for f in &obj.fields {
                if let Some(target) = &f.reference_to
                    && target != "User"
                    && schema.object(target).is_none()
                {
                    return Err(SchemaError::Invalid(format!(
                        "object {}: field {} references unknown object {target}",
                        obj.name, f.name
                    )));
                }
            }
        }
        Ok(schema)
    }

    /// The object named `name`, case-insensitively.
    pub fn object(&self, name: &str) -> Option<&ObjectDef> {
        self.by_exact_name
            .get(name)
            .or_else(|| self.by_name.get(&name.to_ascii_lowercase()))
            .and_then(|&i| self.objects.get(i))
    }

    /// The object whose ids start with `prefix`.
    pub fn object_by_prefix(&self, prefix: &str) -> Option<&ObjectDef> {
        self.by_prefix
            .get(prefix)
            .and_then(|&i| self.objects.get(i))
    }

    /// All objects, in schema order.
    pub fn objects(&self) -> &[ObjectDef] {
        &self.objects
    }

    /// The platform event named `name`, case-insensitively.
    pub fn platform_event(&self, name: &str) -> Option<&EventDef> {
        self.platform_events
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// All platform events, in schema order.
    pub fn platform_events(&self) -> &[EventDef] {
        &self.platform_events
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn builtin_schema_loads_with_required_objects() {
        let s = Schema::builtin().unwrap();
        for name in [
            "Account",
            "Contact",
            "Product2",
            "Pricebook2",
            "PricebookEntry",
            "Order",
            "OrderItem",
            "Case",
        ] {
            assert!(s.object(name).is_some(), "{name}");
        }
        let order = s.object("order").unwrap();
        assert_eq!(order.key_prefix, "801");
        assert!(order.field("external_id__c").unwrap().external_id);
        assert_eq!(order.relationship("account").unwrap().name, "AccountId");
    }

    #[test]
    fn schema_errors_are_reported() {
        assert!(Schema::from_json("{").is_err());
        let dup =
            r#"{"objects":[{"name":"A","key_prefix":"a00"},{"name":"B","key_prefix":"a00"}]}"#;
        assert!(
            Schema::from_json(dup)
                .unwrap_err()
                .to_string()
                .contains("a00")
        );
        let bad_ref = r#"{"objects":[{"name":"A","key_prefix":"a00","fields":[{"name":"X","type":"reference","reference_to":"Nope"}]}]}"#;
        assert!(
            Schema::from_json(bad_ref)
                .unwrap_err()
                .to_string()
                .contains("Nope")
        );
    }
}
