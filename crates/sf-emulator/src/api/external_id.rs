//! One record by external id: `GET`/`DELETE /sobjects/{o}/{field}/{value}` and the upsert,
//! `PATCH` on the same path (`201` created / `200` updated / `300` with the matching records'
//! URLs / `404` for an unknown field; `?updateOnly=true`).
//!
//! Apart from `sobjects` because a value may match several records, which only these routes
//! answer (with 300).

use serde_json::{Value, json};

use crate::ids;
use crate::reply::Reply;
use crate::route::{Ctx, Req, param};
use crate::schema::{FieldType, ObjectDef};
use crate::state::Inner;
use crate::store::UpsertError;

use super::sobjects::{delete, get_record};

/// Records matching an external id, or the 404/300 replies Salesforce gives.
fn ext_matches(
    ctx: &Ctx<'_>,
    inner: &Inner,
    def: &ObjectDef,
    f: &str,
    v: &str,
) -> Result<String, Reply> {
    let Some(field) = def
        .field(f)
        .filter(|fd| fd.external_id || fd.ty == FieldType::Id)
    else {
        return Err(Reply::not_found());
    };
    if field.ty == FieldType::Id {
        return ids::normalize(v).ok_or_else(Reply::not_found);
    }
    let found = inner.store.find_by(&def.name, &field.name, v);
    match found.as_slice() {
        [id] => Ok(id.clone()),
        [] => Err(Reply::not_found()),
        _ => Err(multiple(ctx, def, &found)),
    }
}

fn multiple(ctx: &Ctx<'_>, def: &ObjectDef, found: &[String]) -> Reply {
    Reply::json(
        300,
        Value::Array(
            found
                .iter()
                .map(|id| json!(format!("{}/sobjects/{}/{id}", ctx.base, def.name)))
                .collect(),
        ),
    )
}

pub(super) fn get_by_ext(
    ctx: &Ctx<'_>,
    inner: &Inner,
    o: &str,
    f: &str,
    v: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let id = ext_matches(ctx, inner, def, f, v)?;
    get_record(ctx, inner, &def.name, &id, req)
}

pub(super) fn delete_by_ext(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    o: &str,
    f: &str,
    v: &str,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let id = ext_matches(ctx, inner, def, f, v)?;
    delete(ctx, inner, &def.name, &id)
}

pub(super) fn upsert(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    o: &str,
    f: &str,
    v: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let body = req.body_object()?;
    let update_only =
        param(&req.query, "updateOnly").is_some_and(|x| x.eq_ignore_ascii_case("true"));
    let Inner { store, locks, .. } = inner;
    match store.upsert(locks, &def.name, f, v, body, update_only) {
        Ok(u) if u.created => Ok(Reply::json(
            201,
            json!({"id": u.id, "success": true, "errors": [], "created": true}),
        )
        .with_header(
            "Location",
            format!("{}/sobjects/{}/{}", ctx.base, def.name, u.id),
        )),
        Ok(u) => Ok(Reply::json(
            200,
            json!({"id": u.id, "success": true, "errors": [], "created": false}),
        )),
        Err(UpsertError::UnknownField) => Err(Reply::not_found()),
        Err(UpsertError::Multiple(found)) => Err(multiple(ctx, def, &found)),
        Err(UpsertError::Record(e)) => Err(e.into_reply()),
    }
}
