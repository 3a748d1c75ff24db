//! The SQL92 filter parser: a recursive-descent parser of Apache RocketMQ's
//! `SelectorParser.jj` grammar into an [`Expr`] tree, with the checks Apache makes while it
//! builds its expression objects (what may be compared with what, BETWEEN bounds, IN on a
//! property, literal ranges), each refused with the byte position of the offending part.
//!
//! Grammar (lowest precedence first; every binary level is left-associative):
//!
//! ```text
//! selector   := or EOF
//! or         := and ( OR and )*
//! and        := equality ( AND equality )*
//! equality   := comparison ( ( "=" | "<>" | "!=" ) comparison | IS NULL | IS NOT NULL )*
//! comparison := unary ( ( ">" | ">=" | "<" | "<=" ) unary
//!                     | [NOT] ( CONTAINS | STARTSWITH | ENDSWITH ) string
//!                     | [NOT] BETWEEN unary AND unary
//!                     | [NOT] IN "(" string ( "," string )* ")" )*
//! unary      := "+" unary | "-" unary | NOT unary | primary
//! primary    := literal | property | "(" or ")"
//! ```

use std::collections::HashSet;

use super::lex::{Tok, Token, tokens};
use super::{MAX_DEPTH, SqlError};

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lit {
    Null,
    Bool(bool),
    /// A decimal literal within 32 bits (Java `Integer`).
    Int(i32),
    /// A decimal literal beyond 32 bits (Java `Long`).
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Order {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            Order::Gt => ">",
            Order::Ge => ">=",
            Order::Lt => "<",
            Order::Le => "<=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

/// A parsed expression. `<>` is `Not(Eq)`, `IS NULL` is `Eq(x, NULL)`, `BETWEEN` is
/// `And[>=, <=]` and `NOT BETWEEN` is `Or[<, >]`, as Apache builds them.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    Lit(Lit),
    Prop(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    /// A property used as a condition.
    BoolCast(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Cmp(Order, Box<Expr>, Box<Expr>),
    In {
        prop: String,
        values: HashSet<String>,
        not: bool,
    },
    Text {
        op: TextOp,
        not: bool,
        expr: Box<Expr>,
        search: String,
    },
}

impl Expr {
    /// Apache's `BooleanExpression`: what may stand as a condition.
    fn is_condition(&self) -> bool {
        match self {
            Expr::Lit(l) => matches!(l, Lit::Null | Lit::Bool(_)),
            Expr::Prop(_) | Expr::Neg(_) => false,
            Expr::Not(_)
            | Expr::BoolCast(_)
            | Expr::And(_)
            | Expr::Or(_)
            | Expr::Eq(..)
            | Expr::Cmp(..)
            | Expr::In { .. }
            | Expr::Text { .. } => true,
        }
    }
}

/// An expression with its height (for the depth limit) and its span in the source.
struct Node {
    e: Expr,
    height: usize,
    start: usize,
    end: usize,
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    /// Parentheses and unary operators open around the current position.
    nesting: usize,
}

/// Parses a whole expression.
pub(super) fn parse(src: &str) -> Result<Expr, SqlError> {
    let toks = tokens(src)?;
    if toks.len() == 1 {
        return Err(SqlError::at(src, 0, "the expression is empty"));
    }
    let mut p = Parser { src, toks, pos: 0, nesting: 0 };
    let node = p.or()?;
    let next = p.peek();
    if next.tok != Tok::Eof {
        return Err(p.err_at(
            next.start,
            format!("unexpected {} after a complete condition (missing AND/OR?)", next.tok.describe()),
        ));
    }
    Ok(p.condition(node)?.e)
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn peek2(&self) -> &Tok {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)].tok
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err_at(&self, at: usize, message: impl Into<String>) -> SqlError {
        SqlError::at(self.src, at, message)
    }

    fn expected(&self, what: &str) -> SqlError {
        let t = self.peek();
        self.err_at(t.start, format!("expected {what}, found {}", t.tok.describe()))
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Token, SqlError> {
        if self.peek().tok == tok { Ok(self.next()) } else { Err(self.expected(what)) }
    }

    /// The source text of a node, shortened for messages.
    fn text(&self, n: &Node) -> String {
        let t = self.src.get(n.start..n.end).unwrap_or("").trim();
        match t.char_indices().nth(40) {
            Some((cut, _)) => format!("{}...", &t[..cut]),
            None => t.to_string(),
        }
    }

    /// A node over children at most `below` high, refused if the tree gets deeper than
    /// [`MAX_DEPTH`].
    fn node(&self, e: Expr, below: usize, start: usize, end: usize) -> Result<Node, SqlError> {
        let height = below + 1;
        if height > MAX_DEPTH {
            return Err(self.err_at(start, format!("the expression is nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Node { e, height, start, end })
    }

    /// Enters a parenthesis or unary operator at `at`.
    fn enter(&mut self, at: usize) -> Result<(), SqlError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.err_at(at, format!("the expression is nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// Apache's `asBooleanExpression`: a condition as is, a property as a boolean cast,
    /// anything else refused.
    fn condition(&self, n: Node) -> Result<Node, SqlError> {
        match n.e {
            ref e if e.is_condition() => Ok(n),
            Expr::Prop(_) => self.node(Expr::BoolCast(Box::new(n.e)), n.height, n.start, n.end),
            _ => Err(self.err_at(
                n.start,
                format!("`{}` is a value, not a condition (compare it with something)", self.text(&n)),
            )),
        }
    }

    fn or(&mut self) -> Result<Node, SqlError> {
        self.chain(Tok::Or, Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Node, SqlError> {
        self.chain(Tok::And, Self::equality, Expr::And)
    }

    /// `item ( op item )*` as one n-ary node (Apache nests them to the left, which evaluates
    /// the same: left to right, stopping at the first deciding operand).
    fn chain(
        &mut self,
        op: Tok,
        item: fn(&mut Self) -> Result<Node, SqlError>,
        build: fn(Vec<Expr>) -> Expr,
    ) -> Result<Node, SqlError> {
        let first = item(self)?;
        if self.peek().tok != op {
            return Ok(first);
        }
        let first = self.condition(first)?;
        let (start, mut end, mut below) = (first.start, first.end, first.height);
        let mut items = vec![first.e];
        while self.peek().tok == op {
            self.next();
            let n = item(self)?;
            let n = self.condition(n)?;
            (end, below) = (n.end, below.max(n.height));
            items.push(n.e);
        }
        self.node(build(items), below, start, end)
    }

    fn equality(&mut self) -> Result<Node, SqlError> {
        let mut left = self.comparison()?;
        loop {
            match self.peek().tok {
                Tok::Eq | Tok::Ne => {
                    let negate = self.next().tok == Tok::Ne;
                    let right = self.comparison()?;
                    self.check_equal_operands(&left, &right)?;
                    let (start, end, below) = (left.start, right.end, left.height.max(right.height));
                    let eq = self.node(Expr::Eq(Box::new(left.e), Box::new(right.e)), below, start, end)?;
                    left = if negate { self.node(Expr::Not(Box::new(eq.e)), eq.height, start, end)? } else { eq };
                }
                Tok::Is => {
                    self.next();
                    let negate = self.peek().tok == Tok::Not;
                    if negate {
                        self.next();
                    }
                    let null =
                        self.expect(Tok::Null, if negate { "NULL after IS NOT" } else { "NULL or NOT NULL after IS" })?;
                    let (start, end) = (left.start, null.end);
                    let e = Expr::Eq(Box::new(left.e), Box::new(Expr::Lit(Lit::Null)));
                    let eq = self.node(e, left.height, start, end)?;
                    left = if negate { self.node(Expr::Not(Box::new(eq.e)), eq.height, start, end)? } else { eq };
                }
                _ => return Ok(left),
            }
        }
    }

    /// Apache's `checkEqualOperand` (no `NULL` literal: IS NULL is for that) and
    /// `checkEqualOperandCompatability` (TRUE/FALSE = a constant of another kind).
    fn check_equal_operands(&self, left: &Node, right: &Node) -> Result<(), SqlError> {
        for n in [left, right] {
            if let Expr::Lit(Lit::Null) = n.e {
                return Err(self.err_at(n.start, "NULL cannot be compared with = or <>; use IS NULL or IS NOT NULL"));
            }
        }
        if let (Expr::Lit(Lit::Bool(_)), Expr::Lit(r)) = (&left.e, &right.e)
            && !matches!(r, Lit::Bool(_))
        {
            return Err(self
                .err_at(left.start, format!("`{}` cannot be compared with `{}`", self.text(left), self.text(right))));
        }
        Ok(())
    }

    /// Apache's `checkLessThanOperand`: `>`, `>=`, `<`, `<=` and BETWEEN take numbers,
    /// properties and negations, not string/boolean/NULL literals nor conditions.
    fn check_ordered_operand(&self, n: &Node, op: &str) -> Result<(), SqlError> {
        let refused = match &n.e {
            Expr::Lit(Lit::Int(_) | Lit::Long(_) | Lit::Double(_)) => false,
            Expr::Lit(_) => true,
            e => e.is_condition(),
        };
        if refused {
            return Err(self.err_at(
                n.start,
                format!(
                    "`{}` cannot be compared with {op}: only numbers can (and properties holding them)",
                    self.text(n)
                ),
            ));
        }
        Ok(())
    }

    fn ordered(&self, op: Order, left: Node, right: Node) -> Result<Node, SqlError> {
        self.check_ordered_operand(&left, op.symbol())?;
        self.check_ordered_operand(&right, op.symbol())?;
        let (start, end, below) = (left.start, right.end, left.height.max(right.height));
        self.node(Expr::Cmp(op, Box::new(left.e), Box::new(right.e)), below, start, end)
    }

    fn comparison(&mut self) -> Result<Node, SqlError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Gt => Some(Order::Gt),
                Tok::Ge => Some(Order::Ge),
                Tok::Lt => Some(Order::Lt),
                Tok::Le => Some(Order::Le),
                _ => None,
            };
            if let Some(op) = op {
                self.next();
                let right = self.unary()?;
                left = self.ordered(op, left, right)?;
                continue;
            }
            let not_at = self.peek().start;
            let not = match (&self.peek().tok, self.peek2()) {
                (Tok::Not, Tok::Contains | Tok::StartsWith | Tok::EndsWith | Tok::Between | Tok::In) => {
                    self.next();
                    true
                }
                (Tok::Not, _) => {
                    self.next();
                    return Err(self.expected("CONTAINS, STARTSWITH, ENDSWITH, BETWEEN or IN after NOT"));
                }
                (Tok::Contains | Tok::StartsWith | Tok::EndsWith | Tok::Between | Tok::In, _) => false,
                _ => return Ok(left),
            };
            let keyword = self.next();
            left = match keyword.tok {
                Tok::Contains | Tok::StartsWith | Tok::EndsWith => {
                    let op = match keyword.tok {
                        Tok::Contains => TextOp::Contains,
                        Tok::StartsWith => TextOp::StartsWith,
                        _ => TextOp::EndsWith,
                    };
                    let (search, end) = self.string(&keyword)?;
                    let (start, below) = (left.start, left.height);
                    let e = Expr::Text { op, not, expr: Box::new(left.e), search };
                    self.node(e, below, start, end)?
                }
                Tok::Between => self.between(left, not)?,
                _ => self.in_list(left, not, not_at)?,
            };
        }
    }

    /// A string literal after `after` (CONTAINS, IN, ...): its value and end.
    fn string(&mut self, after: &Token) -> Result<(String, usize), SqlError> {
        match self.peek().tok.clone() {
            Tok::Str(s) => Ok((s, self.next().end)),
            _ => Err(self.expected(&format!("a string in single quotes after {}", after.tok.describe()))),
        }
    }

    /// `value [NOT] BETWEEN low AND high` (the keywords consumed up to BETWEEN).
    fn between(&mut self, value: Node, not: bool) -> Result<Node, SqlError> {
        let low = self.unary()?;
        self.expect(Tok::And, "AND between the bounds of BETWEEN")?;
        let high = self.unary()?;
        let (start, end) = (value.start, high.end);
        let word = if not { "NOT BETWEEN" } else { "BETWEEN" };
        for n in [&value, &low, &high] {
            self.check_ordered_operand(n, word)?;
        }
        if not {
            // Apache: value < low OR value > high, bounds in any order.
            let lt = self.ordered(Order::Lt, Node { e: value.e.clone(), ..value }, low)?;
            let gt = self.ordered(Order::Gt, value, high)?;
            let below = lt.height.max(gt.height);
            return self.node(Expr::Or(vec![lt.e, gt.e]), below, start, end);
        }
        // Apache refuses constant bounds in the wrong order (only numbers are left here).
        if let (Expr::Lit(lo), Expr::Lit(hi)) = (&low.e, &high.e)
            && super::eval::compare_literals(hi, lo).is_ok_and(|o| o.is_lt())
        {
            return Err(self.err_at(
                low.start,
                format!(
                    "the lower bound of BETWEEN ({}) is greater than the upper one ({})",
                    self.text(&low),
                    self.text(&high)
                ),
            ));
        }
        let ge = self.ordered(Order::Ge, Node { e: value.e.clone(), ..value }, low)?;
        let le = self.ordered(Order::Le, value, high)?;
        let below = ge.height.max(le.height);
        self.node(Expr::And(vec![ge.e, le.e]), below, start, end)
    }

    /// `property [NOT] IN ('a', 'b', ...)` (the keywords consumed up to IN).
    fn in_list(&mut self, left: Node, not: bool, not_at: usize) -> Result<Node, SqlError> {
        let open = self.expect(Tok::LParen, "`(` after IN")?;
        let mut values = HashSet::new();
        let mut last = open.clone();
        loop {
            let (s, _) = self.string(&last)?;
            values.insert(s);
            last = self.next();
            match last.tok {
                Tok::Comma => continue,
                Tok::RParen => break,
                _ => {
                    return Err(self.err_at(
                        last.start,
                        format!("expected `,` or `)` in the IN list, found {}", last.tok.describe()),
                    ));
                }
            }
        }
        let prop = match &left.e {
            Expr::Prop(p) => p.clone(),
            Expr::Not(inner) if matches!(**inner, Expr::BoolCast(_)) => {
                return Err(self.err_at(
                    left.start,
                    format!(
                        "IN needs a property on its left, found `{}` (NOT applies to the property alone here: \
                         write `x NOT IN (...)` or `NOT (x IN (...))`)",
                        self.text(&left)
                    ),
                ));
            }
            _ => {
                let at = if not { not_at } else { left.start };
                return Err(self.err_at(at, format!("IN needs a property on its left, found `{}`", self.text(&left))));
            }
        };
        self.node(Expr::In { prop, values, not }, left.height, left.start, last.end)
    }

    fn unary(&mut self) -> Result<Node, SqlError> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Plus | Tok::Minus | Tok::Not => {
                self.next();
                self.enter(t.start)?;
                let inner = self.unary();
                self.nesting -= 1;
                let inner = inner?;
                let end = inner.end;
                match t.tok {
                    // Apache: unary plus is the operand itself.
                    Tok::Plus => Ok(Node { start: t.start, ..inner }),
                    Tok::Minus => self.node(Expr::Neg(Box::new(inner.e)), inner.height, t.start, end),
                    _ => {
                        let c = self.condition(inner)?;
                        self.node(Expr::Not(Box::new(c.e)), c.height, t.start, end)
                    }
                }
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Node, SqlError> {
        let t = self.peek().clone();
        let lit = match &t.tok {
            Tok::Str(s) => Lit::Str(s.clone()),
            Tok::Decimal(d) => self.decimal(d, t.start)?,
            Tok::Float(f) => self.float(f, t.start)?,
            Tok::True => Lit::Bool(true),
            Tok::False => Lit::Bool(false),
            Tok::Null => Lit::Null,
            Tok::Ident(name) => {
                self.next();
                return Ok(Node { e: Expr::Prop(name.clone()), height: 1, start: t.start, end: t.end });
            }
            Tok::LParen => {
                self.next();
                self.enter(t.start)?;
                let inner = self.or();
                self.nesting -= 1;
                let inner = inner?;
                let close = self.expect(Tok::RParen, "`)`")?;
                return Ok(Node { start: t.start, end: close.end, ..inner });
            }
            _ => return Err(self.expected("a value, a property or `(`")),
        };
        self.next();
        Ok(Node { e: Expr::Lit(lit), height: 1, start: t.start, end: t.end })
    }

    /// Apache's `createFromDecimal`: a `Long`, narrowed to `Integer` when it fits.
    fn decimal(&self, digits: &str, at: usize) -> Result<Lit, SqlError> {
        match digits.parse::<i64>() {
            Ok(v) => Ok(i32::try_from(v).map_or(Lit::Long(v), Lit::Int)),
            Err(_) => Err(self.err_at(at, format!("the number {digits} is out of range (at most {})", i64::MAX))),
        }
    }

    /// Apache's `createFloat`: a finite double, and (as Apache) not below the smallest
    /// positive double: `0.0` and underflows are refused.
    fn float(&self, text: &str, at: usize) -> Result<Lit, SqlError> {
        let v: f64 = text.parse().map_err(|_| self.err_at(at, format!("`{text}` is not a number")))?;
        if v.is_infinite() {
            return Err(self.err_at(at, format!("the number {text} is out of range (at most {:e})", f64::MAX)));
        }
        if v < f64::from_bits(1) {
            return Err(self.err_at(
                at,
                format!("the number {text} is refused: float literals must be at least 4.9E-324 (write 0 for zero)"),
            ));
        }
        Ok(Lit::Double(v))
    }
}
