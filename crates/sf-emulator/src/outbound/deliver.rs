//! The delivery task: takes due batches off the queue, POSTs each as one envelope (concurrently),
//! and reports the outcome back; sleeps until something is queued or the next retry is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::envelope::{self, Header, Item};
use super::{Batch, Outbound, Outcome};

/// Who sends: the org's id and instance URL, as the envelope names them.
#[derive(Debug, Clone)]
pub struct Sender {
    pub org_id: String,
    pub instance_url: String,
}

/// Most of an endpoint's answer read (an Ack is a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Runs until `stop` fires; POSTs in flight then are abandoned (their notifications would be
/// retried by a next run, as Salesforce retries after an outage).
pub async fn run(outbound: Arc<Outbound>, sender: Sender, mut stop: oneshot::Receiver<()>) {
    let sender = Arc::new(sender);
    let client = match reqwest::Client::builder()
        .timeout(outbound.settings.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the outbound-message HTTP client; outbound messages stay queued");
            return;
        }
    };
    let mut sends = JoinSet::new();
    loop {
        while sends.try_join_next().is_some() {}
        let (batches, next) = outbound.take_due(Instant::now());
        for batch in batches {
            let outbound = Arc::clone(&outbound);
            let sender = Arc::clone(&sender);
            let client = client.clone();
            sends.spawn(async move {
                let outcome = send(&sender, &client, &batch).await;
                if let Outcome::NotDelivered { error, .. } = &outcome {
                    tracing::info!(url = %batch.url, notifications = batch.items.len(), %error, "outbound message not acknowledged; will retry");
                } else {
                    tracing::debug!(url = %batch.url, notifications = batch.items.len(), "outbound message acknowledged");
                }
                outbound.finish(&batch, &outcome);
            });
        }
        // Without anything waiting, sleep until woken (an hour is just an upper bound).
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = outbound.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = &mut stop => break,
        }
    }
    sends.abort_all();
}

async fn send(sender: &Sender, client: &reqwest::Client, batch: &Batch) -> Outcome {
    let items: Vec<Item<'_>> = batch
        .items
        .iter()
        .map(|i| Item {
            id: &i.id,
            object: &i.object,
            fields: &i.fields,
        })
        .collect();
    let body = envelope::build(
        &Header {
            org_id: &sender.org_id,
            action_id: &batch.action_id,
            instance_url: &sender.instance_url,
        },
        &items,
    );
    let sent = client
        .post(&batch.url)
        .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header("SOAPAction", "\"\"")
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome::NotDelivered {
                status: None,
                error: chain(&e),
            };
        }
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_RESPONSE_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Outcome::NotDelivered {
                    status: Some(status),
                    error: chain(&e),
                };
            }
        }
    }
    let text = String::from_utf8_lossy(&body);
    if status == 200 && envelope::acknowledged(&text) {
        return Outcome::Acknowledged;
    }
    let snippet: String = text.chars().take(200).collect();
    Outcome::NotDelivered {
        status: Some(status),
        error: if status == 200 {
            format!("HTTP 200 without <Ack>true</Ack>: {snippet}")
        } else {
            format!("HTTP {status}: {snippet}")
        },
    }
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
