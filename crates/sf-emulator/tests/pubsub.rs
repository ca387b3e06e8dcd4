//! The Pub/Sub API (gRPC) of the emulator, driven with the tonic client of `orderbridge-pubsub`:
//! Change Data Capture from REST writes, replay presets, flow control, keepalives, replay and
//! auth failures with Salesforce's trailers, schema changes mid-stream, platform events over REST
//! and Publish, and hostile input.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use common::{Org, V};
use orderbridge_pubsub::bitmap::Bitmap;
use orderbridge_pubsub::call;
use orderbridge_pubsub::proto::pub_sub_client::PubSubClient;
use orderbridge_pubsub::proto::{
    FetchRequest, FetchResponse, ProducerEvent, PublishRequest, ReplayPreset, SchemaRequest,
    TopicRequest,
};
use orderbridge_pubsub::{REPLAY_ID_VALIDATION_FAILED, error_codes, metadata};
use reqwest::Method;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const ORDER_TOPIC: &str = "/data/OrderChangeEvent";
const EVENT_TOPIC: &str = "/event/OrderProvisionRequested__e";

struct Sub {
    tx: mpsc::Sender<FetchRequest>,
    stream: Streaming<FetchResponse>,
}

impl Sub {
    async fn next(&mut self) -> Result<FetchResponse, Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.stream.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no FetchResponse within 10 s"),
        }
    }

    /// The next response that carries events.
    async fn events(&mut self) -> FetchResponse {
        loop {
            let r = self.next().await.unwrap();
            if !r.events.is_empty() {
                return r;
            }
        }
    }

    /// Nothing arrives for `wait` (keepalives aside).
    async fn quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(r))) => assert!(r.events.is_empty(), "unexpected events: {r:?}"),
                Ok(other) => panic!("stream failed: {other:?}"),
            }
        }
    }

    async fn request(&self, n: i32) {
        self.tx
            .send(FetchRequest {
                num_requested: n,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn client(org: &Org) -> PubSubClient<Channel> {
    PubSubClient::connect(org.emu.pubsub_url.clone())
        .await
        .unwrap()
}

fn authed<T>(org: &Org, token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    call::insert_auth(r.metadata_mut(), token, org.base(), &org.emu.state.org_id).unwrap();
    r
}

async fn subscribe(org: &Org, first: FetchRequest) -> Result<Sub, Status> {
    let mut c = client(org).await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let stream = c
        .subscribe(authed(org, &org.token, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    Ok(Sub { tx, stream })
}

fn fetch(topic: &str, preset: ReplayPreset, replay_id: Vec<u8>, n: i32) -> FetchRequest {
    FetchRequest {
        topic_name: topic.into(),
        replay_preset: preset as i32,
        replay_id,
        num_requested: n,
        auth_refresh: String::new(),
    }
}

/// Schema cache by id, as a real subscriber keeps it.
#[derive(Default)]
struct Schemas(HashMap<String, apache_avro::Schema>);

impl Schemas {
    async fn get(&mut self, org: &Org, id: &str) -> apache_avro::Schema {
        if let Some(s) = self.0.get(id) {
            return s.clone();
        }
        let info = client(org)
            .await
            .get_schema(authed(
                org,
                &org.token,
                SchemaRequest {
                    schema_id: id.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.schema_id, id);
        let schema = apache_avro::Schema::parse_str(&info.schema_json).unwrap();
        self.0.insert(id.to_owned(), schema.clone());
        schema
    }

    /// The event's fields by name, and the schema's top-level field names in order.
    async fn decode(
        &mut self,
        org: &Org,
        e: &ProducerEvent,
    ) -> (HashMap<String, Avro>, Vec<String>) {
        let schema = self.get(org, &e.schema_id).await;
        let mut bytes = &e.payload[..];
        let value = apache_avro::from_avro_datum(&schema, &mut bytes, None).unwrap();
        assert!(bytes.is_empty(), "trailing bytes after the datum");
        let apache_avro::Schema::Record(r) = &schema else {
            panic!("not a record schema")
        };
        let names = r.fields.iter().map(|f| f.name.clone()).collect();
        let Avro::Record(fields) = value else {
            panic!("not a record")
        };
        (fields.into_iter().collect(), names)
    }
}

fn unwrap_union(v: &Avro) -> &Avro {
    match v {
        Avro::Union(_, inner) => inner,
        other => other,
    }
}

fn header(fields: &HashMap<String, Avro>) -> HashMap<String, Avro> {
    let Avro::Record(h) = &fields["ChangeEventHeader"] else {
        panic!("no header")
    };
    h.iter().cloned().collect()
}

fn strings(v: &Avro) -> Vec<String> {
    let Avro::Array(items) = v else {
        panic!("not an array: {v:?}")
    };
    items
        .iter()
        .map(|i| match i {
            Avro::String(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

fn text(v: &Avro) -> String {
    match unwrap_union(v) {
        Avro::String(s) => s.clone(),
        Avro::Enum(_, s) => s.clone(),
        other => panic!("not text: {other:?}"),
    }
}

/// Field names that a header's bitmap list marks.
fn marked(list: &Avro, names: &[String]) -> Vec<String> {
    strings(list)
        .iter()
        .flat_map(|b| {
            Bitmap::parse(b)
                .unwrap()
                .names(names)
                .unwrap()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn order(org: &Org) -> String {
    let acc = org.account("Acme", "A-1").await;
    let r = org
        .post(
            "/sobjects/Order",
            json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Draft", "Name": "first"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

fn config() -> EmulatorConfig {
    EmulatorConfig {
        pubsub_keepalive: Duration::from_secs(1),
        ..EmulatorConfig::ephemeral()
    }
}

#[tokio::test]
async fn rest_update_becomes_a_change_event_with_origin_and_changed_fields() {
    let org = Org::start_with(config()).await;
    let id = order(&org).await;
    let mut schemas = Schemas::default();

    // EARLIEST: the creation is there; receiving it proves the stream is open.
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    let created = sub.events().await;
    assert_eq!(created.events.len(), 1);
    let (fields, _) = schemas
        .decode(&org, created.events[0].event.as_ref().unwrap())
        .await;
    let h = header(&fields);
    assert_eq!(text(&h["changeType"]), "CREATE");
    assert_eq!(text(&h["changeOrigin"]), "");
    assert_eq!(text(&fields["Name"]), "first");
    assert_eq!(text(&fields["Status"]), "Draft");

    let r = org
        .call_with(
            Method::PATCH,
            &format!("{V}/sobjects/Order/{id}"),
            Some(json!({"Status": "Activated"})),
            &[("Sforce-Call-Options", "client=orderbridge")],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let updated = sub.events().await;
    let consumer = &updated.events[0];
    assert_eq!(updated.latest_replay_id, consumer.replay_id);
    let event = consumer.event.as_ref().unwrap();
    assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "{}", event.id);
    let (fields, names) = schemas.decode(&org, event).await;
    let h = header(&fields);
    assert_eq!(text(&h["entityName"]), "Order");
    assert_eq!(strings(&h["recordIds"]), vec![id.clone()]);
    assert_eq!(text(&h["changeType"]), "UPDATE");
    assert_eq!(
        text(&h["changeOrigin"]),
        "com/salesforce/api/rest/62.0;client=orderbridge"
    );
    assert_eq!(names[0], "ChangeEventHeader");
    let changed = marked(&h["changedFields"], &names);
    assert!(changed.contains(&"Status".to_owned()), "{changed:?}");
    assert!(
        changed
            .iter()
            .all(|f| f == "Status" || f == "LastModifiedDate"),
        "{changed:?}"
    );
    assert!(marked(&h["nulledFields"], &names).is_empty());
    assert_eq!(text(&fields["Status"]), "Activated");
    // Unchanged fields are null on UPDATE.
    assert_eq!(unwrap_union(&fields["Name"]), &Avro::Null);

    // The same event is on the all-objects channel.
    let mut all = subscribe(
        &org,
        fetch("/data/ChangeEvents", ReplayPreset::Earliest, vec![], 10),
    )
    .await
    .unwrap();
    assert_eq!(all.events().await.events.len(), 2);
}

#[tokio::test]
async fn upsert_collections_composite_and_delete_publish_and_rolled_back_batches_do_not() {
    let org = Org::start_with(config()).await;
    let acc = org.account("Acme", "A-1").await;
    let base = json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Draft"});
    let with = |ext: &str| {
        let mut v = base.clone();
        v["External_Id__c"] = json!(ext);
        v
    };
    // Upsert (create), Collections (create), then an allOrNone batch that fails: nothing.
    let r = org
        .patch("/sobjects/Order/External_Id__c/O-1", base.clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut rec = with("O-2");
    rec["attributes"] = json!({"type": "Order"});
    let r = org
        .post(
            "/composite/sobjects",
            json!({"allOrNone": false, "records": [rec]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut good = with("O-3");
    good["attributes"] = json!({"type": "Order"});
    let mut bad = with("O-4");
    bad["attributes"] = json!({"type": "Order"});
    bad["Status"] = json!("Nope");
    let r = org
        .post(
            "/composite/sobjects",
            json!({"allOrNone": true, "records": [good, bad]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let o1 = org.get("/sobjects/Order/External_Id__c/O-1").await.body["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Composite: one subrequest updates O-1.
    let r = org
        .post(
            "/composite",
            json!({"allOrNone": true, "compositeRequest": [{"method": "PATCH", "url": format!("{V}/sobjects/Order/{o1}"), "referenceId": "u", "body": {"Name": "via composite"}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["compositeResponse"][0]["httpStatusCode"], 204,
        "{}",
        r.body
    );
    let r = org.delete(&format!("/sobjects/Order/{o1}")).await;
    assert_eq!(r.status, 204);

    let mut sub = subscribe(
        &org,
        fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 100),
    )
    .await
    .unwrap();
    let mut schemas = Schemas::default();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        for e in sub.events().await.events {
            let (fields, _) = schemas.decode(&org, e.event.as_ref().unwrap()).await;
            let h = header(&fields);
            seen.push((text(&h["changeType"]), strings(&h["recordIds"])[0].clone()));
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], ("CREATE".to_owned(), o1.clone()));
    assert_eq!(seen[1].0, "CREATE");
    assert_eq!(seen[2], ("UPDATE".to_owned(), o1.clone()));
    assert_eq!(seen[3], ("DELETE".to_owned(), o1));
    sub.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn latest_earliest_and_custom_replay() {
    let org = Org::start_with(config()).await;
    let id = order(&org).await;
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    let first = sub.events().await.events[0].replay_id.clone();
    for name in ["two", "three"] {
        let r = org
            .patch(&format!("/sobjects/Order/{id}"), json!({"Name": name}))
            .await;
        assert_eq!(r.status, 204);
    }
    let mut got = 0;
    let mut ids = vec![first.clone()];
    while got < 2 {
        let r = sub.events().await;
        got += r.events.len();
        ids.extend(r.events.into_iter().map(|e| e.replay_id));
    }
    // CUSTOM: the events after the given one.
    let mut custom = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Custom, first, 10))
        .await
        .unwrap();
    let mut after = Vec::new();
    while after.len() < 2 {
        after.extend(
            custom
                .events()
                .await
                .events
                .into_iter()
                .map(|e| e.replay_id),
        );
    }
    assert_eq!(after, ids[1..].to_vec());
    // LATEST: nothing old; the next change arrives. The keepalive proves the stream is open.
    let mut latest = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 10))
        .await
        .unwrap();
    let keepalive = latest.next().await.unwrap();
    assert!(keepalive.events.is_empty());
    assert_eq!(keepalive.latest_replay_id, ids[2]);
    let r = org
        .patch(&format!("/sobjects/Order/{id}"), json!({"Name": "four"}))
        .await;
    assert_eq!(r.status, 204);
    let next = latest.events().await;
    assert_eq!(next.events.len(), 1);
    assert_ne!(next.events[0].replay_id, ids[2]);
}

#[tokio::test]
async fn never_more_than_requested_and_keepalive_carries_the_latest_replay_id() {
    let org = Org::start_with(config()).await;
    let id = order(&org).await;
    for i in 0..4 {
        let r = org
            .patch(
                &format!("/sobjects/Order/{id}"),
                json!({"Name": format!("n{i}")}),
            )
            .await;
        assert_eq!(r.status, 204);
    }
    // Five events wait; two are requested.
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 2))
        .await
        .unwrap();
    let mut received = 0;
    let mut last = Vec::new();
    while received < 2 {
        let r = sub.events().await;
        received += r.events.len();
        last = r.latest_replay_id.clone();
        assert_eq!(
            r.pending_num_requested,
            2 - i32::try_from(received).unwrap()
        );
    }
    assert_eq!(received, 2);
    // Nothing more until asked; the keepalive reports where the stream is.
    let keepalive = sub.next().await.unwrap();
    assert!(keepalive.events.is_empty());
    assert_eq!(keepalive.latest_replay_id, last);
    assert_eq!(keepalive.pending_num_requested, 0);
    sub.request(3).await;
    let mut more = 0;
    while more < 3 {
        more += sub.events().await.events.len();
    }
    assert_eq!(more, 3);
    // All delivered: the keepalive now names the newest id.
    let keepalive = sub.next().await.unwrap();
    assert!(keepalive.events.is_empty());
    assert_eq!(keepalive.latest_replay_id, 5u64.to_be_bytes().to_vec());
    let stats = org.admin(Method::GET, "/pubsub", None).await.body;
    assert_eq!(stats["open_streams"], 1, "{stats}");
    assert_eq!(
        stats["topics"][ORDER_TOPIC]["events_retained"], 5,
        "{stats}"
    );
}

fn assert_trailer(status: &Status, code: Code, error_code: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(call::error_code(status), Some(error_code), "{status:?}");
}

async fn first_error(org: &Org, req: FetchRequest) -> Status {
    match subscribe(org, req).await {
        Err(status) => status,
        Ok(mut sub) => loop {
            match sub.next().await {
                Err(status) => break status,
                Ok(r) => assert!(r.events.is_empty(), "events on a failing stream: {r:?}"),
            }
        },
    }
}

#[tokio::test]
async fn expired_or_garbage_replay_ids_fail_with_the_salesforce_trailer() {
    let org = Org::start_with(EmulatorConfig {
        event_retention: Duration::from_millis(300),
        ..config()
    })
    .await;
    let _ = order(&org).await;
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    let replay = sub.events().await.events[0].replay_id.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for bad in [
        replay,
        b"garbage".to_vec(),
        u64::MAX.to_be_bytes().to_vec(),
        vec![],
    ] {
        let status = first_error(&org, fetch(ORDER_TOPIC, ReplayPreset::Custom, bad, 1)).await;
        assert_trailer(
            &status,
            Code::InvalidArgument,
            error_codes::REPLAY_ID_CORRUPTED,
        );
        assert_eq!(status.message(), REPLAY_ID_VALIDATION_FAILED);
    }
    // The server keeps serving.
    let mut again = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    assert!(again.next().await.unwrap().events.is_empty());
}

#[tokio::test]
async fn bad_tokens_and_injected_auth_faults_are_unauthenticated() {
    let org = Org::start_with(config()).await;
    let mut c = client(&org).await;
    let req = || TopicRequest {
        topic_name: ORDER_TOPIC.into(),
    };
    let err = c
        .get_topic(authed(&org, "00Dbogus!token", req()))
        .await
        .unwrap_err();
    assert_trailer(&err, Code::Unauthenticated, error_codes::AUTH_ERROR);
    let err = c.get_topic(Request::new(req())).await.unwrap_err();
    assert_trailer(&err, Code::Unauthenticated, error_codes::AUTH_ERROR);
    let mut wrong_org = authed(&org, &org.token, req());
    wrong_org
        .metadata_mut()
        .insert(metadata::TENANT_ID, "00D000000000001AAA".parse().unwrap());
    assert_trailer(
        &c.get_topic(wrong_org).await.unwrap_err(),
        Code::Unauthenticated,
        error_codes::AUTH_ERROR,
    );
    let status = first_error(
        &Org {
            token: "nope".into(),
            ..org
        },
        fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1),
    )
    .await;
    assert_trailer(&status, Code::Unauthenticated, error_codes::AUTH_ERROR);
}

#[tokio::test]
async fn auth_fault_expired_sessions_and_dropped_streams() {
    let org = Org::start_with(config()).await;
    let mut c = client(&org).await;
    let req = || TopicRequest {
        topic_name: ORDER_TOPIC.into(),
    };
    let topic = c
        .get_topic(authed(&org, &org.token, req()))
        .await
        .unwrap()
        .into_inner();
    assert!(topic.can_subscribe && !topic.can_publish);
    assert!(!topic.schema_id.is_empty());
    assert_eq!(topic.tenant_guid, org.emu.state.org_id);

    let r = org
        .admin(
            Method::POST,
            "/pubsub/faults",
            Some(json!({"reject_auth": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let err = c
        .get_topic(authed(&org, &org.token, req()))
        .await
        .unwrap_err();
    assert_trailer(&err, Code::Unauthenticated, error_codes::AUTH_ERROR);
    org.admin(Method::DELETE, "/pubsub/faults", None).await;
    assert!(c.get_topic(authed(&org, &org.token, req())).await.is_ok());

    // Dropped streams fail UNAVAILABLE; a new one works.
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    assert!(sub.next().await.unwrap().events.is_empty());
    org.admin(
        Method::POST,
        "/pubsub/faults",
        Some(json!({"drop_streams": true})),
    )
    .await;
    let err = loop {
        match sub.next().await {
            Err(e) => break e,
            Ok(r) => assert!(r.events.is_empty()),
        }
    };
    assert_eq!(err.code(), Code::Unavailable);

    // Expired sessions (the REST check) are refused on gRPC too.
    org.faults(json!({"expire_sessions": true})).await;
    let err = c
        .get_topic(authed(&org, &org.token, req()))
        .await
        .unwrap_err();
    assert_trailer(&err, Code::Unauthenticated, error_codes::AUTH_ERROR);
}

#[tokio::test]
async fn schema_change_mid_stream_gives_a_new_id_and_both_decode() {
    let org = Org::start_with(config()).await;
    let id = order(&org).await;
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    let old = sub.events().await.events.remove(0).event.unwrap();
    let r = org
        .admin(
            Method::POST,
            "/pubsub/schema",
            Some(json!({"topic": ORDER_TOPIC, "field": "Priority__c", "type": "string"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["previous_schema_id"], old.schema_id.as_str());
    let new_id = r.body["schema_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old.schema_id);
    let r = org
        .patch(&format!("/sobjects/Order/{id}"), json!({"Name": "renamed"}))
        .await;
    assert_eq!(r.status, 204);
    let new = sub.events().await.events.remove(0).event.unwrap();
    assert_eq!(new.schema_id, new_id);
    let mut schemas = Schemas::default();
    let (old_fields, old_names) = schemas.decode(&org, &old).await;
    let (new_fields, new_names) = schemas.decode(&org, &new).await;
    assert!(!old_names.contains(&"Priority__c".to_owned()));
    assert_eq!(new_names.last().unwrap(), "Priority__c");
    assert_eq!(text(&old_fields["Name"]), "first");
    assert_eq!(text(&new_fields["Name"]), "renamed");
    // Bad schema changes are refused.
    for (body, status) in [
        (
            json!({"topic": "/data/NopeChangeEvent", "field": "X__c"}),
            404,
        ),
        (json!({"topic": ORDER_TOPIC, "field": "Name"}), 400),
        (json!({"topic": ORDER_TOPIC, "field": "bad name"}), 400),
        (json!({"topic": "/data/ChangeEvents", "field": "X__c"}), 400),
        (
            json!({"topic": ORDER_TOPIC, "field": "Y__c", "type": "blob"}),
            400,
        ),
    ] {
        let r = org
            .admin(Method::POST, "/pubsub/schema", Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
}

#[tokio::test]
async fn platform_events_over_rest_and_publish_are_delivered() {
    let org = Org::start_with(config()).await;
    let mut c = client(&org).await;
    let topic = c
        .get_topic(authed(
            &org,
            &org.token,
            TopicRequest {
                topic_name: EVENT_TOPIC.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(topic.can_publish && topic.can_subscribe);

    let mut sub = subscribe(&org, fetch(EVENT_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    let r = org
        .post(
            "/sobjects/OrderProvisionRequested__e",
            json!({"OrderId__c": "801000000000001AAA", "CorrelationId__c": "c-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["errors"], json!([]));
    assert!(r.body["id"].as_str().unwrap().starts_with("e00"));
    let r = org
        .post(
            "/sobjects/OrderProvisionRequested__e",
            json!({"Nope__c": "x"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    let mut schemas = Schemas::default();
    let rest_event = sub.events().await.events.remove(0).event.unwrap();
    let (fields, names) = schemas.decode(&org, &rest_event).await;
    assert_eq!(&names[..2], ["CreatedDate", "CreatedById"]);
    assert_eq!(text(&fields["OrderId__c"]), "801000000000001AAA");
    assert_eq!(text(&fields["CorrelationId__c"]), "c-1");
    assert_eq!(unwrap_union(&fields["IdemKey__c"]), &Avro::Null);
    assert_eq!(text(&fields["CreatedById"]), org.emu.state.user_id);

    // Publish over gRPC with the topic's schema: delivered with the same payload.
    let schema = schemas.get(&org, &topic.schema_id).await;
    let datum = Avro::Record(vec![
        ("CreatedDate".into(), Avro::Long(1_700_000_000_000)),
        ("CreatedById".into(), Avro::String("005x".into())),
        (
            "OrderId__c".into(),
            Avro::Union(1, Box::new(Avro::String("801B".into()))),
        ),
        (
            "IdemKey__c".into(),
            Avro::Union(1, Box::new(Avro::String("k-1".into()))),
        ),
        (
            "CorrelationId__c".into(),
            Avro::Union(0, Box::new(Avro::Null)),
        ),
    ]);
    let payload = apache_avro::to_avro_datum(&schema, datum).unwrap();
    let published = c
        .publish(authed(
            &org,
            &org.token,
            PublishRequest {
                topic_name: EVENT_TOPIC.into(),
                events: vec![
                    ProducerEvent {
                        id: "mine-1".into(),
                        schema_id: topic.schema_id.clone(),
                        payload: payload.clone(),
                        headers: vec![],
                    },
                    ProducerEvent {
                        id: "garbage".into(),
                        schema_id: topic.schema_id.clone(),
                        payload: vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                        headers: vec![],
                    },
                    ProducerEvent {
                        id: "trailing".into(),
                        schema_id: topic.schema_id.clone(),
                        payload: [payload.clone(), vec![0]].concat(),
                        headers: vec![],
                    },
                    ProducerEvent {
                        id: "wrong-schema".into(),
                        schema_id: "nope".into(),
                        payload: payload.clone(),
                        headers: vec![],
                    },
                ],
                auth_refresh: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.schema_id, topic.schema_id);
    let results = &published.results;
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].correlation_key, "mine-1");
    assert!(results[0].error.is_none() && !results[0].replay_id.is_empty());
    for r in &results[1..] {
        assert!(r.error.is_some(), "{r:?}");
        assert!(r.replay_id.is_empty());
    }
    let delivered = sub.events().await;
    assert_eq!(
        delivered.events.len(),
        1,
        "only the good event is delivered"
    );
    assert_eq!(delivered.events[0].replay_id, results[0].replay_id);
    let e = delivered.events[0].event.as_ref().unwrap();
    assert_eq!(e.id, "mine-1");
    assert_eq!(e.payload, payload);

    // PublishStream: one response per request.
    let (ptx, prx) = mpsc::channel(4);
    let mut replies = c
        .publish_stream(authed(&org, &org.token, ReceiverStream::new(prx)))
        .await
        .unwrap()
        .into_inner();
    ptx.send(PublishRequest {
        topic_name: EVENT_TOPIC.into(),
        events: vec![ProducerEvent {
            id: "streamed".into(),
            schema_id: topic.schema_id.clone(),
            payload: payload.clone(),
            headers: vec![],
        }],
        auth_refresh: String::new(),
    })
    .await
    .unwrap();
    let reply = replies.message().await.unwrap().unwrap();
    assert_eq!(reply.results.len(), 1);
    assert!(reply.results[0].error.is_none(), "{reply:?}");
    let delivered = sub.events().await;
    assert_eq!(delivered.events[0].event.as_ref().unwrap().id, "streamed");
}

#[tokio::test]
async fn hostile_requests_get_grpc_errors_and_the_server_keeps_serving() {
    let org = Org::start_with(config()).await;
    let mut c = client(&org).await;
    let t = |name: &str| TopicRequest {
        topic_name: name.into(),
    };
    for name in [
        "/data/NopeChangeEvent",
        "",
        "/event/Nope__e",
        &"x".repeat(10_000),
    ] {
        let err = c
            .get_topic(authed(&org, &org.token, t(name)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{name:.20}");
    }
    let err = c
        .get_schema(authed(
            &org,
            &org.token,
            SchemaRequest {
                schema_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let status = first_error(
        &org,
        fetch("/data/NopeChangeEvent", ReplayPreset::Latest, vec![], 1),
    )
    .await;
    assert_eq!(status.code(), Code::NotFound);
    for n in [0, -1, 101, i32::MAX, i32::MIN] {
        let status = first_error(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], n)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "num_requested {n}");
    }
    let status = first_error(
        &org,
        FetchRequest {
            replay_preset: 7,
            ..fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1)
        },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    // A later request that names another topic, or asks for nothing, ends the stream.
    let sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    sub.tx
        .send(FetchRequest {
            topic_name: "/data/ChangeEvents".into(),
            num_requested: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut sub = sub;
    let err = loop {
        match sub.next().await {
            Err(e) => break e,
            Ok(r) => assert!(r.events.is_empty()),
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    sub.request(-5).await;
    let err = loop {
        match sub.next().await {
            Err(e) => break e,
            Ok(r) => assert!(r.events.is_empty()),
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    // Publishing to a change event channel, to an unknown topic, or too many events at once.
    let publish = |topic: &str, n: usize| PublishRequest {
        topic_name: topic.into(),
        events: vec![ProducerEvent::default(); n],
        auth_refresh: String::new(),
    };
    let err = c
        .publish(authed(&org, &org.token, publish(ORDER_TOPIC, 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .publish(authed(&org, &org.token, publish("/event/Nope__e", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .publish(authed(&org, &org.token, publish(EVENT_TOPIC, 201)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // ManagedSubscribe is not emulated, and says so.
    let (_tx, rx) = mpsc::channel(1);
    let err = c
        .managed_subscribe(authed(&org, &org.token, ReceiverStream::new(rx)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    // Still serving.
    assert!(
        c.get_topic(authed(&org, &org.token, t(ORDER_TOPIC)))
            .await
            .is_ok()
    );
    let stats: Value = org.admin(Method::GET, "/pubsub", None).await.body;
    assert!(stats["topics"][EVENT_TOPIC].is_object(), "{stats}");
}

#[tokio::test]
async fn injected_delivery_delay_holds_events_back() {
    let org = Org::start_with(config()).await;
    let id = order(&org).await;
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Earliest, vec![], 10))
        .await
        .unwrap();
    sub.events().await;
    let r = org
        .admin(
            Method::POST,
            "/pubsub/faults",
            Some(json!({"delay_ms": 800})),
        )
        .await;
    assert_eq!(r.body["delay_ms"], 800, "{}", r.body);
    let start = std::time::Instant::now();
    let r = org
        .patch(&format!("/sobjects/Order/{id}"), json!({"Name": "late"}))
        .await;
    assert_eq!(r.status, 204);
    sub.events().await;
    // A lower bound only: the event was held at least as long as asked.
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    let stats = org.admin(Method::GET, "/pubsub", None).await.body;
    assert_eq!(stats["faults"]["delay_ms"], 800, "{stats}");
    let r = org.admin(Method::POST, "/reset", None).await;
    assert_eq!(r.status, 200);
    let stats = org.admin(Method::GET, "/pubsub", None).await.body;
    assert_eq!(
        stats["faults"]["delay_ms"], 0,
        "reset clears Pub/Sub faults: {stats}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let org = Org::start_with(config()).await;
    let mut sub = subscribe(&org, fetch(ORDER_TOPIC, ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    assert!(sub.next().await.unwrap().events.is_empty());
    let Org { emu, .. } = org;
    tokio::time::timeout(Duration::from_secs(10), emu.shutdown())
        .await
        .expect("shutdown waited on an open Subscribe stream")
        .unwrap();
    let err = loop {
        match sub.stream.message().await {
            Err(e) => break e,
            Ok(Some(r)) => assert!(r.events.is_empty()),
            Ok(None) => panic!("stream ended without a status"),
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn custom_objects_and_nulled_fields() {
    // The built-in schema plus a custom object, both captured.
    let mut schema: Value = serde_json::from_str(sf_emulator::schema::DEFAULT_SCHEMA_JSON).unwrap();
    schema["objects"].as_array_mut().unwrap().push(json!({
        "name": "Widget__c", "key_prefix": "a01",
        "fields": [{"name": "Name", "type": "string"}, {"name": "Size__c", "type": "int"}]
    }));
    let file = std::env::temp_dir().join(format!("pubsub-schema-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, schema.to_string()).unwrap();
    let org = Org::start_with(EmulatorConfig {
        schema_file: Some(file.clone()),
        cdc_objects: vec!["Order".into(), "widget__c".into(), "NoSuchObject".into()],
        ..config()
    })
    .await;
    let _ = std::fs::remove_file(&file);
    let r = org
        .post("/sobjects/Widget__c", json!({"Name": "w", "Size__c": 3}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = org
        .patch(
            &format!("/sobjects/Widget__c/{id}"),
            json!({"Size__c": null}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);

    let mut sub = subscribe(
        &org,
        fetch(
            "/data/Widget__ChangeEvent",
            ReplayPreset::Earliest,
            vec![],
            10,
        ),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(sub.events().await.events);
    }
    let mut schemas = Schemas::default();
    let (created, _) = schemas
        .decode(&org, events[0].event.as_ref().unwrap())
        .await;
    assert_eq!(unwrap_union(&created["Size__c"]), &Avro::Int(3));
    let (updated, names) = schemas
        .decode(&org, events[1].event.as_ref().unwrap())
        .await;
    let h = header(&updated);
    assert_eq!(text(&h["entityName"]), "Widget__c");
    assert!(marked(&h["changedFields"], &names).contains(&"Size__c".to_owned()));
    assert_eq!(
        marked(&h["nulledFields"], &names),
        vec!["Size__c".to_owned()]
    );
    assert_eq!(unwrap_union(&updated["Size__c"]), &Avro::Null);
    let schema = schemas
        .get(&org, &events[0].event.as_ref().unwrap().schema_id)
        .await;
    assert_eq!(
        schema.name().unwrap().fullname(None),
        "com.sforce.eventbus.Widget__ChangeEvent"
    );

    // The all-objects channel has them; the unknown object was ignored; Account is not captured.
    let stats = org.admin(Method::GET, "/pubsub", None).await.body;
    assert_eq!(
        stats["cdc_objects"],
        json!(["Order", "Widget__c"]),
        "{stats}"
    );
    assert_eq!(
        stats["topics"]["/data/ChangeEvents"]["events_retained"], 2,
        "{stats}"
    );
    let mut c = client(&org).await;
    let err = c
        .get_topic(authed(
            &org,
            &org.token,
            TopicRequest {
                topic_name: "/data/AccountChangeEvent".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
