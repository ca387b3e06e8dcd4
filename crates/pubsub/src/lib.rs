//! The Salesforce Pub/Sub API (gRPC service `eventbus.v1.PubSub`), shared by the emulator's server
//! (crates/sf-emulator) and the subscriber service.
//!
//! - [`proto`]: the messages, the client (`proto::pub_sub_client::PubSubClient`) and the server
//!   (`proto::pub_sub_server::{PubSub, PubSubServer}`), generated at build time from
//!   `proto/pubsub_api.proto` (wire-compatible with forcedotcom/pub-sub-api's file).
//! - The constants both sides must agree on: call metadata keys, the `error-code` trailer and its
//!   values, the replay-failure message, the flow-control cap.
//! - [`bitmap`]: the `changedFields`/`nulledFields`/`diffFields` strings of Change Data Capture.
//! - [`topics`]: topic names for CDC and platform events.
//! - [`call`]: putting the auth metadata on a call, reading the `error-code` trailer back.

pub mod bitmap;
pub mod call;
pub mod topics;

/// Generated from `proto/pubsub_api.proto` by build.rs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("eventbus.v1");
}

/// Metadata (gRPC headers) every call carries, and the trailer errors come with.
pub mod metadata {
    /// The OAuth access token (or session id).
    pub const ACCESS_TOKEN: &str = "accesstoken";
    /// The org's instance URL, as in the OAuth token reply.
    pub const INSTANCE_URL: &str = "instanceurl";
    /// The org id (18 characters).
    pub const TENANT_ID: &str = "tenantid";
    /// Trailer on a failed call naming the reason in Salesforce's words (see [`crate::error_codes`]).
    pub const ERROR_CODE: &str = "error-code";
}

/// Values of the [`metadata::ERROR_CODE`] trailer.
pub mod error_codes {
    /// A CUSTOM replay id that is expired, unknown or corrupt (Salesforce does not tell them apart).
    pub const REPLAY_ID_CORRUPTED: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    /// The access token is missing, wrong or expired: refresh it and re-open the stream.
    pub const AUTH_ERROR: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
}

/// The status message of a Subscribe that names a replay id the server cannot replay from.
pub const REPLAY_ID_VALIDATION_FAILED: &str = "The Replay ID validation failed.";

/// The most events a subscriber may have outstanding (`num_requested` not yet delivered).
pub const MAX_NUM_REQUESTED: i32 = 100;
