//! `orderbridge reconcile statuses --since <time>`: closes a window in which the Salesforce
//! subscriber may have missed change events (its stored replay id had expired; see `pubsub_gaps`).
//! Reads every Order changed since then over SOQL (`SELECT Id, Status, LastModifiedDate FROM Order
//! WHERE LastModifiedDate >= …`, paged), maps each Status as the subscriber does
//! (`SUBSCRIBER_STATUS_MAP`) and applies it with source `reconcile`. Applying is idempotent and
//! monotonic, so running it twice, or while the subscriber runs, changes nothing twice. Gaps that
//! began at or after `--since` are marked closed.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Args;
use orderbridge_db::DbConfig;
use orderbridge_db::status::{StatusApplied, StatusChange, apply_by_salesforce_id};
use orderbridge_domain::status_map::StatusMap;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde::{Deserialize, Serialize};

use crate::command::{CommandError, parse_time};

/// The `source` recorded in the status history.
pub const SOURCE: &str = orderbridge_domain::StatusSource::RECONCILE;

/// `orderbridge reconcile statuses` options.
#[derive(Debug, Clone, Args)]
pub struct StatusesArgs {
    /// Orders changed in Salesforce at or after this instant (RFC 3339): a gap's `missed_from`.
    #[arg(long, value_parser = parse_time)]
    pub since: DateTime<Utc>,
    /// Salesforce Status → order status, as the subscriber's (same variable, same rule).
    #[arg(long, env = "SUBSCRIBER_STATUS_MAP", default_value = "")]
    pub status_map: StatusMap,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StatusesOutcome {
    pub read: u64,
    pub applied: u64,
    pub unchanged: u64,
    /// Older than the order's current status: added to its history only.
    pub late: u64,
    pub stale: u64,
    pub unknown_order: u64,
    /// Records whose Status or LastModifiedDate could not be used (named in the log).
    pub unusable: u64,
    pub gaps_closed: u64,
}

#[derive(Deserialize)]
struct Row {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "LastModifiedDate")]
    last_modified: Option<String>,
}

/// Salesforce writes `2026-12-03T10:04:44.000+0000`; RFC 3339 is accepted too.
fn parse_sf_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Runs the command; writes a summary (or JSON) to `out`.
pub async fn run(
    args: &StatusesArgs,
    db: &DbConfig,
    salesforce: &SalesforceConfig,
    out: &mut impl Write,
) -> Result<StatusesOutcome, CommandError> {
    let pool = db.connect("orderbridge-reconcile-statuses").await?;
    let client = Client::new(salesforce).map_err(|e| CommandError::Salesforce(Box::new(e)))?;
    let sf = |e| CommandError::Salesforce(Box::new(e));
    // A second earlier: SOQL compares whole seconds here, and reading one more change is
    // harmless (applying is idempotent).
    let from = args.since - chrono::Duration::seconds(1);
    let soql = format!(
        "SELECT Id, Status, LastModifiedDate FROM Order WHERE LastModifiedDate >= {}",
        from.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let mut outcome = StatusesOutcome::default();
    let mut conn = pool.acquire().await.map_err(db_error)?;
    let mut page = client.query::<Row>(&soql).await.map_err(sf)?;
    loop {
        for row in std::mem::take(&mut page.records) {
            outcome.read += 1;
            let (Some(value), Some(at)) = (
                row.status.as_deref(),
                row.last_modified.as_deref().and_then(parse_sf_time),
            ) else {
                tracing::warn!(salesforce_id = %row.id, "Order without a usable Status or LastModifiedDate");
                outcome.unusable += 1;
                continue;
            };
            let status = match args.status_map.map(value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(salesforce_id = %row.id, error = %e, "Status cannot be mapped");
                    outcome.unusable += 1;
                    continue;
                }
            };
            let applied = apply_by_salesforce_id(
                &mut conn,
                &row.id,
                StatusChange {
                    status: &status,
                    at,
                    source: SOURCE,
                },
            )
            .await
            .map_err(db_error)?;
            match applied {
                StatusApplied::Applied { .. } => outcome.applied += 1,
                StatusApplied::Unchanged => outcome.unchanged += 1,
                StatusApplied::Late { .. } => outcome.late += 1,
                StatusApplied::Stale => outcome.stale += 1,
                StatusApplied::UnknownOrder => outcome.unknown_order += 1,
            }
        }
        if page.done {
            break;
        }
        let Some(next) = page.next_records_url.take() else {
            break;
        };
        page = client.query_more::<Row>(&next).await.map_err(sf)?;
    }
    drop(conn);
    outcome.gaps_closed = sqlx::query(
        "UPDATE pubsub_gaps SET closed_at = now()
         WHERE closed_at IS NULL AND missed_from IS NOT NULL AND missed_from >= $1",
    )
    .bind(args.since)
    .execute(&pool)
    .await
    .map_err(db_error)?
    .rows_affected();
    pool.close().await;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &outcome).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let o = &outcome;
        writeln!(
            out,
            "Orders changed in Salesforce since {}: {} read, {} applied, {} unchanged, {} late (history only), {} stale, {} unknown to orderbridge, {} unusable; {} gap(s) closed",
            args.since.to_rfc3339(),
            o.read,
            o.applied,
            o.unchanged,
            o.late,
            o.stale,
            o.unknown_order,
            o.unusable,
            o.gaps_closed
        )?;
    }
    out.flush()?;
    Ok(outcome)
}

fn db_error(e: sqlx::Error) -> CommandError {
    CommandError::Statuses(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_sf_time;

    #[test]
    fn salesforce_datetimes_parse() {
        assert!(parse_sf_time("2026-12-03T10:04:44.000+0000").is_some());
        assert!(parse_sf_time("2026-12-03T10:04:44Z").is_some());
        assert!(parse_sf_time("yesterday").is_none());
    }
}
