use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_api::serve::Stopped;
use order_api::{ApiConfig, AppState};
use orderbridge_db::DbConfig;
use orderbridge_runtime::{LogConfig, shutdown_signal};

/// The orderbridge order intake API.
///
/// Every option can also be set through the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "order-api", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    db: DbConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply migrations and serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Create an API key for a named client (created if new) and print it once.
    CreateApiKey {
        /// The client's name, e.g. `portal`.
        #[arg(long)]
        name: String,
    },
    /// Print the OpenAPI document (the content of openapi/openapi.json).
    Openapi,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.log.init() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "order-api failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            print!("{}", order_api::openapi::json());
            Ok(())
        }
        Command::Migrate => {
            let pool = cli.db.connect("order-api").await?;
            orderbridge_db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::CreateApiKey { name } => {
            let name = name.trim();
            anyhow::ensure!(
                (1..=100).contains(&name.chars().count()),
                "--name must be 1 to 100 characters"
            );
            let pool = cli.db.connect("order-api").await?;
            orderbridge_db::migrate(&pool).await?;
            let created = order_api::auth::create_api_key(&pool, name)
                .await
                .context("cannot create the API key")?;
            eprintln!(
                "API key for client `{}` (shown once; store it now):",
                created.client.name
            );
            println!("{}", created.key);
            Ok(())
        }
        Command::Serve => serve(cli.api, cli.db).await,
    }
}

async fn serve(api: ApiConfig, db: DbConfig) -> anyhow::Result<()> {
    let pool = db.connect("order-api").await?;
    orderbridge_db::migrate(&pool)
        .await
        .context("is Postgres running and DATABASE_URL right?")?;
    let listener = tokio::net::TcpListener::bind(api.addr)
        .await
        .with_context(|| format!("cannot listen on {}", api.addr))?;
    if api.sse_max_streams >= api.max_connections.get() as usize {
        // Streams hold their connections busy: at the cap nothing else would be served.
        tracing::warn!(
            sse_max_streams = api.sse_max_streams,
            max_connections = api.max_connections.get(),
            "ORDER_API_SSE_MAX_STREAMS is not below ORDER_API_MAX_CONNECTIONS: event streams can take every connection"
        );
    }
    // Bound after the API's listener: an admin port that answers means the API listens too.
    let admin_listener = orderbridge_runtime::admin::bind(api.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (ORDER_API_ADMIN_ADDR)", api.admin_addr))?;
    let state = AppState::new(pool.clone(), api);
    let housekeeping = order_api::spawn_housekeeping(state.clone());
    let version_listener = order_api::spawn_listener(&state);
    let db_probe = order_api::metrics::spawn_db_probe(
        pool.clone(),
        state.metrics.clone(),
        std::time::Duration::from_secs(5),
    );
    let mut admin_stop = state.stopping();
    let admin = tokio::spawn(orderbridge_runtime::admin::serve(
        admin_listener,
        std::sync::Arc::new(order_api::metrics::Admin(state.metrics.clone())),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(
        addr = %listener.local_addr()?,
        admin_addr = %state.config.admin_addr,
        "order-api listening"
    );

    let config = state.config.clone();
    let shutdown = order_api::until_shutdown(state.clone(), shutdown_signal());
    match order_api::serve::serve(listener, order_api::app(state), &config, shutdown).await {
        Stopped::Drained => {}
        Stopped::GraceExpired { open } => tracing::warn!(
            open,
            "shutdown grace period expired with requests in flight"
        ),
    }
    housekeeping.abort();
    version_listener.abort();
    db_probe.abort();
    let _ = admin.await;
    pool.close().await;
    tracing::info!("order-api stopped");
    Ok(())
}
