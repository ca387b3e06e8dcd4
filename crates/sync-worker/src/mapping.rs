//! The mapping from an order to Salesforce records: which objects, which fields, from which
//! parts of the order. A JSON file (`WORKER_MAPPING_FILE`) or the built-in default
//! ([`DEFAULT_MAPPING`]: Account + Order + OrderItem), checked when the worker starts.
//!
//! ```json
//! {
//!   "pricebook": null,                       // price book name; null = the org's standard one
//!   "account": {"sobject": "Account", "external_id_field": "External_Id__c",
//!               "key": "customer.external_id", "fields": {"Name": "customer.name"}},
//!   "order":   {"sobject": "Order", "external_id_field": "External_Id__c", "key": "id",
//!               "account_relationship": "Account", "pricebook_field": "Pricebook2Id",
//!               "fields": {"EffectiveDate": {"path": "created_at", "format": "date"},
//!                          "Status": {"const": "Draft"}}},
//!   "items":   {"sobject": "OrderItem", "external_id_field": "External_Id__c",
//!               "key": {"template": "{order.id}-{line_number}"}, "order_relationship": "Order",
//!               "pricebook_entry_field": "PricebookEntryId",
//!               "fields": {"Quantity": "quantity", "UnitPrice": {"path": "unit_price", "format": "number"}}}
//! }
//! ```
//!
//! A field's value is one of:
//! - `"customer.name"`: a path into the order (as the API returns it). In `items`, paths name the
//!   line (`sku`, `quantity`, `unit_price`, `line_number`…) and `order.<path>` reaches the order.
//! - `{"path": "…", "format": "date|datetime|number|integer|string", "max_length": N}`.
//! - `{"const": <any JSON value>}`.
//! - `{"template": "Order {client_ref} for {customer.name}", "max_length": N}`.
//!
//! A path whose value is absent (`null`, e.g. an order without `notes`) leaves the field out of
//! the record, so an upsert never blanks a field someone set in Salesforce. `account` and `items`
//! are optional: a mapping may write one record per order to any object, custom ones included
//! (e.g. a `Case` with `Division__c`), with only `order` present.

use std::collections::BTreeMap;
use std::path::Path;

use orderbridge_domain::{NewOrder, NewOrderRequest, Order, SyncError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The built-in mapping: Account by customer external id, Order by order id (Draft, in the
/// price book), OrderItem per line by `<order id>-<line number>`. Lengths follow the standard
/// fields' limits so a long city name is cut instead of failing the order with STRING_TOO_LONG.
pub const DEFAULT_MAPPING: &str = include_str!("default_mapping.json");

/// What is wrong with a mapping; every message names the place in the file.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read mapping file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {origin}: {path}: {message}")]
    Parse {
        origin: String,
        path: String,
        message: String,
    },
    #[error("mapping {origin}: {problems}")]
    Invalid { origin: String, problems: Problems },
}

/// The list of problems found by [`Mapping::check`] or the Salesforce check.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s): {}", self.0.len(), self.0.join("; "))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
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
}

/// How records of an object are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert; a record that already has this external id (`DUPLICATE_VALUE` on the external id
    /// field) is the one written before, and counts as success without being changed. For
    /// records that are immutable on our side and owned by Salesforce users once written (an
    /// order may be activated, its items are then locked): a redelivered or stale event can
    /// never overwrite what happened in Salesforce since.
    Create,
    /// Insert or update by external id: for master data that should follow our latest values
    /// (the customer's account).
    Upsert,
}

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `YYYY-MM-DD` from an RFC 3339 time.
    Date,
    /// The RFC 3339 time as is.
    Datetime,
    /// A JSON number from a number or a decimal string (prices travel as exact strings).
    Number,
    /// A JSON integer.
    Integer,
    /// A string, whatever the source.
    String,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Path(Vec<String>),
    Const(Value),
    Template(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Path(Vec<String>),
}

/// One field's value rule, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: Source,
    format: Option<Format>,
    max_length: Option<usize>,
}

/// One Salesforce object of the mapping.
#[derive(Debug, Clone)]
pub struct ObjectMapping {
    pub sobject: String,
    pub external_id_field: String,
    pub write: WriteMode,
    key: Expr,
    fields: Vec<(String, Expr)>,
}

/// The account object and how the order points at it.
#[derive(Debug, Clone)]
pub struct AccountMapping {
    pub object: ObjectMapping,
    /// Relationship name on the order's object, e.g. `Account`.
    pub relationship: String,
}

/// The order (root) object.
#[derive(Debug, Clone)]
pub struct OrderMapping {
    pub object: ObjectMapping,
    pub pricebook_field: Option<String>,
}

/// The per-line object and how it points at the order.
#[derive(Debug, Clone)]
pub struct ItemsMapping {
    pub object: ObjectMapping,
    /// Relationship name on the item's object, e.g. `Order`.
    pub order_relationship: String,
    pub pricebook_entry_field: Option<String>,
}

/// A checked mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Price book by name; `None`: the org's standard price book.
    pub pricebook: Option<String>,
    pub account: Option<AccountMapping>,
    pub order: OrderMapping,
    pub items: Option<ItemsMapping>,
}

/// Where the values of one record come from.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub order: &'a Value,
    /// Set for `items`: the line; paths resolve here unless they start with `order.`.
    pub line: Option<&'a Value>,
}

impl Mapping {
    /// Reads `path`, or the built-in default when `None`, and checks it against the order model.
    pub fn load(path: Option<&Path>) -> Result<Self, MappingError> {
        match path {
            None => Self::parse(DEFAULT_MAPPING, "(built-in default)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| MappingError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Parses and checks a mapping document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, MappingError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: MappingFile =
            serde_path_to_error::deserialize(de).map_err(|e| MappingError::Parse {
                origin: origin.to_owned(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        let mut problems = Problems::default();
        let mapping = compile(file, &mut problems);
        if problems.0.is_empty()
            && let Some(mapping) = mapping
        {
            mapping.check_against_model(&mut problems);
            if problems.0.is_empty() {
                return Ok(mapping);
            }
        }
        Err(MappingError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// Every path must exist in the order model (checked on a fully populated sample order), so
    /// a typo fails at start-up instead of silently writing nothing.
    fn check_against_model(&self, problems: &mut Problems) {
        let order = sample_order();
        let line = order
            .get("lines")
            .and_then(|l| l.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        let mut check = |place: &str, expr: &Expr, line: Option<&Value>| {
            for path in expr.paths() {
                let scope = Scope {
                    order: &order,
                    line,
                };
                if scope.resolve(path).is_none() {
                    problems.0.push(format!(
                        "{place}: `{}` is not a field of the {}",
                        path.join("."),
                        if line.is_some() && path.first().map(String::as_str) != Some("order") {
                            "order line (use `order.<path>` for the order's fields)"
                        } else {
                            "order"
                        }
                    ));
                }
            }
        };
        if let Some(a) = &self.account {
            a.object
                .each_expr(|place, e| check(&format!("account.{place}"), e, None));
        }
        self.order
            .object
            .each_expr(|place, e| check(&format!("order.{place}"), e, None));
        if let Some(i) = &self.items {
            i.object
                .each_expr(|place, e| check(&format!("items.{place}"), e, Some(&line)));
        }
    }
}

impl ObjectMapping {
    fn each_expr(&self, mut f: impl FnMut(&str, &Expr)) {
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
    fn paths(&self) -> Vec<&Vec<String>> {
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
            Some(Format::Date) => Value::String(as_text(&raw).chars().take(10).collect()),
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
                Value::String(s.chars().take(max).collect())
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
    })
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
    Some(ObjectMapping {
        sobject: f.sobject,
        external_id_field: f.external_id_field,
        write: f.write.unwrap_or(default_write),
        key: key?,
        fields,
    })
}

fn unexpected(place: &str, what: &str, present: bool, problems: &mut Problems) {
    if present {
        problems.0.push(format!("{place}.{what}: not allowed here"));
    }
}

fn compile(file: MappingFile, problems: &mut Problems) -> Option<Mapping> {
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

/// A fully populated order (every optional field set), as JSON: what mapping paths are checked
/// against, made from the domain model so the check follows the model.
fn sample_order() -> Value {
    let req: Result<NewOrderRequest, _> = serde_json::from_value(json!({
        "client_ref": "PO-1",
        "customer": {"external_id": "C-1", "name": "n", "email": "e@x.example", "phone": "1"},
        "billing_address": {"line1": "a", "line2": "b", "city": "c", "postal_code": "1", "region": "r", "country": "DE"},
        "shipping_address": {"line1": "a", "line2": "b", "city": "c", "postal_code": "1", "region": "r", "country": "DE"},
        "currency": "EUR",
        "lines": [{"sku": "S", "name": "n", "quantity": 1, "unit_price": "1.00"}],
        "notes": "n"
    }));
    let Some(order) = req
        .ok()
        .and_then(|r| NewOrder::parse(r).ok())
        .map(|o| o.into_order(uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH))
    else {
        return Value::Null;
    };
    let mut order: Order = order;
    order.sync.salesforce_id = Some("x".into());
    order.sync.last_error = Some(SyncError {
        code: "x".into(),
        message: "x".into(),
    });
    order.sync.synced_at = Some(chrono::DateTime::UNIX_EPOCH);
    serde_json::to_value(order).unwrap_or(Value::Null)
}

/// Checks the mapping against the org: objects, fields, external ids and relationships exist
/// and can be written as configured. Returns the problems found (empty: fine).
pub async fn check_against_salesforce(
    client: &orderbridge_salesforce::Client,
    mapping: &Mapping,
) -> Result<Problems, orderbridge_salesforce::Error> {
    let mut problems = Problems::default();
    // (place in the file, object, [(relationship name, object it must point to)])
    type Check<'a> = (&'a str, &'a ObjectMapping, Vec<(&'a str, &'a str)>);
    let mut objects: Vec<Check<'_>> = Vec::new();
    let mut order_rels = Vec::new();
    if let Some(a) = &mapping.account {
        order_rels.push((a.relationship.as_str(), a.object.sobject.as_str()));
    }
    if let Some(a) = &mapping.account {
        objects.push(("account", &a.object, Vec::new()));
    }
    objects.push(("order", &mapping.order.object, order_rels));
    if let Some(i) = &mapping.items {
        objects.push((
            "items",
            &i.object,
            vec![(
                i.order_relationship.as_str(),
                mapping.order.object.sobject.as_str(),
            )],
        ));
    }
    for (place, object, relationships) in objects {
        let describe = match client.describe(&object.sobject).await {
            Ok(d) => d,
            Err(e) if e.class() == orderbridge_salesforce::ErrorClass::Permanent => {
                problems.0.push(format!(
                    "{place}.sobject: {} cannot be described: {e}",
                    object.sobject
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        let sobject = &object.sobject;
        match describe.field(&object.external_id_field) {
            // `create` relies on Salesforce refusing a second record with the same key
            // (DUPLICATE_VALUE means "written before"); without Unique, a redelivery would
            // write a duplicate.
            Some(f) if f.external_id && object.write == WriteMode::Create && !f.unique => {
                problems.0.push(format!(
                    "{place}.external_id_field: {sobject}.{} must be Unique for \"write\": \"create\" (mark it Unique in Salesforce), or redeliveries would create duplicates",
                    object.external_id_field
                ))
            }
            Some(f) if f.external_id || f.name == "Id" => {}
            Some(_) => problems.0.push(format!(
                "{place}.external_id_field: {sobject}.{} is not an External ID field",
                object.external_id_field
            )),
            None => problems.0.push(format!(
                "{place}.external_id_field: {sobject} has no field {}",
                object.external_id_field
            )),
        }
        let mut writable = object
            .fields
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>();
        if place == "order"
            && let Some(f) = &mapping.order.pricebook_field
        {
            writable.push(f);
        }
        if place == "items"
            && let Some(f) = mapping
                .items
                .as_ref()
                .and_then(|i| i.pricebook_entry_field.as_deref())
        {
            writable.push(f);
        }
        for name in writable {
            match describe.field(name) {
                None => problems
                    .0
                    .push(format!("{place}.fields: {sobject} has no field {name}")),
                Some(f) if !f.createable => problems.0.push(format!(
                    "{place}.fields: {sobject}.{name} cannot be set on create"
                )),
                Some(f) if object.write == WriteMode::Upsert && !f.updateable => {
                    problems.0.push(format!(
                        "{place}.fields: {sobject}.{name} cannot be updated, so an upsert of an existing record would fail; drop it or use \"write\": \"create\""
                    ))
                }
                Some(_) => {}
            }
        }
        for (rel, target) in relationships {
            match describe.relationship(rel) {
                Some(f)
                    if f.reference_to
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(target)) => {}
                Some(f) => problems.0.push(format!(
                    "{place}: relationship {sobject}.{rel} points to {:?}, not {target}",
                    f.reference_to
                )),
                None => problems.0.push(format!(
                    "{place}: {sobject} has no relationship named {rel}"
                )),
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_mapping_is_valid() {
        let m = Mapping::load(None).unwrap();
        assert_eq!(m.order.object.sobject, "Order");
        assert_eq!(m.account.as_ref().unwrap().relationship, "Account");
        assert_eq!(
            m.items.as_ref().unwrap().pricebook_entry_field.as_deref(),
            Some("PricebookEntryId")
        );
        assert!(!sample_order().is_null());
    }

    #[test]
    fn evaluates_paths_formats_templates_and_lengths() {
        let order = json!({"id": "o1", "created_at": "2026-11-24T10:00:00Z", "notes": null,
            "customer": {"name": "Acme"}, "lines": [{"line_number": 2, "unit_price": "12.50"}]});
        let line = json!({"line_number": 2, "unit_price": "12.50", "quantity": 3});
        let m = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Subject": {"template": "Order {client_ref} / {customer.name}", "max_length": 12},
                           "Origin": {"const": "Web"}, "Description": "notes",
                           "Day__c": {"path": "created_at", "format": "date"}}},
                "items": {"sobject": "Line__c", "external_id_field": "Ext__c",
                "key": {"template": "{order.id}-{line_number}"}, "order_relationship": "Case__r",
                "fields": {"Price__c": {"path": "unit_price", "format": "number"}, "Qty__c": "quantity"}}}"#,
            "test",
        )
        .unwrap();
        let scope = Scope {
            order: &order,
            line: None,
        };
        let rec = m.order.object.record(scope, "o1");
        assert_eq!(rec["Subject"], json!("Order  / Acm"));
        assert_eq!(rec["Origin"], json!("Web"));
        assert_eq!(rec["Day__c"], json!("2026-11-24"));
        assert_eq!(rec["Ext__c"], json!("o1"));
        assert!(
            !rec.contains_key("Description"),
            "null leaves the field out"
        );
        let items = m.items.unwrap();
        let scope = Scope {
            order: &order,
            line: Some(&line),
        };
        assert_eq!(items.object.key(scope).unwrap(), "o1-2");
        let rec = items.object.record(scope, "o1-2");
        assert_eq!(rec["Price__c"], json!(12.5));
        assert_eq!(rec["Qty__c"], json!(3));
    }

    #[test]
    fn reports_every_problem_with_its_place() {
        let err = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Bad Name": "id", "Desc": "custmer.name", "Two": {"path": "id", "const": 1}}},
                "account": {"sobject": "Account", "external_id_field": "Ext__c", "key": "customer.external_id"}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`Bad Name` is not a Salesforce API name"),
            "{err}"
        );
        assert!(err.contains("order.fields.Two: give exactly one"), "{err}");
        assert!(err.contains("order.account_relationship: needed"), "{err}");
        assert!(err.starts_with("mapping m.json"), "{err}");

        let err = Mapping::parse(
            r#"{"order": {"sobject": "Order", "external_id_field": "Ext__c", "key": "id",
                "fields": {"Desc": "custmer.name"}}}"#,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("order.fields.Desc: `custmer.name` is not a field of the order"),
            "{err}"
        );

        let err = Mapping::parse(r#"{"order": {"sobject": "Order", "key": "id"}}"#, "m.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("external_id_field"), "{err}");
    }
}
