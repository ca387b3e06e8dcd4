//! What the outbound-message endpoint answers: the acknowledgement Salesforce waits for, or a
//! SOAP 1.1 fault (anything but an Ack makes Salesforce deliver the message again later).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The content type of every answer of the endpoint (SOAP 1.1).
pub const SOAP_XML: &str = "text/xml; charset=utf-8";

/// `<Ack>true</Ack>`: every notification of the message is stored.
pub const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>
"#;

/// Who is at fault, as SOAP 1.1 names it: the sender (do not retry as is) or us (retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    Client,
    Server,
}

pub fn ack() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(SOAP_XML))],
        ACK,
    )
        .into_response()
}

/// A `soapenv:Fault` with `faultstring` (escaped) and the HTTP status.
pub fn fault(status: StatusCode, code: FaultCode, message: &str) -> Response {
    let code = match code {
        FaultCode::Client => "soapenv:Client",
        FaultCode::Server => "soapenv:Server",
    };
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>
"#,
        quick_xml::escape::escape(message)
    );
    let mut response = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(SOAP_XML))],
        body,
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    response
}

/// Whether a response is one of ours (so `problem_fallback` leaves it alone).
pub fn is_soap(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().eq_ignore_ascii_case(SOAP_XML.as_bytes()))
}
