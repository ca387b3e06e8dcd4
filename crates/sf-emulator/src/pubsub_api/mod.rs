//! The Pub/Sub API's gRPC side: the `eventbus.v1.PubSub` methods and their auth (`service`),
//! one task per Subscribe stream (`subscribe`), statuses with Salesforce's trailers (`status`),
//! and the listener, plain or TLS (`server`). What they serve (topics, schemas, events) is the
//! hub in `pubsub`.

pub mod server;
pub mod service;
pub mod status;
pub mod subscribe;
