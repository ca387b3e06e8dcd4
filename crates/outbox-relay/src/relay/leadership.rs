//! Which outbox partitions this relay publishes: Postgres advisory locks on the leader
//! connection, and the rebalancing that shares the partitions among the running relays.
//!
//! The outbox is split into `RELAY_PARTITIONS` partitions by aggregate id (the SQL function
//! `outbox_partition`), so every event of one order falls in one partition. A relay reads and
//! marks only the rows of the partitions whose session locks it holds, on the connection that
//! holds them: if that connection dies, Postgres drops the locks and the relay can mark nothing
//! more, so at any moment each partition has at most one publisher and per-order order holds.
//!
//! ```text
//!  every RELAY_STANDBY_INTERVAL (and at once while leading nothing), between batches:
//!    BEGIN; pg_advisory_xact_lock(rebalance)          one relay decides at a time
//!      join: pg_try_advisory_lock_shared(member, n)   once, while the broker is reachable
//!      read pg_locks: members of n, partitions held elsewhere, relays with another n
//!      share = ceil(n / members)
//!      above the share → unlock the highest partitions (another relay takes them next pass)
//!      below the share → lock free partitions, lowest first
//!    COMMIT                                           the session locks outlive it
//! ```
//!
//! A relay that dies leaves the membership with its connection, so the survivors' next pass
//! raises their share and takes its partitions: a take-over needs no heartbeat to expire. A relay
//! that loses the broker unlocks everything, membership included, so the others do not count it.
//! Relays started with different partition counts would publish overlapping partitions: a relay
//! that sees partition locks of another count stands by (and says so) until they are gone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::faults::{DbFault, db_op};
use crate::outbox::{
    self, AdvisoryLock, LEADER_LOCK_KEY, MAX_PARTITIONS, MEMBER_CLASS, PARTITION_CLASS,
};

/// The single leader lock's bigint key as `pg_locks` shows it: high and low 32 bits.
const LEADER_HI: i64 = (LEADER_LOCK_KEY >> 32) & 0xffff_ffff;
const LEADER_LO: i64 = LEADER_LOCK_KEY & 0xffff_ffff;

/// What the advisory locks in `pg_locks` say about the relays, seen by one configured with `n`
/// partitions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// Relays holding the membership of `n` partitions (this one included once it joined).
    pub(crate) members: usize,
    /// Partitions of `n` locked by other relays.
    pub(crate) held_elsewhere: BTreeSet<u16>,
    /// A different partition count that other relays publish with, if any.
    pub(crate) other_count: Option<u16>,
}

/// The partition lock a `pg_locks` row is, as (count, partition), if it is one.
fn partition_lock(l: &AdvisoryLock) -> Option<(u16, u16)> {
    match l.objsubid {
        1 if l.classid == LEADER_HI && l.objid == LEADER_LO => Some((1, 0)),
        2 => {
            let count = u16::try_from(l.classid - i64::from(PARTITION_CLASS)).ok()?;
            let p = u16::try_from(l.objid).ok()?;
            ((2..=MAX_PARTITIONS).contains(&count) && p < count).then_some((count, p))
        }
        _ => None,
    }
}

pub(crate) fn view(n: u16, locks: &[AdvisoryLock]) -> View {
    let mut v = View::default();
    for l in locks {
        if l.objsubid == 2 && l.classid == i64::from(MEMBER_CLASS) && l.objid == i64::from(n) {
            v.members += 1;
        } else if let Some((count, p)) = partition_lock(l)
            && !l.own
        {
            if count == n {
                v.held_elsewhere.insert(p);
            } else {
                v.other_count.get_or_insert(count);
            }
        }
    }
    v
}

/// Partitions to give up and to try to take.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) release: Vec<u16>,
    pub(crate) take: Vec<u16>,
}

/// The fair share: `ceil(n / members)` partitions each. Above it, the highest partitions go (so
/// the assignment stays stable); below it, free partitions are taken, lowest first. With relays
/// of another count publishing, everything goes.
pub(crate) fn plan(n: u16, held: &BTreeSet<u16>, v: &View) -> Plan {
    if v.other_count.is_some() {
        return Plan {
            release: held.iter().copied().collect(),
            take: Vec::new(),
        };
    }
    let share = usize::from(n).div_ceil(v.members.max(1));
    if held.len() > share {
        return Plan {
            release: held
                .iter()
                .rev()
                .take(held.len() - share)
                .copied()
                .collect(),
            take: Vec::new(),
        };
    }
    Plan {
        release: Vec::new(),
        take: (0..n)
            .filter(|p| !held.contains(p) && !v.held_elsewhere.contains(p))
            .take(share - held.len())
            .collect(),
    }
}

/// What a rebalancing pass changed, for the logs and metrics.
#[derive(Debug, Default)]
pub(crate) struct Rebalanced {
    pub(crate) taken: Vec<u16>,
    pub(crate) released: Vec<u16>,
    pub(crate) members: usize,
    pub(crate) other_count: Option<u16>,
}

/// The leader connection and the partitions locked on it.
pub(crate) struct Leadership {
    partitions: u16,
    conn: Option<PgConnection>,
    member: bool,
    held: BTreeSet<u16>,
    last_pass: Option<Instant>,
}

impl Leadership {
    pub(crate) fn new(partitions: u16) -> Self {
        Self {
            partitions,
            conn: None,
            member: false,
            held: BTreeSet::new(),
            last_pass: None,
        }
    }

    pub(crate) fn held(&self) -> &BTreeSet<u16> {
        &self.held
    }

    /// Counted among the relays, or leading a partition.
    pub(crate) fn joined(&self) -> bool {
        self.member || !self.held.is_empty()
    }

    /// The connection that holds the locks, while it is open.
    pub(crate) fn conn(&mut self) -> Option<&mut PgConnection> {
        self.conn.as_mut()
    }

    /// When the next rebalancing is due (now if it is).
    pub(crate) fn next_due(&self, interval: Duration) -> Instant {
        match self.last_pass {
            Some(t) if !self.held.is_empty() => t + interval,
            _ => Instant::now(),
        }
    }

    /// Rebalance at once while leading nothing; otherwise every `interval`, between batches.
    pub(crate) fn due(&self, interval: Duration) -> bool {
        self.held.is_empty() || self.last_pass.is_none_or(|t| t.elapsed() >= interval)
    }

    /// One rebalancing pass (see the module docs), opening the leader connection if needed.
    /// The connection is kept whatever the outcome, so a standby does not reconnect every pass.
    pub(crate) async fn rebalance(
        &mut self,
        connect: &PgConnectOptions,
        limit: Duration,
    ) -> Result<Rebalanced, DbFault> {
        self.last_pass = Some(Instant::now());
        if self.conn.is_none() {
            self.conn = Some(db_op(limit, PgConnection::connect_with(connect)).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Rebalanced::default());
        };
        db_op(
            limit,
            pass(conn, self.partitions, &mut self.held, &mut self.member),
        )
        .await
    }

    /// Gives up every partition and the membership, keeping the connection (or dropping it if
    /// it is broken, which releases them too).
    pub(crate) async fn release_all(&mut self, limit: Duration) {
        if let Some(conn) = self.conn.as_mut()
            && db_op(limit, outbox::unlock_all(conn)).await.is_err()
        {
            self.conn = None;
        }
        self.held.clear();
        self.member = false;
    }

    /// The connection failed: drop it, and with it (server-side) every lock it held.
    pub(crate) fn lost(&mut self) {
        self.conn = None;
        self.held.clear();
        self.member = false;
    }

    pub(crate) async fn close(self, limit: Duration) {
        if let Some(conn) = self.conn {
            let _ = tokio::time::timeout(limit, conn.close()).await;
        }
    }
}

async fn pass(
    conn: &mut PgConnection,
    n: u16,
    held: &mut BTreeSet<u16>,
    member: &mut bool,
) -> Result<Rebalanced, sqlx::Error> {
    let mut tx = conn.begin().await?;
    outbox::lock_rebalancing(&mut tx).await?;
    if !*member {
        *member = outbox::join_members(&mut tx, n).await?;
    }
    let v = view(n, &outbox::advisory_locks(&mut tx).await?);
    let plan = plan(n, held, &v);
    let mut done = Rebalanced {
        members: v.members,
        other_count: v.other_count,
        ..Rebalanced::default()
    };
    for p in plan.release {
        outbox::unlock_partition(&mut tx, n, p).await?;
        held.remove(&p);
        done.released.push(p);
    }
    for p in plan.take {
        // Relays of this version decide one at a time, but an older relay takes the single
        // leader lock without asking: a partition can be gone by now.
        if outbox::try_lock_partition(&mut tx, n, p).await? {
            held.insert(p);
            done.taken.push(p);
        }
    }
    tx.commit().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(classid: i64, objid: i64, objsubid: i16, own: bool) -> AdvisoryLock {
        AdvisoryLock {
            classid,
            objid,
            objsubid,
            own,
        }
    }

    fn member(n: u16, own: bool) -> AdvisoryLock {
        lock(i64::from(MEMBER_CLASS), i64::from(n), 2, own)
    }

    fn partition(n: u16, p: u16, own: bool) -> AdvisoryLock {
        lock(
            i64::from(PARTITION_CLASS) + i64::from(n),
            i64::from(p),
            2,
            own,
        )
    }

    fn set(ps: &[u16]) -> BTreeSet<u16> {
        ps.iter().copied().collect()
    }

    #[test]
    fn the_view_counts_members_and_sees_other_relays_locks() {
        let locks = [
            member(4, true),
            member(4, false),
            member(2, false),
            partition(4, 0, true),
            partition(4, 1, false),
            partition(4, 3, false),
            lock(12345, 1, 1, false), // somebody else's advisory lock
        ];
        assert_eq!(
            view(4, &locks),
            View {
                members: 2,
                held_elsewhere: set(&[1, 3]),
                other_count: None,
            }
        );
        // The single leader lock is partition 0 of 1, for old relays and new ones alike.
        let legacy = lock(LEADER_HI, LEADER_LO, 1, false);
        assert_eq!(view(1, &[legacy]).held_elsewhere, set(&[0]));
        assert_eq!(view(4, &[legacy]).other_count, Some(1));
        assert_eq!(view(1, &[partition(4, 2, false)]).other_count, Some(4));
        // Our own locks of another count (cannot happen, but) never block us.
        assert_eq!(view(1, &[partition(4, 2, true)]).other_count, None);
    }

    #[test]
    fn alone_a_relay_takes_every_free_partition() {
        let v = View {
            members: 1,
            ..View::default()
        };
        assert_eq!(plan(4, &set(&[]), &v).take, vec![0, 1, 2, 3]);
        let v = View {
            members: 1,
            held_elsewhere: set(&[2]),
            other_count: None,
        };
        // A partition still locked by a relay that is leaving is taken on a later pass.
        assert_eq!(plan(4, &set(&[0]), &v).take, vec![1, 3]);
        assert_eq!(plan(1, &set(&[]), &View::default()).take, vec![0]);
    }

    #[test]
    fn a_second_relay_gets_half_and_a_third_what_is_left() {
        // Relay A holds all four; B joins and gets nothing yet.
        let two = View {
            members: 2,
            held_elsewhere: set(&[0, 1, 2, 3]),
            other_count: None,
        };
        assert_eq!(plan(4, &set(&[]), &two), Plan::default());
        // A's next pass gives up the two highest...
        let a = plan(
            4,
            &set(&[0, 1, 2, 3]),
            &View {
                members: 2,
                ..View::default()
            },
        );
        assert_eq!(a.release, vec![3, 2]);
        // ...which B takes on its next.
        let b = plan(
            4,
            &set(&[]),
            &View {
                members: 2,
                held_elsewhere: set(&[0, 1]),
                other_count: None,
            },
        );
        assert_eq!(b.take, vec![2, 3]);
        // Five partitions, two relays: shares of three, so nothing is left unled.
        let c = plan(
            5,
            &set(&[]),
            &View {
                members: 2,
                held_elsewhere: set(&[0, 1, 2]),
                other_count: None,
            },
        );
        assert_eq!(c.take, vec![3, 4]);
        // More relays than partitions: the extra relays stand by.
        let d = plan(
            2,
            &set(&[]),
            &View {
                members: 3,
                held_elsewhere: set(&[0, 1]),
                other_count: None,
            },
        );
        assert_eq!(d, Plan::default());
    }

    #[test]
    fn relays_of_another_partition_count_make_this_one_stand_by() {
        let v = View {
            members: 1,
            held_elsewhere: BTreeSet::new(),
            other_count: Some(1),
        };
        assert_eq!(
            plan(4, &set(&[0, 1]), &v),
            Plan {
                release: vec![0, 1],
                take: Vec::new(),
            }
        );
        assert_eq!(plan(4, &set(&[]), &v), Plan::default());
    }
}
