//! Reading Salesforce's outbound-message envelope (SOAP 1.1), pure: bytes in, notifications out.
//!
//! ```text
//! <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
//!  <soapenv:Body>
//!   <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
//!    <OrganizationId>00D…</OrganizationId> <ActionId>04k…</ActionId>
//!    <SessionId xsi:nil="true"/> <EnterpriseUrl>…</EnterpriseUrl> <PartnerUrl>…</PartnerUrl>
//!    <Notification>                                   (1 to 100)
//!     <Id>04l…</Id>
//!     <sObject xsi:type="sf:Order" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
//!      <sf:Id>801…</sf:Id> <sf:Status>Activated</sf:Status>
//! ```
//!
//! Elements are matched by namespace and local name, never by prefix (`soapenv`, `soap`, `env`,
//! a default namespace: all the same). Hostile input is refused, never expanded: a `<!DOCTYPE`
//! (the only place entities can be declared) is an error, and a reference to anything but the
//! five predefined entities or a character is an error too (quick-xml expands nothing itself).

use std::collections::BTreeMap;

use quick_xml::NsReader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Most notifications one message may carry (Salesforce sends at most 100).
pub const MAX_NOTIFICATIONS: usize = 100;
/// Deepest element nesting accepted; Salesforce's envelope is 6 deep.
const MAX_DEPTH: usize = 16;
/// Most fields one notification's sObject may carry (an object has at most 800 fields).
const MAX_FIELDS: usize = 800;

/// One outbound message: who sent it and its notifications, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub organization_id: String,
    pub action_id: String,
    pub notifications: Vec<Notification>,
}

/// One notification: a record's selected fields at the time the rule fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notification's `Id`: the dedupe key.
    pub id: String,
    /// The sObject type, from `xsi:type` without its prefix (`Order`).
    pub object: String,
    /// The fields by name (`Id`, `Status`…); `None` for `xsi:nil="true"`.
    pub fields: BTreeMap<String, Option<String>>,
}

impl Notification {
    /// The record's id (`sf:Id`), when selected and not nil.
    pub fn record_id(&self) -> Option<&str> {
        self.fields.get("Id").and_then(|v| v.as_deref())
    }
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SoapError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("a DOCTYPE is not allowed")]
    Doctype,
    #[error("entity reference `&{0};` is not allowed (only the predefined ones and characters)")]
    Entity(String),
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("not an outbound message: {0}")]
    Shape(String),
    #[error("more than {MAX_NOTIFICATIONS} notifications")]
    TooManyNotifications,
}

impl From<quick_xml::Error> for SoapError {
    fn from(e: quick_xml::Error) -> Self {
        Self::Xml(e.to_string())
    }
}

/// Where the reader is in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Envelope,
    Header,
    Body,
    Notifications,
    /// A child of `notifications` holding text (`OrganizationId`, `ActionId`, `SessionId`…).
    MessageField(MessageField),
    Notification,
    NotificationId,
    SObject,
    /// A field of the sObject.
    Field,
    /// Something we do not read (inside `Header`, an unknown child): skipped whole.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageField {
    OrganizationId,
    ActionId,
    Other,
}

/// Parses an outbound message.
pub fn parse(body: &[u8]) -> Result<Message, SoapError> {
    let text = std::str::from_utf8(body).map_err(|_| SoapError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;

    let mut stack: Vec<Place> = Vec::new();
    let mut text_buf = String::new();
    let mut organization_id: Option<String> = None;
    let mut action_id: Option<String> = None;
    let mut notifications: Vec<Notification> = Vec::new();
    // The notification being read: its id, its object, its fields, the field being read.
    let mut current: Option<Notification> = None;
    let mut field: Option<(String, bool)> = None;
    let mut seen_envelope = false;

    loop {
        let (ns, event) = reader.read_resolved_event()?;
        // Copied out, so the reader is free for the attribute lookups below.
        let ns = known_namespace(&ns);
        match event {
            Event::DocType(_) => return Err(SoapError::Doctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(ref start) | Event::Empty(ref start) => {
                let empty = matches!(event, Event::Empty(_));
                let local = start.local_name();
                let local = local.as_ref();
                let parent = stack.last().copied();
                let place = match parent {
                    None if seen_envelope => {
                        return Err(SoapError::Shape("content after the envelope".into()));
                    }
                    None if ns == Some(SOAP_ENVELOPE_NS) && local == "Envelope" => {
                        seen_envelope = true;
                        Place::Envelope
                    }
                    None => {
                        return Err(SoapError::Shape(
                            "the root is not a SOAP 1.1 Envelope".into(),
                        ));
                    }
                    Some(Place::Envelope) if ns == Some(SOAP_ENVELOPE_NS) && local == "Header" => {
                        Place::Header
                    }
                    Some(Place::Envelope) if ns == Some(SOAP_ENVELOPE_NS) && local == "Body" => {
                        Place::Body
                    }
                    Some(Place::Body) if ns == Some(OUTBOUND_NS) && local == "notifications" => {
                        Place::Notifications
                    }
                    Some(Place::Notifications) if ns == Some(OUTBOUND_NS) => match local {
                        "Notification" => {
                            if notifications.len() >= MAX_NOTIFICATIONS {
                                return Err(SoapError::TooManyNotifications);
                            }
                            current = Some(Notification {
                                id: String::new(),
                                object: String::new(),
                                fields: BTreeMap::new(),
                            });
                            Place::Notification
                        }
                        "OrganizationId" => Place::MessageField(MessageField::OrganizationId),
                        "ActionId" => Place::MessageField(MessageField::ActionId),
                        _ => Place::MessageField(MessageField::Other),
                    },
                    Some(Place::Notification) if ns == Some(OUTBOUND_NS) && local == "Id" => {
                        Place::NotificationId
                    }
                    Some(Place::Notification) if ns == Some(OUTBOUND_NS) && local == "sObject" => {
                        let object = xsi_type(start, &reader)?;
                        if let Some(n) = current.as_mut() {
                            n.object = object;
                        }
                        Place::SObject
                    }
                    Some(Place::SObject) => {
                        let nil = is_nil(start, &reader);
                        field = Some((local.to_owned(), nil));
                        Place::Field
                    }
                    Some(Place::Header | Place::Skipped) => Place::Skipped,
                    Some(Place::MessageField(_) | Place::NotificationId | Place::Field) => {
                        return Err(SoapError::Shape(format!(
                            "element <{local}> inside a value"
                        )));
                    }
                    Some(_) => {
                        return Err(SoapError::Shape(format!("unexpected element <{local}>")));
                    }
                };
                if stack.len() >= MAX_DEPTH {
                    return Err(SoapError::Shape("nested too deeply".into()));
                }
                text_buf.clear();
                stack.push(place);
                if empty {
                    close(
                        &mut stack,
                        &mut text_buf,
                        &mut organization_id,
                        &mut action_id,
                        &mut current,
                        &mut field,
                        &mut notifications,
                    )?;
                }
            }
            Event::End(_) => close(
                &mut stack,
                &mut text_buf,
                &mut organization_id,
                &mut action_id,
                &mut current,
                &mut field,
                &mut notifications,
            )?,
            Event::Text(t) => push_text(&stack, &mut text_buf, &t.xml10_content())?,
            Event::CData(c) => push_text(&stack, &mut text_buf, &c.into_inner())?,
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| SoapError::Xml(e.to_string()))?
                        .map(String::from)
                } else {
                    resolve_predefined_entity(&r.xml10_content()).map(str::to_owned)
                };
                let Some(resolved) = resolved else {
                    return Err(SoapError::Entity(r.xml10_content().into_owned()));
                };
                push_text(&stack, &mut text_buf, &resolved)?;
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(SoapError::Xml("unexpected end of document".into()));
    }
    if !seen_envelope {
        return Err(SoapError::Shape("no SOAP envelope".into()));
    }
    let organization_id = organization_id
        .filter(|o| !o.is_empty())
        .ok_or_else(|| SoapError::Shape("no OrganizationId".into()))?;
    if notifications.is_empty() {
        return Err(SoapError::Shape("no Notification".into()));
    }
    Ok(Message {
        organization_id,
        action_id: action_id.unwrap_or_default(),
        notifications,
    })
}

fn namespace<'a>(ns: &ResolveResult<'a>) -> Option<&'a str> {
    match ns {
        ResolveResult::Bound(Namespace(ns)) => Some(ns),
        _ => None,
    }
}

/// The element namespaces the envelope's structure is made of; any other is `None`.
fn known_namespace(ns: &ResolveResult<'_>) -> Option<&'static str> {
    match namespace(ns) {
        Some(SOAP_ENVELOPE_NS) => Some(SOAP_ENVELOPE_NS),
        Some(OUTBOUND_NS) => Some(OUTBOUND_NS),
        _ => None,
    }
}

/// Text goes into the value being read; between elements only whitespace may stand (anything
/// goes inside what is skipped).
fn push_text(stack: &[Place], buf: &mut String, text: &str) -> Result<(), SoapError> {
    match stack.last() {
        Some(Place::MessageField(_) | Place::NotificationId | Place::Field) => buf.push_str(text),
        Some(Place::Header | Place::Skipped) => {}
        _ if text.trim().is_empty() => {}
        _ => return Err(SoapError::Shape("text outside a value".into())),
    }
    Ok(())
}

/// `xsi:type="sf:Order"` → `Order` (any prefix, or none).
fn xsi_type<R>(start: &BytesStart<'_>, reader: &NsReader<R>) -> Result<String, SoapError> {
    for attr in start.attributes() {
        let attr = attr.map_err(|e| SoapError::Xml(e.to_string()))?;
        let (ns, local) = reader.resolver().resolve_attribute(attr.key);
        if namespace(&ns) == Some(XSI_NS) && local.as_ref() == "type" {
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| SoapError::Xml(e.to_string()))?;
            let object = value.rsplit(':').next().unwrap_or_default().trim();
            if object.is_empty() {
                break;
            }
            return Ok(object.to_owned());
        }
    }
    Err(SoapError::Shape("sObject without xsi:type".into()))
}

fn is_nil<R>(start: &BytesStart<'_>, reader: &NsReader<R>) -> bool {
    start.attributes().has_nil(reader.resolver())
}

/// The element on top of the stack ends: file its text where it belongs.
fn close(
    stack: &mut Vec<Place>,
    text: &mut String,
    organization_id: &mut Option<String>,
    action_id: &mut Option<String>,
    current: &mut Option<Notification>,
    field: &mut Option<(String, bool)>,
    notifications: &mut Vec<Notification>,
) -> Result<(), SoapError> {
    let Some(place) = stack.pop() else {
        return Err(SoapError::Xml("unmatched end tag".into()));
    };
    match place {
        Place::MessageField(MessageField::OrganizationId) => {
            *organization_id = Some(text.trim().to_owned());
        }
        Place::MessageField(MessageField::ActionId) => *action_id = Some(text.trim().to_owned()),
        Place::NotificationId => {
            if let Some(n) = current.as_mut() {
                n.id = text.trim().to_owned();
            }
        }
        Place::Field => {
            if let (Some(n), Some((name, nil))) = (current.as_mut(), field.take()) {
                if n.fields.len() >= MAX_FIELDS {
                    return Err(SoapError::Shape("too many fields".into()));
                }
                let value = (!nil).then(|| std::mem::take(text));
                if n.fields.insert(name.clone(), value).is_some() {
                    return Err(SoapError::Shape(format!("field {name} repeated")));
                }
            }
        }
        Place::Notification => {
            let Some(n) = current.take() else {
                return Err(SoapError::Xml("unmatched end tag".into()));
            };
            if n.id.is_empty() {
                return Err(SoapError::Shape("a Notification without Id".into()));
            }
            if n.object.is_empty() {
                return Err(SoapError::Shape("a Notification without sObject".into()));
            }
            notifications.push(n);
        }
        _ => {}
    }
    text.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn envelope(prefix: &str, notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<{prefix}:Envelope xmlns:{prefix}="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <{prefix}:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D5g0000000001EAA</OrganizationId>
   <ActionId>04k5g0000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://x/services/Soap/c/62.0</EnterpriseUrl>
   <PartnerUrl>https://x/services/Soap/u/62.0</PartnerUrl>
   {notifications}
  </notifications>
 </{prefix}:Body>
</{prefix}:Envelope>"#
        )
    }

    fn notification(id: &str, status: &str) -> String {
        format!(
            r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Order" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>8015g0000000001AAA</sf:Id><sf:Status>{status}</sf:Status><sf:Description xsi:nil="true"/></sObject></Notification>"#
        )
    }

    #[test]
    fn reads_a_message_with_any_prefix() {
        for prefix in ["soapenv", "soap", "env"] {
            let m = parse(envelope(prefix, &notification("04l1", "Activated")).as_bytes()).unwrap();
            assert_eq!(m.organization_id, "00D5g0000000001EAA");
            assert_eq!(m.action_id, "04k5g0000000001AAA");
            assert_eq!(m.notifications.len(), 1);
            let n = &m.notifications[0];
            assert_eq!(n.id, "04l1");
            assert_eq!(n.object, "Order");
            assert_eq!(n.record_id(), Some("8015g0000000001AAA"));
            assert_eq!(n.fields["Status"].as_deref(), Some("Activated"));
            assert_eq!(n.fields["Description"], None);
        }
    }

    #[test]
    fn predefined_and_character_references_are_read() {
        let m =
            parse(envelope("s", &notification("04l1", "A &amp; B &#x41;&lt;")).as_bytes()).unwrap();
        assert_eq!(
            m.notifications[0].fields["Status"].as_deref(),
            Some("A & B A<")
        );
    }

    #[test]
    fn doctype_and_custom_entities_are_refused() {
        let bomb = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>{}",
            envelope("s", &notification("04l1", "&lol2;"))
                .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        );
        assert_eq!(parse(bomb.as_bytes()), Err(SoapError::Doctype));
        let undeclared = envelope("s", &notification("04l1", "&lol;"));
        assert_eq!(
            parse(undeclared.as_bytes()),
            Err(SoapError::Entity("lol".into()))
        );
    }

    #[test]
    fn at_most_100_notifications() {
        let hundred: String = (0..100)
            .map(|i| notification(&format!("n{i}"), "X"))
            .collect();
        assert_eq!(
            parse(envelope("s", &hundred).as_bytes())
                .unwrap()
                .notifications
                .len(),
            100
        );
        let more = hundred + &notification("n100", "X");
        assert_eq!(
            parse(envelope("s", &more).as_bytes()),
            Err(SoapError::TooManyNotifications)
        );
    }

    #[test]
    fn malformed_and_foreign_documents_are_refused() {
        for bad in [
            "",
            "not xml",
            "<a><b></a>",
            "<Envelope/>",
            &envelope("s", &notification("04l1", "X"))[..200],
            &envelope("s", ""),
            &envelope(
                "s",
                "<Notification><sObject xsi:type=\"sf:Order\"/></Notification>",
            ),
            &envelope(
                "s",
                "<Notification><Id>1</Id><sObject xsi:type=\"sf:Order\" xmlns:sf=\"urn:x\"><sf:Id><b/></sf:Id></sObject></Notification>",
            ),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
        assert_eq!(parse(b"\xff\xfe"), Err(SoapError::NotUtf8));
    }
}
