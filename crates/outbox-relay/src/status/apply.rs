//! The SQL that applies a batch of reports to their orders, under the monotonic rule (see the
//! `status` module docs and the README's table).
//!
//! Apart from the consume loop so the rule, and how a batch is split into rounds, can be read
//! on their own and run by tests directly (`status::apply_reports`), without a broker.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::report::Report;

/// What applying one report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order changed (its version, hence its ETag, was bumped).
    Applied,
    /// Ignored: about an older event, not newer than what the order holds, or a duplicate.
    Stale,
    /// No such order.
    UnknownOrder,
}

/// One report against the locked order `o` (`r` is the report). Within one statement every
/// order appears at most once, so each row is judged against its state before the statement.
const APPLY_SQL: &str = "
UPDATE orders o SET
    sync_state = r.state,
    salesforce_id = coalesce(r.salesforce_id, o.salesforce_id),
    sync_attempts = r.attempts,
    last_error_code = r.error_code,
    last_error_message = r.error_message,
    synced_at = CASE WHEN r.state = 'synced' THEN r.occurred_at ELSE o.synced_at END,
    sync_event_version = r.order_version,
    sync_reported_at = r.occurred_at
    -- the orders_bump_version trigger bumps version and updated_at, so the ETag changes
FROM unnest($1::int[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::int[],
            $7::text[], $8::text[], $9::timestamptz[])
     AS r(idx, order_id, order_version, state, salesforce_id, attempts, error_code,
          error_message, occurred_at)
WHERE o.id = r.order_id
  -- An event's data.version never exceeds the order's version: a report claiming more is bogus.
  AND r.order_version <= o.version
  AND (
        -- about a newer event (after a resync): it replaces whatever the older one reported
        r.order_version > o.sync_event_version
        -- about the same event: synced is final; otherwise synced, or not older, wins
     OR (r.order_version = o.sync_event_version
         AND o.sync_state <> 'synced'
         AND (r.state = 'synced' OR o.sync_reported_at IS NULL
              OR r.occurred_at >= o.sync_reported_at))
  )
  -- A redelivered duplicate changes nothing: not counted as applied.
  AND (o.sync_state, o.salesforce_id, o.sync_attempts, o.last_error_code, o.last_error_message,
       o.synced_at, o.sync_event_version, o.sync_reported_at)
      IS DISTINCT FROM
      (r.state, coalesce(r.salesforce_id, o.salesforce_id), r.attempts, r.error_code,
       r.error_message, CASE WHEN r.state = 'synced' THEN r.occurred_at ELSE o.synced_at END,
       r.order_version, r.occurred_at)
RETURNING r.idx";

/// Applies reports in one transaction, in the given order, as if one at a time. Returns what
/// happened to each, in the same order.
///
/// The orders are locked first, in id order: concurrent appliers (and the relay, and the API's
/// resync) then never deadlock among themselves, and every statement below sees the latest
/// committed row. A batch may hold several reports for one order (`retrying` then `synced`);
/// they go out in rounds, the n-th report of each order in the n-th statement, so each is judged
/// against the state the previous one left.
pub async fn apply_reports(
    conn: &mut PgConnection,
    reports: &[Report],
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let ids: Vec<Uuid> = reports.iter().map(|r| r.order_id).collect();
    let known: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let mut outcome: Vec<Applied> = reports
        .iter()
        .map(|r| {
            if known.contains(&r.order_id) {
                Applied::Stale
            } else {
                Applied::UnknownOrder
            }
        })
        .collect();

    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for (i, r) in reports.iter().enumerate() {
        if !known.contains(&r.order_id) {
            continue;
        }
        let n = seen.entry(r.order_id).or_default();
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }

    for round in rounds {
        let mut idx = Vec::with_capacity(round.len());
        let mut order_ids = Vec::with_capacity(round.len());
        let mut versions = Vec::with_capacity(round.len());
        let mut states = Vec::with_capacity(round.len());
        let mut sf_ids = Vec::with_capacity(round.len());
        let mut attempts = Vec::with_capacity(round.len());
        let mut codes = Vec::with_capacity(round.len());
        let mut messages = Vec::with_capacity(round.len());
        let mut occurred = Vec::with_capacity(round.len());
        for i in round {
            let r = &reports[i];
            idx.push(i32::try_from(i).unwrap_or(i32::MAX));
            order_ids.push(r.order_id);
            versions.push(r.order_version);
            states.push(r.state.as_str());
            sf_ids.push(r.salesforce_id.as_deref());
            attempts.push(r.attempts);
            codes.push(r.error_code.as_deref());
            messages.push(r.error_message.as_deref());
            occurred.push(r.occurred_at);
        }
        let applied: Vec<i32> = sqlx::query_scalar(APPLY_SQL)
            .bind(&idx)
            .bind(&order_ids)
            .bind(&versions)
            .bind(&states)
            .bind(&sf_ids)
            .bind(&attempts)
            .bind(&codes)
            .bind(&messages)
            .bind(&occurred)
            .fetch_all(&mut *tx)
            .await?;
        for i in applied {
            if let Some(o) = usize::try_from(i).ok().and_then(|i| outcome.get_mut(i)) {
                *o = Applied::Applied;
            }
        }
    }
    tx.commit().await?;
    Ok(outcome)
}
