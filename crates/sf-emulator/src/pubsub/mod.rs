//! The Salesforce Pub/Sub API (gRPC `eventbus.v1.PubSub`, from `orderbridge-pubsub`): Change
//! Data Capture events for REST writes, platform events published over REST or gRPC, replay,
//! flow control and keepalives, as a local endpoint.
//!
//! ```text
//! REST write ─► store change log ─► http takes it after the request ─► cdc ─┐
//! REST POST /sobjects/X__e ─► platform ───────────────────────────────────────┼─► Hub: registry
//! gRPC Publish ─► pubsub_api::service ────────────────────────────────────────┘   (topics,
//!                                                                                   schemas) +
//! gRPC Subscribe ◄─ pubsub_api::subscribe (task per stream) ◄── watch ◄──────── bus (events)
//! ```
//!
//! One file per concern: `avro` (schemas, values), `registry` (topics, schema versions), `bus`
//! (event log, replay ids, retention), `cdc` (change → payload), `platform` (REST publish). The
//! gRPC side that serves them (methods, auth, the stream loop, listening) is `pubsub_api`, and
//! `/__admin/pubsub` is `admin_pubsub`: both need the emulator's state, which holds this hub.
//!
//! Locking: the hub's mutex is taken after the state's (`Inner`) when both are needed and never
//! the other way round; nothing awaits while holding it.

pub mod avro;
pub mod bus;
pub mod cdc;
pub mod platform;
pub mod registry;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use orderbridge_pubsub::proto::ProducerEvent;
use orderbridge_pubsub::topics;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::EmulatorConfig;
use crate::schema::Schema;
use crate::store::Change;

use self::avro::SchemaBuildError;
use self::bus::Bus;
use self::cdc::Commit;
use self::registry::{Registry, TopicKind};

/// Injected Pub/Sub faults (`POST /__admin/pubsub/faults`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PubSubFaults {
    /// Every call fails UNAUTHENTICATED (with the auth error-code trailer) until cleared.
    pub reject_auth: bool,
    /// Subscribe streams wait this long before sending events.
    pub delay_ms: u64,
}

/// Mutable Pub/Sub state.
#[derive(Debug)]
pub struct HubState {
    pub registry: Registry,
    pub bus: Bus,
    pub faults: PubSubFaults,
}

/// Everything the Pub/Sub side shares; one per emulator (in `Shared`).
#[derive(Debug)]
pub struct Hub {
    state: Mutex<HubState>,
    /// The last sequence number published: subscribers wait for it to change.
    published: watch::Sender<u64>,
    /// Bumped to end every open Subscribe stream (fault injection, shutdown).
    generation: watch::Sender<u64>,
    open_streams: AtomicUsize,
    commit_number: AtomicI64,
    /// Captured objects (schema spelling).
    pub captured: Vec<String>,
    pub keepalive: std::time::Duration,
}

/// Keeps the open-stream count while a Subscribe stream lives.
pub struct StreamGuard<'a>(&'a Hub);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hostile Avro lengths (a string claiming terabytes) fail instead of allocating.
const AVRO_MAX_ALLOCATION: usize = 16 * 1024 * 1024;

impl Hub {
    pub fn new(config: &EmulatorConfig, schema: &Schema) -> Result<Self, SchemaBuildError> {
        // Set once per process; a second emulator in the same process gets the same value.
        apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION);
        let mut captured: Vec<String> = Vec::new();
        for name in &config.cdc_objects {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            match schema.object(name) {
                Some(o) if !captured.contains(&o.name) => captured.push(o.name.clone()),
                Some(_) => {}
                None => tracing::warn!(
                    object = name,
                    "SF_EMULATOR_CDC_OBJECTS names an object the schema lacks; ignored"
                ),
            }
        }
        let registry = Registry::new(schema, &captured)?;
        Ok(Self {
            state: Mutex::new(HubState {
                registry,
                bus: Bus::new(config.event_retention, config.event_max),
                faults: PubSubFaults::default(),
            }),
            published: watch::Sender::new(0),
            generation: watch::Sender::new(0),
            open_streams: AtomicUsize::new(0),
            commit_number: AtomicI64::new(0),
            captured,
            keepalive: config.pubsub_keepalive,
        })
    }

    /// Locks the Pub/Sub state (poisoning ignored, as for the main state).
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn subscribe_published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn subscribe_generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Ends every open Subscribe stream (they fail UNAVAILABLE).
    pub fn drop_streams(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn stream_opened(&self) -> StreamGuard<'_> {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self)
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Appends an event to topics and wakes the subscribers; returns its sequence number.
    pub fn publish(&self, topics: &[&str], event: ProducerEvent) -> u64 {
        let seq = self.lock().bus.publish(topics, event);
        self.published.send_replace(seq);
        seq
    }

    /// Publishes the change events of one REST request's committed changes.
    pub fn publish_changes(&self, changes: Vec<Change>, origin: String, user: &str) {
        if changes.is_empty() {
            return;
        }
        let commit = Commit {
            origin,
            transaction_key: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            number: self.commit_number.fetch_add(1, Ordering::Relaxed) + 1,
            user: user.to_owned(),
        };
        let mut last = None;
        {
            let mut st = self.lock();
            for (i, change) in changes.iter().enumerate() {
                let topic = topics::change_event_topic(&change.object);
                let Some((TopicKind::Changes { .. }, Some(schema))) = st.registry.topic(&topic)
                else {
                    continue;
                };
                let sequence = i32::try_from(i + 1).unwrap_or(i32::MAX);
                match cdc::payload(&schema, change, &commit, sequence) {
                    Ok(payload) => {
                        let event = ProducerEvent {
                            id: uuid::Uuid::new_v4().to_string(),
                            schema_id: schema.id.clone(),
                            payload,
                            headers: Vec::new(),
                        };
                        last = Some(st.bus.publish(&[&topic, topics::ALL_CHANGE_EVENTS], event));
                    }
                    Err(e) => {
                        tracing::error!(object = %change.object, error = %e, "cannot encode a change event");
                    }
                }
            }
        }
        if let Some(seq) = last {
            self.published.send_replace(seq);
        }
    }
}
