//! A parsed [`Query`](super::Query) against the store: field paths resolved through lookups (`Account.Name`),
//! the filter, ordering, `LIMIT`/`OFFSET`, and the records rendered with parent fields nested
//! under their relationship, as the REST API answers.
//!
//! Field names are checked before any record is read, so a bad query fails the same way on an
//! empty org as on a full one.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use crate::reply::RecordError;
use crate::schema::ObjectDef;
use crate::store::{Record, Store, text_of};

use super::parse::{Expr, Lit, Op, malformed, parse};

/// A field path resolved against the schema: lookups to follow, then the final field.
struct Path {
    /// (lookup field name, relationship name) per hop.
    hops: Vec<(String, String)>,
    field: String,
}

fn resolve_path(store: &Store, def: &ObjectDef, path: &str) -> Result<Path, RecordError> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = def;
    let mut hops = Vec::new();
    let (last, rels) = parts.split_last().ok_or_else(|| malformed("empty field"))?;
    let mut rels = rels;
    // `Account.Name` may also be written with the object name prefix `Order.Account.Name`.
    if rels
        .first()
        .is_some_and(|r| r.eq_ignore_ascii_case(&def.name))
        && def.relationship(rels[0]).is_none()
    {
        rels = &rels[1..];
    }
    // SOQL follows at most five levels of parent relationships.
    if rels.len() > 5 {
        return Err(malformed(format!(
            "{path}: at most 5 levels of parent relationships"
        )));
    }
    for rel in rels {
        let f = current
            .relationship(rel)
            .ok_or_else(|| no_column(path, &current.name))?;
        let target = f.reference_to.as_deref().unwrap_or_default();
        let next = store
            .schema()
            .object(target)
            .ok_or_else(|| no_column(path, &current.name))?;
        hops.push((
            f.name.clone(),
            f.relationship_name.clone().unwrap_or_default(),
        ));
        current = next;
    }
    let f = current
        .field(last)
        .ok_or_else(|| no_column(path, &current.name))?;
    Ok(Path {
        hops,
        field: f.name.clone(),
    })
}

fn no_column(path: &str, obj: &str) -> RecordError {
    RecordError::new(
        "INVALID_FIELD",
        format!(
            "No such column '{path}' on entity '{obj}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

fn value_at<'a>(store: &'a Store, rec: &'a Record, path: &Path) -> Option<&'a Value> {
    let mut current = rec;
    for (lookup, _) in &path.hops {
        let id = current.get(lookup)?.as_str()?;
        current = store.get(None, id).ok()?.1;
    }
    current.get(&path.field)
}

fn compare(v: Option<&Value>, lit: &Lit) -> Option<Ordering> {
    let v = v.filter(|v| !v.is_null());
    match (v, lit) {
        (None, Lit::Null) => Some(Ordering::Equal),
        (None, _) | (Some(_), Lit::Null) => None,
        (Some(v), Lit::Num(n)) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|x| x.partial_cmp(n)),
        (Some(v), Lit::Bool(b)) => v.as_bool().map(|x| x.cmp(b)),
        (Some(v), Lit::Str(s) | Lit::Date(s)) => {
            let x = text_of(v)?;
            Some(x.to_lowercase().cmp(&s.to_lowercase()))
        }
    }
}

pub(super) fn like(v: Option<&Value>, pattern: &Lit) -> bool {
    let (Some(text), Lit::Str(p)) = (v.and_then(text_of), pattern) else {
        return false;
    };
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let p: Vec<char> = p.to_lowercase().chars().collect();
    // Dynamic programming over (pattern prefix, text prefix): O(|p|·|t|), no backtracking blow-up
    // on patterns like '%a%a%a%b'.
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for pc in &p {
        let mut next = vec![false; t.len() + 1];
        match pc {
            '%' => {
                let mut seen = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    seen |= row[j];
                    *slot = seen;
                }
            }
            c => {
                for j in 1..=t.len() {
                    next[j] = row[j - 1] && (*c == '_' || t[j - 1] == *c);
                }
            }
        }
        row = next;
    }
    row[t.len()]
}

fn eval(store: &Store, def: &ObjectDef, rec: &Record, e: &Expr) -> Result<bool, RecordError> {
    Ok(match e {
        Expr::And(a, b) => eval(store, def, rec, a)? && eval(store, def, rec, b)?,
        Expr::Or(a, b) => eval(store, def, rec, a)? || eval(store, def, rec, b)?,
        Expr::Not(a) => !eval(store, def, rec, a)?,
        Expr::Cmp(f, op, lit) => {
            let path = resolve_path(store, def, f)?;
            let v = value_at(store, rec, &path);
            match op {
                Op::Like => like(v, lit),
                Op::Eq => compare(v, lit) == Some(Ordering::Equal),
                Op::Ne => compare(v, lit) != Some(Ordering::Equal),
                Op::Lt => compare(v, lit) == Some(Ordering::Less),
                Op::Le => matches!(compare(v, lit), Some(Ordering::Less | Ordering::Equal)),
                Op::Gt => compare(v, lit) == Some(Ordering::Greater),
                Op::Ge => matches!(compare(v, lit), Some(Ordering::Greater | Ordering::Equal)),
            }
        }
        Expr::In(f, list, negated) => {
            let path = resolve_path(store, def, f)?;
            let v = value_at(store, rec, &path);
            let found = list.iter().any(|l| compare(v, l) == Some(Ordering::Equal));
            found != *negated
        }
    })
}

/// Result of running a query: total count and the rendered records (all of them; the caller
/// pages).
pub struct Outcome {
    pub total: usize,
    pub records: Vec<Value>,
}

/// Runs `q` against the store. `base` is `/services/data/vNN.N` for record URLs.
pub fn run(store: &Store, q: &str, base: &str) -> Result<Outcome, RecordError> {
    let query = parse(q)?;
    let def = store.schema().object(&query.object).ok_or_else(|| {
        RecordError::new(
            "INVALID_TYPE",
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                query.object
            ),
        )
    })?;
    let select: Vec<(String, Path)> = query
        .fields
        .iter()
        .map(|f| resolve_path(store, def, f).map(|p| (f.clone(), p)))
        .collect::<Result<_, _>>()?;
    let order: Vec<(Path, bool, Option<bool>)> = query
        .order
        .iter()
        .map(|(f, asc, nf)| resolve_path(store, def, f).map(|p| (p, *asc, *nf)))
        .collect::<Result<_, _>>()?;
    if let Some(filter) = &query.filter {
        // Validate field names even when there are no records to evaluate them on.
        validate_expr(store, def, filter)?;
    }
    let mut matched: Vec<&Record> = Vec::new();
    for (_, rec) in store.records(&def.name) {
        let keep = match &query.filter {
            Some(f) => eval(store, def, rec, f)?,
            None => true,
        };
        if keep {
            matched.push(rec);
        }
    }
    if !order.is_empty() {
        matched.sort_by(|a, b| {
            for (path, asc, nulls_first) in &order {
                let va = value_at(store, a, path).filter(|v| !v.is_null());
                let vb = value_at(store, b, path).filter(|v| !v.is_null());
                // SOQL default: NULLS FIRST for ASC, NULLS LAST for DESC.
                let nf = nulls_first.unwrap_or(*asc);
                let ord = match (va, vb) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => {
                        if nf {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (Some(_), None) => {
                        if nf {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (Some(x), Some(y)) => {
                        let o = match (x.as_f64(), y.as_f64()) {
                            (Some(p), Some(q)) => p.partial_cmp(&q).unwrap_or(Ordering::Equal),
                            _ => text_of(x)
                                .unwrap_or_default()
                                .to_lowercase()
                                .cmp(&text_of(y).unwrap_or_default().to_lowercase()),
                        };
                        if *asc { o } else { o.reverse() }
                    }
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
    }
    let offset = query.offset.unwrap_or(0);
    let limited: Vec<&Record> = matched
        .into_iter()
        .skip(offset)
        .take(query.limit.unwrap_or(usize::MAX))
        .collect();
    if query.count_only {
        return Ok(Outcome {
            total: limited.len(),
            records: Vec::new(),
        });
    }
    let records = limited
        .iter()
        .map(|rec| render_row(store, def, rec, &select, base))
        .collect();
    Ok(Outcome {
        total: limited.len(),
        records,
    })
}

fn validate_expr(store: &Store, def: &ObjectDef, e: &Expr) -> Result<(), RecordError> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            validate_expr(store, def, a)?;
            validate_expr(store, def, b)
        }
        Expr::Not(a) => validate_expr(store, def, a),
        Expr::Cmp(f, _, _) | Expr::In(f, _, _) => resolve_path(store, def, f).map(|_| ()),
    }
}

fn attributes(obj: &str, id: &str, base: &str) -> Value {
    json!({"type": obj, "url": format!("{base}/sobjects/{obj}/{id}")})
}

/// Inserts a parent field nested under its relationship name:
/// `{"Account": {"attributes": …, "Name": "Acme"}}`; a missing parent is `null`.
fn insert_path(
    slot: &mut Map<String, Value>,
    store: &Store,
    rec: &Record,
    hops: &[(String, String)],
    field: &str,
    base: &str,
) {
    let Some(((lookup, rel), rest)) = hops.split_first() else {
        slot.insert(
            field.to_owned(),
            rec.get(field).cloned().unwrap_or(Value::Null),
        );
        return;
    };
    let parent = rec
        .get(lookup)
        .and_then(Value::as_str)
        .and_then(|pid| store.get(None, pid).ok());
    let entry = slot.entry(rel.clone()).or_insert_with(|| match parent {
        Some((pdef, prec)) => {
            let pid = prec.get("Id").and_then(Value::as_str).unwrap_or_default();
            let mut m = Map::new();
            m.insert("attributes".into(), attributes(&pdef.name, pid, base));
            Value::Object(m)
        }
        None => Value::Null,
    });
    if let (Value::Object(m), Some((_, prec))) = (entry, parent) {
        insert_path(m, store, prec, rest, field, base);
    }
}

fn render_row(
    store: &Store,
    def: &ObjectDef,
    rec: &Record,
    select: &[(String, Path)],
    base: &str,
) -> Value {
    let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(&def.name, id, base));
    for (_, path) in select {
        if path.hops.is_empty() {
            out.insert(
                path.field.clone(),
                rec.get(&path.field).cloned().unwrap_or(Value::Null),
            );
            continue;
        }
        insert_path(&mut out, store, rec, &path.hops, &path.field, base);
    }
    Value::Object(out)
}
