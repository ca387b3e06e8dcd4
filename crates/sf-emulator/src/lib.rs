//! `sf-emulator`: a local Salesforce org that answers the real REST API's paths, status codes,
//! headers and JSON shapes, so an integration runs and is tested without Salesforce, like
//! LocalStack for AWS.
//!
//! ```text
//!  client ──HTTP──► /services/oauth2/token        password | client_credentials |
//!                   │                             refresh_token | jwt-bearer
//!                   ├► /services/data/             versions (not counted)
//!                   ├► /services/data/vNN.N/…      sObjects, upsert by external id,
//!                   │                              Collections, Composite, SOQL, /limits,
//!                   │                              Bulk API 2.0 ingest and query jobs (`bulk`,
//!                   │                              processed in the background)
//!                   │                              (counted; Sforce-Limit-Info on every reply)
//!  tests/demos ───► /__admin/…                     stats, records, faults, reset, seed,
//!                          │                      pubsub (stats, faults, schema changes)
//!                  one Mutex<Inner>: Store (records in memory, schema-validated),
//!                  sessions, faults, counters
//!                          │ committed changes (CDC), platform events
//!                          ▼
//!  gRPC client ────► Pub/Sub API (`pubsub` hub,    GetTopic, GetSchema, Subscribe, Publish,
//!                    `pubsub_api` server)         PublishStream; own listener, same TLS
//! ```
//!
//! Use it in-process from tests with [`spawn`] (port 0 for both listeners), or run the
//! `sf-emulator` binary.

pub mod admin;
pub mod admin_flows;
pub mod admin_guard;
pub mod admin_outbound;
pub mod admin_pubsub;
pub mod api;
pub mod auth;
pub mod bulk;
pub mod composite;
pub mod config;
pub mod flows;
pub mod http;
pub mod ids;
pub mod jwt;
pub mod outbound;
pub mod pubsub;
pub mod pubsub_api;
pub mod reply;
pub mod route;
pub mod schema;
pub mod seed;
pub mod soql;
pub mod state;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::EmulatorConfig;
pub use http::app;
pub use state::AppState;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error(transparent)]
    Key(#[from] jwt::KeyError),
    #[error("seed file {path}: {message}")]
    Seed { path: String, message: String },
    #[error("data file {path}: {message}")]
    Data { path: String, message: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("TLS needs both a certificate and a key file")]
    TlsIncomplete,
    #[error(transparent)]
    PubSub(#[from] pubsub::avro::SchemaBuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How errors and logs name [`EmulatorConfig::seed_json`].
const BUILT_IN_SEED: &str = "<built-in dev catalogue>";

/// Builds the shared state: schema, JWT key, seed, the standard price book.
pub fn build_state(config: EmulatorConfig, instance_url: String) -> Result<AppState, StartError> {
    let schema = match &config.schema_file {
        Some(path) => schema::Schema::from_file(path)?,
        None => schema::Schema::builtin()?,
    };
    let jwt_key = match &config.jwt_public_key_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|source| jwt::KeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Some(jwt::load_public_key(&pem)?)
        }
        None => None,
    };
    let seed = match &config.seed_file {
        Some(path) => {
            let err = |message: String| StartError::Seed {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| err(e.to_string()))?)
        }
        None => match config.seed_json {
            Some(text) => {
                Some(
                    serde_json::from_str::<Value>(text).map_err(|e| StartError::Seed {
                        path: BUILT_IN_SEED.to_owned(),
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        },
    };
    let saved = match &config.data_file {
        Some(path) if path.exists() => {
            let err = |message: String| StartError::Data {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            Some(serde_json::from_str::<store::StoreData>(&text).map_err(|e| err(e.to_string()))?)
        }
        _ => None,
    };
    let seed_path = config.seed_file.clone().or_else(|| {
        config
            .seed_json
            .map(|_| std::path::PathBuf::from(BUILT_IN_SEED))
    });
    let hub = pubsub::Hub::new(&config, &schema)?;
    let flows = initial_flows(&config, &schema, &hub, seed.as_ref(), seed_path.as_deref())?;
    let shared = Arc::new(state::Shared::new(
        config,
        instance_url,
        jwt_key,
        Arc::new(schema),
        seed.clone(),
        hub,
        flows,
    ));
    if let Some(data) = saved {
        // Saved data already holds whatever was seeded the first time.
        let mut inner = shared.lock();
        inner.store = store::Store::with_data(Arc::clone(&shared.schema), data);
        shared.capture(&mut inner);
    } else if let (Some(seed), Some(path)) = (seed, seed_path) {
        let err = |message: String| StartError::Seed {
            path: path.display().to_string(),
            message,
        };
        let parsed: seed::Seed = serde_json::from_value(seed).map_err(|e| err(e.to_string()))?;
        let mut inner = shared.lock();
        seed::apply(&mut inner.store, &parsed)
            .map_err(|e| err(format!("{}: {}", e.code, e.message)))?;
        // The org's starting data is not a change anyone subscribed to.
        inner.store.take_changes();
    }
    Ok(shared)
}

/// The Flow rules the org starts with: the seed file's `flows` when it has that list, otherwise
/// the built-in rule unless `SF_EMULATOR_FLOWS=none`.
fn initial_flows(
    config: &EmulatorConfig,
    schema: &schema::Schema,
    hub: &pubsub::Hub,
    seed: Option<&Value>,
    seed_path: Option<&std::path::Path>,
) -> Result<Vec<flows::Rule>, StartError> {
    if let (Some(list), Some(path)) = (seed.and_then(|s| s.get("flows")), seed_path) {
        let err = |message: String| StartError::Seed {
            path: path.display().to_string(),
            message,
        };
        let inputs: Vec<flows::RuleInput> =
            serde_json::from_value(list.clone()).map_err(|e| err(format!("flows: {e}")))?;
        return inputs
            .into_iter()
            .map(|input| input.validate(schema, hub).map_err(|e| err(e.to_string())))
            .collect();
    }
    match config.flows {
        config::FlowsAtStart::None => Ok(Vec::new()),
        // A custom schema file may lack the Order or the event; the emulator still starts.
        config::FlowsAtStart::Default => match flows::Rule::default_input().validate(schema, hub) {
            Ok(rule) => Ok(vec![rule]),
            Err(e) => {
                tracing::warn!(error = %e, "the built-in flow rule does not fit the schema; starting without it");
                Ok(Vec::new())
            }
        },
    }
}

/// A running in-process emulator. Dropping it stops the server.
pub struct RunningEmulator {
    /// `http://127.0.0.1:PORT`: login URL and instance URL.
    pub base_url: String,
    pub addr: SocketAddr,
    /// Where the Pub/Sub API (gRPC) listens.
    pub pubsub_addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (`https://` in HTTPS mode): the Pub/Sub endpoint for clients.
    pub pubsub_url: String,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl RunningEmulator {
    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), std::io::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A bound listener, plain or TLS, and the URL clients use.
struct Bound {
    tcp: TcpListener,
    addr: SocketAddr,
    url: String,
    tls: Option<Arc<rustls::ServerConfig>>,
    pubsub: TcpListener,
    pubsub_addr: SocketAddr,
}

impl Bound {
    fn pubsub_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.pubsub_addr)
    }
}

async fn bind(config: &EmulatorConfig) -> Result<Bound, StartError> {
    let addr = config.addr;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = tcp
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let tls = match (
        &config.tls_cert_file,
        &config.tls_key_file,
        config.tls_self_signed,
    ) {
        (Some(cert), Some(key), _) => Some(tls::from_files(cert, key)?),
        (Some(_), None, _) | (None, Some(_), _) => return Err(StartError::TlsIncomplete),
        (None, None, true) => {
            let mut hosts = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if !bound.ip().is_unspecified() {
                hosts.push(bound.ip().to_string());
            }
            if let Some(host) = config.instance_url.as_deref().and_then(url_host) {
                hosts.push(host);
            }
            hosts.sort();
            hosts.dedup();
            let (server, ca_pem) = tls::self_signed(&hosts)?;
            if let Some(path) = &config.tls_ca_out {
                std::fs::write(path, ca_pem).map_err(|source| tls::TlsError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            Some(server)
        }
        (None, None, false) => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = config
        .instance_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    let pubsub = TcpListener::bind(config.pubsub_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.pubsub_addr,
            source,
        })?;
    let pubsub_addr = pubsub.local_addr().map_err(|source| StartError::Bind {
        addr: config.pubsub_addr,
        source,
    })?;
    Ok(Bound {
        tcp,
        addr: bound,
        url,
        tls,
        pubsub,
        pubsub_addr,
    })
}

/// The host of a URL like `https://host:port/path`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Writes the records to the data file if they changed (temp file + rename, so a crash never
/// leaves a half-written file).
async fn flush(state: &AppState, path: &std::path::Path) -> Result<(), std::io::Error> {
    let data = {
        let mut inner = state.lock();
        if !inner.dirty {
            return Ok(());
        }
        inner.dirty = false;
        inner.store.snapshot()
    };
    let path = path.to_owned();
    let written = tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
        let json = serde_json::to_vec(&data).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if written.is_err() {
        // Try again on the next tick.
        state.lock().dirty = true;
    }
    written
}

async fn run(
    bound: Bound,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let router = app(Arc::clone(&state));
    // The flusher writes changes every second and once more when told to stop; awaiting it
    // guarantees no write is still in flight when `run` returns.
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let flusher = state.config.data_file.clone().map(|path| {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stop_rx => true,
                };
                let written = flush(&state, &path).await;
                if let Err(e) = &written {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the data file");
                }
                if stopping {
                    return written;
                }
            }
        })
    });
    // Outbound messages are delivered until the server stops.
    let (om_stop_tx, om_stop_rx) = oneshot::channel::<()>();
    let deliverer = tokio::spawn(outbound::deliver::run(
        Arc::clone(&state.outbound),
        outbound::deliver::Sender {
            org_id: state.org_id.clone(),
            instance_url: state.instance_url.clone(),
        },
        om_stop_rx,
    ));
    // The Pub/Sub server stops with the REST one.
    let (ps_stop_tx, ps_stop_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = ps_stop_tx.send(());
    };
    let Bound {
        tcp,
        tls,
        pubsub: pubsub_listener,
        ..
    } = bound;
    let pubsub_server = tokio::spawn(pubsub_api::server::serve(
        pubsub_listener,
        tls.clone(),
        Arc::clone(&state),
        async move {
            let _ = ps_stop_rx.await;
        },
    ));
    let served = serve_on(tcp, tls, router, shutdown).await;
    let _ = stop_tx.send(());
    let _ = om_stop_tx.send(());
    if let Err(e) = deliverer.await {
        tracing::warn!(error = %e, "the outbound-message task failed");
    }
    match pubsub_server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the Pub/Sub server failed"),
        Err(e) => tracing::warn!(error = %e, "the Pub/Sub server task failed"),
    }
    if let Some(f) = flusher {
        f.await.map_err(std::io::Error::other)??;
    }
    served
}

async fn serve_on(
    tcp: TcpListener,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    match tls_config {
        Some(config) => {
            let listener = tls::TlsListener::new(tcp, config)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(tcp, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Starts an emulator in the background (use port 0 in `config.addr` for a free port).
pub async fn spawn(config: EmulatorConfig) -> Result<RunningEmulator, StartError> {
    let bound = bind(&config).await?;
    let (addr, base_url) = (bound.addr, bound.url.clone());
    let (pubsub_addr, pubsub_url) = (bound.pubsub_addr, bound.pubsub_url());
    let state = build_state(config, base_url.clone())?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(bound, Arc::clone(&state), async {
        let _ = rx.await;
    }));
    Ok(RunningEmulator {
        base_url,
        addr,
        pubsub_addr,
        pubsub_url,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Runs an emulator until `shutdown` resolves (the binary's main loop).
pub async fn serve(
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bound = bind(&config).await?;
    let state = build_state(config, bound.url.clone())?;
    tracing::info!(addr = %bound.addr, instance_url = %bound.url, pubsub = %bound.pubsub_url(), tls = bound.tls.is_some(), "sf-emulator listening");
    run(bound, state, shutdown).await?;
    Ok(())
}
