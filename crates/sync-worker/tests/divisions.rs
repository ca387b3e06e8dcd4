//! Two divisions: orders routed by their currency and shipping country to two targets, each
//! writing Cases with its own defaults to its own org with its own integration user (two
//! emulators standing in for two orgs, the second refusing the first's credentials). An order no
//! target takes is dead-lettered with the reason; each target has its own metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use orderbridge_domain::{NewOrder, NewOrderRequest, Order, SyncState};
use orderbridge_mapping::Targets;
use orderbridge_runtime::admin::AdminState;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use sync_worker::metrics::Metrics;
use sync_worker::targets;

/// The emulator's default schema with a custom external id and a division on Case.
fn schema(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(
        common::repo_root().join("crates/sf-emulator/src/default_schema.json"),
    )
    .unwrap();
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let case = schema["objects"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|o| o["name"] == "Case")
        .unwrap();
    let fields = case["fields"].as_array_mut().unwrap();
    fields.push(
        json!({"name": "Order_Id__c", "type": "string", "external_id": true, "unique": true}),
    );
    fields.push(json!({"name": "Division__c", "type": "string", "length": 40}));
    let path = dir.join("schema.json");
    std::fs::write(&path, schema.to_string()).unwrap();
    path
}

fn case_mapping(division: &str, origin: &str) -> Value {
    json!({"order": {"sobject": "Case", "external_id_field": "Order_Id__c",
        "key": {"path": "id", "max_length": 255},
        "fields": {"Subject": {"template": "Order {client_ref} from {customer.name}", "max_length": 255},
                   "Origin": {"const": origin},
                   "Division__c": {"const": division}}}})
}

/// EUR orders to EMEA (the `SF_*` org), orders shipped to the US or Canada to AMER (its own
/// org and user, `SF_AMER_*`), no default.
fn targets_file() -> String {
    json!({
        "route": {"rules": [
            {"path": "currency", "in": ["EUR"], "target": "emea"},
            {"path": "shipping_address.country", "in": ["US", "CA"], "target": "amer"}
        ]},
        "targets": {
            "emea": {"mapping": case_mapping("EMEA", "Web")},
            "amer": {"salesforce": "AMER", "mapping": case_mapping("AMER", "Phone")}
        }
    })
    .to_string()
}

fn order_in(currency: &str, country: &str) -> Order {
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": format!("PO-{}", uuid::Uuid::now_v7()),
        "customer": {"external_id": "C-1", "name": "Customer C-1", "email": "buyer@example.com"},
        "shipping_address": {"line1": "1 Main St", "city": "Springfield", "country": country},
        "currency": currency,
        "lines": [{"sku": "SKU-RED-MUG", "name": "mug", "quantity": 1, "unit_price": "12"}]
    }))
    .unwrap();
    NewOrder::parse(req)
        .unwrap()
        .into_order(uuid::Uuid::now_v7(), chrono::Utc::now())
}

#[tokio::test]
async fn two_divisions_write_cases_each_to_its_own_org_with_its_own_user() {
    let dir = std::env::temp_dir().join(format!("sw-divisions-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = schema(&dir);
    let mut h = Harness::with_emulator(
        "300ms,600ms",
        EmulatorConfig {
            schema_file: Some(schema.clone()),
            ..EmulatorConfig::ephemeral()
        },
    )
    .await;
    // AMER's org: another user, another password; it refuses EMEA's (the default) login.
    let amer_org = sf_emulator::spawn(EmulatorConfig {
        schema_file: Some(schema),
        username: "integration@amer.example".into(),
        password: "amer-password".into(),
        security_token: "amertoken".into(),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .unwrap();
    let amer_url = amer_org.base_url.clone();
    let amer_env = move |name: &str| -> Option<String> {
        match name {
            "SF_AMER_LOGIN_URL" => Some(amer_url.clone()),
            "SF_AMER_USERNAME" => Some("integration@amer.example".into()),
            "SF_AMER_PASSWORD" => Some("amer-password".into()),
            "SF_AMER_SECURITY_TOKEN" => Some("amertoken".into()),
            _ => None,
        }
    };

    let targets = Arc::new(Targets::parse(&targets_file(), "divisions.json").unwrap());
    let cli = h.cli(&[]);

    // Start-up: AMER with only its org's address (so EMEA's user) is refused by that org...
    let url_only = |name: &str| (name == "SF_AMER_LOGIN_URL").then(|| amer_org.base_url.clone());
    let clients = targets::clients(&cli.salesforce, &targets, &url_only).unwrap();
    let e = targets::check(&targets, &clients).await.unwrap_err();
    assert!(e.to_string().contains("authentication failure"), "{e}");
    // ...a target naming settings nobody set is a configuration error...
    let e = targets::clients(&cli.salesforce, &targets, &|_: &str| None)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .starts_with("target amer: no SF_AMER_* setting is set"),
        "{e}"
    );
    // ...and each target's mapping is checked against its own org, named by target.
    let mut wrong: Value = serde_json::from_str(&targets_file()).unwrap();
    let amer_fields = &mut wrong["targets"]["amer"]["mapping"]["order"]["fields"];
    amer_fields["Region__c"] = amer_fields["Division__c"].take();
    amer_fields.as_object_mut().unwrap().remove("Division__c");
    let wrong = Targets::parse(&wrong.to_string(), "wrong").unwrap();
    let clients = targets::clients(&cli.salesforce, &wrong, &amer_env).unwrap();
    let problems = targets::check(&wrong, &clients).await.unwrap();
    assert_eq!(
        problems.0,
        ["target amer: order.fields: Case has no field Region__c"]
    );

    let clients = targets::clients(&cli.salesforce, &targets, &amer_env).unwrap();
    let problems = targets::check(&targets, &clients).await.unwrap();
    assert!(problems.0.is_empty(), "{problems}");
    let metrics = Arc::new(Metrics::default());
    let router = targets::router(targets.clone(), clients, None, &metrics);
    h.start_worker_with_router(&[], router, metrics.clone())
        .await;

    let emea = vec![order_in("EUR", "DE"), order_in("EUR", "US")];
    let amer = vec![order_in("USD", "US"), order_in("CAD", "CA")];
    let nowhere = order_in("JPY", "JP");
    let all: Vec<Order> = emea
        .iter()
        .chain(&amer)
        .cloned()
        .chain([nowhere.clone()])
        .collect();
    h.publish_orders(&all).await;

    let mut statuses = Vec::new();
    h.statuses_until(Duration::from_secs(30), &mut statuses, |s| {
        all.iter().all(|o| {
            s.iter().any(|r| {
                r.data.order_id == o.id
                    && matches!(r.data.state, SyncState::Synced | SyncState::Failed)
            })
        })
    })
    .await;
    let state_of = |o: &Order| {
        statuses
            .iter()
            .rev()
            .find(|r| r.data.order_id == o.id)
            .unwrap()
            .data
            .clone()
    };

    let http = reqwest::Client::new();
    let cases_in = |base: String| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("{base}/__admin/records/Case"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["records"].as_array().cloned().unwrap_or_default()
        }
    };
    for (orders, base, division, origin) in [
        (&emea, h.emulator.base_url.clone(), "EMEA", "Web"),
        (&amer, amer_org.base_url.clone(), "AMER", "Phone"),
    ] {
        let cases = cases_in(base).await;
        assert_eq!(cases.len(), orders.len(), "{division}: {cases:?}");
        for o in orders {
            let case = cases
                .iter()
                .find(|c| c["Order_Id__c"] == o.id.to_string())
                .unwrap_or_else(|| panic!("{division} has no Case for {}", o.id));
            assert_eq!(case["Division__c"], division);
            assert_eq!(case["Origin"], origin);
            let status = state_of(o);
            assert_eq!(status.state, SyncState::Synced);
            assert_eq!(status.salesforce_id.as_deref(), case["Id"].as_str());
        }
    }

    // The order no rule takes: failed with the reason, dead-lettered, written nowhere.
    let status = state_of(&nowhere);
    assert_eq!(status.state, SyncState::Failed);
    let error = status.error.unwrap();
    assert_eq!(error.code, "NO_TARGET");
    assert!(
        error.message.contains("currency is \"JPY\"")
            && error.message.contains("shipping_address.country is \"JP\""),
        "{error:?}"
    );
    common::eventually(Duration::from_secs(10), "the dead letter", || async {
        h.message_count(&h.topology.dead_letter_queue).await == 1
    })
    .await;

    // Per-target metrics.
    assert_eq!(metrics.target_counts("emea"), Some((2, 0, 0)));
    assert_eq!(metrics.target_counts("amer"), Some((2, 0, 0)));
    let text = metrics.render();
    for line in [
        "sync_worker_target_orders_total{target=\"amer\",result=\"synced\"} 2",
        "sync_worker_target_orders_total{target=\"emea\",result=\"synced\"} 2",
        "sync_worker_target_orders_total{target=\"emea\",result=\"failed\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    let calls = |target: &str| -> u64 {
        let prefix = format!("sync_worker_target_salesforce_calls_total{{target=\"{target}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(calls("emea") >= 1 && calls("amer") >= 1, "{text}");
    assert!(
        text.contains("sync_worker_target_api_used{target=\"amer\"}"),
        "{text}"
    );

    h.stop_worker().await;
    h.cleanup().await;
    let _ = amer_org.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
