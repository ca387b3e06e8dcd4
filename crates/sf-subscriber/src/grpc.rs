//! The Pub/Sub API connection: the channel, the auth metadata every call carries, and what a
//! failed call means for the stream ([`Failure`]).

use std::time::Duration;

use orderbridge_pubsub::proto::pub_sub_client::PubSubClient;
use orderbridge_pubsub::{REPLAY_ID_VALIDATION_FAILED, error_codes, metadata};
use orderbridge_salesforce::SessionToken;
use secrecy::ExposeSecret;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Largest response message accepted: a batch of 100 events of up to 1 MB each (Salesforce's
/// event size limit) fits; anything bigger is refused by the codec instead of buffered.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Opens a channel to the endpoint (plain HTTP/2; see the crate README for TLS).
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<PubSubClient<Channel>, Failure> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| Failure::Other(format!("SF_PUBSUB_ENDPOINT: {e}")))?
        .connect_timeout(timeout)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // HTTP/2 pings notice a dead peer well before the server's 270 s keepalive would.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = tokio::time::timeout(timeout, ep.connect())
        .await
        .map_err(|_| Failure::Other(format!("connecting to {endpoint} timed out")))?
        .map_err(|e| Failure::Other(format!("cannot connect to {endpoint}: {e}")))?;
    Ok(PubSubClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Adds `accesstoken`, `instanceurl` and `tenantid` to a request.
pub fn authed<T>(message: T, token: &SessionToken, org_id: &str) -> Result<Request<T>, Failure> {
    let mut request = Request::new(message);
    let md = request.metadata_mut();
    let value = |v: &str, what: &str| {
        v.parse()
            .map_err(|_| Failure::Other(format!("the {what} is not a valid gRPC metadata value")))
    };
    md.insert(
        metadata::ACCESS_TOKEN,
        value(token.access_token.expose_secret(), "access token")?,
    );
    md.insert(
        metadata::INSTANCE_URL,
        value(&token.instance_url, "instance URL")?,
    );
    md.insert(metadata::TENANT_ID, value(org_id, "org id")?);
    Ok(request)
}

/// What a failed call means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token was refused: refresh it (the login it came from is `generation`) and re-open.
    Auth { generation: u64, detail: String },
    /// The CUSTOM replay id is expired, unknown or corrupt.
    ReplayInvalid(String),
    /// Anything else: re-open after a backoff.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auth { detail, .. } => write!(f, "authentication refused: {detail}"),
            Self::ReplayInvalid(d) => write!(f, "replay id refused: {d}"),
            Self::Other(d) => f.write_str(d),
        }
    }
}

impl Failure {
    /// Classifies a gRPC status by its code and its `error-code` trailer.
    pub fn from_status(status: &Status, generation: u64) -> Self {
        let code = status
            .metadata()
            .get(metadata::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let detail = format!(
            "{:?}: {}{}",
            status.code(),
            status.message().chars().take(300).collect::<String>(),
            if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        );
        if status.code() == Code::Unauthenticated
            || code == error_codes::AUTH_ERROR
            || code.ends_with(".auth.error")
        {
            return Self::Auth { generation, detail };
        }
        if status.code() == Code::InvalidArgument
            && (code == error_codes::REPLAY_ID_CORRUPTED
                || status.message() == REPLAY_ID_VALIDATION_FAILED)
        {
            return Self::ReplayInvalid(detail);
        }
        Self::Other(detail)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_code(code: Code, msg: &str, error_code: Option<&str>) -> Status {
        let mut s = Status::new(code, msg);
        if let Some(c) = error_code {
            s.metadata_mut()
                .insert(metadata::ERROR_CODE, c.parse().unwrap());
        }
        s
    }

    #[test]
    fn classifies_by_code_and_trailer() {
        assert!(matches!(
            Failure::from_status(&with_code(Code::Unauthenticated, "x", None), 3),
            Failure::Auth { generation: 3, .. }
        ));
        assert!(matches!(
            Failure::from_status(
                &with_code(Code::PermissionDenied, "x", Some(error_codes::AUTH_ERROR)),
                1
            ),
            Failure::Auth { .. }
        ));
        assert!(matches!(
            Failure::from_status(
                &with_code(
                    Code::InvalidArgument,
                    REPLAY_ID_VALIDATION_FAILED,
                    Some(error_codes::REPLAY_ID_CORRUPTED)
                ),
                1
            ),
            Failure::ReplayInvalid(_)
        ));
        assert!(matches!(
            Failure::from_status(&with_code(Code::InvalidArgument, "other", None), 1),
            Failure::Other(_)
        ));
        assert!(matches!(
            Failure::from_status(&with_code(Code::Unavailable, "down", None), 1),
            Failure::Other(_)
        ));
    }
}
