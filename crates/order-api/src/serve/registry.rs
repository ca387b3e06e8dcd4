//! The open connections, so the connection cap can close the one that has waited longest
//! without a request in progress when a new client needs its slot.
//!
//! Without this the cap would be a lever for an attacker: enough connections that never
//! finish a head (or sit idle after one cheap request) would keep every real client waiting
//! in the listen backlog until their timeouts. With it, such connections make room for new ones,
//! while a connection serving a request is never cut.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::activity::Activity;

#[derive(Debug, Default)]
pub(super) struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

/// A connection's place in the registry, given up when dropped.
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // Inserts and removes are single statements: a poisoned map is still consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, activity);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// Asks the connection quiet for the longest (idle, or still reading a head) to close.
    /// Returns false when every connection is serving a request.
    pub fn evict_longest_quiet(&self) -> bool {
        let open = self.open();
        let oldest = open
            .values()
            .filter_map(|a| a.quiet_since().map(|since| (since, a)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, activity)) => {
                activity.evict();
                true
            }
            None => false,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.open().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_longest_quiet_connection_goes_first_and_once() {
        let registry = Arc::new(Registry::default());
        let oldest = Arc::new(Activity::new());
        let _a = registry.register(oldest.clone());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let newer = Arc::new(Activity::new());
        let _b = registry.register(newer.clone());

        assert!(registry.evict_longest_quiet());
        assert_eq!(oldest.quiet_since(), None, "the oldest was picked");
        assert!(newer.quiet_since().is_some());
        assert!(registry.evict_longest_quiet());
        assert_eq!(newer.quiet_since(), None);
        assert!(!registry.evict_longest_quiet(), "nothing left to pick");
    }
}
