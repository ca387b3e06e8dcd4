//! The mapping from an order to Salesforce records: which objects, which fields, from which
//! parts of the order. A JSON file (`WORKER_MAPPING_FILE`) or the built-in default
//! ([`DEFAULT_MAPPING`]: Account + Order + OrderItem), checked when the worker starts.
//!
//! ```json
//! {
//!   "pricebook": null,                       // price book name; null = the org's standard one
//!   "account": {"sobject": "Account", "external_id_field": "External_Id__c",
//!               "key": "customer.external_id", "fields": {"Name": "customer.name"}},
//!   "order":   {"sobject": "Order", "external_id_field": "External_Id__c", "key": "id",
//!               "account_relationship": "Account", "pricebook_field": "Pricebook2Id",
//!               "fields": {"EffectiveDate": {"path": "created_at", "format": "date"},
//!                          "Status": {"const": "Draft"}}},
//!   "items":   {"sobject": "OrderItem", "external_id_field": "External_Id__c",
//!               "key": {"template": "{order.id}-{line_number}"}, "order_relationship": "Order",
//!               "pricebook_entry_field": "PricebookEntryId",
//!               "fields": {"Quantity": "quantity", "UnitPrice": {"path": "unit_price", "format": "number"}}}
//! }
//! ```
//!
//! A field's value is one of:
//! - `"customer.name"`: a path into the order (as the API returns it). In `items`, paths name the
//!   line (`sku`, `quantity`, `unit_price`, `line_number`…) and `order.<path>` reaches the order.
//! - `{"path": "…", "format": "date|datetime|number|integer|string", "max_length": N}`.
//! - `{"const": <any JSON value>}`.
//! - `{"template": "Order {client_ref} for {customer.name}", "max_length": N}`.
//!
//! A path whose value is absent (`null`, e.g. an order without `notes`) leaves the field out of
//! the record, so an upsert never blanks a field someone set in Salesforce. `account` and `items`
//! are optional: a mapping may write one record per order to any object, custom ones included
//! (e.g. a `Case` with `Division__c`), with only `order` present.
//!
//! Two processes read it: the sync worker writes records with it, and the operator CLI's
//! reconcile finds those records again by the same external ids. It is therefore a library of
//! its own, below both, rather than a module of either.
//!
//! - [`model`]: the compiled mapping ([`Mapping`], [`ObjectMapping`], [`Expr`]…).
//! - `file`: the JSON file format and its compilation into the model, with every problem named.
//! - `eval`: evaluating a mapping against one order ([`Scope`]).
//! - [`check_against_salesforce`]: the start-up check against the org's describe results.

mod eval;
mod file;
pub mod model;
mod salesforce;

use std::path::Path;

use orderbridge_domain::{NewOrder, NewOrderRequest, Order, SyncError};
use serde_json::{Value, json};

use file::{MappingFile, compile};

pub use model::{
    AccountMapping, Expr, Format, ItemsMapping, Mapping, ObjectMapping, OrderMapping, Scope,
    WriteMode,
};
pub use salesforce::check_against_salesforce;

/// The built-in mapping: Account by customer external id, Order by order id (Draft, in the
/// price book), OrderItem per line by `<order id>-<line number>`. Lengths follow the standard
/// fields' limits so a long city name is cut instead of failing the order with STRING_TOO_LONG.
pub const DEFAULT_MAPPING: &str = include_str!("default_mapping.json");

/// What is wrong with a mapping; every message names the place in the file.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read mapping file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {origin}: {path}: {message}")]
    Parse {
        origin: String,
        path: String,
        message: String,
    },
    #[error("mapping {origin}: {problems}")]
    Invalid { origin: String, problems: Problems },
}

/// The list of problems found by [`Mapping::check`] or the Salesforce check.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s): {}", self.0.len(), self.0.join("; "))
    }
}

impl Mapping {
    /// Reads `path`, or the built-in default when `None`, and checks it against the order model.
    pub fn load(path: Option<&Path>) -> Result<Self, MappingError> {
        match path {
            None => Self::parse(DEFAULT_MAPPING, "(built-in default)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| MappingError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Parses and checks a mapping document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, MappingError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: MappingFile =
            serde_path_to_error::deserialize(de).map_err(|e| MappingError::Parse {
                origin: origin.to_owned(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        let mut problems = Problems::default();
        let mapping = compile(file, &mut problems);
        if problems.0.is_empty()
            && let Some(mapping) = mapping
        {
            mapping.check_against_model(&mut problems);
            if problems.0.is_empty() {
                return Ok(mapping);
            }
        }
        Err(MappingError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// Every path must exist in the order model (checked on a fully populated sample order), so
    /// a typo fails at start-up instead of silently writing nothing.
    fn check_against_model(&self, problems: &mut Problems) {
        let order = sample_order();
        let line = order
            .get("lines")
            .and_then(|l| l.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        let mut check = |place: &str, expr: &Expr, line: Option<&Value>| {
            for path in expr.paths() {
                let scope = Scope {
                    order: &order,
                    line,
                };
                if scope.resolve(path).is_none() {
                    problems.0.push(format!(
                        "{place}: `{}` is not a field of the {}",
                        path.join("."),
                        if line.is_some() && path.first().map(String::as_str) != Some("order") {
                            "order line (use `order.<path>` for the order's fields)"
                        } else {
                            "order"
                        }
                    ));
                }
            }
        };
        if let Some(a) = &self.account {
            a.object
                .each_expr(|place, e| check(&format!("account.{place}"), e, None));
        }
        self.order
            .object
            .each_expr(|place, e| check(&format!("order.{place}"), e, None));
        if let Some(i) = &self.items {
            i.object
                .each_expr(|place, e| check(&format!("items.{place}"), e, Some(&line)));
        }
    }
}

/// A fully populated order (every optional field set), as JSON: what mapping paths are checked
/// against, made from the domain model so the check follows the model.
fn sample_order() -> Value {
    let req: Result<NewOrderRequest, _> = serde_json::from_value(json!({
        "client_ref": "PO-1",
        "customer": {"external_id": "C-1", "name": "n", "email": "e@x.example", "phone": "1"},
        "billing_address": {"line1": "a", "line2": "b", "city": "c", "postal_code": "1", "region": "r", "country": "DE"},
        "shipping_address": {"line1": "a", "line2": "b", "city": "c", "postal_code": "1", "region": "r", "country": "DE"},
        "currency": "EUR",
        "lines": [{"sku": "S", "name": "n", "quantity": 1, "unit_price": "1.00"}],
        "notes": "n"
    }));
    let Some(order) = req
        .ok()
        .and_then(|r| NewOrder::parse(r).ok())
        .map(|o| o.into_order(uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH))
    else {
        return Value::Null;
    };
    let mut order: Order = order;
    order.sync.salesforce_id = Some("x".into());
    order.sync.last_error = Some(SyncError {
        code: "x".into(),
        message: "x".into(),
    });
    order.sync.synced_at = Some(chrono::DateTime::UNIX_EPOCH);
    serde_json::to_value(order).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_mapping_is_valid() {
        let m = Mapping::load(None).unwrap();
        assert_eq!(m.order.object.sobject, "Order");
        assert_eq!(m.account.as_ref().unwrap().relationship, "Account");
        assert_eq!(
            m.items.as_ref().unwrap().pricebook_entry_field.as_deref(),
            Some("PricebookEntryId")
        );
        assert!(!sample_order().is_null());
    }

    #[test]
    fn evaluates_paths_formats_templates_and_lengths() {
        let order = json!({"id": "o1", "created_at": "2026-11-24T10:00:00Z", "notes": null,
            "customer": {"name": "Acme"}, "lines": [{"line_number": 2, "unit_price": "12.50"}]});
        let line = json!({"line_number": 2, "unit_price": "12.50", "quantity": 3});
        let m = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Subject": {"template": "Order {client_ref} / {customer.name}", "max_length": 12},
                           "Origin": {"const": "Web"}, "Description": "notes",
                           "Day__c": {"path": "created_at", "format": "date"}}},
                "items": {"sobject": "Line__c", "external_id_field": "Ext__c",
                "key": {"template": "{order.id}-{line_number}"}, "order_relationship": "Case__r",
                "fields": {"Price__c": {"path": "unit_price", "format": "number"}, "Qty__c": "quantity"}}}"#,
            "test",
        )
        .unwrap();
        let scope = Scope {
            order: &order,
            line: None,
        };
        let rec = m.order.object.record(scope, "o1");
        assert_eq!(rec["Subject"], json!("Order  / Acm"));
        assert_eq!(rec["Origin"], json!("Web"));
        assert_eq!(rec["Day__c"], json!("2026-11-24"));
        assert_eq!(rec["Ext__c"], json!("o1"));
        assert!(
            !rec.contains_key("Description"),
            "null leaves the field out"
        );
        let items = m.items.unwrap();
        let scope = Scope {
            order: &order,
            line: Some(&line),
        };
        assert_eq!(items.object.key(scope).unwrap(), "o1-2");
        let rec = items.object.record(scope, "o1-2");
        assert_eq!(rec["Price__c"], json!(12.5));
        assert_eq!(rec["Qty__c"], json!(3));
    }

    #[test]
    fn reports_every_problem_with_its_place() {
        let err = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Bad Name": "id", "Desc": "custmer.name", "Two": {"path": "id", "const": 1}}},
                "account": {"sobject": "Account", "external_id_field": "Ext__c", "key": "customer.external_id"}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`Bad Name` is not a Salesforce API name"),
            "{err}"
        );
        assert!(err.contains("order.fields.Two: give exactly one"), "{err}");
        assert!(err.contains("order.account_relationship: needed"), "{err}");
        assert!(err.starts_with("mapping m.json"), "{err}");

        let err = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Desc": "custmer.name"}}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("order.fields.Desc: `custmer.name` is not a field of the order"),
            "{err}"
        );

        let err = Mapping::parse(r#"{"order": {"sobject": "Order", "key": "id"}}"#, "m.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_id_field"), "{err}");
    }
}
