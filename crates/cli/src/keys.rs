//! `orderbridge keys create|list|revoke|rotate`: the API key lifecycle ([`orderbridge_db::keys`]).
//!
//! A new key's plain text goes to stdout alone (one line), everything else to stderr, so
//! `KEY=$(orderbridge keys create --client portal)` works; `--json` prints one JSON document
//! instead.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use orderbridge_db::keys::{self, KeyError, KeyInfo, NewKey};
use orderbridge_db::{DbConfig, DbError};
use secrecy::ExposeSecret;
use serde::Serialize;

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a client (the client is created if new). Prints the key once.
    Create {
        /// The API client the key authenticates as (1 to 100 characters).
        #[arg(long)]
        client: String,
        #[command(flatten)]
        options: NewKeyOptions,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets): id, client, name, state, created, last used, expiry.
    List {
        /// Only this client's keys.
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key. The API stops accepting it within its key cache time
    /// (ORDER_API_KEY_CACHE_TTL, default 10 s).
    Revoke {
        /// The key id (the part after `obk_`, as `keys list` shows it).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new key for the same client and name; the old key keeps working for the grace
    /// period, then expires. Prints the new key once.
    Rotate {
        /// The key id to replace.
        id: String,
        /// How long the old key stays valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[command(flatten)]
        options: NewKeyOptions,
        #[arg(long)]
        json: bool,
    },
}

/// What a new key may carry.
#[derive(Debug, Clone, Args)]
pub struct NewKeyOptions {
    /// What the key is for, shown by `keys list`.
    #[arg(long)]
    name: Option<String>,
    /// The key expires this long after now (e.g. 90d); default: never.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    expires_in: Option<Duration>,
    /// The key expires at this instant (RFC 3339).
    #[arg(long, value_parser = crate::command::parse_time)]
    expires_at: Option<DateTime<Utc>>,
}

impl NewKeyOptions {
    fn expiry(&self) -> Result<Option<DateTime<Utc>>, KeysCliError> {
        match (self.expires_in, self.expires_at) {
            (Some(d), _) => {
                let d = chrono::Duration::from_std(d).map_err(|_| {
                    KeysCliError::Key(KeyError::Invalid("--expires-in is too long".into()))
                })?;
                Ok(Some(Utc::now() + d))
            }
            (None, at) => Ok(at),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysCliError {
    #[error("cannot open the database")]
    Db(#[from] DbError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
    #[error("cannot encode the output")]
    Json(#[from] serde_json::Error),
}

#[derive(Serialize)]
struct CreatedJson<'a> {
    id: &'a str,
    client: &'a str,
    expires_at: Option<DateTime<Utc>>,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<KeyJson<'a>>,
}

#[derive(Serialize)]
struct KeyJson<'a> {
    #[serde(flatten)]
    info: &'a KeyInfo,
    state: keys::KeyState,
}

fn key_json(info: &KeyInfo) -> KeyJson<'_> {
    KeyJson {
        info,
        state: info.state(Utc::now()),
    }
}

pub async fn run(
    command: KeysCommand,
    db: &DbConfig,
    out: &mut impl Write,
) -> Result<(), KeysCliError> {
    let pool = db.connect("orderbridge-keys").await?;
    orderbridge_db::migrate(&pool).await?;
    match command {
        KeysCommand::Create {
            client,
            options,
            json,
        } => {
            let new = keys::create(
                &pool,
                client.trim(),
                options.name.as_deref(),
                options.expiry()?,
            )
            .await?;
            print_new(out, &new, None, json)?;
        }
        KeysCommand::List { client, json } => {
            let list = keys::list(&pool, client.as_deref()).await?;
            if json {
                let list: Vec<_> = list.iter().map(key_json).collect();
                serde_json::to_writer_pretty(&mut *out, &list)?;
                writeln!(out)?;
            } else {
                out.write_all(table(&list, Utc::now()).as_bytes())?;
            }
        }
        KeysCommand::Revoke { id, json } => {
            let info = keys::revoke(&pool, &id).await?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &key_json(&info))?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "revoked key {} of client `{}`; the API refuses it within its key cache time",
                    info.id, info.client
                )?;
            }
        }
        KeysCommand::Rotate {
            id,
            grace,
            options,
            json,
        } => {
            let (new, old) = keys::rotate(&pool, &id, grace, options.expiry()?).await?;
            print_new(out, &new, Some(&old), json)?;
        }
    }
    pool.close().await;
    Ok(())
}

fn print_new(
    out: &mut impl Write,
    new: &NewKey,
    replaces: Option<&KeyInfo>,
    json: bool,
) -> Result<(), KeysCliError> {
    let key = new.key.expose_secret();
    if json {
        serde_json::to_writer_pretty(
            &mut *out,
            &CreatedJson {
                id: &new.id,
                client: &new.client.name,
                expires_at: new.expires_at,
                key,
                replaces: replaces.map(key_json),
            },
        )?;
        writeln!(out)?;
        return Ok(());
    }
    let expiry = new.expires_at.map_or("never expires".to_owned(), |at| {
        format!("expires {}", time(at))
    });
    eprintln!(
        "API key {} for client `{}` ({expiry}); shown once, store it now:",
        new.id, new.client.name
    );
    if let Some(old) = replaces
        && let Some(at) = old.expires_at
    {
        eprintln!("the old key {} keeps working until {}", old.id, time(at));
    }
    writeln!(out, "{key}")?;
    Ok(())
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `keys list` table.
pub fn table(list: &[KeyInfo], now: DateTime<Utc>) -> String {
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|k| {
            let state = match k.state(now) {
                keys::KeyState::Active => "active",
                keys::KeyState::Expired => "expired",
                keys::KeyState::Revoked => "revoked",
            };
            [
                k.id.clone(),
                k.client.clone(),
                k.name.clone().unwrap_or_default(),
                state.to_owned(),
                time(k.created_at),
                k.last_used_at.map(time).unwrap_or_else(|| "never".into()),
                k.expires_at.map(time).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    let header = [
        "ID",
        "CLIENT",
        "NAME",
        "STATE",
        "CREATED",
        "LAST USED",
        "EXPIRES",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(padded.join("  ").trim_end());
        s.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        s.push_str("(no keys)\n");
    }
    s
}
