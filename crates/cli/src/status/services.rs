//! Each service's admin endpoints: `/health/ready`, and `/metrics` read for what says most about
//! it (a relay's partitions, a worker's breaker and API budget, the subscriber's streams and
//! lag). Every request is bounded in time and size: a service that hangs or answers with a
//! flood is reported, never waited on.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// Per request to a service.
const TIMEOUT: Duration = Duration::from_secs(3);
/// A `/metrics` page larger than this is not read (ours are a few KiB).
const MAX_METRICS_BYTES: usize = 4 << 20;

/// A service to ask: its name and the base URL of its admin endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub url: String,
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, url) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not NAME=URL, e.g. sync-worker=http://127.0.0.1:9102")
        })?;
        let name = name.trim();
        let url = url.trim().trim_end_matches('/');
        if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{s:?} is not NAME=URL with an http(s) URL, e.g. sync-worker=http://127.0.0.1:9102"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// How `/health/ready` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Health {
    Ready,
    /// Answered, but not 200 (503: up but not doing its job).
    NotReady {
        status: u16,
    },
    Unreachable {
        error: String,
    },
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// The labels as written between the braces (`partition="3"`), empty when none.
    pub labels: String,
    pub value: f64,
}

/// What a service's metrics say, read by the metric names it exports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reading {
    /// order-api: orders accepted since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orders_created_total: Option<f64>,
    /// A relay: the outbox partitions it leads, of how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions_led: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_total: Option<f64>,
    /// A worker: its circuit breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// A worker: batches it may write at once now (its adaptive window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<f64>,
    /// A worker: Salesforce API requests used and allowed in the org's 24 h window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_used: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_max: Option<f64>,
    /// The subscriber: topics subscribed of those it keeps, and its lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics_subscribed: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// `*_broker_up` where the service has a broker session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_up: Option<bool>,
}

/// One service as found.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub url: String,
    pub health: Health,
    /// `None` when its `/metrics` could not be read.
    pub reading: Option<Reading>,
}

/// Asks every service at once.
pub async fn probe_all(services: &[Service]) -> Vec<ServiceStatus> {
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return services
                .iter()
                .map(|s| ServiceStatus {
                    name: s.name.clone(),
                    url: s.url.clone(),
                    health: Health::Unreachable {
                        error: e.to_string(),
                    },
                    reading: None,
                })
                .collect();
        }
    };
    // All at once: a service that times out costs the others nothing.
    let tasks: Vec<_> = services
        .iter()
        .map(|s| {
            let (client, s) = (client.clone(), s.clone());
            tokio::spawn(async move { probe(&client, &s).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (task, s) in tasks.into_iter().zip(services) {
        out.push(task.await.unwrap_or_else(|e| ServiceStatus {
            name: s.name.clone(),
            url: s.url.clone(),
            health: Health::Unreachable {
                error: format!("probe failed: {e}"),
            },
            reading: None,
        }));
    }
    out
}

async fn probe(client: &reqwest::Client, s: &Service) -> ServiceStatus {
    let health = match client.get(format!("{}/health/ready", s.url)).send().await {
        Ok(r) if r.status().is_success() => Health::Ready,
        Ok(r) => Health::NotReady {
            status: r.status().as_u16(),
        },
        Err(e) => Health::Unreachable {
            error: crate::render::clean(&without_url(&e)),
        },
    };
    let reading = if matches!(health, Health::Unreachable { .. }) {
        None
    } else {
        metrics(client, &s.url).await.map(|samples| read(&samples))
    };
    ServiceStatus {
        name: s.name.clone(),
        url: s.url.clone(),
        health,
        reading,
    }
}

/// reqwest's error without the URL it names (the URL is shown beside it anyway).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

async fn metrics(client: &reqwest::Client, url: &str) -> Option<Vec<Sample>> {
    let mut r = client.get(format!("{url}/metrics")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_METRICS_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(parse(&String::from_utf8_lossy(&body)))
}

/// The samples of a Prometheus text page; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value,
            })
        })
        .collect()
}

/// The value of a label in a sample's label text (`partition="3"` → `3`).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// What the samples say, by the names each service exports.
pub fn read(samples: &[Sample]) -> Reading {
    let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    let mut r = Reading {
        orders_created_total: one("order_api_orders_created_total"),
        partitions: one("outbox_relay_partitions").map(|v| v as u32),
        published_total: one("outbox_relay_published_total"),
        paused: one("sync_worker_paused").map(|v| v > 0.0),
        window: one("sync_worker_window"),
        api_used: one("sync_worker_salesforce_api_used"),
        api_max: one("sync_worker_salesforce_api_max"),
        lag_seconds: one("sf_subscriber_lag_seconds"),
        broker_up: samples
            .iter()
            .find(|s| s.name.ends_with("_broker_up"))
            .map(|s| s.value > 0.0),
        ..Reading::default()
    };
    if r.partitions.is_some() {
        r.partitions_led = Some(
            samples
                .iter()
                .filter(|s| s.name == "outbox_relay_partition_leader" && s.value > 0.0)
                .filter_map(|s| label(&s.labels, "partition")?.parse().ok())
                .collect(),
        );
    }
    r.pause_reason = samples
        .iter()
        .filter(|s| s.name == "sync_worker_pause_reason" && s.value > 0.0)
        .find_map(|s| label(&s.labels, "reason").map(str::to_owned));
    let topics: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "sf_subscriber_subscribed")
        .collect();
    if !topics.is_empty() {
        let up = topics.iter().filter(|s| s.value > 0.0).count();
        r.topics_subscribed = Some((up as u32, topics.len() as u32));
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_what_each_service_exports() {
        let text = "# HELP x y\n# TYPE x gauge\noutbox_relay_partitions 4\n\
            outbox_relay_partition_leader{partition=\"0\"} 1\n\
            outbox_relay_partition_leader{partition=\"1\"} 0\n\
            outbox_relay_partition_leader{partition=\"3\"} 1\n\
            outbox_relay_published_total 1234\noutbox_relay_broker_up 1\n\
            sync_worker_paused 1\nsync_worker_pause_reason{reason=\"outage\"} 0\n\
            sync_worker_pause_reason{reason=\"budget\"} 1\n\
            sync_worker_salesforce_api_used 900\nsync_worker_salesforce_api_max 1000\n\
            sync_worker_window 6\n\
            sf_subscriber_subscribed{topic=\"/data/OrderChangeEvent\"} 1\n\
            sf_subscriber_subscribed{topic=\"/event/Provision__e\"} 0\n\
            sf_subscriber_lag_seconds 2.5\norder_api_orders_created_total 17\n\
            garbage line\nno_value_here\n";
        let r = read(&parse(text));
        assert_eq!(r.partitions, Some(4));
        assert_eq!(r.partitions_led, Some(vec![0, 3]));
        assert_eq!(r.published_total, Some(1234.0));
        assert_eq!(r.broker_up, Some(true));
        assert_eq!(r.paused, Some(true));
        assert_eq!(r.pause_reason.as_deref(), Some("budget"));
        assert_eq!(r.window, Some(6.0));
        assert_eq!((r.api_used, r.api_max), (Some(900.0), Some(1000.0)));
        assert_eq!(r.topics_subscribed, Some((1, 2)));
        assert_eq!(r.lag_seconds, Some(2.5));
        assert_eq!(r.orders_created_total, Some(17.0));
    }

    #[test]
    fn a_service_is_name_equals_http_url() {
        let s: Service = "sync-worker=http://127.0.0.1:9102/".parse().unwrap();
        assert_eq!(s.name, "sync-worker");
        assert_eq!(s.url, "http://127.0.0.1:9102");
        assert!("sync-worker".parse::<Service>().is_err());
        assert!("=http://x".parse::<Service>().is_err());
        assert!("w=ftp://x".parse::<Service>().is_err());
    }
}
