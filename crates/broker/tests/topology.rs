//! The topology on a real broker: idempotent declaration, delayed retry through a tier back to
//! the work queue, the delivery limit dead-lettering, status events (and their dead letters), and
//! the fulfilment queue beside the Salesforce one (its own binding, requeue, tiers, dead letters).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use orderbridge_broker::{
    BrokerConfig, BrokerError, DEFAULT_FRAME_MAX, FULFILMENT_REQUEUE_ROUTING_KEY,
    REQUEUE_ROUTING_KEY, SigningConfig, Supervisor,
};
use secrecy::{ExposeSecret, SecretString};

fn config(delivery_limit: u32) -> BrokerConfig {
    BrokerConfig {
        amqp_url: SecretString::from(
            std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
        broker_namespace: format!("test-{}", uuid::Uuid::new_v4()),
        broker_op_timeout: Duration::from_secs(5),
        broker_reconnect_min: Duration::from_millis(50),
        broker_reconnect_max: Duration::from_secs(1),
        broker_delivery_limit: delivery_limit,
        broker_retry_tiers: vec![
            Duration::from_secs(2),
            Duration::from_millis(300),
            Duration::from_secs(60),
        ],
        broker_declare_topology: true,
        // Nothing here signs or verifies: the topology routes whatever it is given.
        signing: SigningConfig::default(),
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm.take_message(), None, "message was unroutable");
}

/// Waits for one message on `queue` and acks it.
async fn get_one(ch: &Channel, queue: &str) -> lapin::message::Delivery {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return m.delivery;
        }
        assert!(Instant::now() < deadline, "nothing arrived on {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ready messages, without taking any.
async fn is_empty(ch: &Channel, queue: &str) -> bool {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    q.message_count() == 0
}

fn first_death_reason(d: &lapin::message::Delivery) -> String {
    let headers = d.properties.headers().as_ref().unwrap().inner();
    let Some(AMQPValue::FieldArray(deaths)) = headers.get("x-death") else {
        panic!("no x-death header: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    match first.inner().get("reason") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no reason: {other:?}"),
    }
}

#[tokio::test]
async fn topology_is_idempotent_and_routes_retries_dead_letters_and_status() {
    let cfg = config(2);
    let mut sup = Supervisor::new(cfg.clone(), "topology-test").unwrap();
    let t = sup.topology().clone();
    // Declared twice (as every reconnect does): no PRECONDITION_FAILED.
    let first = sup.connect().await;
    let s = sup.connect().await;
    first.close(&cfg).await;
    assert!(s.is_healthy());
    let ch = &s.channel;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // Tiers are sorted shortest first and named after their delay.
    let keys: Vec<_> = t
        .retry_tiers
        .iter()
        .map(|t| t.routing_key.as_str())
        .collect();
    assert_eq!(keys, ["300ms", "2s", "1m"]);

    // Order events reach the work queue.
    publish(ch, &t.events_exchange, "order.submitted", b"{\"n\":1}").await;
    assert_eq!(get_one(ch, &t.sf_sync_queue).await.data, b"{\"n\":1}");

    // A requeue goes straight back to the work queue, through the retry exchange.
    publish(ch, &t.retry_exchange, REQUEUE_ROUTING_KEY, b"{\"n\":0}").await;
    assert_eq!(get_one(ch, &t.sf_sync_queue).await.data, b"{\"n\":0}");

    // A retry waits out its tier's TTL, then returns to the work queue (only there).
    publish(ch, &t.retry_exchange, "2s", b"{\"n\":2}").await;
    assert!(
        is_empty(ch, &t.sf_sync_queue).await,
        "retry came back before its delay"
    );
    let back = get_one(ch, &t.sf_sync_queue).await;
    assert_eq!(back.data, b"{\"n\":2}");
    assert_eq!(first_death_reason(&back), "expired");

    // Past the delivery limit (2), the broker dead-letters instead of redelivering.
    publish(ch, &t.events_exchange, "order.submitted", b"{\"n\":3}").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "never dead-lettered");
        match ch
            .basic_get(
                t.sf_sync_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            Some(m) => ch
                .basic_reject(
                    m.delivery.delivery_tag,
                    BasicRejectOptions { requeue: true },
                )
                .await
                .unwrap(),
            None => {
                if !is_empty(ch, &t.dead_letter_queue).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let dead = get_one(ch, &t.dead_letter_queue).await;
    assert_eq!(dead.data, b"{\"n\":3}");
    assert_eq!(first_death_reason(&dead), "delivery_limit");

    // Status events have their own exchange and queue.
    publish(ch, &t.status_exchange, "order.synced", b"{\"n\":4}").await;
    assert_eq!(get_one(ch, &t.status_queue).await.data, b"{\"n\":4}");

    // A status message its consumer rejects (unreadable) is dead-lettered, not dropped.
    publish(
        ch,
        &t.status_exchange,
        "order.sync_status.synced",
        b"{\"n\":5}",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejected = loop {
        if let Some(m) = ch
            .basic_get(
                t.status_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            break m.delivery;
        }
        assert!(Instant::now() < deadline, "nothing on the status queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ch.basic_reject(rejected.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = get_one(ch, &t.dead_letter_queue).await;
    assert_eq!(dead.data, b"{\"n\":5}");
    assert_eq!(first_death_reason(&dead), "rejected");

    t.delete(&cfg, ch).await.unwrap();
    s.close(&cfg).await;
}

/// The fulfilment work queue gets `fulfilment.*` events and only those; its requeue and its own
/// delay tiers lead back to it (never to the Salesforce queue), and what its consumer rejects
/// ends in the one dead-letter queue.
#[tokio::test]
async fn fulfilment_queue_has_its_own_binding_requeue_tiers_and_shares_the_dead_letters() {
    let cfg = config(2);
    let sup = Supervisor::new(cfg.clone(), "topology-fulfilment-test").unwrap();
    let t = sup.topology().clone();
    let s = sup.try_connect().await.unwrap();
    let ch = &s.channel;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // A fulfilment event reaches the fulfilment queue only; an order event the sync queue only.
    publish(ch, &t.events_exchange, "fulfilment.requested", b"{\"f\":1}").await;
    publish(ch, &t.events_exchange, "order.submitted", b"{\"o\":1}").await;
    assert_eq!(get_one(ch, &t.fulfilment_queue).await.data, b"{\"f\":1}");
    assert_eq!(get_one(ch, &t.sf_sync_queue).await.data, b"{\"o\":1}");
    assert!(is_empty(ch, &t.fulfilment_queue).await);
    assert!(is_empty(ch, &t.sf_sync_queue).await);

    // Its requeue key goes straight back to it.
    publish(
        ch,
        &t.retry_exchange,
        FULFILMENT_REQUEUE_ROUTING_KEY,
        b"{\"f\":2}",
    )
    .await;
    assert_eq!(get_one(ch, &t.fulfilment_queue).await.data, b"{\"f\":2}");

    // Its shortest tier expires back into the fulfilment queue, not the sync queue.
    let tier = &t.fulfilment_retry_tiers[0];
    assert_eq!(tier.routing_key, "fulfilment.300ms");
    publish(ch, &t.retry_exchange, &tier.routing_key, b"{\"f\":3}").await;
    let back = get_one(ch, &t.fulfilment_queue).await;
    assert_eq!(back.data, b"{\"f\":3}");
    assert_eq!(first_death_reason(&back), "expired");
    assert!(is_empty(ch, &t.sf_sync_queue).await);

    // Rejected without requeue: into the shared dead-letter queue.
    publish(ch, &t.events_exchange, "fulfilment.result", b"{\"f\":4}").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejected = loop {
        if let Some(m) = ch
            .basic_get(
                t.fulfilment_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            break m.delivery;
        }
        assert!(Instant::now() < deadline, "nothing on the fulfilment queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ch.basic_reject(rejected.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = get_one(ch, &t.dead_letter_queue).await;
    assert_eq!(dead.data, b"{\"f\":4}");
    assert_eq!(first_death_reason(&dead), "rejected");

    t.delete(&cfg, ch).await.unwrap();
    s.close(&cfg).await;
}

/// Without declaring (`BROKER_DECLARE_TOPOLOGY=false`), a session needs the topology to exist
/// already, names what is missing, and then connects without declaring anything.
#[tokio::test]
async fn checking_only_finds_a_missing_topology_and_accepts_a_declared_one() {
    let mut cfg = config(2);
    cfg.broker_declare_topology = false;
    let checking = Supervisor::new(cfg.clone(), "topology-check-test").unwrap();
    match checking.try_connect().await {
        Err(BrokerError::TopologyMissing(what)) => {
            assert_eq!(what, format!("exchange {}.events", cfg.broker_namespace));
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected to a namespace that does not exist"),
    }
    let mut declaring_cfg = cfg.clone();
    declaring_cfg.broker_declare_topology = true;
    let declaring = Supervisor::new(declaring_cfg.clone(), "topology-check-test")
        .unwrap()
        .try_connect()
        .await
        .unwrap();
    let checked = checking.try_connect().await.unwrap();
    assert!(checked.is_healthy());
    checked.close(&cfg).await;
    // A queue deleted since is noticed too.
    declaring
        .channel
        .queue_delete(
            checking.topology().status_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    match checking.try_connect().await {
        Err(BrokerError::TopologyMissing(what)) => {
            assert_eq!(what, format!("queue {}", checking.topology().status_queue));
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected although the status queue is gone"),
    }
    checking
        .topology()
        .delete(&declaring_cfg, &declaring.channel)
        .await
        .unwrap();
    declaring.close(&declaring_cfg).await;
}

#[tokio::test]
async fn unreachable_broker_fails_the_attempt_within_the_timeout() {
    let mut cfg = config(2);
    // Nothing listens on port 1.
    cfg.amqp_url = SecretString::from("amqp://guest:guest@127.0.0.1:1/%2f".to_owned());
    let sup = Supervisor::new(cfg, "unreachable-test").unwrap();
    let started = Instant::now();
    assert!(sup.try_connect().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `AMQP_URL` with several nodes (a cluster): a node that does not answer is skipped, and the
/// session opens on the next, whichever place the live node has in the list.
#[tokio::test]
async fn a_list_of_nodes_connects_past_one_that_is_down() {
    let live = config(2).amqp_url.expose_secret().to_owned();
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    for list in [format!("{dead}, {live}"), format!("{live},{dead}")] {
        let mut cfg = config(2);
        cfg.amqp_url = SecretString::from(list);
        let mut sup = Supervisor::new(cfg.clone(), "node-list-test").unwrap();
        let session = sup.try_connect().await.unwrap();
        assert!(session.is_healthy());
        session.close(&cfg).await;
        // After a lost session the next node is tried first, and the live one is still found.
        sup.session_lost();
        let session = sup.try_connect().await.unwrap();
        session.close(&cfg).await;
    }
    let mut cfg = config(2);
    cfg.amqp_url = SecretString::from(format!("{dead},{dead}"));
    let sup = Supervisor::new(cfg, "node-list-test").unwrap();
    assert!(sup.try_connect().await.is_err());
}

#[test]
fn bad_url_is_a_startup_error_that_does_not_echo_the_password() {
    let mut cfg = config(2);
    cfg.amqp_url = SecretString::from("http://user:hunter2@host".to_owned());
    let err = Supervisor::new(cfg, "x").err().unwrap().to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_bad_url_anywhere_in_a_node_list_is_a_startup_error() {
    let mut cfg = config(2);
    cfg.amqp_url = SecretString::from(
        "amqp://guest:guest@127.0.0.1:5672/%2f,http://user:hunter2@host".to_owned(),
    );
    let err = Supervisor::new(cfg.clone(), "x").err().unwrap().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    cfg.amqp_url = SecretString::from(" , ".to_owned());
    assert!(Supervisor::new(cfg, "x").is_err());
}

/// The frame size the connection negotiates: 32 KiB unless the URL says `frame_max` (the
/// client's buffers are sized by it), and a message larger than a frame still arrives whole.
#[tokio::test]
async fn frames_are_32_kib_unless_the_url_says_otherwise() {
    let cfg = config(2);
    let sup = Supervisor::new(cfg.clone(), "frame-test").unwrap();
    let s = sup.try_connect().await.unwrap();
    assert_eq!(s.connection.configuration().frame_max(), DEFAULT_FRAME_MAX);

    // 100 KiB through a 32 KiB frame size: split into frames on the wire, whole on arrival.
    let queue = format!("{}.frames", cfg.broker_namespace);
    s.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    publish(&s.channel, "", &queue, &body).await;
    assert_eq!(get_one(&s.channel, &queue).await.data, body);
    s.channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    s.close(&cfg).await;

    let mut explicit = cfg.clone();
    let base = cfg.amqp_url.expose_secret();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}frame_max=65536");
    explicit.amqp_url = SecretString::from(url);
    let sup = Supervisor::new(explicit.clone(), "frame-test").unwrap();
    let s = sup.try_connect().await.unwrap();
    assert_eq!(s.connection.configuration().frame_max(), 65536);
    sup.topology()
        .clone()
        .delete(&explicit, &s.channel)
        .await
        .unwrap();
    s.close(&explicit).await;
}
