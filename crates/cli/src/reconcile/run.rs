//! A run end to end: the names it needs from the worker's mapping, then the stages in the order
//! the module documentation explains. This is the only file of reconcile that reads the
//! mapping (`orderbridge_mapping`, shared with the worker that writes the records).

use std::collections::HashMap;

use orderbridge_mapping::{Expr, Format, Mapping, ObjectMapping, Scope as MappingScope, Targets};
use orderbridge_salesforce::Client;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::ReconcileError;
use super::classify::{Classifier, Expected, FieldKind, Fields};
use super::orders::{self, Scope};
use super::report::Report;
use super::salesforce::{self, Objects};
use crate::progress::Progress;

/// Checks that the mapping keys records the way reconcile reads them (the order by its id, an
/// item by `<order id>-<line number>`, as the built-in mapping does) by evaluating its keys on a
/// probe order, and that the names are plain SOQL identifiers.
pub fn objects(mapping: &Mapping) -> Result<Objects, ReconcileError> {
    const PROBE: &str = "0190f0a2-7c41-7b3e-9d55-2f1c0e6a1b11";
    let order = json!({ "id": PROBE });
    let key = mapping.order.object.key(MappingScope {
        order: &order,
        line: None,
    });
    if key.as_deref().ok() != Some(PROBE) {
        return Err(ReconcileError::UnsupportedMapping(
            "`order.key` must be the order id (`\"key\": \"id\"`)".into(),
        ));
    }
    let order_object = identifier("order.sobject", &mapping.order.object.sobject)?;
    let order_field = identifier(
        "order.external_id_field",
        &mapping.order.object.external_id_field,
    )?;
    let items = match &mapping.items {
        None => None,
        Some(items) => {
            let line = json!({ "line_number": 7 });
            let key = items.object.key(MappingScope {
                order: &order,
                line: Some(&line),
            });
            if key.as_deref().ok() != Some(format!("{PROBE}-7").as_str()) {
                return Err(ReconcileError::UnsupportedMapping(
                    "`items.key` must be `{\"template\": \"{order.id}-{line_number}\"}`".into(),
                ));
            }
            Some((
                identifier("items.sobject", &items.object.sobject)?,
                identifier("items.external_id_field", &items.object.external_id_field)?,
            ))
        }
    };
    let names = |place: &str, object: &ObjectMapping| {
        object
            .compared_fields()
            .map(|(name, _)| identifier(&format!("{place}.fields"), name))
            .collect::<Result<Vec<_>, _>>()
    };
    let order_fields = names("order", &mapping.order.object)?;
    let item_fields = match &mapping.items {
        Some(i) => names("items", &i.object)?,
        None => Vec::new(),
    };
    Ok(Objects {
        order_object,
        order_field,
        items,
        order_fields,
        item_fields,
    })
}

/// The compared fields and how each is matched, in [`Objects`]' order.
fn fields(mapping: &Mapping) -> Fields {
    let kinds = |object: &ObjectMapping| {
        object
            .compared_fields()
            .map(|(name, e)| (name.to_owned(), kind(e)))
            .collect()
    };
    Fields {
        order: kinds(&mapping.order.object),
        item: mapping
            .items
            .as_ref()
            .map(|i| kinds(&i.object))
            .unwrap_or_default(),
    }
}

fn kind(e: &Expr) -> FieldKind {
    if e.is_number() {
        return FieldKind::Number { scale: e.scale() };
    }
    match e.format_kind() {
        Some(Format::Date) => FieldKind::Date,
        Some(Format::Datetime) => FieldKind::Datetime,
        _ => FieldKind::Text,
    }
}

/// What the order's records should hold: each compared field evaluated on the order.
fn expected(mapping: &Mapping, order: &Value) -> Expected {
    let scope = MappingScope { order, line: None };
    let values = |object: &ObjectMapping, scope| {
        object
            .compared_fields()
            .map(|(_, e)| e.eval(scope))
            .collect::<Vec<_>>()
    };
    let mut items = HashMap::new();
    if let Some(i) = &mapping.items {
        for line in order
            .get("lines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(n) = line
                .get("line_number")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
            else {
                continue;
            };
            let scope = MappingScope {
                order,
                line: Some(line),
            };
            items.insert(n, values(&i.object, scope));
        }
    }
    Expected {
        order: values(&mapping.order.object, scope),
        items,
    }
}

/// Names go into SOQL text: only letters, digits and underscores (custom and namespaced names
/// included), so a mapping cannot change the query.
fn identifier(place: &str, name: &str) -> Result<String, ReconcileError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name.to_owned())
    } else {
        Err(ReconcileError::UnsupportedMapping(format!(
            "{place} `{name}` is not a Salesforce API name"
        )))
    }
}

/// Compares Postgres with Salesforce over `scope`, without a progress display.
pub async fn reconcile(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    scope: Scope,
) -> Result<Report, ReconcileError> {
    reconcile_with_progress(pool, client, mapping, scope, &crate::progress::NoProgress).await
}

/// [`reconcile`], reporting progress per phase.
pub async fn reconcile_with_progress(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    scope: Scope,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    compare(pool, client, mapping, None, scope, progress).await
}

/// One target of several (divisions): the orders its routing rules give it (`target`, an
/// index into `targets.targets()`), compared with its org through `client` (its own
/// settings). Records of other targets' orders in the same org and object are out of scope,
/// not orphans.
pub async fn reconcile_target(
    pool: &PgPool,
    client: &Client,
    targets: &Targets,
    target: usize,
    scope: Scope,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let mapping = targets
        .targets()
        .get(target)
        .map(|t| t.mapping.clone())
        .ok_or_else(|| ReconcileError::UnsupportedMapping(format!("no target #{target}")))?;
    let mut report = compare(
        pool,
        client,
        &mapping,
        Some((targets, target)),
        scope,
        progress,
    )
    .await?;
    report.target = Some(targets.targets()[target].name.clone());
    Ok(report)
}

async fn compare(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    route: Option<(&Targets, usize)>,
    scope: Scope,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let objects = objects(mapping)?;
    let run = std::time::Instant::now();
    let started_at = orders::now(pool).await?;

    let sf = salesforce::read(client, &objects, &scope, progress).await?;
    tracing::debug!(
        orders = sf.order_records,
        items = sf.item_records,
        elapsed = ?run.elapsed(),
        "read Salesforce"
    );

    let compare = !objects.order_fields.is_empty() || !objects.item_fields.is_empty();
    let mut classifier = Classifier::new(sf, objects.items.is_some()).with_fields(fields(mapping));
    // Routing reads the whole order (with its client), so a target's run loads it.
    let details = if route.is_some() {
        orders::Details::WithClient
    } else if compare {
        orders::Details::Order
    } else {
        orders::Details::None
    };
    let mut compared = 0_i64;
    let total = orders::for_each_order(pool, &scope, started_at, progress, details, |o, full| {
        if let Some((targets, target)) = route {
            let routed = full.as_ref().map(|order| targets.route_index(order));
            if !matches!(routed, Some(Ok(t)) if t == target) {
                return;
            }
        }
        compared += 1;
        let expected = match (compare, full) {
            (true, Some(order)) => Some(expected(mapping, &order)),
            _ => None,
        };
        classifier.order_with(o, expected.as_ref());
    })
    .await?;
    tracing::debug!(orders = total, compared, elapsed = ?run.elapsed(), "read Postgres");

    let leftovers = classifier.leftovers();
    let existing = orders::existing(pool, &leftovers).await?;
    let classes = classifier.finish(&existing, &scope);
    tracing::debug!(leftovers = leftovers.len(), elapsed = ?run.elapsed(), "reconciled");
    Ok(Report {
        scope,
        target: None,
        started_at,
        order_object: objects.order_object,
        item_object: objects.items.map(|(o, _)| o),
        counts: classes.counts,
        missing: classes.missing,
        missing_failed: classes.missing_failed,
        duplicated: classes.duplicated,
        mismatched: classes.mismatched,
        orphaned: classes.orphaned,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_default_mapping_is_supported_and_others_are_explained() {
        let objects = objects(&Mapping::load(None).unwrap()).unwrap();
        assert_eq!(
            objects,
            Objects {
                order_object: "Order".into(),
                order_field: "External_Id__c".into(),
                items: Some(("OrderItem".into(), "External_Id__c".into())),
                order_fields: [
                    "BillingCity",
                    "BillingCountry",
                    "BillingPostalCode",
                    "BillingStreet",
                    "Description",
                    "EffectiveDate",
                    "Name",
                    "PoNumber",
                    "ShippingCity",
                    "ShippingCountry",
                    "ShippingPostalCode",
                    "ShippingStreet",
                    "TotalAmount",
                ]
                .map(String::from)
                .to_vec(),
                item_fields: ["Description", "Quantity", "UnitPrice", "TotalPrice"]
                    .map(String::from)
                    .to_vec(),
            }
        );
        let by_ref = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": {"template": "{id}-case"}}}"#,
            "test",
        )
        .unwrap();
        assert!(matches!(
            objects_err(&by_ref),
            ReconcileError::UnsupportedMapping(m) if m.contains("order.key")
        ));
        let case = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": "id"}}"#,
            "test",
        )
        .unwrap();
        assert_eq!(super::objects(&case).unwrap().items, None);
        // The mapping checks API names itself; reconcile checks again before writing SOQL.
        assert!(identifier("x", "ns__Order_Id__c").is_ok());
        assert!(identifier("x", "Case WHERE Id != null").is_err());
        assert!(identifier("x", "").is_err());
    }

    fn objects_err(m: &Mapping) -> ReconcileError {
        match super::objects(m) {
            Err(e) => e,
            Ok(o) => panic!("accepted {o:?}"),
        }
    }
}
