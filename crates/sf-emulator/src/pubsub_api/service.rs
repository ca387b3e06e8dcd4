//! The gRPC methods: GetTopic, GetSchema, Subscribe (see `subscribe`), Publish, PublishStream;
//! ManagedSubscribe answers UNIMPLEMENTED.
//!
//! Every call is authenticated first: `accesstoken` must be a live session the emulator's OAuth
//! issued (the same check REST makes), `instanceurl` present, `tenantid` the org id (15 or 18
//! characters). Failures are UNAUTHENTICATED with the `error-code` trailer Salesforce sends.

use std::pin::Pin;

use orderbridge_pubsub::proto::pub_sub_server::PubSub;
use orderbridge_pubsub::proto::{
    Error as PubSubError, ErrorCode, FetchRequest, FetchResponse, ManagedFetchRequest,
    ManagedFetchResponse, PublishRequest, PublishResponse, PublishResult, SchemaInfo,
    SchemaRequest, TopicInfo, TopicRequest,
};
use orderbridge_pubsub::{error_codes, metadata};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::status::{rpc_id, status_with_code};
use crate::auth;
use crate::pubsub::bus::replay_id;
use crate::pubsub::platform::check_payload;
use crate::pubsub::registry::TopicKind;
use crate::state::AppState;

/// Most events in one PublishRequest (Salesforce's limit is 200 per batch).
pub const MAX_EVENTS_PER_PUBLISH: usize = 200;

/// Most Subscribe streams open at once: each holds a task and a channel, so a client opening
/// streams in a loop gets RESOURCE_EXHAUSTED instead of growing the emulator without bound.
pub const MAX_OPEN_STREAMS: usize = 1000;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct PubSubService {
    pub(super) state: AppState,
}

impl PubSubService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

fn unauthenticated(why: &str) -> Status {
    status_with_code(tonic::Code::Unauthenticated, why, error_codes::AUTH_ERROR)
}

impl PubSubService {
    /// Checks the call metadata; Ok when the caller may proceed.
    pub(super) fn authenticate(&self, md: &MetadataMap) -> Result<(), Status> {
        let s = &self.state;
        if s.pubsub.lock().faults.reject_auth {
            return Err(unauthenticated("authentication rejected (injected fault)"));
        }
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (token, instance, tenant) = (
            get(metadata::ACCESS_TOKEN),
            get(metadata::INSTANCE_URL),
            get(metadata::TENANT_ID),
        );
        if token.is_empty() || instance.is_empty() || tenant.is_empty() {
            return Err(unauthenticated(
                "accesstoken, instanceurl and tenantid metadata are required",
            ));
        }
        let org = s.org_id.as_str();
        if tenant != org && tenant != &org[..15] {
            return Err(unauthenticated("tenantid does not name this org"));
        }
        let live = {
            let mut inner = s.lock();
            auth::check_session(s, &mut inner, Some(&format!("Bearer {token}")))
        };
        if !live {
            return Err(unauthenticated("invalid or expired access token"));
        }
        Ok(())
    }

    fn publish_one(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        let hub = &self.state.pubsub;
        if req.events.len() > MAX_EVENTS_PER_PUBLISH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_EVENTS_PER_PUBLISH} events per PublishRequest"
            )));
        }
        let current = {
            let st = hub.lock();
            match st.registry.topic(&req.topic_name) {
                None => {
                    return Err(Status::not_found(format!(
                        "topic {} does not exist",
                        req.topic_name
                    )));
                }
                Some((TopicKind::Event { .. }, Some(schema))) => schema,
                Some(_) => {
                    return Err(Status::permission_denied(format!(
                        "topic {} cannot be published to",
                        req.topic_name
                    )));
                }
            }
        };
        let mut results = Vec::with_capacity(req.events.len());
        for mut event in req.events {
            let correlation_key = event.id.clone();
            let checked = {
                let st = hub.lock();
                if !st
                    .registry
                    .topic_has_schema(&req.topic_name, &event.schema_id)
                {
                    Err(format!(
                        "schema id {:?} is not a schema of {}",
                        event.schema_id, req.topic_name
                    ))
                } else {
                    st.registry
                        .schema(&event.schema_id)
                        .ok_or_else(|| "unknown schema".to_owned())
                        .and_then(|schema| check_payload(&schema, &event.payload))
                }
            };
            match checked {
                Ok(()) => {
                    if event.id.is_empty() {
                        event.id = uuid::Uuid::new_v4().to_string();
                    }
                    let seq = hub.publish(&[&req.topic_name], event);
                    results.push(PublishResult {
                        replay_id: replay_id(seq),
                        error: None,
                        correlation_key,
                    });
                }
                Err(msg) => results.push(PublishResult {
                    replay_id: Vec::new(),
                    error: Some(PubSubError {
                        code: ErrorCode::Publish as i32,
                        msg,
                    }),
                    correlation_key,
                }),
            }
        }
        Ok(PublishResponse {
            results,
            schema_id: current.id.clone(),
            rpc_id: rpc_id(),
        })
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    type SubscribeStream = BoxStream<FetchResponse>;
    type PublishStreamStream = BoxStream<PublishResponse>;
    type ManagedSubscribeStream = BoxStream<ManagedFetchResponse>;

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.authenticate(request.metadata())?;
        let name = request.into_inner().topic_name;
        let st = self.state.pubsub.lock();
        let Some((kind, schema)) = st.registry.topic(&name) else {
            return Err(Status::not_found(format!("topic {name} does not exist")));
        };
        // `/data/ChangeEvents` has no single schema: each event names its object's.
        let schema_id = schema.map(|s| s.id.clone()).unwrap_or_default();
        Ok(Response::new(TopicInfo {
            topic_name: name.clone(),
            tenant_guid: self.state.org_id.clone(),
            can_publish: matches!(kind, TopicKind::Event { .. }),
            can_subscribe: true,
            schema_id,
            rpc_id: rpc_id(),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.authenticate(request.metadata())?;
        let id = request.into_inner().schema_id;
        let schema = self.state.pubsub.lock().registry.schema(&id);
        match schema {
            Some(s) => Ok(Response::new(SchemaInfo {
                schema_json: s.json.clone(),
                schema_id: s.id.clone(),
                rpc_id: rpc_id(),
            })),
            None => Err(Status::not_found(format!("schema {id:?} does not exist"))),
        }
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.authenticate(request.metadata())?;
        if self.state.pubsub.open_streams() >= MAX_OPEN_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_OPEN_STREAMS} Subscribe streams may be open at once"
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(super::subscribe::run(state, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.authenticate(request.metadata())?;
        self.publish_one(request.into_inner()).map(Response::new)
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.authenticate(request.metadata())?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => return,
                };
                let reply = match next {
                    Ok(Some(req)) => this.publish_one(req),
                    Ok(None) | Err(_) => return,
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn managed_subscribe(
        &self,
        request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        self.authenticate(request.metadata())?;
        Err(Status::unimplemented(
            "ManagedSubscribe is not emulated: use Subscribe and store the replay id yourself",
        ))
    }
}
