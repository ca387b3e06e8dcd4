//! The committed message schemas (`schemas/*.json`) must be what the code generates. When this
//! fails after an intended change to a message type, rewrite them with:
//!
//!     UPDATE_SCHEMAS=1 cargo test -p orderbridge-domain --test message_schemas
//!
//! and review the diff: anything but an added field needs a new message version.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use orderbridge_domain::contracts::message_schemas;

const REFRESH: &str = "UPDATE_SCHEMAS=1 cargo test -p orderbridge-domain --test message_schemas";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

#[test]
fn committed_schemas_match_the_code() {
    let generated = message_schemas();
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    if update {
        std::fs::create_dir_all(dir()).unwrap();
    }
    let mut stale = Vec::new();
    for schema in &generated {
        let path = dir().join(schema.file_name());
        let text = schema.to_pretty_json();
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(schema.file_name());
        }
    }
    // A schema whose message no longer exists would go on promising it to other systems.
    let wanted: BTreeSet<String> = generated.iter().map(|s| s.file_name()).collect();
    let mut extra = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !wanted.contains(&name) {
            if update {
                std::fs::remove_file(dir().join(&name)).unwrap();
            } else {
                extra.push(name);
            }
        }
    }
    assert!(
        stale.is_empty() && extra.is_empty(),
        "schemas/ is stale (differs: {stale:?}; no longer generated: {extra:?}); run `{REFRESH}` \
         and review the diff"
    );
}

/// The file names are what the AsyncAPI document and other systems refer to: one per type and
/// version, named after both.
#[test]
fn one_schema_per_message_type_and_version() {
    let names: Vec<String> = message_schemas().iter().map(|s| s.file_name()).collect();
    assert_eq!(
        names,
        [
            "order.submitted.v1.json",
            "order.sync_status.v1.json",
            "fulfilment.requested.v1.json",
            "fulfilment.result.v1.json",
        ]
    );
    for schema in message_schemas() {
        let s = &schema.schema;
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(s["properties"]["type"]["const"], schema.event_type);
        assert_eq!(s["properties"]["version"]["const"], schema.version);
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in [
            "id",
            "type",
            "version",
            "occurred_at",
            "correlation_id",
            "data",
        ] {
            assert!(required.contains(&field), "{}: {field}", schema.file_name());
        }
        assert!(schema.to_pretty_json().ends_with("}\n"));
    }
}
