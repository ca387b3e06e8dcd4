//! Shared helpers: an in-process emulator on a free port and a logged-in HTTP client.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sf_emulator::config::{
    DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_PASSWORD, DEV_SECURITY_TOKEN, DEV_USERNAME,
};
use sf_emulator::{EmulatorConfig, RunningEmulator};

pub const V: &str = "/services/data/v62.0";

pub struct Org {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
    pub token: String,
}

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn password_form() -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "password".into()),
        ("client_id", DEV_CLIENT_ID.into()),
        ("client_secret", DEV_CLIENT_SECRET.into()),
        ("username", DEV_USERNAME.into()),
        ("password", format!("{DEV_PASSWORD}{DEV_SECURITY_TOKEN}")),
    ]
}

impl Org {
    pub async fn start() -> Self {
        Self::start_with(EmulatorConfig::ephemeral()).await
    }

    pub async fn start_with(config: EmulatorConfig) -> Self {
        let emu = sf_emulator::spawn(config).await.unwrap();
        let http = client();
        let mut org = Self {
            emu,
            http,
            token: String::new(),
        };
        let login = org.token_request(&password_form()).await;
        assert_eq!(login.status, 200, "{}", login.body);
        org.token = login.body["access_token"].as_str().unwrap().to_owned();
        org
    }

    pub fn base(&self) -> &str {
        &self.emu.base_url
    }

    pub async fn token_request(&self, form: &[(&str, String)]) -> Resp {
        let r = self
            .http
            .post(format!("{}/services/oauth2/token", self.base()))
            .form(form)
            .send()
            .await
            .unwrap();
        to_resp(r).await
    }

    /// A data API call under /services/data/v62.0 with the session token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.call_with(method, &format!("{V}{path}"), body, &[])
            .await
    }

    /// Any call with the session token; `path` is absolute.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        to_resp(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn query(&self, q: &str) -> Resp {
        let r = self
            .http
            .get(format!("{}{V}/query", self.base()))
            .query(&[("q", q)])
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        to_resp(r).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let is_post = method == Method::POST;
        let mut req = self
            .http
            .request(method, format!("{}/__admin{path}", self.base()));
        if let Some(b) = body {
            req = req.json(&b);
        } else if is_post {
            // Admin writes are JSON only, even when there is nothing to say.
            req = req.json(&json!({}));
        }
        to_resp(req.send().await.unwrap()).await
    }

    pub async fn faults(&self, body: Value) -> Resp {
        let r = self.admin(Method::POST, "/faults", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r
    }

    pub async fn stats(&self) -> Value {
        self.admin(Method::GET, "/stats", None).await.body
    }

    /// Creates an Account and returns its id.
    pub async fn account(&self, name: &str, ext: &str) -> String {
        let r = self
            .post(
                "/sobjects/Account",
                json!({"Name": name, "External_Id__c": ext}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }
}

impl Org {
    /// Creates a Draft Order of a new Account and returns its id.
    pub async fn draft_order(&self, ext: &str, extra: Value) -> String {
        let acc = self
            .account(&format!("Acme {ext}"), &format!("ACC-{ext}"))
            .await;
        let mut body = json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Draft", "External_Id__c": ext});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.post("/sobjects/Order", body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Sets an Order's Status (an activation must change nothing else).
    pub async fn set_status(&self, id: &str, status: &str) {
        let r = self
            .patch(&format!("/sobjects/Order/{id}"), json!({"Status": status}))
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }

    /// Adds a Flow rule through the admin API.
    pub async fn add_flow(&self, rule: Value) -> Resp {
        let r = self.admin(Method::POST, "/flows", Some(rule)).await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        r
    }
}

pub async fn to_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// The `errorCode` of a top-level error reply.
pub fn error_code(body: &Value) -> &str {
    body[0]["errorCode"].as_str().unwrap_or_default()
}
