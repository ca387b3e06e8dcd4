//! AMQP header names the sync worker writes on retried and dead-lettered messages; the `dlq`
//! commands read them. Changing one is a message-contract change.

/// Salesforce write attempts made for this message so far (long integer).
pub const ATTEMPTS: &str = "x-orderbridge-attempts";
/// Why the worker dead-lettered the message: `permanent`, `attempts_exhausted` or `undecodable`.
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
