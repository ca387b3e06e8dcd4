//! The portal's side of `inbound`: one Server-Sent Events stream per order
//! (`GET /v1/orders/{id}/events`), as a portal showing that order would hold, recording when
//! each status change first became visible. A change is recognised by the length of the order's
//! `status_history` (each applied change appends one entry), so a change counts as seen even when
//! the next one on the same order arrives in the same event.
//!
//! A stream that ends (the server's maximum stream lifetime, a restart) is re-opened with
//! `Last-Event-ID`, as a browser's `EventSource` does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::common::lock;

/// What one order's stream has shown so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// `at[n]`: when a `status_history` of length ≥ n was first seen.
    pub at: Vec<Option<Instant>>,
    /// The status of the last event.
    pub status: Option<String>,
    pub events: u64,
    pub reconnects: u64,
    /// When each status was first seen (`fulfilment` waits for `provisioned`).
    pub statuses: Vec<(String, Instant)>,
}

impl Seen {
    fn record(&mut self, history_len: usize, status: Option<String>, now: Instant) {
        if self.at.len() <= history_len {
            self.at.resize(history_len + 1, None);
        }
        for slot in self.at.iter_mut().take(history_len + 1) {
            slot.get_or_insert(now);
        }
        if let Some(s) = &status
            && !self.statuses.iter().any(|(seen, _)| seen == s)
        {
            self.statuses.push((s.clone(), now));
        }
        self.status = status;
        self.events += 1;
    }

    /// When `status` was first seen.
    pub fn status_first(&self, status: &str) -> Option<Instant> {
        self.statuses
            .iter()
            .find(|(s, _)| s == status)
            .map(|(_, at)| *at)
    }

    /// When a history of `len` entries was first seen.
    pub fn first(&self, len: usize) -> Option<Instant> {
        self.at.get(len).copied().flatten()
    }
}

/// The streams of a run; dropping it (or [`Watchers::stop`]) closes them.
pub struct Watchers {
    pub seen: Vec<Arc<Mutex<Seen>>>,
    tasks: JoinSet<()>,
}

impl Watchers {
    /// Opens one stream per order and waits until each has delivered its first event.
    pub async fn open(api: &str, key: &str, orders: &[Uuid]) -> Result<Self> {
        // No overall timeout: the streams are meant to stay open for the whole run.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()?;
        let mut tasks = JoinSet::new();
        let mut seen = Vec::with_capacity(orders.len());
        for id in orders {
            let s = Arc::new(Mutex::new(Seen::default()));
            seen.push(s.clone());
            tasks.spawn(watch(
                http.clone(),
                format!("{api}/v1/orders/{id}/events"),
                key.to_owned(),
                s,
            ));
        }
        let watchers = Self { seen, tasks };
        let deadline = Instant::now() + Duration::from_secs(60);
        while watchers.seen.iter().any(|s| lock(s).events == 0) {
            if Instant::now() > deadline {
                bail!("not every order's event stream delivered its first event within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(watchers)
    }

    pub fn reconnects(&self) -> u64 {
        self.seen.iter().map(|s| lock(s).reconnects).sum()
    }

    pub fn events(&self) -> u64 {
        self.seen.iter().map(|s| lock(s).events).sum()
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Holds one order's stream open, re-opening it with the last event id when it ends.
async fn watch(http: reqwest::Client, url: String, key: String, seen: Arc<Mutex<Seen>>) {
    let mut last_id: Option<String> = None;
    loop {
        if let Err(e) = stream_once(&http, &url, &key, &seen, &mut last_id).await {
            tracing::debug!(%url, error = format!("{e:#}"), "event stream ended");
        }
        lock(&seen).reconnects += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stream_once(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    seen: &Mutex<Seen>,
    last_id: &mut Option<String>,
) -> Result<()> {
    let mut req = http
        .get(url)
        .bearer_auth(key)
        .header("Accept", "text/event-stream");
    if let Some(id) = last_id.as_deref() {
        req = req.header("Last-Event-ID", id);
    }
    let mut resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    let mut parser = Parser::default();
    while let Some(chunk) = resp.chunk().await? {
        let now = Instant::now();
        for event in parser.push(&chunk) {
            if let Some(id) = event.id {
                *last_id = Some(id);
            }
            let Ok(order) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            let Some(history) = order.get("status_history").and_then(Value::as_array) else {
                continue;
            };
            let status = order
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_owned);
            lock(seen).record(history.len(), status, now);
        }
    }
    Ok(())
}

/// One dispatched event (comments and heartbeats produce none).
#[derive(Debug, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub data: String,
}

/// The `text/event-stream` framing: lines ending in LF or CRLF, events ended by a blank line,
/// `data:` lines joined with LF, lines starting with `:` ignored.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    id: Option<String>,
    data: Vec<String>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(Event {
                        id: self.id.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.id = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks_and_skips_comments() {
        let mut p = Parser::default();
        assert!(
            p.push(b": heartbeat\n\nid: 3\r\nevent: order\ndata: {\"a\"")
                .is_empty()
        );
        let events = p.push(b":1}\n\n");
        assert_eq!(
            events,
            vec![Event {
                id: Some("3".to_owned()),
                data: "{\"a\":1}".to_owned()
            }]
        );
        let events = p.push(b"data: x\ndata: y\n\n");
        assert_eq!(events[0].data, "x\ny");
        assert_eq!(events[0].id, None);
    }

    #[test]
    fn a_longer_history_marks_every_shorter_one_seen() {
        let mut s = Seen::default();
        let t = Instant::now();
        s.record(3, Some("activated".to_owned()), t);
        assert_eq!(s.first(2), Some(t));
        assert_eq!(s.first(4), None);
        let later = t + Duration::from_secs(1);
        s.record(4, None, later);
        assert_eq!(s.first(3), Some(t));
        assert_eq!(s.first(4), Some(later));
    }
}
