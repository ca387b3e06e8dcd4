//! Several targets ("divisions"): each order goes to exactly one target, chosen by rules on the
//! order, and each target has its own mapping (object, record type, owner queue, default field
//! values, price book) and, where the org requires it, its own Salesforce credentials.
//!
//! ```json
//! {
//!   "route": {
//!     "rules": [
//!       {"path": "currency", "in": ["EUR", "GBP", "CHF"], "target": "emea"},
//!       {"path": "client.external_id_prefix", "in": ["acme:"], "target": "emea"}
//!     ],
//!     "default": "amer"
//!   },
//!   "targets": {
//!     "emea": {"salesforce": "EMEA", "mapping": { … a mapping, as in a mapping file … }},
//!     "amer": {"mapping": { … }}
//!   }
//! }
//! ```
//!
//! The rules are tried in order; the first whose path's value (as text) is one of `in` names
//! the target. An order no rule takes goes to `default`; without a default it has no target:
//! `order-api` refuses it at intake (422) and the worker dead-letters it (`NO_TARGET`), so an
//! order is never written where nobody meant it to go.
//!
//! `salesforce` names the target's own Salesforce settings: `SF_<NAME>_*`, each one of the
//! `SF_*` settings (`SF_EMEA_USERNAME`, `SF_EMEA_PRIVATE_KEY_FILE`, `SF_EMEA_LOGIN_URL`…), what
//! is not set taken from `SF_*`. A target without it uses `SF_*` as they are.
//!
//! A plain mapping file is one target, `default`, that takes every order: [`Targets::load`]
//! reads both, so every reader of `WORKER_MAPPING_FILE` accepts either.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::eval::as_text;
use crate::file::MappingFile;
use crate::limits::Overflow;
use crate::model::{Mapping, Scope};
use crate::{MappingError, Problems, sample_order};

/// The one target of a plain mapping file.
pub const DEFAULT_TARGET: &str = "default";

/// One place orders are written to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The name in the file (and in metrics, logs and dead-letter reasons).
    pub name: String,
    /// The name `<NAME>` of its own Salesforce settings (`SF_<NAME>_*`); `None`: `SF_*`.
    pub salesforce: Option<String>,
    pub mapping: Arc<Mapping>,
}

#[derive(Debug, Clone)]
struct Rule {
    path: Vec<String>,
    values: Vec<String>,
    target: usize,
}

/// The checked targets and the rules that choose among them.
#[derive(Debug, Clone)]
pub struct Targets {
    targets: Vec<Target>,
    rules: Vec<Rule>,
    default: Option<usize>,
}

/// An order that no rule takes, with no default target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no target takes this order: {detail}")]
pub struct NoTarget {
    /// JSON pointer of the first rule's field (`/currency`), the one to change.
    pub pointer: String,
    /// Which values were looked at.
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    route: RouteFile,
    targets: BTreeMap<String, TargetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    path: String,
    #[serde(rename = "in")]
    values: Vec<String>,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    #[serde(default)]
    salesforce: Option<String>,
    mapping: MappingFile,
}

impl Targets {
    /// One target, [`DEFAULT_TARGET`], taking every order with `mapping` and `SF_*`.
    pub fn single(mapping: impl Into<Arc<Mapping>>) -> Self {
        Self {
            targets: vec![Target {
                name: DEFAULT_TARGET.to_owned(),
                salesforce: None,
                mapping: mapping.into(),
            }],
            rules: Vec::new(),
            default: Some(0),
        }
    }

    /// Reads `path` (a targets file or a plain mapping file), or the built-in default mapping
    /// when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, MappingError> {
        match path {
            None => Mapping::load(None).map(Self::single),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| MappingError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Parses a targets document, or a plain mapping (one target); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, MappingError> {
        let parse_error = |path: String, message: String| MappingError::Parse {
            origin: origin.to_owned(),
            path,
            message,
        };
        // Which format: a top-level `targets`. A file that is not JSON at all is read as the
        // format it seems to be, so the syntax error comes with its place in that format.
        let is_targets = match serde_json::from_str::<Value>(text) {
            Ok(v) => v.get("targets").is_some(),
            Err(_) => text.contains("\"targets\""),
        };
        if !is_targets {
            return Mapping::parse(text, origin).map(Self::single);
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: TargetsFile = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error(e.path().to_string(), e.inner().to_string()))?;
        let mut problems = Problems::default();
        let targets = compile(file, &mut problems);
        match targets {
            Some(t) if problems.0.is_empty() => Ok(t),
            _ => Err(MappingError::Invalid {
                origin: origin.to_owned(),
                problems,
            }),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The mapping when there is one target (a plain mapping file).
    pub fn single_mapping(&self) -> Option<&Arc<Mapping>> {
        match self.targets.as_slice() {
            [only] => Some(&only.mapping),
            _ => None,
        }
    }

    /// The index in [`Targets::targets`] of the target that takes `order` (the order as
    /// `order.submitted` carries it, with `client`).
    pub fn route_index(&self, order: &Value) -> Result<usize, NoTarget> {
        let scope = Scope { order, line: None };
        for rule in &self.rules {
            if let Some(v) = scope.resolve(&rule.path)
                && !v.is_null()
                && rule.values.contains(&as_text(v))
            {
                return Ok(rule.target);
            }
        }
        self.default.ok_or_else(|| {
            let seen: Vec<String> = self
                .rules
                .iter()
                .map(|r| r.path.join("."))
                .fold(Vec::new(), |mut seen, p| {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                    seen
                })
                .into_iter()
                .map(|p| {
                    let path: Vec<String> = p.split('.').map(str::to_owned).collect();
                    match scope.resolve(&path) {
                        Some(v) if !v.is_null() => format!("{p} is {v}"),
                        _ => format!("{p} is not set"),
                    }
                })
                .collect();
            NoTarget {
                pointer: self
                    .rules
                    .first()
                    .map(|r| format!("/{}", r.path.join("/")))
                    .unwrap_or_else(|| "/".into()),
                detail: format!(
                    "{}, no rule matches and there is no default target",
                    seen.join(", ")
                ),
            }
        })
    }

    /// The target that takes `order`.
    pub fn route(&self, order: &Value) -> Result<&Target, NoTarget> {
        self.route_index(order).map(|i| &self.targets[i])
    }

    /// What [`Mapping::check_order`] says of `order` under its target's mapping.
    pub fn check_order(&self, order: &Value) -> Result<Vec<Overflow>, NoTarget> {
        self.route(order).map(|t| t.mapping.check_order(order))
    }
}

/// Whether `name` can be part of an environment variable name (`SF_<NAME>_USERNAME`).
fn valid_settings_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with('_')
        && !name.ends_with('_')
}

fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn compile(file: TargetsFile, problems: &mut Problems) -> Option<Targets> {
    if file.targets.is_empty() {
        problems.0.push("targets: name at least one target".into());
        return None;
    }
    let names: Vec<String> = file.targets.keys().cloned().collect();
    let index = |name: &str| names.iter().position(|n| n == name);
    let mut targets = Vec::with_capacity(file.targets.len());
    for (name, target) in file.targets {
        if !valid_target_name(&name) {
            problems.0.push(format!(
                "targets.{name}: a target name is letters, digits, `-` and `_` (at most 64)"
            ));
        }
        if let Some(s) = &target.salesforce
            && !valid_settings_name(s)
        {
            problems.0.push(format!(
                "targets.{name}.salesforce: `{s}` must be upper-case letters, digits and `_` (it names SF_{s}_* settings)"
            ));
        }
        let mut own = Problems::default();
        let mapping = Mapping::from_file(target.mapping, &mut own);
        problems.0.extend(
            own.0
                .into_iter()
                .map(|p| format!("targets.{name}.mapping.{p}")),
        );
        if let Some(mapping) = mapping {
            targets.push(Target {
                name,
                salesforce: target.salesforce,
                mapping: Arc::new(mapping),
            });
        }
    }

    let sample = sample_order();
    let scope = Scope {
        order: &sample,
        line: None,
    };
    let mut rules = Vec::with_capacity(file.route.rules.len());
    for (n, rule) in file.route.rules.into_iter().enumerate() {
        let place = format!("route.rules[{n}]");
        let path: Vec<String> = rule.path.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            problems
                .0
                .push(format!("{place}.path: `{}` is not a path", rule.path));
        } else {
            match scope.resolve(&path) {
                None => problems.0.push(format!(
                    "{place}.path: `{}` is not a field of the order",
                    rule.path
                )),
                Some(Value::Object(_) | Value::Array(_)) => problems.0.push(format!(
                    "{place}.path: `{}` is not a single value",
                    rule.path
                )),
                Some(_) => {}
            }
        }
        if rule.values.is_empty() {
            problems.0.push(format!(
                "{place}.in: list the values that choose the target"
            ));
        }
        match index(&rule.target) {
            Some(target) => rules.push(Rule {
                path,
                values: rule.values,
                target,
            }),
            None => problems.0.push(format!(
                "{place}.target: there is no target `{}`",
                rule.target
            )),
        }
    }
    let default = match file.route.default {
        Some(d) => match index(&d) {
            Some(i) => Some(i),
            None => {
                problems
                    .0
                    .push(format!("route.default: there is no target `{d}`"));
                None
            }
        },
        None => None,
    };
    let reachable = |i: usize| default == Some(i) || rules.iter().any(|r| r.target == i);
    for (i, name) in names.iter().enumerate() {
        if !reachable(i) {
            problems.0.push(format!(
                "targets.{name}: no rule routes to it and it is not the default"
            ));
        }
    }
    (problems.0.is_empty() && targets.len() == names.len()).then_some(Targets {
        targets,
        rules,
        default,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn case_mapping(division: &str) -> Value {
        json!({"order": {"sobject": "Case", "external_id_field": "Order_Id__c",
            "key": {"path": "id", "max_length": 255},
            "fields": {"Subject": {"template": "Order {client_ref}", "max_length": 255},
                       "Division__c": {"const": division}}}})
    }

    fn two_divisions(default: Option<&str>) -> Value {
        json!({
            "route": {"rules": [
                {"path": "currency", "in": ["EUR", "GBP"], "target": "emea"},
                {"path": "shipping_address.country", "in": ["US", "CA"], "target": "amer"}
            ], "default": default},
            "targets": {
                "emea": {"salesforce": "EMEA", "mapping": case_mapping("EMEA")},
                "amer": {"mapping": case_mapping("AMER")}
            }
        })
    }

    fn order(currency: &str, country: Option<&str>) -> Value {
        let mut o = json!({"id": "o1", "client_ref": "PO", "currency": currency,
            "client": {"id": "c", "external_id_prefix": "t:"}});
        if let Some(c) = country {
            o["shipping_address"] = json!({"country": c});
        }
        o
    }

    #[test]
    fn rules_choose_in_order_then_the_default() {
        let t = Targets::parse(&two_divisions(Some("amer")).to_string(), "t").unwrap();
        assert_eq!(t.targets().len(), 2);
        assert_eq!(t.route(&order("EUR", Some("US"))).unwrap().name, "emea");
        assert_eq!(t.route(&order("USD", Some("US"))).unwrap().name, "amer");
        assert_eq!(t.route(&order("JPY", None)).unwrap().name, "amer");
        let emea = t.route(&order("GBP", None)).unwrap();
        assert_eq!(emea.salesforce.as_deref(), Some("EMEA"));
        assert!(t.single_mapping().is_none());
    }

    #[test]
    fn without_a_default_an_unmatched_order_has_no_target() {
        let t = Targets::parse(&two_divisions(None).to_string(), "t").unwrap();
        let e = t.route(&order("JPY", Some("JP"))).unwrap_err();
        assert_eq!(e.pointer, "/currency");
        assert_eq!(
            e.to_string(),
            "no target takes this order: currency is \"JPY\", shipping_address.country is \"JP\", no rule matches and there is no default target"
        );
        let e = t.route(&order("JPY", None)).unwrap_err();
        assert!(
            e.detail.contains("shipping_address.country is not set"),
            "{e}"
        );
    }

    #[test]
    fn a_plain_mapping_is_one_default_target() {
        let t = Targets::parse(crate::DEFAULT_MAPPING, "default").unwrap();
        assert_eq!(t.targets().len(), 1);
        assert_eq!(t.targets()[0].name, DEFAULT_TARGET);
        assert!(t.single_mapping().is_some());
        assert_eq!(t.route(&order("JPY", None)).unwrap().name, DEFAULT_TARGET);
    }

    #[test]
    fn every_mistake_is_named_with_its_place() {
        let mut doc = two_divisions(Some("apac"));
        doc["route"]["rules"][0]["path"] = json!("customer.division");
        doc["route"]["rules"][1]["target"] = json!("latam");
        doc["route"]["rules"][1]["in"] = json!([]);
        doc["targets"]["emea"]["salesforce"] = json!("emea-org");
        doc["targets"]["amer"]["mapping"]["order"]["fields"]["Subject"] = json!({"path": "nope"});
        let e = Targets::parse(&doc.to_string(), "t.json")
            .unwrap_err()
            .to_string();
        for want in [
            "targets.amer.mapping.order.fields.Subject: `nope` is not a field of the order",
            "targets.emea.salesforce: `emea-org` must be upper-case",
            "route.rules[0].path: `customer.division` is not a field of the order",
            "route.rules[1].in: list the values",
            "route.rules[1].target: there is no target `latam`",
            "route.default: there is no target `apac`",
        ] {
            assert!(e.contains(want), "{want} missing from {e}");
        }
        // A target nothing routes to is a mistake too.
        let mut doc = two_divisions(None);
        doc["route"]["rules"] = json!([{"path": "currency", "in": ["EUR"], "target": "emea"}]);
        let e = Targets::parse(&doc.to_string(), "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("targets.amer: no rule routes to it"), "{e}");
        // Unknown keys are refused with their place.
        let mut doc = two_divisions(None);
        doc["targets"]["emea"]["credentials"] = json!("x");
        let e = Targets::parse(&doc.to_string(), "t.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("targets.emea") && e.contains("credentials"),
            "{e}"
        );
    }

    /// The documented example (`config/divisions.example.json`) is a valid targets file.
    #[test]
    fn the_example_file_is_valid() {
        let t = Targets::parse(
            include_str!("../../../config/divisions.example.json"),
            "config/divisions.example.json",
        )
        .unwrap();
        let names: Vec<&str> = t.targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["amer", "emea"]);
        assert_eq!(t.route(&order("GBP", Some("US"))).unwrap().name, "emea");
        assert_eq!(t.route(&order("JPY", Some("JP"))).unwrap().name, "amer");
    }

    #[test]
    fn overflows_are_checked_under_the_orders_target() {
        let mut doc = two_divisions(Some("amer"));
        doc["targets"]["emea"]["mapping"]["order"]["fields"]["Subject"] =
            json!({"path": "client_ref", "max_length": 3});
        let t = Targets::parse(&doc.to_string(), "t").unwrap();
        let mut o = order("EUR", None);
        o["client_ref"] = json!("PO-1234");
        assert_eq!(t.check_order(&o).unwrap().len(), 1);
        o["currency"] = json!("USD");
        assert!(t.check_order(&o).unwrap().is_empty());
    }
}
