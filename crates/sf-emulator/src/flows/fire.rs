//! Carries out the actions rules set off, after the request's state lock is released (as a
//! "publish after commit" event is only sent once the transaction committed). A failed action is
//! logged and returned, for the caller to count on its rule (`GET /__admin/flows`); the write
//! that set it off stands.

use super::Fired;
use crate::outbound::{NewMessage, Outbound};
use crate::pubsub::{Hub, platform};

/// Publishes the events and queues the outbound messages; returns (rule, error) of each action
/// that failed.
pub fn execute(
    hub: &Hub,
    outbound: &Outbound,
    user: &str,
    fired: Vec<Fired>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut messages = Vec::new();
    for action in fired {
        match action {
            Fired::Publish { rule, event, body } => {
                match platform::publish_rest(hub, &event, &body, user) {
                    Ok(seq) => tracing::debug!(%rule, %event, seq, "flow published an event"),
                    Err(e) => {
                        tracing::warn!(%rule, %event, error = %e.message, "flow could not publish its event");
                        errors.push((rule, format!("{}: {}", e.code, e.message)));
                    }
                }
            }
            Fired::Outbound {
                rule,
                url,
                object,
                fields,
            } => messages.push(NewMessage {
                rule,
                url,
                object,
                fields,
            }),
        }
    }
    if !messages.is_empty() {
        let rules: Vec<String> = messages.iter().map(|m| m.rule.clone()).collect();
        for (rule, queued) in rules.into_iter().zip(outbound.enqueue(messages)) {
            match queued {
                Ok(id) => tracing::debug!(%rule, %id, "flow queued an outbound message"),
                Err(e) => {
                    tracing::warn!(%rule, error = %e, "flow could not queue its outbound message");
                    errors.push((rule, e.to_string()));
                }
            }
        }
    }
    errors
}
