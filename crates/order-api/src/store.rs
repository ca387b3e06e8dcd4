//! The API's order reads: an order's version (conditional GET) and the order list (one order is
//! `orderbridge_db::orders::get_order`, shared with the CLI).
//! Functions take `impl PgExecutor` (or a connection) so callers decide the transaction. Writes
//! live in `orderbridge_db` (`create`, `orders::queue_resync`), which the CLI and the
//! benchmarks share.

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{ORDER_COLUMNS, OrderRow, load_lines};
use orderbridge_domain::{ClientId, Order, OrderId, SyncState};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The current version of one of the client's orders: all a conditional GET needs.
pub async fn order_version<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
    id: OrderId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM orders WHERE id = $1 AND client_id = $2")
        .bind(id.get())
        .bind(client_id.get())
        .fetch_optional(executor)
        .await
}

/// Filters for [`list_orders`].
#[derive(Debug, Default)]
pub struct ListFilter {
    pub sync_state: Option<SyncState>,
    pub client_ref: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    /// Only orders older (smaller UUIDv7) than this one: the page cursor.
    pub before: Option<OrderId>,
}

/// How much older than its `created_at` an order's id may be and still be listed by
/// `created_after`: the lower id bound of [`list_orders`] is taken this much earlier.
const ID_CLOCK_MARGIN_MS: i64 = 60_000;

/// The smallest UUID of the UUIDv7 millisecond of `t` (floored): its 48-bit Unix-time prefix,
/// every other bit zero. Postgres compares UUIDs byte by byte, so every UUIDv7 made in that
/// millisecond or later is `>=` it. Before 1970 it is the nil UUID (no bound).
fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// The lowest id an order created after `created_after` can have (nil: no filter, no bound).
fn lowest_id(created_after: Option<DateTime<Utc>>) -> Uuid {
    created_after
        .and_then(|t| t.checked_sub_signed(chrono::TimeDelta::milliseconds(ID_CLOCK_MARGIN_MS)))
        .map_or(Uuid::nil(), v7_floor)
}

/// The client's orders, newest first, at most `limit`.
///
/// Paged by id: ids are UUIDv7, so id order is creation order. `created_after` is also
/// turned into a lower id bound, so that a filter matching few orders reads only the orders of
/// that span instead of the client's whole history. That rests on an invariant of the order writers: **an order's id carries a
/// millisecond no earlier than its `created_at`'s** (`floor_ms(created_at)`). order-api's
/// `orders::create_order` takes `created_at = Utc::now()` and then `OrderId::new_v7()` on the
/// same clock, and `Uuid::now_v7` never goes back in time within a process. The bound is taken
/// [`ID_CLOCK_MARGIN_MS`] (1 minute) earlier still, for any writer whose id and timestamp come
/// from clocks a little apart; a writer that made ids older than that (a UUIDv4, an id chosen
/// before the order's time) would have its orders missing from `created_after` lists.
///
/// One prepared statement serves every combination of filters, so its text never changes and
/// every parameter is always bound; Postgres may run it with a generic plan (after 5
/// executions), which cannot look at which filters are set. Hence:
/// - Both id bounds are always bound (`$7`: nil without `created_after`; `$5`: the max UUID
///   without a cursor, which no UUIDv7 is), so they are index conditions in a generic plan too.
///   (`$5 IS NULL OR id < $5` was only a filter there: a deep page walked the newer orders.)
/// - It is a `UNION ALL` of four branches, exactly one of which runs: each is guarded by
///   conditions on the parameters alone, which Postgres evaluates once ("One-Time Filter")
///   and skips the branch's scan when false, in generic plans too (custom plans drop it).
///   1. `client_ref` set: the `(client_id, client_ref)` unique key, at most one order.
///   2. No `sync_state`: `orders_client_id_idx` or the primary key, backwards.
///   3. `sync_state`, the first page (no `created_after`, no cursor):
///      `orders_client_sync_state_idx`. The state is
///      written as the range `>= $2 AND <= $2` and the order as `sync_state, id DESC` on
///      purpose: with `sync_state = $2` Postgres drops `sync_state` from the ORDER BY
///      (constant) and may then walk the primary key backwards, filtering, because it assumes
///      the state's orders are spread evenly over time; with a backlog (the newest 60,000
///      `pending`, the rest `synced`) a `synced` list read 60,000 orders for 50 (10–20 ms warm,
///      far more from disk). The range is no equality, so only this index gives that order.
///      Its cost: after the range, the id keys no longer bound the index scan (they filter
///      index entries), which is why `created_after` and the cursor's later pages go to
///      branch 4 (a deep page would read every newer entry of its state).
///   4. `sync_state` with `created_after` or a cursor (`$8`): plain equality, so the id
///      bounds end the scan on whichever index the planner picks. A later page of a state
///      list during a backlog may again walk the primary key past the other state's orders
///      (as the first page did before); the first page, what a portal polls, does not.
/// - The outer `ORDER BY` sorts at most `limit` rows.
pub async fn list_orders(
    conn: &mut PgConnection,
    client_id: ClientId,
    filter: &ListFilter,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM (
            (SELECT {ORDER_COLUMNS} FROM orders
              WHERE $3::text IS NOT NULL
                AND client_id = $1 AND client_ref = $3
                AND ($2::text IS NULL OR sync_state = $2)
                AND ($4::timestamptz IS NULL OR created_at > $4)
                AND id >= $7 AND id < $5
              ORDER BY id DESC
              LIMIT $6)
            UNION ALL
            (SELECT {ORDER_COLUMNS} FROM orders
              WHERE $3::text IS NULL AND $2::text IS NULL
                AND client_id = $1
                AND ($4::timestamptz IS NULL OR created_at > $4)
                AND id >= $7 AND id < $5
              ORDER BY id DESC
              LIMIT $6)
            UNION ALL
            (SELECT {ORDER_COLUMNS} FROM orders
              WHERE $3::text IS NULL AND $2::text IS NOT NULL AND $4::timestamptz IS NULL
                AND NOT $8::bool
                AND client_id = $1 AND sync_state >= $2 AND sync_state <= $2
                AND id >= $7 AND id < $5
              ORDER BY sync_state, id DESC
              LIMIT $6)
            UNION ALL
            (SELECT {ORDER_COLUMNS} FROM orders
              WHERE $3::text IS NULL AND $2::text IS NOT NULL
                AND ($4::timestamptz IS NOT NULL OR $8::bool)
                AND client_id = $1 AND sync_state = $2
                AND ($4::timestamptz IS NULL OR created_at > $4)
                AND id >= $7 AND id < $5
              ORDER BY id DESC
              LIMIT $6)
         ) o
         ORDER BY id DESC"
    ))
    .bind(client_id.get())
    .bind(filter.sync_state.map(SyncState::as_str))
    .bind(filter.client_ref.as_deref())
    .bind(filter.created_after)
    .bind(filter.before.map_or(Uuid::max(), OrderId::get))
    .bind(limit)
    .bind(lowest_id(filter.created_after))
    .bind(filter.before.is_some())
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines = load_lines(conn, &ids).await?;
    rows.into_iter()
        .map(|r| {
            let l = lines.remove(&r.id).unwrap_or_default();
            r.into_order(l)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn v7_floor_is_the_millisecond_prefix() {
        let t = Utc.timestamp_micros(1_700_000_000_123_999).unwrap();
        let floor = v7_floor(t);
        assert_eq!(floor.to_string(), "018bcfe5-687b-0000-0000-000000000000");
        // Any UUIDv7 of that millisecond or later is at or above it; of the one before, below.
        let v7 = |ms: u64| {
            Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                (ms % 1000) as u32 * 1_000_000,
            ))
        };
        let ms = t.timestamp_millis() as u64;
        assert!(v7(ms) >= floor && v7(ms + 1) > floor);
        assert!(v7(ms - 1) < floor);
        assert_eq!(v7_floor(Utc.timestamp_opt(-5, 0).unwrap()), Uuid::nil());
    }

    #[test]
    fn the_bound_leaves_a_minute_of_margin() {
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(
            lowest_id(Some(t)),
            v7_floor(t - chrono::TimeDelta::minutes(1))
        );
        assert_eq!(lowest_id(None), Uuid::nil());
    }
}
