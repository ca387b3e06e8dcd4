//! `orderbridge broker setup-users`: the topology declared once, then one RabbitMQ user per
//! component with exactly the permissions [`Topology::permissions`] gives it.
//!
//! Users are managed with `rabbitmqctl`, which every RabbitMQ install has (the management HTTP
//! API needs a plugin that is not always enabled). Passwords go to rabbitmqctl on stdin, never
//! on its command line. Idempotent: an existing user keeps its password unless one is given, and
//! its permissions are set again, so re-running after an upgrade (or a namespace change) brings
//! them up to date. Nothing else on the broker is touched: other users, `guest` included, keep
//! what they have.

use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;
use orderbridge_broker::{BrokerConfig, BrokerError, Component, Permissions, Supervisor, Topology};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use super::SetupUsersArgs;

/// Longest a rabbitmqctl call may take (it has timeouts of its own; this only bounds a hang).
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(120);

/// The user name of `component` under `prefix`.
pub fn user_name(prefix: &str, component: Component) -> String {
    format!("{prefix}-{}", component.name())
}

/// One component's user after the set-up.
pub struct UserAccount {
    pub component: Component,
    pub user: String,
    /// The password set by this run; `None` when an existing user kept its own.
    pub password: Option<SecretString>,
    /// The admin AMQP_URL (checked to parse), for the host, port, vhost and options of the
    /// component's URL.
    base: String,
}

impl UserAccount {
    /// The component's AMQP_URL, when this run knows its password.
    pub fn amqp_url(&self) -> Option<SecretString> {
        let password = self.password.as_ref()?;
        // Every node of a cluster's list gets the component's credentials.
        let urls = orderbridge_broker::amqp_urls(&self.base)
            .map(|url| with_credentials(url, &self.user, password.expose_secret()))
            .collect::<Option<Vec<_>>>()?;
        Some(SecretString::from(urls.join(",")))
    }

    /// `OUTBOX_RELAY_AMQP_URL=amqp://…` (shell syntax), or a comment when the password was kept.
    pub fn env_line(&self) -> String {
        let name = format!(
            "{}_AMQP_URL",
            self.component.name().to_uppercase().replace('-', "_")
        );
        match self.amqp_url() {
            Some(url) => format!("{name}={}", sh_quote(url.expose_secret())),
            None => format!(
                "# {name}: user {} exists and keeps its password (give one to set it)",
                self.user
            ),
        }
    }
}

/// Why the set-up failed. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("AMQP_URL is not a valid AMQP URL")]
    InvalidUrl,
    #[error("--rabbitmqctl is empty")]
    NoRabbitmqctl,
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`rabbitmqctl {command}` timed out")]
    Timeout { command: String },
    #[error("`rabbitmqctl {command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot read rabbitmqctl's list of users: {0}")]
    UserList(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Declares the topology, then creates or updates the users (or, with `--print`, writes the
/// script that does to `out`). Returns each component's account.
pub async fn setup_users(
    args: &SetupUsersArgs,
    broker: &BrokerConfig,
    out: &mut impl std::io::Write,
) -> Result<Vec<UserAccount>, SetupError> {
    let admin_url = broker.amqp_url.expose_secret();
    // The vhost is the first node's (a cluster's nodes share their vhosts).
    let first = orderbridge_broker::amqp_urls(admin_url)
        .next()
        .ok_or(SetupError::InvalidUrl)?;
    let base = AMQPUri::from_str(first).map_err(|_| SetupError::InvalidUrl)?;
    if orderbridge_broker::amqp_urls(admin_url)
        .any(|url| AMQPUri::from_str(url).is_err() || with_credentials(url, "u", "p").is_none())
    {
        return Err(SetupError::InvalidUrl);
    }
    let rabbitmqctl = Rabbitmqctl::parse(&args.rabbitmqctl)?;
    let topology = declare_topology(broker).await?;
    let prefix = args
        .user_prefix
        .as_deref()
        .unwrap_or(&broker.broker_namespace);
    let vhost = base.vhost.clone();

    let existing = if args.print {
        Vec::new()
    } else {
        rabbitmqctl.users().await?
    };
    let mut accounts = Vec::new();
    let mut script = Script::new(&rabbitmqctl, &broker.broker_namespace, &vhost);
    for component in Component::ALL {
        let user = user_name(prefix, component);
        let permissions = topology.permissions(component);
        let given = args.password(component).cloned();
        let exists = existing.contains(&user);
        // A new user needs a password; the script cannot know whether the user exists.
        let password = match given {
            Some(p) => Some(p),
            None if exists && !args.print => None,
            None => Some(generate_password()),
        };
        if args.print {
            script.user(&user, password.as_ref(), &permissions);
        } else {
            match (&password, exists) {
                (Some(p), true) => {
                    rabbitmqctl
                        .run(&["change_password", &user], Some(p))
                        .await?
                }
                (Some(p), false) => rabbitmqctl.run(&["add_user", &user], Some(p)).await?,
                (None, _) => String::new(),
            };
            rabbitmqctl
                .run(
                    &[
                        "set_permissions",
                        "-p",
                        &vhost,
                        &user,
                        &permissions.configure,
                        &permissions.write,
                        &permissions.read,
                    ],
                    None,
                )
                .await?;
            tracing::info!(user, vhost, ?permissions, "broker user set up");
        }
        accounts.push(UserAccount {
            component,
            user,
            password,
            base: admin_url.to_owned(),
        });
    }
    if args.print {
        out.write_all(script.text.as_bytes())?;
    }
    Ok(accounts)
}

/// Declares the topology as AMQP_URL's user (whatever BROKER_DECLARE_TOPOLOGY says: declaring
/// is this command's job).
async fn declare_topology(broker: &BrokerConfig) -> Result<Topology, SetupError> {
    let mut declaring = broker.clone();
    declaring.broker_declare_topology = true;
    let supervisor = Supervisor::new(declaring.clone(), "orderbridge-broker-setup")?;
    let session = supervisor.try_connect().await?;
    session.close(&declaring).await;
    Ok(supervisor.topology().clone())
}

/// 192 random bits as hex: safe in a URL and a shell word as it is.
fn generate_password() -> SecretString {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// How rabbitmqctl is run: a program and the arguments before rabbitmqctl's own.
struct Rabbitmqctl {
    words: Vec<String>,
}

impl Rabbitmqctl {
    fn parse(command: &str) -> Result<Self, SetupError> {
        let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Err(SetupError::NoRabbitmqctl);
        }
        Ok(Self { words })
    }

    /// The names of the broker's users.
    async fn users(&self) -> Result<Vec<String>, SetupError> {
        #[derive(serde::Deserialize)]
        struct User {
            user: String,
        }
        let json = self
            .run(&["-q", "list_users", "--formatter", "json"], None)
            .await?;
        let users: Vec<User> =
            serde_json::from_str(&json).map_err(|e| SetupError::UserList(e.to_string()))?;
        Ok(users.into_iter().map(|u| u.user).collect())
    }

    /// Runs one rabbitmqctl command, `stdin` (a password) written to its input; returns its
    /// standard output.
    async fn run(&self, args: &[&str], stdin: Option<&SecretString>) -> Result<String, SetupError> {
        let command = args.join(" ");
        let (program, before) = self.words.split_first().ok_or(SetupError::NoRabbitmqctl)?;
        let mut child = tokio::process::Command::new(program)
            .args(before)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SetupError::Spawn {
                program: program.clone(),
                source,
            })?;
        if let (Some(secret), Some(mut input)) = (stdin, child.stdin.take()) {
            // rabbitmqctl reads the password as one line.
            input
                .write_all(format!("{}\n", secret.expose_secret()).as_bytes())
                .await?;
            drop(input);
        }
        let output = tokio::time::timeout(RABBITMQCTL_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| SetupError::Timeout {
                command: command.clone(),
            })??;
        if !output.status.success() {
            return Err(SetupError::Failed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The `--print` script: POSIX sh, the same commands as a run here would make.
struct Script {
    text: String,
    vhost: String,
}

impl Script {
    fn new(rabbitmqctl: &Rabbitmqctl, namespace: &str, vhost: &str) -> Self {
        let ctl: Vec<String> = rabbitmqctl.words.iter().map(|w| sh_quote(w)).collect();
        let text = format!(
            "#!/bin/sh\n\
             # orderbridge broker users for namespace {namespace:?} on vhost {vhost:?}\n\
             # (`orderbridge broker setup-users --print`; the topology is declared already).\n\
             # Run where rabbitmqctl reaches the broker, e.g. `| docker compose exec -T rabbitmq sh`.\n\
             set -eu\n\
             ctl() {{ {} \"$@\"; }}\n\
             # user NAME PASSWORD: create the user, or set an existing user's password.\n\
             user() {{\n\
             \x20 if ctl -q list_users | cut -f1 | grep -qxF \"$1\"; then\n\
             \x20   printf '%s\\n' \"$2\" | ctl change_password \"$1\" >/dev/null\n\
             \x20 else\n\
             \x20   printf '%s\\n' \"$2\" | ctl add_user \"$1\" >/dev/null\n\
             \x20 fi\n\
             }}\n",
            ctl.join(" ")
        );
        Self {
            text,
            vhost: vhost.to_owned(),
        }
    }

    fn user(&mut self, user: &str, password: Option<&SecretString>, p: &Permissions) {
        if let Some(password) = password {
            self.text.push_str(&format!(
                "user {} {}\n",
                sh_quote(user),
                sh_quote(password.expose_secret())
            ));
        }
        self.text.push_str(&format!(
            "ctl set_permissions -p {} {} {} {} {} >/dev/null\n",
            sh_quote(&self.vhost),
            sh_quote(user),
            sh_quote(&p.configure),
            sh_quote(&p.write),
            sh_quote(&p.read)
        ));
    }
}

/// `url` with its credentials replaced (the rest kept as written: host, port, vhost, options).
fn with_credentials(url: &str, user: &str, password: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    Some(format!(
        "{scheme}://{}:{}@{host}{tail}",
        percent_encode(user),
        percent_encode(password)
    ))
}

/// Everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` as one single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_keep_the_admin_url_but_the_credentials() {
        let a = UserAccount {
            component: Component::SyncWorker,
            user: "ns-sync-worker".into(),
            password: Some(SecretString::from("p4ss")),
            base: "amqps://guest:gu@st@broker.example:5673/v%2fh?heartbeat=5".into(),
        };
        assert_eq!(
            a.amqp_url().unwrap().expose_secret(),
            "amqps://ns-sync-worker:p4ss@broker.example:5673/v%2fh?heartbeat=5"
        );
        assert_eq!(
            a.env_line(),
            "SYNC_WORKER_AMQP_URL='amqps://ns-sync-worker:p4ss@broker.example:5673/v%2fh?heartbeat=5'"
        );
        assert_eq!(
            with_credentials("amqp://host", "a b", "p/w").as_deref(),
            Some("amqp://a%20b:p%2Fw@host")
        );
        assert_eq!(with_credentials("not a url", "u", "p"), None);
        // A cluster's node list: every node gets the credentials.
        let nodes = UserAccount {
            base: "amqp://admin:x@n1:5672/%2f,amqp://admin:x@n2:5673/%2f".into(),
            component: Component::OutboxRelay,
            user: "ns-outbox-relay".into(),
            password: Some(SecretString::from("pw")),
        };
        assert_eq!(
            nodes.amqp_url().unwrap().expose_secret(),
            "amqp://ns-outbox-relay:pw@n1:5672/%2f,amqp://ns-outbox-relay:pw@n2:5673/%2f"
        );
        let kept = UserAccount {
            password: None,
            ..a
        };
        assert!(
            kept.env_line()
                .starts_with("# SYNC_WORKER_AMQP_URL: user ns-sync-worker exists")
        );
    }

    #[test]
    fn the_script_quotes_every_word() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let ctl = Rabbitmqctl::parse("docker compose exec -T rabbitmq rabbitmqctl").unwrap();
        let mut s = Script::new(&ctl, "ns", "/");
        s.user(
            "ns-operator",
            Some(&SecretString::from("pw")),
            &Permissions {
                configure: "^$".into(),
                write: r"^(?:amq\.default)$".into(),
                read: r"^(?:ns\.dead\-letters)$".into(),
            },
        );
        assert!(
            s.text.contains(
                "ctl() { 'docker' 'compose' 'exec' '-T' 'rabbitmq' 'rabbitmqctl' \"$@\"; }"
            )
        );
        assert!(s.text.contains("user 'ns-operator' 'pw'\n"));
        assert!(s.text.contains(
            r"ctl set_permissions -p '/' 'ns-operator' '^$' '^(?:amq\.default)$' '^(?:ns\.dead\-letters)$' >/dev/null"
        ));
        assert!(Rabbitmqctl::parse("  ").is_err());
    }
}
