//! CSV in and out: the uploaded job data read into rows, a row turned into the record body the
//! store writes, and the three result files.

use serde_json::{Map, Value};

use super::job::{Job, RowOutcome};
use crate::schema::ObjectDef;

/// Reads uploaded job data: a header row, then rows with as many columns. The message is the
/// job's `errorMessage` when it fails on it.
pub fn parse(data: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("InvalidBatch : Failed to parse the CSV header: {e}"))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(String::is_empty) {
        return Err("InvalidBatch : The CSV data has no header row".into());
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("InvalidBatch : Row {}: {e}", n + 1))?;
        rows.push(record.iter().map(str::to_owned).collect());
    }
    Ok((header, rows))
}

/// Checks every column names a field of `def`, or a relationship by an external id
/// (`Account.External_Id__c`), as Salesforce does before processing any row.
pub fn check_header(def: &ObjectDef, header: &[String]) -> Result<(), String> {
    for column in header {
        let known = match column.split_once('.') {
            None => def.field(column).is_some(),
            Some((relationship, _)) => def.fields.iter().any(|f| {
                f.relationship_name
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(relationship))
            }),
        };
        if !known {
            return Err(format!("InvalidBatch : Field name not found : {column}"));
        }
    }
    Ok(())
}

/// A row as the record body a REST write would carry. Empty cells are left out (Bulk ignores
/// them); `#N/A` sets the field to null.
pub fn record(header: &[String], row: &[String]) -> Map<String, Value> {
    let mut rec = Map::new();
    for (column, cell) in header.iter().zip(row) {
        if cell.is_empty() {
            continue;
        }
        let value = if cell == "#N/A" {
            Value::Null
        } else {
            Value::String(cell.clone())
        };
        match column.split_once('.') {
            Some((relationship, field)) => {
                let mut reference = Map::new();
                reference.insert(field.to_owned(), value);
                rec.insert(relationship.to_owned(), Value::Object(reference));
            }
            None => {
                rec.insert(column.clone(), value);
            }
        }
    }
    rec
}

/// Which result file.
#[derive(Debug, Clone, Copy)]
pub enum ResultKind {
    Successful,
    Failed,
    Unprocessed,
}

/// One result file of `job`, as CSV text.
pub fn results(job: &Job, kind: ResultKind) -> String {
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    let lead: &[&str] = match kind {
        ResultKind::Successful => &["sf__Id", "sf__Created"],
        ResultKind::Failed => &["sf__Id", "sf__Error"],
        ResultKind::Unprocessed => &[],
    };
    let header = lead
        .iter()
        .copied()
        .chain(job.header.iter().map(String::as_str));
    // Writing into a Vec cannot fail but for a bug in csv; an empty file is the fallback.
    let _ = writer.write_record(header);
    for (n, row) in job.rows.iter().enumerate() {
        let lead: Option<[String; 2]> = match (kind, job.outcomes.get(n)) {
            (ResultKind::Successful, Some(RowOutcome::Written { id, created })) => {
                Some([id.clone(), created.to_string()])
            }
            (ResultKind::Failed, Some(RowOutcome::Failed { id, error })) => {
                Some([id.clone().unwrap_or_default(), error.clone()])
            }
            (ResultKind::Unprocessed, None) => {
                let _ = writer.write_record(row);
                None
            }
            _ => None,
        };
        if let Some(lead) = lead {
            let _ = writer.write_record(lead.iter().chain(row.iter()));
        }
    }
    writer
        .into_inner()
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn relationship_columns_become_references_and_empty_cells_are_left_out() {
        let (header, rows) =
            parse(b"Name,Account.External_Id__c,Amount__c\n\"A, b\",C-1,\nX,#N/A,3\n").unwrap();
        assert_eq!(header, ["Name", "Account.External_Id__c", "Amount__c"]);
        let first = record(&header, &rows[0]);
        assert_eq!(first["Name"], "A, b");
        assert_eq!(first["Account"]["External_Id__c"], "C-1");
        assert!(!first.contains_key("Amount__c"));
        let second = record(&header, &rows[1]);
        assert_eq!(second["Account"]["External_Id__c"], Value::Null);
    }

    #[test]
    fn a_row_with_a_wrong_number_of_columns_is_refused() {
        let e = parse(b"Name,Phone\nA\n").unwrap_err();
        assert!(e.starts_with("InvalidBatch"), "{e}");
    }
}
