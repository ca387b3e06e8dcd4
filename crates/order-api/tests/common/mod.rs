//! Test harness: the real router over a per-test Postgres database (`TestDatabase`),
//! driven in-process with `oneshot`.
#![allow(dead_code, clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use order_api::{ApiConfig, AppState};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

#[derive(Clone)]
pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub state: AppState,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem document with this status and type, and returns it.
    pub fn problem(&self, status: u16, problem_type: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], json!(status));
        assert_eq!(p["type"], json!(problem_type));
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()));
        p
    }
}

impl TestApp {
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, ApiConfig::default())
    }

    pub fn with_config(pool: PgPool, config: ApiConfig) -> Self {
        let state = AppState::new(pool.clone(), config);
        Self {
            router: order_api::app(state.clone()),
            pool,
            state,
        }
    }

    pub async fn key(&self, client: &str) -> String {
        order_api::auth::create_api_key(&self.pool, client)
            .await
            .unwrap()
            .key
    }

    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes().to_vec(),
        }
    }

    pub async fn post_order(
        &self,
        key: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> TestResponse {
        let mut req = Request::post("/v1/orders")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        self.send(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn get(&self, key: &str, uri: &str) -> TestResponse {
        self.send(
            Request::get(uri)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// The ids of the orders a list request answers with, in its order.
    pub async fn list_ids(&self, key: &str, uri: &str) -> Vec<Value> {
        self.get(key, uri).await.json()["items"]
            .as_array()
            .expect("a list answer has items")
            .iter()
            .map(|o| o["id"].clone())
            .collect()
    }

    /// The ids of every order a list request leads to, following `next_cursor` page by page
    /// (`uri` must already carry a query string).
    pub async fn list_all_ids(&self, key: &str, uri: &str) -> Vec<Value> {
        let mut ids = Vec::new();
        let mut next = uri.to_owned();
        loop {
            let page = self.get(key, &next).await.json();
            ids.extend(
                page["items"]
                    .as_array()
                    .expect("a list answer has items")
                    .iter()
                    .map(|o| o["id"].clone()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => next = format!("{uri}&cursor={c}"),
                None => return ids,
            }
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// A valid order with three lines (total 40.72 EUR).
pub fn order_body(client_ref: &str) -> Value {
    json!({
        "client_ref": client_ref,
        "customer": {"external_id": "CUST-42", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "shipping_address": {"line1": "Hauptstraße 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"},
            {"sku": "SKU-TEA", "name": "Green tea", "quantity": 3, "unit_price": "4.99"},
            {"sku": "SKU-SPOON", "name": "Spoon", "quantity": 1, "unit_price": "0.75"}
        ]
    })
}
