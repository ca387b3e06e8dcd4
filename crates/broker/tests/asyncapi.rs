//! The AsyncAPI document (`asyncapi/asyncapi.yaml`) is valid AsyncAPI 3.0.0 and tells the truth:
//! its channels are exactly the topology's exchanges and queues (with their bindings and
//! arguments), its headers are the ones orderbridge writes, and its payloads are the committed
//! schemas.
//!
//! The AsyncAPI 3.0.0 meta-schema comes from the npm package `@asyncapi/specs` (the AsyncAPI
//! initiative's own bundle), installed before the tests by .ci/run, never downloaded here: every
//! check runs with the HTTP proxy pointed at a closed port, so a reference that is not resolved
//! locally fails instead of reaching out.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use orderbridge_broker::headers::{self, DeadLetterReason};
use orderbridge_broker::{
    BrokerConfig, FULFILMENT_BINDING, FULFILMENT_REQUEUE_ROUTING_KEY, REQUEUE_ROUTING_KEY,
    SF_SYNC_BINDING, Topology,
};
use orderbridge_domain::contracts::message_schemas;
use serde_json::{Value, json};

/// The pinned `@asyncapi/specs` (installed on demand under target/npm by the testkit).
const SPECS_VERSION: &str = "6.11.1";
/// The namespace placeholder the document writes names with.
const NS: &str = "{ns}";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn document() -> PathBuf {
    root().join("asyncapi/asyncapi.yaml")
}

/// The AsyncAPI 3.0.0 meta-schema, from the pinned npm package.
fn meta_schema() -> PathBuf {
    orderbridge_testkit::npm_package("@asyncapi/specs", SPECS_VERSION)
        .unwrap_or_else(|e| {
            panic!("the AsyncAPI 3.0.0 meta-schema (npm @asyncapi/specs) is needed: {e}")
        })
        .join("schemas/3.0.0.json")
}

/// check-jsonschema on `file` against the AsyncAPI 3.0.0 meta-schema, with no way out.
fn check(file: &Path) -> Output {
    Command::new(orderbridge_testkit::python_tool("check-jsonschema").unwrap())
        .arg("--schemafile")
        .arg(meta_schema())
        .arg(file)
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_document_is_valid_asyncapi_3() {
    let out = check(&document());
    assert!(out.status.success(), "{}", text(&out));
}

/// The validation is real and local: documents broken in ways only the meta-schema's bundled
/// parts can tell (an operation, an AMQP binding, a message) are refused, naming the fault.
#[test]
fn a_broken_document_is_refused() {
    let good = std::fs::read_to_string(document()).unwrap();
    let dir = std::env::temp_dir().join(format!("asyncapi-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "asyncapi-2-action",
            good.replacen("action: send", "action: publish", 1),
            "'publish' is not one of ['send', 'receive']",
        ),
        (
            "exchange-type",
            good.replacen("type: topic", "type: topics", 1),
            "'topics' is not one of",
        ),
        (
            "delivery-mode",
            good.replacen("deliveryMode: 2", "deliveryMode: 3", 1),
            "3 is not one of [1, 2]",
        ),
        (
            "unknown-field",
            good.replacen("defaultContentType:", "defaultContentTyp:", 1),
            "defaultContentTyp",
        ),
    ];
    for (name, yaml, why) in cases {
        assert_ne!(yaml, good, "{name}: the edit must change the document");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = check(&path);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out).contains(why), "{name}: {}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The document as JSON, read with the YAML parser check-jsonschema itself uses.
fn parsed() -> Value {
    let python = orderbridge_testkit::python_tool("python").unwrap();
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys; from ruamel.yaml import YAML; \
             json.dump(YAML(typ='safe').load(open(sys.argv[1], encoding='utf-8')), sys.stdout)",
        ])
        .arg(document())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    broker: BrokerConfig,
}

/// The topology with the settings' defaults (read from the command-line definition, not the
/// environment) and names written with the `{ns}` placeholder.
fn default_topology() -> Topology {
    let command = Cli::command();
    let default = |id: &str| {
        let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
        arg.get_default_values()[0].to_str().unwrap().to_owned()
    };
    let tiers: Vec<Duration> = default("broker_retry_tiers")
        .split(',')
        .map(|d| humantime::parse_duration(d).unwrap())
        .collect();
    let limit: u32 = default("broker_delivery_limit").parse().unwrap();
    assert_eq!(default("broker_namespace"), "orderbridge");
    Topology::new(NS, limit, &tiers).unwrap()
}

/// Each channel's AMQP name, bindings (exchange, routing key) and queue arguments.
struct Channel {
    kind: String,
    bindings: BTreeSet<(String, String)>,
    arguments: Value,
}

fn channels(doc: &Value) -> std::collections::BTreeMap<String, Channel> {
    let mut out = std::collections::BTreeMap::new();
    for (key, c) in doc["channels"].as_object().unwrap() {
        let address = c["address"].as_str().unwrap().to_owned();
        let amqp = &c["bindings"]["amqp"];
        let kind = amqp["is"].as_str().unwrap().to_owned();
        let name = if kind == "queue" {
            &amqp["queue"]["name"]
        } else {
            &amqp["exchange"]["name"]
        };
        assert_eq!(name.as_str(), Some(address.as_str()), "channel {key}");
        let bindings = c["x-orderbridge-bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b["exchange"].as_str().unwrap().to_owned(),
                    b["routing_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let arguments = c["x-orderbridge-arguments"].clone();
        let previous = out.insert(
            address.clone(),
            Channel {
                kind,
                bindings,
                arguments,
            },
        );
        assert!(previous.is_none(), "{address} is described twice");
    }
    out
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn the_document_describes_the_real_topology() {
    let t = default_topology();
    let doc = parsed();
    let channels = channels(&doc);

    let exchanges = [
        (&t.events_exchange, "topic"),
        (&t.retry_exchange, "direct"),
        (&t.dead_letter_exchange, "fanout"),
        (&t.status_exchange, "topic"),
    ];
    let mut expected: BTreeSet<&str> = exchanges.iter().map(|(n, _)| n.as_str()).collect();
    expected.extend(t.queues().iter().map(|q| q.as_str()));
    let described: BTreeSet<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(
        described, expected,
        "channels ≠ the topology's exchanges and queues"
    );

    for (name, kind) in exchanges {
        let c = &channels[name.as_str()];
        assert_eq!(c.kind, "routingKey", "{name}");
        let doc_kind = doc["channels"]
            .as_object()
            .unwrap()
            .values()
            .find(|v| v["address"] == json!(name))
            .map(|v| v["bindings"]["amqp"]["exchange"]["type"].clone());
        assert_eq!(doc_kind, Some(json!(kind)), "{name}");
    }
    for queue in t.queues() {
        assert_eq!(channels[queue.as_str()].kind, "queue", "{queue}");
    }

    // Bindings and arguments, as Topology::declare makes them.
    let limit = json!(t.delivery_limit);
    let work = |queue: &str, binding: &str, requeue: &str| {
        let c = &channels[queue];
        assert_eq!(
            c.bindings,
            pairs(&[(&t.events_exchange, binding), (&t.retry_exchange, requeue)]),
            "{queue}"
        );
        assert_eq!(
            c.arguments,
            json!({"x-queue-type": "quorum", "x-delivery-limit": limit,
                "x-dead-letter-exchange": t.dead_letter_exchange,
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}),
            "{queue}"
        );
    };
    work(&t.sf_sync_queue, SF_SYNC_BINDING, REQUEUE_ROUTING_KEY);
    work(
        &t.fulfilment_queue,
        FULFILMENT_BINDING,
        FULFILMENT_REQUEUE_ROUTING_KEY,
    );
    for (tiers, work_queue) in [
        (&t.retry_tiers, &t.sf_sync_queue),
        (&t.fulfilment_retry_tiers, &t.fulfilment_queue),
    ] {
        for tier in tiers {
            let c = &channels[tier.queue.as_str()];
            assert_eq!(
                c.bindings,
                pairs(&[(&t.retry_exchange, &tier.routing_key)]),
                "{}",
                tier.queue
            );
            assert_eq!(
                c.arguments,
                json!({"x-queue-type": "quorum",
                    "x-message-ttl": u64::try_from(tier.delay.as_millis()).unwrap(),
                    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": work_queue,
                    "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}),
                "{}",
                tier.queue
            );
        }
    }
    let dead = &channels[t.dead_letter_queue.as_str()];
    assert_eq!(dead.bindings, pairs(&[(&t.dead_letter_exchange, "")]));
    assert_eq!(dead.arguments, json!({"x-queue-type": "quorum"}));
    let status = &channels[t.status_queue.as_str()];
    assert_eq!(status.bindings, pairs(&[(&t.status_exchange, "#")]));
    assert_eq!(
        status.arguments,
        json!({"x-queue-type": "quorum", "x-dead-letter-exchange": t.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    );
}

/// Every string anywhere in `v`, and every object key.
fn strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.insert(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_names_the_real_headers_and_schemas() {
    let doc = parsed();
    let schemas = &doc["components"]["schemas"];
    let mut header_names = BTreeSet::new();
    for part in ["signatureFields", "failureFields"] {
        for name in schemas[part]["properties"].as_object().unwrap().keys() {
            header_names.insert(name.clone());
        }
    }
    let dead = &schemas["deadLetterHeaders"]["allOf"][2]["properties"];
    header_names.extend(dead.as_object().unwrap().keys().cloned());
    for name in headers::FAILURE_HEADERS.into_iter().chain([
        headers::SIGNATURE_KEY_ID,
        headers::SIGNATURE,
        headers::DELIVERY_COUNT,
    ]) {
        assert!(
            header_names.contains(name),
            "header {name} is not described"
        );
    }
    let reasons: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(dead["x-orderbridge-reason"]["enum"], json!(reasons));
    let mut signed_required = schemas["signedHeaders"]["allOf"][1]["required"].clone();
    signed_required
        .as_array_mut()
        .unwrap()
        .sort_by_key(|v| v.to_string());
    assert_eq!(
        signed_required,
        json!([headers::SIGNATURE_KEY_ID, headers::SIGNATURE])
    );

    // Payloads: every committed schema, referenced by its path, and nothing else.
    let mut all = BTreeSet::new();
    strings(&doc, &mut all);
    let referenced: BTreeSet<String> = all
        .iter()
        .filter_map(|s| s.strip_prefix("../schemas/"))
        .map(str::to_owned)
        .collect();
    let committed: BTreeSet<String> = message_schemas().iter().map(|s| s.file_name()).collect();
    assert_eq!(referenced, committed);
    for name in &committed {
        assert!(root().join("schemas").join(name).is_file(), "{name}");
    }
    // Each message's AMQP type is its schema's event type.
    for (key, message) in doc["components"]["messages"].as_object().unwrap() {
        if let Some(Value::String(payload)) = message["payload"].get("$ref") {
            let event_type = message["bindings"]["amqp"]["messageType"].as_str().unwrap();
            assert_eq!(
                payload,
                &format!("../schemas/{event_type}.v1.json"),
                "message {key}"
            );
        }
    }
}
