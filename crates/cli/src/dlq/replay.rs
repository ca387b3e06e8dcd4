//! `dlq replay`: republish a dead letter to the queue it died in, confirmed, then remove it.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use orderbridge_broker::{BrokerError, Keyring, headers, with_timeout};

use super::letter::DeadLetter;
use super::{Ctx, DlqError, dead_letters};
use crate::progress::{Progress, TerminalProgress};

/// How replayed letters are signed.
pub(super) struct Signing<'a> {
    pub(super) keyring: &'a Keyring,
    /// Sign letters whose own signature does not verify too (the operator vouches for them).
    pub(super) sign_unverified: bool,
}

/// Replays the dead letter(s) with `id`, or all (`None`) present when it starts.
pub(super) async fn replay(
    ctx: &Ctx<'_>,
    id: Option<&str>,
    signing: &Signing<'_>,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    ctx.session.enable_confirms(ctx.config).await?;
    let total = ctx.count().await?;
    // A bar for `--all` only: one id is one message.
    let progress = TerminalProgress::stderr();
    let bar = progress.phase("dead letters replayed");
    if id.is_none() {
        bar.set_total(total.into());
    }
    let mut replayed = 0usize;
    let mut matched = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut last_held = None;
    // At most `total` gets: what the worker dead-letters again while this runs (say, a replayed
    // message failing at once) lands behind and waits for the next replay instead of looping.
    for _ in 0..total {
        let Some(letter) = ctx.get().await? else {
            break;
        };
        if id.is_some_and(|id| letter.id != id) {
            last_held = Some(letter.tag);
            continue;
        }
        matched += 1;
        let origin = letter.origin(ctx.topology);
        match republish(ctx, &letter, &origin, signing).await {
            Ok(()) => {
                ctx.ack(letter.tag).await?;
                replayed += 1;
                tracing::info!(id = %letter.id, queue = %origin, "replayed dead letter");
                if id.is_some() {
                    writeln!(out, "replayed {} to {origin}", letter.id)?;
                }
            }
            Err(Failure::Broker(e)) => {
                // The channel is unusable or the confirm is unknown: stop; the unacked dead
                // letters (this one included) return to the queue with the connection.
                bar.finish();
                return Err(e.into());
            }
            Err(Failure::NotReplayed(why)) => {
                tracing::warn!(id = %letter.id, queue = %origin, why, "dead letter not replayed");
                failures.push(format!("{} to {origin}: {why}", letter.id));
                last_held = Some(letter.tag);
            }
        }
        bar.inc(1);
    }
    ctx.give_back(last_held).await?;
    bar.finish();

    if let Some(id) = id
        && matched == 0
    {
        return Err(DlqError::NotFound(id.to_owned()));
    }
    writeln!(
        out,
        "replayed {}",
        dead_letters(u64::try_from(replayed).unwrap_or(u64::MAX))
    )?;
    for f in &failures {
        writeln!(out, "not replayed: {f}")?;
    }
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(DlqError::ReplayFailed {
            failed: matched - replayed,
            replayed,
            first,
        }),
    }
}

enum Failure {
    /// The message could not be placed (unroutable, nacked, bad origin): the dead letter stays.
    NotReplayed(String),
    /// The session failed; nothing more can be done on it.
    Broker(BrokerError),
}

/// Publishes `letter` to `queue` through the default exchange, signed, and waits for the
/// confirm.
async fn republish(
    ctx: &Ctx<'_>,
    letter: &DeadLetter,
    queue: &str,
    signing: &Signing<'_>,
) -> Result<(), Failure> {
    // Checked on the letter as it came: the signed fields (body, message id, type) are the
    // ones the replayed copy keeps.
    if let Err(e) = signing.keyring.verify(&letter.properties, &letter.body)
        && !signing.sign_unverified
    {
        return Err(Failure::NotReplayed(format!(
            "its signature does not verify ({}: {e}); after checking it with `dlq show`, \
             --sign-unverified replays it",
            e.code()
        )));
    }
    if queue == ctx.topology.dead_letter_queue {
        return Err(Failure::NotReplayed(
            "its origin is the dead-letter queue itself".into(),
        ));
    }
    let Ok(routing_key) = ShortString::try_new(queue) else {
        return Err(Failure::NotReplayed(
            "origin queue name longer than 255 bytes".into(),
        ));
    };
    let publish = ctx.channel().basic_publish(
        "".into(),
        routing_key,
        // Mandatory: a queue that no longer exists comes back as basic.return (then ack), which
        // must not count as replayed.
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        &letter.body,
        signing.keyring.sign(
            replay_properties(&letter.properties, Utc::now()),
            &letter.body,
        ),
    );
    let confirm = ctx
        .config
        .op("basic.publish", publish)
        .await
        .map_err(Failure::Broker)?;
    // One publish in flight at a time, so a return that lapin attaches to this confirm is ours.
    match with_timeout(ctx.config.broker_op_timeout, "confirm", confirm).await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) => Err(Failure::NotReplayed(
            format!("unroutable ({} {})", r.reply_code, r.reply_text),
        )),
        Ok(Confirmation::Nack(None)) => Err(Failure::NotReplayed("the broker nacked it".into())),
        Ok(Confirmation::NotRequested) => Err(Failure::Broker(BrokerError::InvalidConfig(
            "channel not in confirm mode".into(),
        ))),
        Err(e) => Err(Failure::Broker(e)),
    }
}

/// The properties of a replayed copy: the original ones, with the failure history dropped, the
/// attempt count reset and the replay time recorded.
fn replay_properties(original: &BasicProperties, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = original.headers() {
        for (k, v) in old {
            if !is_failure_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(0));
    headers.insert(
        headers::REPLAYED_AT.into(),
        AMQPValue::LongString(LongString::from(
            now.to_rfc3339_opts(SecondsFormat::Millis, true),
        )),
    );
    // Not a clone: user_id is left out. The broker checks it against the publishing user, the
    // replayer is usually someone else, and keeping it would get the publish refused with a
    // channel error.
    headers::republishable(original)
        .with_headers(headers)
        .with_delivery_mode(original.delivery_mode().unwrap_or(2))
}

/// Headers a replay drops: our failure record and the broker's dead-lettering history (including
/// the quorum queue's delivery counters, so the copy starts afresh).
fn is_failure_header(name: &str) -> bool {
    headers::FAILURE_HEADERS.contains(&name)
        || ["x-death", headers::DELIVERY_COUNT, "x-acquired-count"].contains(&name)
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use orderbridge_broker::headers::as_text;

    use crate::dlq::test_support::{table, text};

    #[test]
    fn replay_drops_the_failure_history_and_keeps_the_rest() {
        let death = AMQPValue::FieldTable(table(&[("queue", text("ns.sf-sync"))]));
        let original = BasicProperties::default()
            .with_message_id("e1".into())
            .with_type("order.submitted".into())
            .with_correlation_id("c1".into())
            .with_content_type("application/json".into())
            .with_user_id("someone-else".into())
            .with_headers(table(&[
                (headers::ATTEMPTS, AMQPValue::LongLongInt(7)),
                (headers::REASON, text("permanent")),
                (headers::ERROR_CODE, text("X")),
                ("x-death", AMQPValue::FieldArray(vec![death].into())),
                ("x-first-death-queue", text("ns.sf-sync")),
                ("x-last-death-reason", text("rejected")),
                ("x-delivery-count", AMQPValue::LongLongInt(3)),
                ("aggregate_id", text("a1")),
            ]));
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let p = replay_properties(&original, now);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "e1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.submitted");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c1");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.user_id(), None);
        let h = p.headers().as_ref().unwrap().inner();
        let keys: Vec<&str> = h.keys().map(ShortString::as_str).collect();
        assert_eq!(
            keys,
            ["aggregate_id", headers::ATTEMPTS, headers::REPLAYED_AT]
        );
        assert_eq!(h.get(headers::ATTEMPTS), Some(&AMQPValue::LongLongInt(0)));
        assert_eq!(
            h.get(headers::REPLAYED_AT).and_then(as_text).unwrap(),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
