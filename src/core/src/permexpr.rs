//! Permission expressions over a key's scopes: `surveys:read AND (metrics:read OR admin:*)`.
//!
//! Grammar (keywords case-insensitive, `NOT` binds tightest, then `AND`, then `OR`):
//! ```text
//! expr  := term ("OR" term)*
//! term  := factor ("AND" factor)*
//! factor:= "NOT" factor | "(" expr ")" | scope
//! scope := [a-z0-9_.:*-]+ (a valid scope, see `scope::is_valid`)
//! ```
//! A scope is true when the key holds it, with the usual wildcard rule (a *held* `surveys:*`
//! covers `surveys:read`; an *asked* `surveys:*` needs a held `surveys:*` or `*`). Parsing is
//! linear, nesting is bounded, and errors name the byte position, never more of the input.

use crate::scope;

/// The deepest nesting accepted, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;
/// The longest expression accepted.
const MAX_LEN: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Scope(String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based character position where the problem is.
    pub position: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid permission expression at character {}: {}",
            self.position, self.what
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Open(usize),
    Close(usize),
}

fn is_scope_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '*' | '-')
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut pos = 0; // characters seen, for 1-based positions
    while let Some((_, c)) = chars.next() {
        pos += 1;
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Token::Open(pos)),
            ')' => out.push(Token::Close(pos)),
            c if is_scope_char(c) || c.is_ascii_alphabetic() => {
                let start = pos;
                let mut word = String::from(c);
                while let Some(&(_, n)) = chars.peek() {
                    if is_scope_char(n) || n.is_ascii_alphabetic() {
                        word.push(n);
                        chars.next();
                        pos += 1;
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(word, start));
            }
            _ => {
                return Err(ParseError {
                    position: pos,
                    what: "unexpected character",
                })
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    end: usize,
}

impl Parser {
    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w, _)) if w.eq_ignore_ascii_case(kw))
    }

    fn position(&self) -> usize {
        match self.tokens.get(self.at) {
            Some(Token::Word(_, p) | Token::Open(p) | Token::Close(p)) => *p,
            None => self.end,
        }
    }

    fn err(&self, what: &'static str) -> ParseError {
        ParseError {
            position: self.position(),
            what,
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let mut terms = vec![self.term(depth)?];
        while self.peek_keyword("or") {
            self.at += 1;
            terms.push(self.term(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one")
        } else {
            Expr::Or(terms)
        })
    }

    fn term(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut factors = vec![self.factor(depth)?];
        while self.peek_keyword("and") {
            self.at += 1;
            factors.push(self.factor(depth)?);
        }
        Ok(if factors.len() == 1 {
            factors.pop().expect("one")
        } else {
            Expr::And(factors)
        })
    }

    fn factor(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        if self.peek_keyword("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.factor(depth + 1)?)));
        }
        match self.tokens.get(self.at).cloned() {
            Some(Token::Open(_)) => {
                self.at += 1;
                let inner = self.expr(depth + 1)?;
                match self.tokens.get(self.at) {
                    Some(Token::Close(_)) => {
                        self.at += 1;
                        Ok(inner)
                    }
                    _ => Err(self.err("expected \")\"")),
                }
            }
            Some(Token::Word(w, _)) if ["and", "or"].iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                Err(self.err("expected a scope"))
            }
            Some(Token::Word(w, _)) => {
                if !scope::is_valid(&w) {
                    return Err(self.err("not a valid scope"));
                }
                self.at += 1;
                Ok(Expr::Scope(w))
            }
            Some(Token::Close(_)) => Err(self.err("unexpected \")\"")),
            None => Err(self.err("unexpected end of expression")),
        }
    }
}

/// Parse an expression (see the module comment).
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    if text.len() > MAX_LEN {
        return Err(ParseError {
            position: 1,
            what: "longer than 4096 bytes",
        });
    }
    let tokens = tokenize(text)?;
    let end = text.chars().count() + 1;
    let mut p = Parser { tokens, at: 0, end };
    let e = p.expr(0)?;
    if p.at != p.tokens.len() {
        return Err(p.err("expected AND, OR or the end"));
    }
    Ok(e)
}

/// The scopes that appear under a NOT: holding one of them takes a right away, so a key must not
/// be able to shed it (see `rights::Rights::deny`).
pub fn negated(expr: &Expr) -> Vec<&str> {
    fn walk<'a>(e: &'a Expr, under_not: bool, out: &mut Vec<&'a str>) {
        match e {
            Expr::Scope(s) if under_not => out.push(s),
            Expr::Scope(_) => {}
            Expr::Not(x) => walk(x, true, out),
            Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| walk(x, under_not, out)),
        }
    }
    let mut out = Vec::new();
    walk(expr, false, &mut out);
    out
}

/// Evaluate with `holds(scope)` answering whether the key holds a scope.
pub fn eval(e: &Expr, holds: &dyn Fn(&str) -> bool) -> bool {
    match e {
        Expr::Scope(s) => holds(s),
        Expr::Not(x) => !eval(x, holds),
        Expr::And(xs) => xs.iter().all(|x| eval(x, holds)),
        Expr::Or(xs) => xs.iter().any(|x| eval(x, holds)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(held: &[&str], text: &str) -> bool {
        let held: Vec<String> = held.iter().map(|s| s.to_string()).collect();
        eval(&parse(text).unwrap(), &|s| scope::covers(&held, s))
    }

    #[test]
    fn scopes_under_not_are_found() {
        let e = parse("a AND NOT (b OR c:d) AND (e OR NOT f)").unwrap();
        assert_eq!(negated(&e), vec!["b", "c:d", "f"]);
        assert!(negated(&parse("a OR b").unwrap()).is_empty());
    }

    #[test]
    fn precedence_and_wildcards() {
        assert!(with(
            &["surveys:read", "metrics:read"],
            "surveys:read AND (metrics:read OR admin:*)"
        ));
        assert!(!with(
            &["surveys:read"],
            "surveys:read AND (metrics:read OR admin:*)"
        ));
        assert!(with(
            &["surveys:read", "admin:*"],
            "surveys:read and (metrics:read or admin:*)"
        ));
        // NOT binds tightest, AND before OR.
        assert!(with(&["a"], "a OR b AND c"));
        assert!(!with(&["a"], "NOT a OR b AND c"));
        assert!(with(&["surveys:*"], "surveys:read"));
        assert!(!with(&["surveys:read"], "surveys:*"));
    }

    #[test]
    fn errors_name_the_position() {
        let e = parse("surveys:read AND (metrics:read").unwrap_err();
        assert_eq!((e.position, e.what), (31, "expected \")\""));
        assert_eq!(parse("a AND").unwrap_err().position, 6);
        assert_eq!(parse("a b").unwrap_err().position, 3);
        assert_eq!(parse("Surveys:Read").unwrap_err().what, "not a valid scope");
        assert_eq!(parse("a & b").unwrap_err().position, 3);
        assert_eq!(parse("").unwrap_err().what, "unexpected end of expression");
        assert!(parse(&"(".repeat(100)).is_err());
        assert!(parse(&"NOT ".repeat(100)).is_err());
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut next = crate::test_rng::xorshift(7);
        let alphabet = [
            "a", "b:c", "*", " ", "(", ")", "AND", "OR", "NOT", "é", "&", ":", "\u{0}",
        ];
        for _ in 0..20_000 {
            let n = (next() % 30) as usize;
            let text: String = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(if next().is_multiple_of(2) { " " } else { "" });
            if let Ok(e) = parse(&text) {
                let _ = eval(&e, &|s| s.len() % 2 == 0);
            }
        }
    }
}
