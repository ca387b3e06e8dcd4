//! Flow-like rules: a committed REST write that changes a record's field TO a value publishes a
//! platform event or queues an outbound message, as a record-triggered Flow ("only when a record
//! is updated to meet the condition") or a workflow outbound message does.
//!
//! ```text
//! REST write ─► store change log ─► http (under the state lock): Flows::evaluate ─► Fired
//!                                   after the lock:  CDC, then fire::execute ─┬► platform event
//!                                                                             └► outbound queue
//! ```
//!
//! The rules live under the state lock (`Inner::flows`) because they are evaluated against the
//! changes a request committed; `rule` parses and checks them, `fire` carries them out.

pub mod fire;
pub mod rule;

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::store::{Change, Record};

pub use self::rule::{Action, Rule, RuleError, RuleInput};

/// Most rules one org holds (an admin client cannot grow the list without bound).
pub const MAX_RULES: usize = 200;

/// A rule and what it has done.
#[derive(Debug, Clone)]
struct Entry {
    rule: Rule,
    /// Times its condition was met.
    fired: u64,
    /// Times its action failed (an event that would not encode, a full outbound queue).
    errors: u64,
    last_error: Option<String>,
}

/// One action to carry out after the request's lock is released.
#[derive(Debug, Clone)]
pub enum Fired {
    Publish {
        rule: String,
        event: String,
        body: Map<String, Value>,
    },
    Outbound {
        rule: String,
        url: String,
        object: String,
        fields: Vec<(String, Value)>,
    },
}

/// The org's rules, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct Flows {
    entries: Vec<Entry>,
}

/// Why a rule could not be added.
#[derive(Debug, thiserror::Error)]
#[error("at most {MAX_RULES} flow rules")]
pub struct TooMany;

impl Flows {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut flows = Self::default();
        for rule in rules {
            // A start-up list is bounded by MAX_RULES like any other; extra rules are dropped
            // with a warning rather than refusing to start.
            if flows.upsert(rule).is_err() {
                tracing::warn!("more than {MAX_RULES} flow rules configured; the rest ignored");
                break;
            }
        }
        flows
    }

    /// Adds a rule, replacing one of the same name (its counters restart); true if replaced.
    pub fn upsert(&mut self, rule: Rule) -> Result<bool, TooMany> {
        let entry = Entry {
            rule,
            fired: 0,
            errors: 0,
            last_error: None,
        };
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.rule.name == entry.rule.name)
        {
            *e = entry;
            return Ok(true);
        }
        if self.entries.len() >= MAX_RULES {
            return Err(TooMany);
        }
        self.entries.push(entry);
        Ok(false)
    }

    /// Removes the rule named `name`; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.rule.name != name);
        self.entries.len() != before
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The objects some rule watches: their changes must be recorded even when they publish no
    /// change events.
    pub fn objects(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .map(|e| e.rule.sobject.clone())
            .collect()
    }

    /// Every rule with its counters, for `GET /__admin/flows`.
    pub fn to_json(&self) -> Value {
        let list: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = e.rule.to_json();
                v["fired"] = json!(e.fired);
                v["errors"] = json!(e.errors);
                v["last_error"] = json!(e.last_error);
                v
            })
            .collect();
        json!({"flows": list})
    }

    /// Counts a failed action of the rule named `rule`.
    pub fn record_error(&mut self, rule: &str, error: String) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.rule.name == rule) {
            e.errors += 1;
            e.last_error = Some(error);
        }
    }

    /// The actions a request's committed changes set off, in rule order per change.
    pub fn evaluate(&mut self, changes: &[Change]) -> Vec<Fired> {
        let mut fired = Vec::new();
        if self.entries.is_empty() {
            return fired;
        }
        for change in changes {
            let Some(new) = &change.new else { continue };
            for entry in &mut self.entries {
                let rule = &entry.rule;
                if rule.sobject != change.object
                    || !changed_to(change.old.as_ref(), new, &rule.field, &rule.equals)
                {
                    continue;
                }
                entry.fired += 1;
                fired.push(match &rule.action {
                    Action::Publish { event, fields } => Fired::Publish {
                        rule: rule.name.clone(),
                        event: event.clone(),
                        body: fields
                            .iter()
                            .map(|(target, source)| {
                                (
                                    target.clone(),
                                    new.get(source).cloned().unwrap_or(Value::Null),
                                )
                            })
                            .collect(),
                    },
                    Action::OutboundMessage { url, fields } => Fired::Outbound {
                        rule: rule.name.clone(),
                        url: url.clone(),
                        object: change.object.clone(),
                        fields: fields
                            .iter()
                            .map(|f| (f.clone(), new.get(f).cloned().unwrap_or(Value::Null)))
                            .collect(),
                    },
                });
            }
        }
        fired
    }
}

/// Whether `field` now equals `equals` and did not before (a created record had no "before").
fn changed_to(old: Option<&Record>, new: &Record, field: &str, equals: &Value) -> bool {
    let now = new.get(field).is_some_and(|v| same(v, equals));
    let before = old
        .and_then(|o| o.get(field))
        .is_some_and(|v| same(v, equals));
    now && !before
}

/// Equality that treats 1 and 1.0 alike (a number field may store either).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(status: &str) -> Record {
        json!({"Id": "801", "Status": status})
            .as_object()
            .cloned()
            .unwrap()
            .into()
    }

    fn rule() -> Rule {
        Rule {
            name: "r".into(),
            sobject: "Order".into(),
            field: "Status".into(),
            equals: json!("Activated"),
            action: Action::Publish {
                event: "E__e".into(),
                fields: vec![("OrderId__c".into(), "Id".into())],
            },
        }
    }

    fn change(old: Option<&str>, new: &str) -> Change {
        Change {
            object: "Order".into(),
            id: "801".into(),
            old: old.map(rec),
            new: Some(rec(new)),
        }
    }

    #[test]
    fn fires_only_on_the_transition() {
        let mut flows = Flows::new(vec![rule()]);
        assert_eq!(
            flows.evaluate(&[change(Some("Draft"), "Activated")]).len(),
            1
        );
        assert!(
            flows
                .evaluate(&[change(Some("Activated"), "Activated")])
                .is_empty()
        );
        assert!(
            flows
                .evaluate(&[change(Some("Activated"), "Draft")])
                .is_empty()
        );
        assert_eq!(flows.evaluate(&[change(None, "Activated")]).len(), 1);
        let Fired::Publish { body, .. } = &flows.evaluate(&[change(None, "Activated")])[0] else {
            panic!("not a publish");
        };
        assert_eq!(body["OrderId__c"], json!("801"));
        assert_eq!(flows.to_json()["flows"][0]["fired"], json!(3));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(same(&json!(1), &json!(1.0)));
        assert!(!same(&json!("1"), &json!(1)));
    }
}
