//! Whether Salesforce can hold an order's mapped values exactly: the limits each field of the
//! mapping declares (`max_length`, `precision`, `scale`), applied to one order.
//!
//! Two places ask, with the same answer: `order-api` before accepting an order (a 422 naming
//! the field), and the sync worker before writing one (a dead letter naming it, for an order
//! accepted under other limits or published by something else). Nothing is cut or rounded on
//! the way: a 100-character city is refused, not written as its first 40 characters, and an
//! amount with more digits than the field (or an f64) holds is refused, not written rounded.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::eval::{KeyError, as_text};
use crate::model::{Expr, Format, Mapping, ObjectMapping, Part, Scope, Source};

/// Most significant digits a JSON number carries exactly through an f64 (`f64::DIGITS`): the
/// bound for any value written as a number, whatever the field's precision.
const EXACT_DIGITS: u32 = f64::DIGITS;

/// One mapped value Salesforce could not hold as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    /// JSON pointer into the order (`/billing_address/city`, `/lines/0/unit_price`) of the
    /// value the field is filled from; `/` when it comes from no single field.
    pub pointer: String,
    /// `too_long`, `out_of_range`, `too_many_decimals`, `not_a_number`, or a key error's code in
    /// lower case (`ambiguous_key`…).
    pub code: &'static str,
    /// What is wrong, naming the Salesforce field.
    pub detail: String,
}

impl Mapping {
    /// Every value of `order` (the order as `order.submitted` carries it, with `client`) that a
    /// field of this mapping could not hold exactly, in mapping order. Empty: it can be
    /// written as it is.
    pub fn check_order(&self, order: &Value) -> Vec<Overflow> {
        let mut out = Vec::new();
        let scope = Scope { order, line: None };
        if let Some(a) = &self.account {
            check_object(&a.object, scope, None, &mut out);
        }
        check_object(&self.order.object, scope, None, &mut out);
        if let Some(i) = &self.items {
            let lines = order.get("lines").and_then(Value::as_array);
            for (n, line) in lines.into_iter().flatten().enumerate() {
                let scope = Scope {
                    order,
                    line: Some(line),
                };
                check_object(&i.object, scope, Some(n), &mut out);
            }
        }
        out
    }
}

fn check_object(
    object: &ObjectMapping,
    scope: Scope<'_>,
    line: Option<usize>,
    out: &mut Vec<Overflow>,
) {
    let name = |field: &str| format!("{}.{field}", object.sobject);
    match object.key(scope) {
        Ok(key) => {
            if let Some(max) = object.key.max_length
                && key.chars().count() > max
            {
                out.push(Overflow {
                    pointer: pointer(&object.key, line),
                    code: "too_long",
                    detail: format!(
                        "makes the {} key `{}…`, {} characters; Salesforce {} holds {max}",
                        object.sobject,
                        orderbridge_domain::text::truncate(&key, 40),
                        key.chars().count(),
                        name(&object.external_id_field)
                    ),
                });
            }
        }
        Err(e) => out.push(Overflow {
            pointer: pointer(&object.key, line),
            code: match e {
                KeyError::Missing { .. } => "required",
                KeyError::NoClient { .. } => "no_client_scope",
                KeyError::Ambiguous { .. } => "ambiguous_key",
            },
            detail: e.to_string(),
        }),
    }
    for (field, expr) in object.fields.iter().chain(&object.computed) {
        if let Some(o) = check_value(expr, scope, &name(field)) {
            out.push(Overflow {
                pointer: pointer(expr, line),
                ..o
            });
        }
    }
}

/// The value's problem, if any (the pointer is filled in by the caller).
fn check_value(expr: &Expr, scope: Scope<'_>, field: &str) -> Option<Overflow> {
    let raw = expr.raw(scope, false)?;
    let overflow = |code, detail| {
        Some(Overflow {
            pointer: String::new(),
            code,
            detail,
        })
    };
    if expr.is_number() {
        let Some(d) = decimal(&raw) else {
            return overflow(
                "not_a_number",
                format!(
                    "`{}` is not a number, and Salesforce {field} holds numbers",
                    as_text(&raw)
                ),
            );
        };
        let (int_digits, frac_digits) = digits(d);
        if let (Some(precision), Some(scale)) = (expr.precision, expr.scale) {
            if int_digits > precision.saturating_sub(scale) {
                return overflow(
                    "out_of_range",
                    format!(
                        "{d} has {int_digits} digit(s) before the point; Salesforce {field} holds {}",
                        precision.saturating_sub(scale)
                    ),
                );
            }
            if frac_digits > scale {
                return overflow(
                    "too_many_decimals",
                    format!("{d} has {frac_digits} decimal(s); Salesforce {field} holds {scale}"),
                );
            }
        }
        if expr.format == Some(Format::Integer) && frac_digits > 0 {
            return overflow(
                "out_of_range",
                format!("{d} is not a whole number; Salesforce {field} holds whole numbers"),
            );
        }
        if int_digits + frac_digits > EXACT_DIGITS {
            return overflow(
                "out_of_range",
                format!(
                    "{d} has {} significant digits; a number reaches Salesforce {field} exactly with at most {EXACT_DIGITS}",
                    int_digits + frac_digits
                ),
            );
        }
        return None;
    }
    let text = match expr.format(&raw)? {
        Value::String(s) => s,
        // A path that leads to a list or an object (a mapping pointing at `billing_address`
        // instead of one of its fields): a field holds one value, and in a Bulk CSV such a
        // value has no cell at all, so it must fail its own order, not the batch it is in.
        Value::Array(_) | Value::Object(_) => {
            return overflow(
                "not_a_value",
                format!("is a list or an object; Salesforce {field} holds one value"),
            );
        }
        _ => return None,
    };
    let len = text.chars().count();
    match expr.max_length {
        Some(max) if len > max && !expr.truncate => overflow(
            "too_long",
            format!("is {len} characters; Salesforce {field} holds {max}"),
        ),
        _ => None,
    }
}

/// A number's exact decimal value, from a decimal string or a JSON number.
fn decimal(v: &Value) -> Option<Decimal> {
    let text = match v {
        Value::String(s) => s.trim(),
        Value::Number(n) => {
            return Decimal::from_str(&n.to_string())
                .ok()
                .or_else(|| Decimal::from_scientific(&n.to_string()).ok());
        }
        _ => return None,
    };
    Decimal::from_str_exact(text).ok()
}

/// (digits before the point, digits after it), ignoring leading and trailing zeros.
fn digits(d: Decimal) -> (u32, u32) {
    let d = d.normalize();
    let frac = d.scale();
    let int = d.abs().trunc();
    let int_digits = if int.is_zero() {
        0
    } else {
        u32::try_from(int.to_string().len()).unwrap_or(u32::MAX)
    };
    (int_digits, frac)
}

/// Where in the order (as a JSON pointer) an expression's value comes from: its path, or a
/// template's first path other than the client's prefix; for a line, inside `/lines/<n>`.
fn pointer(expr: &Expr, line: Option<usize>) -> String {
    let path = match &expr.source {
        Source::Path(p) => Some(p),
        Source::Template(parts) => parts.iter().find_map(|p| match p {
            Part::Path(p) if !p.iter().any(|s| s == "client") => Some(p),
            _ => None,
        }),
        Source::Const(_) => None,
    };
    let Some(path) = path else {
        return "/".to_owned();
    };
    let (base, rest) = match (line, path.first().map(String::as_str)) {
        (Some(_), Some("order")) => (String::new(), &path[1..]),
        (Some(n), _) => (format!("/lines/{n}"), &path[..]),
        (None, _) => (String::new(), &path[..]),
    };
    let mut out = base;
    for seg in rest {
        out.push('/');
        out.push_str(&seg.replace('~', "~0").replace('/', "~1"));
    }
    if out.is_empty() { "/".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digits_ignore_insignificant_zeros() {
        let d = |s: &str| digits(Decimal::from_str_exact(s).unwrap());
        assert_eq!(d("12.50"), (2, 1));
        assert_eq!(d("0.05"), (0, 2));
        assert_eq!(d("100"), (3, 0));
        assert_eq!(d("500000000000000000000.00"), (21, 0));
        assert_eq!(d("0"), (0, 0));
    }
}
