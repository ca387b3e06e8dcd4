//! The OpenAPI 3.1 document, generated from the handlers and types. Committed as
//! `openapi/openapi.json`; `order-api openapi > openapi/openapi.json` rewrites it.

use orderbridge_mapping::Targets;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
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
        crate::events::order_events,
        crate::orders::resync_order,
        crate::provision::provision_order,
        crate::fulfilment_callback::fulfilment_callback,
        crate::outbound::receive,
        crate::health::live,
        crate::health::ready,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Order intake and status"),
        (name = "fulfilment", description = "Results from the fulfilment system (signed webhooks)"),
        (name = "salesforce", description = "Webhooks Salesforce calls (outbound messages)"),
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

/// The document for a mapping: the request's `maxLength`s tightened to what the mapped
/// Salesforce fields hold, since intake refuses longer values (see `crate::field_limits`).
/// With several targets, each field's tightest limit among them.
pub fn document(targets: &Targets) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let Some(components) = doc.components.as_mut() else {
        return doc;
    };
    let limits = targets
        .targets()
        .iter()
        .flat_map(|t| t.mapping.text_limits());
    for (path, max) in limits {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let (schema, field) = match path[..] {
            ["customer", field] => ("CustomerInput", field),
            ["billing_address" | "shipping_address", field] => ("AddressInput", field),
            ["lines", field] => ("LineInput", field),
            [field] => ("NewOrderRequest", field),
            _ => continue,
        };
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
            && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
            && property.enum_values.is_none()
            && property.max_length.is_none_or(|m| m > max)
        {
            property.max_length = Some(max);
        }
    }
    doc
}

/// The document for the built-in mapping as pretty JSON with a trailing newline, exactly as
/// committed.
pub fn json() -> String {
    let doc = Targets::load(None)
        .map(|t| document(&t))
        .unwrap_or_else(|_| ApiDoc::openapi());
    let mut s = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
