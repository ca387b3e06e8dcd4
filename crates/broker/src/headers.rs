//! Message headers: the names orderbridge writes on retried and dead-lettered messages, why a
//! message was dead-lettered ([`DeadLetterReason`]), and the one way every process reads header
//! values back. Changing a name or a reason's text is a message-contract change.
//!
//! Header values arrive in whatever AMQP type the publisher chose (RabbitMQ itself writes
//! `x-delivery-count` as a long, other clients a long-long or even a string), so readers accept
//! every integer width and numeric text rather than the one type we happen to write.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};

/// Salesforce write attempts made for this message so far (long integer).
pub const ATTEMPTS: &str = "x-orderbridge-attempts";
/// Why the worker dead-lettered the message: a [`DeadLetterReason`].
pub const REASON: &str = "x-orderbridge-reason";
/// The Salesforce (or decoding) error code of the last failure, e.g. `REQUIRED_FIELD_MISSING`.
pub const ERROR_CODE: &str = "x-orderbridge-error-code";
/// The error message of the last failure.
pub const ERROR_MESSAGE: &str = "x-orderbridge-error-message";
/// RFC 3339 time of the first failed attempt.
pub const FIRST_FAILURE_AT: &str = "x-orderbridge-first-failure-at";
/// RFC 3339 time of the last failed attempt.
pub const LAST_FAILURE_AT: &str = "x-orderbridge-last-failure-at";
/// RFC 3339 time the message was replayed from the dead-letter queue (set by `dlq replay`).
pub const REPLAYED_AT: &str = "x-orderbridge-replayed-at";
/// The queue a dead letter was consumed from, which `dlq replay` sends it back to (set by the
/// worker and the status applier on what they dead-letter; the broker's own dead letters say
/// it in `x-death`).
pub const ORIGIN_QUEUE: &str = "x-orderbridge-origin-queue";
/// The id of the key that signed the message (see [`crate::signing`]).
pub const SIGNATURE_KEY_ID: &str = "x-orderbridge-key-id";
/// The message's HMAC-SHA256 signature, 64 hex digits (see [`crate::signing`]).
pub const SIGNATURE: &str = "x-orderbridge-signature";
/// Set by RabbitMQ on a message returned to a quorum queue (absent on the first delivery).
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Every header orderbridge writes when a message fails, in the order `dlq show` lists them.
pub const FAILURE_HEADERS: [&str; 8] = [
    ATTEMPTS,
    REASON,
    ERROR_CODE,
    ERROR_MESSAGE,
    FIRST_FAILURE_AT,
    LAST_FAILURE_AT,
    REPLAYED_AT,
    ORIGIN_QUEUE,
];

/// Why the worker (or the status applier) dead-lettered a message (the [`REASON`] header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Salesforce refused the order for a reason retrying cannot fix.
    Permanent,
    /// Retryable failures until the attempts ran out.
    AttemptsExhausted,
    /// The message is not an event the worker can read.
    Undecodable,
    /// The message reached its last delivery (it kept coming back, e.g. it crashed the worker).
    Redelivered,
    /// The message is not signed, or its signature does not verify with any accepted key
    /// ([`crate::signing`]): it was not published by our services, or was changed on the way.
    /// Never written anywhere; [`ERROR_CODE`] says which check failed.
    BadSignature,
}

impl DeadLetterReason {
    pub const ALL: [Self; 5] = [
        Self::Permanent,
        Self::AttemptsExhausted,
        Self::Undecodable,
        Self::Redelivered,
        Self::BadSignature,
    ];

    /// The header's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Undecodable => "undecodable",
            Self::Redelivered => "redelivered",
            Self::BadSignature => "bad_signature",
        }
    }

    /// The reason a header names; `None` for text this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header's value as text: long and short strings, and byte arrays read as UTF-8.
pub fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// A header's value as an integer: any integer width, or text holding one.
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        _ => as_text(v).and_then(|s| s.trim().parse().ok()),
    }
}

/// The named header of a message, if present.
pub fn get<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

/// The named header as text ([`as_text`]).
pub fn text(props: &BasicProperties, name: &str) -> Option<String> {
    get(props, name).and_then(as_text)
}

/// The named header as a count: an integer ([`as_int`]) that fits a `u32`.
pub fn count(props: &BasicProperties, name: &str) -> Option<u32> {
    get(props, name)
        .and_then(as_int)
        .and_then(|n| u32::try_from(n).ok())
}

/// A copy of `original` to publish again, without its `user_id`: the broker refuses a publish
/// whose `user_id` is not the publishing user (a channel error), and a copy is published by
/// someone else than the original (a forged message may even carry one on purpose).
pub fn republishable(original: &BasicProperties) -> BasicProperties {
    let o = original;
    let mut p = BasicProperties::default();
    macro_rules! keep {
        ($get:ident, $with:ident) => {
            if let Some(v) = o.$get() {
                p = p.$with(v.clone());
            }
        };
    }
    keep!(content_type, with_content_type);
    keep!(content_encoding, with_content_encoding);
    keep!(headers, with_headers);
    keep!(delivery_mode, with_delivery_mode);
    keep!(priority, with_priority);
    keep!(correlation_id, with_correlation_id);
    keep!(reply_to, with_reply_to);
    keep!(expiration, with_expiration);
    keep!(message_id, with_message_id);
    keep!(timestamp, with_timestamp);
    keep!(kind, with_type);
    keep!(app_id, with_app_id);
    keep!(cluster_id, with_cluster_id);
    p
}

/// Longest `x-orderbridge-error-message` written, in characters: headers travel in every frame,
/// and a huge error from outside must not bloat them.
pub const MAX_ERROR_MESSAGE: usize = 2000;

/// Why a message is copied to a delay tier or the dead letters, as [`failure_copy`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The copy's [`ATTEMPTS`].
    pub attempts: u32,
    pub code: &'a str,
    /// Cut to [`MAX_ERROR_MESSAGE`] characters.
    pub message: &'a str,
    /// For a dead letter: its reason and the queue `orderbridge dlq replay` sends it back to.
    pub dead_letter: Option<(DeadLetterReason, &'a str)>,
}

/// The properties of a failed message's copy: `original`'s ([`republishable`]), persistent,
/// with the failure headers set ([`ATTEMPTS`], [`ERROR_CODE`], [`ERROR_MESSAGE`], the first
/// failure's time kept from an earlier copy, [`LAST_FAILURE_AT`] = `now` as RFC 3339) and, for a
/// dead letter, [`REASON`] and [`ORIGIN_QUEUE`]. Every consumer that retries or dead-letters
/// writes them the same way, so `orderbridge dlq` reads any of its copies.
pub fn failure_copy(
    original: &BasicProperties,
    failure: Failure<'_>,
    now: &str,
) -> BasicProperties {
    let mut table = original.headers().clone().unwrap_or_default();
    let first = text(original, FIRST_FAILURE_AT).unwrap_or_else(|| now.to_owned());
    table.insert(
        ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(failure.attempts)),
    );
    table.insert(ERROR_CODE.into(), long_string(failure.code));
    let message = match failure.message.char_indices().nth(MAX_ERROR_MESSAGE) {
        Some((end, _)) => &failure.message[..end],
        None => failure.message,
    };
    table.insert(ERROR_MESSAGE.into(), long_string(message));
    table.insert(FIRST_FAILURE_AT.into(), long_string(&first));
    table.insert(LAST_FAILURE_AT.into(), long_string(now));
    if let Some((reason, origin_queue)) = failure.dead_letter {
        table.insert(REASON.into(), long_string(reason.as_str()));
        table.insert(ORIGIN_QUEUE.into(), long_string(origin_queue));
    }
    republishable(original)
        .with_headers(table)
        .with_delivery_mode(2)
}

/// A string header value, as RabbitMQ and other clients expect text (a long string).
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    #[test]
    fn reasons_round_trip_through_their_text() {
        for r in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(DeadLetterReason::parse("gone"), None);
    }

    #[test]
    fn republishable_copies_keep_everything_but_the_user_id() {
        let mut table = FieldTable::default();
        table.insert("h".into(), long_string("v"));
        let original = BasicProperties::default()
            .with_message_id("m".into())
            .with_type("t".into())
            .with_correlation_id("c".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(7)
            .with_app_id("a".into())
            .with_user_id("someone".into())
            .with_headers(table);
        let copy = republishable(&original);
        assert_eq!(*copy.user_id(), None);
        assert_eq!(copy.clone().with_user_id("someone".into()), original);
    }

    #[test]
    fn counts_are_read_from_any_integer_width_and_from_text() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongInt(3));
        table.insert("b".into(), AMQPValue::LongLongInt(4));
        table.insert("c".into(), AMQPValue::ShortShortUInt(5));
        table.insert("d".into(), long_string(" 6 "));
        table.insert("e".into(), AMQPValue::LongLongInt(-1));
        table.insert("f".into(), AMQPValue::ShortString(ShortString::from("x")));
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(count(&props, "a"), Some(3));
        assert_eq!(count(&props, "b"), Some(4));
        assert_eq!(count(&props, "c"), Some(5));
        assert_eq!(count(&props, "d"), Some(6));
        assert_eq!(count(&props, "e"), None, "negative is no count");
        assert_eq!(count(&props, "f"), None);
        assert_eq!(text(&props, "f").as_deref(), Some("x"));
        assert_eq!(count(&props, "missing"), None);
    }

    #[test]
    fn a_failure_copy_keeps_the_first_failure_and_bounds_the_message() {
        let first = failure_copy(
            &BasicProperties::default().with_message_id(ShortString::from("m-1")),
            Failure {
                attempts: 1,
                code: "UNAVAILABLE",
                message: &"é".repeat(MAX_ERROR_MESSAGE + 10),
                dead_letter: None,
            },
            "2026-12-03T10:00:00+00:00",
        );
        assert_eq!(count(&first, ATTEMPTS), Some(1));
        assert_eq!(
            text(&first, ERROR_MESSAGE).map(|m| m.chars().count()),
            Some(MAX_ERROR_MESSAGE)
        );
        assert_eq!(text(&first, REASON), None);
        assert_eq!(first.delivery_mode(), &Some(2));

        let dead = failure_copy(
            &first,
            Failure {
                attempts: 2,
                code: "GONE",
                message: "gone",
                dead_letter: Some((DeadLetterReason::Permanent, "ns.q")),
            },
            "2026-12-03T11:00:00+00:00",
        );
        assert_eq!(
            text(&dead, FIRST_FAILURE_AT).as_deref(),
            Some("2026-12-03T10:00:00+00:00")
        );
        assert_eq!(
            text(&dead, LAST_FAILURE_AT).as_deref(),
            Some("2026-12-03T11:00:00+00:00")
        );
        assert_eq!(text(&dead, REASON).as_deref(), Some("permanent"));
        assert_eq!(text(&dead, ORIGIN_QUEUE).as_deref(), Some("ns.q"));
        assert_eq!(dead.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
    }
}
