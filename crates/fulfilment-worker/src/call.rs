//! The call to the fulfilment system: the request body (the request row and its order), its
//! Standard Webhooks signature headers plus `Idempotency-Key` and `X-Correlation-Id`, and what
//! the answer means ([`Answer`]).
//!
//! ```text
//!  POST FULFILMENT_URL
//!  webhook-id: <request id>   webhook-timestamp: <unix s>   webhook-signature: v1,<base64 HMAC>
//!  Idempotency-Key: <idem key>   X-Correlation-Id: <correlation id>
//!  {"request_id","order_id","salesforce_id","idem_key","correlation_id","order":{…}}
//!
//!  2xx {"status":"provisioned"}            → Provisioned
//!  2xx {"status":"failed","reason":"…"}    → Failed(reason)
//!  202 (or 2xx {"status":"accepted"})      → Accepted: the result comes through the callback
//!  5xx, 408, 429, timeout, unreachable     → Retry (delay tiers)
//!  other 4xx, 1xx/3xx, unreadable 2xx body → Refused: the request fails with that reason
//! ```

use std::time::Duration;

use orderbridge_db::fulfilment::FulfilmentRequest;
use orderbridge_domain::fulfilment::{self, ProvisionRequest};
use orderbridge_domain::{Order, text};
use orderbridge_webhook::{HEADER_IDEMPOTENCY_KEY, KeyError, Webhook};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

/// The most of an answer's body read: answers are a line of JSON; more is not read at all.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest reason kept from an answer or an error (what the request row keeps).
pub const MAX_REASON_CHARS: usize = fulfilment::MAX_REASON_CHARS;

/// The request body: only the request's row and its order, so every attempt of one request
/// sends the same request (the receiver dedupes on `Idempotency-Key` regardless).
pub fn body(request: &FulfilmentRequest, order: Order) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&ProvisionRequest {
        request_id: request.id,
        order_id: request.order_id,
        salesforce_id: request.salesforce_id.clone(),
        idem_key: request.idem_key.clone(),
        correlation_id: request.correlation_id.clone(),
        order,
    })
}

/// What the fulfilment system's answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Provisioned,
    /// The fulfilment system decided it cannot provision the order.
    Failed(String),
    /// Taken; the result comes later through the callback.
    Accepted,
    /// Not answered (5xx, timeout, unreachable): try again later.
    Retry(String),
    /// Answered with something that will not change on retry (4xx, an unreadable body).
    Refused(String),
}

/// The HTTP side: one client (connection pool), the endpoint and the secret.
#[derive(Clone)]
pub struct Caller {
    http: reqwest::Client,
    url: reqwest::Url,
    signer: Webhook,
}

/// The caller cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("cannot build the HTTP client for FULFILMENT_URL: {0}")]
    Http(#[source] reqwest::Error),
    #[error("FULFILMENT_SIGNING_SECRET: {0}")]
    Secret(#[source] KeyError),
}

impl Caller {
    pub fn new(
        url: reqwest::Url,
        secret: SecretString,
        timeout: Duration,
    ) -> Result<Self, CallerError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would resend a signed request somewhere else: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "orderbridge-fulfilment-worker/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(CallerError::Http)?;
        let signer = Webhook::from_secrets(secret.expose_secret()).map_err(CallerError::Secret)?;
        Ok(Self { http, url, signer })
    }

    /// POSTs the signed request once and reads what the answer means.
    pub async fn call(&self, request: &FulfilmentRequest, body: &[u8]) -> Answer {
        let signed = self.signer.sign_now(&request.id.to_string(), body);
        let mut builder = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_IDEMPOTENCY_KEY, &request.idem_key)
            .body(body.to_vec());
        for (name, value) in signed.pairs() {
            builder = builder.header(name, value);
        }
        // Only a value a header can carry (it came from outside); the trace has it either way.
        if let Some(c) = request
            .correlation_id
            .as_deref()
            .and_then(|c| reqwest::header::HeaderValue::from_str(c).ok())
        {
            builder = builder.header("X-Correlation-Id", c);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Answer::Retry("the fulfilment system did not answer in time".into());
            }
            Err(e) => {
                return Answer::Retry(reason(&format!(
                    "cannot reach the fulfilment system: {}",
                    error_chain(&e)
                )));
            }
        };
        let status = response.status();
        let body = match read_bounded(response).await {
            Ok(b) => b,
            Err(e) if status.is_success() => {
                return Answer::Retry(reason(&format!(
                    "the answer's body was not received: {}",
                    error_chain(&e)
                )));
            }
            Err(_) => Vec::new(),
        };
        interpret(status, &body)
    }
}

/// What an answer (status and body) means; see the module docs.
pub fn interpret(status: StatusCode, body: &[u8]) -> Answer {
    let snippet = || text::truncate(&String::from_utf8_lossy(body), 200).to_owned();
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Answer::Retry(reason(&format!(
            "the fulfilment system answered {status}: {}",
            snippet()
        )));
    }
    if !status.is_success() {
        return Answer::Refused(reason(&format!(
            "the fulfilment system refused the request ({status}): {}",
            snippet()
        )));
    }
    if status == StatusCode::ACCEPTED {
        return Answer::Accepted;
    }
    match serde_json::from_slice::<fulfilment::Answer>(body) {
        Ok(fulfilment::Answer::Provisioned) => Answer::Provisioned,
        Ok(fulfilment::Answer::Failed { reason: r }) => Answer::Failed(reason(
            r.as_deref()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or("the fulfilment system gave no reason"),
        )),
        Ok(fulfilment::Answer::Accepted) => Answer::Accepted,
        Err(e) => Answer::Refused(reason(&format!(
            "the fulfilment system's answer ({status}) cannot be read ({e}): {}",
            snippet()
        ))),
    }
}

/// A reason as stored: bounded, no control characters (it is shown in the API and in
/// Salesforce).
pub fn reason(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text::truncate(clean.trim(), MAX_REASON_CHARS).to_owned()
}

/// An error with its sources, for a reason a person reads ("error sending request" alone says
/// nothing).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_mean_what_the_contract_says() {
        let ok = StatusCode::OK;
        assert_eq!(
            interpret(ok, br#"{"status":"provisioned"}"#),
            Answer::Provisioned
        );
        assert_eq!(
            interpret(ok, br#"{"status":"failed","reason":"no stock"}"#),
            Answer::Failed("no stock".into())
        );
        assert!(
            matches!(interpret(ok, br#"{"status":"failed"}"#), Answer::Failed(r) if !r.is_empty())
        );
        assert_eq!(interpret(StatusCode::ACCEPTED, b""), Answer::Accepted);
        assert_eq!(interpret(ok, br#"{"status":"accepted"}"#), Answer::Accepted);
        assert!(matches!(
            interpret(StatusCode::INTERNAL_SERVER_ERROR, b"boom"),
            Answer::Retry(_)
        ));
        assert!(matches!(
            interpret(StatusCode::BAD_GATEWAY, b""),
            Answer::Retry(_)
        ));
        assert!(matches!(
            interpret(StatusCode::TOO_MANY_REQUESTS, b""),
            Answer::Retry(_)
        ));
        assert!(
            matches!(interpret(StatusCode::BAD_REQUEST, b"bad"), Answer::Refused(r) if r.contains("400"))
        );
        assert!(matches!(
            interpret(StatusCode::UNAUTHORIZED, b""),
            Answer::Refused(_)
        ));
        assert!(matches!(interpret(ok, b"<html>"), Answer::Refused(_)));
        assert!(matches!(
            interpret(ok, br#"{"status":"maybe"}"#),
            Answer::Refused(_)
        ));
        assert!(matches!(
            interpret(StatusCode::FOUND, b""),
            Answer::Refused(_)
        ));
    }

    #[test]
    fn reasons_are_bounded_and_single_line() {
        let long = "x".repeat(5000);
        assert_eq!(reason(&long).chars().count(), MAX_REASON_CHARS);
        assert_eq!(reason(" a\nb\tc "), "a b c");
    }
}
