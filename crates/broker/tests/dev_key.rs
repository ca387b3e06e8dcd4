//! The public development signing key is written out where a developer starts the stack
//! (scripts/dev, docker-compose.yml, .env.example); they must all name the same key the
//! services recognise (and warn about), or a local stack would dead-letter every message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use orderbridge_broker::signing::DEV_SIGNING_KEY;

#[test]
fn every_dev_setup_uses_the_development_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["scripts/dev", "docker-compose.yml", ".env.example"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(DEV_SIGNING_KEY),
            "{file} does not set the development key {DEV_SIGNING_KEY}"
        );
    }
}
