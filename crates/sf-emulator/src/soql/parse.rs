//! SOQL text to a [`Query`]: a tokenizer and a recursive-descent parser for the subset the
//! emulator answers. Anything outside it is `MALFORMED_QUERY`, so a client learns at once that
//! the emulator does not support a construct rather than getting a wrong answer.
//!
//! Names are not checked here (that needs the schema, see `run`).

use crate::reply::RecordError;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

pub(super) fn malformed(msg: impl Into<String>) -> RecordError {
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
pub(super) enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// Date or datetime literal, compared as text (ISO order).
    Date(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
}

#[derive(Debug, Clone)]
pub(super) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, Op, Lit),
    In(String, Vec<Lit>, bool),
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    pub(super) fields: Vec<String>,
    pub(super) count_only: bool,
    pub(super) object: String,
    pub(super) filter: Option<Expr>,
    pub(super) order: Vec<(String, bool, Option<bool>)>,
    pub(super) limit: Option<usize>,
    pub(super) offset: Option<usize>,
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
