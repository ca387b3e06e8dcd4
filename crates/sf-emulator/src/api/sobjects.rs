//! One record by id: `POST /sobjects/{o}` (create, or publish a platform event: one in the
//! schema is checked and delivered over Pub/Sub, an unknown `__e` only stored),
//! `GET`/`PATCH`/`DELETE /sobjects/{o}/{id}`.
//!
//! Thin on purpose: the rules are the store's, so these handlers only map the request onto it
//! and its errors onto REST replies.

use serde_json::json;

use crate::reply::{RecordError, Reply};
use crate::route::{Ctx, Req, param};
use crate::schema::ObjectDef;
use crate::state::Inner;
use crate::store::render;

fn platform_event(inner: &mut Inner, name: &str, req: &Req) -> Result<Reply, Reply> {
    let body = req.body_object()?.clone();
    let id = inner.store.insert_raw(name, body.into());
    Ok(Reply::json(
        201,
        json!({"id": id, "success": true, "errors": [{"statusCode": "OPERATION_ENQUEUED", "message": uuid::Uuid::new_v4().to_string(), "fields": []}]}),
    ))
}

/// A platform event of the schema: checked against its fields, delivered on `/event/Name__e`,
/// and kept (like the unknown ones) for `/__admin/records`.
fn known_platform_event(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    name: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let body = req.body_object()?;
    crate::pubsub::platform::publish_rest(&ctx.shared.pubsub, name, body, &ctx.shared.user_id)
        .map_err(RecordError::into_reply)?;
    let id = inner.store.insert_raw(name, body.clone().into());
    Ok(Reply::json(
        201,
        json!({"id": id, "success": true, "errors": []}),
    ))
}

pub(super) fn create(ctx: &Ctx<'_>, inner: &mut Inner, o: &str, req: &Req) -> Result<Reply, Reply> {
    if let Some(event) = ctx.shared.schema.platform_event(o) {
        let name = event.name.clone();
        return known_platform_event(ctx, inner, &name, req);
    }
    if o.ends_with("__e") && ctx.shared.schema.object(o).is_none() {
        return platform_event(inner, o, req);
    }
    let def = ctx.object(o)?;
    let body = req.body_object()?;
    let Inner { store, locks, .. } = inner;
    let id = store
        .create(locks, &def.name, body)
        .map_err(RecordError::into_reply)?;
    Ok(
        Reply::json(201, json!({"id": id, "success": true, "errors": []})).with_header(
            "Location",
            format!("{}/sobjects/{}/{id}", ctx.base, def.name),
        ),
    )
}

fn field_list(def: &ObjectDef, qs: &str) -> Result<Option<Vec<String>>, Reply> {
    let Some(list) = param(qs, "fields") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match def.field(f) {
            Some(d) => out.push(d.name.clone()),
            None => {
                return Err(Reply::error(
                    400,
                    "INVALID_FIELD",
                    format!("No such column '{f}' on entity '{}'", def.name),
                ));
            }
        }
    }
    Ok(Some(out))
}

pub(super) fn get_record(
    ctx: &Ctx<'_>,
    inner: &Inner,
    o: &str,
    id: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let fields = field_list(def, &req.query)?;
    let (def, rec) = inner
        .store
        .get(Some(&def.name), id)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::json(
        200,
        render(def, rec, &ctx.base, fields.as_deref()),
    ))
}

pub(super) fn update(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    o: &str,
    id: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let body = req.body_object()?;
    let Inner { store, locks, .. } = inner;
    store
        .update(locks, Some(&def.name), id, body)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::empty(204))
}

pub(super) fn delete(ctx: &Ctx<'_>, inner: &mut Inner, o: &str, id: &str) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let Inner { store, locks, .. } = inner;
    store
        .delete(locks, Some(&def.name), id)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::empty(204))
}
