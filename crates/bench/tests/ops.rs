//! The monitoring kit in `ops/` (Prometheus scrape config and alert rules, Grafana dashboard and
//! provisioning) checked against the code:
//!
//! - promtool accepts the rules, their unit tests pass, the scrape config is valid, and every
//!   dashboard query parses. promtool must be installed (Debian's `prometheus` package; `.ci/run`
//!   installs it): these tests fail rather than skip without it.
//! - Every alert has the annotations operators need, and a unit test that fires it and one that
//!   does not.
//! - The dashboard is valid JSON whose every panel has the provisioned data source and a query.
//! - Prometheus scrapes every admin port docker-compose.yml gives a service, and the compose
//!   file's mounts of `ops/` exist.
//! - Every metric name the rules and the dashboard use is exported by a service: the bench's
//!   `fulfilment` suite starts every service that has metrics, and its scrapes of their
//!   `/metrics` (`metrics-<service>.txt` in its output directory) are read.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BENCH, out_dir, service_bins};
use serde_json::Value;

/// The services with an admin `/metrics`, as the bench names them (and docker-compose.yml).
const METRIC_SERVICES: [&str; 5] = [
    "order-api",
    "outbox-relay",
    "sync-worker",
    "sf-subscriber",
    "fulfilment-worker",
];

/// Names Prometheus makes itself for every scrape target, not exported by any service.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs promtool in `dir`; a missing promtool is a failure with the way to install it.
fn promtool(dir: &Path, args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so ops/prometheus cannot be checked: install Debian's \
             `prometheus` package (`apt-get install -y prometheus`; .ci/run does it)"
        ),
        Err(e) => panic!("cannot run promtool {args:?}: {e}"),
    }
}

fn assert_promtool(dir: &Path, args: &[&str]) {
    let out = promtool(dir, args);
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_config() {
    let dir = ops().join("prometheus");
    assert_promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert_promtool(&dir, &["test", "rules", "alerts.test.yml"]);
    // Also loads alerts.yml, named relative to the config as in the container.
    assert_promtool(&dir, &["check", "config", "prometheus.yml"]);
}

/// promtool has no command for a bare query; each dashboard query becomes a recording rule.
#[test]
fn every_dashboard_query_parses() {
    let exprs = dashboard_exprs();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        // Grafana's own interval variable; any duration stands in for it.
        let expr = expr.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = out_dir("ops-dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-queries.yml"), rules).unwrap();
    assert_promtool(&dir, &["check", "rules", "dashboard-queries.yml"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rules file split by alert: (name, its lines).
fn alert_blocks(yaml: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            blocks.push((name.trim().to_owned(), String::new()));
        } else if trimmed.starts_with("- name:") {
            // A new group: what follows belongs to no alert until the next one.
            blocks.push((String::new(), String::new()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

#[test]
fn every_alert_has_a_runbook_and_tests_both_ways() {
    let rules = read(&ops().join("prometheus/alerts.yml"));
    let alerts = alert_blocks(&rules);
    assert!(alerts.len() >= 15, "only {} alerts found", alerts.len());
    let mut seen = BTreeSet::new();
    for (name, body) in &alerts {
        assert!(seen.insert(name.clone()), "alert {name} defined twice");
        for key in ["expr:", "severity:", "summary:", "description:", "runbook:"] {
            assert!(
                body.lines().any(|l| l.trim_start().starts_with(key)),
                "alert {name} has no `{key}`"
            );
        }
        // The runbook convention (ops/README.md): what to look at, then what to do.
        let runbook = &body[body.find("runbook:").unwrap()..];
        assert!(
            runbook.contains("Check:") && runbook.contains("Do:"),
            "alert {name}: its runbook must say what to check (`Check:`) and what to do (`Do:`)"
        );
    }

    // alertname → (a case expecting it to fire, a case expecting nothing).
    let tests = read(&ops().join("prometheus/alerts.test.yml"));
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for pair in lines.windows(2) {
        let Some(name) = pair[0].strip_prefix("alertname:") else {
            continue;
        };
        let entry = cases.entry(name.trim()).or_default();
        match pair[1] {
            "exp_alerts: []" => entry.1 = true,
            "exp_alerts:" => entry.0 = true,
            other => panic!("after `alertname: {name}` expected `exp_alerts:`, got `{other}`"),
        }
    }
    for (name, _) in &alerts {
        let (fires, quiet) = cases.get(name.as_str()).copied().unwrap_or_default();
        assert!(fires, "alerts.test.yml has no case where {name} fires");
        assert!(
            quiet,
            "alerts.test.yml has no case where {name} does not fire"
        );
    }
    for name in cases.keys() {
        assert!(
            seen.contains(*name),
            "alerts.test.yml tests {name}, which alerts.yml does not define"
        );
    }
}

/// The uid of the data source Grafana is provisioned with.
fn provisioned_datasource_uid() -> String {
    let ds = read(&ops().join("grafana/provisioning/datasources/prometheus.yml"));
    let uids: Vec<&str> = ds
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(str::trim)
        .collect();
    assert_eq!(uids.len(), 1, "expected one data source uid: {uids:?}");
    uids[0].to_owned()
}

fn dashboard() -> Value {
    let path = ops().join("grafana/dashboards/orderbridge.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every `expr` in the dashboard, wherever it sits.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

#[test]
fn every_dashboard_panel_has_the_data_source_and_a_query() {
    let uid = provisioned_datasource_uid();
    let dash = dashboard();
    assert_eq!(dash["uid"], "orderbridge");
    let panels = dash["panels"]
        .as_array()
        .expect("the dashboard has no panels");
    assert!(panels.len() >= 12, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        assert!(ids.insert(p["id"].as_u64()), "panel id repeated: {title}");
        assert_ne!(
            p["type"], "row",
            "{title}: rows hold no query; keep panels flat"
        );
        assert!(p["gridPos"].is_object(), "{title}: no gridPos");
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some(uid.as_str()),
            "{title}: not the provisioned data source"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert_eq!(
                t["datasource"]["uid"].as_str(),
                Some(uid.as_str()),
                "{title}: target {expr} not on the provisioned data source"
            );
        }
    }
    // The provider's path is where docker-compose.yml mounts ops/grafana/dashboards.
    let provider = read(&ops().join("grafana/provisioning/dashboards/orderbridge.yml"));
    let path = provider
        .lines()
        .find_map(|l| l.trim().strip_prefix("path:"))
        .expect("the dashboard provider names no path")
        .trim()
        .to_owned();
    let compose = read(&ops().join("../docker-compose.yml"));
    assert!(
        compose.contains(&format!("./ops/grafana/dashboards:{path}")),
        "docker-compose.yml does not mount ops/grafana/dashboards at {path}"
    );
}

#[test]
fn prometheus_scrapes_every_admin_port_of_the_compose_file() {
    let compose = read(&ops().join("../docker-compose.yml"));
    let config = read(&ops().join("prometheus/prometheus.yml"));
    let ports: BTreeSet<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("port:"))
        .map(str::trim)
        .collect();
    let mut admin = 0;
    for line in compose.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if !key.ends_with("_ADMIN_ADDR") {
            continue;
        }
        admin += 1;
        let port = value.trim().rsplit(':').next().unwrap_or("");
        assert!(
            ports.contains(port),
            "docker-compose.yml gives {key} port {port}, which prometheus.yml does not scrape"
        );
    }
    assert!(
        admin >= METRIC_SERVICES.len(),
        "only {admin} admin addresses in docker-compose.yml"
    );
    for svc in METRIC_SERVICES {
        assert!(
            config.contains(&format!("job_name: {svc}")),
            "prometheus.yml has no job {svc}"
        );
    }
    // Every ./ops/… path the compose file mounts exists.
    for word in compose.split_whitespace() {
        let Some(path) = word.trim_start_matches("- ").strip_prefix("./ops/") else {
            continue;
        };
        let local = path.split(':').next().unwrap_or("");
        assert!(
            ops().join(local).exists(),
            "docker-compose.yml mounts ./ops/{local}, which does not exist"
        );
    }
    assert!(compose.contains("./ops/prometheus:/etc/prometheus"));
    assert!(compose.contains("./ops/grafana/provisioning:/etc/grafana/provisioning"));
}

/// The expressions of the rules file: `expr:` lines, inline or as a block scalar (`|`, `>`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut body = String::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
            {
                body.push_str(lines[i].trim());
                body.push('\n');
                i += 1;
            }
            out.push(body);
        } else {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    out
}

/// Skips from the opening `open` at `i` past its matching `close`, strings included.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Skips the string literal starting at `i` (its quote), escapes included.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// aggregations, keywords, label names (inside `{…}` or `by (…)`), strings, durations or
/// Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 8] = [
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, a number or a duration: never a name.
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let j = next_non_space(i);
            if LABEL_LISTS.contains(&lower.as_str()) {
                if chars.get(j) == Some(&'(') {
                    i = skip_group(&chars, j, '(', ')');
                }
                continue;
            }
            if KEYWORDS.contains(&lower.as_str()) || chars.get(j) == Some(&'(') {
                continue;
            }
            // `sum by (le) (…)`: an aggregation followed by its label list.
            let next_word: String = chars[j..].iter().take_while(|c| is_ident(**c)).collect();
            if matches!(next_word.to_ascii_lowercase().as_str(), "by" | "without") {
                continue;
            }
            names.insert(word);
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_and_nothing_else() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=\"x\", le=~\"0.1|y\"}[$__rate_interval])))\n\
         / on(instance) group_left b offset 5m and sum without (code) (c) > bool 1e3\n\
         # a comment naming not_me\n\
         or absent(up{job=\"outbox-relay\"} == 1) unless label_replace(d, \"e\", \"$1\", \"f\", \"(.*)\")",
    );
    let expected: BTreeSet<String> = ["a_bucket", "b", "c", "up", "d"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    let exprs = rule_exprs(
        "      - alert: A\n        expr: x > 1\n        for: 1m\n      - alert: B\n        expr: |\n          y\n          / z\n        labels: {}\n",
    );
    assert_eq!(exprs, vec!["x > 1".to_owned(), "y\n/ z\n".to_owned()]);
}

/// Metric families in a Prometheus text exposition (HELP and TYPE lines count, with or without
/// samples), with their type where given.
fn exported(text: &str, families: &mut BTreeMap<String, String>) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name)) => {
                families.insert(name.to_owned(), words.next().unwrap_or("").to_owned());
            }
            (Some("#"), Some("HELP"), Some(name)) => {
                families.entry(name.to_owned()).or_default();
            }
            (Some("#"), _, _) | (None, _, _) => {}
            (Some(sample), _, _) => {
                let name = sample.split('{').next().unwrap_or(sample);
                families.entry(name.to_owned()).or_default();
            }
        }
    }
}

/// Whether `name` as used in a query is exported: itself, or a series of a histogram (`_bucket`,
/// `_sum`, `_count`) or summary (`_sum`, `_count`) family.
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    let of_type = |family: &str, types: &[&str]| {
        families
            .get(family)
            .is_some_and(|t| types.contains(&t.as_str()))
    };
    if let Some(family) = name.strip_suffix("_bucket") {
        return of_type(family, &["histogram"]);
    }
    name.strip_suffix("_sum")
        .or_else(|| name.strip_suffix("_count"))
        .is_some_and(|family| of_type(family, &["histogram", "summary"]))
}

#[test]
fn histogram_series_resolve_to_their_family() {
    let mut families = BTreeMap::new();
    exported(
        "# HELP h_seconds x\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 0\n\
         # HELP c_total x\n# TYPE c_total counter\n",
        &mut families,
    );
    assert!(is_exported("h_seconds_bucket", &families));
    assert!(is_exported("h_seconds_count", &families));
    assert!(
        is_exported("c_total", &families),
        "HELP/TYPE without samples"
    );
    assert!(!is_exported("c_total_count", &families));
    assert!(!is_exported("nope", &families));
}

/// Starts every service with metrics through the bench (the fulfilment loop runs them all),
/// reads what it scraped from their `/metrics`, and checks every name the rules and the
/// dashboard use against it.
#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let out = out_dir("ops-metrics");
    let output = Command::new(BENCH)
        .args([
            "fulfilment",
            "--orders",
            "3",
            "--rate",
            "10",
            "--receiver-delay",
            "10ms",
        ])
        .arg("--bin-dir")
        .arg(service_bins())
        .arg("--out")
        .arg(&out)
        .args(["--latency-ms", "0", "--jitter-ms", "0", "--timeout", "90s"])
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench fulfilment failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let mut families = BTreeMap::new();
    for svc in METRIC_SERVICES {
        let text = read(&out.join(format!("metrics-{svc}.txt")));
        let prefix = svc.replace('-', "_");
        let before = families.len();
        exported(&text, &mut families);
        let own = families.keys().filter(|n| n.starts_with(&prefix)).count();
        assert!(
            families.len() > before + 5 && own > 5,
            "{svc}'s /metrics has next to nothing:\n{text}"
        );
    }

    let rules = read(&ops().join("prometheus/alerts.yml"));
    let rule_exprs = rule_exprs(&rules);
    assert_eq!(
        rule_exprs.len(),
        alert_blocks(&rules).len(),
        "an alert without an `expr:` line"
    );
    let mut used: BTreeMap<String, &str> = BTreeMap::new();
    for e in &rule_exprs {
        for name in metric_names(e) {
            used.insert(name, "alerts.yml");
        }
    }
    let from_rules = used.len();
    for e in dashboard_exprs() {
        for name in metric_names(&e) {
            used.entry(name).or_insert("the dashboard");
        }
    }
    assert!(
        from_rules >= 15 && used.len() >= 40,
        "suspiciously few names found ({from_rules} in the rules, {} in all): is the extraction broken?",
        used.len()
    );
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !PROMETHEUS_OWN.contains(&name.as_str()))
        .filter(|(name, _)| !is_exported(name, &families))
        .map(|(name, from)| format!("{name} (in {from})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metric names no service exports: {missing:?}\nexported: {:?}",
        families.keys().collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&out);
}
