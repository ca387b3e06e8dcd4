//! The records a query matched, by id, and their rendering: as the REST API's JSON records
//! (parent fields nested under their relationship), or as flat values per selected field for
//! Bulk API 2.0 query results (CSV).
//!
//! Only ids are kept, so a REST cursor or a Bulk query job costs an id per record; each page is
//! rendered when it is read, from the records as they are then. A record deleted since the
//! query ran is left out; one changed since is shown as it is now.

use std::ops::Range;

use serde_json::{Map, Value, json};

use crate::schema::ObjectDef;
use crate::store::{Record, Store};

use super::run::{Path, value_at};

/// The records a query matched, in its order, by id: what a cursor or a query job keeps.
/// Rendering a page from them costs a lookup per record; keeping rendered records would cost
/// the whole result for as long as the cursor is open.
pub struct Rows {
    object: String,
    ids: Vec<String>,
    select: Vec<Path>,
    /// The selected fields as the query wrote them (`Account.Name`).
    columns: Vec<String>,
}

impl Rows {
    pub(super) fn new(
        object: String,
        ids: Vec<String>,
        select: Vec<Path>,
        columns: Vec<String>,
    ) -> Self {
        Self {
            object,
            ids,
            select,
            columns,
        }
    }

    /// `n` matches of `object` with nothing selected: what a job's bookkeeping sees.
    #[cfg(test)]
    pub fn of_len(object: &str, n: usize) -> Self {
        Self::new(
            object.to_owned(),
            vec![String::new(); n],
            Vec::new(),
            Vec::new(),
        )
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The selected fields as the query wrote them, in `SELECT` order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows in `range`, rendered as the REST API answers them (`base` is
    /// `/services/data/vNN.N` for record URLs). A record deleted since the query ran is left
    /// out; one changed since is shown as it is now.
    pub fn render(&self, store: &Store, range: Range<usize>, base: &str) -> Vec<Value> {
        let Some(def) = store.schema().object(&self.object) else {
            return Vec::new();
        };
        self.live(store, range)
            .map(|rec| render_row(store, def, rec, &self.select, base))
            .collect()
    }

    /// The rows in `range` as the values of the selected fields, in `SELECT` order (`None`:
    /// null, or a parent that is not there): the values the REST JSON holds, flat, for CSV.
    /// Deleted records are left out, as in [`Rows::render`].
    pub fn values<'a>(
        &'a self,
        store: &'a Store,
        range: Range<usize>,
    ) -> impl Iterator<Item = Vec<Option<&'a Value>>> + 'a {
        self.live(store, range).map(move |rec| {
            self.select
                .iter()
                .map(|path| value_at(store, rec, path).filter(|v| !v.is_null()))
                .collect()
        })
    }

    /// The records of `range` still in the store.
    fn live<'a>(
        &'a self,
        store: &'a Store,
        range: Range<usize>,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        self.ids
            .get(range)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| store.record(&self.object, id))
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

fn render_row(store: &Store, def: &ObjectDef, rec: &Record, select: &[Path], base: &str) -> Value {
    let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(&def.name, id, base));
    for path in select {
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
