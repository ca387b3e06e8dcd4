//! The mapping file's JSON format and its compilation into the checked model. Compilation goes
//! on after a problem, so one run names every mistake in the file with its place.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::Problems;
use crate::model::{
    AccountMapping, Expr, Format, ItemsMapping, KeyScope, Mapping, ObjectMapping, OrderMapping,
    Part, Source, WriteMode,
};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappingFile {
    #[serde(default)]
    pricebook: Option<String>,
    #[serde(default)]
    account: Option<ObjectFile>,
    order: ObjectFile,
    #[serde(default)]
    items: Option<ObjectFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectFile {
    sobject: String,
    external_id_field: String,
    key: ExprFile,
    /// `create` or `upsert`; defaults: account `upsert`, order and items `create`.
    #[serde(default)]
    write: Option<WriteMode>,
    #[serde(default)]
    fields: BTreeMap<String, ExprFile>,
    /// Fields Salesforce computes (read-only), with the order value each must equal.
    #[serde(default)]
    computed: BTreeMap<String, ExprFile>,
    /// `order` only: relationship name on the order's object pointing at the account object.
    #[serde(default)]
    account_relationship: Option<String>,
    /// `order` only: the lookup field that takes the price book id.
    #[serde(default)]
    pricebook_field: Option<String>,
    /// `items` only: relationship name on the item's object pointing at the order's object.
    #[serde(default)]
    order_relationship: Option<String>,
    /// `items` only: the lookup field that takes the price book entry id resolved from the SKU.
    #[serde(default)]
    pricebook_entry_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ExprFile {
    Path(String),
    Full(ExprObject),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprObject {
    #[serde(default)]
    path: Option<String>,
    #[serde(default, rename = "const")]
    constant: Option<Value>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    max_length: Option<usize>,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    precision: Option<u32>,
    #[serde(default)]
    scale: Option<u32>,
}

fn split_path(p: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = p.split('.').map(|s| s.trim().to_owned()).collect();
    segs.iter().all(|s| !s.is_empty()).then_some(segs)
}

fn compile_expr(place: &str, e: ExprFile, problems: &mut Problems) -> Option<Expr> {
    let obj = match e {
        ExprFile::Path(p) => ExprObject {
            path: Some(p),
            constant: None,
            template: None,
            format: None,
            max_length: None,
            truncate: false,
            precision: None,
            scale: None,
        },
        ExprFile::Full(o) => o,
    };
    let set = [
        obj.path.is_some(),
        obj.constant.is_some(),
        obj.template.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if set != 1 {
        problems.0.push(format!(
            "{place}: give exactly one of `path`, `const` or `template`"
        ));
        return None;
    }
    if obj.max_length == Some(0) {
        problems
            .0
            .push(format!("{place}: max_length must be at least 1"));
    }
    if obj.truncate && obj.max_length.is_none() {
        problems
            .0
            .push(format!("{place}: truncate needs a max_length to cut to"));
    }
    match (obj.precision, obj.scale) {
        (Some(p), Some(s)) if p >= 1 && s <= p && p <= 38 => {}
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => problems.0.push(format!(
            "{place}: give precision and scale together (digits in all, digits after the point)"
        )),
        (Some(p), Some(s)) => problems.0.push(format!(
            "{place}: precision {p} and scale {s}: need 1 ≤ precision ≤ 38 and scale ≤ precision"
        )),
    }
    let source = if let Some(p) = obj.path {
        match split_path(&p) {
            Some(segs) => Source::Path(segs),
            None => {
                problems.0.push(format!("{place}: `{p}` is not a path"));
                return None;
            }
        }
    } else if let Some(v) = obj.constant {
        Source::Const(v)
    } else {
        let t = obj.template.unwrap_or_default();
        let mut parts = Vec::new();
        let mut rest = t.as_str();
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                problems
                    .0
                    .push(format!("{place}: template has an unclosed `{{`"));
                return None;
            };
            let inner = &rest[open + 1..open + close];
            match split_path(inner) {
                Some(segs) => parts.push(Part::Path(segs)),
                None => {
                    problems
                        .0
                        .push(format!("{place}: `{{{inner}}}` is not a path"));
                    return None;
                }
            }
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Source::Template(parts)
    };
    Some(Expr {
        source,
        format: obj.format,
        max_length: obj.max_length,
        truncate: obj.truncate,
        precision: obj.precision,
        scale: obj.scale,
    })
}

/// The path a tenant-safe key starts with: the order id or the client's prefix. For items,
/// `order.` reaches the order.
fn key_scope(key: &Expr, line_scope: bool) -> Option<KeyScope> {
    let first = match &key.source {
        Source::Path(p) => p,
        Source::Template(parts) => match parts.first()? {
            Part::Path(p) => p,
            Part::Text(_) => return None,
        },
        Source::Const(_) => return None,
    };
    let path: Vec<&str> = first.iter().map(String::as_str).collect();
    let path = if line_scope {
        path.strip_prefix(&["order"][..])?
    } else {
        &path[..]
    };
    match path {
        ["id"] => Some(KeyScope::Order),
        ["client", "external_id_prefix"] if matches!(key.source, Source::Template(_)) => {
            Some(KeyScope::Client)
        }
        _ => None,
    }
}

/// Salesforce API names: a letter, then letters, digits and single underscores (`__c` custom
/// suffixes allowed).
fn valid_api_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 80
}

fn compile_object(
    place: &str,
    f: ObjectFile,
    default_write: WriteMode,
    problems: &mut Problems,
) -> Option<ObjectMapping> {
    let line_scope = place == "items";
    for (what, name) in [
        ("sobject", &f.sobject),
        ("external_id_field", &f.external_id_field),
    ] {
        if !valid_api_name(name) {
            problems.0.push(format!(
                "{place}.{what}: `{name}` is not a Salesforce API name"
            ));
        }
    }
    let key = compile_expr(&format!("{place}.key"), f.key, problems);
    let scope = key.as_ref().and_then(|k| key_scope(k, line_scope));
    if key.is_some() && scope.is_none() {
        let (id, prefix) = if line_scope {
            ("order.id", "order.client.external_id_prefix")
        } else {
            ("id", "client.external_id_prefix")
        };
        problems.0.push(format!(
            "{place}.key: must start with the order id (`{id}`) or, as a template, with the API client's prefix (`{{{prefix}}}…`), so that two API clients' records can never share an external id"
        ));
    }
    if key.as_ref().is_some_and(|k| k.truncate) {
        problems.0.push(format!(
            "{place}.key: a key is never cut (two cut keys could be equal): drop truncate"
        ));
    }
    let mut fields = Vec::with_capacity(f.fields.len());
    for (name, e) in f.fields {
        if !valid_api_name(&name) {
            problems.0.push(format!(
                "{place}.fields: `{name}` is not a Salesforce API name"
            ));
            continue;
        }
        if name.eq_ignore_ascii_case(&f.external_id_field) {
            problems.0.push(format!(
                "{place}.fields.{name}: the external id field is set from `key`"
            ));
            continue;
        }
        if let Some(e) = compile_expr(&format!("{place}.fields.{name}"), e, problems) {
            fields.push((name, e));
        }
    }
    let mut computed = Vec::with_capacity(f.computed.len());
    for (name, e) in f.computed {
        if !valid_api_name(&name) {
            problems.0.push(format!(
                "{place}.computed: `{name}` is not a Salesforce API name"
            ));
            continue;
        }
        if fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            problems.0.push(format!(
                "{place}.computed.{name}: also in `fields`; a computed field is not written"
            ));
            continue;
        }
        if let Some(e) = compile_expr(&format!("{place}.computed.{name}"), e, problems) {
            computed.push((name, e));
        }
    }
    Some(ObjectMapping {
        sobject: f.sobject,
        external_id_field: f.external_id_field,
        write: f.write.unwrap_or(default_write),
        key: key?,
        key_scope: scope?,
        fields,
        computed,
    })
}

/// A mapped field (or the external id field) named like one the worker sets (`what`: the
/// setting naming it) is refused: it would be written twice.
fn set_by_the_worker(
    place: &str,
    object: &ObjectMapping,
    set: &[(&str, Option<&str>)],
    problems: &mut Problems,
) {
    for (what, name) in set {
        let Some(name) = name else { continue };
        if name.eq_ignore_ascii_case(&object.external_id_field) {
            problems.0.push(format!(
                "{place}.{what}: `{name}` is the external id field, which is set from `key`"
            ));
        } else if object
            .fields
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            problems.0.push(format!(
                "{place}.fields.{name}: set by the worker from `{place}.{what}`; leave it out of `fields`"
            ));
        }
    }
}

fn unexpected(place: &str, what: &str, present: bool, problems: &mut Problems) {
    if present {
        problems.0.push(format!("{place}.{what}: not allowed here"));
    }
}

pub(crate) fn compile(file: MappingFile, problems: &mut Problems) -> Option<Mapping> {
    let MappingFile {
        pricebook,
        account,
        order,
        items,
    } = file;
    if let Some(ref name) = pricebook
        && name.trim().is_empty()
    {
        problems
            .0
            .push("pricebook: give a price book name, or null for the standard one".into());
    }

    let account_relationship = order.account_relationship.clone();
    let pricebook_field = order.pricebook_field.clone();
    unexpected(
        "order",
        "order_relationship",
        order.order_relationship.is_some(),
        problems,
    );
    unexpected(
        "order",
        "pricebook_entry_field",
        order.pricebook_entry_field.is_some(),
        problems,
    );
    let order_object = compile_object("order", order, WriteMode::Create, problems);

    let account = match (account, account_relationship) {
        (Some(a), Some(rel)) => {
            for (what, present) in [
                ("account_relationship", a.account_relationship.is_some()),
                ("pricebook_field", a.pricebook_field.is_some()),
                ("order_relationship", a.order_relationship.is_some()),
                ("pricebook_entry_field", a.pricebook_entry_field.is_some()),
            ] {
                unexpected("account", what, present, problems);
            }
            if !valid_api_name(&rel) {
                problems.0.push(format!(
                    "order.account_relationship: `{rel}` is not a relationship name"
                ));
            }
            compile_object("account", a, WriteMode::Upsert, problems).map(|object| AccountMapping {
                object,
                relationship: rel,
            })
        }
        (Some(_), None) => {
            problems.0.push(
                "order.account_relationship: needed when `account` is mapped (e.g. \"Account\")"
                    .into(),
            );
            None
        }
        (None, Some(_)) => {
            problems
                .0
                .push("order.account_relationship: there is no `account` mapping".into());
            None
        }
        (None, None) => None,
    };

    let items = match items {
        Some(i) => {
            unexpected(
                "items",
                "account_relationship",
                i.account_relationship.is_some(),
                problems,
            );
            unexpected(
                "items",
                "pricebook_field",
                i.pricebook_field.is_some(),
                problems,
            );
            let rel = i.order_relationship.clone();
            let entry = i.pricebook_entry_field.clone();
            match rel {
                None => {
                    problems.0.push(
                        "items.order_relationship: needed (the relationship to the order, e.g. \"Order\")"
                            .into(),
                    );
                    None
                }
                Some(rel) => {
                    if entry.is_some() && pricebook_field.is_none() {
                        problems.0.push(
                            "items.pricebook_entry_field needs order.pricebook_field: Salesforce only takes price book entries on an order with a price book"
                                .into(),
                        );
                    }
                    compile_object("items", i, WriteMode::Create, problems).map(|object| {
                        ItemsMapping {
                            object,
                            order_relationship: rel,
                            pricebook_entry_field: entry,
                        }
                    })
                }
            }
        }
        None => None,
    };

    // Fields the worker sets itself (references, price book ids), after the mapped ones: a
    // mapped field of the same name would be written twice, one value silently winning.
    if let Some(o) = &order_object {
        set_by_the_worker(
            "order",
            o,
            &[
                (
                    "account_relationship",
                    account.as_ref().map(|a| a.relationship.as_str()),
                ),
                ("pricebook_field", pricebook_field.as_deref()),
            ],
            problems,
        );
    }
    if let Some(i) = &items {
        set_by_the_worker(
            "items",
            &i.object,
            &[
                ("order_relationship", Some(i.order_relationship.as_str())),
                ("pricebook_entry_field", i.pricebook_entry_field.as_deref()),
            ],
            problems,
        );
    }

    Some(Mapping {
        pricebook,
        account,
        order: OrderMapping {
            object: order_object?,
            pricebook_field,
        },
        items,
    })
}
