//! Only what the outbox relay signed reaches Salesforce: an order event published straight onto
//! the broker (unsigned, signed with a guessed secret, or changed after signing) is
//! dead-lettered with the reason, reported nowhere and never written; during a key rotation,
//! events signed with the previous key are written, and what the worker sends on carries the
//! new key.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Harness, SIGNING_KEY, eventually, header, keyring, order};
use orderbridge_broker::headers;
use orderbridge_broker::lapin::BasicProperties;
use orderbridge_broker::{Keyring, SigningConfig};
use orderbridge_domain::{Order, OrderEvent, SyncState};
use orderbridge_mapping::Mapping;

const WAIT: Duration = Duration::from_secs(30);

/// An `order.submitted` event for `o` and the properties the relay gives it, unsigned.
fn event(o: &Order) -> (Vec<u8>, BasicProperties) {
    let env =
        OrderEvent::submitted(o.clone(), common::test_client()).into_envelope(o.created_at, None);
    let body = serde_json::to_vec(&env).unwrap();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(env.id.to_string().into())
        .with_type("order.submitted".into());
    (body, props)
}

#[tokio::test]
async fn forged_order_events_are_dead_lettered_and_never_reach_salesforce() {
    let mut h = Harness::new().await;
    let metrics = h.start_worker(&[]).await;
    let unsigned = order("CUST-FORGED-1", 1);
    let guessed = order("CUST-FORGED-2", 1);
    let changed = order("CUST-FORGED-3", 1);
    let genuine = order("CUST-GENUINE", 1);

    let (body, props) = event(&unsigned);
    h.publish_as_is("order.submitted", &body, props).await;
    // The key's real id with a guessed secret.
    let forger = Keyring::single("dev:a-guess-at-the-secret-0123456789abcdef").unwrap();
    let (body, props) = event(&guessed);
    h.publish_as_is("order.submitted", &body, forger.sign(props, &body))
        .await;
    // Genuinely signed, then changed on the way (another customer, another total).
    let (body, props) = event(&changed);
    let signed = keyring().sign(props, &body);
    let mut tampered = changed.clone();
    tampered.customer.external_id = "CUST-VICTIM".into();
    tampered.total = "0.01".parse().unwrap();
    let (tampered_body, _) = event(&tampered);
    h.publish_as_is("order.submitted", &tampered_body, signed)
        .await;
    // The pipeline keeps flowing for what the relay did sign.
    h.publish_orders(std::slice::from_ref(&genuine)).await;

    let statuses = h.wait_synced(std::slice::from_ref(&genuine), WAIT).await;
    eventually(WAIT, "three dead letters", || async {
        metrics.bad_signature_total.load(Ordering::Relaxed) == 3
            && h.message_count(&h.topology.dead_letter_queue).await == 3
    })
    .await;
    let dead = h.drain(&h.topology.dead_letter_queue).await;
    let mut codes: Vec<String> = dead
        .iter()
        .map(|(p, _)| {
            assert_eq!(header(p, headers::REASON).as_deref(), Some("bad_signature"));
            assert_eq!(header(p, headers::ATTEMPTS).as_deref(), Some("0"));
            assert_eq!(
                header(p, headers::ORIGIN_QUEUE).as_deref(),
                Some(h.topology.sf_sync_queue.as_str())
            );
            assert!(header(p, headers::ERROR_MESSAGE).is_some());
            header(p, headers::ERROR_CODE).unwrap()
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "SIGNATURE_MISMATCH",
            "SIGNATURE_MISMATCH",
            "SIGNATURE_MISSING"
        ]
    );
    // The dead letter is the message as it came (body and its own signature headers), so a
    // replay can tell it was never the relay's.
    assert!(dead.iter().any(|(_, b)| *b == tampered_body));
    assert!(
        dead.iter().all(|(p, b)| keyring().verify(p, b).is_err()),
        "no dead letter was re-signed"
    );

    // Nothing of the forged orders in Salesforce, nor any report about them.
    let in_sf = h.count_by_external_id("Order").await;
    assert_eq!(in_sf.len(), 1, "{in_sf:?}");
    assert_eq!(in_sf.get(&genuine.id.to_string()), Some(&1));
    let accounts = h.count_by_external_id("Account").await;
    for c in [
        "CUST-FORGED-1",
        "CUST-FORGED-2",
        "CUST-FORGED-3",
        "CUST-VICTIM",
    ] {
        assert!(
            !accounts.keys().any(|k| k.contains(c)),
            "{c} reached Salesforce: {accounts:?}"
        );
    }
    assert!(
        statuses.iter().all(|s| s.data.order_id == genuine.id),
        "{statuses:?}"
    );
    assert_eq!(metrics.failed_total.load(Ordering::Relaxed), 0);
    h.cleanup().await;
}

/// A rotation's second and third steps: the worker signs with the new key and still accepts the
/// old one, so events a relay signed with the old key are written; its reports and the copies it
/// sends on (here a retry) carry the new key, so once the old key is dropped the copy in flight
/// still verifies.
#[tokio::test]
async fn during_a_rotation_the_previous_key_is_accepted_and_copies_move_to_the_new_one() {
    const NEW_KEY: &str = "k2:a-brand-new-secret-of-at-least-32-bytes";
    let mut h = Harness::with_retry_tiers("3s").await;
    let o = order("CUST-ROTATE", 1);
    // The first write fails retryably: the message goes to the 3 s tier as a copy.
    h.faults(serde_json::json!({"lock_records": [{"key": o.id.to_string(), "times": 1}]}))
        .await;
    let mut rotating = h.cli(&[]);
    rotating.broker.signing = SigningConfig {
        broker_signing_key: Some(NEW_KEY.into()),
        broker_signing_keys_previous: Some(SIGNING_KEY.into()),
    };
    // Signed by a relay still on the old key.
    h.publish_orders(std::slice::from_ref(&o)).await;
    h.start_worker_from(rotating, Mapping::load(None).unwrap())
        .await;

    let retrying = loop_until_status(&h, SyncState::Retrying).await;
    h.stop_worker().await;
    // Reports carry the new key.
    let new = Keyring::single(NEW_KEY).unwrap();
    assert_eq!(new.verify(&retrying.0, &retrying.1), Ok("k2"));

    // The old key is dropped before the retry copy comes back from its tier.
    let mut rotated = h.cli(&[]);
    rotated.broker.signing = SigningConfig::with_key(NEW_KEY);
    let metrics = h
        .start_worker_from(rotated, Mapping::load(None).unwrap())
        .await;
    let synced = loop_until_status(&h, SyncState::Synced).await;
    assert_eq!(new.verify(&synced.0, &synced.1), Ok("k2"));
    assert_eq!(metrics.bad_signature_total.load(Ordering::Relaxed), 0);
    assert_eq!(
        h.count_by_external_id("Order").await.get(&o.id.to_string()),
        Some(&1)
    );
    h.cleanup().await;
}

/// Takes status messages until one in `state` arrives; returns its properties and body.
async fn loop_until_status(h: &Harness, state: SyncState) -> (BasicProperties, Vec<u8>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for (p, b) in h.drain(&h.topology.status_queue).await {
            let report = orderbridge_domain::SyncStatus::decode(&b).unwrap();
            if report.data.state == state {
                return (p, b);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {state:?} report arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
