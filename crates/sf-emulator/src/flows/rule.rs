//! A Flow rule as posted (`POST /__admin/flows`, a seed file's `flows`) and its validation
//! against the object schema and the Pub/Sub topics, so a rule that names an unknown object,
//! field or event is refused when it is configured, never discovered when it would fire.

use std::collections::BTreeMap;

use orderbridge_pubsub::topics;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pubsub::Hub;
use crate::pubsub::registry::TopicKind;
use crate::schema::Schema;

/// Longest rule name (a Flow API name is at most 80 characters).
const MAX_NAME: usize = 80;
/// Most fields one rule maps or sends.
const MAX_FIELDS: usize = 100;
/// Longest outbound-message URL.
const MAX_URL: usize = 2048;

/// The JSON shape of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: String,
    pub sobject: String,
    pub when: WhenInput,
    #[serde(default)]
    pub publish: Option<PublishInput>,
    #[serde(default)]
    pub outbound_message: Option<OutboundInput>,
}

/// `"when": {"field": "Status", "equals": "Activated"}`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenInput {
    pub field: String,
    pub equals: Value,
}

/// `"publish": {"event": "OrderProvisionRequested__e", "fields": {"OrderId__c": "Id"}}`:
/// event field → record field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishInput {
    pub event: String,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// `"outbound_message": {"url": "http://…", "fields": ["Id", "Status"]}`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundInput {
    pub url: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// What a rule does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a platform event (schema spelling), fields: (event field, record field).
    Publish {
        event: String,
        fields: Vec<(String, String)>,
    },
    /// Queue an outbound message; `fields` always starts with `Id`.
    OutboundMessage { url: String, fields: Vec<String> },
}

/// A checked rule; names are in the schema's spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub sobject: String,
    pub field: String,
    pub equals: Value,
    pub action: Action,
}

/// Why a rule was refused (answered as 400 `INVALID_INPUT` with this message).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("invalid flow rule JSON: {0}")]
    Json(String),
    #[error(
        "flow name {0:?}: 1 to {MAX_NAME} letters, digits, '-' or '_' (it is the rule's key in /__admin/flows/{{name}})"
    )]
    BadName(String),
    #[error("flow {rule}: unknown sobject {sobject}")]
    UnknownObject { rule: String, sobject: String },
    #[error("flow {rule}: sobject {sobject} has no field {field}")]
    UnknownField {
        rule: String,
        sobject: String,
        field: String,
    },
    #[error("flow {rule}: when.equals must be a string, number or boolean")]
    BadEquals { rule: String },
    #[error("flow {rule}: give exactly one of \"publish\" and \"outbound_message\"")]
    Action { rule: String },
    #[error("flow {rule}: unknown platform event {event}")]
    UnknownEvent { rule: String, event: String },
    #[error("flow {rule}: platform event {event} has no field {field}")]
    UnknownEventField {
        rule: String,
        event: String,
        field: String,
    },
    #[error("flow {rule}: more than {MAX_FIELDS} fields")]
    TooManyFields { rule: String },
    #[error(
        "flow {rule}: outbound_message.url {url:?} must be an absolute http:// URL of at most {MAX_URL} characters (the emulator sends without TLS)"
    )]
    BadUrl { rule: String, url: String },
}

impl RuleInput {
    /// Parses one rule from JSON.
    pub fn parse(body: &[u8]) -> Result<Self, RuleError> {
        serde_json::from_slice(body).map_err(|e| RuleError::Json(e.to_string()))
    }

    /// Checks the rule against the schema and the current Pub/Sub topics.
    pub fn validate(self, schema: &Schema, hub: &Hub) -> Result<Rule, RuleError> {
        let rule = self.name.clone();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(RuleError::BadName(self.name));
        }
        let object = schema
            .object(&self.sobject)
            .ok_or_else(|| RuleError::UnknownObject {
                rule: rule.clone(),
                sobject: self.sobject.clone(),
            })?;
        let field_of = |name: &str| {
            object
                .field(name)
                .map(|f| f.name.clone())
                .ok_or_else(|| RuleError::UnknownField {
                    rule: rule.clone(),
                    sobject: object.name.clone(),
                    field: name.to_owned(),
                })
        };
        let field = field_of(&self.when.field)?;
        if !matches!(
            self.when.equals,
            Value::String(_) | Value::Number(_) | Value::Bool(_)
        ) {
            return Err(RuleError::BadEquals { rule: rule.clone() });
        }
        let action = match (self.publish, self.outbound_message) {
            (Some(p), None) => {
                if p.fields.len() > MAX_FIELDS {
                    return Err(RuleError::TooManyFields { rule: rule.clone() });
                }
                // The topic, not the schema file: fields added at run time through
                // /__admin/pubsub/schema count too.
                let spelled = schema
                    .platform_event(&p.event)
                    .map_or_else(|| p.event.clone(), |e| e.name.clone());
                let topic = topics::platform_event_topic(&spelled);
                let event_fields = match hub.lock().registry.topic(&topic) {
                    Some((TopicKind::Event { .. }, Some(s))) => s.fields.clone(),
                    _ => {
                        return Err(RuleError::UnknownEvent {
                            rule: rule.clone(),
                            event: p.event,
                        });
                    }
                };
                let mut fields = Vec::with_capacity(p.fields.len());
                for (target, source) in &p.fields {
                    let target = event_fields
                        .iter()
                        .find(|f| f.name.eq_ignore_ascii_case(target))
                        .map(|f| f.name.clone())
                        .ok_or_else(|| RuleError::UnknownEventField {
                            rule: rule.clone(),
                            event: spelled.clone(),
                            field: target.clone(),
                        })?;
                    fields.push((target, field_of(source)?));
                }
                Action::Publish {
                    event: spelled,
                    fields,
                }
            }
            (None, Some(o)) => {
                if o.fields.len() > MAX_FIELDS {
                    return Err(RuleError::TooManyFields { rule: rule.clone() });
                }
                if !valid_url(&o.url) {
                    return Err(RuleError::BadUrl {
                        rule: rule.clone(),
                        url: o.url,
                    });
                }
                // Salesforce always sends the record's Id first.
                let mut fields = vec!["Id".to_owned()];
                for f in &o.fields {
                    let f = field_of(f)?;
                    if !fields.contains(&f) {
                        fields.push(f);
                    }
                }
                Action::OutboundMessage { url: o.url, fields }
            }
            _ => return Err(RuleError::Action { rule: rule.clone() }),
        };
        Ok(Rule {
            name: self.name,
            sobject: object.name.clone(),
            field,
            equals: self.when.equals,
            action,
        })
    }
}

/// `http://host[:port]/path`: something reqwest can send to without TLS.
fn valid_url(url: &str) -> bool {
    url.len() <= MAX_URL
        && url
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.chars().any(char::is_whitespace)
        && reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some())
}

impl Rule {
    /// The rule in the shape it is posted in.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "sobject": self.sobject,
            "when": {"field": self.field, "equals": self.equals},
        });
        match &self.action {
            Action::Publish { event, fields } => {
                let fields: serde_json::Map<String, Value> =
                    fields.iter().map(|(t, s)| (t.clone(), json!(s))).collect();
                v["publish"] = json!({"event": event, "fields": fields});
            }
            Action::OutboundMessage { url, fields } => {
                v["outbound_message"] = json!({"url": url, "fields": fields});
            }
        }
        v
    }

    /// The built-in rule (`SF_EMULATOR_FLOWS=default`): an activated Order asks for
    /// provisioning, as seed 001's record-triggered Flow does.
    pub fn default_input() -> RuleInput {
        RuleInput {
            name: "provision-on-activate".to_owned(),
            sobject: "Order".to_owned(),
            when: WhenInput {
                field: "Status".to_owned(),
                equals: json!("Activated"),
            },
            publish: Some(PublishInput {
                event: "OrderProvisionRequested__e".to_owned(),
                fields: BTreeMap::from([("OrderId__c".to_owned(), "Id".to_owned())]),
            }),
            outbound_message: None,
        }
    }
}
