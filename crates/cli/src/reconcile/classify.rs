//! The comparison rules, free of I/O: what makes an order missing, duplicated, mismatched or
//! orphaned, and which field values differ. Apart from the reads so that it can be tested on
//! hand-made sides, and fed ids from other sources ([`Classifier`] is public for that).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, FixedOffset};
use serde_json::Value;
use uuid::Uuid;

use super::keys::uuid_time;
use super::orders::{Scope, StoredOrder};
use super::report::{Counts, Duplicate, Mismatch, Missing, ObjectKind, Orphan, Problem};
use super::salesforce::SalesforceSide;

/// How a compared field's two values are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Exact text (Salesforce stores an empty text as null).
    Text,
    /// Numerically; with a scale, as Salesforce holds them (rounded to that many decimals).
    Number { scale: Option<u32> },
    /// `YYYY-MM-DD`.
    Date,
    /// The same instant, whatever the notation (Salesforce answers `…T10:00:00.000+0000`).
    Datetime,
}

/// The compared fields of the order and item objects, in the order [`SalesforceSide`] holds
/// their values.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub order: Vec<(String, FieldKind)>,
    pub item: Vec<(String, FieldKind)>,
}

/// What one order's records should hold in the compared fields (`None`: the order has no value
/// there, so the field is not written and not compared).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expected {
    pub order: Vec<Option<Value>>,
    /// Line number → the item's values.
    pub items: HashMap<u32, Vec<Option<Value>>>,
}

/// The comparison itself, free of I/O: fed Salesforce's side, then each order in scope, then
/// told which leftover ids exist in Postgres at all. A run does this a step at a time (a page
/// of orders with the records sorting among them, then [`Classifier::settle`]); fed everything
/// at once, it needs only [`Classifier::finish`].
pub struct Classifier {
    sf: SalesforceSide,
    fields: Fields,
    check_items: bool,
    orders: u64,
    missing: Vec<Missing>,
    missing_failed: Vec<Missing>,
    duplicated: Vec<Duplicate>,
    mismatched: Vec<Mismatch>,
    orphaned: Vec<Orphan>,
}

/// The classes a [`Classifier`] found.
#[derive(Default)]
pub struct Classes {
    pub counts: Counts,
    pub missing: Vec<Missing>,
    pub missing_failed: Vec<Missing>,
    pub duplicated: Vec<Duplicate>,
    pub mismatched: Vec<Mismatch>,
    pub orphaned: Vec<Orphan>,
}

impl Classes {
    /// Adds the classes of the next range of order ids (ranges come in id order, so every list
    /// but the orphans, sorted by object first, stays sorted).
    pub(crate) fn extend(&mut self, next: Classes) {
        self.counts.orders += next.counts.orders;
        self.counts.salesforce_orders += next.counts.salesforce_orders;
        self.counts.salesforce_items += next.counts.salesforce_items;
        self.counts.ignored_records += next.counts.ignored_records;
        self.missing.extend(next.missing);
        self.missing_failed.extend(next.missing_failed);
        self.duplicated.extend(next.duplicated);
        self.mismatched.extend(next.mismatched);
        self.orphaned.extend(next.orphaned);
        self.orphaned
            .sort_by(|a, b| (a.object, &a.external_id).cmp(&(b.object, &b.external_id)));
    }
}

impl Classifier {
    /// `check_items`: the mapping writes items, so their count is compared.
    pub fn new(sf: SalesforceSide, check_items: bool) -> Self {
        Self {
            sf,
            fields: Fields::default(),
            check_items,
            orders: 0,
            missing: Vec::new(),
            missing_failed: Vec::new(),
            duplicated: Vec::new(),
            mismatched: Vec::new(),
            orphaned: Vec::new(),
        }
    }

    /// Compares these fields too, with the values [`Classifier::order_with`] is given.
    pub fn with_fields(mut self, fields: Fields) -> Self {
        self.fields = fields;
        self
    }

    /// Compares one order in scope and takes its records out of the Salesforce side.
    pub fn order(&mut self, o: StoredOrder) {
        self.order_with(o, None);
    }

    /// [`Classifier::order`], also comparing the fields' values with `expected`.
    pub fn order_with(&mut self, o: StoredOrder, expected: Option<&Expected>) {
        self.orders += 1;
        let records = self.sf.orders.remove(&o.id);
        let items = self.sf.items.remove(&o.id).unwrap_or_default();
        let Some(records) = records else {
            let failed = o.sync_state == "failed";
            let missing = Missing {
                order_id: o.id,
                sync_state: o.sync_state,
                created_at: o.created_at,
                error_code: o.last_error_code,
                error_message: o.last_error_message,
            };
            if failed {
                self.missing_failed.push(missing);
            } else {
                self.missing.push(missing);
            }
            return;
        };
        let mut problems = Vec::new();
        if let Some(stored) = &o.salesforce_id
            && !records.iter().any(|r| same_id(r, stored))
        {
            problems.push(Problem::SalesforceId {
                stored: stored.clone(),
                in_salesforce: records.clone(),
            });
        }
        if let Some(expected) = expected {
            // The record the order names, or the first: with duplicates, one is compared.
            let record = o
                .salesforce_id
                .as_deref()
                .and_then(|s| records.iter().find(|r| same_id(r, s)))
                .or(records.first());
            if let Some(record) = record {
                self.compare(&mut problems, record, None, &expected.order);
            }
            let mut lines: Vec<_> = expected.items.iter().collect();
            lines.sort_by_key(|(line, _)| **line);
            for (line, values) in lines {
                if let Some((_, record)) = items.iter().find(|(l, _)| l == line) {
                    self.compare(&mut problems, record, Some(*line), values);
                }
            }
        }
        if records.len() > 1 {
            self.duplicated.push(Duplicate {
                object: ObjectKind::Order,
                external_id: o.id.to_string(),
                order_id: o.id,
                salesforce_ids: records,
            });
        }
        if self.check_items {
            let (distinct, dups) = group_items(o.id, items);
            self.duplicated.extend(dups);
            let lines = u32::try_from(o.lines).unwrap_or(u32::MAX);
            if distinct != lines {
                problems.push(Problem::ItemCount {
                    lines,
                    items: distinct,
                });
            }
        }
        if o.sync_state != "synced" {
            problems.push(Problem::NotSynced);
        }
        if !problems.is_empty() {
            self.mismatched.push(Mismatch {
                order_id: o.id,
                sync_state: o.sync_state,
                problems,
            });
        }
    }

    /// Adds a [`Problem::Field`] for each compared field of `record` whose value differs.
    fn compare(
        &self,
        problems: &mut Vec<Problem>,
        record: &str,
        line: Option<u32>,
        expected: &[Option<Value>],
    ) {
        let (object, fields) = match line {
            None => (ObjectKind::Order, &self.fields.order),
            Some(_) => (ObjectKind::Item, &self.fields.item),
        };
        let actual = self.sf.values.get(record);
        for (i, (name, kind)) in fields.iter().enumerate() {
            let Some(Some(want)) = expected.get(i) else {
                continue;
            };
            let got = actual.and_then(|v| v.get(i)).unwrap_or(&Value::Null);
            if !same_value(*kind, want, got) {
                problems.push(Problem::Field {
                    object,
                    line,
                    field: name.clone(),
                    in_postgres: want.clone(),
                    in_salesforce: got.clone(),
                });
            }
        }
    }

    /// Order ids Salesforce still holds records for: no order in scope matched them.
    pub fn leftovers(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .sf
            .orders
            .keys()
            .chain(self.sf.items.keys())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Where a run puts the Salesforce records of the orders it compares next.
    pub(crate) fn side_mut(&mut self) -> &mut SalesforceSide {
        &mut self.sf
    }

    /// Ends a step: the leftovers naming an order in `existing` are out of scope, the others
    /// orphans if `scope` covers the time in their id; then the Salesforce side is emptied (the
    /// records of the orders compared included), keeping its counters.
    pub fn settle(&mut self, existing: &HashSet<Uuid>, scope: &Scope) {
        let in_scope =
            |id: &Uuid| !existing.contains(id) && uuid_time(*id).is_none_or(|t| scope.contains(t));
        for (id, records) in std::mem::take(&mut self.sf.orders) {
            if !in_scope(&id) {
                continue;
            }
            if records.len() > 1 {
                self.duplicated.push(Duplicate {
                    object: ObjectKind::Order,
                    external_id: id.to_string(),
                    order_id: id,
                    salesforce_ids: records.clone(),
                });
            }
            self.orphaned.push(Orphan {
                object: ObjectKind::Order,
                external_id: id.to_string(),
                salesforce_ids: records,
            });
        }
        for (id, items) in std::mem::take(&mut self.sf.items) {
            if !in_scope(&id) {
                continue;
            }
            let mut by_line: HashMap<u32, Vec<String>> = HashMap::new();
            for (line, record) in items {
                by_line.entry(line).or_default().push(record);
            }
            for (line, records) in by_line {
                let external_id = format!("{id}-{line}");
                if records.len() > 1 {
                    self.duplicated.push(Duplicate {
                        object: ObjectKind::Item,
                        external_id: external_id.clone(),
                        order_id: id,
                        salesforce_ids: records.clone(),
                    });
                }
                self.orphaned.push(Orphan {
                    object: ObjectKind::Item,
                    external_id,
                    salesforce_ids: records,
                });
            }
        }
        self.sf.values = HashMap::new();
    }

    /// [`Classifier::settle`]s what is left and returns the classes.
    pub fn finish(mut self, existing: &HashSet<Uuid>, scope: &Scope) -> Classes {
        self.settle(existing, scope);
        let mut orphaned = std::mem::take(&mut self.orphaned);
        // Postgres pages come by id, so missing and mismatched are already sorted.
        self.duplicated.sort_by(|a, b| {
            (a.order_id, a.object, &a.external_id).cmp(&(b.order_id, b.object, &b.external_id))
        });
        orphaned.sort_by(|a, b| (a.object, &a.external_id).cmp(&(b.object, &b.external_id)));
        Classes {
            counts: Counts {
                orders: self.orders,
                salesforce_orders: self.sf.order_records,
                salesforce_items: self.sf.item_records,
                ignored_records: self.sf.ignored,
            },
            missing: self.missing,
            missing_failed: self.missing_failed,
            duplicated: self.duplicated,
            mismatched: self.mismatched,
            orphaned,
        }
    }
}

/// Whether Salesforce's value is the order's, as the field kind reads them.
fn same_value(kind: FieldKind, want: &Value, got: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match kind {
        FieldKind::Number { scale } => {
            let number = |v: &Value| text(v).and_then(|t| t.trim().parse::<f64>().ok());
            match (number(want), number(got)) {
                (Some(a), Some(b)) => match scale {
                    // Both as Salesforce holds them: rounded to the field's decimals. The limits
                    // keep compared numbers within an f64's 15 exact digits.
                    Some(s) => {
                        let unit = 10f64.powi(i32::try_from(s).unwrap_or(i32::MAX));
                        (a * unit).round() == (b * unit).round()
                    }
                    None => a == b,
                },
                _ => false,
            }
        }
        FieldKind::Datetime => {
            let instant = |v: &Value| {
                let t = text(v)?;
                DateTime::parse_from_rfc3339(&t)
                    .or_else(|_| DateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.f%z"))
                    .ok()
                    .map(|d: DateTime<FixedOffset>| d.to_utc())
            };
            match (instant(want), instant(got)) {
                (Some(a), Some(b)) => a == b,
                _ => text(want) == text(got),
            }
        }
        FieldKind::Date | FieldKind::Text => match (text(want), text(got)) {
            // Salesforce keeps an empty text as null.
            (Some(a), None) => a.is_empty(),
            (a, b) => a == b,
        },
    }
}

/// Salesforce ids compare case-sensitively in their 15-character form; the 18-character form
/// adds a case-insensitive checksum, so either form of one id matches.
fn same_id(a: &str, b: &str) -> bool {
    a == b || (a.len() >= 15 && b.len() >= 15 && a.get(..15) == b.get(..15))
}

/// (distinct lines, duplicates) of one order's items.
fn group_items(order_id: Uuid, mut items: Vec<(u32, String)>) -> (u32, Vec<Duplicate>) {
    items.sort_unstable();
    let mut distinct = 0u32;
    let mut dups = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let line = items[i].0;
        let mut j = i + 1;
        while j < items.len() && items[j].0 == line {
            j += 1;
        }
        distinct += 1;
        if j - i > 1 {
            dups.push(Duplicate {
                object: ObjectKind::Item,
                external_id: format!("{order_id}-{line}"),
                order_id,
                salesforce_ids: items[i..j].iter().map(|(_, id)| id.clone()).collect(),
            });
        }
        i = j;
    }
    (distinct, dups)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Utc;

    use super::*;

    fn stored(id: Uuid, state: &str, sf_id: Option<&str>, lines: i64) -> StoredOrder {
        StoredOrder {
            id,
            sync_state: state.into(),
            salesforce_id: sf_id.map(Into::into),
            last_error_code: (state == "failed").then(|| "UNKNOWN_SKU".into()),
            last_error_message: (state == "failed").then(|| "no such SKU".into()),
            created_at: Utc::now(),
            lines,
        }
    }

    /// Every class from one Salesforce side; duplicates included, which the emulator's unique
    /// external id fields prevent (the integration test uses a schema without uniqueness).
    #[test]
    fn classifies_every_anomaly() {
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        let [ok, lost, failed, dup, wrong_id, short, in_flight, orphan] = ids[..] else {
            unreachable!()
        };
        let deleted_long_ago = Uuid::now_v7();
        let out_of_scope = Uuid::now_v7();
        let mut sf = SalesforceSide::default();
        // The random end of the UUID: ids made in one millisecond share their start.
        let rec = |o: Uuid| format!("801{}", &o.simple().to_string()[17..]);
        for o in [ok, dup, wrong_id, short, in_flight, orphan, out_of_scope] {
            sf.add_order(&o.to_string(), rec(o));
            for line in 1..=3 {
                if o == short && line == 3 {
                    continue;
                }
                sf.add_item(&format!("{o}-{line}"), format!("802-{o}-{line}"));
            }
        }
        sf.add_order(&dup.to_string(), "801SECOND".into());
        sf.add_item(&format!("{dup}-2"), "802SECOND".into());
        sf.add_order("ORD-1", "801FOREIGN".into());
        sf.add_item("ORD-1-1", "802FOREIGN".into());

        let mut c = Classifier::new(sf, true);
        c.order(stored(ok, "synced", Some(&rec(ok)), 3));
        c.order(stored(lost, "synced", Some("801LOST"), 3));
        c.order(stored(failed, "failed", None, 3));
        c.order(stored(dup, "synced", Some(&rec(dup)), 3));
        c.order(stored(wrong_id, "synced", Some("801xx000003GZ8bAAG"), 3));
        c.order(stored(short, "synced", Some(&rec(short)), 3));
        c.order(stored(in_flight, "published", None, 3));
        let mut leftovers = c.leftovers();
        leftovers.sort();
        let mut want = vec![orphan, out_of_scope];
        want.sort();
        assert_eq!(leftovers, want);
        let existing = HashSet::from([out_of_scope, deleted_long_ago]);
        let classes = c.finish(&existing, &Scope::all());

        assert_eq!(classes.counts.orders, 7);
        assert_eq!(classes.counts.salesforce_orders, 9);
        assert_eq!(classes.counts.salesforce_items, 7 * 3 - 1 + 2);
        assert_eq!(classes.counts.ignored_records, 2);
        assert_eq!(
            classes
                .missing
                .iter()
                .map(|m| (m.order_id, m.sync_state.as_str()))
                .collect::<Vec<_>>(),
            vec![(lost, "synced")]
        );
        assert_eq!(classes.missing_failed.len(), 1);
        assert_eq!(classes.missing_failed[0].order_id, failed);
        assert_eq!(
            classes.missing_failed[0].error_code.as_deref(),
            Some("UNKNOWN_SKU")
        );
        assert_eq!(
            classes
                .duplicated
                .iter()
                .map(|d| (d.object, d.external_id.clone(), d.salesforce_ids.len()))
                .collect::<Vec<_>>(),
            vec![
                (ObjectKind::Order, dup.to_string(), 2),
                (ObjectKind::Item, format!("{dup}-2"), 2)
            ]
        );
        let mismatched: Vec<(Uuid, Vec<Problem>)> = classes
            .mismatched
            .iter()
            .map(|m| (m.order_id, m.problems.clone()))
            .collect();
        assert_eq!(
            mismatched,
            vec![
                (
                    wrong_id,
                    vec![Problem::SalesforceId {
                        stored: "801xx000003GZ8bAAG".into(),
                        in_salesforce: vec![rec(wrong_id)]
                    }]
                ),
                (short, vec![Problem::ItemCount { lines: 3, items: 2 }]),
                (in_flight, vec![Problem::NotSynced]),
            ],
            "a duplicate item does not count twice; the dup's stored id is one of its records"
        );
        assert_eq!(
            classes
                .orphaned
                .iter()
                .map(|o| (o.object, o.external_id.clone()))
                .collect::<Vec<_>>(),
            vec![
                (ObjectKind::Order, orphan.to_string()),
                (ObjectKind::Item, format!("{orphan}-1")),
                (ObjectKind::Item, format!("{orphan}-2")),
                (ObjectKind::Item, format!("{orphan}-3")),
            ]
        );
    }

    #[test]
    fn orphans_are_scoped_by_the_time_in_their_uuid() {
        let old = Uuid::parse_str("01800000-0000-7000-8000-000000000001").unwrap(); // 2022
        let new = Uuid::now_v7();
        let v4 = Uuid::new_v4();
        let mut sf = SalesforceSide::default();
        for o in [old, new, v4] {
            sf.add_order(&o.to_string(), format!("801-{o}"));
        }
        let scope = Scope {
            created_after: Some(Utc::now() - chrono::Duration::hours(1)),
            created_before: None,
        };
        let classes = Classifier::new(sf, true).finish(&HashSet::new(), &scope);
        let mut got: Vec<String> = classes
            .orphaned
            .into_iter()
            .map(|o| o.external_id)
            .collect();
        got.sort();
        let mut want = vec![new.to_string(), v4.to_string()];
        want.sort();
        assert_eq!(got, want, "a UUID without a time is always in scope");
    }

    #[test]
    fn without_items_the_item_count_is_not_compared() {
        let id = Uuid::now_v7();
        let mut sf = SalesforceSide::default();
        sf.add_order(&id.to_string(), "5001".into());
        let mut c = Classifier::new(sf, false);
        c.order(stored(id, "synced", Some("5001"), 3));
        let classes = c.finish(&HashSet::new(), &Scope::all());
        assert!(classes.mismatched.is_empty());
        assert!(classes.orphaned.is_empty());
    }
}
