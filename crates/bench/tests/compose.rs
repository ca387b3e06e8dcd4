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

/// docker-compose.yml as JSON (PyYAML from the test tools' venv: YAML anchors and `<<` merges
/// resolved as Compose resolves them).
fn compose() -> serde_json::Value {
    let python = orderbridge_testkit::python_tool("python").unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root().join("docker-compose.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn services(c: &serde_json::Value) -> &serde_json::Map<String, serde_json::Value> {
    c["services"].as_object().unwrap()
}

/// One service builds the image; every other that runs it never tries to pull it (it exists
/// only locally), so `docker compose up --build` builds it once.
#[test]
fn the_image_is_built_once_and_never_pulled() {
    let c = compose();
    let building: Vec<&String> = services(&c)
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(building, ["order-api"]);
    for (name, s) in services(&c) {
        if s["image"] == "orderbridge:latest" && s.get("build").is_none() {
            assert_eq!(s["pull_policy"], "never", "{name}");
        }
    }
}

/// `docker compose run --rm orderbridge …` has every setting the operator commands need, and
/// reaches the emulator by the name its token answers give (its instance_url), and the
/// services' admin ports by the addresses they listen on.
#[test]
fn the_operator_command_runs_inside_the_stack() {
    let c = compose();
    let all = services(&c);
    let tool = &all["orderbridge"];
    assert_eq!(tool["profiles"], serde_json::json!(["tools"]));
    assert_eq!(tool["entrypoint"], serde_json::json!(["orderbridge"]));
    let env = &tool["environment"];
    for key in [
        "DATABASE_URL",
        "AMQP_URL",
        "BROKER_SIGNING_KEY",
        "SF_LOGIN_URL",
    ] {
        assert!(env.get(key).is_some(), "orderbridge lacks {key}");
    }
    assert_eq!(
        env["SF_LOGIN_URL"],
        all["sf-emulator"]["environment"]["SF_EMULATOR_INSTANCE_URL"]
    );
    let listed = env["ORDERBRIDGE_SERVICES"].as_str().unwrap();
    let mut admin_services = 0;
    for (name, s) in all {
        let Some(addr) = s["environment"]
            .as_object()
            .and_then(|e| e.iter().find(|(k, _)| k.ends_with("_ADMIN_ADDR")))
            .and_then(|(_, v)| v.as_str())
        else {
            continue;
        };
        if s.get("profiles").is_some() {
            continue; // the scale profile's second relay and worker
        }
        admin_services += 1;
        let port = addr.rsplit(':').next().unwrap();
        let entry = format!("{name}=http://{name}:{port}");
        assert!(
            listed.split(',').any(|e| e == entry),
            "ORDERBRIDGE_SERVICES lacks {entry}: {listed}"
        );
    }
    assert_eq!(listed.split(',').count(), admin_services, "{listed}");
}

/// The emulator's org outlives a restart (a named volume the image lets its user write), as
/// Postgres's orders do.
#[test]
fn the_emulator_keeps_its_org() {
    let c = compose();
    let emulator = &services(&c)["sf-emulator"];
    let file = emulator["environment"]["SF_EMULATOR_DATA_FILE"]
        .as_str()
        .unwrap();
    let dir = Path::new(file).parent().unwrap().to_str().unwrap();
    let volume = emulator["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| v.strip_suffix(&format!(":{dir}")))
        .unwrap_or_else(|| panic!("no volume mounted at {dir}"));
    assert!(
        c["volumes"].get(volume).is_some(),
        "{volume} is not a named volume"
    );
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("mkdir -p {dir} && chown 10001:10001 {dir}")),
        "the image does not give {dir} to its user"
    );
}

/// Every published port is on 127.0.0.1 and can be moved with a variable of its own.
#[test]
fn every_host_port_can_move() {
    let c = compose();
    let mut names = std::collections::BTreeSet::new();
    for (service, s) in services(&c) {
        for p in s["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            let rest = p
                .strip_prefix("127.0.0.1:${")
                .unwrap_or_else(|| panic!("{service}: {p} is not 127.0.0.1:${{VAR:-port}}:port"));
            let (var, rest) = rest.split_once(":-").unwrap();
            let (default, container) = rest.split_once("}:").unwrap();
            assert!(var.ends_with("_HOST_PORT"), "{service}: {p}");
            assert!(
                default.parse::<u16>().is_ok() && container.parse::<u16>().is_ok(),
                "{p}"
            );
            assert!(names.insert(var.to_owned()), "{var} moves two ports");
        }
    }
    assert!(names.len() >= 10, "{names:?}");
}

/// The image ships exactly the workspace's binaries, named one by one (a cached target/ may
/// hold stale ones).
#[test]
fn the_dockerfile_ships_exactly_the_workspace_binaries() {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    bins.sort();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let listed = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG BINS=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("ARG BINS=\"…\" in the Dockerfile");
    let mut shipped: Vec<String> = listed.split_whitespace().map(str::to_owned).collect();
    shipped.sort();
    assert_eq!(shipped, bins);
    assert!(
        !dockerfile.contains("-executable"),
        "no copying of every executable"
    );
}
