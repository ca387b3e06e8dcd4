//! A run end to end: the names it needs from the worker's mapping, then the stages in the order
//! the module documentation explains. This is the only file of reconcile that reads the
//! mapping (`orderbridge_mapping`, shared with the worker that writes the records).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use orderbridge_mapping::{Expr, Format, Mapping, ObjectMapping, Scope as MappingScope, Targets};
use orderbridge_salesforce::Client;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::ReconcileError;
use super::bulk::{self, Staged};
use super::classify::{Classes, Classifier, Expected, FieldKind, Fields};
use super::orders::{self, Bounds, OrderPages, Paging, Scope};
use super::report::Report;
use super::salesforce::{Kind, Objects, Range, RecordStream, SalesforceSide, SharedBar};
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
    reconcile_with_progress(
        pool,
        client,
        mapping,
        scope,
        Paging::default(),
        &crate::progress::NoProgress,
    )
    .await
}

/// [`reconcile`] walking the orders as `paging` says, reporting progress per phase.
pub async fn reconcile_with_progress(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    scope: Scope,
    paging: Paging,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    compare(pool, client, mapping, None, (scope, paging), progress).await
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
    paging: Paging,
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
        (scope, paging),
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
    (scope, paging): (Scope, Paging),
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let objects = objects(mapping)?;
    let run = std::time::Instant::now();
    let started_at = orders::now(pool).await?;
    let bounds = Bounds::new(&scope, started_at);
    let ranges = bounds.split(pool, paging.parallel).await?;
    let total = bounds.count(pool).await?;
    let bars = Bars {
        orders: SharedBar::new(progress.phase("Postgres orders")),
        sf_orders: SharedBar::new(progress.phase(&format!("Salesforce {}", objects.order_object))),
        sf_items: objects
            .items
            .as_ref()
            .map(|(object, _)| SharedBar::new(progress.phase(&format!("Salesforce {object}")))),
    };
    bars.orders.add_total(u64::try_from(total).unwrap_or(0));
    let fields = fields(mapping);
    let staged = if paging.bulk {
        Some(
            bulk::download(
                client,
                &objects,
                (&fields, &scope, &ranges),
                (&bars.sf_orders, bars.sf_items.as_ref()),
            )
            .await?,
        )
    } else {
        None
    };
    // Each range is its own task so that the ranges' comparisons (CPU: decoding, evaluating the
    // mapping, comparing) use every core; joined on one task they used one (BENCHMARKS.md,
    // "Reconcile at scale"). Dropping the set (on the first error) aborts the others.
    let merge = Arc::new(Merge {
        pool: pool.clone(),
        client: client.clone(),
        mapping: mapping.clone(),
        route: route.map(|(targets, target)| (targets.clone(), target)),
        scope,
        bounds,
        page_size: paging.page_size,
        fields,
        objects,
        bars,
        staged,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (n, range) in ranges.iter().copied().enumerate() {
        let merge = Arc::clone(&merge);
        tasks.spawn(async move { merge.range(n, range).await.map(|part| (n, part)) });
    }
    let mut parts = Vec::with_capacity(ranges.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(part) => parts.push(part?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(ReconcileError::Interrupted(e.to_string())),
        }
    }
    // In range order, as the report lists problems by order id.
    parts.sort_unstable_by_key(|(n, _)| *n);
    let Merge { objects, bars, .. } = &*merge;
    for bar in [
        Some(&bars.orders),
        Some(&bars.sf_orders),
        bars.sf_items.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        bar.finish();
    }
    let mut classes = Classes::default();
    let mut compared = 0;
    for (_, (part, n)) in parts {
        classes.extend(part);
        compared += n;
    }
    tracing::debug!(
        orders = total,
        compared,
        ranges = ranges.len(),
        salesforce_orders = classes.counts.salesforce_orders,
        salesforce_items = classes.counts.salesforce_items,
        elapsed = ?run.elapsed(),
        "reconciled"
    );
    Ok(Report {
        scope,
        target: None,
        started_at,
        order_object: objects.order_object.clone(),
        item_object: objects.items.as_ref().map(|(o, _)| o.clone()),
        counts: classes.counts,
        missing: classes.missing,
        missing_failed: classes.missing_failed,
        duplicated: classes.duplicated,
        mismatched: classes.mismatched,
        orphaned: classes.orphaned,
    })
}

/// The progress bars every range feeds.
struct Bars {
    orders: SharedBar,
    sf_orders: SharedBar,
    sf_items: Option<SharedBar>,
}

/// What every range of a run shares (owned: each range runs as its own task).
struct Merge {
    pool: PgPool,
    client: Client,
    mapping: Mapping,
    route: Option<(Targets, usize)>,
    scope: Scope,
    bounds: Bounds,
    page_size: u32,
    objects: Objects,
    fields: Fields,
    bars: Bars,
    /// With `--bulk`: Salesforce's records, read and sorted before the merge.
    staged: Option<Staged>,
}

impl Merge {
    /// Merges one range of order ids: its Salesforce queries (started first, see the module
    /// documentation) with its Postgres pages. Returns its classes and how many orders it
    /// compared (with several targets, those routed to this one).
    async fn range(&self, n: usize, range: Range) -> Result<(Classes, u64), ReconcileError> {
        let objects = &self.objects;
        let (mut sf_orders, mut sf_items) = match &self.staged {
            Some(staged) => (
                bulk::stream(&staged.orders, Kind::Order, &objects.order_object, n),
                staged
                    .items
                    .as_ref()
                    .zip(objects.items.as_ref())
                    .map(|(sorted, (object, _))| bulk::stream(sorted, Kind::Item, object, n)),
            ),
            None => (
                RecordStream::open(
                    &self.client,
                    Kind::Order,
                    (
                        &objects.order_object,
                        &objects.order_field,
                        &objects.order_fields,
                    ),
                    (&self.scope, range),
                    self.bars.sf_orders.clone(),
                ),
                match (&objects.items, &self.bars.sf_items) {
                    (Some((object, field)), Some(bar)) => Some(RecordStream::open(
                        &self.client,
                        Kind::Item,
                        (object, field, &objects.item_fields),
                        (&self.scope, range),
                        bar.clone(),
                    )),
                    _ => None,
                },
            ),
        };

        let compare = !objects.order_fields.is_empty() || !objects.item_fields.is_empty();
        let mut classifier = Classifier::new(SalesforceSide::default(), objects.items.is_some())
            .with_fields(self.fields.clone());
        // Routing reads the whole order (with its client), so a target's run loads it.
        let details = if self.route.is_some() {
            orders::Details::WithClient
        } else if compare {
            orders::Details::Order
        } else {
            orders::Details::None
        };
        let mut pages = OrderPages::open(
            &self.pool,
            self.bounds,
            range,
            details,
            self.page_size,
            self.bars.orders.clone(),
        );
        let mut compared = 0_u64;
        while let Some(page) = pages.next().await? {
            let Some(through) = page.last().map(|(o, _)| o.id) else {
                continue;
            };
            sf_orders
                .take_through(through, classifier.side_mut())
                .await?;
            if let Some(items) = &mut sf_items {
                items.take_through(through, classifier.side_mut()).await?;
            }
            for (o, full) in page {
                if let Some((targets, target)) = &self.route {
                    let routed = full.as_ref().map(|order| targets.route_index(order));
                    if !matches!(routed, Some(Ok(t)) if t == *target) {
                        continue;
                    }
                }
                compared += 1;
                let expected = match (compare, full) {
                    (true, Some(order)) => Some(expected(&self.mapping, &order)),
                    _ => None,
                };
                classifier.order_with(o, expected.as_ref());
            }
            settle(&self.pool, &mut classifier, &self.scope).await?;
        }

        // Records after the range's last order name no order in scope: taken a page at a time,
        // up to the smaller of the two streams' next bounds so that an order's record and its
        // items are judged together.
        loop {
            let order_bound = sf_orders.next_bound(classifier.side_mut()).await?;
            let item_bound = match &mut sf_items {
                Some(items) => items.next_bound(classifier.side_mut()).await?,
                None => None,
            };
            let Some(through) = [order_bound, item_bound].into_iter().flatten().min() else {
                break;
            };
            sf_orders
                .take_through(through, classifier.side_mut())
                .await?;
            if let Some(items) = &mut sf_items {
                items.take_through(through, classifier.side_mut()).await?;
            }
            settle(&self.pool, &mut classifier, &self.scope).await?;
        }
        Ok((classifier.finish(&HashSet::new(), &self.scope), compared))
    }
}

/// Ends a step of the merge: the records left on the Salesforce side name no order compared,
/// so Postgres says which exist at all (out of scope) and the rest are orphans.
async fn settle(
    pool: &PgPool,
    classifier: &mut Classifier,
    scope: &Scope,
) -> Result<(), ReconcileError> {
    let leftovers = classifier.leftovers();
    let existing = if leftovers.is_empty() {
        HashSet::new()
    } else {
        orders::existing(pool, &leftovers).await?
    };
    classifier.settle(&existing, scope);
    Ok(())
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
