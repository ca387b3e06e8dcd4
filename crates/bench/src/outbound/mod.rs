//! `outbound`: the throughput of order-api's Salesforce outbound-message endpoint (issue 14:
//! ≥ 1,000 notifications/s with 100 notifications per envelope, each stored durably before the
//! Ack). `--orders` orders are posted and synced through the pipeline first (a notification
//! only has effects on an order that has a Salesforce id); then `--envelopes` SOAP envelopes of
//! `--per-envelope` notifications each, built as Salesforce sends them, are posted closed loop
//! on `--connections` connections. Measured: notifications/s from the first send to the last
//! Ack, and each envelope's latency (send → Ack read).
//!
//! Notification `j` (counted over the whole run) is about order `j % orders` and is that
//! order's `k = j / orders`-th: `Status` alternates `Activated` / `Draft` (the default status map
//! makes them `activated` / `submitted`), so every notification really changes its order. The
//! endpoint judges a status by when the message was received (a status decided before the
//! current one is dropped as stale), so an envelope is sent only once every envelope holding
//! the previous notification of its orders was answered: each order's changes then arrive in
//! order and every one is applied. With `--orders` ≥ `--per-envelope` × `--connections` (the
//! defaults) that ordering costs nothing; the report counts the envelopes that had to wait.
//!
//! Checked (exit 1 when any fails): every envelope answered 200 `<Ack>true</Ack>`; every
//! notification id stored exactly once (`outbound_messages`); `--duplicates` envelopes posted
//! again are acknowledged and change nothing (no row, no history entry, no order version); every
//! order's `outbound_message` history is exactly the statuses its notifications carried, in
//! order, and its status the last of them. `report.rs` holds the table.

mod report;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use orderbridge_domain::StatusSource;
use tokio::sync::watch;
use uuid::Uuid;

use crate::common::lock;
use crate::inbound::{Target, api_status, changes_of, post_and_sync, salesforce_status};
use crate::procfs;
use crate::stack::{Stack, StackArgs, with_stack};

/// The org the run's order-api accepts (the emulator's, order-api's default `SF_ORG_ID`); set
/// for the run unless `--env SF_ORG_ID=…` says otherwise.
const ORG_ID: &str = "00D5g0000000001EAA";
/// order-api's default `ORDER_API_OUTBOUND_MESSAGE_PATH`.
const DEFAULT_PATH: &str = "/v1/salesforce/outbound-messages";
/// The outbound message definition every envelope names (`04k…`).
const ACTION_ID: &str = "04k5g0000000001AAA";
/// What order-api answers when every notification is stored.
const ACK: &str = "<Ack>true</Ack>";
/// One envelope's send → answer bound; a slower answer counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct OutboundArgs {
    /// Orders posted and synced first; the notifications cycle through them.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub orders: u32,
    /// SOAP envelopes posted (closed loop).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub envelopes: u32,
    /// Notifications per envelope (Salesforce sends at most 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub per_envelope: u32,
    /// Concurrent connections, each posting its next envelope when the last one is answered.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,
    /// Envelopes posted a second time after the run (Salesforce's redeliveries): each must be
    /// acknowledged and change nothing.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..))]
    pub duplicates: u32,
    #[command(flatten)]
    pub stack: StackArgs,
}

impl OutboundArgs {
    fn notifications(&self) -> usize {
        self.envelopes as usize * self.per_envelope as usize
    }
}

/// The closed-loop phase as measured.
#[derive(Debug, Default)]
pub struct Live {
    /// Send → answer read, ms, one per envelope answered.
    pub latency_ms: Vec<f64>,
    /// Answers by HTTP status (`0`: no answer).
    pub statuses: BTreeMap<u16, u64>,
    /// Envelopes not answered 200 `<Ack>true</Ack>`, described (the first few).
    pub not_acked: Vec<String>,
    pub not_acked_count: usize,
    /// Envelopes that waited for an earlier one (the per-order ordering).
    pub waited: usize,
    /// First send → last answer.
    pub seconds: f64,
}

/// The redelivery phase: envelopes posted again.
#[derive(Debug, Default)]
pub struct Duplicates {
    pub posted: usize,
    pub not_acked: Vec<String>,
    /// What changed while they were processed (all should be 0).
    pub new_rows: i64,
    pub new_history: i64,
    pub version_delta: i64,
}

/// The end-of-run state.
#[derive(Debug, Default)]
pub struct Checks {
    pub expected: usize,
    /// Rows in `outbound_messages`, and how many of the run's notification ids are among them.
    pub rows: i64,
    pub ids_found: i64,
    /// Orders whose `outbound_message` history or status is not what their notifications said.
    pub mismatched: Vec<String>,
    /// History entries written by the notifications.
    pub history_entries: i64,
}

pub struct Measured<'a> {
    pub args: &'a OutboundArgs,
    pub live: Live,
    pub duplicates: Duplicates,
    pub checks: Checks,
    pub rss: Vec<(String, Option<u64>)>,
    pub load: [Option<[f64; 3]>; 2],
    pub cpu: procfs::CpuUsage,
}

pub async fn run(args: OutboundArgs) -> Result<bool> {
    if args.duplicates > args.envelopes {
        bail!("--duplicates cannot exceed --envelopes");
    }
    with_stack(args.stack.clone(), "outbound", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &OutboundArgs) -> Result<bool> {
    // Status effects only: a fulfilment trigger would move the activated orders on to
    // `provisioning` (`fulfilment` measures that loop). The org is set so the envelopes name
    // the one order-api accepts. Both ahead of the user's own `--env`, which wins.
    for (k, v) in [
        ("SUBSCRIBER_PROVISION_ON_STATUS", ""),
        ("SF_ORG_ID", ORG_ID),
    ] {
        stack.args.env.insert(0, (k.to_owned(), v.to_owned()));
    }
    let org = stack.setting("SF_ORG_ID").unwrap_or(ORG_ID).to_owned();
    let path = stack
        .setting("ORDER_API_OUTBOUND_MESSAGE_PATH")
        .unwrap_or(DEFAULT_PATH)
        .to_owned();
    let (key, api) = stack.start_pipeline().await?;
    let targets = post_and_sync(stack, &api, &key, args.orders as usize).await?;
    let endpoint = format!("{api}{path}");
    let emulator = stack.emulator()?.to_owned();
    let bodies: Vec<String> = (0..args.envelopes as usize)
        .map(|e| envelope(&org, &emulator, &targets, e, args.per_envelope as usize))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.connections as usize)
        .build()?;

    let load_before = procfs::loadavg();
    let cpu_before = procfs::CpuSnapshot::take(&stack.pids());
    let live = post_all(args, &http, &endpoint, &bodies, targets.len()).await;
    let cpu = cpu_before.usage_until(&procfs::CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    stack.check_running()?;

    let checks = check_state(stack, args, &targets).await?;
    let duplicates = redeliver(stack, args, &http, &endpoint, &bodies).await?;
    stack.scrape_metrics().await;
    let measured = Measured {
        args,
        live,
        duplicates,
        checks,
        rss: stack.peak_rss_kib(),
        load: [load_before, load_after],
        cpu,
    };
    report::finish(stack, &measured)
}

/// The run's `j`-th notification id: 18 characters like Salesforce's (`04l…`), unique in the run.
fn notification_id(j: usize) -> String {
    format!("04l{j:012}AAA")
}

/// Envelope `e` as Salesforce writes it (see the emulator's `outbound/envelope.rs`): the SOAP 1.1
/// envelope, the message's OrganizationId, ActionId, a nil SessionId, the enterprise and partner
/// URLs, and its `per` notifications, each an `sf:Order` with `Id` and `Status`. Every value is
/// the bench's own (alphanumeric ids, fixed statuses, the emulator's URL), so none needs escaping.
fn envelope(org: &str, instance: &str, targets: &[Target], e: usize, per: usize) -> String {
    let org15 = org.get(..15).unwrap_or(org);
    let mut out = String::with_capacity(700 + per * 260);
    out.push_str(concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
        r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
        r#"<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    ));
    let _ = write!(
        out,
        "<OrganizationId>{org}</OrganizationId><ActionId>{ACTION_ID}</ActionId>\
         <SessionId xsi:nil=\"true\"/>\
         <EnterpriseUrl>{instance}/services/Soap/c/62.0/{org15}</EnterpriseUrl>\
         <PartnerUrl>{instance}/services/Soap/u/62.0/{org15}</PartnerUrl>"
    );
    for j in e * per..(e + 1) * per {
        let (o, k) = (j % targets.len(), j / targets.len());
        let _ = write!(
            out,
            "<Notification><Id>{}</Id><sObject xsi:type=\"sf:Order\" \
             xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\"><sf:Id>{}</sf:Id>\
             <sf:Status>{}</sf:Status></sObject></Notification>",
            notification_id(j),
            targets[o].salesforce_id,
            salesforce_status(k)
        );
    }
    out.push_str("</notifications></soapenv:Body></soapenv:Envelope>");
    out
}

/// The earlier envelopes that hold the previous notification of an order in envelope `e` (the
/// notifications `j - orders` of its `j`), which must be answered before `e` is sent. Empty
/// when none does (the first round, or an order repeated inside `e` itself: those apply in
/// document order).
fn waits_for(e: usize, per: usize, orders: usize) -> Option<RangeInclusive<usize>> {
    let first = (e * per).max(orders);
    let last = (e + 1) * per - 1;
    if first > last || e == 0 {
        return None;
    }
    let lo = (first - orders) / per;
    let hi = ((last - orders) / per).min(e - 1);
    (lo <= hi).then_some(lo..=hi)
}

/// One envelope's outcome: its answer's status (`0`: none), the latency in ms, and why it was
/// not the Ack (`None` when it was).
struct Answer {
    status: u16,
    ms: f64,
    error: Option<String>,
}

async fn post_one(http: &reqwest::Client, endpoint: &str, body: &str) -> Answer {
    let sent = Instant::now();
    let result = http
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header("SOAPAction", "\"\"")
        .body(body.to_owned())
        .send()
        .await;
    let (status, text) = match result {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.map_err(|e| e.to_string()))
        }
        Err(e) => (0, Err(e.to_string())),
    };
    let ms = sent.elapsed().as_secs_f64() * 1e3;
    let acked = status == 200 && text.as_deref().is_ok_and(|t| t.contains(ACK));
    let error = (!acked).then(|| match text {
        Ok(t) => format!(
            "HTTP {status}: {}",
            orderbridge_domain::text::truncate(&t, 300)
        ),
        Err(e) => format!("HTTP {status}: {e}"),
    });
    Answer { status, ms, error }
}

/// Posts every envelope, closed loop on `--connections` tasks taking the next envelope in
/// order; each first waits for the envelopes it follows (see [`waits_for`]).
async fn post_all(
    args: &OutboundArgs,
    http: &reqwest::Client,
    endpoint: &str,
    bodies: &[String],
    orders: usize,
) -> Live {
    let per = args.per_envelope as usize;
    let answered: Vec<watch::Sender<bool>> = (0..bodies.len())
        .map(|_| watch::Sender::new(false))
        .collect();
    let next = AtomicUsize::new(0);
    let waited = AtomicUsize::new(0);
    let live = Mutex::new(Live::default());
    let started = Instant::now();
    let worker = || async {
        loop {
            let e = next.fetch_add(1, Ordering::Relaxed);
            let Some(body) = bodies.get(e) else { break };
            if let Some(earlier) = waits_for(e, per, orders) {
                let mut did_wait = false;
                for d in earlier {
                    let mut rx = answered[d].subscribe();
                    if !*rx.borrow() {
                        did_wait = true;
                        // Every earlier envelope is being posted by another task, which marks
                        // it answered whatever happens; an error here means it is gone.
                        let _ = rx.wait_for(|done| *done).await;
                    }
                }
                if did_wait {
                    waited.fetch_add(1, Ordering::Relaxed);
                }
            }
            let answer = post_one(http, endpoint, body).await;
            answered[e].send_replace(true);
            let mut live = lock(&live);
            *live.statuses.entry(answer.status).or_insert(0) += 1;
            live.latency_ms.push(answer.ms);
            if let Some(error) = answer.error {
                live.not_acked_count += 1;
                if live.not_acked.len() < 10 {
                    live.not_acked.push(format!("envelope {e}: {error}"));
                }
            }
        }
    };
    futures_util::future::join_all((0..args.connections).map(|_| worker())).await;
    let mut live = live
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    live.seconds = started.elapsed().as_secs_f64();
    live.waited = waited.into_inner();
    live
}

/// Counts the stored rows and compares every order's `outbound_message` history and status
/// with what its notifications said.
async fn check_state(stack: &Stack, args: &OutboundArgs, targets: &[Target]) -> Result<Checks> {
    let pool = stack.pool()?;
    let total = args.notifications();
    let ids: Vec<String> = (0..total).map(notification_id).collect();
    let mut checks = Checks {
        expected: total,
        ..Checks::default()
    };
    checks.rows = sqlx::query_scalar("SELECT count(*) FROM outbound_messages")
        .fetch_one(pool)
        .await?;
    checks.ids_found = sqlx::query_scalar(
        "SELECT count(*) FROM outbound_messages WHERE notification_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;

    let mut history: HashMap<Uuid, Vec<String>> = HashMap::new();
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT order_id, status FROM order_status_history WHERE source = $1 ORDER BY id",
    )
    .bind(StatusSource::OUTBOUND_MESSAGE)
    .fetch_all(pool)
    .await?;
    checks.history_entries = rows.len() as i64;
    for (order, status) in rows {
        history.entry(order).or_default().push(status);
    }
    let statuses: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    for (o, t) in targets.iter().enumerate() {
        let n = changes_of(o, total, targets.len());
        let want: Vec<&str> = (0..n).map(api_status).collect();
        let got: Vec<&str> = history
            .get(&t.id)
            .map(|h| h.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let status = statuses.get(&t.id).map_or("?", String::as_str);
        let status_ok = want.last().is_none_or(|last| *last == status);
        if got != want || !status_ok {
            checks.mismatched.push(format!(
                "{}: status {status}, {} outbound-message history entries (want {}, ending {})",
                t.id,
                got.len(),
                want.len(),
                want.last().unwrap_or(&"-")
            ));
        }
    }
    Ok(checks)
}

/// `(rows, history entries, sum of versions)`: what a redelivery must not change.
async fn footprint(stack: &Stack) -> Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbound_messages),
                (SELECT count(*) FROM order_status_history),
                (SELECT coalesce(sum(version), 0)::bigint FROM orders)",
    )
    .fetch_one(stack.pool()?)
    .await
    .context("cannot read the footprint")
}

/// Posts `--duplicates` envelopes again (spread over the run) and measures what they changed.
async fn redeliver(
    stack: &Stack,
    args: &OutboundArgs,
    http: &reqwest::Client,
    endpoint: &str,
    bodies: &[String],
) -> Result<Duplicates> {
    let n = args.duplicates as usize;
    let mut duplicates = Duplicates {
        posted: n,
        ..Duplicates::default()
    };
    if n == 0 {
        return Ok(duplicates);
    }
    let before = footprint(stack).await?;
    let picks: Vec<usize> = (0..n).map(|i| i * bodies.len() / n).collect();
    let answers: Vec<(usize, Answer)> = futures_util::stream::iter(picks)
        .map(|e| async move { (e, post_one(http, endpoint, &bodies[e]).await) })
        .buffer_unordered(args.connections as usize)
        .collect()
        .await;
    for (e, answer) in answers {
        if let Some(error) = answer.error {
            duplicates.not_acked.push(format!("envelope {e}: {error}"));
        }
    }
    let after = footprint(stack).await?;
    duplicates.new_rows = after.0 - before.0;
    duplicates.new_history = after.1 - before.1;
    duplicates.version_delta = after.2 - before.2;
    Ok(duplicates)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_waits_for_the_previous_notification_of_its_orders() {
        // 1,000 orders, 100 per envelope: envelope 10 repeats envelope 0's orders.
        assert_eq!(waits_for(0, 100, 1000), None);
        assert_eq!(waits_for(9, 100, 1000), None);
        assert_eq!(waits_for(10, 100, 1000), Some(0..=0));
        assert_eq!(waits_for(25, 100, 1000), Some(15..=15));
        // 150 orders: envelope 1 (100..200) follows envelope 0 (notifications 0..50).
        assert_eq!(waits_for(1, 100, 150), Some(0..=0));
        assert_eq!(waits_for(2, 100, 150), Some(0..=1));
        // Fewer orders than notifications in an envelope: also its own repeats (not waited for).
        assert_eq!(waits_for(1, 10, 4), Some(0..=0));
        assert_eq!(waits_for(3, 10, 25), Some(0..=1));
    }

    #[test]
    fn envelopes_are_what_order_api_parses() {
        let targets: Vec<Target> = (0..3)
            .map(|i| Target {
                id: Uuid::now_v7(),
                salesforce_id: format!("8015g00000000{i:02}AAA"),
            })
            .collect();
        let body = envelope(ORG_ID, "http://127.0.0.1:1", &targets, 1, 2);
        assert!(body.contains("<Id>04l000000000002AAA</Id>"));
        assert!(body.contains("<sf:Id>8015g0000000002AAA</sf:Id><sf:Status>Activated</sf:Status>"));
        // Notification 3 is order 0's second: back to Draft.
        assert!(body.contains("<sf:Id>8015g0000000000AAA</sf:Id><sf:Status>Draft</sf:Status>"));
        assert_eq!(body.matches("<Notification>").count(), 2);
        assert_eq!(notification_id(7).len(), 18);
    }
}
