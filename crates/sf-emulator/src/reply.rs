//! The shapes the emulator answers with: REST errors (`errorCode`, top level, as an array),
//! per-record errors (`statusCode`), and a transport-neutral reply that both the HTTP layer and
//! Composite (which embeds subresponses in its body) can use.
//!
//! The one conversion of a [`Reply`] into an HTTP response, [`to_response`], lives here too, so
//! the data API's wiring (`http`) and the admin API (`admin`) share it without either depending
//! on the other.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// A per-record error as Salesforce reports it inside DML results (`statusCode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub code: String,
    pub message: String,
    pub fields: Vec<String>,
}

impl RecordError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    /// The record-result form: `{"statusCode","message","fields"}`.
    pub fn record_json(&self) -> Value {
        json!({"statusCode": self.code, "message": self.message, "fields": self.fields})
    }

    /// The HTTP status a single-record REST call answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "NOT_FOUND" | "ENTITY_IS_DELETED" => 404,
            _ => 400,
        }
    }

    /// As a top-level REST error reply.
    pub fn into_reply(self) -> Reply {
        let status = self.http_status();
        Reply::json(
            status,
            json!([{"message": self.message, "errorCode": self.code, "fields": self.fields}]),
        )
    }
}

/// A response before it becomes HTTP (or a Composite subresponse).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// A top-level REST error: `[{"message","errorCode"}]`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            json!([{"message": message.into(), "errorCode": code}]),
        )
    }

    pub fn not_found() -> Self {
        Self::error(404, "NOT_FOUND", "The requested resource does not exist")
    }

    pub fn invalid_session() -> Self {
        Self::error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    }

    pub fn is_success(&self) -> bool {
        self.status < 300
    }
}

/// The HTTP status and message an injected fault with this error code answers with.
pub fn fault_reply(code: &str) -> Reply {
    match code {
        "UNABLE_TO_LOCK_ROW" => Reply::error(
            400,
            code,
            "unable to obtain exclusive access to this record or 1 records (emulated fault)",
        ),
        "REQUEST_LIMIT_EXCEEDED" => Reply::error(403, code, "TotalRequests Limit exceeded."),
        "INVALID_SESSION_ID" => Reply::invalid_session(),
        "SERVER_UNAVAILABLE" => Reply::error(503, code, "Server unavailable (emulated fault)"),
        "UNKNOWN_EXCEPTION" => {
            Reply::error(500, code, "An unexpected error occurred (emulated fault)")
        }
        other => match other.parse::<u16>() {
            Ok(status) if (400..600).contains(&status) => Reply::error(
                status,
                if status >= 500 {
                    "SERVER_UNAVAILABLE"
                } else {
                    "BAD_REQUEST"
                },
                format!("HTTP {status} (emulated fault)"),
            ),
            _ => Reply::error(400, other, format!("{other} (emulated fault)")),
        },
    }
}

/// Converts a reply to an HTTP response, adding `Sforce-Limit-Info` when given.
pub fn to_response(reply: Reply, limit_info: Option<String>) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = Response::builder().status(status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some(info) = limit_info {
        builder = builder.header("Sforce-Limit-Info", info);
    }
    let body = match reply.body {
        Some(v) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json;charset=UTF-8");
            Body::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        None => Body::empty(),
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::from("invalid response header"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
