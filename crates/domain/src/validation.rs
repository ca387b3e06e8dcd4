//! Field-level validation errors, addressed by JSON pointer so a client can show them next to
//! the input that caused them (RFC 9457 `errors` extension, RFC 6901 pointers).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One rule a field broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer to the offending field, as a URI fragment (`#/lines/0/quantity`).
    #[schema(example = "#/lines/0/quantity")]
    pub pointer: String,
    /// A stable, machine-readable rule name (`required`, `too_long`, `out_of_range`…).
    #[schema(example = "out_of_range")]
    pub code: String,
    /// What is wrong, for a person.
    #[schema(example = "must be between 1 and 1000000")]
    pub detail: String,
}

/// Every rule the input broke, collected in one pass so the client fixes them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} field(s) failed validation", .0.len())]
pub struct Violations(pub Vec<FieldError>);

impl Violations {
    pub fn push(&mut self, pointer: &str, code: &str, detail: impl Into<String>) {
        self.0.push(FieldError {
            pointer: format!("#{pointer}"),
            code: code.to_owned(),
            detail: detail.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, the collected violations otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Checks a free-text field: not blank when required, at most `max` characters, and free of
    /// control characters (they break CSV exports and Salesforce list views alike).
    pub fn text(&mut self, pointer: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.push(pointer, "required", "must not be blank");
        } else {
            self.optional_text(pointer, value, max);
        }
    }

    /// Like [`Violations::text`] for a field that may be empty; multi-line text keeps its newlines.
    pub fn optional_text(&mut self, pointer: &str, value: &str, max: usize) {
        let len = value.chars().count();
        if len > max {
            self.push(
                pointer,
                "too_long",
                format!("must be at most {max} characters, got {len}"),
            );
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            self.push(
                pointer,
                "invalid_characters",
                "must not contain control characters",
            );
        }
    }
}
