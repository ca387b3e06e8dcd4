//! The event log: published events per topic, in memory, with their replay ids.
//!
//! Replay ids are an 8-byte big-endian sequence number shared by all topics (opaque to clients;
//! an event on both its object's channel and `/data/ChangeEvents` has the same id on each).
//! Events are kept for the retention period and at most `max` per topic; an evicted event's
//! replay id then fails like an expired one. Eviction is lazy (on publish and on read), so an
//! idle emulator does no work.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderbridge_pubsub::proto::{ProducerEvent, ReplayPreset};

/// One stored event.
#[derive(Debug)]
pub struct StoredEvent {
    pub seq: u64,
    pub at: Instant,
    pub event: ProducerEvent,
}

#[derive(Debug, Default)]
struct TopicLog {
    events: VecDeque<Arc<StoredEvent>>,
    /// Highest sequence number evicted (0: none yet).
    evicted_upto: u64,
    published: u64,
}

/// Why a Subscribe cannot start where asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("replay id is not one this server issued")]
    Corrupt,
    #[error("replay id is older than the retained events")]
    Expired,
}

/// All topics' events.
#[derive(Debug)]
pub struct Bus {
    topics: BTreeMap<String, TopicLog>,
    seq: u64,
    retention: Duration,
    max: usize,
}

/// The replay id of sequence number `seq`.
pub fn replay_id(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// The sequence number of a replay id this server issued.
pub fn replay_seq(id: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(id).ok().map(u64::from_be_bytes)
}

impl Bus {
    pub fn new(retention: Duration, max: usize) -> Self {
        Self {
            topics: BTreeMap::new(),
            seq: 0,
            retention,
            max: max.max(1),
        }
    }

    /// The last sequence number issued on any topic.
    pub fn current(&self) -> u64 {
        self.seq
    }

    fn prune(log: &mut TopicLog, retention: Duration, max: usize) {
        let now = Instant::now();
        while let Some(front) = log.events.front() {
            let expired = now.saturating_duration_since(front.at) >= retention;
            if !expired && log.events.len() <= max {
                break;
            }
            log.evicted_upto = front.seq;
            log.events.pop_front();
        }
    }

    /// Appends `event` to each of `topics`; returns its sequence number.
    pub fn publish(&mut self, topics: &[&str], event: ProducerEvent) -> u64 {
        self.seq += 1;
        let stored = Arc::new(StoredEvent {
            seq: self.seq,
            at: Instant::now(),
            event,
        });
        for topic in topics {
            let log = self.topics.entry((*topic).to_owned()).or_default();
            log.events.push_back(Arc::clone(&stored));
            log.published += 1;
            Self::prune(log, self.retention, self.max);
        }
        self.seq
    }

    /// Where a subscription starts: deliver events with a sequence number above the result.
    pub fn start(
        &mut self,
        topic: &str,
        preset: ReplayPreset,
        replay: &[u8],
    ) -> Result<u64, ReplayError> {
        let (retention, max, current) = (self.retention, self.max, self.seq);
        let log = self.topics.entry(topic.to_owned()).or_default();
        Self::prune(log, retention, max);
        match preset {
            ReplayPreset::Latest => Ok(current),
            ReplayPreset::Earliest => Ok(log.evicted_upto),
            ReplayPreset::Custom => {
                let seq = replay_seq(replay).ok_or(ReplayError::Corrupt)?;
                if seq > current {
                    return Err(ReplayError::Corrupt);
                }
                // The event the id names is gone (or older ones are): Salesforce cannot tell
                // the subscriber what it missed, so neither do we.
                if log.evicted_upto > 0 && seq <= log.evicted_upto {
                    return Err(ReplayError::Expired);
                }
                Ok(seq)
            }
        }
    }

    /// Up to `limit` events of `topic` after sequence number `after`.
    pub fn after(&mut self, topic: &str, after: u64, limit: usize) -> Vec<Arc<StoredEvent>> {
        let (retention, max) = (self.retention, self.max);
        let Some(log) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        Self::prune(log, retention, max);
        let first = log.events.partition_point(|e| e.seq <= after);
        log.events.iter().skip(first).take(limit).cloned().collect()
    }

    /// Whether `topic` has events after `after`.
    pub fn has_after(&self, topic: &str, after: u64) -> bool {
        self.topics
            .get(topic)
            .and_then(|l| l.events.back())
            .is_some_and(|e| e.seq > after)
    }

    /// Per topic: (events retained, events published since start).
    pub fn counts(&mut self) -> BTreeMap<String, (usize, u64)> {
        let (retention, max) = (self.retention, self.max);
        self.topics
            .iter_mut()
            .map(|(t, log)| {
                Self::prune(log, retention, max);
                (t.clone(), (log.events.len(), log.published))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> ProducerEvent {
        ProducerEvent::default()
    }

    #[test]
    fn replay_positions() {
        let mut bus = Bus::new(Duration::from_secs(60), 2);
        assert_eq!(bus.start("/t", ReplayPreset::Latest, &[]), Ok(0));
        let a = bus.publish(&["/t"], ev());
        let b = bus.publish(&["/t", "/all"], ev());
        assert_eq!(bus.after("/t", 0, 10).len(), 2);
        assert_eq!(bus.after("/t", a, 10).len(), 1);
        assert_eq!(bus.after("/t", 0, 1)[0].seq, a);
        assert_eq!(bus.start("/t", ReplayPreset::Custom, &replay_id(a)), Ok(a));
        assert_eq!(
            bus.start("/t", ReplayPreset::Custom, &replay_id(b + 1)),
            Err(ReplayError::Corrupt)
        );
        assert_eq!(
            bus.start("/t", ReplayPreset::Custom, b"garbage"),
            Err(ReplayError::Corrupt)
        );
        // A third event evicts the first (max 2 per topic).
        bus.publish(&["/t"], ev());
        assert_eq!(
            bus.start("/t", ReplayPreset::Custom, &replay_id(a)),
            Err(ReplayError::Expired)
        );
        assert_eq!(bus.start("/t", ReplayPreset::Earliest, &[]), Ok(a));
        assert_eq!(bus.after("/t", 0, 10).len(), 2);
    }

    #[test]
    fn retention_expires_events() {
        let mut bus = Bus::new(Duration::ZERO, 10);
        let a = bus.publish(&["/t"], ev());
        assert!(bus.after("/t", 0, 10).is_empty());
        assert_eq!(
            bus.start("/t", ReplayPreset::Custom, &replay_id(a)),
            Err(ReplayError::Expired)
        );
    }
}
