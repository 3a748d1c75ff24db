//! The SQL92 filter evaluator: Apache RocketMQ's expression semantics over a message's
//! properties (all strings), including its Java conversions (`Integer.valueOf`,
//! `Double.valueOf`, `Boolean.valueOf`, `Double.compareTo`) and the places where Apache's
//! evaluation throws (then the message does not match).

use std::cmp::Ordering;

use super::parse::{Expr, Lit, Order, TextOp};
use crate::storage::Properties;

/// Where the evaluator looks properties up.
pub trait Lookup {
    fn property(&self, name: &str) -> Option<&str>;
}

impl Lookup for Properties {
    fn property(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

#[cfg(test)]
impl Lookup for std::collections::HashMap<String, String> {
    fn property(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An exception in Apache's evaluation (a failed number conversion, a class cast): the
/// whole expression fails and the message does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Abort;

/// A value during evaluation (Java's `null`, `Boolean`, `Integer`, `Long`, `Double`,
/// `String`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
}

fn literal(l: &Lit) -> Val<'_> {
    match l {
        Lit::Null => Val::Null,
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Int(i) => Val::Int(*i),
        Lit::Long(l) => Val::Long(*l),
        Lit::Double(d) => Val::Double(*d),
        Lit::Str(s) => Val::Str(s),
    }
}

/// Whether `e` evaluates to TRUE (unknown, FALSE and failures do not match).
pub(super) fn matches(e: &Expr, props: &dyn Lookup) -> bool {
    matches!(eval(e, props), Ok(Val::Bool(true)))
}

/// Java `Integer.valueOf(String)` (ASCII digits; Java also takes other Unicode digits).
fn java_int(s: &str) -> Result<i32, Abort> {
    s.parse().map_err(|_| Abort)
}

/// Java `Long.valueOf(String)`.
fn java_long(s: &str) -> Result<i64, Abort> {
    s.parse().map_err(|_| Abort)
}

/// Java `Boolean.valueOf(String)`: true iff "true" in any case.
fn java_bool(s: &str) -> bool {
    s.eq_ignore_ascii_case("true")
}

/// Java `Double.valueOf(String)`: surrounding whitespace and control characters ignored,
/// `NaN` and `Infinity` with an optional sign, decimal digits with an optional point and
/// exponent, an optional `f`/`F`/`d`/`D` suffix. (Java also reads hexadecimal floats, which are
/// refused here.)
pub(super) fn java_double(s: &str) -> Result<f64, Abort> {
    let t = s.trim_matches(|c: char| c <= ' ');
    let (negative, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let magnitude = match body {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        _ => {
            let digits = body.strip_suffix(['f', 'F', 'd', 'D']).unwrap_or(body);
            let b = digits.as_bytes();
            let int = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut i = int;
            let mut frac = 0;
            if b.get(i) == Some(&b'.') {
                frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                i += 1 + frac;
            }
            if int + frac == 0 {
                return Err(Abort);
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                i += 1;
                if matches!(b.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                let exp = b[i.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
                if exp == 0 {
                    return Err(Abort);
                }
                i += exp;
            }
            if i != b.len() {
                return Err(Abort);
            }
            digits.parse::<f64>().map_err(|_| Abort)?
        }
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// Java `Double.compareTo`: NaN equals NaN and is above everything, -0.0 is below 0.0.
fn java_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.total_cmp(&b),
    }
}

/// Apache's `ComparisonExpression.__compare` (string conversions on, as SQL92 filters
/// have them): values of different types are converted to the other side's type where Java
/// converts them (a failed conversion fails the evaluation); types it cannot relate compare
/// as "less" (-1).
fn compare(l: Val, r: Val) -> Result<Ordering, Abort> {
    use Val::{Bool, Double, Int, Long, Null, Str};
    Ok(match (l, r) {
        (Null, _) | (_, Null) => return Err(Abort),
        (Bool(a), Bool(b)) => a.cmp(&b),
        (Int(a), Int(b)) => a.cmp(&b),
        (Long(a), Long(b)) => a.cmp(&b),
        (Double(a), Double(b)) => java_cmp(a, b),
        (Str(a), Str(b)) => a.cmp(b),
        // Java casts the Boolean to a String here: ClassCastException.
        (Bool(_), Str(_)) => return Err(Abort),
        (Bool(_), Int(_) | Long(_) | Double(_)) => Ordering::Less,
        (Int(a), Long(b)) => i64::from(a).cmp(&b),
        (Int(a), Double(b)) => java_cmp(f64::from(a), b),
        (Int(a), Str(b)) => a.cmp(&java_int(b)?),
        (Long(a), Int(b)) => a.cmp(&i64::from(b)),
        (Long(a), Double(b)) => java_cmp(a as f64, b),
        (Long(a), Str(b)) => a.cmp(&java_long(b)?),
        (Double(a), Int(b)) => java_cmp(a, f64::from(b)),
        (Double(a), Long(b)) => java_cmp(a, b as f64),
        (Double(a), Str(b)) => java_cmp(a, java_double(b)?),
        (Int(_) | Long(_) | Double(_), Bool(_)) => Ordering::Less,
        (Str(a), Bool(b)) => java_bool(a).cmp(&b),
        (Str(a), Int(b)) => java_int(a)?.cmp(&b),
        (Str(a), Long(b)) => java_long(a)?.cmp(&b),
        (Str(a), Double(b)) => java_cmp(java_double(a)?, b),
    })
}

/// [`compare`] of two constants (the parser's check of BETWEEN bounds).
pub(super) fn compare_literals(l: &Lit, r: &Lit) -> Result<Ordering, Abort> {
    compare(literal(l), literal(r))
}

fn truth(v: Val) -> Result<Option<bool>, Abort> {
    match v {
        Val::Null => Ok(None),
        Val::Bool(b) => Ok(Some(b)),
        // Java casts the operand of AND/OR/NOT to Boolean.
        _ => Err(Abort),
    }
}

fn from_truth<'a>(t: Option<bool>) -> Val<'a> {
    t.map_or(Val::Null, Val::Bool)
}

pub(super) fn eval<'a>(e: &'a Expr, props: &'a dyn Lookup) -> Result<Val<'a>, Abort> {
    Ok(match e {
        Expr::Lit(l) => literal(l),
        Expr::Prop(name) => props.property(name).map_or(Val::Null, Val::Str),
        Expr::Neg(x) => match eval(x, props)? {
            Val::Int(i) => Val::Int(i.wrapping_neg()),
            Val::Long(l) => Val::Long(l.wrapping_neg()),
            Val::Double(d) => Val::Double(-d),
            Val::Null | Val::Bool(_) | Val::Str(_) => Val::Null,
        },
        Expr::Not(x) => from_truth(truth(eval(x, props)?)?.map(|b| !b)),
        Expr::BoolCast(x) => match eval(x, props)? {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(b),
            _ => Val::Bool(false),
        },
        // Left to right, stopping at the first FALSE; unknown if any operand was unknown.
        Expr::And(items) => {
            let mut acc = Some(true);
            for x in items {
                match truth(eval(x, props)?)? {
                    Some(false) => return Ok(Val::Bool(false)),
                    None => acc = None,
                    Some(true) => {}
                }
            }
            from_truth(acc)
        }
        Expr::Or(items) => {
            let mut acc = Some(false);
            for x in items {
                match truth(eval(x, props)?)? {
                    Some(true) => return Ok(Val::Bool(true)),
                    None => acc = None,
                    Some(false) => {}
                }
            }
            from_truth(acc)
        }
        Expr::Eq(l, r) => {
            let (lv, rv) = (eval(l, props)?, eval(r, props)?);
            match (lv, rv) {
                (Val::Null, Val::Null) => Val::Bool(true),
                (Val::Null, _) => Val::Null,
                (_, Val::Null) => Val::Bool(false),
                _ => Val::Bool(compare(lv, rv)?.is_eq()),
            }
        }
        Expr::Cmp(op, l, r) => {
            let lv = eval(l, props)?;
            if lv == Val::Null {
                return Ok(Val::Null);
            }
            let rv = eval(r, props)?;
            let ord = match (lv, rv) {
                (_, Val::Null) => return Ok(Val::Null),
                // Two strings (two properties) compare as numbers, or fail.
                (Val::Str(a), Val::Str(b)) => java_cmp(java_double(a)?, java_double(b)?),
                _ => compare(lv, rv)?,
            };
            Val::Bool(match op {
                Order::Gt => ord.is_gt(),
                Order::Ge => ord.is_ge(),
                Order::Lt => ord.is_lt(),
                Order::Le => ord.is_le(),
            })
        }
        Expr::In { prop, values, not } => match props.property(prop) {
            None => Val::Null,
            Some(v) => Val::Bool(values.contains(v) != *not),
        },
        Expr::Text { op, not, expr, search } => {
            if search.is_empty() {
                return Ok(Val::Bool(false));
            }
            match eval(expr, props)? {
                Val::Str(s) => {
                    let found = match op {
                        TextOp::Contains => s.contains(search.as_str()),
                        TextOp::StartsWith => s.starts_with(search.as_str()),
                        TextOp::EndsWith => s.ends_with(search.as_str()),
                    };
                    Val::Bool(found != *not)
                }
                // Missing or not a string: FALSE (not unknown), also with NOT.
                _ => Val::Bool(false),
            }
        }
    })
}
