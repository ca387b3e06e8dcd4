//! The statuses the Pub/Sub API answers with beyond plain gRPC codes: Salesforce's `error-code`
//! trailer, and the `rpc_id` every reply carries.

use orderbridge_pubsub::metadata;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

/// A status with Salesforce's `error-code` trailer.
pub fn status_with_code(code: tonic::Code, message: &str, error_code: &'static str) -> Status {
    let mut md = MetadataMap::new();
    md.insert(metadata::ERROR_CODE, MetadataValue::from_static(error_code));
    Status::with_metadata(code, message.to_owned(), md)
}

/// A fresh id for one reply, as Salesforce returns for support cases.
pub fn rpc_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
