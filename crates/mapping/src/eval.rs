//! Evaluating a mapping against one order: external id keys and record values.

use orderbridge_domain::text;
use serde_json::{Value, json};

use crate::model::{Expr, Format, KeyScope, ObjectMapping, Part, Scope, Source};

/// Why an object has no usable key for an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A part of the key has no value in this order.
    #[error("the mapping's key for {sobject} ({field}) has no value in this order")]
    Missing { sobject: String, field: String },
    /// The key is scoped by the API client, and the event names none (written before client
    /// scopes existed).
    #[error(
        "the event names no API client, so the {sobject} key cannot be scoped to one (an event written before client-scoped keys): resync the order"
    )]
    NoClient { sobject: String },
    /// The client's prefix is empty (keys kept from before prefixes) and the value has a `:`,
    /// so the key could be another client's (`beta:CUST-42`).
    #[error(
        "the {sobject} key `{key}` contains `:`, which a client without an external-id prefix may not use (it could name another client's record)"
    )]
    Ambiguous { sobject: String, key: String },
}

impl KeyError {
    /// A stable code for status reports and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "MAPPING_KEY_MISSING",
            Self::NoClient { .. } => "NO_CLIENT_SCOPE",
            Self::Ambiguous { .. } => "AMBIGUOUS_KEY",
        }
    }
}

impl ObjectMapping {
    pub(crate) fn each_expr(&self, mut f: impl FnMut(&str, &Expr)) {
        f("key", &self.key);
        for (name, e) in &self.fields {
            f(&format!("fields.{name}"), e);
        }
        for (name, e) in &self.computed {
            f(&format!("computed.{name}"), e);
        }
    }

    /// The fields reconcile compares with the order: the ones written from it (constants
    /// aside: Salesforce users may change those, like an order's status) and the computed ones.
    pub fn compared_fields(&self) -> impl Iterator<Item = (&str, &Expr)> {
        self.fields
            .iter()
            .filter(|(_, e)| !matches!(e.source, Source::Const(_)))
            .chain(&self.computed)
            .map(|(n, e)| (n.as_str(), e))
    }

    /// Field names this object writes (external id and mapped fields).
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.external_id_field.as_str())
            .chain(self.fields.iter().map(|(n, _)| n.as_str()))
    }

    /// The record's external id value. Every part of the key must have a value (a key with a
    /// hole could be another record's), and a client-scoped key needs the event's client.
    pub fn key(&self, scope: Scope<'_>) -> Result<String, KeyError> {
        let missing = || KeyError::Missing {
            sobject: self.sobject.clone(),
            field: self.external_id_field.clone(),
        };
        let prefix = match self.key_scope {
            KeyScope::Order => None,
            KeyScope::Client => {
                let path = if scope.line.is_some() {
                    ["order", "client", "external_id_prefix"].as_slice()
                } else {
                    ["client", "external_id_prefix"].as_slice()
                };
                let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
                match scope.resolve(&path) {
                    Some(Value::String(p)) => Some(p.as_str()),
                    _ => {
                        return Err(KeyError::NoClient {
                            sobject: self.sobject.clone(),
                        });
                    }
                }
            }
        };
        let key = match self.key.eval_strict(scope).ok_or_else(missing)? {
            Value::String(s) if !s.is_empty() => s,
            Value::Number(n) => n.to_string(),
            _ => return Err(missing()),
        };
        if prefix == Some("") && key.contains(orderbridge_domain::tenant::PREFIX_SEPARATOR) {
            return Err(KeyError::Ambiguous {
                sobject: self.sobject.clone(),
                key,
            });
        }
        Ok(key)
    }

    /// The record's values in [`ObjectMapping::field_names`] order: the external id (`key`)
    /// first, then each mapped field's (`None`: no value, left out). The names are the
    /// caller's to hold once for all records (`orderbridge_salesforce::rows`).
    pub fn values<'a>(
        &'a self,
        scope: Scope<'a>,
        key: &str,
    ) -> impl Iterator<Item = Option<Value>> + use<'a> {
        std::iter::once(Some(Value::String(key.to_owned())))
            .chain(self.fields.iter().map(move |(_, expr)| expr.eval(scope)))
    }
}

impl Expr {
    /// Whether the value is a number (a number or integer format, or declared digits).
    pub fn is_number(&self) -> bool {
        matches!(self.format, Some(Format::Number | Format::Integer)) || self.precision.is_some()
    }

    /// Digits after the point the field holds, when declared.
    pub fn scale(&self) -> Option<u32> {
        self.scale
    }

    /// The declared format.
    pub fn format_kind(&self) -> Option<Format> {
        self.format
    }

    pub(crate) fn paths(&self) -> Vec<&Vec<String>> {
        match &self.source {
            Source::Path(p) => vec![p],
            Source::Const(_) => Vec::new(),
            Source::Template(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Path(p) => Some(p),
                    Part::Text(_) => None,
                })
                .collect(),
        }
    }

    /// The value for one record, or `None` to leave the field out. Text longer than
    /// `max_length` is cut only with `truncate`; otherwise [`crate::Mapping::check_order`]
    /// refuses the order before anything is written.
    pub fn eval(&self, scope: Scope<'_>) -> Option<Value> {
        let raw = self.raw(scope, false)?;
        let formatted = self.format(&raw)?;
        Some(match (formatted, self.max_length) {
            (Value::String(s), Some(max)) if self.truncate && s.chars().count() > max => {
                Value::String(text::truncate(&s, max).to_owned())
            }
            (v, _) => v,
        })
    }

    /// Like [`Expr::eval`], but a template with a part that has no value has no value at all.
    fn eval_strict(&self, scope: Scope<'_>) -> Option<Value> {
        let raw = self.raw(scope, true)?;
        self.format(&raw)
    }

    /// The value before formatting: a path's value, a constant, or a template's text. `None`
    /// (and `null`) means absent; with `strict`, a template with an absent part is absent.
    pub(crate) fn raw(&self, scope: Scope<'_>, strict: bool) -> Option<Value> {
        let raw = match &self.source {
            Source::Const(v) => v.clone(),
            Source::Path(p) => scope.resolve(p)?.clone(),
            Source::Template(parts) => {
                let mut s = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => s.push_str(t),
                        Part::Path(p) => match scope.resolve(p) {
                            // In a key, an empty part is a hole like a missing one; the
                            // client's prefix alone may be empty (keys kept from before).
                            Some(Value::String(v))
                                if strict && v.is_empty() && !is_client_prefix(p) =>
                            {
                                return None;
                            }
                            Some(Value::String(v)) => s.push_str(v),
                            Some(Value::Null) | None if strict => return None,
                            Some(Value::Null) | None => {}
                            Some(v) => s.push_str(&v.to_string()),
                        },
                    }
                }
                Value::String(s)
            }
        };
        (!raw.is_null()).then_some(raw)
    }

    /// The raw value in the field's format; `None` when it has none (a number field fed text
    /// that is no number: [`crate::Mapping::check_order`] names it).
    pub(crate) fn format(&self, raw: &Value) -> Option<Value> {
        Some(match self.format {
            None => raw.clone(),
            Some(Format::Date) => Value::String(text::truncate(&as_text(raw), 10).to_owned()),
            Some(Format::Datetime) | Some(Format::String) => Value::String(as_text(raw)),
            Some(Format::Number) => number(raw)?,
            // Never rounded: a value with a fraction is refused by the limits check.
            Some(Format::Integer) => match number(raw)? {
                Value::Number(n) if n.is_i64() || n.is_u64() => Value::Number(n),
                _ => return None,
            },
        })
    }
}

fn is_client_prefix(path: &[String]) -> bool {
    let path = path.strip_prefix(&["order".to_owned()][..]).unwrap_or(path);
    path == ["client", "external_id_prefix"]
}

pub(crate) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prices are exact decimal strings in the order; Salesforce takes JSON numbers, which travel
/// as f64. The limits check refuses a value an f64 would not carry exactly (more than 15
/// significant digits), so this conversion never changes a value that gets written.
fn number(v: &Value) -> Option<Value> {
    match v {
        Value::Number(_) => Some(v.clone()),
        Value::String(s) => {
            if let Ok(i) = s.parse::<i64>() {
                return Some(json!(i));
            }
            let f: f64 = s.parse().ok()?;
            serde_json::Number::from_f64(f).map(Value::Number)
        }
        _ => None,
    }
}

impl Scope<'_> {
    /// Follows a dotted path; numeric segments index arrays (`lines.0.sku`).
    pub fn resolve(&self, path: &[String]) -> Option<&Value> {
        let (mut at, rest) = match (self.line, path.first().map(String::as_str)) {
            (Some(_), Some("order")) => (self.order, &path[1..]),
            (Some(line), _) => (line, path),
            (None, _) => (self.order, path),
        };
        for seg in rest {
            at = match at {
                Value::Object(m) => m.get(seg.as_str())?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}
