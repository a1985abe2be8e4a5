//! `when` and `expect` conditions: a small expression language on evidence.
//!
//! ```text
//! steps.errors.database > 10 and not steps.health.ok
//! steps.db.ok == false or params.force == "yes"
//! ```
//!
//! Grammar (keywords are lowercase; precedence from loosest to tightest):
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | compare
//! compare := operand (("==" | "!=" | ">" | ">=" | "<" | "<=") operand)?
//! operand := number | "string" | 'string' | true | false | path | "(" expr ")"
//! path    := ident ("." ident)*          ident := [A-Za-z_][A-Za-z0-9_]*
//! ```
//!
//! Conditions are parsed when the runbook loads, so a typo fails the load,
//! not the incident. Evaluation is strict: a path that is missing from the
//! evidence is an error, never a silent `false`, because "the database
//! error count is unknown" and "it is zero" lead to different actions.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A parsed condition, with the text it came from.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

/// A dotted path into the evaluation context, such as `steps.errors.database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<String>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl CompareOp {
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }
}

/// The syntax tree of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal.
    Number(f64),
    /// A string literal.
    Text(String),
    /// `true` or `false`.
    Bool(bool),
    /// A value looked up in the context.
    Path(Path),
    /// `not e`
    Not(Box<Expr>),
    /// `a and b`
    And(Box<Expr>, Box<Expr>),
    /// `a or b`
    Or(Box<Expr>, Box<Expr>),
    /// `a <op> b`
    Compare(Box<Expr>, CompareOp, Box<Expr>),
}

/// Why a condition could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid condition `{source_text}` at character {position}: {message}")]
pub struct ConditionSyntaxError {
    /// The condition's text.
    pub source_text: String,
    /// Character offset (0-based) where parsing stopped.
    pub position: usize,
    /// What was expected.
    pub message: String,
}

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The path names nothing in the evidence.
    #[error("`{0}` is not in the evidence")]
    Missing(String),
    /// The operands cannot be compared that way.
    #[error("cannot compare {left} {op} {right}")]
    Incomparable {
        /// Left operand, described.
        left: String,
        /// The operator.
        op: &'static str,
        /// Right operand, described.
        right: String,
    },
    /// `and`, `or`, `not` or the whole condition met something that is not a boolean.
    #[error("`{0}` is not a boolean")]
    NotBoolean(String),
}

impl Condition {
    /// Parses a condition.
    pub fn parse(text: &str) -> Result<Condition, ConditionSyntaxError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { text, tokens, pos: 0 };
        let expr = parser.expr()?;
        if let Some(tok) = parser.tokens.get(parser.pos) {
            return Err(parser.error_at(tok.at, "expected `and`, `or` or the end of the condition"));
        }
        Ok(Condition { source: text.to_owned(), expr })
    }

    /// The text the condition was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Every path the condition reads, in order of appearance.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        collect_paths(&self.expr, &mut out);
        out
    }

    /// Evaluates the condition against `context` (a JSON object whose
    /// top-level keys are the path roots). Numbers written as strings
    /// (agents report evidence as text) compare as numbers.
    pub fn evaluate(&self, context: &Value) -> Result<bool, EvalError> {
        truth(&self.expr, context)
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Condition {
    type Err = ConditionSyntaxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::parse(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        Condition::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

fn collect_paths<'a>(expr: &'a Expr, out: &mut Vec<&'a Path>) {
    match expr {
        Expr::Path(p) => out.push(p),
        Expr::Not(e) => collect_paths(e, out),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(a, _, b) => {
            collect_paths(a, out);
            collect_paths(b, out);
        }
        Expr::Number(_) | Expr::Text(_) | Expr::Bool(_) => {}
    }
}

// ---------------------------------------------------------------- evaluation

/// A value met during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Number(f64),
    Text(String),
    Bool(bool),
    Other(String),
}

impl Scalar {
    fn describe(&self) -> String {
        match self {
            Scalar::Number(n) => n.to_string(),
            Scalar::Text(s) => format!("\"{s}\""),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Other(s) => s.clone(),
        }
    }
}

fn truth(expr: &Expr, ctx: &Value) -> Result<bool, EvalError> {
    match expr {
        Expr::And(a, b) => Ok(truth(a, ctx)? && truth(b, ctx)?),
        Expr::Or(a, b) => Ok(truth(a, ctx)? || truth(b, ctx)?),
        Expr::Not(e) => Ok(!truth(e, ctx)?),
        Expr::Compare(a, op, b) => compare(&scalar(a, ctx)?, *op, &scalar(b, ctx)?),
        Expr::Bool(b) => Ok(*b),
        other => match scalar(other, ctx)? {
            Scalar::Bool(b) => Ok(b),
            Scalar::Text(t) if t == "true" || t == "false" => Ok(t == "true"),
            s => Err(EvalError::NotBoolean(s.describe())),
        },
    }
}

fn scalar(expr: &Expr, ctx: &Value) -> Result<Scalar, EvalError> {
    match expr {
        Expr::Number(n) => Ok(Scalar::Number(*n)),
        Expr::Text(t) => Ok(Scalar::Text(t.clone())),
        Expr::Bool(b) => Ok(Scalar::Bool(*b)),
        Expr::Path(path) => {
            let mut at = ctx;
            for segment in &path.0 {
                at = at.get(segment).ok_or_else(|| EvalError::Missing(path.to_string()))?;
            }
            Ok(match at {
                Value::Number(n) => n.as_f64().map_or_else(|| Scalar::Other(n.to_string()), Scalar::Number),
                Value::String(s) => Scalar::Text(s.clone()),
                Value::Bool(b) => Scalar::Bool(*b),
                Value::Null => Scalar::Other("null".into()),
                Value::Array(_) | Value::Object(_) => Scalar::Other(format!("`{path}` (not a single value)")),
            })
        }
        logical => truth(logical, ctx).map(Scalar::Bool),
    }
}

fn as_number(s: &Scalar) -> Option<f64> {
    match s {
        Scalar::Number(n) => Some(*n),
        Scalar::Text(t) => t.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

fn compare(left: &Scalar, op: CompareOp, right: &Scalar) -> Result<bool, EvalError> {
    let incomparable = || EvalError::Incomparable { left: left.describe(), op: op.as_str(), right: right.describe() };
    // Numbers first: evidence arrives as text ("12.00"), and `"12.00" == 12`
    // must hold.
    if matches!(left, Scalar::Number(_)) || matches!(right, Scalar::Number(_)) {
        let (Some(l), Some(r)) = (as_number(left), as_number(right)) else {
            return Err(incomparable());
        };
        return Ok(match op {
            CompareOp::Eq => l == r,
            CompareOp::Ne => l != r,
            CompareOp::Gt => l > r,
            CompareOp::Ge => l >= r,
            CompareOp::Lt => l < r,
            CompareOp::Le => l <= r,
        });
    }
    let equal = match (left, right) {
        (Scalar::Text(a), Scalar::Text(b)) => a == b,
        (Scalar::Bool(a), Scalar::Bool(b)) => a == b,
        (Scalar::Bool(a), Scalar::Text(t)) | (Scalar::Text(t), Scalar::Bool(a)) if t == "true" || t == "false" => {
            *a == (t == "true")
        }
        _ => return Err(incomparable()),
    };
    match op {
        CompareOp::Eq => Ok(equal),
        CompareOp::Ne => Ok(!equal),
        _ => Err(incomparable()),
    }
}

// ---------------------------------------------------------------- parsing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Number(f64),
    Text(String),
    Ident(String),
    Dot,
    Op(CompareOp),
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    at: usize,
}

fn syntax(text: &str, at: usize, message: impl Into<String>) -> ConditionSyntaxError {
    ConditionSyntaxError { source_text: text.to_owned(), position: at, message: message.into() }
}

fn tokenize(text: &str) -> Result<Vec<Token>, ConditionSyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        let two = |next: char| chars.get(i + 1) == Some(&next);
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Tok::Open,
            ')' => Tok::Close,
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => Tok::Dot,
            '=' if two('=') => Tok::Op(CompareOp::Eq),
            '!' if two('=') => Tok::Op(CompareOp::Ne),
            '>' if two('=') => Tok::Op(CompareOp::Ge),
            '<' if two('=') => Tok::Op(CompareOp::Le),
            '>' => Tok::Op(CompareOp::Gt),
            '<' => Tok::Op(CompareOp::Lt),
            '"' | '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == c)
                    .ok_or_else(|| syntax(text, at, "unterminated string"))?;
                let s: String = chars[i + 1..i + 1 + end].iter().collect();
                i += end + 2;
                out.push(Token { tok: Tok::Text(s), at });
                continue;
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let len = chars[i + 1..]
                    .iter()
                    .position(|x| !(x.is_ascii_digit() || *x == '.' || *x == '_'))
                    .unwrap_or(chars.len() - i - 1)
                    + 1;
                let s: String = chars[i..i + len].iter().filter(|&&x| x != '_').collect();
                let n = s
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| syntax(text, at, format!("`{s}` is not a number")))?;
                i += len;
                out.push(Token { tok: Tok::Number(n), at });
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .position(|x| !(x.is_ascii_alphanumeric() || *x == '_'))
                    .unwrap_or(chars.len() - i);
                let s: String = chars[i..i + len].iter().collect();
                i += len;
                out.push(Token { tok: Tok::Ident(s), at });
                continue;
            }
            other => return Err(syntax(text, at, format!("unexpected `{other}`"))),
        };
        i += if matches!(tok, Tok::Op(CompareOp::Gt | CompareOp::Lt) | Tok::Open | Tok::Close | Tok::Dot) {
            1
        } else {
            2
        };
        out.push(Token { tok, at });
    }
    Ok(out)
}

/// Deepest nesting accepted; conditions are one-liners, and a bound keeps a
/// hostile file from exhausting the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser<'_> {
    fn error_at(&self, at: usize, message: impl Into<String>) -> ConditionSyntaxError {
        syntax(self.text, at, message)
    }

    fn end_position(&self) -> usize {
        self.text.chars().count()
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, ConditionSyntaxError> {
        self.or(0)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ConditionSyntaxError> {
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ConditionSyntaxError> {
        let mut left = self.unary(depth)?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ConditionSyntaxError> {
        if depth > MAX_DEPTH {
            let at = self.tokens.get(self.pos).map_or(self.end_position(), |t| t.at);
            return Err(self.error_at(at, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        let left = self.operand(depth)?;
        if let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.operand(depth)?;
            return Ok(Expr::Compare(Box::new(left), op, Box::new(right)));
        }
        Ok(left)
    }

    fn operand(&mut self, depth: usize) -> Result<Expr, ConditionSyntaxError> {
        let Some(token) = self.tokens.get(self.pos).cloned() else {
            return Err(self.error_at(self.end_position(), "expected a value, a path or `(`"));
        };
        self.pos += 1;
        match token.tok {
            Tok::Number(n) => Ok(Expr::Number(n)),
            Tok::Text(s) => Ok(Expr::Text(s)),
            Tok::Open => {
                let inner = self.or(depth + 1)?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => {
                        let at = self.tokens.get(self.pos).map_or(self.end_position(), |t| t.at);
                        Err(self.error_at(at, "expected `)`"))
                    }
                }
            }
            Tok::Ident(word) => match word.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "and" | "or" | "not" => Err(self.error_at(token.at, format!("expected a value before `{word}`"))),
                _ => {
                    let mut segments = vec![word];
                    while self.peek() == Some(&Tok::Dot) {
                        self.pos += 1;
                        match self.tokens.get(self.pos) {
                            Some(Token { tok: Tok::Ident(next), .. }) => {
                                segments.push(next.clone());
                                self.pos += 1;
                            }
                            other => {
                                let at = other.map_or(self.end_position(), |t| t.at);
                                return Err(self.error_at(at, "expected a name after `.`"));
                            }
                        }
                    }
                    Ok(Expr::Path(Path(segments)))
                }
            },
            Tok::Dot | Tok::Close | Tok::Op(_) => Err(self.error_at(token.at, "expected a value, a path or `(`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(cond: &str, ctx: &Value) -> Result<bool, EvalError> {
        Condition::parse(cond).map_err(|e| panic!("{e}")).and_then(|c| c.evaluate(ctx))
    }

    #[test]
    fn the_seed_thresholds_compare_numbers_even_when_written_as_text() {
        let ctx = json!({"steps": {"errors": {"database": "12", "timeout": 5}}});
        assert_eq!(eval("steps.errors.database > 10", &ctx), Ok(true));
        assert_eq!(eval("steps.errors.timeout > 5", &ctx), Ok(false));
        assert_eq!(eval("steps.errors.timeout >= 5 and steps.errors.database <= 12", &ctx), Ok(true));
        assert_eq!(eval("steps.errors.timeout == 5.0", &ctx), Ok(true));
        assert_eq!(eval("steps.errors.timeout != 5", &ctx), Ok(false));
        assert_eq!(eval("steps.errors.timeout < -1", &ctx), Ok(false));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_and_parentheses_work() {
        let ctx = json!({"a": true, "b": false, "c": true});
        assert_eq!(eval("a or b and b", &ctx), Ok(true));
        assert_eq!(eval("(a or b) and b", &ctx), Ok(false));
        assert_eq!(eval("not b and c", &ctx), Ok(true));
        assert_eq!(eval("not (a and c)", &ctx), Ok(false));
    }

    #[test]
    fn strings_and_booleans_compare_for_equality_only() {
        let ctx = json!({"s": {"status": "down", "ok": false, "flag": "true"}});
        assert_eq!(eval("s.status == 'down'", &ctx), Ok(true));
        assert_eq!(eval("s.status != \"down\"", &ctx), Ok(false));
        assert_eq!(eval("s.ok == false", &ctx), Ok(true));
        assert_eq!(eval("s.flag", &ctx), Ok(true));
        assert!(matches!(eval("s.status > 'a'", &ctx), Err(EvalError::Incomparable { .. })));
        assert!(matches!(eval("s.status > 3", &ctx), Err(EvalError::Incomparable { .. })));
        assert_eq!(eval("s.status", &ctx), Err(EvalError::NotBoolean("\"down\"".into())));
    }

    #[test]
    fn a_missing_path_is_an_error_not_false() {
        let ctx = json!({"steps": {"errors": {}}});
        assert_eq!(eval("steps.errors.database > 10", &ctx), Err(EvalError::Missing("steps.errors.database".into())));
    }

    #[test]
    fn paths_are_listed_for_validation() {
        let c =
            Condition::parse("steps.errors.database > 10 or params.force == true").unwrap_or_else(|e| panic!("{e}"));
        let paths: Vec<String> = c.paths().iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["steps.errors.database", "params.force"]);
    }

    #[test]
    fn syntax_errors_say_where() {
        for (text, at) in [
            ("steps.errors.database >", 23),
            ("steps.errors. > 1", 14),
            ("a > 1 b", 6),
            ("(a > 1", 6),
            ("a = 1", 2),
            ("'open", 0),
            ("and a", 0),
            ("1.2.3 > 1", 0),
        ] {
            let err = Condition::parse(text).err().unwrap_or_else(|| panic!("`{text}` parsed"));
            assert_eq!(err.position, at, "{text}: {err}");
        }
    }

    #[test]
    fn hostile_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Condition::parse(&deep).is_err());
        let nots = format!("{}a", "not ".repeat(10_000));
        assert!(Condition::parse(&nots).is_err());
    }

    #[test]
    fn conditions_round_trip_as_text() {
        let c: Condition = serde_json::from_value(json!("a.b >= 2")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_value(&c).ok(), Some(json!("a.b >= 2")));
        assert!(serde_json::from_value::<Condition>(json!("a >")).is_err());
    }
}
