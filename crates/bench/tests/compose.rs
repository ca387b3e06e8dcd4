//! The compose files validate against the Compose Specification's JSON schema. There is no
//! Docker engine to run them here (nor in CI), so this is what keeps a typo or an option of the
//! wrong shape out: check-jsonschema (pinned in tools/requirements-test.txt) with the schema it
//! vendors (`vendor.compose-spec`, so nothing is downloaded when the test runs).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

const COMPOSE_FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.broker-users.yml"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(files: &[PathBuf]) -> Output {
    let tool = orderbridge_testkit::python_tool("check-jsonschema").unwrap();
    std::process::Command::new(tool)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .args(files)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_compose_files_validate_against_the_compose_specification() {
    let files: Vec<PathBuf> = COMPOSE_FILES.iter().map(|f| root().join(f)).collect();
    let out = check(&files);
    assert!(out.status.success(), "{}", text(&out));
}

/// The check is not vacuous: the same file with one misspelt key, or a port of the wrong
/// type, fails with the schema's reason.
#[test]
fn a_broken_compose_file_is_refused() {
    let good = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let dir = std::env::temp_dir().join(format!("compose-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "misspelt",
            good.replacen("\nservices:", "\nservics:", 1),
            "servics",
        ),
        (
            "restart-list",
            good.replacen("restart: unless-stopped", "restart: [unless-stopped]", 1),
            "restart",
        ),
    ];
    for (name, yaml, why) in cases {
        assert_ne!(yaml, good, "{name}: the edit must change the file");
        let path = dir.join(format!("{name}.yml"));
        std::fs::write(&path, yaml).unwrap();
        let out = check(&[path]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out).contains(why), "{name}: {}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
