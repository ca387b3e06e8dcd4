//! The fan-out example (`examples/fanout_consumer`) on a real broker: a billing service with
//! its own queue on `{ns}.events` gets every `order.submitted` event once (a re-published
//! duplicate is acknowledged and ignored), dead-letters forged and unsigned ones into its own
//! dead letters, sees no other event types, and takes nothing from orderbridge's own queues.
#![allow(clippy::unwrap_used)]

#[path = "../examples/fanout_consumer/billing.rs"]
mod billing;

use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel};
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_broker::{BrokerConfig, Keyring, SigningConfig, Supervisor, lapin, queue_stat};
use orderbridge_domain::fulfilment::{FulfilmentEvent, FulfilmentRef};
use orderbridge_domain::{
    ClientId, ClientScope, Envelope, NewOrder, NewOrderRequest, OrderEvent, OrderId,
};
use secrecy::SecretString;
use serde_json::{Value, json};

fn config() -> BrokerConfig {
    BrokerConfig {
        amqp_url: SecretString::from(
            std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
        broker_namespace: format!("test-fanout-{}", uuid::Uuid::new_v4()),
        broker_op_timeout: Duration::from_secs(5),
        broker_reconnect_min: Duration::from_millis(50),
        broker_reconnect_max: Duration::from_secs(1),
        broker_delivery_limit: 5,
        broker_retry_tiers: vec![Duration::from_secs(60)],
        broker_declare_topology: true,
        signing: SigningConfig::with_key(DEV_SIGNING_KEY),
    }
}

fn order_event(client_ref: &str) -> Envelope<Value> {
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": client_ref,
        "customer": {"external_id": "CUST-42", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"}]
    }))
    .unwrap();
    let order = NewOrder::parse(req)
        .unwrap()
        .into_order(OrderId::new_v7(), Utc::now());
    let client = ClientScope {
        id: ClientId::from_uuid(uuid::Uuid::now_v7()),
        external_id_prefix: "acme:".into(),
    };
    OrderEvent::submitted(order, client).into_envelope(Utc::now(), Some("req-1".into()))
}

/// The properties the outbox relay publishes an event with (crates/outbox-relay/src/relay/
/// message.rs), unsigned.
fn properties(envelope: &Envelope<Value>) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(envelope.id.to_string().into())
        .with_type(envelope.event_type.as_str().into())
        .with_app_id("orderbridge-outbox-relay".into())
}

/// Publishes to `{ns}.events` with the event type as routing key, mandatory, and waits for the
/// confirm, as the relay does.
async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    body: &[u8],
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm.take_message(), None, "unroutable");
}

async fn wait_for_ready(config: &BrokerConfig, channel: &Channel, queue: &str, want: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = queue_stat(config, channel, queue).await.unwrap().messages;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {got} ready, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reads_its_own_copy_once_and_keeps_its_own_dead_letters() {
    let config = config();
    let supervisor = Supervisor::new(config.clone(), "fanout-test").unwrap();
    // Declares orderbridge's topology, as its set-up does.
    let session = supervisor.try_connect().await.unwrap();
    let topology = supervisor.topology().clone();
    let keyring = Keyring::single(DEV_SIGNING_KEY).unwrap();

    let names = billing::Names::new(&format!("billing-{}", uuid::Uuid::new_v4()));
    let consumer_channel = session.connection.create_channel().await.unwrap();
    billing::declare(&consumer_channel, &topology.events_exchange, &names)
        .await
        .unwrap();
    // Declaring again is a no-op: a restarted subscriber re-declares on start.
    billing::declare(&consumer_channel, &topology.events_exchange, &names)
        .await
        .unwrap();

    let publisher = session.connection.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let events = topology.events_exchange.as_str();

    // 1. An order event, published twice (the relay publishes again when a confirm is lost).
    let first = order_event("PO-1");
    let first_body = serde_json::to_vec(&first).unwrap();
    let first_props = keyring.sign(properties(&first), &first_body);
    for _ in 0..2 {
        publish(
            &publisher,
            events,
            "order.submitted",
            first_props.clone(),
            &first_body,
        )
        .await;
    }
    // 2. Another order.
    let second = order_event("PO-2");
    let second_body = serde_json::to_vec(&second).unwrap();
    let second_props = keyring.sign(properties(&second), &second_body);
    publish(
        &publisher,
        events,
        "order.submitted",
        second_props,
        &second_body,
    )
    .await;
    // 3. A forgery: a genuine message's body changed after signing (a higher total).
    let forged = order_event("PO-3");
    let forged_body = serde_json::to_vec(&forged).unwrap();
    let forged_props = keyring.sign(properties(&forged), &forged_body);
    let tampered = String::from_utf8(forged_body)
        .unwrap()
        .replace("\"25.00\"", "\"2500.00\"");
    publish(
        &publisher,
        events,
        "order.submitted",
        forged_props,
        tampered.as_bytes(),
    )
    .await;
    // 4. An unsigned message (anyone with write access to the exchange could send it).
    let unsigned = order_event("PO-4");
    let unsigned_body = serde_json::to_vec(&unsigned).unwrap();
    publish(
        &publisher,
        events,
        "order.submitted",
        properties(&unsigned),
        &unsigned_body,
    )
    .await;
    // 5. A fulfilment event: not billing's routing key, so not in its queue.
    let nudge = FulfilmentEvent::Requested(FulfilmentRef {
        request_id: uuid::Uuid::now_v7(),
        order_id: OrderId::new_v7(),
    })
    .into_envelope(Utc::now(), None);
    let nudge_body = serde_json::to_vec(&nudge).unwrap();
    let nudge_props = keyring.sign(properties(&nudge), &nudge_body);
    publish(
        &publisher,
        events,
        "fulfilment.requested",
        nudge_props,
        &nudge_body,
    )
    .await;

    // The billing service consumes until it has seen the five copies meant for it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let names = names.clone();
        tokio::spawn(async move {
            let mut state = billing::Billing::new(keyring);
            billing::run(
                &consumer_channel,
                &names,
                &mut state,
                |id, outcome| {
                    let _ = tx.send((id.to_owned(), outcome.clone()));
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    let mut outcomes = Vec::new();
    while outcomes.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {outcomes:?} after 15 s"));
        outcomes.push(next.unwrap());
    }
    // Nothing else arrives (the fulfilment event was never billing's).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an unexpected sixth message"
    );
    let _ = stop.send(());
    run.await.unwrap().unwrap();

    let first_id = first.id.to_string();
    let invoiced: Vec<(&str, &billing::Invoice)> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            billing::Outcome::Invoiced(i) => Some((id.as_str(), i)),
            _ => None,
        })
        .collect();
    assert_eq!(invoiced.len(), 2, "{outcomes:?}");
    assert_eq!(invoiced[0].0, first_id);
    assert_eq!(
        invoiced[0].1,
        &billing::Invoice {
            order_id: first.data["id"].as_str().unwrap().to_owned(),
            client_ref: "PO-1".into(),
            currency: "EUR".into(),
            total: "25.00".into(),
        }
    );
    assert_eq!(invoiced[1].0, second.id.to_string());
    let duplicates: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| *o == billing::Outcome::Duplicate)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(duplicates, [first_id.as_str()]);
    let refused: Vec<(&str, &str)> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            billing::Outcome::Refused(why) => Some((id.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 2, "{outcomes:?}");
    assert_eq!(refused[0].0, forged.id.to_string());
    assert!(
        refused[0].1.starts_with("SIGNATURE_MISMATCH"),
        "{refused:?}"
    );
    assert_eq!(refused[1].0, unsigned.id.to_string());
    assert!(refused[1].1.starts_with("SIGNATURE_MISSING"), "{refused:?}");

    // The refused two are in billing's own dead letters, none in orderbridge's; billing's queue
    // is empty; orderbridge's work queues kept their own copies of everything (the subscriber
    // took nothing from them).
    let check = session.connection.create_channel().await.unwrap();
    wait_for_ready(&config, &check, &names.dead_letter_queue, 2).await;
    wait_for_ready(&config, &check, &names.queue, 0).await;
    wait_for_ready(&config, &check, &topology.dead_letter_queue, 0).await;
    wait_for_ready(&config, &check, &topology.sf_sync_queue, 5).await;
    wait_for_ready(&config, &check, &topology.fulfilment_queue, 1).await;

    for queue in [&names.queue, &names.dead_letter_queue] {
        check
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    check
        .exchange_delete(
            names.dead_letter_exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    topology.delete(&config, &check).await.unwrap();
    session.close(&config).await;
}
