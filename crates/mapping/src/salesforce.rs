//! The start-up check of a mapping against the org: objects, fields, external ids and
//! relationships exist and can be written as configured, and the limits the mapping declares
//! are no more than the fields hold.

use orderbridge_salesforce::sobjects::FieldDescribe;
use serde_json::Value;

use crate::Problems;
use crate::model::{Expr, Format, Mapping, ObjectMapping, Source, WriteMode};

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
        let key = std::iter::once((object.external_id_field.as_str(), &object.key, "key"));
        let fields = object.fields.iter().map(|(n, e)| (n.as_str(), e, "fields"));
        for (name, expr, what) in key.chain(fields) {
            if let Some(f) = describe.field(name) {
                check_limits(
                    &format!("{place}.{what}.{name}"),
                    sobject,
                    f,
                    expr,
                    &mut problems,
                );
            }
        }
        for (name, expr) in &object.computed {
            match describe.field(name) {
                Some(f) => check_limits(
                    &format!("{place}.computed.{name}"),
                    sobject,
                    f,
                    expr,
                    &mut problems,
                ),
                None => problems
                    .0
                    .push(format!("{place}.computed: {sobject} has no field {name}")),
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

/// Text types whose describe `length` bounds the value.
const TEXT_TYPES: [&str; 9] = [
    "string",
    "textarea",
    "phone",
    "url",
    "email",
    "picklist",
    "multipicklist",
    "combobox",
    "encryptedstring",
];

/// The mapping's limits for one field against what the field holds: they must be declared
/// (so intake can refuse what would not fit) and no larger than Salesforce's.
fn check_limits(
    place: &str,
    sobject: &str,
    f: &FieldDescribe,
    expr: &Expr,
    problems: &mut Problems,
) {
    let name = &f.name;
    let ty = f.field_type.to_ascii_lowercase();
    if TEXT_TYPES.contains(&ty.as_str()) && f.length > 0 {
        let holds = f.length as usize;
        if let Source::Const(v) = &expr.source {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.chars().count() > holds {
                problems.0.push(format!(
                    "{place}: the constant is {} characters; {sobject}.{name} holds {holds}",
                    text.chars().count()
                ));
            }
            return;
        }
        if matches!(expr.format, Some(Format::Date | Format::Datetime)) {
            return;
        }
        match expr.max_length {
            None => problems.0.push(format!(
                "{place}: {sobject}.{name} holds {holds} characters; declare \"max_length\": {holds} (or less), so longer values are refused at intake instead of failing in Salesforce"
            )),
            Some(max) if max > holds => problems.0.push(format!(
                "{place}: max_length {max} promises more than {sobject}.{name} holds ({holds} characters)"
            )),
            Some(_) => {}
        }
        return;
    }
    let holds = match ty.as_str() {
        "double" | "currency" | "percent" if f.precision > 0 => (f.precision, f.scale),
        "int" if f.digits > 0 => (f.digits, 0),
        _ => return,
    };
    if matches!(expr.source, Source::Const(_)) {
        return;
    }
    let (precision, scale) = holds;
    match (expr.precision, expr.scale) {
        (Some(p), Some(s)) => {
            if s > scale || p.saturating_sub(s) > precision.saturating_sub(scale) {
                problems.0.push(format!(
                    "{place}: precision {p} and scale {s} promise more than {sobject}.{name} holds ({} digits before the point, {scale} after)",
                    precision.saturating_sub(scale)
                ));
            }
        }
        _ => problems.0.push(format!(
            "{place}: {sobject}.{name} holds {precision} digits, {scale} after the point; declare \"precision\": {precision}, \"scale\": {scale} (or less), so values that do not fit are refused at intake instead of being rounded"
        )),
    }
}
