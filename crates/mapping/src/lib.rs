//! The mapping from an order to Salesforce records: which objects, which fields, from which
//! parts of the order, and what each field can hold. A JSON file (`WORKER_MAPPING_FILE`) or the
//! built-in default ([`DEFAULT_MAPPING`]: Account + Order + OrderItem), checked when the worker
//! starts.
//!
//! ```json
//! {
//!   "pricebook": null,                       // price book name; null = the org's standard one
//!   "account": {"sobject": "Account", "external_id_field": "External_Id__c",
//!               "key": {"template": "{client.external_id_prefix}{customer.external_id}", "max_length": 255},
//!               "fields": {"Name": {"path": "customer.name", "max_length": 255}}},
//!   "order":   {"sobject": "Order", "external_id_field": "External_Id__c",
//!               "key": {"path": "id", "max_length": 255},
//!               "account_relationship": "Account", "pricebook_field": "Pricebook2Id",
//!               "fields": {"EffectiveDate": {"path": "created_at", "format": "date"},
//!                          "Status": {"const": "Draft"}},
//!               "computed": {"TotalAmount": {"path": "total", "precision": 18, "scale": 2}}},
//!   "items":   {"sobject": "OrderItem", "external_id_field": "External_Id__c",
//!               "key": {"template": "{order.id}-{line_number}", "max_length": 255},
//!               "order_relationship": "Order", "pricebook_entry_field": "PricebookEntryId",
//!               "fields": {"Quantity": {"path": "quantity", "precision": 18, "scale": 2},
//!                          "UnitPrice": {"path": "unit_price", "format": "number", "precision": 18, "scale": 2}}}
//! }
//! ```
//!
//! A field's value is one of:
//! - `"customer.name"`: a path into the order (as `order.submitted` carries it: the API's order
//!   plus `client`, `{"id", "external_id_prefix"}`). In `items`, paths name the line (`sku`,
//!   `quantity`, `unit_price`, `line_number`…) and `order.<path>` reaches the order.
//! - `{"path": "…", "format": "date|datetime|number|integer|string", "max_length": N,
//!   "precision": P, "scale": S}`.
//! - `{"const": <any JSON value>}`.
//! - `{"template": "Order {client_ref} for {customer.name}", "max_length": N, "truncate": true}`.
//!
//! **Limits.** `max_length` (characters), `precision` and `scale` (digits in all, digits after the
//! point) say what the Salesforce field holds. They are promises checked against the org's
//! describe at start-up ([`check_against_salesforce`]: a text or number field without them, or
//! with more than Salesforce holds, is a problem), and a value beyond them is refused
//! ([`Mapping::check_order`]: by `order-api` at intake, by the worker before writing), never cut
//! or rounded. Only `truncate: true` cuts, for text where a cut is wanted (a summary subject).
//! `computed` names fields Salesforce computes from what is written (totals), with the order
//! value each must equal: not written, but bounded the same way and compared by reconcile.
//!
//! **Keys** must be tenant-safe: each starts with the order id (`id`; `order.id` for items) or,
//! for records several orders share, with the API client's prefix
//! (`{client.external_id_prefix}…`), so no two API clients' records share an external id (see
//! `orderbridge_domain::tenant`). Every part of a key must have a value, and a key is never cut.
//!
//! A path whose value is absent (`null`, e.g. an order without `notes`) leaves the field out of
//! the record, so an upsert never blanks a field someone set in Salesforce. `account` and `items`
//! are optional: a mapping may write one record per order to any object, custom ones included
//! (e.g. a `Case` with `Division__c`), with only `order` present.
//!
//! Three processes read it: the sync worker writes records with it, `order-api` refuses at
//! intake what it could not write, and the operator CLI's reconcile finds those records again
//! by the same external ids and compares their fields. It is therefore a library of its own,
//! below all three, rather than a module of any. `order-api` never talks to Salesforce: it
//! uses the crate without its default `salesforce` feature (the describe check).
//!
//! - [`model`]: the compiled mapping ([`Mapping`], [`ObjectMapping`], [`Expr`]…).
//! - `file`: the JSON file format and its compilation into the model, with every problem named.
//! - `eval`: evaluating a mapping against one order ([`Scope`]).
//! - `limits`: what an order's values need of the fields ([`Mapping::check_order`]).
//! - `targets`: several targets ("divisions"), each order routed to one by rules on the order
//!   ([`Targets`]; a plain mapping file is one target).
//! - [`check_against_salesforce`]: the start-up check against the org's describe results.

mod eval;
mod file;
mod limits;
pub mod model;
#[cfg(feature = "salesforce")]
mod salesforce;
mod targets;

use std::path::Path;

use orderbridge_domain::{NewOrder, NewOrderRequest, Order, SyncError};
use serde_json::{Value, json};

use file::{MappingFile, compile};

pub use eval::KeyError;
pub use limits::Overflow;
pub use model::{
    AccountMapping, Expr, Format, ItemsMapping, KeyScope, Mapping, ObjectMapping, OrderMapping,
    Scope, WriteMode,
};
#[cfg(feature = "salesforce")]
pub use salesforce::check_against_salesforce;
pub use targets::{DEFAULT_TARGET, NoTarget, Target, Targets};

/// The built-in mapping: Account by the client's prefix and the customer's external id, Order
/// by order id (Draft, in the price book), OrderItem per line by `<order id>-<line number>`.
/// Limits are the standard fields' (text lengths, currency 18 digits with 2 decimals), so an
/// order Salesforce could not hold exactly is refused at intake.
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
        match Self::from_file(file, &mut problems) {
            Some(mapping) => Ok(mapping),
            None => Err(MappingError::Invalid {
                origin: origin.to_owned(),
                problems,
            }),
        }
    }

    /// Compiles a parsed file and checks it against the order model; `None` with the problems
    /// pushed onto `problems`.
    pub(crate) fn from_file(file: MappingFile, problems: &mut Problems) -> Option<Self> {
        let mut own = Problems::default();
        let mapping = compile(file, &mut own);
        if own.0.is_empty()
            && let Some(mapping) = mapping
        {
            mapping.check_against_model(&mut own);
            if own.0.is_empty() {
                return Some(mapping);
            }
        }
        problems.0.extend(own.0);
        None
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

impl Mapping {
    /// The most characters each order field may have so that every field it is mapped to holds
    /// it (without `truncate`): `(path, max)`, the path as in the order, with line fields under
    /// `lines` (`["lines", "name"]`). Templates are left out (several fields make one value).
    /// For documenting intake's limits (the OpenAPI document's `maxLength`).
    pub fn text_limits(&self) -> Vec<(Vec<String>, usize)> {
        let mut out: Vec<(Vec<String>, usize)> = Vec::new();
        let mut add = |path: Vec<String>, max: usize| match out.iter_mut().find(|(p, _)| *p == path)
        {
            Some((_, m)) => *m = (*m).min(max),
            None => out.push((path, max)),
        };
        let mut objects: Vec<(&ObjectMapping, bool)> = vec![(&self.order.object, false)];
        if let Some(a) = &self.account {
            objects.push((&a.object, false));
        }
        if let Some(i) = &self.items {
            objects.push((&i.object, true));
        }
        for (object, line_scope) in objects {
            let exprs = std::iter::once(&object.key).chain(object.fields.iter().map(|(_, e)| e));
            for e in exprs {
                let (model::Source::Path(path), Some(max), false) =
                    (&e.source, e.max_length, e.truncate)
                else {
                    continue;
                };
                let path = match (line_scope, path.first().map(String::as_str)) {
                    (true, Some("order")) => path[1..].to_vec(),
                    (true, _) => std::iter::once("lines".to_owned())
                        .chain(path.iter().cloned())
                        .collect(),
                    (false, _) => path.clone(),
                };
                add(path, max);
            }
        }
        out
    }
}

/// A fully populated order (every optional field set), as JSON: what mapping paths are checked
/// against, made from the domain model so the check follows the model.
pub(crate) fn sample_order() -> Value {
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
    let client = orderbridge_domain::ClientScope {
        id: orderbridge_domain::ClientId::from_uuid(uuid::Uuid::nil()),
        external_id_prefix: "sample:".into(),
    };
    // The event's `data`, which is what mappings read.
    orderbridge_domain::OrderEvent::submitted(order, client)
        .into_envelope(chrono::DateTime::UNIX_EPOCH, None)
        .data
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
                "fields": {"Subject": {"template": "Order {client_ref} / {customer.name}", "max_length": 12, "truncate": true},
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
        let rec = record(&m.order.object, scope, "o1");
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
        let rec = record(&items.object, scope, "o1-2");
        assert_eq!(rec["Price__c"], json!(12.5));
        assert_eq!(rec["Qty__c"], json!(3));
    }

    /// The record by field name: `values` are in `field_names` order, one each.
    fn record<'a>(
        object: &'a ObjectMapping,
        scope: Scope<'a>,
        key: &str,
    ) -> std::collections::BTreeMap<&'a str, Value> {
        assert_eq!(
            object.values(scope, key).count(),
            object.field_names().count()
        );
        object
            .field_names()
            .zip(object.values(scope, key))
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
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

    #[test]
    fn refuses_a_field_the_worker_sets_itself() {
        let err = Mapping::parse(
            r#"{"account": {"sobject": "Account", "external_id_field": "Ext__c",
                  "key": {"template": "{client.external_id_prefix}{customer.external_id}"}},
                "order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                  "account_relationship": "Account", "pricebook_field": "Pricebook2Id",
                  "fields": {"account": "client_ref", "Pricebook2Id": "client_ref", "Name": "client_ref"}},
                "items": {"sobject": "OrderItem", "external_id_field": "Ext__c",
                  "key": {"template": "{order.id}-{line_number}"}, "order_relationship": "Order",
                  "pricebook_entry_field": "PricebookEntryId",
                  "fields": {"Order": "sku", "PricebookEntryId": "sku", "Quantity": "quantity"}}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        for (place, field, setting) in [
            ("order", "Account", "account_relationship"),
            ("order", "Pricebook2Id", "pricebook_field"),
            ("items", "Order", "order_relationship"),
            ("items", "PricebookEntryId", "pricebook_entry_field"),
        ] {
            assert!(
                err.contains(&format!(
                    "{place}.fields.{field}: set by the worker from `{place}.{setting}`"
                )),
                "{err}"
            );
        }
        assert!(!err.contains("Name") && !err.contains("Quantity"), "{err}");

        let err = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                  "pricebook_field": "ext__c", "fields": {"Name": "client_ref"}}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("order.pricebook_field: `ext__c` is the external id field"),
            "{err}"
        );
    }

    /// Every key must keep two API clients' records apart: the order id or the client's prefix
    /// first; nothing else, and never cut.
    #[test]
    fn keys_must_be_tenant_safe() {
        let with_key = |object: &str, key: &str| {
            let (account, order_key, items) = match object {
                "account" => (
                    format!(
                        r#""account": {{"sobject": "Account", "external_id_field": "Ext__c", "key": {key}}},"#
                    ),
                    r#""id""#.to_owned(),
                    String::new(),
                ),
                "order" => (String::new(), key.to_owned(), String::new()),
                _ => (
                    String::new(),
                    r#""id""#.to_owned(),
                    format!(
                        r#", "items": {{"sobject": "OrderItem", "external_id_field": "Ext__c", "key": {key}, "order_relationship": "Order"}}"#
                    ),
                ),
            };
            let rel = if account.is_empty() {
                ""
            } else {
                r#", "account_relationship": "Account""#
            };
            Mapping::parse(
                &format!(
                    r#"{{{account} "order": {{"sobject": "Order", "external_id_field": "Ext__c", "key": {order_key}{rel}}}{items}}}"#
                ),
                "m.json",
            )
        };
        for (object, key) in [
            (
                "account",
                r#"{"template": "{client.external_id_prefix}{customer.external_id}"}"#,
            ),
            ("account", r#"{"template": "{id}"}"#),
            ("order", r#""id""#),
            ("order", r#"{"template": "{id}-x"}"#),
            ("items", r#"{"template": "{order.id}-{line_number}"}"#),
            (
                "items",
                r#"{"template": "{order.client.external_id_prefix}{sku}"}"#,
            ),
        ] {
            assert!(
                with_key(object, key).is_ok(),
                "{object} {key}: {:?}",
                with_key(object, key).err()
            );
        }
        for (object, key) in [
            ("account", r#""customer.external_id""#),
            (
                "account",
                r#"{"template": "{customer.external_id}{client.external_id_prefix}"}"#,
            ),
            (
                "account",
                r#"{"template": "x{client.external_id_prefix}{customer.external_id}"}"#,
            ),
            ("account", r#""client.external_id_prefix""#),
            ("order", r#""client_ref""#),
            ("items", r#"{"template": "{line_number}-{order.id}"}"#),
            ("items", r#""id""#),
        ] {
            let err = with_key(object, key).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{object}.key: must start with")),
                "{object} {key}: {err}"
            );
        }
        let err = with_key(
            "order",
            r#"{"path": "id", "max_length": 10, "truncate": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a key is never cut"), "{err}");
    }

    /// The default mapping's account key is the client's prefix and the customer id; without
    /// a prefix (kept keys), an id with `:` is refused, and an event without a client has none.
    #[test]
    fn account_keys_are_scoped_by_the_client() {
        let m = Mapping::load(None).unwrap();
        let account = &m.account.as_ref().unwrap().object;
        let key = |client: Value, customer: &str| {
            let order =
                json!({"id": "o1", "customer": {"external_id": customer}, "client": client});
            account.key(Scope {
                order: &order,
                line: None,
            })
        };
        let scoped = |prefix: &str| json!({"id": uuid::Uuid::nil(), "external_id_prefix": prefix});
        assert_eq!(key(scoped("alpha:"), "CUST-42").unwrap(), "alpha:CUST-42");
        assert_eq!(key(scoped("beta:"), "CUST-42").unwrap(), "beta:CUST-42");
        assert_eq!(key(scoped("beta:"), "a:b").unwrap(), "beta:a:b");
        assert_eq!(key(scoped(""), "CUST-42").unwrap(), "CUST-42");
        assert!(matches!(
            key(scoped(""), "beta:CUST-42"),
            Err(KeyError::Ambiguous { .. })
        ));
        assert!(matches!(
            key(Value::Null, "CUST-42"),
            Err(KeyError::NoClient { .. })
        ));
        assert!(matches!(
            key(scoped("alpha:"), ""),
            Err(KeyError::Missing { .. })
        ));
    }

    /// What Salesforce cannot hold exactly is refused with the order field's pointer, never cut
    /// or rounded; what it can is written as it is.
    #[test]
    fn check_order_names_every_value_salesforce_cannot_hold() {
        let m = Mapping::load(None).unwrap();
        let mut order = sample_order();
        assert_eq!(m.check_order(&order), vec![], "the sample order fits");

        order["shipping_address"]["city"] = json!("x".repeat(100));
        order["lines"][0]["unit_price"] = json!("12.345");
        order["total"] = json!("500000000000000000000.00");
        order["customer"]["external_id"] = json!("C:1");
        order["client"]["external_id_prefix"] = json!("");
        let got: Vec<(String, &str)> = m
            .check_order(&order)
            .into_iter()
            .map(|o| (o.pointer, o.code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/customer/external_id".to_owned(), "ambiguous_key"),
                ("/shipping_address/city".to_owned(), "too_long"),
                ("/total".to_owned(), "out_of_range"),
                ("/lines/0/unit_price".to_owned(), "too_many_decimals"),
            ]
        );
        let detail = &m.check_order(&order)[1].detail;
        assert!(detail.contains("Order.ShippingCity holds 40"), "{detail}");

        // Sixteen significant digits do not survive a JSON number (an f64).
        let mut order = sample_order();
        order["lines"][0]["unit_price"] = json!("12345678901234.56");
        let overflows = m.check_order(&order);
        assert_eq!(overflows.len(), 1, "{overflows:?}");
        assert_eq!(overflows[0].pointer, "/lines/0/unit_price");
        assert!(overflows[0].detail.contains("exactly"), "{overflows:?}");
    }

    /// A path that leads to a list or an object fails the order (one value per field), so it
    /// can never reach a Composite record or a Bulk CSV, where it would fail the whole batch.
    #[test]
    fn check_order_refuses_a_list_or_an_object_for_a_field() {
        let m = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Description": "notes", "Name": "client_ref"}}}"#,
            "m.json",
        )
        .unwrap();
        let mut order = sample_order();
        assert_eq!(m.check_order(&order), vec![]);
        order["notes"] = json!({"nested": "object"});
        order["client_ref"] = json!(["a", "list"]);
        let got: Vec<(String, &str)> = m
            .check_order(&order)
            .into_iter()
            .map(|o| (o.pointer, o.code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/notes".to_owned(), "not_a_value"),
                ("/client_ref".to_owned(), "not_a_value"),
            ]
        );
    }
}
