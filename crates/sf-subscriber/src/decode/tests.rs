#![allow(clippy::unwrap_used)]

use apache_avro::types::{Record, Value};

use super::*;

/// An OrderChangeEvent schema as Salesforce shapes it: the header first, then nullable fields;
/// `extra` adds fields before `Status` (what an admin adding a field does to the positions).
fn schema_json(extra: &[&str]) -> String {
    let header = r#"{"name":"ChangeEventHeader","type":{"type":"record","name":"ChangeEventHeader","fields":[
        {"name":"entityName","type":"string"},
        {"name":"recordIds","type":{"type":"array","items":"string"}},
        {"name":"changeType","type":{"type":"enum","name":"ChangeType","symbols":["CREATE","UPDATE","DELETE","UNDELETE","GAP_CREATE","GAP_UPDATE","GAP_DELETE","GAP_UNDELETE","GAP_OVERFLOW"]}},
        {"name":"changeOrigin","type":"string"},
        {"name":"transactionKey","type":"string"},
        {"name":"sequenceNumber","type":"int"},
        {"name":"commitTimestamp","type":"long"},
        {"name":"commitNumber","type":"long"},
        {"name":"commitUser","type":"string"},
        {"name":"nulledFields","type":{"type":"array","items":"string"}},
        {"name":"diffFields","type":{"type":"array","items":"string"}},
        {"name":"changedFields","type":{"type":"array","items":"string"}}]}}"#;
    let mut fields = vec![header.to_owned()];
    for name in extra {
        fields.push(format!(
            r#"{{"name":"{name}","type":["null","string"],"default":null}}"#
        ));
    }
    fields.push(r#"{"name":"Status","type":["null","string"],"default":null}"#.to_owned());
    fields.push(
        r#"{"name":"BillingAddress","type":["null",{"type":"record","name":"Address","fields":[
            {"name":"Street","type":["null","string"],"default":null},
            {"name":"City","type":["null","string"],"default":null}]}],"default":null}"#
            .to_owned(),
    );
    format!(
        r#"{{"type":"record","name":"OrderChangeEvent","namespace":"com.sforce.eventbus","fields":[{}]}}"#,
        fields.join(",")
    )
}

fn payload(
    json: &str,
    change_type: (u32, &str),
    origin: &str,
    changed: &[&str],
    status: Option<&str>,
) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(json).unwrap();
    let apache_avro::Schema::Record(rs) = &schema else {
        panic!()
    };
    let header_schema = &rs.fields[0].schema;
    let mut header = Record::new(header_schema).unwrap();
    header.put("entityName", "Order");
    header.put(
        "recordIds",
        Value::Array(vec![Value::String("801000000000001AAA".into())]),
    );
    header.put(
        "changeType",
        Value::Enum(change_type.0, change_type.1.into()),
    );
    header.put("changeOrigin", origin);
    header.put("transactionKey", "tx-1");
    header.put("sequenceNumber", 1);
    header.put("commitTimestamp", Value::Long(1_764_700_000_000));
    header.put("commitNumber", Value::Long(7));
    header.put("commitUser", "005000000000001AAA");
    header.put("nulledFields", Value::Array(vec![]));
    header.put("diffFields", Value::Array(vec![]));
    header.put(
        "changedFields",
        Value::Array(changed.iter().map(|s| Value::String((*s).into())).collect()),
    );
    let mut record = Record::new(&schema).unwrap();
    record.put("ChangeEventHeader", header);
    for f in &rs.fields[1..] {
        record.put(&f.name, Value::Union(0, Box::new(Value::Null)));
    }
    if let Some(s) = status {
        record.put("Status", Value::Union(1, Box::new(Value::String(s.into()))));
    }
    apache_avro::to_avro_datum(&schema, record).unwrap()
}

#[test]
fn decodes_the_header_and_names_changed_fields_from_the_schema() {
    let json = schema_json(&[]);
    let schema = EventSchema::parse("s1", &json).unwrap();
    assert!(schema.change_event);
    // Status is field 1: bit 1 → 0x02.
    let bytes = payload(
        &json,
        (1, "UPDATE"),
        "com/salesforce/api/rest/62.0;client=someone",
        &["0x02"],
        Some("Activated"),
    );
    let event = schema.decode(&bytes).unwrap();
    let header = event.header.as_ref().unwrap();
    assert_eq!(header.change_type, ChangeType::Update);
    assert_eq!(header.record_ids, vec!["801000000000001AAA".to_owned()]);
    assert_eq!(header.commit_timestamp, 1_764_700_000_000);
    assert_eq!(header.changed_fields.0, vec!["Status".to_owned()]);
    assert_eq!(event.string("Status"), Some("Activated"));
    assert!(header.from_client("someone"));
    assert!(!header.from_client("orderbridge"));
}

#[test]
fn positions_follow_the_schema_not_a_fixed_list() {
    // A field added before Status moves it to position 2: bit 2 → 0x04 names Status, and the
    // old position (0x02) now names the new field.
    let json = schema_json(&["Activation__c"]);
    let schema = EventSchema::parse("s2", &json).unwrap();
    let bytes = payload(&json, (1, "UPDATE"), "", &["0x04"], Some("Activated"));
    let event = schema.decode(&bytes).unwrap();
    assert_eq!(
        event.header.unwrap().changed_fields.0,
        vec!["Status".to_owned()]
    );
    let bytes = payload(&json, (1, "UPDATE"), "", &["0x02"], None);
    let event = schema.decode(&bytes).unwrap();
    assert_eq!(
        event.header.unwrap().changed_fields.0,
        vec!["Activation__c".to_owned()]
    );
}

#[test]
fn nested_bitmaps_name_the_compound_field() {
    let json = schema_json(&[]);
    let schema = EventSchema::parse("s3", &json).unwrap();
    // BillingAddress is top-level field 2; its City is nested field 1.
    let bytes = payload(&json, (1, "UPDATE"), "", &["0x04", "2-0x02"], None);
    let event = schema.decode(&bytes).unwrap();
    assert_eq!(
        event.header.unwrap().changed_fields.0,
        vec![
            "BillingAddress".to_owned(),
            "BillingAddress.City".to_owned()
        ]
    );
}

#[test]
fn gap_events_are_recognised() {
    let json = schema_json(&[]);
    let schema = EventSchema::parse("s4", &json).unwrap();
    let bytes = payload(&json, (5, "GAP_UPDATE"), "", &[], None);
    let header = schema.decode(&bytes).unwrap().header.unwrap();
    assert_eq!(header.change_type, ChangeType::Gap("GAP_UPDATE".into()));
}

#[test]
fn hostile_payloads_and_bitmaps_are_errors_not_panics() {
    let json = schema_json(&[]);
    let schema = EventSchema::parse("s5", &json).unwrap();
    assert!(matches!(
        schema.decode(b""),
        Err(DecodeError::BadPayload { .. })
    ));
    assert!(schema.decode(&[0xff; 64]).is_err());
    // A huge array length must not allocate its way to a crash.
    assert!(
        schema
            .decode(&[0x02, b'x', 0xfe, 0xff, 0xff, 0xff, 0x0f])
            .is_err()
    );
    let mut bytes = payload(&json, (1, "UPDATE"), "", &["0x02"], None);
    bytes.push(0);
    assert!(matches!(
        schema.decode(&bytes),
        Err(DecodeError::TrailingBytes { .. })
    ));
    // A bitmap naming a position past the schema's end was written with another schema.
    let bytes = payload(&json, (1, "UPDATE"), "", &["0x80"], None);
    assert!(matches!(
        schema.decode(&bytes),
        Err(DecodeError::BadHeader(_))
    ));
    let bytes = payload(&json, (1, "UPDATE"), "", &["zz"], None);
    assert!(matches!(
        schema.decode(&bytes),
        Err(DecodeError::BadHeader(_))
    ));
    // Field 1 (Status) is not a nested record.
    let bytes = payload(&json, (1, "UPDATE"), "", &["1-0x01"], None);
    assert!(matches!(
        schema.decode(&bytes),
        Err(DecodeError::BadHeader(_))
    ));
    assert!(EventSchema::parse("bad", "{not json").is_err());
    assert!(matches!(
        EventSchema::parse("str", r#""string""#),
        Err(DecodeError::NotARecord(_))
    ));
}

#[test]
fn platform_events_have_no_header() {
    let json = r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[
        {"name":"CreatedDate","type":"long"},{"name":"CreatedById","type":"string"},
        {"name":"OrderId__c","type":["null","string"],"default":null}]}"#;
    let schema = EventSchema::parse("pe", json).unwrap();
    assert!(!schema.change_event);
    let avro = apache_avro::Schema::parse_str(json).unwrap();
    let mut r = Record::new(&avro).unwrap();
    r.put("CreatedDate", Value::Long(1));
    r.put("CreatedById", "005");
    r.put(
        "OrderId__c",
        Value::Union(1, Box::new(Value::String("801x".into()))),
    );
    let bytes = apache_avro::to_avro_datum(&avro, r).unwrap();
    let event = schema.decode(&bytes).unwrap();
    assert!(event.header.is_none());
    assert_eq!(event.string("OrderId__c"), Some("801x"));
}

#[test]
fn echo_needs_the_exact_client_name() {
    let h = |origin: &str| ChangeHeader {
        entity_name: "Order".into(),
        record_ids: vec![],
        change_type: ChangeType::Update,
        change_origin: origin.into(),
        transaction_key: String::new(),
        commit_timestamp: 0,
        changed_fields: FieldNames::default(),
        nulled_fields: FieldNames::default(),
        diff_fields: FieldNames::default(),
    };
    assert!(h("com/salesforce/api/rest/62.0;client=orderbridge").from_client("orderbridge"));
    assert!(!h("com/salesforce/api/rest/62.0;client=orderbridge2").from_client("orderbridge"));
    assert!(!h("").from_client("orderbridge"));
    assert!(!h("client=other;x=orderbridge").from_client("orderbridge"));
}
