//! The start-up check of a mapping against the org: objects, fields, external ids and
//! relationships exist and can be written as configured.

use crate::Problems;
use crate::model::{Mapping, ObjectMapping, WriteMode};

/// Checks the mapping against the org: objects, fields, external ids and relationships exist
/// and can be written as configured. Returns the problems found (empty: fine).
pub async fn check_against_salesforce(
    client: &orderbridge_salesforce::Client,
    mapping: &Mapping,
) -> Result<Problems, orderbridge_salesforce::Error> {
    let mut problems = Problems::default();
    // (place in the file, object, [(relationship name, object it must point to)])
    type Check<'a> = (&'a str, &'a ObjectMapping, Vec<(&'a str, &'a str)>);
    let mut objects: Vec<Check<'_>> = Vec::new();
    let mut order_rels = Vec::new();
    if let Some(a) = &mapping.account {
        order_rels.push((a.relationship.as_str(), a.object.sobject.as_str()));
    }
    if let Some(a) = &mapping.account {
        objects.push(("account", &a.object, Vec::new()));
    }
    objects.push(("order", &mapping.order.object, order_rels));
    if let Some(i) = &mapping.items {
        objects.push((
            "items",
            &i.object,
            vec![(
                i.order_relationship.as_str(),
                mapping.order.object.sobject.as_str(),
            )],
        ));
    }
    for (place, object, relationships) in objects {
        let describe = match client.describe(&object.sobject).await {
            Ok(d) => d,
            Err(e) if e.class() == orderbridge_salesforce::ErrorClass::Permanent => {
                problems.0.push(format!(
                    "{place}.sobject: {} cannot be described: {e}",
                    object.sobject
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        let sobject = &object.sobject;
        match describe.field(&object.external_id_field) {
            // `create` relies on Salesforce refusing a second record with the same key
            // (DUPLICATE_VALUE means "written before"); without Unique, a redelivery would
            // write a duplicate.
            Some(f) if f.external_id && object.write == WriteMode::Create && !f.unique => {
                problems.0.push(format!(
                    "{place}.external_id_field: {sobject}.{} must be Unique for \"write\": \"create\" (mark it Unique in Salesforce), or redeliveries would create duplicates",
                    object.external_id_field
                ))
            }
            Some(f) if f.external_id || f.name == "Id" => {}
            Some(_) => problems.0.push(format!(
                "{place}.external_id_field: {sobject}.{} is not an External ID field",
                object.external_id_field
            )),
            None => problems.0.push(format!(
                "{place}.external_id_field: {sobject} has no field {}",
                object.external_id_field
            )),
        }
        let mut writable = object
            .fields
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>();
        if place == "order"
            && let Some(f) = &mapping.order.pricebook_field
        {
            writable.push(f);
        }
        if place == "items"
            && let Some(f) = mapping
                .items
                .as_ref()
                .and_then(|i| i.pricebook_entry_field.as_deref())
        {
            writable.push(f);
        }
        for name in writable {
            match describe.field(name) {
                None => problems
                    .0
                    .push(format!("{place}.fields: {sobject} has no field {name}")),
                Some(f) if !f.createable => problems.0.push(format!(
                    "{place}.fields: {sobject}.{name} cannot be set on create"
                )),
                Some(f) if object.write == WriteMode::Upsert && !f.updateable => {
                    problems.0.push(format!(
                        "{place}.fields: {sobject}.{name} cannot be updated, so an upsert of an existing record would fail; drop it or use \"write\": \"create\""
                    ))
                }
                Some(_) => {}
            }
        }
        for (rel, target) in relationships {
            match describe.relationship(rel) {
                Some(f)
                    if f.reference_to
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(target)) => {}
                Some(f) => problems.0.push(format!(
                    "{place}: relationship {sobject}.{rel} points to {:?}, not {target}",
                    f.reference_to
                )),
                None => problems.0.push(format!(
                    "{place}: {sobject} has no relationship named {rel}"
                )),
            }
        }
    }
    Ok(problems)
}
