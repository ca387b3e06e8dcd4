//! The worker's hold on a fulfilment request: a transaction-scoped advisory lock on the
//! request's id, then its row (`orderbridge_db::fulfilment::load`).
//!
//! The lock keeps two deliveries of the same request (a duplicate, a retry copy and a
//! `fulfilment.result` nudge at once, two worker processes) from both calling the fulfilment
//! system: it is held for the whole call and whatever follows (recording the outcome, the
//! write-back), and a delivery that cannot take it comes back later, when the first has decided.
//!
//! Why an advisory lock and not `SELECT … FOR UPDATE` on the row: `record_outcome` (here and in
//! the callback handler) locks the order, then the request. A worker holding the request's row
//! lock through a call, then asking for the order's, would deadlock with a callback that
//! arrives during the call (202 and the callback race). The advisory lock is ours alone, and the
//! row itself is only locked for the moments `record_outcome` and `mark_written_back` update it.

use orderbridge_db::fulfilment::{self as requests, FulfilmentRequest};
use sqlx::PgConnection;
use uuid::Uuid;

/// The first key of every fulfilment request lock (`FULF`), in the two-key advisory lock space,
/// which never overlaps the one-key space the relay and the idempotency keys use.
const LOCK_CLASS: i32 = 0x4655_4C46;

/// What [`lock`] found.
#[derive(Debug)]
pub enum Locked {
    /// Locked (until the caller's transaction ends), as stored.
    Row(Box<FulfilmentRequest>),
    /// Another transaction holds the request (another delivery of it is being handled).
    Busy,
    /// No such request (never was, or its order was deleted).
    Missing,
}

/// Takes the request's lock inside the caller's transaction, without waiting for another
/// holder, and reads the request.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Locked, sqlx::Error> {
    // hashtext collisions between two requests only make one wait for the other's turn.
    let taken: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2::text))")
            .bind(LOCK_CLASS)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    if !taken {
        return Ok(Locked::Busy);
    }
    Ok(match requests::load(&mut *conn, id).await? {
        Some(r) => Locked::Row(Box::new(r)),
        None => Locked::Missing,
    })
}
