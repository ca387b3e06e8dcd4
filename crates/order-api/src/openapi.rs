//! The OpenAPI 3.1 document, generated from the handlers and types. Committed as
//! `openapi/openapi.json`; `order-api openapi > openapi/openapi.json` rewrites it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderbridge order API",
        description = "Accepts orders, stores each with its event in one transaction, and reports \
            their sync to Salesforce. Errors are RFC 9457 problem documents.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::orders::create_order,
        crate::orders::list_orders,
        crate::orders::get_order,
        crate::orders::resync_order,
        crate::health::live,
        crate::health::ready,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Order intake and status"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `order-api create-api-key --name <client>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON with a trailing newline, exactly as committed.
pub fn json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
