//! `orderbridge dlq` against the real local RabbitMQ: dead letters seeded both ways (published
//! by "the worker" with our headers, and dead-lettered by the broker past the delivery limit),
//! then listed, shown and replayed; a replay signs what it republishes, and does not replay
//! what does not verify unless told to.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use orderbridge_broker::headers;
use orderbridge_broker::{
    BrokerConfig, BrokerError, Keyring, Session, SigningConfig, SigningError, Supervisor, Topology,
};
use orderbridge_cli::dlq::{self, DlqCommand, DlqError};
use secrecy::SecretString;

fn config() -> BrokerConfig {
    BrokerConfig {
        amqp_url: SecretString::from(
            std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
        broker_namespace: format!("t-dlq-{}", uuid::Uuid::now_v7()),
        broker_op_timeout: Duration::from_secs(5),
        broker_reconnect_min: Duration::from_millis(50),
        broker_reconnect_max: Duration::from_secs(1),
        // Small, so the broker dead-letters a rejected message quickly.
        broker_delivery_limit: 1,
        broker_retry_tiers: vec![Duration::from_secs(5)],
        broker_declare_topology: true,
        signing: SigningConfig::with_key(KEY),
    }
}

/// The key the seeded letters are signed with, and the command's.
const KEY: &str = "dlq-test:0123456789abcdef0123456789abcdef";
const OTHER_KEY: &str = "dlq-test-2:fedcba9876543210fedcba9876543210";

fn keyring() -> Keyring {
    Keyring::single(KEY).unwrap()
}

fn replay(id: Option<&str>) -> DlqCommand {
    DlqCommand::Replay {
        id: id.map(str::to_owned),
        all: id.is_none(),
        sign_unverified: false,
    }
}

/// A namespace with its topology declared, and a seeding channel in confirm mode.
struct Env {
    cfg: BrokerConfig,
    t: Topology,
    session: Session,
}

impl Env {
    async fn new() -> Self {
        let cfg = config();
        let sup = Supervisor::new(cfg.clone(), "dlq-test").unwrap();
        let session = sup.try_connect().await.unwrap();
        session
            .channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            t: sup.topology().clone(),
            cfg,
            session,
        }
    }

    fn ch(&self) -> &Channel {
        &self.session.channel
    }

    async fn cleanup(self) {
        self.t.delete(&self.cfg, self.ch()).await.unwrap();
        self.session.close(&self.cfg).await;
    }

    async fn publish(&self, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .ch()
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
        assert_eq!(confirm.take_message(), None, "seed message was unroutable");
    }

    async fn count(&self, queue: &str) -> u32 {
        self.ch()
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Waits until `queue` holds `n` ready messages (quorum queues apply requeues and acks
    /// asynchronously, so counts settle a moment after the command returns).
    async fn expect_count(&self, queue: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.count(queue).await;
            if c == n {
                return;
            }
            assert!(Instant::now() < deadline, "{queue} holds {c}, expected {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes (acks) everything ready on `queue`.
    async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let mut got = Vec::new();
        while let Some(m) = self
            .ch()
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            got.push(m.delivery);
        }
        got
    }

    /// A message the worker gave up on: published to the dead-letter exchange with our headers.
    async fn seed_worker(&self, id: &str) {
        let mut h = FieldTable::default();
        h.insert("aggregate_type".into(), text("order"));
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(5));
        h.insert(headers::REASON.into(), text("permanent"));
        h.insert(headers::ERROR_CODE.into(), text("REQUIRED_FIELD_MISSING"));
        h.insert(
            headers::ERROR_MESSAGE.into(),
            text("Required fields are missing: [Name]"),
        );
        h.insert(
            headers::FIRST_FAILURE_AT.into(),
            text("2026-01-02T03:04:05Z"),
        );
        h.insert(
            headers::LAST_FAILURE_AT.into(),
            text("2026-01-02T03:09:05Z"),
        );
        let props = keyring().sign(event_props(id).with_headers(h), &body(id));
        self.publish(&self.t.dead_letter_exchange, "", &body(id), props)
            .await;
    }

    /// A message the broker dead-letters itself: rejected (requeue) on the work queue until the
    /// delivery limit is exceeded. Expects the work queue otherwise empty.
    async fn seed_broker(&self, id: &str) {
        let before = self.count(&self.t.dead_letter_queue).await;
        self.publish(
            &self.t.events_exchange,
            "order.submitted",
            &body(id),
            keyring().sign(event_props(id), &body(id)),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "never dead-lettered");
            match self
                .ch()
                .basic_get(
                    self.t.sf_sync_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .unwrap()
            {
                Some(m) => self
                    .ch()
                    .basic_reject(
                        m.delivery.delivery_tag,
                        BasicRejectOptions { requeue: true },
                    )
                    .await
                    .unwrap(),
                None => {
                    if self.count(&self.t.dead_letter_queue).await > before {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A status event a consumer rejected, as the broker records it (x-death naming the status
    /// queue); the status queue's own dead-lettering is configured elsewhere.
    async fn seed_status_death(&self, id: &str, queue: &str) {
        let mut death = FieldTable::default();
        death.insert("queue".into(), text(queue));
        death.insert("reason".into(), text("rejected"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("time".into(), AMQPValue::Timestamp(1_767_323_045));
        death.insert("exchange".into(), text(&self.t.status_exchange));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![text("order.sync_status")].into()),
        );
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        h.insert("x-first-death-queue".into(), text(queue));
        h.insert("x-first-death-reason".into(), text("rejected"));
        h.insert(
            "x-first-death-exchange".into(),
            text(&self.t.status_exchange),
        );
        let props = event_props(id)
            .with_type("order.sync_status".into())
            .with_headers(h);
        let props = keyring().sign(props, &body(id));
        self.publish(&self.t.dead_letter_exchange, "", &body(id), props)
            .await;
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn body(id: &str) -> Vec<u8> {
    format!(r#"{{"event_id":"{id}","order":{{"lines":[1,2]}}}}"#).into_bytes()
}

fn event_props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_type("order.submitted".into())
        .with_correlation_id(format!("corr-{id}").into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn run(cfg: &BrokerConfig, cmd: DlqCommand) -> (Result<(), DlqError>, String) {
    let mut out = Vec::new();
    let result = dlq::run(cmd, cfg, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

fn header<'a>(d: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

fn has_failure_history(d: &lapin::message::Delivery) -> bool {
    let Some(h) = d.properties.headers() else {
        return false;
    };
    h.inner().keys().any(|k| {
        let k = k.as_str();
        [
            headers::REASON,
            headers::ERROR_CODE,
            headers::ERROR_MESSAGE,
            headers::FIRST_FAILURE_AT,
            headers::LAST_FAILURE_AT,
        ]
        .contains(&k)
            || k == "x-death"
            || k.starts_with("x-first-death")
            || k.starts_with("x-last-death")
    })
}

fn assert_replayed_copy(d: &lapin::message::Delivery, id: &str) {
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(d.data, body(id));
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        format!("corr-{id}")
    );
    assert_eq!(
        d.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(
        header(d, headers::ATTEMPTS),
        Some(&AMQPValue::LongLongInt(0))
    );
    let Some(AMQPValue::LongString(at)) = header(d, headers::REPLAYED_AT) else {
        panic!("no {} header", headers::REPLAYED_AT);
    };
    let at = chrono::DateTime::parse_from_rfc3339(&at.to_string()).unwrap();
    assert!((chrono::Utc::now() - at.to_utc()).num_seconds().abs() < 60);
    assert!(!has_failure_history(d), "{:?}", d.properties.headers());
    assert_eq!(
        keyring().verify(&d.properties, &d.data),
        Ok("dlq-test"),
        "replayed copies are signed"
    );
}

#[tokio::test]
async fn list_and_show_leave_dead_letters_in_place() {
    let env = Env::new().await;
    let (worker, broker) = (new_id(), new_id());
    env.seed_worker(&worker).await;
    env.seed_broker(&broker).await;
    let anonymous = b"not json \x1b[31m".to_vec();
    env.publish(
        &env.t.dead_letter_exchange,
        "",
        &anonymous,
        BasicProperties::default(),
    )
    .await;
    env.expect_count(&env.t.dead_letter_queue, 3).await;
    assert_eq!(
        env.t.dead_letter_count(&env.cfg, env.ch()).await.unwrap(),
        3,
        "the gauge's count"
    );

    let (r, out) = run(
        &env.cfg,
        DlqCommand::List {
            limit: 50,
            json: false,
        },
    )
    .await;
    r.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID "), "{out}");
    let row = |id: &str| *lines.iter().find(|l| l.starts_with(id)).unwrap();
    let w = row(&worker);
    for cell in [
        "order.submitted",
        &env.t.sf_sync_queue,
        "permanent",
        "REQUIRED_FIELD_MISSING",
        " 5 ",
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:09:05Z",
    ] {
        assert!(w.contains(cell), "{cell} missing in {w}");
    }
    let b = row(&broker);
    assert!(b.contains("delivery_limit"), "{b}");
    assert!(b.contains(&env.t.sf_sync_queue), "{b}");
    let hash_id = lines
        .iter()
        .find_map(|l| l.strip_prefix("body-"))
        .map(|rest| format!("body-{}", rest.split_whitespace().next().unwrap()))
        .expect("no body-hash id");
    assert_eq!(lines.last().unwrap(), &"3 dead letters");
    // Looking is not taking.
    env.expect_count(&env.t.dead_letter_queue, 3).await;

    let (r, out) = run(
        &env.cfg,
        DlqCommand::List {
            limit: 1,
            json: true,
        },
    )
    .await;
    r.unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    let (r, out) = run(
        &env.cfg,
        DlqCommand::List {
            limit: 50,
            json: true,
        },
    )
    .await;
    r.unwrap();
    let objects: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 3);
    let w = objects.iter().find(|o| o["id"] == worker.as_str()).unwrap();
    assert_eq!(w["dead_lettered_by"], "worker");
    assert_eq!(w["attempts"], 5);
    assert_eq!(w["error_message"], "Required fields are missing: [Name]");
    assert_eq!(w["origin_queue"], env.t.sf_sync_queue.as_str());
    let b = objects.iter().find(|o| o["id"] == broker.as_str()).unwrap();
    assert_eq!(b["dead_lettered_by"], "broker");
    assert_eq!(b["reason"], "delivery_limit");
    env.expect_count(&env.t.dead_letter_queue, 3).await;

    let (r, out) = run(&env.cfg, DlqCommand::Show { id: worker.clone() }).await;
    r.unwrap();
    for part in [
        &format!("id:           {worker}"),
        "  type: order.submitted",
        "  delivery_mode: 2 (persistent)",
        "  x-orderbridge-error-code: REQUIRED_FIELD_MISSING",
        "  x-orderbridge-attempts: 5",
        "  aggregate_type: order",
        "  \"order\": {",
    ] {
        assert!(out.contains(part), "{part:?} missing in:\n{out}");
    }
    let (r, out) = run(&env.cfg, DlqCommand::Show { id: broker.clone() }).await;
    r.unwrap();
    for part in [
        "  x-death:\n    -\n",
        "      reason: delivery_limit",
        &format!("      queue: {}", env.t.sf_sync_queue),
        "      routing-keys: [order.submitted]",
    ] {
        assert!(out.contains(part), "{part:?} missing in:\n{out}");
    }
    let (r, out) = run(&env.cfg, DlqCommand::Show { id: hash_id }).await;
    r.unwrap();
    assert!(out.contains("not json \\u{1b}[31m"), "{out}");
    assert!(!out.contains('\x1b'));

    let (r, _) = run(
        &env.cfg,
        DlqCommand::Show {
            id: "nope".to_owned(),
        },
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err, DlqError::NotFound(_)));
    assert_eq!(err.to_string(), "no dead letter with id nope");
    env.expect_count(&env.t.dead_letter_queue, 3).await;
    env.cleanup().await;
}

#[tokio::test]
async fn replay_one_moves_exactly_that_one_to_its_origin() {
    let env = Env::new().await;
    let (a, b, c) = (new_id(), new_id(), new_id());
    env.seed_broker(&c).await;
    env.seed_worker(&a).await;
    env.seed_worker(&b).await;
    env.expect_count(&env.t.dead_letter_queue, 3).await;

    let (r, out) = run(&env.cfg, replay(Some(&a))).await;
    r.unwrap();
    assert!(
        out.contains(&format!("replayed {a} to {}", env.t.sf_sync_queue)),
        "{out}"
    );
    env.expect_count(&env.t.dead_letter_queue, 2).await;
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let got = env.drain(&env.t.sf_sync_queue).await;
    assert_eq!(got.len(), 1);
    assert_replayed_copy(&got[0], &a);
    assert_eq!(
        header(&got[0], "aggregate_type"),
        Some(&text("order")),
        "other headers are kept"
    );

    // A broker dead letter goes back to the queue it died in, without its x-death history.
    let (r, _) = run(&env.cfg, replay(Some(&c))).await;
    r.unwrap();
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let got = env.drain(&env.t.sf_sync_queue).await;
    assert_eq!(got.len(), 1);
    assert_replayed_copy(&got[0], &c);

    // Replaying what is not there is an error and changes nothing.
    let (r, _) = run(&env.cfg, replay(Some(&a))).await;
    assert!(matches!(r, Err(DlqError::NotFound(id)) if id == a));
    env.expect_count(&env.t.dead_letter_queue, 1).await;
    let left = env.drain(&env.t.dead_letter_queue).await;
    assert_eq!(
        left[0].properties.message_id().as_ref().unwrap().as_str(),
        b
    );
    env.cleanup().await;
}

#[tokio::test]
async fn replay_all_empties_the_dead_letter_queue_once() {
    let env = Env::new().await;
    let broker = new_id();
    env.seed_broker(&broker).await;
    let workers: Vec<String> = (0..3).map(|_| new_id()).collect();
    for id in &workers {
        env.seed_worker(id).await;
    }
    let status = new_id();
    env.seed_status_death(&status, &env.t.status_queue).await;
    env.expect_count(&env.t.dead_letter_queue, 5).await;

    let (r, out) = run(&env.cfg, replay(None)).await;
    r.unwrap();
    assert_eq!(out.trim_end(), "replayed 5 dead letters");
    env.expect_count(&env.t.dead_letter_queue, 0).await;
    env.expect_count(&env.t.sf_sync_queue, 4).await;
    let mut got: Vec<String> = env
        .drain(&env.t.sf_sync_queue)
        .await
        .iter()
        .map(|d| {
            assert!(!has_failure_history(d));
            d.properties.message_id().as_ref().unwrap().to_string()
        })
        .collect();
    got.sort();
    let mut want = workers.clone();
    want.push(broker);
    want.sort();
    assert_eq!(got, want, "each once");
    env.expect_count(&env.t.status_queue, 1).await;
    let s = env.drain(&env.t.status_queue).await;
    assert_replayed_copy(&s[0], &status);

    // Nothing left: a second run replays nothing and succeeds.
    let (r, out) = run(&env.cfg, replay(None)).await;
    r.unwrap();
    assert_eq!(out.trim_end(), "replayed 0 dead letters");
    env.cleanup().await;
}

#[tokio::test]
async fn unroutable_replay_is_a_failure_and_the_dead_letter_stays() {
    let env = Env::new().await;
    let gone = new_id();
    let fine = new_id();
    // Its origin queue no longer exists.
    env.seed_status_death(&gone, &format!("{}.gone", env.cfg.broker_namespace))
        .await;
    env.seed_worker(&fine).await;
    env.expect_count(&env.t.dead_letter_queue, 2).await;

    let (r, out) = run(&env.cfg, replay(None)).await;
    let err = r.unwrap_err();
    assert!(
        matches!(
            err,
            DlqError::ReplayFailed {
                failed: 1,
                replayed: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(out.contains("replayed 1 dead letter\n"), "{out}");
    assert!(out.contains(&format!("not replayed: {gone}")), "{out}");
    assert!(err.to_string().contains("unroutable"), "{err}");
    env.expect_count(&env.t.dead_letter_queue, 1).await;
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let left = env.drain(&env.t.dead_letter_queue).await;
    assert_eq!(
        left[0].properties.message_id().as_ref().unwrap().as_str(),
        gone
    );
    env.cleanup().await;
}

/// A letter the worker dead-lettered because its signature did not verify: `body` with `props`
/// as they came, plus the failure headers.
async fn seed_bad_signature(env: &Env, id: &str, body: &[u8], props: BasicProperties) {
    let mut h = props.headers().clone().unwrap_or_default();
    h.insert(headers::REASON.into(), text("bad_signature"));
    h.insert(headers::ERROR_CODE.into(), text("SIGNATURE_MISSING"));
    h.insert(headers::ORIGIN_QUEUE.into(), text(&env.t.sf_sync_queue));
    let props = props.with_message_id(id.into()).with_headers(h);
    env.publish(&env.t.dead_letter_exchange, "", body, props)
        .await;
}

#[tokio::test]
async fn replay_refuses_letters_that_do_not_verify_unless_vouched_for() {
    let env = Env::new().await;
    let (good, forged, changed) = (new_id(), new_id(), new_id());
    env.seed_worker(&good).await;
    // Never signed.
    seed_bad_signature(&env, &forged, &body(&forged), event_props(&forged)).await;
    // Signed, then the body changed.
    let signed = keyring().sign(event_props(&changed), &body(&changed));
    seed_bad_signature(&env, &changed, b"{\"total\":\"0.01\"}", signed).await;
    env.expect_count(&env.t.dead_letter_queue, 3).await;

    let (r, out) = run(&env.cfg, replay(None)).await;
    let err = r.unwrap_err();
    assert!(
        matches!(
            err,
            DlqError::ReplayFailed {
                failed: 2,
                replayed: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        out.contains(&format!(
            "not replayed: {forged} to {}: its signature does not verify (SIGNATURE_MISSING",
            env.t.sf_sync_queue
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "not replayed: {changed} to {}: its signature does not verify (SIGNATURE_MISMATCH",
            env.t.sf_sync_queue
        )),
        "{out}"
    );
    assert!(out.contains("--sign-unverified"), "{out}");
    env.expect_count(&env.t.dead_letter_queue, 2).await;
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let got = env.drain(&env.t.sf_sync_queue).await;
    assert_replayed_copy(&got[0], &good);

    // The operator looked at it and vouches for it: signed with the command's key.
    let (r, out) = run(
        &env.cfg,
        DlqCommand::Replay {
            id: Some(forged.clone()),
            all: false,
            sign_unverified: true,
        },
    )
    .await;
    r.unwrap();
    assert!(out.contains(&format!("replayed {forged}")), "{out}");
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let got = env.drain(&env.t.sf_sync_queue).await;
    assert_replayed_copy(&got[0], &forged);
    env.expect_count(&env.t.dead_letter_queue, 1).await;
    env.cleanup().await;
}

/// Dead letters outlive keys: one signed with the key being retired is replayed signed with the
/// current key, so it verifies once the old key is dropped.
#[tokio::test]
async fn replay_re_signs_letters_of_a_previous_key_with_the_current_one() {
    let env = Env::new().await;
    let id = new_id();
    let old = Keyring::single(OTHER_KEY).unwrap();
    env.publish(
        &env.t.dead_letter_exchange,
        "",
        &body(&id),
        old.sign(event_props(&id), &body(&id)),
    )
    .await;
    env.expect_count(&env.t.dead_letter_queue, 1).await;

    // Not among the accepted keys: refused.
    let (r, out) = run(&env.cfg, replay(Some(&id))).await;
    assert!(matches!(r, Err(DlqError::ReplayFailed { failed: 1, .. })));
    assert!(out.contains("SIGNATURE_UNKNOWN_KEY"), "{out}");
    env.expect_count(&env.t.dead_letter_queue, 1).await;

    // During the rotation it is a previous key: accepted, and the copy carries the new one.
    let mut rotating = env.cfg.clone();
    rotating.signing.broker_signing_keys_previous = Some(SecretString::from(OTHER_KEY));
    let (r, _) = run(&rotating, replay(Some(&id))).await;
    r.unwrap();
    env.expect_count(&env.t.sf_sync_queue, 1).await;
    let got = env.drain(&env.t.sf_sync_queue).await;
    assert_replayed_copy(&got[0], &id);
    env.expect_count(&env.t.dead_letter_queue, 0).await;
    env.cleanup().await;
}

#[tokio::test]
async fn replay_needs_the_signing_key_and_touches_nothing_without_it() {
    let env = Env::new().await;
    let id = new_id();
    env.seed_worker(&id).await;
    env.expect_count(&env.t.dead_letter_queue, 1).await;
    let mut unkeyed = env.cfg.clone();
    unkeyed.signing = SigningConfig::default();
    let (r, _) = run(&unkeyed, replay(None)).await;
    let err = r.unwrap_err();
    assert!(
        matches!(
            err,
            DlqError::Broker(BrokerError::Signing(SigningError::Missing))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("BROKER_SIGNING_KEY"), "{err}");
    // Looking needs no key.
    let (r, out) = run(
        &unkeyed,
        DlqCommand::List {
            limit: 5,
            json: false,
        },
    )
    .await;
    r.unwrap();
    assert!(out.contains(&id), "{out}");
    env.expect_count(&env.t.dead_letter_queue, 1).await;
    env.expect_count(&env.t.sf_sync_queue, 0).await;
    env.cleanup().await;
}

#[tokio::test]
async fn list_of_an_empty_dead_letter_queue_returns_at_once() {
    let env = Env::new().await;
    let started = Instant::now();
    let (r, out) = run(
        &env.cfg,
        DlqCommand::List {
            limit: 50,
            json: false,
        },
    )
    .await;
    r.unwrap();
    assert_eq!(out, "no dead letters\n");
    let (r, out) = run(
        &env.cfg,
        DlqCommand::List {
            limit: 50,
            json: true,
        },
    )
    .await;
    r.unwrap();
    assert_eq!(out, "");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        env.t.dead_letter_count(&env.cfg, env.ch()).await.unwrap(),
        0
    );
    env.cleanup().await;
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: DlqCommand,
}

#[test]
fn replay_takes_an_id_or_all_but_not_both() {
    let parse = |args: &[&str]| Cli::try_parse_from([&["dlq"], args].concat()).map(|c| c.cmd);
    assert_eq!(parse(&["replay", "e1"]).unwrap(), replay(Some("e1")));
    assert_eq!(parse(&["replay", "--all"]).unwrap(), replay(None));
    assert_eq!(
        parse(&["replay", "--all", "--sign-unverified"]).unwrap(),
        DlqCommand::Replay {
            id: None,
            all: true,
            sign_unverified: true
        }
    );
    assert!(parse(&["replay"]).is_err());
    assert!(parse(&["replay", "e1", "--all"]).is_err());
    assert_eq!(
        parse(&["list"]).unwrap(),
        DlqCommand::List {
            limit: 50,
            json: false
        }
    );
    assert!(parse(&["show"]).is_err());
}
