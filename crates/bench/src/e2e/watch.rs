//! The observer's book of accepted orders not yet seen synced: which page size reaches back to
//! the oldest of them. Its own module because the paging rule (see `mod.rs`) is the subtle part
//! of the e2e measurement and has its own test.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How far below the oldest watched order's creation time the listing reads (see `observe::list`).
pub const ORDER_MARGIN: chrono::Duration = chrono::Duration::milliseconds(250);
/// Extra rows per page for the orders inside that margin.
const MARGIN_ROWS: usize = 50;

/// One accepted order, from the bench's side.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When it was due (open loop) or first sent (`--rate 0`): latencies count from here.
    pub due: Instant,
    pub sent: Instant,
}

/// Accepted orders not yet seen synced (or failed), oldest creation first; and those already
/// seen that are newer than the oldest pending one (they still show up in the listing).
#[derive(Default)]
pub struct Watch {
    pub pending: HashMap<Uuid, (DateTime<Utc>, Sent)>,
    by_created: BTreeSet<(DateTime<Utc>, Uuid)>,
    seen_recent: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Watch {
    pub fn add(&mut self, id: Uuid, created_at: DateTime<Utc>, sent: Sent) {
        self.pending.insert(id, (created_at, sent));
        self.by_created.insert((created_at, id));
    }

    pub fn take(&mut self, id: Uuid) -> Option<Sent> {
        let (created_at, sent) = self.pending.remove(&id)?;
        self.by_created.remove(&(created_at, id));
        self.seen_recent.insert((created_at, id));
        Some(sent)
    }

    /// How many orders the listing must return to reach back to `oldest`: those seen already
    /// and newer, those still pending, and those whose POST is in flight (not known yet).
    pub fn page_size(&mut self, oldest: DateTime<Utc>, in_flight_posts: usize) -> usize {
        self.seen_recent = self
            .seen_recent
            .split_off(&(oldest - ORDER_MARGIN, Uuid::nil()));
        self.seen_recent.len() + self.pending.len() + in_flight_posts + MARGIN_ROWS
    }

    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.by_created.first().map(|(c, _)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_tracks_the_oldest_pending_order() {
        let mut w = Watch::default();
        let now = Instant::now();
        let s = Sent {
            due: now,
            sent: now,
        };
        let t0 = Utc::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        w.add(b, t0 + chrono::Duration::milliseconds(5), s);
        w.add(a, t0, s);
        assert_eq!(w.oldest(), Some(t0));
        assert!(w.take(a).is_some());
        assert!(w.take(a).is_none());
        assert_eq!(w.oldest(), Some(t0 + chrono::Duration::milliseconds(5)));
        assert_eq!(w.page_size(t0, 3), 1 + 1 + 3 + MARGIN_ROWS);
        assert!(w.take(b).is_some());
        assert_eq!(w.oldest(), None);
        // Seen orders older than the window (less the margin) no longer count.
        assert_eq!(
            w.page_size(t0 + chrono::Duration::seconds(1), 0),
            MARGIN_ROWS
        );
    }
}
