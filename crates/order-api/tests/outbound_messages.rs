#![allow(clippy::unwrap_used)]
//! Salesforce outbound messages (`POST /v1/salesforce/outbound-messages`) against a real
//! per-test database: what is acknowledged is stored with its effects, a repeat is not processed
//! again, and whatever is refused is a SOAP fault with nothing stored.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, TestResponse, order_body};
use order_api::ApiConfig;
use orderbridge_db::status::{self, StatusChange};
use orderbridge_domain::{OrderId, StatusSource};
use orderbridge_testkit::TestDatabase;
use serde_json::json;

const PATH: &str = "/v1/salesforce/outbound-messages";
/// The emulator's org, the default `SF_ORG_ID`.
const ORG: &str = "00D5g0000000001EAA";
const ORDER_SF_ID: &str = "8015g0000000001AAA";

fn envelope(org: &str, notifications: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k5g0000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D5g0000000001</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D5g0000000001</PartnerUrl>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
    )
}

fn notification(id: &str, record: &str, status: &str) -> String {
    format!(
        r#"<Notification>
     <Id>{id}</Id>
     <sObject xsi:type="sf:Order" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
      <sf:Id>{record}</sf:Id>
      <sf:Status>{status}</sf:Status>
      <sf:Description xsi:nil="true"/>
     </sObject>
    </Notification>"#
    )
}

struct Setup {
    app: TestApp,
    order: OrderId,
    _db: TestDatabase,
}

impl Setup {
    /// An order synced to the Salesforce Order `ORDER_SF_ID`.
    async fn new(config: ApiConfig) -> Self {
        let db = TestDatabase::new().await;
        let app = TestApp::with_config(db.pool.clone(), config);
        let key = app.key("portal").await;
        let created = app.post_order(&key, &order_body("PO-OM"), None).await;
        assert_eq!(created.status, 201);
        let order = OrderId::from_uuid(created.json()["id"].as_str().unwrap().parse().unwrap());
        sqlx::query("UPDATE orders SET salesforce_id = $2 WHERE id = $1")
            .bind(order.get())
            .bind(ORDER_SF_ID)
            .execute(&app.pool)
            .await
            .unwrap();
        Self {
            app,
            order,
            _db: db,
        }
    }

    async fn post(&self, content_type: &str, body: impl Into<Body>) -> TestResponse {
        self.post_to(PATH, content_type, body).await
    }

    async fn post_to(&self, path: &str, content_type: &str, body: impl Into<Body>) -> TestResponse {
        self.app
            .send(
                Request::post(path)
                    .header("content-type", content_type)
                    .header("soapaction", "\"\"")
                    .body(body.into())
                    .unwrap(),
            )
            .await
    }

    async fn post_xml(&self, body: String) -> TestResponse {
        self.post("text/xml; charset=utf-8", body).await
    }

    async fn history(&self) -> Vec<(String, String)> {
        status::history(&self.app.pool, self.order)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.status, e.source))
            .collect()
    }

    async fn order_status(&self) -> String {
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(self.order.get())
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    /// Nothing stored and nothing changed since set-up.
    async fn assert_nothing_stored(&self) {
        assert_eq!(self.app.count("outbound_messages").await, 0);
        assert_eq!(self.order_status().await, "submitted");
        assert_eq!(
            self.history().await,
            vec![("submitted".to_owned(), "api".to_owned())]
        );
    }
}

fn assert_ack(res: &TestResponse) {
    let body = String::from_utf8_lossy(&res.body);
    assert_eq!(res.status, 200, "body: {body}");
    assert_eq!(res.header("content-type"), Some("text/xml; charset=utf-8"));
    assert!(body.contains("<notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse>"), "{body}");
}

/// A SOAP 1.1 fault with this HTTP status and fault code; returns the faultstring.
fn assert_fault(res: &TestResponse, status: u16, code: &str) -> String {
    let body = String::from_utf8_lossy(&res.body).into_owned();
    assert_eq!(res.status.as_u16(), status, "body: {body}");
    assert_eq!(res.header("content-type"), Some("text/xml; charset=utf-8"));
    assert!(body.contains("<soapenv:Fault>"), "{body}");
    assert!(
        body.contains(&format!("<faultcode>{code}</faultcode>")),
        "{body}"
    );
    assert!(!body.contains("Ack"), "{body}");
    let start = body.find("<faultstring>").unwrap() + "<faultstring>".len();
    let end = body.find("</faultstring>").unwrap();
    assert!(end > start, "empty faultstring: {body}");
    body[start..end].to_owned()
}

#[tokio::test]
async fn a_valid_message_is_acknowledged_after_its_status_is_applied() {
    let s = Setup::new(ApiConfig::default()).await;
    let res = s
        .post_xml(envelope(
            ORG,
            &notification("04l5g0000000001AAA", ORDER_SF_ID, "Activated"),
        ))
        .await;
    assert_ack(&res);

    assert_eq!(s.order_status().await, "activated");
    assert_eq!(
        s.history().await,
        vec![
            ("submitted".to_owned(), "api".to_owned()),
            ("activated".to_owned(), "outbound_message".to_owned()),
        ]
    );
    let (org, action, object, record, fields): (
        String,
        String,
        String,
        Option<String>,
        serde_json::Value,
    ) = sqlx::query_as(
        "SELECT organization_id, action_id, object, record_id, fields FROM outbound_messages
         WHERE notification_id = '04l5g0000000001AAA'",
    )
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    assert_eq!(org, ORG);
    assert_eq!(action, "04k5g0000000001AAA");
    assert_eq!(object, "Order");
    assert_eq!(record.as_deref(), Some(ORDER_SF_ID));
    assert_eq!(
        fields,
        json!({"Id": ORDER_SF_ID, "Status": "Activated", "Description": null})
    );
}

#[tokio::test]
async fn a_repeated_notification_is_acknowledged_and_not_processed_again() {
    let s = Setup::new(ApiConfig::default()).await;
    let message = envelope(
        ORG,
        &notification("04l5g0000000001AAA", ORDER_SF_ID, "Activated"),
    );
    assert_ack(&s.post_xml(message.clone()).await);
    // Something later moves the order on; a repeat of the old notification must not undo it.
    let mut conn = s.app.pool.acquire().await.unwrap();
    status::apply(
        &mut conn,
        s.order,
        StatusChange {
            status: "provisioned",
            at: chrono::Utc::now(),
            source: StatusSource::SALESFORCE,
        },
    )
    .await
    .unwrap();

    assert_ack(&s.post_xml(message).await);
    assert_eq!(s.order_status().await, "provisioned");
    assert_eq!(s.app.count("outbound_messages").await, 1);
    let activated = s
        .history()
        .await
        .into_iter()
        .filter(|(status, _)| status == "activated")
        .count();
    assert_eq!(activated, 1);
}

#[tokio::test]
async fn a_message_repeating_an_id_inside_itself_processes_it_once() {
    let s = Setup::new(ApiConfig::default()).await;
    let twice = notification("04lA", ORDER_SF_ID, "Activated")
        + &notification("04lA", ORDER_SF_ID, "Cancelled");
    assert_ack(&s.post_xml(envelope(ORG, &twice)).await);
    assert_eq!(s.order_status().await, "activated");
    assert_eq!(s.app.count("outbound_messages").await, 1);
}

#[tokio::test]
async fn two_notifications_for_one_order_apply_in_document_order() {
    let s = Setup::new(ApiConfig::default()).await;
    // Ids in the other order than the document's: the document decides.
    let both = notification("04lB", ORDER_SF_ID, "Activated")
        + &notification("04lA", ORDER_SF_ID, "Cancelled");
    assert_ack(&s.post_xml(envelope(ORG, &both)).await);
    assert_eq!(s.order_status().await, "cancelled");
    let statuses: Vec<String> = s.history().await.into_iter().map(|(st, _)| st).collect();
    assert_eq!(statuses, ["submitted", "activated", "cancelled"]);
}

#[tokio::test]
async fn the_15_character_org_id_is_accepted() {
    let s = Setup::new(ApiConfig::default()).await;
    let res = s
        .post_xml(envelope(
            &ORG[..15],
            &notification("04l1", ORDER_SF_ID, "Activated"),
        ))
        .await;
    assert_ack(&res);
    assert_eq!(s.order_status().await, "activated");
    // And a 15-character configured id accepts the 18-character form.
    let s = Setup::new(ApiConfig {
        sf_org_id: ORG[..15].to_owned(),
        ..ApiConfig::default()
    })
    .await;
    assert_ack(
        &s.post_xml(envelope(
            ORG,
            &notification("04l1", ORDER_SF_ID, "Activated"),
        ))
        .await,
    );
}

#[tokio::test]
async fn another_org_gets_403_and_nothing_is_stored() {
    let s = Setup::new(ApiConfig::default()).await;
    for org in [
        "00D5g0000000002EAA",
        "00d5g0000000001EAA", // ids are case-sensitive
        "00D5g0000000001EA",
        "",
    ] {
        let res = s
            .post_xml(envelope(
                org,
                &notification("04l1", ORDER_SF_ID, "Activated"),
            ))
            .await;
        let expected = if org.is_empty() { 400 } else { 403 };
        assert_fault(&res, expected, "soapenv:Client");
    }
    s.assert_nothing_stored().await;
}

#[tokio::test]
async fn hostile_or_malformed_messages_get_faults_and_nothing_is_stored() {
    let s = Setup::new(ApiConfig::default()).await;
    let valid = envelope(ORG, &notification("04l1", ORDER_SF_ID, "Activated"));
    let billion_laughs = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
]>
{}"#,
        envelope(ORG, &notification("04l1", ORDER_SF_ID, "&lol2;"))
            .trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
    );
    let external_entity = valid.replacen(
        "<soapenv:Envelope",
        "<!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><soapenv:Envelope",
        1,
    );
    let undeclared_entity = envelope(ORG, &notification("04l1", ORDER_SF_ID, "&xxe;"));
    let cases = [
        ("truncated", valid[..valid.len() / 2].to_owned()),
        ("not XML", "Status=Activated".to_owned()),
        (
            "mismatched tags",
            valid.replace("</sf:Status>", "</sf:Other>"),
        ),
        ("DOCTYPE with entities", billion_laughs),
        ("external entity", external_entity),
        ("undeclared entity", undeclared_entity),
        (
            "wrong namespace",
            valid.replace("http://soap.sforce.com/2005/09/outbound", "urn:other"),
        ),
        ("no notification", envelope(ORG, "")),
    ];
    for (what, body) in cases {
        let res = s.post_xml(body).await;
        let reason = assert_fault(&res, 400, "soapenv:Client");
        assert!(!reason.contains("lollol"), "{what}: {reason}");
    }
    s.assert_nothing_stored().await;
}

#[tokio::test]
async fn more_than_100_notifications_get_413_and_nothing_is_stored() {
    let s = Setup::new(ApiConfig::default()).await;
    let notifications: String = (0..101)
        .map(|i| notification(&format!("04l{i}"), ORDER_SF_ID, "Activated"))
        .collect();
    let res = s.post_xml(envelope(ORG, &notifications)).await;
    assert!(assert_fault(&res, 413, "soapenv:Client").contains("100"));
    s.assert_nothing_stored().await;

    // 100 are fine: one status change, 100 rows.
    let notifications: String = (0..100)
        .map(|i| notification(&format!("04l{i}"), ORDER_SF_ID, "Activated"))
        .collect();
    assert_ack(&s.post_xml(envelope(ORG, &notifications)).await);
    assert_eq!(s.app.count("outbound_messages").await, 100);
    assert_eq!(s.order_status().await, "activated");
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_nothing_is_stored() {
    let s = Setup::new(ApiConfig {
        body_limit: 4096,
        ..ApiConfig::default()
    })
    .await;
    let padding = format!("<!-- {} -->", "x".repeat(5000));
    let body = envelope(
        ORG,
        &(notification("04l1", ORDER_SF_ID, "Activated") + &padding),
    );
    let res = s.post_xml(body).await;
    assert_fault(&res, 413, "soapenv:Client");
    s.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_body_that_is_not_xml_gets_415() {
    let s = Setup::new(ApiConfig::default()).await;
    let valid = envelope(ORG, &notification("04l1", ORDER_SF_ID, "Activated"));
    for content_type in ["application/json", "text/plain", ""] {
        let res = s.post(content_type, valid.clone()).await;
        assert_fault(&res, 415, "soapenv:Client");
    }
    s.assert_nothing_stored().await;
    // Every XML media type Salesforce or a proxy might use is fine.
    assert_ack(&s.post("application/soap+xml", valid).await);
}

#[tokio::test]
async fn the_path_is_configurable_and_needs_no_api_key() {
    let secret_path = "/v1/salesforce/outbound-messages/s3cr3t-Segment";
    let s = Setup::new(ApiConfig {
        outbound_message_path: secret_path.to_owned(),
        ..ApiConfig::default()
    })
    .await;
    let valid = envelope(ORG, &notification("04l1", ORDER_SF_ID, "Activated"));
    let res = s.post_to(PATH, "text/xml", valid.clone()).await;
    assert_eq!(res.status, 404);
    s.assert_nothing_stored().await;
    assert_ack(&s.post_to(secret_path, "text/xml", valid).await);
    assert_eq!(s.order_status().await, "activated");
}

#[tokio::test]
async fn a_database_outage_is_a_server_fault_so_salesforce_retries() {
    let s = Setup::new(ApiConfig::default()).await;
    s.app.pool.close().await;
    let res = s
        .post_xml(envelope(
            ORG,
            &notification("04l1", ORDER_SF_ID, "Activated"),
        ))
        .await;
    assert_fault(&res, 503, "soapenv:Server");
    assert_eq!(res.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn a_notification_for_an_unknown_order_is_stored_and_acknowledged() {
    let s = Setup::new(ApiConfig::default()).await;
    let res = s
        .post_xml(envelope(
            ORG,
            &notification("04l1", "8015g00000000ZZAAA", "Activated"),
        ))
        .await;
    assert_ack(&res);
    assert_eq!(s.app.count("outbound_messages").await, 1);
    assert_eq!(s.order_status().await, "submitted");
}

/// With `SUBSCRIBER_PROVISION_ON_STATUS`, a notification reaching that Status requests
/// fulfilment in the notification's transaction: one request, keyed by the notification id, with
/// its outbox event; the same notification again (Salesforce redelivers) and another one for the
/// same order while the request is open queue nothing more. Other Status values never do.
#[tokio::test]
async fn a_notification_with_the_configured_status_requests_fulfilment_once() {
    let s = Setup::new(ApiConfig {
        provision_on_status: "Activated".into(),
        ..ApiConfig::default()
    })
    .await;
    let requests = || async {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT trigger, idem_key, state FROM fulfilment_requests WHERE order_id = $1",
        )
        .bind(s.order.get())
        .fetch_all(&s.app.pool)
        .await
        .unwrap()
    };
    let outbox = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE event_type = 'fulfilment.requested' AND aggregate_id = $1",
        )
        .bind(s.order.get())
        .fetch_one(&s.app.pool)
        .await
        .unwrap()
    };

    let draft = envelope(
        ORG,
        &notification("04l5g0000000009AAA", ORDER_SF_ID, "Draft"),
    );
    assert_ack(&s.post_xml(draft).await);
    assert!(requests().await.is_empty());

    let activated = envelope(
        ORG,
        &notification("04l5g0000000001AAA", ORDER_SF_ID, "Activated"),
    );
    assert_ack(&s.post_xml(activated.clone()).await);
    assert_eq!(
        requests().await,
        vec![(
            "outbound_message".to_owned(),
            "om:04l5g0000000001AAA".to_owned(),
            "queued".to_owned()
        )]
    );
    assert_eq!(outbox().await, 1);
    assert_eq!(s.order_status().await, "provisioning");

    assert_ack(&s.post_xml(activated).await);
    let again = envelope(
        ORG,
        &notification("04l5g0000000002AAA", ORDER_SF_ID, "Activated"),
    );
    assert_ack(&s.post_xml(again).await);
    assert_eq!(requests().await.len(), 1);
    assert_eq!(outbox().await, 1);
}
