//! Label and field selectors, parsed with the same grammar as `k8s.io/apimachinery`.

use crate::resources::ResourceDef;
use crate::store::ObjKey;
use serde_json::Value;

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Default, Clone)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

#[derive(Debug, Clone)]
struct LabelReq {
    key: String,
    op: LabelOp,
}

#[derive(Debug, Clone)]
enum LabelOp {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

/// Characters that end an identifier in the selector lexer.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if let Some(rest) = self.rest.strip_prefix(token) {
            self.rest = rest;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> &'a str {
        self.skip_ws();
        let end = self.rest.find(is_special).unwrap_or(self.rest.len());
        let (ident, rest) = self.rest.split_at(end);
        self.rest = rest;
        ident
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.rest.is_empty()
    }

    /// `( v1, v2 )`: the value set of `in` / `notin`.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat("(") {
            return Err("expected '(' after set operator".into());
        }
        let mut values = Vec::new();
        loop {
            values.push(self.ident().to_string());
            if self.eat(")") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err("expected ',' or ')' in value set".into());
            }
        }
    }
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut lex = Lexer { rest: selector };
        let mut reqs = Vec::new();
        if lex.at_end() {
            return Ok(Self { reqs });
        }
        loop {
            let negated = lex.eat("!");
            let key = lex.ident();
            if key.is_empty() {
                return Err(format!("expected a label key in {selector:?}"));
            }
            let op = if negated {
                LabelOp::DoesNotExist
            } else if lex.at_end() || lex.rest.starts_with(',') {
                LabelOp::Exists
            } else if lex.eat("==") || lex.eat("=") {
                LabelOp::Equals(lex.ident().to_string())
            } else if lex.eat("!=") {
                LabelOp::NotEquals(lex.ident().to_string())
            } else if lex.eat(">") {
                LabelOp::GreaterThan(parse_int(lex.ident())?)
            } else if lex.eat("<") {
                LabelOp::LessThan(parse_int(lex.ident())?)
            } else {
                match lex.ident() {
                    "in" => LabelOp::In(lex.value_set()?),
                    "notin" => LabelOp::NotIn(lex.value_set()?),
                    other => return Err(format!("unexpected {other:?} after label key {key:?}")),
                }
            };
            reqs.push(LabelReq {
                key: key.to_string(),
                op,
            });
            if lex.at_end() {
                return Ok(Self { reqs });
            }
            if !lex.eat(",") {
                return Err(format!("expected ',' in label selector {selector:?}"));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Does an object with these `metadata.labels` match?
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.reqs.iter().all(|req| {
            let value = label(&req.key);
            match &req.op {
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::Equals(want) => value == Some(want.as_str()),
                LabelOp::NotEquals(want) => value != Some(want.as_str()),
                LabelOp::In(set) => value.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::NotIn(set) => !value.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::GreaterThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

fn parse_int(s: &str) -> Result<i64, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an integer for '<' or '>'"))
}

/// A parsed `fieldSelector`: `key=value`, `key==value`, `key!=value`, comma-joined.
#[derive(Debug, Default, Clone)]
pub(crate) struct FieldSelector {
    reqs: Vec<FieldReq>,
}

#[derive(Debug, Clone)]
struct FieldReq {
    field: String,
    equal: bool,
    value: String,
}

impl FieldSelector {
    pub fn parse(selector: &str, def: &ResourceDef) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_unescaped(selector, ',') {
            if term.is_empty() {
                continue;
            }
            let (field, equal, raw) = split_field_term(term).ok_or_else(|| {
                format!("invalid selector: '{selector}'; can't understand '{term}'")
            })?;
            if !def.supports_field(field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push(FieldReq {
                field: field.to_string(),
                equal,
                value: unescape_field_value(raw)?,
            });
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.reqs
            .iter()
            .all(|req| (field_value(object, &req.field) == req.value) == req.equal)
    }
}

/// The string value of a dotted field path (`metadata.name`, `spec.nodeName`); empty if absent.
fn field_value(object: &Value, field: &str) -> String {
    let mut cur = object;
    for part in field.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Split on `sep` where it is not preceded by a backslash escape.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Find the first unescaped operator (`!=`, `==`, `=`), as apimachinery's `splitTerm` does.
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        let rest = &term[i..];
        for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], equal, value));
            }
        }
    }
    None
}

fn unescape_field_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=')) => out.push(e),
            _ => {
                return Err(format!(
                    "invalid escape sequence in field selector value {raw:?}"
                ));
            }
        }
    }
    Ok(out)
}

/// Everything that narrows a list or watch: the namespace in the path, a
/// single name (`GET .../name?watch=true`), and the two selectors.
#[derive(Debug, Default, Clone)]
pub(crate) struct ObjectFilter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl ObjectFilter {
    /// Does the object stored under `key` (namespace, name) possibly match?
    pub fn key_matches(&self, key: &ObjKey) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.0)
            && self.name.as_ref().is_none_or(|n| *n == key.1)
    }

    /// Do the selectors match the object's content?
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// True when no selector is set (lists then report `remainingItemCount`).
    pub fn has_selectors(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": labels}})
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn label_equality_and_existence() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        assert!(sel("").matches(&o));
        assert!(sel("app=web").matches(&o));
        assert!(sel("app==web").matches(&o));
        assert!(!sel("app!=web").matches(&o));
        assert!(sel("other!=x").matches(&o));
        assert!(sel("app").matches(&o));
        assert!(!sel("!app").matches(&o));
        assert!(sel("!nope").matches(&o));
        assert!(sel(" app = web , tier=front ").matches(&o));
        assert!(!sel("app=web,tier=back").matches(&o));
        assert!(!sel("app=").matches(&o));
        assert!(sel("app=").matches(&obj(json!({"app": ""}))));
    }

    #[test]
    fn label_sets() {
        let o = obj(json!({"app": "web", "n": "5"}));
        assert!(sel("app in (web, db)").matches(&o));
        assert!(sel("app in(web)").matches(&o));
        assert!(!sel("app in (db)").matches(&o));
        assert!(sel("app notin (db)").matches(&o));
        assert!(sel("x notin (db)").matches(&o));
        assert!(!sel("app notin (web,db)").matches(&o));
        assert!(sel("app in (web),n>4,n<6").matches(&o));
        assert!(!sel("x in (a)").matches(&o));
    }

    #[test]
    fn label_syntax_errors() {
        for bad in ["app in web", "app=web,", ",", "app in (a", "=x", "app ~ x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let services = &RESOURCES[1];
        let o =
            json!({"metadata": {"name": "a,b", "namespace": "ns1"}, "spec": {"type": "ClusterIP"}});
        let f = |s: &str| FieldSelector::parse(s, services).unwrap();
        assert!(f("metadata.name=a\\,b").matches(&o));
        assert!(f("metadata.namespace==ns1,metadata.name!=x").matches(&o));
        assert!(!f("metadata.namespace!=ns1").matches(&o));
        assert!(f("spec.type=ClusterIP").matches(&o));
        assert!(FieldSelector::parse("spec.selector=x", services).is_err());
        assert!(FieldSelector::parse("metadata.name", services).is_err());
    }
}
