//! The parser's accepted subset and refusals, and LIKE matching.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::parse::{Lit, parse};
use super::run::like;

#[test]
fn parses_the_supported_subset() {
    let q = parse(
        "SELECT Id, Name, Account.Name FROM Order WHERE (Status = 'Draft' OR Name != null) AND External_Id__c IN ('a','b') AND NOT Name LIKE 'x%' ORDER BY Name DESC NULLS LAST, Id LIMIT 10 OFFSET 2",
    )
    .unwrap();
    assert_eq!(q.fields.len(), 3);
    assert_eq!(q.object, "Order");
    assert_eq!(q.limit, Some(10));
    assert_eq!(q.offset, Some(2));
    assert_eq!(q.order.len(), 2);
    assert!(parse("SELECT COUNT() FROM Account").unwrap().count_only);
}

#[test]
fn malformed_queries_are_rejected() {
    for q in [
        "",
        "SELECT FROM Account",
        "SELECT Id Account",
        "SELECT Id FROM Account WHERE",
        "SELECT Id FROM Account WHERE Name = 'x",
        "SELECT Id FROM Account LIMIT x",
        "SELECT Id FROM Account junk",
    ] {
        assert_eq!(parse(q).unwrap_err().code, "MALFORMED_QUERY", "{q}");
    }
}

#[test]
fn like_matches_wildcards() {
    assert!(like(Some(&json!("Acme Corp")), &Lit::Str("acme%".into())));
    assert!(like(Some(&json!("abc")), &Lit::Str("a_c".into())));
    assert!(!like(Some(&json!("abc")), &Lit::Str("a_".into())));
    assert!(like(Some(&json!("abc")), &Lit::Str("%".into())));
    assert!(like(Some(&json!("")), &Lit::Str("%".into())));
    assert!(!like(Some(&json!("abc")), &Lit::Str("%d%".into())));
    // Many wildcards on a long text stay fast (no backtracking explosion).
    let text = json!("a".repeat(2000));
    assert!(!like(
        Some(&text),
        &Lit::Str(format!("{}b", "%a".repeat(50)))
    ));
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let q = format!(
        "SELECT Id FROM Account WHERE {}Name = 'x'{}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert_eq!(parse(&q).unwrap_err().code, "MALFORMED_QUERY");
    let q = format!(
        "SELECT Id FROM Account WHERE {}Name = 'x'",
        "NOT ".repeat(10_000)
    );
    assert_eq!(parse(&q).unwrap_err().code, "MALFORMED_QUERY");
}
