//! What each orderbridge component may do on the broker: the RabbitMQ permissions of its own
//! user, derived from the [`Topology`] names so they follow `BROKER_NAMESPACE`.
//!
//! RabbitMQ grants per vhost three regular expressions over resource names: *configure*
//! (declare, delete), *write* (publish to an exchange; bind a queue) and *read* (consume or get
//! from a queue; bind to an exchange). With these, no component declares anything (the topology
//! is declared once by `orderbridge broker setup-users`, and the components run with
//! `BROKER_DECLARE_TOPOLOGY=false`, which only checks it with passive declares; those need no
//! permission):
//!
//! | component     | configure | write                                  | read                 |
//! |---------------|-----------|----------------------------------------|----------------------|
//! | outbox-relay  | nothing   | `{ns}.events`, `{ns}.dlx`              | `{ns}.status-events` |
//! | sync-worker   | nothing   | `{ns}.retry`, `{ns}.dlx`, `{ns}.status` | `{ns}.sf-sync`       |
//! | fulfilment-worker | nothing | `{ns}.retry`, `{ns}.dlx`             | `{ns}.fulfilment`    |
//! | operator      | nothing   | the default exchange (`amq.default`)   | `{ns}.dead-letters`, `{ns}.sf-sync.retry.<delay>` |
//!
//! So the worker cannot publish order events (it never writes `{ns}.events`) nor read the
//! status queue; the relay cannot consume the work queue nor publish status reports; the
//! operator (`orderbridge dlq`, `orderbridge orders show`) only reads dead letters and retry
//! tiers (given back after looking) and republishes dead letters to the queue they came from, through the default exchange, which reaches any queue of the vhost: that is why
//! the operator's user is the one to guard most, and why every message is also signed
//! ([`crate::signing`]). order-api never talks to the broker and has no user.

use crate::Topology;

/// The name RabbitMQ checks permissions against for the default (nameless) exchange.
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// A component with a broker user of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// Publishes order events; consumes status reports (and dead-letters forged ones).
    OutboxRelay,
    /// Consumes order events; publishes status reports, retries, requeues and dead letters.
    SyncWorker,
    /// `orderbridge dlq`: reads dead letters, replays them to their queue.
    Operator,
    /// Consumes the fulfilment nudges; publishes their retries, requeues and dead letters.
    FulfilmentWorker,
}

impl Component {
    pub const ALL: [Self; 4] = [
        Self::OutboxRelay,
        Self::SyncWorker,
        Self::Operator,
        Self::FulfilmentWorker,
    ];

    /// The component's name, also the suffix of its user name.
    pub fn name(self) -> &'static str {
        match self {
            Self::OutboxRelay => "outbox-relay",
            Self::SyncWorker => "sync-worker",
            Self::Operator => "operator",
            Self::FulfilmentWorker => "fulfilment-worker",
        }
    }
}

/// One user's permissions on the vhost: three regular expressions over resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl Topology {
    /// The least `component` needs on this namespace (see the module docs).
    pub fn permissions(&self, component: Component) -> Permissions {
        let (write, read): (Vec<&str>, Vec<&str>) = match component {
            Component::OutboxRelay => (
                vec![&self.events_exchange, &self.dead_letter_exchange],
                vec![&self.status_queue],
            ),
            Component::SyncWorker => (
                vec![
                    &self.retry_exchange,
                    &self.dead_letter_exchange,
                    &self.status_exchange,
                ],
                vec![&self.sf_sync_queue],
            ),
            // `orders show` looks through the retry tiers as `dlq` does through the dead
            // letters: `basic.get`, then every message given back.
            Component::Operator => (
                vec![DEFAULT_EXCHANGE],
                std::iter::once(self.dead_letter_queue.as_str())
                    .chain(self.retry_tiers.iter().map(|t| t.queue.as_str()))
                    .collect(),
            ),
            Component::FulfilmentWorker => (
                vec![&self.retry_exchange, &self.dead_letter_exchange],
                vec![&self.fulfilment_queue],
            ),
        };
        Permissions {
            configure: exactly(&[]),
            write: exactly(&write),
            read: exactly(&read),
        }
    }
}

/// A regular expression matching exactly `names` (nothing at all when empty: RabbitMQ's own
/// idiom `^$`, since no resource has an empty name).
fn exactly(names: &[&str]) -> String {
    if names.is_empty() {
        return "^$".to_owned();
    }
    let alternatives: Vec<String> = names.iter().map(|n| escape(n)).collect();
    format!("^(?:{})$", alternatives.join("|"))
}

/// `name` with every ASCII character other than letters, digits and `_` escaped, so a
/// namespace is matched literally (in RabbitMQ's PCRE a backslash before punctuation always
/// means the character itself).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_component_gets_exactly_its_own_names() {
        let t = Topology::new("ns", 5, &[Duration::from_secs(5)]).unwrap();
        let relay = t.permissions(Component::OutboxRelay);
        assert_eq!(relay.configure, "^$");
        assert_eq!(relay.write, r"^(?:ns\.events|ns\.dlx)$");
        assert_eq!(relay.read, r"^(?:ns\.status\-events)$");
        let worker = t.permissions(Component::SyncWorker);
        assert_eq!(worker.configure, "^$");
        assert_eq!(worker.write, r"^(?:ns\.retry|ns\.dlx|ns\.status)$");
        assert_eq!(worker.read, r"^(?:ns\.sf\-sync)$");
        let operator = t.permissions(Component::Operator);
        assert_eq!(operator.write, r"^(?:amq\.default)$");
        assert_eq!(
            operator.read,
            r"^(?:ns\.dead\-letters|ns\.sf\-sync\.retry\.5s)$"
        );
        let fulfilment = t.permissions(Component::FulfilmentWorker);
        assert_eq!(fulfilment.configure, "^$");
        assert_eq!(fulfilment.write, r"^(?:ns\.retry|ns\.dlx)$");
        assert_eq!(fulfilment.read, r"^(?:ns\.fulfilment)$");
    }

    #[test]
    fn namespaces_are_matched_literally() {
        assert_eq!(escape("a.b+c*(d)|e"), r"a\.b\+c\*\(d\)\|e");
        assert_eq!(escape("plain_NAME9"), "plain_NAME9");
        assert_eq!(escape("ünï"), "ünï");
        let names: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "outbox-relay",
                "sync-worker",
                "operator",
                "fulfilment-worker"
            ]
        );
    }
}
