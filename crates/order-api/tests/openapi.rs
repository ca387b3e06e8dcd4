//! The committed OpenAPI document must be what the code generates. When this fails after an
//! intended API change, rewrite it with:
//!
//!     cargo run -p order-api -- openapi > openapi/openapi.json

#[test]
fn committed_openapi_matches_the_code() {
    let committed = include_str!("../../../openapi/openapi.json");
    let generated = order_api::openapi::json();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale; run `cargo run -p order-api -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn every_operation_documents_its_errors_as_problems() {
    let doc: serde_json::Value = match serde_json::from_str(&order_api::openapi::json()) {
        Ok(v) => v,
        Err(e) => panic!("generated document is not JSON: {e}"),
    };
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if path.starts_with("/health") {
                continue;
            }
            if path.starts_with("/v1/salesforce/") {
                // Salesforce's SOAP webhook: no API key, and every answer is SOAP (faults too).
                let responses = op["responses"].as_object().into_iter().flatten();
                let mut statuses = Vec::new();
                for (status, response) in responses {
                    statuses.push(status.clone());
                    assert!(
                        response["content"]["text/xml"].is_object(),
                        "{method} {path} {status} must be text/xml"
                    );
                }
                for required in ["200", "400", "403", "413", "415", "500", "503"] {
                    assert!(
                        statuses.iter().any(|s| s == required),
                        "{method} {path} lacks {required}"
                    );
                }
                continue;
            }
            let responses = op["responses"].as_object().into_iter().flatten();
            let mut statuses = Vec::new();
            for (status, response) in responses {
                statuses.push(status.clone());
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} must be application/problem+json"
                    );
                }
            }
            for required in ["401", "429", "500", "503"] {
                assert!(
                    statuses.iter().any(|s| s == required),
                    "{method} {path} lacks {required}"
                );
            }
        }
    }
}
