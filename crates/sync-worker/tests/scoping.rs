#![allow(clippy::unwrap_used)]
//! What the worker refuses to write, with real envelopes against the emulator: an event that
//! names no API client (its customer key could not be scoped), a client-scoped key that could be
//! another client's, and values Salesforce could not hold exactly. Each is dead-lettered with
//! its reason and a `failed` report, and nothing of it reaches Salesforce; the orders beside it
//! are written.

mod common;

use std::time::Duration;

use common::{Harness, header, order, test_client};
use orderbridge_broker::headers;
use orderbridge_domain::{ClientScope, SyncState};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn unscoped_ambiguous_and_inexact_orders_are_dead_lettered_untouched() {
    let mut h = Harness::new().await;
    let good = order("CUST-1", 1);

    // Written before client scopes existed: no `data.client`.
    let old = order("CUST-OLD", 1);
    let mut old_event = orderbridge_domain::OrderEvent::submitted(old.clone(), test_client())
        .into_envelope(old.created_at, None);
    old_event.data.as_object_mut().unwrap().remove("client");

    // A client that kept its unprefixed keys sends a customer id shaped like another's key.
    let legacy = ClientScope {
        id: uuid::Uuid::now_v7().into(),
        external_id_prefix: String::new(),
    };
    let lookalike = order("test:CUST-1", 1);

    // A city Salesforce would have cut, and a price it would have rounded.
    let mut too_long = order("CUST-2", 1);
    too_long.shipping_address.as_mut().unwrap().city = "x".repeat(100);
    let mut too_precise = order("CUST-3", 1);
    too_precise.lines[0].unit_price = "12.345".parse().unwrap();

    h.publish_envelopes(std::slice::from_ref(&old_event)).await;
    h.publish_orders_as(std::slice::from_ref(&lookalike), &legacy)
        .await;
    h.publish_orders(&[too_long.clone(), too_precise.clone(), good.clone()])
        .await;
    h.start_worker(&[]).await;

    let refused = [&old, &lookalike, &too_long, &too_precise];
    let mut reports = Vec::new();
    h.statuses_until(WAIT, &mut reports, |r| {
        refused.iter().all(|o| {
            r.iter()
                .any(|s| s.data.order_id == o.id && s.data.state == SyncState::Failed)
        }) && r
            .iter()
            .any(|s| s.data.order_id == good.id && s.data.state == SyncState::Synced)
    })
    .await;
    let code_of = |id| {
        reports
            .iter()
            .find(|s| s.data.order_id == id && s.data.state == SyncState::Failed)
            .and_then(|s| s.data.error.clone())
            .unwrap()
    };
    assert_eq!(code_of(old.id).code, "NO_CLIENT_SCOPE");
    assert_eq!(code_of(lookalike.id).code, "AMBIGUOUS_KEY");
    let e = code_of(too_long.id);
    assert_eq!(e.code, "FIELD_LIMIT");
    assert!(
        e.message.contains("/shipping_address/city") && e.message.contains("Order.ShippingCity"),
        "{e:?}"
    );
    let e = code_of(too_precise.id);
    assert_eq!(e.code, "FIELD_LIMIT");
    assert!(
        e.message.contains("/lines/0/unit_price") && e.message.contains("OrderItem.UnitPrice"),
        "{e:?}"
    );

    // Dead letters, permanent, with the code.
    let dead = h.drain(&h.topology.dead_letter_queue).await;
    let mut codes: Vec<String> = dead
        .iter()
        .map(|(p, _)| header(p, headers::ERROR_CODE).unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "AMBIGUOUS_KEY",
            "FIELD_LIMIT",
            "FIELD_LIMIT",
            "NO_CLIENT_SCOPE"
        ]
    );

    // Nothing of them in Salesforce: no order, no account; the good one is there.
    let orders = h.count_by_external_id("Order").await;
    for o in refused {
        assert_eq!(orders.get(&o.id.to_string()), None);
    }
    assert_eq!(orders[&good.id.to_string()], 1);
    let accounts = h.count_by_external_id("Account").await;
    assert_eq!(
        accounts.keys().collect::<Vec<_>>(),
        vec!["test:CUST-1"],
        "only the good order's account"
    );
    h.cleanup().await;
}
