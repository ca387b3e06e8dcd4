//! Evaluating a mapping against one order: external id keys, record bodies, references.

use orderbridge_domain::text;
use serde_json::{Map, Value, json};

use crate::model::{Expr, Format, ObjectMapping, Part, Scope, Source};

impl ObjectMapping {
    pub(crate) fn each_expr(&self, mut f: impl FnMut(&str, &Expr)) {
        f("key", &self.key);
        for (name, e) in &self.fields {
            f(&format!("fields.{name}"), e);
        }
    }

    /// Field names this object writes (external id and mapped fields).
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.external_id_field.as_str())
            .chain(self.fields.iter().map(|(n, _)| n.as_str()))
    }

    /// The record's external id value; `None` when the key resolves to nothing.
    pub fn key(&self, scope: Scope<'_>) -> Option<String> {
        match self.key.eval(scope)? {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The record body: mapped fields plus the external id field. Absent values are left out.
    pub fn record(&self, scope: Scope<'_>, key: &str) -> Map<String, Value> {
        let mut record = Map::with_capacity(self.fields.len() + 3);
        for (name, expr) in &self.fields {
            if let Some(v) = expr.eval(scope) {
                record.insert(name.clone(), v);
            }
        }
        record.insert(
            self.external_id_field.clone(),
            Value::String(key.to_owned()),
        );
        record
    }

    /// `{"<relationship>": {"<external id field>": key}}`: a lookup by external id, so a child can
    /// reference a parent written in the same request without knowing its Salesforce id.
    pub fn reference(&self, key: &str) -> Value {
        json!({ self.external_id_field.as_str(): key })
    }
}

impl Expr {
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

    /// The value for one record, or `None` to leave the field out.
    pub fn eval(&self, scope: Scope<'_>) -> Option<Value> {
        let raw = match &self.source {
            Source::Const(v) => return Some(v.clone()),
            Source::Path(p) => scope.resolve(p)?.clone(),
            Source::Template(parts) => {
                let mut s = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => s.push_str(t),
                        Part::Path(p) => match scope.resolve(p) {
                            Some(Value::String(v)) => s.push_str(v),
                            Some(Value::Null) | None => {}
                            Some(v) => s.push_str(&v.to_string()),
                        },
                    }
                }
                Value::String(s)
            }
        };
        if raw.is_null() {
            return None;
        }
        let formatted = match self.format {
            None => raw,
            Some(Format::Date) => Value::String(text::truncate(&as_text(&raw), 10).to_owned()),
            Some(Format::Datetime) | Some(Format::String) => Value::String(as_text(&raw)),
            Some(Format::Number) => number(&raw)?,
            Some(Format::Integer) => match number(&raw)? {
                Value::Number(n) if n.is_i64() || n.is_u64() => Value::Number(n),
                Value::Number(n) => json!(n.as_f64()?.round() as i64),
                _ => return None,
            },
        };
        Some(match (formatted, self.max_length) {
            (Value::String(s), Some(max)) if s.chars().count() > max => {
                Value::String(text::truncate(&s, max).to_owned())
            }
            (v, _) => v,
        })
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prices are exact decimal strings in the order; Salesforce takes JSON numbers. Currency fields
/// hold 18 digits with at most 16 before the point and the order model caps prices at 12 integer
/// and 4 fraction digits, which an f64 carries exactly enough to round-trip the decimal text.
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
