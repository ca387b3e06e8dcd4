//! Outbound messages: a Flow rule's SOAP envelope reaching a small HTTP endpoint (parsed here
//! with quick-xml, as a receiver would), retries until `<Ack>true</Ack>` (faults, `false`, a
//! refused connection), giving up into the failed list, and envelopes of at most 100
//! notifications.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::Org;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;
use reqwest::Method;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use sf_emulator::config::FlowsAtStart;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
const NACK: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>false</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
const FAULT: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>busy</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

/// One POST the endpoint received.
struct Received {
    content_type: String,
    soap_action: String,
    body: String,
}

#[derive(Clone)]
struct EndpointState {
    tx: mpsc::UnboundedSender<Received>,
    /// Answers to give, in order; then Ack.
    script: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
}

/// A receiver of outbound messages on its own port.
struct Endpoint {
    url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    _server: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(script: Vec<(u16, &'static str)>) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    fn on(listener: TcpListener, script: Vec<(u16, &'static str)>) -> Self {
        let url = format!("http://{}/om", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let state = EndpointState {
            tx,
            script: Arc::new(Mutex::new(script.into())),
        };
        let app = axum::Router::new()
            .route("/om", post(receive))
            .with_state(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            rx,
            _server: server,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("no outbound message within 20 s")
            .unwrap()
    }
}

async fn receive(
    State(s): State<EndpointState>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let _ = s.tx.send(Received {
        content_type: header("content-type"),
        soap_action: header("soapaction"),
        body,
    });
    let (status, answer) = s.script.lock().unwrap().pop_front().unwrap_or((200, ACK));
    (StatusCode::from_u16(status).unwrap(), answer)
}

#[derive(Debug, Default)]
struct Envelope {
    org_id: String,
    action_id: String,
    session_nil: bool,
    enterprise_url: String,
    partner_url: String,
    notifications: Vec<Note>,
}

#[derive(Debug, Default, Clone)]
struct Note {
    id: String,
    sobject_type: String,
    fields: BTreeMap<String, String>,
}

/// Parses an envelope with namespaces resolved, checking that the elements are in the
/// namespaces Salesforce uses.
fn parse(xml: &str) -> Envelope {
    let mut reader = NsReader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut env = Envelope::default();
    loop {
        let (ns, event) = reader.read_resolved_event().unwrap();
        let ns = match ns {
            ResolveResult::Bound(Namespace(n)) => Some(n.to_owned()),
            _ => None,
        };
        match event {
            Event::Start(e) => {
                let local = e.local_name().as_ref().to_owned();
                let parent = path.last().map(String::as_str).unwrap_or_default();
                match (parent, local.as_str()) {
                    (_, "notifications") => assert_eq!(ns.as_deref(), Some(OUTBOUND_NS)),
                    ("notifications", "Notification") => {
                        assert_eq!(ns.as_deref(), Some(OUTBOUND_NS));
                        env.notifications.push(Note::default());
                    }
                    ("Notification", "sObject") => {
                        assert_eq!(ns.as_deref(), Some(OUTBOUND_NS));
                        let ty = e.try_get_attribute("xsi:type").unwrap().unwrap();
                        env.notifications.last_mut().unwrap().sobject_type = ty.value.to_string();
                    }
                    ("sObject", _) => assert_eq!(ns.as_deref(), Some(SOBJECT_NS), "{local}"),
                    _ => {}
                }
                path.push(local);
                text.clear();
            }
            Event::Empty(e) if e.local_name().as_ref() == "SessionId" => {
                let nil = e.try_get_attribute("xsi:nil").unwrap().unwrap();
                env.session_nil = nil.value == "true";
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => match r.resolve_char_ref().unwrap() {
                Some(c) => text.push(c),
                None => text.push_str(quick_xml::escape::resolve_predefined_entity(&r).unwrap()),
            },
            Event::End(_) => {
                let local = path.pop().unwrap();
                let parent = path.last().map(String::as_str).unwrap_or_default();
                let value = std::mem::take(&mut text);
                match (parent, local.as_str()) {
                    ("notifications", "OrganizationId") => env.org_id = value,
                    ("notifications", "ActionId") => env.action_id = value,
                    ("notifications", "EnterpriseUrl") => env.enterprise_url = value,
                    ("notifications", "PartnerUrl") => env.partner_url = value,
                    ("Notification", "Id") => env.notifications.last_mut().unwrap().id = value,
                    ("sObject", field) => {
                        env.notifications
                            .last_mut()
                            .unwrap()
                            .fields
                            .insert(field.to_owned(), value);
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    env
}

fn config() -> EmulatorConfig {
    EmulatorConfig {
        flows: FlowsAtStart::None,
        om_retry_base: Duration::from_millis(20),
        om_retry_cap: Duration::from_millis(200),
        ..EmulatorConfig::ephemeral()
    }
}

fn om_rule(name: &str, url: &str, fields: Value) -> Value {
    json!({
        "name": name,
        "sobject": "Order",
        "when": {"field": "Status", "equals": "Activated"},
        "outbound_message": {"url": url, "fields": fields}
    })
}

async fn status(org: &Org) -> Value {
    let r = org.admin(Method::GET, "/outbound-messages", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits (polling the admin API) until `done` holds for the status.
async fn wait_for(org: &Org, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(org).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_activation_posts_a_soap_envelope() {
    let mut endpoint = Endpoint::start(vec![]).await;
    let org = Org::start_with(config()).await;
    org.add_flow(om_rule(
        "om-activate",
        &endpoint.url,
        json!(["Status", "External_Id__c", "Description", "PoNumber"]),
    ))
    .await;
    let tricky = "Crates <&> \"quoted\" 'single' ünïcödé\nline two";
    let order = org
        .draft_order("ORD-OM1", json!({"Description": tricky}))
        .await;
    org.set_status(&order, "Activated").await;

    let got = endpoint.next().await;
    assert_eq!(got.content_type, "text/xml; charset=utf-8");
    assert_eq!(got.soap_action, "\"\"");
    let env = parse(&got.body);
    assert_eq!(env.org_id, org.emu.state.org_id);
    assert_eq!(env.org_id.len(), 18);
    assert!(env.action_id.starts_with("04k"), "{}", env.action_id);
    assert!(env.session_nil);
    assert!(
        env.enterprise_url
            .starts_with(&format!("{}/services/Soap/c/", org.base()))
    );
    assert!(
        env.partner_url
            .starts_with(&format!("{}/services/Soap/u/", org.base()))
    );
    assert_eq!(env.notifications.len(), 1);
    let note = &env.notifications[0];
    assert!(
        note.id.starts_with("04l") && note.id.len() == 18,
        "{}",
        note.id
    );
    assert_eq!(note.sobject_type, "sf:Order");
    assert_eq!(note.fields["Id"], order);
    assert_eq!(note.fields["Status"], "Activated");
    assert_eq!(note.fields["External_Id__c"], "ORD-OM1");
    assert_eq!(note.fields["Description"], tricky);
    assert!(
        !note.fields.contains_key("PoNumber"),
        "null fields are left out"
    );

    let s = wait_for(&org, "the delivery", |s| s["delivered"] == json!(1)).await;
    assert_eq!(s["pending"], json!(0));
    assert_eq!(s["endpoints"][&endpoint.url]["last_status"], json!(200));
    // Still Activated: no second message.
    org.set_status(&order, "Activated").await;
    assert_eq!(status(&org).await["pending"], json!(0));
}

#[tokio::test]
async fn unacknowledged_messages_are_retried_until_acknowledged() {
    let mut endpoint = Endpoint::start(vec![(500, FAULT), (200, NACK), (200, "OK")]).await;
    let org = Org::start_with(config()).await;
    org.add_flow(om_rule("om-retry", &endpoint.url, json!(["Status"])))
        .await;
    let order = org.draft_order("ORD-OM2", json!({})).await;
    org.set_status(&order, "Activated").await;

    let mut ids = Vec::new();
    for _ in 0..4 {
        let env = parse(&endpoint.next().await.body);
        assert_eq!(env.notifications.len(), 1);
        assert_eq!(env.notifications[0].fields["Id"], order);
        ids.push(env.notifications[0].id.clone());
    }
    // The same notification each time, so a receiver can dedupe on its Id.
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let s = wait_for(&org, "the acknowledgement", |s| s["delivered"] == json!(1)).await;
    assert_eq!(s["attempts"], json!(4));
    assert_eq!(s["endpoints"][&endpoint.url]["failures"], json!(3));
    assert_eq!(s["failed"], json!([]));
}

#[tokio::test]
async fn a_message_waits_for_an_endpoint_that_is_down() {
    // A port nobody listens on (yet).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/om");
    let org = Org::start_with(config()).await;
    org.add_flow(om_rule("om-down", &url, json!(["Status"])))
        .await;
    let order = org.draft_order("ORD-OM3", json!({})).await;
    org.set_status(&order, "Activated").await;

    let s = wait_for(&org, "two refused attempts", |s| {
        s["endpoints"][&url]["failures"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(s["delivered"], json!(0));
    assert_eq!(s["pending"], json!(1));
    assert!(s["endpoints"][&url]["last_status"].is_null());
    assert!(
        !s["queue"][0]["last_error"].as_str().unwrap().is_empty(),
        "{s}"
    );

    // The endpoint comes back: the next retry is delivered.
    let mut endpoint = Endpoint::on(TcpListener::bind(addr).await.unwrap(), vec![]);
    let env = parse(&endpoint.next().await.body);
    assert_eq!(env.notifications[0].fields["Id"], order);
    wait_for(&org, "the delivery", |s| s["delivered"] == json!(1)).await;
}

#[tokio::test]
async fn a_message_goes_to_the_failed_list_after_the_give_up_time() {
    let mut endpoint = Endpoint::start(vec![(500, FAULT)]).await;
    let org = Org::start_with(EmulatorConfig {
        om_give_up: Duration::ZERO,
        ..config()
    })
    .await;
    org.add_flow(om_rule("om-give-up", &endpoint.url, json!([])))
        .await;
    let order = org.draft_order("ORD-OM4", json!({})).await;
    org.set_status(&order, "Activated").await;
    let env = parse(&endpoint.next().await.body);
    let s = wait_for(&org, "the failed list", |s| s["failed_total"] == json!(1)).await;
    assert_eq!(s["pending"], json!(0));
    assert_eq!(s["failed"][0]["id"], json!(env.notifications[0].id));
    assert_eq!(s["failed"][0]["record_id"], json!(order));
    assert_eq!(s["failed"][0]["rule"], json!("om-give-up"));
    assert!(
        s["failed"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{s}"
    );
    // The admin API can empty it.
    let r = org.admin(Method::DELETE, "/outbound-messages", None).await;
    assert_eq!(r.body["failed_total"], json!(0));
}

#[tokio::test]
async fn notifications_are_sent_at_most_100_per_envelope() {
    let mut endpoint = Endpoint::start(vec![]).await;
    let org = Org::start_with(config()).await;
    org.add_flow(om_rule("om-bulk", &endpoint.url, json!(["Status"])))
        .await;
    let acc = org.account("Bulk", "ACC-BULK").await;
    let drafts: Vec<Value> = (0..101)
        .map(|_| json!({"attributes": {"type": "Order"}, "AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Draft"}))
        .collect();
    let r = org
        .call(
            Method::POST,
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": drafts})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<String> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 101);
    // One request activates all 101: their notifications are due together.
    let activate: Vec<Value> = ids
        .iter()
        .map(|id| json!({"attributes": {"type": "Order"}, "id": id, "Status": "Activated"}))
        .collect();
    let r = org
        .call(
            Method::PATCH,
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": activate})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let mut sizes = Vec::new();
    let mut notes = BTreeSet::new();
    let mut records = BTreeSet::new();
    while records.len() < 101 {
        let env = parse(&endpoint.next().await.body);
        sizes.push(env.notifications.len());
        for n in env.notifications {
            notes.insert(n.id);
            records.insert(n.fields["Id"].clone());
        }
    }
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 100]);
    assert_eq!(notes.len(), 101);
    assert_eq!(records, ids.into_iter().collect::<BTreeSet<_>>());
    let s = wait_for(&org, "all deliveries", |s| s["delivered"] == json!(101)).await;
    assert_eq!(s["envelopes_delivered"], json!(2));
}
