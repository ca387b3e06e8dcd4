//! Command line and environment, parsed once at start-up; every value is checked here, so a bad
//! one stops the process with a message naming the variable instead of failing later.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use orderbridge_db::DbConfig;
use orderbridge_runtime::LogConfig;
use orderbridge_salesforce::SalesforceConfig;

use orderbridge_domain::status_map::StatusMap;

/// Receives what Salesforce decides about orders (Change Data Capture over the Pub/Sub API) and
/// applies it to the orders in Postgres.
#[derive(Debug, Clone, Parser)]
#[command(name = "sf-subscriber", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub subscriber: SubscriberConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub salesforce: SalesforceConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// Where a subscription starts when there is no usable stored replay id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Only events published from now on.
    Latest,
    /// Everything the bus still retains (72 h for CDC); effects are idempotent and monotonic,
    /// so replaying old events changes nothing that a newer one already decided.
    Earliest,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Earliest => "earliest",
        }
    }
}

/// The subscriber's own settings.
#[derive(Debug, Clone, Args)]
pub struct SubscriberConfig {
    /// Admin HTTP server: `/health/live`, `/health/ready`, `/health/sf-events`, `/metrics`.
    #[arg(long, env = "SUBSCRIBER_ADMIN_ADDR", default_value = "127.0.0.1:9103")]
    pub admin_addr: SocketAddr,
    /// The Pub/Sub API endpoint: the emulator's `http://127.0.0.1:7443` locally,
    /// `https://api.pubsub.salesforce.com:7443` for a real org.
    #[arg(long, env = "SF_PUBSUB_ENDPOINT", default_value = "http://127.0.0.1:7443", value_parser = parse_endpoint)]
    pub pubsub_endpoint: String,
    /// Topics to subscribe to, comma-separated: CDC channels (`/data/OrderChangeEvent`) and
    /// platform events (`/event/Name__e`, recorded and counted only, for now).
    #[arg(long, env = "SF_PUBSUB_TOPICS", default_value = "/data/OrderChangeEvent,/event/OrderProvisionRequested__e", value_parser = parse_topics)]
    pub topics: Topics,
    /// Events requested at a time (`num_requested`, at most 100, the API's cap); more are
    /// requested only after a batch's transaction committed, so memory stays bounded.
    #[arg(long, env = "SUBSCRIBER_BATCH", default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub batch: i32,
    /// Order fields (besides `Status`) whose change makes the subscriber re-read the order's
    /// `Status` over REST and apply it, comma-separated: for orgs where a process sets the status
    /// through another field (an activation checkbox, say) in a way CDC reports separately.
    #[arg(long, env = "SUBSCRIBER_EXTRA_STATUS_FIELDS", default_value = "", value_parser = parse_fields)]
    pub extra_status_fields: FieldList,
    /// Salesforce Status value → business status, `Draft=submitted,Activated=activated` (these
    /// two are the defaults); other values are lower-cased with spaces turned into `_`.
    #[arg(long, env = "SUBSCRIBER_STATUS_MAP", default_value = "")]
    pub status_map: StatusMap,

    /// The platform event whose events request provisioning (fields `OrderId__c`, optional
    /// `IdemKey__c`, `CorrelationId__c`); its `/event/…` topic must be in SF_PUBSUB_TOPICS to be
    /// received. Empty: no platform event requests provisioning.
    #[arg(long, env = "SUBSCRIBER_PROVISION_EVENT", default_value = "OrderProvisionRequested__e", value_parser = parse_event_name)]
    pub provision_event: OptionalName,

    /// A Salesforce Order Status value (`Approved`) whose arrival requests provisioning, as
    /// well as or instead of the platform event. Empty (the default): off.
    #[arg(long, env = "SUBSCRIBER_PROVISION_ON_STATUS", default_value = "", value_parser = parse_status_value)]
    pub provision_on_status: OptionalName,
    /// Where to resume when the stored replay id is no longer valid (past the bus's retention):
    /// `latest` (default) or `earliest`. Either way the gap is logged, counted and recorded.
    #[arg(
        long,
        env = "SUBSCRIBER_REPLAY_FALLBACK",
        value_enum,
        default_value = "latest"
    )]
    pub replay_fallback: Preset,
    /// Where a topic starts the first time (no stored replay id): `latest` or `earliest`.
    #[arg(
        long,
        env = "SUBSCRIBER_INITIAL_REPLAY",
        value_enum,
        default_value = "latest"
    )]
    pub initial_replay: Preset,
    /// Inbox rows (handled event ids) are kept this long; longer than the bus's 72 h retention,
    /// so an event can never be replayed after its row is gone.
    #[arg(long, env = "SUBSCRIBER_INBOX_RETENTION", default_value = "4days", value_parser = parse_retention)]
    pub inbox_retention: Duration,
    /// First wait before re-opening a failed stream; doubles up to SUBSCRIBER_RECONNECT_MAX.
    #[arg(long, env = "SUBSCRIBER_RECONNECT_MIN", default_value = "200ms", value_parser = orderbridge_runtime::parse_interval)]
    pub reconnect_min: Duration,
    /// Longest wait between attempts to re-open a stream.
    #[arg(long, env = "SUBSCRIBER_RECONNECT_MAX", default_value = "30s", value_parser = orderbridge_runtime::parse_interval)]
    pub reconnect_max: Duration,
    /// Limit on any one call (connect, GetSchema, a batch's transaction, a REST re-read).
    #[arg(long, env = "SUBSCRIBER_CALL_TIMEOUT", default_value = "15s", value_parser = orderbridge_runtime::parse_interval)]
    pub call_timeout: Duration,
    /// A stream that delivers nothing (not even the server's keepalive, sent at least every
    /// 270 s) for this long is considered dead and re-opened.
    #[arg(long, env = "SUBSCRIBER_IDLE_TIMEOUT", default_value = "5m", value_parser = orderbridge_runtime::parse_interval)]
    pub idle_timeout: Duration,
    /// Postgres `application_name` of the subscriber's connections.
    #[arg(
        long,
        env = "SUBSCRIBER_DB_APPLICATION_NAME",
        default_value = "sf-subscriber"
    )]
    pub db_application_name: String,
}

/// The subscribed topics, validated and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics(pub Vec<String>);

/// Field API names, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldList(pub Vec<String>);

/// Most topics one process subscribes to (one stream each).
pub const MAX_TOPICS: usize = 20;

fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!("`{s}` must be scheme://host[:port], nothing else"));
    }
    Ok(s.to_owned())
}

/// A topic name: `/data/…` or `/event/…`, then letters, digits and `_`.
pub fn valid_topic(t: &str) -> bool {
    let name = t
        .strip_prefix("/data/")
        .or_else(|| t.strip_prefix("/event/"));
    name.is_some_and(|n| {
        !n.is_empty() && n.len() <= 120 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

fn parse_topics(s: &str) -> Result<Topics, String> {
    let mut topics: Vec<String> = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !valid_topic(t) {
            return Err(format!(
                "`{t}` is not a topic: expected /data/<Name>ChangeEvent or /event/<Name>__e"
            ));
        }
        if topics.iter().any(|x| x == t) {
            return Err(format!("`{t}` is listed twice"));
        }
        topics.push(t.to_owned());
    }
    if topics.is_empty() {
        return Err("no topic given".into());
    }
    if topics.len() > MAX_TOPICS {
        return Err(format!("{} topics; at most {MAX_TOPICS}", topics.len()));
    }
    Ok(Topics(topics))
}

fn parse_fields(s: &str) -> Result<FieldList, String> {
    let mut fields = Vec::new();
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let ok = f.len() <= 80
            && f.starts_with(|c: char| c.is_ascii_alphabetic())
            && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!("`{f}` is not a field API name"));
        }
        if f == "Status" {
            return Err("`Status` is always watched; list only other fields".into());
        }
        fields.push(f.to_owned());
    }
    Ok(FieldList(fields))
}

/// A setting that may be empty (off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionalName(pub Option<String>);

fn parse_event_name(s: &str) -> Result<OptionalName, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(OptionalName(None));
    }
    let ok = s.len() <= 80
        && s.ends_with("__e")
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!("`{s}` is not a platform event API name (Name__e)"));
    }
    Ok(OptionalName(Some(s.to_owned())))
}

fn parse_status_value(s: &str) -> Result<OptionalName, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(OptionalName(None));
    }
    if s.len() > 255 || s.chars().any(char::is_control) {
        return Err("a Status value is at most 255 characters, without control characters".into());
    }
    Ok(OptionalName(Some(s.to_owned())))
}

impl SubscriberConfig {
    /// The topic of [`Self::provision_event`], when set.
    pub fn provision_topic(&self) -> Option<String> {
        self.provision_event
            .0
            .as_ref()
            .map(|name| format!("/event/{name}"))
    }
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(72 * 3600) {
        return Err(format!(
            "`{s}` is shorter than the event bus's 72 h retention: a replayed event could be applied twice"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sf-subscriber").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).unwrap();
        assert_eq!(
            cli.subscriber.topics.0,
            vec![
                "/data/OrderChangeEvent",
                "/event/OrderProvisionRequested__e"
            ]
        );
        assert_eq!(
            cli.subscriber.provision_topic().as_deref(),
            Some("/event/OrderProvisionRequested__e")
        );
        assert_eq!(cli.subscriber.provision_on_status.0, None);
        let off = parse(&["--provision-event", "", "--provision-on-status", "Approved"]).unwrap();
        assert_eq!(off.subscriber.provision_topic(), None);
        assert_eq!(
            off.subscriber.provision_on_status.0.as_deref(),
            Some("Approved")
        );
        assert_eq!(cli.subscriber.batch, 100);
        assert_eq!(cli.subscriber.replay_fallback, Preset::Latest);
        assert_eq!(cli.subscriber.pubsub_endpoint, "http://127.0.0.1:7443");
    }

    #[test]
    fn hostile_values_are_refused_naming_the_setting() {
        for (args, needle) in [
            (
                vec!["--topics", "/data/Order ChangeEvent"],
                "is not a topic",
            ),
            (vec!["--topics", "OrderChangeEvent"], "is not a topic"),
            (vec!["--topics", "/data/../x"], "is not a topic"),
            (vec!["--topics", " , "], "no topic"),
            (vec!["--topics", "/data/A,/data/A"], "twice"),
            (vec!["--batch", "0"], "0"),
            (vec!["--batch", "101"], "101"),
            (vec!["--pubsub-endpoint", "ftp://x"], "http://"),
            (vec!["--pubsub-endpoint", "http://x/path"], "scheme://host"),
            (vec!["--status-map", "Activated"], "SalesforceValue=status"),
            (
                vec!["--extra-status-fields", "Activated Date"],
                "field API name",
            ),
            (vec!["--extra-status-fields", "Status"], "always watched"),
            (vec!["--inbox-retention", "1h"], "72 h"),
            (vec!["--replay-fallback", "never"], "never"),
            (vec!["--reconnect-min", "0s"], "too short"),
            (vec!["--provision-event", "Order"], "platform event"),
            (vec!["--provision-event", "a b__e"], "platform event"),
            (vec!["--provision-on-status", "a\nb"], "control"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("/event/E{i}__e")).collect();
        let err = parse(&["--topics", &many.join(",")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most"), "{err}");
    }
}
