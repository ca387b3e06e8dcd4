//! Flow-like rules: configured through `/__admin/flows`, the seed file or the built-in default,
//! firing once when a committed write changes a field TO the value, and publishing a platform
//! event a Pub/Sub subscriber receives with the mapped fields. Also: the default schema's
//! seed-001 pieces, custom fields from a schema file, and refused rules.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use common::Org;
use orderbridge_pubsub::call;
use orderbridge_pubsub::proto::pub_sub_client::PubSubClient;
use orderbridge_pubsub::proto::{
    FetchRequest, ProducerEvent, ReplayPreset, SchemaRequest, TopicRequest,
};
use reqwest::Method;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use sf_emulator::config::FlowsAtStart;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;

const EVENT: &str = "OrderProvisionRequested__e";
const EVENT_TOPIC: &str = "/event/OrderProvisionRequested__e";

fn no_flows() -> EmulatorConfig {
    EmulatorConfig {
        flows: FlowsAtStart::None,
        ..EmulatorConfig::ephemeral()
    }
}

async fn client(org: &Org) -> PubSubClient<Channel> {
    PubSubClient::connect(org.emu.pubsub_url.clone())
        .await
        .unwrap()
}

fn authed<T>(org: &Org, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    call::insert_auth(
        r.metadata_mut(),
        &org.token,
        org.base(),
        &org.emu.state.org_id,
    )
    .unwrap();
    r
}

/// The schema JSON of a topic, through GetTopic and GetSchema.
async fn topic_schema(org: &Org, topic: &str) -> String {
    let mut c = client(org).await;
    let info = c
        .get_topic(authed(
            org,
            TopicRequest {
                topic_name: topic.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    c.get_schema(authed(
        org,
        SchemaRequest {
            schema_id: info.schema_id,
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .schema_json
}

/// Every event of the topic from the earliest, as a subscriber receives them (`expect` of them).
async fn received(org: &Org, topic: &str, expect: usize) -> Vec<ProducerEvent> {
    let mut c = client(org).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(FetchRequest {
        topic_name: topic.into(),
        replay_preset: ReplayPreset::Earliest as i32,
        num_requested: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = c
        .subscribe(authed(org, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while events.len() < expect {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no FetchResponse within 10 s")
            .unwrap()
            .unwrap();
        events.extend(r.events.into_iter().filter_map(|e| e.event));
    }
    drop(tx);
    events
}

/// The event's fields by name, decoded with the schema GetSchema serves for its id.
async fn decode(org: &Org, e: &ProducerEvent) -> HashMap<String, Avro> {
    let json = client(org)
        .await
        .get_schema(authed(
            org,
            SchemaRequest {
                schema_id: e.schema_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .schema_json;
    let schema = apache_avro::Schema::parse_str(&json).unwrap();
    let mut bytes = &e.payload[..];
    let Avro::Record(fields) = apache_avro::from_avro_datum(&schema, &mut bytes, None).unwrap()
    else {
        panic!("not a record")
    };
    fields.into_iter().collect()
}

fn text(v: &Avro) -> Option<String> {
    match v {
        Avro::Union(_, inner) => text(inner),
        Avro::String(s) => Some(s.clone()),
        _ => None,
    }
}

async fn published(org: &Org, topic: &str) -> u64 {
    let stats = org.admin(Method::GET, "/pubsub", None).await.body;
    stats["topics"][topic]["events_published"]
        .as_u64()
        .unwrap_or(0)
}

async fn flows(org: &Org) -> Vec<Value> {
    let r = org.admin(Method::GET, "/flows", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["flows"].as_array().cloned().unwrap()
}

#[tokio::test]
async fn a_rule_fires_once_when_the_field_changes_to_the_value() {
    let org = Org::start_with(no_flows()).await;
    assert!(flows(&org).await.is_empty());
    let r = org
        .add_flow(json!({
            "name": "approve",
            "sobject": "order",
            "when": {"field": "status", "equals": "Activated"},
            "publish": {"event": "orderprovisionrequested__e",
                        "fields": {"OrderId__c": "Id", "IdemKey__c": "External_Id__c"}}
        }))
        .await;
    assert_eq!(r.status, 201);
    // Stored in the schema's spelling.
    assert_eq!(r.body["sobject"], json!("Order"));
    assert_eq!(r.body["when"]["field"], json!("Status"));
    assert_eq!(r.body["publish"]["event"], json!(EVENT));

    let order = org.draft_order("ORD-F1", json!({})).await;
    assert_eq!(
        published(&org, EVENT_TOPIC).await,
        0,
        "a Draft order fires nothing"
    );
    org.set_status(&order, "Activated").await;
    // Later writes while it stays Activated, and an unrelated order, fire nothing more.
    let r = org
        .patch(
            &format!("/sobjects/Order/{order}"),
            json!({"Description": "later"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    org.set_status(&order, "Activated").await;
    org.draft_order("ORD-F2", json!({})).await;

    assert_eq!(published(&org, EVENT_TOPIC).await, 1);
    assert_eq!(flows(&org).await[0]["fired"], json!(1));

    let events = received(&org, EVENT_TOPIC, 1).await;
    assert_eq!(events.len(), 1);
    assert!(
        uuid::Uuid::parse_str(&events[0].id).is_ok(),
        "{}",
        events[0].id
    );
    let fields = decode(&org, &events[0]).await;
    assert_eq!(text(&fields["OrderId__c"]).as_deref(), Some(order.as_str()));
    assert_eq!(text(&fields["IdemKey__c"]).as_deref(), Some("ORD-F1"));
    assert_eq!(text(&fields["CorrelationId__c"]), None);

    // Back to Draft is not the condition either; deleting the rule stops it.
    let r = org.admin(Method::DELETE, "/flows/approve", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = org.draft_order("ORD-F3", json!({})).await;
    org.set_status(&second, "Activated").await;
    assert_eq!(published(&org, EVENT_TOPIC).await, 1);
    let r = org.admin(Method::DELETE, "/flows/approve", None).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn the_default_rule_asks_for_provisioning_on_activation() {
    let org = Org::start().await;
    let list = flows(&org).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], json!("provision-on-activate"));

    // Activated through Collections, the path an integration uses most.
    let order = org.draft_order("ORD-D1", json!({})).await;
    let r = org
        .call(
            Method::PATCH,
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": [
                {"attributes": {"type": "Order"}, "id": order, "Status": "Activated"}
            ]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body[0]["success"], json!(true), "{}", r.body);
    let events = received(&org, EVENT_TOPIC, 1).await;
    let fields = decode(&org, &events[0]).await;
    assert_eq!(text(&fields["OrderId__c"]).as_deref(), Some(order.as_str()));

    // Reset brings the configured rules back after a run-time change.
    org.admin(Method::DELETE, "/flows", None).await;
    assert!(flows(&org).await.is_empty());
    org.admin(Method::POST, "/reset", None).await;
    assert_eq!(flows(&org).await.len(), 1);

    // SF_EMULATOR_FLOWS=none starts without it.
    let bare = Org::start_with(no_flows()).await;
    assert!(flows(&bare).await.is_empty());
    let order = bare.draft_order("ORD-D2", json!({})).await;
    bare.set_status(&order, "Activated").await;
    assert_eq!(published(&bare, EVENT_TOPIC).await, 0);
}

#[tokio::test]
async fn a_rolled_back_write_fires_nothing() {
    let org = Org::start().await;
    let order = org.draft_order("ORD-R1", json!({})).await;
    let other = org.draft_order("ORD-R2", json!({})).await;
    // allOrNone: the second record fails, so the activation is rolled back with it.
    let r = org
        .call(
            Method::PATCH,
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": [
                {"attributes": {"type": "Order"}, "id": order, "Status": "Activated"},
                {"attributes": {"type": "Order"}, "id": other, "Status": "NoSuchStatus"}
            ]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body[0]["success"], json!(false), "{}", r.body);
    assert_eq!(published(&org, EVENT_TOPIC).await, 0);
    assert_eq!(flows(&org).await[0]["fired"], json!(0));
}

#[tokio::test]
async fn the_default_schema_has_the_seed_001_fields() {
    let org = Org::start().await;
    let cdc = topic_schema(&org, "/data/OrderChangeEvent").await;
    assert!(cdc.contains("Activation_Status__c"), "{cdc}");
    assert!(cdc.contains("Activation_Error__c"), "{cdc}");
    let event = topic_schema(&org, EVENT_TOPIC).await;
    for f in ["OrderId__c", "IdemKey__c", "CorrelationId__c"] {
        assert!(event.contains(f), "{event}");
    }
    // The result fields take a long reason and any status.
    let order = org.draft_order("ORD-S1", json!({})).await;
    let r = org
        .patch(
            &format!("/sobjects/Order/{order}"),
            json!({"Activation_Status__c": "Failed", "Activation_Error__c": "x".repeat(2000)}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = org
        .get(&format!(
            "/sobjects/Order/{order}?fields=Activation_Status__c"
        ))
        .await;
    assert_eq!(r.body["Activation_Status__c"], json!("Failed"));
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("sf-emulator-flows-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test]
async fn custom_fields_from_a_schema_file_can_be_mapped() {
    let mut schema: Value = serde_json::from_str(sf_emulator::schema::DEFAULT_SCHEMA_JSON).unwrap();
    for obj in schema["objects"].as_array_mut().unwrap() {
        if obj["name"] == json!("Order") {
            obj["fields"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "Region__c", "type": "string", "length": 20}));
        }
    }
    schema["platform_events"][0]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "Region__c", "type": "string"}));
    let path = temp_file("schema.json", &schema.to_string());
    let org = Org::start_with(EmulatorConfig {
        schema_file: Some(path.clone()),
        ..no_flows()
    })
    .await;
    org.add_flow(json!({
        "name": "regional",
        "sobject": "Order",
        "when": {"field": "Status", "equals": "Activated"},
        "publish": {"event": EVENT, "fields": {"OrderId__c": "Id", "Region__c": "Region__c"}}
    }))
    .await;
    let order = org
        .draft_order("ORD-C1", json!({"Region__c": "EU-West"}))
        .await;
    org.set_status(&order, "Activated").await;
    let events = received(&org, EVENT_TOPIC, 1).await;
    let fields = decode(&org, &events[0]).await;
    assert_eq!(text(&fields["Region__c"]).as_deref(), Some("EU-West"));
    // The change events carry the custom field too.
    assert!(
        topic_schema(&org, "/data/OrderChangeEvent")
            .await
            .contains("Region__c")
    );
    std::fs::remove_file(path).ok();
}

#[tokio::test]
async fn the_seed_file_sets_the_starting_rules() {
    let seed = json!({"flows": [{
        "name": "on-activate-om",
        "sobject": "Order",
        "when": {"field": "Status", "equals": "Activated"},
        "outbound_message": {"url": "http://127.0.0.1:9/om", "fields": ["Status"]}
    }]});
    let path = temp_file("seed.json", &seed.to_string());
    let org = Org::start_with(EmulatorConfig {
        seed_file: Some(path.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let list = flows(&org).await;
    assert_eq!(list.len(), 1, "the seed's rules replace the default");
    assert_eq!(
        list[0]["outbound_message"]["fields"],
        json!(["Id", "Status"])
    );
    std::fs::remove_file(&path).ok();

    let empty = temp_file("seed-empty.json", r#"{"flows": []}"#);
    let org = Org::start_with(EmulatorConfig {
        seed_file: Some(empty.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    assert!(flows(&org).await.is_empty());
    std::fs::remove_file(&empty).ok();

    let bad = temp_file(
        "seed-bad.json",
        r#"{"flows": [{"name": "x", "sobject": "Nope__c", "when": {"field": "A", "equals": 1}, "publish": {"event": "OrderProvisionRequested__e"}}]}"#,
    );
    let started = sf_emulator::spawn(EmulatorConfig {
        seed_file: Some(bad.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let err = started
        .err()
        .expect("a bad rule in the seed file stops the start");
    assert!(err.to_string().contains("Nope__c"), "{err}");
    std::fs::remove_file(&bad).ok();

    // POST /__admin/seed adds rules too, by name.
    let org = Org::start_with(no_flows()).await;
    let r = org
        .admin(
            Method::POST,
            "/seed",
            Some(json!({"flows": [{
                "name": "seeded",
                "sobject": "Order",
                "when": {"field": "Status", "equals": "Activated"},
                "publish": {"event": EVENT, "fields": {"OrderId__c": "Id"}}
            }]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(flows(&org).await[0]["name"], json!("seeded"));
}

#[tokio::test]
async fn bad_rules_are_refused_with_a_clear_message() {
    let org = Org::start_with(no_flows()).await;
    let publish = json!({"event": EVENT, "fields": {"OrderId__c": "Id"}});
    let when = json!({"field": "Status", "equals": "Activated"});
    let cases = [
        (
            json!({"name": "a", "sobject": "Nope", "when": when, "publish": publish}),
            "unknown sobject Nope",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": {"field": "Colour", "equals": "x"}, "publish": publish}),
            "has no field Colour",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": {"field": "Status", "equals": null}, "publish": publish}),
            "when.equals",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "publish": {"event": "Nope__e"}}),
            "unknown platform event Nope__e",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "publish": {"event": EVENT, "fields": {"Bogus__c": "Id"}}}),
            "has no field Bogus__c",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "publish": {"event": EVENT, "fields": {"OrderId__c": "Bogus"}}}),
            "has no field Bogus",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when}),
            "exactly one",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "publish": publish, "outbound_message": {"url": "http://127.0.0.1:1/"}}),
            "exactly one",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "outbound_message": {"url": "ftp://x/y"}}),
            "http://",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "outbound_message": {"url": "http://127.0.0.1:1/", "fields": ["Nope"]}}),
            "has no field Nope",
        ),
        (
            json!({"name": "a b/c", "sobject": "Order", "when": when, "publish": publish}),
            "flow name",
        ),
        (
            json!({"name": "a", "sobject": "Order", "when": when, "publish": publish, "extra": 1}),
            "unknown field `extra`",
        ),
        (json!([1, 2]), "invalid flow rule JSON"),
    ];
    for (body, expected) in cases {
        let r = org.admin(Method::POST, "/flows", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body} → {}", r.body);
        assert_eq!(r.body[0]["errorCode"], json!("INVALID_INPUT"));
        let message = r.body[0]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body} → {message}");
    }
    // Not JSON at all.
    let r = org
        .http
        .post(format!("{}/__admin/flows", org.base()))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(flows(&org).await.is_empty(), "nothing was stored");
    // The data API is untouched by it.
    assert_eq!(org.get("/limits").await.status, 200);
}
