//! What the org is rather than what it holds: the resource list (`GET /`), `/limits`, the
//! global describe (`GET /sobjects`) and per-object describes, all built from the schema.
//!
//! Clients read these to discover objects and fields, so the shapes follow Salesforce's even
//! where the emulator has nothing to say (limits it does not enforce report their full
//! allocation).

use serde_json::{Value, json};

use crate::reply::Reply;
use crate::route::Ctx;
use crate::schema::{FieldType, ObjectDef};
use crate::state::Inner;

use super::collections::COLLECTION_LIMIT;

pub(super) fn resources(ctx: &Ctx<'_>) -> Reply {
    let b = &ctx.base;
    Reply::json(
        200,
        json!({
            "sobjects": format!("{b}/sobjects"),
            "query": format!("{b}/query"),
            "queryAll": format!("{b}/queryAll"),
            "composite": format!("{b}/composite"),
            "limits": format!("{b}/limits"),
        }),
    )
}

pub(super) fn limits(ctx: &Ctx<'_>, inner: &Inner) -> Reply {
    let max = ctx.shared.config.daily_api_limit;
    let remaining = max.saturating_sub(inner.usage.used());
    Reply::json(
        200,
        json!({
            "DailyApiRequests": {"Max": max, "Remaining": remaining},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
            "ConcurrentSyncApexLimit": {"Max": 10, "Remaining": 10},
            "DataStorageMB": {"Max": 5, "Remaining": 5},
            "HourlyPublishedPlatformEvents": {"Max": 50000, "Remaining": 50000},
        }),
    )
}

pub(super) fn basic_describe(ctx: &Ctx<'_>, d: &ObjectDef) -> Value {
    json!({
        "name": d.name,
        "label": d.label.clone().unwrap_or_else(|| d.name.clone()),
        "keyPrefix": d.key_prefix,
        "custom": d.name.ends_with("__c"),
        "createable": true, "updateable": true, "deletable": true, "queryable": true,
        "urls": {
            "sobject": format!("{}/sobjects/{}", ctx.base, d.name),
            "describe": format!("{}/sobjects/{}/describe", ctx.base, d.name),
            "rowTemplate": format!("{}/sobjects/{}/{{ID}}", ctx.base, d.name),
        }
    })
}

pub(super) fn global_describe(ctx: &Ctx<'_>) -> Reply {
    let list: Vec<Value> = ctx
        .shared
        .schema
        .objects()
        .iter()
        .map(|d| basic_describe(ctx, d))
        .collect();
    Reply::json(
        200,
        json!({"encoding": "UTF-8", "maxBatchSize": COLLECTION_LIMIT, "sobjects": list}),
    )
}

pub(super) fn describe(ctx: &Ctx<'_>, d: &ObjectDef) -> Value {
    let fields: Vec<Value> = d
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "label": f.name,
                "type": type_name(f.ty),
                "length": f.max_length().unwrap_or(0),
                "precision": f.digits().filter(|_| f.ty != FieldType::Int).map_or(0, |(p, _)| p),
                "scale": f.digits().filter(|_| f.ty != FieldType::Int).map_or(0, |(_, s)| s),
                "digits": f.digits().filter(|_| f.ty == FieldType::Int).map_or(0, |(p, _)| p),
                "nillable": !f.required && f.ty != FieldType::Id,
                "createable": f.createable,
                "updateable": f.updateable,
                "externalId": f.external_id,
                "unique": f.unique,
                "autoNumber": f.ty == FieldType::Autonumber,
                "defaultedOnCreate": f.default.is_some() || f.ty == FieldType::Autonumber,
                "restrictedPicklist": f.restricted,
                "referenceTo": f.reference_to.iter().collect::<Vec<_>>(),
                "relationshipName": f.relationship_name,
                "picklistValues": f.picklist_values.iter().map(|p| json!({"value": p.value, "label": p.value, "active": true, "defaultValue": f.default.as_ref().and_then(Value::as_str) == Some(p.value.as_str())})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut v = basic_describe(ctx, d);
    if let Some(m) = v.as_object_mut() {
        m.insert("fields".into(), Value::Array(fields));
    }
    v
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Id => "id",
        FieldType::String | FieldType::Autonumber => "string",
        FieldType::Textarea => "textarea",
        FieldType::Phone => "phone",
        FieldType::Url => "url",
        FieldType::Email => "email",
        FieldType::Picklist => "picklist",
        FieldType::Boolean => "boolean",
        FieldType::Double => "double",
        FieldType::Currency => "currency",
        FieldType::Int => "int",
        FieldType::Percent => "percent",
        FieldType::Date => "date",
        FieldType::Datetime => "datetime",
        FieldType::Reference => "reference",
    }
}
