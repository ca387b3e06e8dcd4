//! The subscriber end to end: the emulator's REST changes become CDC events on its Pub/Sub API,
//! the subscriber (a child process) applies them to orders in a per-test Postgres database.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use orderbridge_pubsub::proto::ProducerEvent;
use orderbridge_testkit::TestDatabase;
use serde_json::json;
use sf_emulator::EmulatorConfig;

#[tokio::test]
async fn a_status_change_in_salesforce_reaches_the_order_and_our_own_changes_are_echo() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf_a = org.order().await;
    let sf_b = org.order().await;
    let a = local_order(&db.pool, &sf_a).await;
    let b = local_order(&db.pool, &sf_b).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    // Someone activates order A in Salesforce (no client name, or another one).
    org.set_status(&sf_a, "Activated", Some("someone-else"))
        .await;
    // We activate order B ourselves (the worker's client name): an echo, ignored.
    org.set_status(&sf_b, "Activated", Some("orderbridge"))
        .await;

    let pool = db.pool.clone();
    eventually("order A activated", || {
        let pool = pool.clone();
        async move { status_of(&pool, a).await == "activated" }
    })
    .await;
    assert_eq!(salesforce_history(&db.pool, a).await, vec!["activated"]);
    eventually("the echo counted", || async {
        sub.metric("sf_subscriber_events_echo_total").await >= 1.0
    })
    .await;
    assert_eq!(status_of(&db.pool, b).await, "submitted");
    assert!(salesforce_history(&db.pool, b).await.is_empty());
    assert_eq!(sub.metric("sf_subscriber_events_applied_total").await, 1.0);

    // The cursor is stored and shown.
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT replay_id FROM pubsub_cursors WHERE topic = $1")
            .bind(TOPIC)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(stored.is_some());
    let health = sub.sf_events().await;
    assert_eq!(health["ready"], true, "{health}");
    assert!(health["topics"][TOPIC]["replay_id"].is_string(), "{health}");
    assert!(
        health["topics"][TOPIC]["lag_seconds"].as_f64().unwrap() >= 0.0,
        "{health}"
    );
    assert!(
        health["topics"][TOPIC]["last_event_at"].is_string(),
        "{health}"
    );
}

#[tokio::test]
async fn killed_mid_stream_and_restarted_every_change_is_applied_exactly_once() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let sf = org.order().await;
        let local = local_order(&db.pool, &sf).await;
        ids.push((sf, local));
    }
    // One event per batch: many commits, so the kill lands between some of them.
    let mut sub = Subscriber::start(&db, &org, &[("SUBSCRIBER_BATCH", "1")]).await;
    // Each response held back a little, so the kill lands while changes are still coming.
    let (code, body) = org
        .call(
            "POST",
            "/__admin/pubsub/faults",
            Some(json!({"delay_ms": 50})),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    for (sf, _) in &ids {
        org.set_status(sf, "Activated", None).await;
    }
    let pool = db.pool.clone();
    eventually("some changes applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await >= 3 }
    })
    .await;
    sub.kill();
    let before = applied(&db.pool).await;
    assert!(before < 30, "the kill came after the last change: {before}");
    org.call("DELETE", "/__admin/pubsub/faults", None, None)
        .await;

    let _sub = Subscriber::start(&db, &org, &[("SUBSCRIBER_BATCH", "7")]).await;
    eventually("every change applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await == 30 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, local) in &ids {
        assert_eq!(status_of(&db.pool, *local).await, "activated");
        assert_eq!(
            salesforce_history(&db.pool, *local).await,
            vec!["activated"]
        );
    }
    // Every event (30 creates, 30 updates) is in the inbox once.
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM pubsub_inbox WHERE topic = $1")
        .bind(TOPIC)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 60);
}

async fn applied(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM order_status_history WHERE source = 'salesforce'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_expired_replay_id_falls_back_records_the_gap_and_keeps_running() {
    let db = TestDatabase::new().await;
    let org = Org::start(EmulatorConfig {
        event_retention: Duration::from_secs(2),
        ..emulator_config()
    })
    .await;
    let sf1 = org.order().await;
    let o1 = local_order(&db.pool, &sf1).await;
    let mut sub = Subscriber::start(&db, &org, &[]).await;
    org.set_status(&sf1, "Activated", None).await;
    let pool = db.pool.clone();
    eventually("order 1 activated", || {
        let pool = pool.clone();
        async move { status_of(&pool, o1).await == "activated" }
    })
    .await;
    assert!(sub.terminate().success());

    // Down for longer than the bus keeps events: the stored replay id expires.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sub = Subscriber::start(&db, &org, &[]).await;
    eventually("the fallback counted", || async {
        sub.metric("sf_subscriber_replay_fallbacks_total").await == 1.0
    })
    .await;
    let (missed_from, fallback): (Option<chrono::DateTime<chrono::Utc>>, String) =
        sqlx::query_as("SELECT missed_from, fallback FROM pubsub_gaps WHERE topic = $1")
            .bind(TOPIC)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(missed_from.is_some());
    assert_eq!(fallback, "latest");
    sub.wait_ready().await;

    // And it goes on working.
    let sf2 = org.order().await;
    let o2 = local_order(&db.pool, &sf2).await;
    org.set_status(&sf2, "Activated", None).await;
    eventually("order 2 activated", || {
        let pool = pool.clone();
        async move { status_of(&pool, o2).await == "activated" }
    })
    .await;
    assert_eq!(
        sub.metric("sf_subscriber_replay_fallbacks_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_field_added_to_the_schema_mid_stream_still_decodes() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf1 = org.order().await;
    let sf2 = org.order().await;
    let o1 = local_order(&db.pool, &sf1).await;
    let o2 = local_order(&db.pool, &sf2).await;
    let sub = Subscriber::start(&db, &org, &[]).await;
    org.set_status(&sf1, "Activated", None).await;
    let pool = db.pool.clone();
    eventually("order 1 activated", || {
        let pool = pool.clone();
        async move { status_of(&pool, o1).await == "activated" }
    })
    .await;
    let (code, body) = org
        .call(
            "POST",
            "/__admin/pubsub/schema",
            Some(json!({"topic": TOPIC, "field": "Activation_Note__c", "type": "string"})),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    org.set_status(&sf2, "Activated", None).await;
    eventually("order 2 activated under the new schema", || {
        let pool = pool.clone();
        async move { status_of(&pool, o2).await == "activated" }
    })
    .await;
    assert_eq!(sub.metric("sf_subscriber_decode_failures_total").await, 0.0);
    assert_eq!(sub.metric("sf_subscriber_dead_letters_total").await, 0.0);
}

#[tokio::test]
async fn auth_rejected_mid_stream_reopens_with_a_fresh_token() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let o = local_order(&db.pool, &sf).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    // Every session is revoked and the stream dropped: the old token no longer works.
    let (code, body) = org
        .call(
            "POST",
            "/__admin/faults",
            Some(json!({"expire_sessions": true})),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = org
        .call(
            "POST",
            "/__admin/pubsub/faults",
            Some(json!({"drop_streams": true})),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");

    eventually("the token refreshed", || async {
        sub.metric("sf_subscriber_auth_refreshes_total").await >= 1.0
    })
    .await;
    sub.wait_ready().await;
    let mut org = org;
    org.login().await;
    org.set_status(&sf, "Activated", None).await;
    let pool = db.pool.clone();
    eventually("the order activated after re-authentication", || {
        let pool = pool.clone();
        async move { status_of(&pool, o).await == "activated" }
    })
    .await;
}

#[tokio::test]
async fn an_undecodable_event_is_dead_lettered_and_the_stream_continues() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let o = local_order(&db.pool, &sf).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    let (_, stats) = org.call("GET", "/__admin/pubsub", None, None).await;
    let schema_id = stats["topics"][TOPIC]["schema_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Garbage under the topic's real schema, and a schema id that does not exist.
    org.emu.state.pubsub.publish(
        &[TOPIC],
        ProducerEvent {
            id: "garbage-1".into(),
            schema_id: schema_id.clone(),
            payload: vec![0xff, 0x00, 0x13, 0x37, 0xff, 0xff, 0xff, 0xff, 0x0f],
            headers: vec![],
        },
    );
    org.emu.state.pubsub.publish(
        &[TOPIC],
        ProducerEvent {
            id: "no-schema-1".into(),
            schema_id: "NoSuchSchema".into(),
            payload: b"whatever".to_vec(),
            headers: vec![],
        },
    );
    org.set_status(&sf, "Activated", None).await;
    let pool = db.pool.clone();
    eventually("the order after the garbage activated", || {
        let pool = pool.clone();
        async move { status_of(&pool, o).await == "activated" }
    })
    .await;
    let rows: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT event_id, payload, reason FROM pubsub_dead_letters ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "garbage-1");
    assert_eq!(rows[0].1[..4], [0xff, 0x00, 0x13, 0x37]);
    assert!(rows[0].2.contains("does not decode"), "{}", rows[0].2);
    assert_eq!(rows[1].0, "no-schema-1");
    assert!(rows[1].2.contains("schema unavailable"), "{}", rows[1].2);
    assert_eq!(sub.metric("sf_subscriber_dead_letters_total").await, 2.0);
}

#[tokio::test]
async fn hostile_configuration_is_refused_with_a_clear_error() {
    for (var, value, flag, needle) in [
        (
            "SF_PUBSUB_TOPICS",
            "/data/Order;DROP",
            "--topics",
            "is not a topic",
        ),
        ("SUBSCRIBER_BATCH", "1000", "--batch", "1000"),
        (
            "SUBSCRIBER_STATUS_MAP",
            "Activated=Live Now",
            "--status-map",
            "lower-case",
        ),
        (
            "SUBSCRIBER_REPLAY_FALLBACK",
            "sometimes",
            "--replay-fallback",
            "sometimes",
        ),
        (
            "SF_PUBSUB_ENDPOINT",
            "gopher://x",
            "--pubsub-endpoint",
            "http://",
        ),
        (
            "SUBSCRIBER_ADMIN_ADDR",
            "not-an-address",
            "--admin-addr",
            "not-an-address",
        ),
        (
            "SUBSCRIBER_EXTRA_STATUS_FIELDS",
            "Status",
            "--extra-status-fields",
            "always watched",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sf-subscriber"))
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle) && stderr.contains(flag),
            "{var}={value}: {stderr}"
        );
    }
}

#[tokio::test]
async fn tls_endpoints_work_with_the_emulators_certificate() {
    let db = TestDatabase::new().await;
    let dir = std::env::temp_dir().join(format!("sub-tls-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let emu = sf_emulator::spawn(EmulatorConfig {
        tls_self_signed: true,
        tls_ca_out: Some(ca.clone()),
        ..emulator_config()
    })
    .await
    .unwrap();
    assert!(emu.pubsub_url.starts_with("https://"), "{}", emu.pubsub_url);
    // REST over HTTPS through our own client (the tests' reqwest has no TLS), not as the worker.
    let rest = orderbridge_salesforce::Client::new(&orderbridge_salesforce::SalesforceConfig {
        login_url: emu.base_url.clone(),
        ca_cert_file: Some(ca.clone()),
        client_name: "tls-test".into(),
        ..Default::default()
    })
    .unwrap();
    let account = rest
        .create("Account", &json!({"Name": "Acme"}))
        .await
        .unwrap();
    let sf = rest
        .create(
            "Order",
            &json!({"AccountId": account, "EffectiveDate": "2026-12-01", "Status": "Draft"}),
        )
        .await
        .unwrap();
    let local = local_order(&db.pool, &sf).await;

    let port = orderbridge_testkit::free_port().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sf-subscriber"));
    cmd.env_clear()
        .env("DATABASE_URL", db.url())
        .env("SF_LOGIN_URL", &emu.base_url)
        .env("SF_CA_CERT_FILE", &ca)
        .env("SF_PUBSUB_ENDPOINT", &emu.pubsub_url)
        .env("SUBSCRIBER_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("SUBSCRIBER_INITIAL_REPLAY", "earliest")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _child = orderbridge_testkit::ChildGuard(cmd.spawn().unwrap());
    eventually("subscribed over TLS", || async {
        matches!(
            reqwest::get(format!("http://127.0.0.1:{port}/health/ready")).await,
            Ok(r) if r.status().is_success()
        )
    })
    .await;
    rest.update("Order", &sf, &json!({"Status": "Activated"}))
        .await
        .unwrap();
    let pool = db.pool.clone();
    eventually("the order activated over TLS", || {
        let pool = pool.clone();
        async move { status_of(&pool, local).await == "activated" }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GAP_UPDATE change event for `record_id`, written with the topic's current schema, as
/// Salesforce sends when it could not capture a change's values.
fn gap_event(org: &Org, record_id: &str) -> ProducerEvent {
    use apache_avro::types::{Record, Value as Avro};
    let schema = {
        let st = org.emu.state.pubsub.lock();
        let (_, schema) = st.registry.topic(TOPIC).unwrap();
        schema.unwrap()
    };
    let apache_avro::Schema::Record(rs) = &schema.avro else {
        panic!("not a record schema")
    };
    let header_schema = &rs.fields[0].schema;
    let mut header = Record::new(header_schema).unwrap();
    header.put("entityName", "Order");
    header.put(
        "recordIds",
        Avro::Array(vec![Avro::String(record_id.into())]),
    );
    let apache_avro::Schema::Record(hs) = header_schema else {
        panic!("header is not a record")
    };
    let change_type = hs.fields.iter().find(|f| f.name == "changeType").unwrap();
    let apache_avro::Schema::Enum(e) = &change_type.schema else {
        panic!("changeType is not an enum")
    };
    let gap = e.symbols.iter().position(|s| s == "GAP_UPDATE").unwrap();
    header.put("changeType", Avro::Enum(gap as u32, "GAP_UPDATE".into()));
    header.put("changeOrigin", "");
    header.put("transactionKey", "gap-tx");
    header.put("sequenceNumber", 1);
    header.put(
        "commitTimestamp",
        Avro::Long(chrono::Utc::now().timestamp_millis()),
    );
    header.put("commitNumber", Avro::Long(1));
    header.put("commitUser", "005000000000001AAA");
    for f in ["nulledFields", "diffFields", "changedFields"] {
        header.put(f, Avro::Array(vec![]));
    }
    let mut record = Record::new(&schema.avro).unwrap();
    record.put("ChangeEventHeader", header);
    for f in &rs.fields[1..] {
        record.put(&f.name, Avro::Union(0, Box::new(Avro::Null)));
    }
    ProducerEvent {
        id: format!("gap-{record_id}"),
        schema_id: schema.id.clone(),
        payload: apache_avro::to_avro_datum(&schema.avro, record).unwrap(),
        headers: vec![],
    }
}

#[tokio::test]
async fn gap_events_reread_the_record_and_platform_events_are_recorded() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let local = local_order(&db.pool, &sf).await;
    let platform = "/event/OrderProvisionRequested__e";
    let sub = Subscriber::start(
        &db,
        &org,
        &[("SF_PUBSUB_TOPICS", &format!("{TOPIC},{platform}"))],
    )
    .await;

    // Activated by a change our client made (echo: ignored) ...
    org.set_status(&sf, "Activated", Some("orderbridge")).await;
    eventually("the echo counted", || async {
        sub.metric("sf_subscriber_events_echo_total").await >= 1.0
    })
    .await;
    assert_eq!(status_of(&db.pool, local).await, "submitted");
    // ... then a gap event for the record: its Status is re-read over REST and applied.
    org.emu.state.pubsub.publish(&[TOPIC], gap_event(&org, &sf));
    let pool = db.pool.clone();
    eventually("the re-read status applied", || {
        let pool = pool.clone();
        async move { status_of(&pool, local).await == "activated" }
    })
    .await;
    assert!(sub.metric("sf_subscriber_rereads_total").await >= 1.0);

    // No event on the platform topic yet: only keepalives (every second here) can have stored a
    // position for it, and they do, so a quiet topic's position does not age out of retention.
    eventually("a keepalive's replay id stored", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(
                "SELECT replay_id FROM pubsub_cursors WHERE topic = $1",
            )
            .bind(platform)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
            .is_some()
        }
    })
    .await;

    let (code, body) = org
        .call(
            "POST",
            "/sobjects/OrderProvisionRequested__e",
            Some(json!({"OrderId__c": sf, "CorrelationId__c": "c-1"})),
            None,
        )
        .await;
    assert_eq!(code, 201, "{body}");
    eventually("the platform event recorded", || async {
        sub.metric("sf_subscriber_platform_events_total").await == 1.0
    })
    .await;
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM pubsub_inbox WHERE topic = $1")
        .bind(platform)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1);
}

#[tokio::test]
async fn the_inbox_is_purged_after_its_retention() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "INSERT INTO pubsub_inbox (event_id, topic, received_at) VALUES
             ('old', '/data/OrderChangeEvent', now() - interval '5 days'),
             ('new', '/data/OrderChangeEvent', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::days(4);
    assert_eq!(
        sf_subscriber::store::purge_inbox(&db.pool, before)
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM pubsub_inbox")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["new"]);
}

/// The subscriber runs until it is told to stop, however quiet the topic: an earlier version
/// waited for its tasks with the shutdown timeout straight after starting and so exited by itself
/// `SUBSCRIBER_CALL_TIMEOUT + 5 s` per task after the start (40 s with the defaults).
#[tokio::test]
async fn an_idle_subscriber_keeps_running_until_signalled_and_still_applies_changes() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let order = local_order(&db.pool, &sf).await;
    let mut sub = Subscriber::start(&db, &org, &[("SUBSCRIBER_CALL_TIMEOUT", "1s")]).await;

    // Longer than the old code's self-inflicted exit (2 tasks × (1 s + 5 s)).
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(
        sub.child.0.try_wait().unwrap().is_none(),
        "the subscriber exited without being told to"
    );
    org.set_status(&sf, "Activated", None).await;
    let pool = db.pool.clone();
    eventually("the order activated after the quiet spell", || {
        let pool = pool.clone();
        async move { status_of(&pool, order).await == "activated" }
    })
    .await;
    assert!(sub.terminate().success());
}
