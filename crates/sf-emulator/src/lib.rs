//! `sf-emulator`: a local Salesforce org that answers the real REST API's paths, status codes,
//! headers and JSON shapes, so an integration runs and is tested without Salesforce, like
//! LocalStack for AWS.
//!
//! ```text
//!  client ──HTTP──► /services/oauth2/token        password | client_credentials |
//!                   │                             refresh_token | jwt-bearer
//!                   ├► /services/data/             versions (not counted)
//!                   ├► /services/data/vNN.N/…      sObjects, upsert by external id,
//!                   │                              Collections, Composite, SOQL, /limits
//!                   │                              (counted; Sforce-Limit-Info on every reply)
//!  tests/demos ───► /__admin/…                     stats, records, faults, reset, seed
//!                          │
//!                  one Mutex<Inner>: Store (records in memory, schema-validated),
//!                  sessions, faults, counters
//! ```
//!
//! Use it in-process from tests with [`spawn`] (port 0), or run the `sf-emulator` binary.

pub mod admin;
pub mod api;
pub mod auth;
pub mod composite;
pub mod config;
pub mod http;
pub mod ids;
pub mod jwt;
pub mod reply;
pub mod schema;
pub mod seed;
pub mod soql;
pub mod state;
pub mod store;

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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

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
        None => None,
    };
    let seed_path = config.seed_file.clone();
    let shared = Arc::new(state::Shared::new(
        config,
        instance_url,
        jwt_key,
        Arc::new(schema),
        seed.clone(),
    ));
    if let (Some(seed), Some(path)) = (seed, seed_path) {
        let err = |message: String| StartError::Seed {
            path: path.display().to_string(),
            message,
        };
        let parsed: seed::Seed = serde_json::from_value(seed).map_err(|e| err(e.to_string()))?;
        let mut inner = shared.lock();
        seed::apply(&mut inner.store, &parsed)
            .map_err(|e| err(format!("{}: {}", e.code, e.message)))?;
    }
    Ok(shared)
}

/// A running in-process emulator. Dropping it stops the server.
pub struct RunningEmulator {
    /// `http://127.0.0.1:PORT`: login URL and instance URL.
    pub base_url: String,
    pub addr: SocketAddr,
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

async fn bind(config: &EmulatorConfig) -> Result<(TcpListener, SocketAddr, String), StartError> {
    let addr = config.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let url = config
        .instance_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    Ok((listener, bound, url))
}

/// Starts an emulator in the background (use port 0 in `config.addr` for a free port).
pub async fn spawn(config: EmulatorConfig) -> Result<RunningEmulator, StartError> {
    let (listener, addr, base_url) = bind(&config).await?;
    let state = build_state(config, base_url.clone())?;
    let (tx, rx) = oneshot::channel::<()>();
    let router = app(Arc::clone(&state));
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningEmulator {
        base_url,
        addr,
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
    let (listener, addr, base_url) = bind(&config).await?;
    let state = build_state(config, base_url.clone())?;
    tracing::info!(%addr, instance_url = %base_url, "sf-emulator listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
