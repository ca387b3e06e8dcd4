//! A parsed [`Query`](super::Query) against the store: field paths resolved through lookups
//! (`Account.Name`), the filter, ordering and `LIMIT`/`OFFSET`. The matched records come out as
//! [`Rows`] (see `rows` for how they are rendered).
//!
//! Two steps, so a query can be checked when it is submitted and evaluated later (Bulk API 2.0
//! query jobs): [`prepare`] checks field names before any record is read, so a bad query fails
//! the same way on an empty org as on a full one; [`Prepared::run`] evaluates it.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use crate::reply::RecordError;
use crate::schema::ObjectDef;
use crate::store::{Record, Store, text_of};

use super::parse::{Expr, Lit, Op, malformed, parse};
use super::rows::Rows;

/// A field path resolved against the schema: lookups to follow, then the final field.
pub(super) struct Path {
    /// (lookup field name, relationship name) per hop.
    pub(super) hops: Vec<(String, String)>,
    pub(super) field: String,
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

pub(super) fn value_at<'a>(store: &'a Store, rec: &'a Record, path: &Path) -> Option<&'a Value> {
    let mut current = rec;
    for (lookup, _) in &path.hops {
        let id = current.get(lookup)?.as_str()?;
        current = store.get(None, id).ok()?.1;
    }
    current.get(&path.field)
}

/// The text of a value, borrowed where it is text already.
fn text_ref(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => text_of(other).map(Cow::Owned),
    }
}

/// `text` lower-cased, compared with text already lower-case, without building the lower-cased
/// copy: a filter over a large org compares every record.
fn cmp_lowercase(text: &str, lower: &str) -> Ordering {
    text.chars().flat_map(char::to_lowercase).cmp(lower.chars())
}

/// Compares a value with a literal whose text is lower-case (see [`Filter::compile`]).
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
        (Some(v), Lit::Str(s) | Lit::Date(s)) => Some(cmp_lowercase(&text_ref(v)?, s)),
    }
}

/// `LIKE`, case-insensitive. The pattern comes lower-cased (a compiled [`Filter`]'s literals
/// are), so only the value is lower-cased per record.
pub(super) fn like(v: Option<&Value>, pattern: &Lit) -> bool {
    let (Some(text), Lit::Str(p)) = (v.and_then(text_ref), pattern) else {
        return false;
    };
    // `str::to_lowercase`, as the pattern was (it differs from lower-casing char by char
    // for a final sigma).
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let p: Vec<char> = p.chars().collect();
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

/// A `WHERE` clause checked against the schema once: field paths resolved, literals
/// lower-cased, so evaluating it on a record looks nothing up but the record's fields.
enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Cmp(Path, Op, Lit),
    In(Path, Vec<Lit>, bool),
}

fn lower(lit: &Lit) -> Lit {
    match lit {
        Lit::Str(s) => Lit::Str(s.to_lowercase()),
        Lit::Date(s) => Lit::Date(s.to_lowercase()),
        other => other.clone(),
    }
}

impl Filter {
    /// Fails on an unknown field even when there is no record to evaluate it on, so a bad
    /// query fails the same way on an empty org as on a full one.
    fn compile(store: &Store, def: &ObjectDef, e: &Expr) -> Result<Self, RecordError> {
        let sub = |e: &Expr| Self::compile(store, def, e).map(Box::new);
        Ok(match e {
            Expr::And(a, b) => Self::And(sub(a)?, sub(b)?),
            Expr::Or(a, b) => Self::Or(sub(a)?, sub(b)?),
            Expr::Not(a) => Self::Not(sub(a)?),
            Expr::Cmp(f, op, lit) => Self::Cmp(resolve_path(store, def, f)?, *op, lower(lit)),
            Expr::In(f, list, negated) => Self::In(
                resolve_path(store, def, f)?,
                list.iter().map(lower).collect(),
                *negated,
            ),
        })
    }

    fn matches(&self, store: &Store, rec: &Record) -> bool {
        match self {
            Self::And(a, b) => a.matches(store, rec) && b.matches(store, rec),
            Self::Or(a, b) => a.matches(store, rec) || b.matches(store, rec),
            Self::Not(a) => !a.matches(store, rec),
            Self::Cmp(path, op, lit) => {
                let v = value_at(store, rec, path);
                match op {
                    Op::Like => like(v, lit),
                    Op::Eq => compare(v, lit) == Some(Ordering::Equal),
                    Op::Ne => compare(v, lit) != Some(Ordering::Equal),
                    Op::Lt => compare(v, lit) == Some(Ordering::Less),
                    Op::Le => matches!(compare(v, lit), Some(Ordering::Less | Ordering::Equal)),
                    Op::Gt => compare(v, lit) == Some(Ordering::Greater),
                    Op::Ge => {
                        matches!(compare(v, lit), Some(Ordering::Greater | Ordering::Equal))
                    }
                }
            }
            Self::In(path, list, negated) => {
                let v = value_at(store, rec, path);
                let found = list.iter().any(|l| compare(v, l) == Some(Ordering::Equal));
                found != *negated
            }
        }
    }
}

/// One `ORDER BY` value of one record, computed once before sorting (not once per comparison).
enum SortValue {
    Null,
    /// Numbers compare as numbers with each other; the text is for a number against text.
    Num(f64, String),
    Text(String),
}

impl SortValue {
    fn of(v: Option<&Value>) -> Self {
        match v.filter(|v| !v.is_null()) {
            None => Self::Null,
            Some(v) => {
                let text = text_ref(v).map(|t| t.to_lowercase()).unwrap_or_default();
                match v.as_f64() {
                    Some(n) => Self::Num(n, text),
                    None => Self::Text(text),
                }
            }
        }
    }

    fn text(&self) -> &str {
        match self {
            Self::Null => "",
            Self::Num(_, t) | Self::Text(t) => t,
        }
    }
}

/// SOQL's order of two values of one `ORDER BY` item.
fn cmp_sort(a: &SortValue, b: &SortValue, asc: bool, nulls_first: Option<bool>) -> Ordering {
    // SOQL default: NULLS FIRST for ASC, NULLS LAST for DESC.
    let nf = nulls_first.unwrap_or(asc);
    let null_side = if nf {
        Ordering::Less
    } else {
        Ordering::Greater
    };
    match (a, b) {
        (SortValue::Null, SortValue::Null) => Ordering::Equal,
        (SortValue::Null, _) => null_side,
        (_, SortValue::Null) => null_side.reverse(),
        (x, y) => {
            let o = match (x, y) {
                (SortValue::Num(p, _), SortValue::Num(q, _)) => {
                    p.partial_cmp(q).unwrap_or(Ordering::Equal)
                }
                _ => x.text().cmp(y.text()),
            };
            if asc { o } else { o.reverse() }
        }
    }
}

/// Result of running a query: how many records it matched and which (`rows` is empty for
/// `COUNT()`).
pub struct Outcome {
    pub total: usize,
    pub rows: Rows,
}

/// A query checked against the schema but not evaluated yet: names resolved, filter compiled.
/// Bulk API 2.0 query jobs check their query when the job is created and evaluate it later, in
/// the background.
pub struct Prepared {
    object: String,
    /// The selected fields as written (`Account.Name`), for CSV headers.
    columns: Vec<String>,
    select: Vec<Path>,
    order: Vec<(Path, bool, Option<bool>)>,
    filter: Option<Filter>,
    limit: Option<usize>,
    offset: Option<usize>,
    count_only: bool,
}

/// Parses `q` and checks it against the schema, without reading a record.
pub fn prepare(store: &Store, q: &str) -> Result<Prepared, RecordError> {
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
    let select: Vec<Path> = query
        .fields
        .iter()
        .map(|f| resolve_path(store, def, f))
        .collect::<Result<_, _>>()?;
    let order: Vec<(Path, bool, Option<bool>)> = query
        .order
        .iter()
        .map(|(f, asc, nf)| resolve_path(store, def, f).map(|p| (p, *asc, *nf)))
        .collect::<Result<_, _>>()?;
    let filter = query
        .filter
        .as_ref()
        .map(|f| Filter::compile(store, def, f))
        .transpose()?;
    Ok(Prepared {
        object: def.name.clone(),
        columns: query.fields,
        select,
        order,
        filter,
        limit: query.limit,
        offset: query.offset,
        count_only: query.count_only,
    })
}

impl Prepared {
    /// The queried object, in its schema spelling.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// `SELECT COUNT() …`.
    pub fn is_count(&self) -> bool {
        self.count_only
    }

    /// Whether the query has an `OFFSET` clause.
    pub fn has_offset(&self) -> bool {
        self.offset.is_some()
    }

    /// Evaluates the query over the store as it is now.
    pub fn run(self, store: &Store) -> Outcome {
        let Self {
            object,
            columns,
            select,
            order,
            filter,
            limit,
            offset,
            count_only,
        } = self;
        let matched = store
            .records(&object)
            .filter(|(_, rec)| filter.as_ref().is_none_or(|f| f.matches(store, rec)));
        // Without ORDER BY: the store's order, which is creation order (by record id).
        let mut ids: Vec<&String> = if order.is_empty() {
            matched.map(|(id, _)| id).collect()
        } else {
            let mut keyed: Vec<(Vec<SortValue>, &String)> = matched
                .map(|(id, rec)| {
                    let key = order
                        .iter()
                        .map(|(path, _, _)| SortValue::of(value_at(store, rec, path)))
                        .collect();
                    (key, id)
                })
                .collect();
            // Stable: records equal on every ORDER BY item keep their creation order.
            keyed.sort_by(|(a, _), (b, _)| {
                order
                    .iter()
                    .zip(a.iter().zip(b))
                    .map(|((_, asc, nf), (x, y))| cmp_sort(x, y, *asc, *nf))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
            keyed.into_iter().map(|(_, id)| id).collect()
        };
        let offset = offset.unwrap_or(0).min(ids.len());
        ids.drain(..offset);
        ids.truncate(limit.unwrap_or(usize::MAX));
        let total = ids.len();
        let ids = if count_only {
            Vec::new()
        } else {
            ids.into_iter().cloned().collect()
        };
        Outcome {
            total,
            rows: Rows::new(object, ids, select, columns),
        }
    }
}

/// Runs `q` against the store.
pub fn run(store: &Store, q: &str) -> Result<Outcome, RecordError> {
    Ok(prepare(store, q)?.run(store))
}
