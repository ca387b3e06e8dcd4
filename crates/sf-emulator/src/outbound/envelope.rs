//! The SOAP 1.1 envelope of an outbound message (salesforce-events.md §4), written by hand with
//! every value escaped: the shape is fixed, names come from the schema (letters, digits,
//! underscores), and only values vary.

use std::fmt::Write as _;

use serde_json::Value;

/// The outbound-message namespace.
pub const NAMESPACE: &str = "http://soap.sforce.com/2005/09/outbound";
/// The enterprise WSDL's sObject namespace.
pub const SOBJECT_NAMESPACE: &str = "urn:sobject.enterprise.soap.sforce.com";
/// The API version in `EnterpriseUrl` / `PartnerUrl`.
const API_VERSION: &str = "62.0";

/// What every notification of one envelope shares.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// The org's 18-character id.
    pub org_id: &'a str,
    /// `04k…`: the outbound message definition (here: the rule).
    pub action_id: &'a str,
    /// The emulator's instance URL (for `EnterpriseUrl` and `PartnerUrl`).
    pub instance_url: &'a str,
}

/// One `<Notification>`.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// `04l…`
    pub id: &'a str,
    pub object: &'a str,
    /// Field name → value, `Id` first; null values are left out.
    pub fields: &'a [(String, Value)],
}

/// The whole envelope.
pub fn build(header: &Header<'_>, items: &[Item<'_>]) -> String {
    let org15 = header.org_id.get(..15).unwrap_or(header.org_id);
    let base = header.instance_url.trim_end_matches('/');
    let mut out = String::with_capacity(600 + items.len() * 300);
    out.push_str(concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
        r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
        "<soapenv:Body>",
    ));
    let _ = write!(out, r#"<notifications xmlns="{NAMESPACE}">"#);
    let _ = write!(
        out,
        "<OrganizationId>{}</OrganizationId><ActionId>{}</ActionId>",
        escape(header.org_id),
        escape(header.action_id)
    );
    out.push_str(r#"<SessionId xsi:nil="true"/>"#);
    let _ = write!(
        out,
        "<EnterpriseUrl>{}</EnterpriseUrl><PartnerUrl>{}</PartnerUrl>",
        escape(&format!("{base}/services/Soap/c/{API_VERSION}/{org15}")),
        escape(&format!("{base}/services/Soap/u/{API_VERSION}/{org15}")),
    );
    for item in items {
        let _ = write!(
            out,
            r#"<Notification><Id>{}</Id><sObject xsi:type="sf:{}" xmlns:sf="{SOBJECT_NAMESPACE}">"#,
            escape(item.id),
            escape(item.object)
        );
        for (name, value) in item.fields {
            let Some(text) = text(value) else { continue };
            let name = escape(name);
            let _ = write!(out, "<sf:{name}>{}</sf:{name}>", escape(&text));
        }
        out.push_str("</sObject></Notification>");
    }
    out.push_str("</notifications></soapenv:Body></soapenv:Envelope>");
    out
}

/// A stored value as SOAP text: date-times in `xsd:dateTime` form (`…Z`), null left out.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(match s.strip_suffix("+0000") {
            // The REST form `2026-12-03T12:00:00.000+0000` → `2026-12-03T12:00:00.000Z`.
            Some(stem) if s.len() == 28 && s.as_bytes().get(10) == Some(&b'T') => {
                format!("{stem}Z")
            }
            _ => s.clone(),
        }),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// XML text/attribute escaping; characters XML 1.0 cannot carry at all become U+FFFD, and CR
/// is a character reference so a parser does not fold it into LF.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Whether a response body acknowledges: an `Ack` element (any prefix) whose text is `true`.
pub fn acknowledged(body: &str) -> bool {
    let mut rest = body;
    while let Some(at) = rest.find("Ack>") {
        let before = &rest[..at];
        let after = &rest[at + 4..];
        rest = after;
        // An opening tag: `<Ack>` or `<prefix:Ack>`, not `</Ack>`.
        let opening = before.ends_with('<')
            || before.rfind('<').is_some_and(|lt| {
                let tag = &before[lt + 1..];
                !tag.starts_with('/')
                    && tag.ends_with(':')
                    && tag[..tag.len() - 1]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !opening {
            continue;
        }
        let value = after.split('<').next().unwrap_or_default().trim();
        return value == "true" || value == "1";
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_escaped_and_nulls_left_out() {
        let fields = vec![
            ("Id".to_owned(), json!("8015g0000000003AAA")),
            ("Name".to_owned(), json!("<b>&\"x'\u{1}\r")),
            ("Description".to_owned(), Value::Null),
            (
                "LastModifiedDate".to_owned(),
                json!("2026-12-03T12:00:00.000+0000"),
            ),
        ];
        let xml = build(
            &Header {
                org_id: "00D5g0000000001AAA",
                action_id: "04k5g0000000001AAA",
                instance_url: "http://127.0.0.1:1/",
            },
            &[Item {
                id: "04l5g0000000001AAA",
                object: "Order",
                fields: &fields,
            }],
        );
        assert!(xml.contains("<sf:Name>&lt;b&gt;&amp;&quot;x&apos;\u{FFFD}&#13;</sf:Name>"));
        assert!(!xml.contains("Description"));
        assert!(
            xml.contains("<sf:LastModifiedDate>2026-12-03T12:00:00.000Z</sf:LastModifiedDate>")
        );
        assert!(xml.contains(
            "<EnterpriseUrl>http://127.0.0.1:1/services/Soap/c/62.0/00D5g0000000001</EnterpriseUrl>"
        ));
    }

    #[test]
    fn acks_are_recognised() {
        let ok = r#"<soapenv:Envelope><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
        assert!(acknowledged(ok));
        assert!(acknowledged("<out:Ack> true </out:Ack>"));
        assert!(!acknowledged("<Ack>false</Ack>"));
        assert!(!acknowledged("<NotAck>true</NotAck>"));
        assert!(!acknowledged("soap fault"));
    }
}
