//! Writer schemas by id, fetched with `GetSchema` once and kept: a new id mid-stream (an admin
//! changed the event's fields) is simply fetched when first seen; events of the old id keep
//! decoding with theirs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orderbridge_pubsub::proto::SchemaRequest;
use orderbridge_pubsub::proto::pub_sub_client::PubSubClient;
use orderbridge_salesforce::SessionToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::decode::EventSchema;
use crate::grpc::{Failure, authed};

/// Most schemas kept; past it the cache starts over (ids are few in practice: one per version of
/// each topic's fields; this only bounds memory against a hostile server).
const MAX_SCHEMAS: usize = 256;
/// Longest schema id accepted.
const MAX_SCHEMA_ID: usize = 128;

/// A schema, or why it cannot be had (the event is dead-lettered with that reason).
pub type Lookup = Result<Arc<EventSchema>, String>;

#[derive(Debug, Default)]
pub struct SchemaCache {
    schemas: HashMap<String, Arc<EventSchema>>,
}

impl SchemaCache {
    /// The schema `id`, fetched when not cached. `Err` only for failures worth re-opening the
    /// stream over (auth, unavailable, timeout); a schema that does not exist or does not parse
    /// is `Ok(Err(reason))`.
    pub async fn get(
        &mut self,
        grpc: &mut PubSubClient<Channel>,
        token: &SessionToken,
        org_id: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Lookup, Failure> {
        if let Some(s) = self.schemas.get(id) {
            return Ok(Ok(s.clone()));
        }
        if id.is_empty() || id.len() > MAX_SCHEMA_ID || id.chars().any(char::is_control) {
            return Ok(Err(
                "the schema id is empty, too long or has control characters".into(),
            ));
        }
        let request = authed(
            SchemaRequest {
                schema_id: id.to_owned(),
            },
            token,
            org_id,
        )?;
        let reply = match tokio::time::timeout(timeout, grpc.get_schema(request)).await {
            Err(_) => return Err(Failure::Other(format!("GetSchema {id} timed out"))),
            Ok(Err(status)) => {
                let failure = Failure::from_status(&status, token.generation);
                return match (&failure, status.code()) {
                    (Failure::Auth { .. }, _) => Err(failure),
                    (_, Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition) => {
                        Ok(Err(format!("GetSchema {id} failed: {failure}")))
                    }
                    _ => Err(failure),
                };
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let schema = match EventSchema::parse(id, &reply.schema_json) {
            Ok(s) => Arc::new(s),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if self.schemas.len() >= MAX_SCHEMAS {
            self.schemas.clear();
        }
        tracing::info!(
            schema_id = id,
            fields = schema.field_names().len(),
            "fetched event schema"
        );
        self.schemas.insert(id.to_owned(), schema.clone());
        Ok(Ok(schema))
    }
}
