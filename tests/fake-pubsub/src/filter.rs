//! Subscription filters: the Pub/Sub filter language over message attributes.
//!
//! ```text
//! filter     := term ( AND term )* | term ( OR term )*   (mixing needs parentheses)
//! term       := NOT term | "(" filter ")" | comparison
//! comparison := attributes ":" key                       (the attribute exists)
//!             | attributes "." key "=" string
//!             | attributes "." key "!=" string           (also true without the attribute)
//!             | hasPrefix "(" attributes "." key "," string ")"
//! key        := [A-Za-z0-9_-]+ | string
//! string     := "..." with backslash escapes
//! ```
//!
//! At most 256 bytes, as in the real service.

use std::collections::HashMap;

const MAX_FILTER_BYTES: usize = 256;

#[derive(Debug, PartialEq)]
pub(crate) enum Filter {
    Has(String),
    Eq(String, String),
    Ne(String, String),
    HasPrefix(String, String),
    Not(Box<Filter>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    /// Parses a filter; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Filter, String> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(format!("the filter is over {MAX_FILTER_BYTES} bytes"));
        }
        let mut parser = Parser {
            tokens: tokenize(text)?,
            pos: 0,
        };
        let filter = parser.filter()?;
        match parser.peek() {
            None => Ok(filter),
            Some(t) => Err(format!("unexpected {t:?}")),
        }
    }

    /// Whether a message with these attributes passes.
    pub(crate) fn matches(&self, attributes: &HashMap<String, String>) -> bool {
        match self {
            Filter::Has(key) => attributes.contains_key(key),
            Filter::Eq(key, value) => attributes.get(key) == Some(value),
            Filter::Ne(key, value) => attributes.get(key) != Some(value),
            Filter::HasPrefix(key, prefix) => attributes
                .get(key)
                .is_some_and(|v| v.starts_with(prefix.as_str())),
            Filter::Not(inner) => !inner.matches(attributes),
            Filter::And(all) => all.iter().all(|f| f.matches(attributes)),
            Filter::Or(any) => any.iter().any(|f| f.matches(attributes)),
        }
    }
}

#[derive(Debug, PartialEq, Clone)]
enum Token {
    /// A bare word: `attributes`, a key, `AND`, `OR`, `NOT`, `hasPrefix`.
    Word(String),
    Str(String),
    Dot,
    Colon,
    Comma,
    Eq,
    Ne,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '.' => Token::Dot,
            ':' => Token::Colon,
            ',' => Token::Comma,
            '=' => Token::Eq,
            '(' => Token::Open,
            ')' => Token::Close,
            '!' if chars.next_if_eq(&'=').is_some() => Token::Ne,
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string literal".to_string()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(other) => s.push(other),
                            None => return Err("unterminated string literal".to_string()),
                        },
                        Some(other) => s.push(other),
                    }
                }
                Token::Str(s)
            }
            c if is_word_char(c) => {
                let mut word = String::from(c);
                while let Some(c) = chars.next_if(|c| is_word_char(*c)) {
                    word.push(c);
                }
                Token::Word(word)
            }
            other => return Err(format!("unexpected character {other:?}")),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Result<Token, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of filter")?;
        self.pos += 1;
        Ok(token)
    }

    fn expect(&mut self, want: &Token) -> Result<(), String> {
        match self.next()? {
            t if &t == want => Ok(()),
            t => Err(format!("expected {want:?}, found {t:?}")),
        }
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == word)
    }

    /// Terms joined by one of AND or OR.
    fn filter(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.term()?];
        let mut op: Option<&str> = None;
        while let Some(Token::Word(w)) = self.peek() {
            let this = match w.as_str() {
                "AND" => "AND",
                "OR" => "OR",
                _ => break,
            };
            if op.is_some_and(|op| op != this) {
                return Err("AND and OR mixed without parentheses".to_string());
            }
            op = Some(this);
            self.pos += 1;
            terms.push(self.term()?);
        }
        Ok(match op {
            None => terms.remove(0),
            Some("AND") => Filter::And(terms),
            Some(_) => Filter::Or(terms),
        })
    }

    fn term(&mut self) -> Result<Filter, String> {
        if self.is_word("NOT") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.term()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.filter()?;
            self.expect(&Token::Close)?;
            return Ok(inner);
        }
        if self.is_word("hasPrefix") {
            self.pos += 1;
            self.expect(&Token::Open)?;
            self.expect(&Token::Word("attributes".to_string()))?;
            self.expect(&Token::Dot)?;
            let key = self.key()?;
            self.expect(&Token::Comma)?;
            let prefix = self.string()?;
            self.expect(&Token::Close)?;
            return Ok(Filter::HasPrefix(key, prefix));
        }
        self.expect(&Token::Word("attributes".to_string()))?;
        match self.next()? {
            Token::Colon => Ok(Filter::Has(self.key()?)),
            Token::Dot => {
                let key = self.key()?;
                match self.next()? {
                    Token::Eq => Ok(Filter::Eq(key, self.string()?)),
                    Token::Ne => Ok(Filter::Ne(key, self.string()?)),
                    t => Err(format!("expected = or !=, found {t:?}")),
                }
            }
            t => Err(format!("expected : or . after attributes, found {t:?}")),
        }
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next()? {
            Token::Word(w) | Token::Str(w) => Ok(w),
            t => Err(format!("expected an attribute key, found {t:?}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next()? {
            Token::Str(s) => Ok(s),
            t => Err(format!("expected a string literal, found {t:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates_the_documented_forms() {
        let m = attrs(&[("cluster", "eu-1"), ("ce-type", "a.b")]);
        let yes = [
            r#"attributes.cluster = "eu-1""#,
            r#"attributes."cluster" = "eu-1""#,
            r#"attributes.ce-type="a.b""#,
            "attributes:cluster",
            "NOT attributes:other",
            r#"attributes.cluster != "us-1""#,
            r#"attributes.other != "x""#,
            r#"hasPrefix(attributes.cluster, "eu-")"#,
            r#"attributes:cluster AND (attributes.x = "1" OR attributes.cluster = "eu-1")"#,
        ];
        for f in yes {
            assert!(Filter::parse(f).unwrap().matches(&m), "{f}");
        }
        let no = [
            r#"attributes.cluster = "us-1""#,
            "attributes:other",
            r#"hasPrefix(attributes.other, "eu")"#,
            r#"attributes:cluster AND attributes:other"#,
        ];
        for f in no {
            assert!(!Filter::parse(f).unwrap().matches(&m), "{f}");
        }
    }

    #[test]
    fn rejects_malformed_filters() {
        for f in [
            "",
            "attributes",
            "attributes.x = y",
            r#"attributes.x = "unterminated"#,
            "attributes:a AND attributes:b OR attributes:c",
            "(attributes:a",
            "data:x",
            &format!("attributes:{}", "k".repeat(300)),
        ] {
            assert!(Filter::parse(f).is_err(), "{f:?}");
        }
    }
}
