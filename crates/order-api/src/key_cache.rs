//! A short-lived cache of authenticated API keys, so a request does not cost a Postgres lookup.
//!
//! Entries are keyed by the SHA-256 of the presented key (the plain key is never kept) and live
//! for `ORDER_API_KEY_CACHE_TTL`: a revoked key stops working within that time. An expiring key
//! carries its expiry into the cache, so expiry is exact. Failed lookups are not cached (a bad
//! key flood is throttled per peer instead, see [`crate::rate_limit::AuthFailures`]), so the
//! cache only ever holds keys that were valid, and at most [`MAX_ENTRIES`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::auth::Client;

/// More live keys than this in one process is not a use case; past it the cache starts over
/// rather than grow.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Clone)]
struct Entry {
    client: Client,
    expires_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

#[derive(Clone)]
pub struct KeyCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<[u8; 32], Entry>>>,
}

impl KeyCache {
    /// `ttl` zero disables the cache.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client of a key authenticated less than the TTL ago and not expired since.
    pub fn get(&self, fingerprint: &[u8; 32]) -> Option<Client> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries();
        let entry = entries.get(fingerprint)?;
        let fresh = entry.fetched.elapsed() < self.ttl;
        let unexpired = entry.expires_at.is_none_or(|at| at > Utc::now());
        if fresh && unexpired {
            Some(entry.client.clone())
        } else {
            entries.remove(fingerprint);
            None
        }
    }

    pub fn insert(&self, fingerprint: [u8; 32], client: Client, expires_at: Option<DateTime<Utc>>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.fetched.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            fingerprint,
            Entry {
                client,
                expires_at,
                fetched: Instant::now(),
            },
        );
    }

    /// Drops stale entries.
    pub fn housekeeping(&self) {
        let ttl = self.ttl;
        self.entries().retain(|_, e| e.fetched.elapsed() < ttl);
    }
}

#[cfg(test)]
mod tests {
    use orderbridge_domain::ClientId;
    use uuid::Uuid;

    use super::*;

    fn client() -> Client {
        Client {
            id: ClientId::from_uuid(Uuid::now_v7()),
            name: "portal".into(),
            external_id_prefix: "portal:".into(),
        }
    }

    #[test]
    fn hits_until_the_ttl_or_the_expiry() {
        let cache = KeyCache::new(Duration::from_millis(50));
        cache.insert([1; 32], client(), None);
        cache.insert(
            [2; 32],
            client(),
            Some(Utc::now() - chrono::Duration::seconds(1)),
        );
        assert!(cache.get(&[1; 32]).is_some());
        assert!(
            cache.get(&[2; 32]).is_none(),
            "an expired key is not served"
        );
        assert!(cache.get(&[3; 32]).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&[1; 32]).is_none(), "stale after the TTL");
    }

    #[test]
    fn zero_ttl_disables_it() {
        let cache = KeyCache::new(Duration::ZERO);
        cache.insert([1; 32], client(), None);
        assert!(cache.get(&[1; 32]).is_none());
    }
}
