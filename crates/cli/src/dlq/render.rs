//! How dead letters are printed: the `list` table and the full `show` rendering. Dead letters
//! carry outside data, so everything printed is escaped first.

use std::fmt::Write as _;
use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use lapin::types::{AMQPValue, ShortString};
use orderbridge_broker::Topology;
use orderbridge_broker::headers::{as_int, as_text};

use super::letter::{DeadLetter, Summary};
use crate::render::{clean, clean_except};

impl DeadLetter {
    /// The full `show` rendering.
    pub(super) fn render(&self, topology: &Topology) -> String {
        let mut s = String::new();
        let p = &self.properties;
        let _ = writeln!(s, "id:           {}", clean(&self.id));
        let _ = writeln!(
            s,
            "origin queue: {} (replay target)",
            clean(&self.origin(topology))
        );
        s.push_str("properties:\n");
        let short = |v: &Option<ShortString>| v.as_ref().map(|v| v.to_string());
        let props: [(&str, Option<String>); 13] = [
            ("message_id", short(p.message_id())),
            ("type", short(p.kind())),
            ("correlation_id", short(p.correlation_id())),
            ("content_type", short(p.content_type())),
            ("content_encoding", short(p.content_encoding())),
            (
                "delivery_mode",
                p.delivery_mode().map(|m| match m {
                    2 => "2 (persistent)".to_owned(),
                    m => format!("{m} (transient)"),
                }),
            ),
            ("priority", p.priority().map(|v| v.to_string())),
            ("timestamp", p.timestamp().map(render_time)),
            ("expiration", short(p.expiration())),
            ("reply_to", short(p.reply_to())),
            ("app_id", short(p.app_id())),
            ("user_id", short(p.user_id())),
            ("cluster_id", short(p.cluster_id())),
        ];
        for (name, value) in props {
            if let Some(v) = value {
                let _ = writeln!(s, "  {name}: {}", clean(&v));
            }
        }
        match p.headers() {
            Some(h) if !h.inner().is_empty() => {
                s.push_str("headers:\n");
                for (k, v) in h {
                    render_entry(&mut s, 1, k.as_str(), v);
                }
            }
            _ => s.push_str("headers: (none)\n"),
        }
        let _ = writeln!(s, "body ({} bytes):", self.body.len());
        s.push_str(&render_body(&self.body));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

fn render_time(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .map_or_else(
            || t.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
}

/// A header value on one line, or `None` for tables and arrays of tables.
fn scalar(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => {
            let scale = u32::from(d.scale);
            match 10u64.checked_pow(scale) {
                Some(div) if scale > 0 => {
                    let width = usize::from(d.scale);
                    let v = u64::from(d.value);
                    format!("{}.{:0width$}", v / div, v % div)
                }
                _ => d.value.to_string(),
            }
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => clean(&as_text(v)?),
        AMQPValue::ByteArray(b) => match std::str::from_utf8(b.as_slice()) {
            Ok(s) => clean(s),
            Err(_) => format!("<{} bytes> {}", b.len(), b.as_slice().escape_ascii()),
        },
        AMQPValue::Timestamp(t) => render_time(*t),
        AMQPValue::Void => "(void)".to_owned(),
        AMQPValue::FieldTable(_) => return None,
        AMQPValue::FieldArray(a) => {
            let items: Option<Vec<String>> = a.as_slice().iter().map(scalar).collect();
            format!("[{}]", items?.join(", "))
        }
        _ => as_int(v)?.to_string(),
    })
}

fn render_entry(s: &mut String, depth: usize, key: &str, v: &AMQPValue) {
    let pad = "  ".repeat(depth);
    let key = clean(key);
    if let Some(line) = scalar(v) {
        let _ = writeln!(s, "{pad}{key}: {line}");
        return;
    }
    let _ = writeln!(s, "{pad}{key}:");
    match v {
        AMQPValue::FieldTable(t) => {
            for (k, v) in t {
                render_entry(s, depth + 1, k.as_str(), v);
            }
        }
        AMQPValue::FieldArray(a) => {
            for item in a.as_slice() {
                render_item(s, depth + 1, item);
            }
        }
        _ => {}
    }
}

/// One element of an array: `- value`, or `-` followed by a table's entries (x-death).
fn render_item(s: &mut String, depth: usize, v: &AMQPValue) {
    let pad = "  ".repeat(depth);
    match (v, scalar(v)) {
        (_, Some(line)) => {
            let _ = writeln!(s, "{pad}- {line}");
        }
        (AMQPValue::FieldTable(t), None) => {
            let _ = writeln!(s, "{pad}-");
            for (k, v) in t {
                render_entry(s, depth + 1, k.as_str(), v);
            }
        }
        (AMQPValue::FieldArray(a), None) => {
            let _ = writeln!(s, "{pad}-");
            for item in a.as_slice() {
                render_item(s, depth + 1, item);
            }
        }
        _ => {}
    }
}

/// JSON pretty-printed; other text as is (control characters other than newlines and tabs
/// escaped); binary escaped.
fn render_body(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(pretty) = serde_json::to_string_pretty(&v)
    {
        return pretty;
    }
    match std::str::from_utf8(body) {
        Ok(text) => clean_except(text, &['\n', '\t']),
        Err(_) => body.escape_ascii().to_string(),
    }
}

pub(super) fn write_table(out: &mut impl Write, rows: &[Summary]) -> std::io::Result<()> {
    const HEADINGS: [&str; 8] = [
        "ID",
        "TYPE",
        "ORIGIN",
        "REASON",
        "ERROR CODE",
        "ATTEMPTS",
        "FIRST FAILURE",
        "LAST FAILURE",
    ];
    let dash = || "-".to_owned();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                clean(&r.id),
                r.event_type.as_deref().map_or_else(dash, clean),
                clean(&r.origin_queue),
                r.reason.as_deref().map_or_else(dash, clean),
                r.error_code.as_deref().map_or_else(dash, clean),
                r.attempts.map_or_else(dash, |a| a.to_string()),
                r.first_failure_at.as_deref().map_or_else(dash, clean),
                r.last_failure_at.as_deref().map_or_else(dash, clean),
            ]
        })
        .collect();
    let mut widths = HEADINGS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(c);
            } else {
                let _ = write!(text, "{c:<w$}  ");
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &HEADINGS)?;
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &refs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_escapes_control_characters() {
        assert_eq!(clean("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        assert_eq!(render_body(b"line1\nline\t2"), "line1\nline\t2");
        assert_eq!(render_body(&[0xff, b'a']), "\\xffa");
        assert_eq!(render_body(br#"{"a":1}"#), "{\n  \"a\": 1\n}");
    }
}
