//! Records as rows: many records of one object share one list of [`Column`]s, and each record
//! is only its values in that order.
//!
//! ```text
//!  columns  [External_Id__c, Status, EffectiveDate, Account → External_Id__c]
//!  rows     ["o-1", "Draft", "2026-12-01", "C-42"]
//!           ["o-2", "Draft", "2026-12-02", None  ]      None: not written
//!     ├─ Row::new(columns, row) as JSON ─▶ {"External_Id__c": "o-1", …, "Account": {"External_Id__c": "C-42"}}
//!     └─ rows_to_csv(columns, rows)      ─▶ External_Id__c,Status,EffectiveDate,Account.External_Id__c
//! ```
//!
//! Why: a record as a JSON map holds every field name again, in its own allocation, with a map
//! node around it; two backlog batches of 10,000 orders in flight held 98 MB of such maps
//! (about 1 KB a record), where the same values in rows take a fraction of that and go to CSV
//! without a copy.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::bulk::write_csv;
use crate::error::Error;

/// One column of records laid out as rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// A field, written with the row's value.
    Field(String),
    /// A parent record found by its external id: the row's value is the parent's key, written
    /// as `{"<relationship>": {"<field>": key}}` in JSON and as the column
    /// `<relationship>.<field>` in CSV, so a child can point at a parent without its id.
    Reference { relationship: String, field: String },
}

impl Column {
    /// The column's name in a Bulk CSV header.
    pub fn csv_name(&self) -> Cow<'_, str> {
        match self {
            Self::Field(name) => Cow::Borrowed(name),
            Self::Reference {
                relationship,
                field,
            } => Cow::Owned(format!("{relationship}.{field}")),
        }
    }
}

/// One record: `values[i]` is the value of `columns[i]`, `None` (or a missing tail) leaves the
/// field out. Serialises as the record's JSON object, so it can go wherever a record can
/// (collections, composite subrequests).
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [Column],
    values: &'a [Option<Value>],
}

impl<'a> Row<'a> {
    pub fn new(columns: &'a [Column], values: &'a [Option<Value>]) -> Self {
        Self { columns, values }
    }

    fn present(&self) -> impl Iterator<Item = (&'a Column, &'a Value)> + use<'a> {
        self.columns
            .iter()
            .zip(self.values)
            .filter_map(|(c, v)| Some((c, v.as_ref()?)))
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// `{"<field>": key}`, the inside of a reference.
        struct ByKey<'a>(&'a str, &'a Value);
        impl Serialize for ByKey<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0, self.1)?;
                map.end()
            }
        }
        let mut map = serializer.serialize_map(None)?;
        for (column, value) in self.present() {
            match column {
                Column::Field(name) => map.serialize_entry(name, value)?,
                Column::Reference {
                    relationship,
                    field,
                } => map.serialize_entry(relationship, &ByKey(field, value))?,
            }
        }
        map.end()
    }
}

/// Rows as Bulk CSV: the header holds the columns that have a value in at least one row, in
/// column order; a value left out is an empty cell (left as it is), `null` is `#N/A` (clears
/// the field). Arrays and objects have no CSV form and are refused.
pub fn rows_to_csv(columns: &[Column], rows: &[&[Option<Value>]]) -> Result<Vec<u8>, Error> {
    let used: Vec<usize> = (0..columns.len())
        .filter(|&c| rows.iter().any(|r| matches!(r.get(c), Some(Some(_)))))
        .collect();
    let header: Vec<Cow<'_, str>> = used.iter().map(|&c| columns[c].csv_name()).collect();
    write_csv(
        &header,
        rows.iter()
            .map(|r| used.iter().map(|&c| r.get(c).and_then(Option::as_ref))),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn columns() -> Vec<Column> {
        vec![
            Column::Field("Ext__c".into()),
            Column::Field("Name".into()),
            Column::Field("Unused__c".into()),
            Column::Reference {
                relationship: "Account".into(),
                field: "Ext__c".into(),
            },
        ]
    }

    #[test]
    fn a_row_is_the_records_json_with_references_nested_and_absent_values_left_out() {
        let columns = columns();
        let values = [
            Some(json!("o-1")),
            Some(json!("Café, \"quoted\"")),
            None,
            Some(json!("C-1")),
        ];
        let record = serde_json::to_value(Row::new(&columns, &values)).unwrap();
        assert_eq!(
            record,
            json!({"Ext__c": "o-1", "Name": "Café, \"quoted\"", "Account": {"Ext__c": "C-1"}})
        );
        // A shorter row leaves the tail out.
        let short = [Some(json!("o-2"))];
        assert_eq!(
            serde_json::to_value(Row::new(&columns, &short)).unwrap(),
            json!({"Ext__c": "o-2"})
        );
    }

    #[test]
    fn csv_has_the_used_columns_in_order_and_empty_cells_for_values_left_out() {
        let columns = columns();
        let a = [
            Some(json!("o-1")),
            Some(json!("Café, \"quoted\"")),
            None,
            Some(json!("C-1")),
        ];
        let b = [Some(json!("o-2")), None, None, Some(Value::Null)];
        let csv = rows_to_csv(&columns, &[&a, &b]).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "Ext__c,Name,Account.Ext__c\no-1,\"Café, \"\"quoted\"\"\",C-1\no-2,,#N/A\n"
        );
    }

    #[test]
    fn csv_refuses_a_value_with_no_csv_form_naming_its_row_and_column() {
        let columns = columns();
        let a = [Some(json!("o-1")), Some(json!(["a", "b"]))];
        let e = rows_to_csv(&columns, &[&a]).unwrap_err().to_string();
        assert!(e.contains("record 0") && e.contains("Name"), "{e}");
    }
}
