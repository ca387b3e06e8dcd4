//! A useful SOQL subset: `SELECT` fields (including parent fields like `Account.Name`, and
//! `COUNT()`) `FROM` object `WHERE` conditions (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `LIKE`,
//! `IN`, `NOT IN`, `AND`, `OR`, `NOT`, parentheses) `ORDER BY` fields `ASC|DESC`
//! `NULLS FIRST|LAST`, `LIMIT`, `OFFSET`. String comparisons are case-insensitive, as in SOQL.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use crate::reply::RecordError;
use crate::schema::ObjectDef;
use crate::store::{Record, Store, text_of};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn malformed(msg: impl Into<String>) -> RecordError {
    RecordError::new("MALFORMED_QUERY", msg)
}

fn tokenize(q: &str) -> Result<Vec<Tok>, RecordError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(malformed("unterminated string literal")),
                    Some('\\') => {
                        let esc = chars
                            .get(i + 1)
                            .copied()
                            .ok_or_else(|| malformed("bad escape"))?;
                        s.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || ":.-+".contains(chars[i]))
            {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let sym = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let one = match c {
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                _ => return Err(malformed(format!("unexpected character '{c}'"))),
            };
            out.push(Tok::Sym(one));
            i += 1;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// Date or datetime literal, compared as text (ISO order).
    Date(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, Op, Lit),
    In(String, Vec<Lit>, bool),
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    fields: Vec<String>,
    count_only: bool,
    object: String,
    filter: Option<Expr>,
    order: Vec<(String, bool, Option<bool>)>,
    limit: Option<usize>,
    offset: Option<usize>,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

/// Deepest nesting of parentheses / NOT accepted, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn kw(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(word))
    }
    fn eat_kw(&mut self, word: &str) -> bool {
        if self.kw(word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_kw(&mut self, word: &str) -> Result<(), RecordError> {
        if self.eat_kw(word) {
            Ok(())
        } else {
            Err(malformed(format!(
                "expecting keyword {word}, found {}",
                self.describe()
            )))
        }
    }
    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn describe(&self) -> String {
        match self.peek() {
            None => "end of query".into(),
            Some(Tok::Ident(s) | Tok::Num(s)) => format!("'{s}'"),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Sym(s)) => format!("'{s}'"),
        }
    }
    fn ident(&mut self) -> Result<String, RecordError> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            _ => {
                self.pos -= 1;
                Err(malformed(format!("unexpected token: {}", self.describe())))
            }
        }
    }
    fn number(&mut self) -> Result<usize, RecordError> {
        match self.next() {
            Some(Tok::Num(s)) => s
                .parse()
                .map_err(|_| malformed(format!("invalid number {s}"))),
            _ => Err(malformed("expecting a number")),
        }
    }

    fn literal(&mut self) -> Result<Lit, RecordError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(s)) => {
                if s.contains('-') && s.len() >= 10 && !s.starts_with('-') {
                    Ok(Lit::Date(s))
                } else {
                    s.parse()
                        .map(Lit::Num)
                        .map_err(|_| malformed(format!("invalid literal {s}")))
                }
            }
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Ok(Lit::Null),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Lit::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Lit::Bool(false)),
            other => Err(malformed(format!("unexpected value {other:?}"))),
        }
    }

    fn or_expr(&mut self) -> Result<Expr, RecordError> {
        let mut left = self.and_expr()?;
        while self.eat_kw("OR") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn and_expr(&mut self) -> Result<Expr, RecordError> {
        let mut left = self.unary()?;
        while self.eat_kw("AND") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Expr, RecordError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(malformed("the WHERE clause is nested too deeply"));
        }
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }
    fn unary_inner(&mut self) -> Result<Expr, RecordError> {
        if self.eat_kw("NOT") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.sym("(") {
            let e = self.or_expr()?;
            if !self.sym(")") {
                return Err(malformed("expecting ')'"));
            }
            return Ok(e);
        }
        let field = self.ident()?;
        if self.eat_kw("NOT") {
            self.expect_kw("IN")?;
            return Ok(Expr::In(field, self.list()?, true));
        }
        if self.eat_kw("IN") {
            return Ok(Expr::In(field, self.list()?, false));
        }
        let op = if self.eat_kw("LIKE") {
            Op::Like
        } else {
            match self.next() {
                Some(Tok::Sym("=")) => Op::Eq,
                Some(Tok::Sym("!=")) => Op::Ne,
                Some(Tok::Sym("<")) => Op::Lt,
                Some(Tok::Sym("<=")) => Op::Le,
                Some(Tok::Sym(">")) => Op::Gt,
                Some(Tok::Sym(">=")) => Op::Ge,
                _ => {
                    self.pos -= 1;
                    return Err(malformed(format!("unexpected token: {}", self.describe())));
                }
            }
        };
        Ok(Expr::Cmp(field, op, self.literal()?))
    }
    fn list(&mut self) -> Result<Vec<Lit>, RecordError> {
        if !self.sym("(") {
            return Err(malformed("expecting '(' after IN"));
        }
        let mut items = vec![self.literal()?];
        while self.sym(",") {
            items.push(self.literal()?);
        }
        if !self.sym(")") {
            return Err(malformed("expecting ')' to close IN list"));
        }
        Ok(items)
    }
}

/// Parses a query.
pub fn parse(q: &str) -> Result<Query, RecordError> {
    let mut p = Parser {
        toks: tokenize(q)?,
        pos: 0,
        depth: 0,
    };
    p.expect_kw("SELECT")?;
    let mut fields = Vec::new();
    let mut count_only = false;
    loop {
        let f = p.ident()?;
        if f.eq_ignore_ascii_case("COUNT") && p.sym("(") {
            if !p.sym(")") {
                return Err(malformed("only COUNT() is supported"));
            }
            count_only = true;
        } else if p.sym("(") {
            return Err(malformed(format!(
                "function {f}() is not supported by the emulator"
            )));
        } else if f.eq_ignore_ascii_case("FROM") {
            return Err(malformed("unexpected token: 'FROM'"));
        } else {
            fields.push(f);
        }
        if !p.sym(",") {
            break;
        }
    }
    p.expect_kw("FROM")?;
    let object = p.ident()?;
    let filter = if p.eat_kw("WHERE") {
        Some(p.or_expr()?)
    } else {
        None
    };
    let mut order = Vec::new();
    if p.eat_kw("ORDER") {
        p.expect_kw("BY")?;
        loop {
            let f = p.ident()?;
            let asc = if p.eat_kw("DESC") {
                false
            } else {
                p.eat_kw("ASC");
                true
            };
            let nulls_first = if p.eat_kw("NULLS") {
                if p.eat_kw("FIRST") {
                    Some(true)
                } else {
                    p.expect_kw("LAST")?;
                    Some(false)
                }
            } else {
                None
            };
            order.push((f, asc, nulls_first));
            if !p.sym(",") {
                break;
            }
        }
    }
    let limit = if p.eat_kw("LIMIT") {
        Some(p.number()?)
    } else {
        None
    };
    let offset = if p.eat_kw("OFFSET") {
        Some(p.number()?)
    } else {
        None
    };
    if p.peek().is_some() {
        return Err(malformed(format!("unexpected token: {}", p.describe())));
    }
    Ok(Query {
        fields,
        count_only,
        object,
        filter,
        order,
        limit,
        offset,
    })
}

/// A field path resolved against the schema: lookups to follow, then the final field.
struct Path {
    /// (lookup field name, relationship name) per hop.
    hops: Vec<(String, String)>,
    field: String,
}

fn resolve_path(store: &Store, def: &ObjectDef, path: &str) -> Result<Path, RecordError> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = def;
    let mut hops = Vec::new();
    let (last, rels) = parts.split_last().ok_or_else(|| malformed("empty field"))?;
    let mut rels = rels;
    // `Account.Name` may also be written with the object name prefix `Order.Account.Name`.
    if rels
        .first()
        .is_some_and(|r| r.eq_ignore_ascii_case(&def.name))
        && def.relationship(rels[0]).is_none()
    {
        rels = &rels[1..];
    }
    // SOQL follows at most five levels of parent relationships.
    if rels.len() > 5 {
        return Err(malformed(format!(
            "{path}: at most 5 levels of parent relationships"
        )));
    }
    for rel in rels {
        let f = current
            .relationship(rel)
            .ok_or_else(|| no_column(path, &current.name))?;
        let target = f.reference_to.as_deref().unwrap_or_default();
        let next = store
            .schema()
            .object(target)
            .ok_or_else(|| no_column(path, &current.name))?;
        hops.push((
            f.name.clone(),
            f.relationship_name.clone().unwrap_or_default(),
        ));
        current = next;
    }
    let f = current
        .field(last)
        .ok_or_else(|| no_column(path, &current.name))?;
    Ok(Path {
        hops,
        field: f.name.clone(),
    })
}

fn no_column(path: &str, obj: &str) -> RecordError {
    RecordError::new(
        "INVALID_FIELD",
        format!(
            "No such column '{path}' on entity '{obj}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

fn value_at<'a>(store: &'a Store, rec: &'a Record, path: &Path) -> Option<&'a Value> {
    let mut current = rec;
    for (lookup, _) in &path.hops {
        let id = current.get(lookup)?.as_str()?;
        current = store.get(None, id).ok()?.1;
    }
    current.get(&path.field)
}

fn compare(v: Option<&Value>, lit: &Lit) -> Option<Ordering> {
    let v = v.filter(|v| !v.is_null());
    match (v, lit) {
        (None, Lit::Null) => Some(Ordering::Equal),
        (None, _) | (Some(_), Lit::Null) => None,
        (Some(v), Lit::Num(n)) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|x| x.partial_cmp(n)),
        (Some(v), Lit::Bool(b)) => v.as_bool().map(|x| x.cmp(b)),
        (Some(v), Lit::Str(s) | Lit::Date(s)) => {
            let x = text_of(v)?;
            Some(x.to_lowercase().cmp(&s.to_lowercase()))
        }
    }
}

fn like(v: Option<&Value>, pattern: &Lit) -> bool {
    let (Some(text), Lit::Str(p)) = (v.and_then(text_of), pattern) else {
        return false;
    };
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let p: Vec<char> = p.to_lowercase().chars().collect();
    // Dynamic programming over (pattern prefix, text prefix): O(|p|·|t|), no backtracking blow-up
    // on patterns like '%a%a%a%b'.
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for pc in &p {
        let mut next = vec![false; t.len() + 1];
        match pc {
            '%' => {
                let mut seen = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    seen |= row[j];
                    *slot = seen;
                }
            }
            c => {
                for j in 1..=t.len() {
                    next[j] = row[j - 1] && (*c == '_' || t[j - 1] == *c);
                }
            }
        }
        row = next;
    }
    row[t.len()]
}

fn eval(store: &Store, def: &ObjectDef, rec: &Record, e: &Expr) -> Result<bool, RecordError> {
    Ok(match e {
        Expr::And(a, b) => eval(store, def, rec, a)? && eval(store, def, rec, b)?,
        Expr::Or(a, b) => eval(store, def, rec, a)? || eval(store, def, rec, b)?,
        Expr::Not(a) => !eval(store, def, rec, a)?,
        Expr::Cmp(f, op, lit) => {
            let path = resolve_path(store, def, f)?;
            let v = value_at(store, rec, &path);
            match op {
                Op::Like => like(v, lit),
                Op::Eq => compare(v, lit) == Some(Ordering::Equal),
                Op::Ne => compare(v, lit) != Some(Ordering::Equal),
                Op::Lt => compare(v, lit) == Some(Ordering::Less),
                Op::Le => matches!(compare(v, lit), Some(Ordering::Less | Ordering::Equal)),
                Op::Gt => compare(v, lit) == Some(Ordering::Greater),
                Op::Ge => matches!(compare(v, lit), Some(Ordering::Greater | Ordering::Equal)),
            }
        }
        Expr::In(f, list, negated) => {
            let path = resolve_path(store, def, f)?;
            let v = value_at(store, rec, &path);
            let found = list.iter().any(|l| compare(v, l) == Some(Ordering::Equal));
            found != *negated
        }
    })
}

/// Result of running a query: total count and the rendered records (all of them; the caller
/// pages).
pub struct Outcome {
    pub total: usize,
    pub records: Vec<Value>,
}

/// Runs `q` against the store. `base` is `/services/data/vNN.N` for record URLs.
pub fn run(store: &Store, q: &str, base: &str) -> Result<Outcome, RecordError> {
    let query = parse(q)?;
    let def = store.schema().object(&query.object).ok_or_else(|| {
        RecordError::new(
            "INVALID_TYPE",
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                query.object
            ),
        )
    })?;
    let select: Vec<(String, Path)> = query
        .fields
        .iter()
        .map(|f| resolve_path(store, def, f).map(|p| (f.clone(), p)))
        .collect::<Result<_, _>>()?;
    let order: Vec<(Path, bool, Option<bool>)> = query
        .order
        .iter()
        .map(|(f, asc, nf)| resolve_path(store, def, f).map(|p| (p, *asc, *nf)))
        .collect::<Result<_, _>>()?;
    if let Some(filter) = &query.filter {
        // Validate field names even when there are no records to evaluate them on.
        validate_expr(store, def, filter)?;
    }
    let mut matched: Vec<&Record> = Vec::new();
    for (_, rec) in store.records(&def.name) {
        let keep = match &query.filter {
            Some(f) => eval(store, def, rec, f)?,
            None => true,
        };
        if keep {
            matched.push(rec);
        }
    }
    if !order.is_empty() {
        matched.sort_by(|a, b| {
            for (path, asc, nulls_first) in &order {
                let va = value_at(store, a, path).filter(|v| !v.is_null());
                let vb = value_at(store, b, path).filter(|v| !v.is_null());
                // SOQL default: NULLS FIRST for ASC, NULLS LAST for DESC.
                let nf = nulls_first.unwrap_or(*asc);
                let ord = match (va, vb) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => {
                        if nf {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (Some(_), None) => {
                        if nf {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (Some(x), Some(y)) => {
                        let o = match (x.as_f64(), y.as_f64()) {
                            (Some(p), Some(q)) => p.partial_cmp(&q).unwrap_or(Ordering::Equal),
                            _ => text_of(x)
                                .unwrap_or_default()
                                .to_lowercase()
                                .cmp(&text_of(y).unwrap_or_default().to_lowercase()),
                        };
                        if *asc { o } else { o.reverse() }
                    }
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
    }
    let offset = query.offset.unwrap_or(0);
    let limited: Vec<&Record> = matched
        .into_iter()
        .skip(offset)
        .take(query.limit.unwrap_or(usize::MAX))
        .collect();
    if query.count_only {
        return Ok(Outcome {
            total: limited.len(),
            records: Vec::new(),
        });
    }
    let records = limited
        .iter()
        .map(|rec| render_row(store, def, rec, &select, base))
        .collect();
    Ok(Outcome {
        total: limited.len(),
        records,
    })
}

fn validate_expr(store: &Store, def: &ObjectDef, e: &Expr) -> Result<(), RecordError> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            validate_expr(store, def, a)?;
            validate_expr(store, def, b)
        }
        Expr::Not(a) => validate_expr(store, def, a),
        Expr::Cmp(f, _, _) | Expr::In(f, _, _) => resolve_path(store, def, f).map(|_| ()),
    }
}

fn attributes(obj: &str, id: &str, base: &str) -> Value {
    json!({"type": obj, "url": format!("{base}/sobjects/{obj}/{id}")})
}

/// Inserts a parent field nested under its relationship name:
/// `{"Account": {"attributes": …, "Name": "Acme"}}`; a missing parent is `null`.
fn insert_path(
    slot: &mut Map<String, Value>,
    store: &Store,
    rec: &Record,
    hops: &[(String, String)],
    field: &str,
    base: &str,
) {
    let Some(((lookup, rel), rest)) = hops.split_first() else {
        slot.insert(
            field.to_owned(),
            rec.get(field).cloned().unwrap_or(Value::Null),
        );
        return;
    };
    let parent = rec
        .get(lookup)
        .and_then(Value::as_str)
        .and_then(|pid| store.get(None, pid).ok());
    let entry = slot.entry(rel.clone()).or_insert_with(|| match parent {
        Some((pdef, prec)) => {
            let pid = prec.get("Id").and_then(Value::as_str).unwrap_or_default();
            let mut m = Map::new();
            m.insert("attributes".into(), attributes(&pdef.name, pid, base));
            Value::Object(m)
        }
        None => Value::Null,
    });
    if let (Value::Object(m), Some((_, prec))) = (entry, parent) {
        insert_path(m, store, prec, rest, field, base);
    }
}

fn render_row(
    store: &Store,
    def: &ObjectDef,
    rec: &Record,
    select: &[(String, Path)],
    base: &str,
) -> Value {
    let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(&def.name, id, base));
    for (_, path) in select {
        if path.hops.is_empty() {
            out.insert(
                path.field.clone(),
                rec.get(&path.field).cloned().unwrap_or(Value::Null),
            );
            continue;
        }
        insert_path(&mut out, store, rec, &path.hops, &path.field, base);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
