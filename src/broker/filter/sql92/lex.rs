//! The SQL92 filter lexer: the tokens of Apache RocketMQ's `SelectorParser.jj` (keywords
//! ignore case, longest match wins, a keyword wins over an identifier of the same length),
//! each with its byte span in the expression.

use super::SqlError;

/// One token. Literals keep what the parser needs: decimal and float literals their text
/// (converted by the parser, which reports range errors), strings their decoded value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Not,
    And,
    Or,
    Between,
    In,
    True,
    False,
    Null,
    Is,
    Contains,
    StartsWith,
    EndsWith,
    /// Digits of a decimal literal, without its `l`/`L` suffix.
    Decimal(String),
    Float(String),
    Str(String),
    Ident(String),
    Eq,
    /// `<>` (also `!=`, which Apache does not have).
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    LParen,
    Comma,
    RParen,
    Plus,
    Minus,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Decimal(d) => format!("number {d}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Str(s) => format!("string '{}'", s.replace('\'', "''")),
            Tok::Ident(i) => format!("property {i}"),
            Tok::Eof => "the end of the expression".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Not => "NOT",
            Tok::And => "AND",
            Tok::Or => "OR",
            Tok::Between => "BETWEEN",
            Tok::In => "IN",
            Tok::True => "TRUE",
            Tok::False => "FALSE",
            Tok::Null => "NULL",
            Tok::Is => "IS",
            Tok::Contains => "CONTAINS",
            Tok::StartsWith => "STARTSWITH",
            Tok::EndsWith => "ENDSWITH",
            Tok::Eq => "=",
            Tok::Ne => "<>",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::LParen => "(",
            Tok::Comma => ",",
            Tok::RParen => ")",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Decimal(_) | Tok::Float(_) | Tok::Str(_) | Tok::Ident(_) | Tok::Eof => "",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub tok: Tok,
    /// Byte offsets in the expression.
    pub start: usize,
    pub end: usize,
}

fn keyword(word: &str) -> Option<Tok> {
    const KEYWORDS: [(&str, Tok); 12] = [
        ("NOT", Tok::Not),
        ("AND", Tok::And),
        ("OR", Tok::Or),
        ("BETWEEN", Tok::Between),
        ("IN", Tok::In),
        ("TRUE", Tok::True),
        ("FALSE", Tok::False),
        ("NULL", Tok::Null),
        ("IS", Tok::Is),
        ("CONTAINS", Tok::Contains),
        ("STARTSWITH", Tok::StartsWith),
        ("ENDSWITH", Tok::EndsWith),
    ];
    KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(word)).map(|(_, t)| t.clone())
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$'
}

fn is_ident_part(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

/// Length of the digits run starting at `i`.
fn digits(s: &[u8], i: usize) -> usize {
    s[i.min(s.len())..].iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Length of an exponent (`E`, optional sign, digits) at `i`, or 0 if there is none.
fn exponent(s: &[u8], i: usize) -> usize {
    if !matches!(s.get(i), Some(b'e' | b'E')) {
        return 0;
    }
    let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
    match digits(s, i + 1 + sign) {
        0 => 0,
        n => 1 + sign + n,
    }
}

/// The longest number literal at `i` (which starts with a digit or `.`), as Apache's
/// `DECIMAL_LITERAL` and `FLOATING_POINT_LITERAL`: `0` | `[1-9][0-9]*[lL]?`, and
/// `d+ . d* exp?` | `. d+ exp?` | `d+ exp`. `None` if neither matches (a lone `.`).
fn number(s: &[u8], i: usize) -> Option<(Tok, usize)> {
    let int = digits(s, i);
    let mut float = 0;
    if int > 0 && s.get(i + int) == Some(&b'.') {
        let frac = digits(s, i + int + 1);
        float = int + 1 + frac + exponent(s, i + int + 1 + frac);
    } else if int == 0 {
        let frac = digits(s, i + 1);
        if frac > 0 {
            float = 1 + frac + exponent(s, i + 1 + frac);
        }
    } else {
        let e = exponent(s, i + int);
        if e > 0 {
            float = int + e;
        }
    }
    let decimal = match int {
        0 => 0,
        _ if s[i] == b'0' => 1,
        n if matches!(s.get(i + n), Some(b'l' | b'L')) => n + 1,
        n => n,
    };
    let text = |n: usize| String::from_utf8_lossy(&s[i..i + n]).into_owned();
    if float > 0 && float >= decimal {
        Some((Tok::Float(text(float)), float))
    } else if decimal > 0 {
        Some((Tok::Decimal(text(int.min(decimal))), decimal))
    } else {
        None
    }
}

/// Splits `src` into tokens, ending with [`Tok::Eof`]. Whitespace (space, tab, CR, LF, FF),
/// `--` comments (to the end of the line or of the expression) and `/* */` comments are
/// skipped.
pub(super) fn tokens(src: &str) -> Result<Vec<Token>, SqlError> {
    let s = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let start = i;
        let b = s[i];
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            i += 1;
            continue;
        }
        if s[i..].starts_with(b"--") {
            i += s[i..].iter().position(|&c| c == b'\n' || c == b'\r').unwrap_or(s.len() - i);
            continue;
        }
        if s[i..].starts_with(b"/*") {
            match src[i + 2..].find("*/") {
                Some(n) => i += 2 + n + 2,
                None => return Err(SqlError::at(src, start, "this /* comment is never closed with */")),
            }
            continue;
        }
        let (tok, len) = match b {
            b'\'' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    let Some(rest) = src.get(j..) else {
                        return Err(SqlError::at(src, start, "this string is never closed with '"));
                    };
                    match rest.find('\'') {
                        None => return Err(SqlError::at(src, start, "this string is never closed with '")),
                        Some(n) => {
                            value.push_str(&rest[..n]);
                            j += n + 1;
                            if s.get(j) == Some(&b'\'') {
                                value.push('\'');
                                j += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                (Tok::Str(value), j - i)
            }
            b'0'..=b'9' | b'.' => match number(s, i) {
                Some(t) => t,
                None => return Err(SqlError::at(src, start, "unexpected `.`")),
            },
            _ if is_ident_start(b) => {
                let n = s[i..].iter().take_while(|&&c| is_ident_part(c)).count();
                let word = &src[i..i + n];
                (keyword(word).unwrap_or_else(|| Tok::Ident(word.to_string())), n)
            }
            b'=' => (Tok::Eq, 1),
            b'<' if s.get(i + 1) == Some(&b'>') => (Tok::Ne, 2),
            b'<' if s.get(i + 1) == Some(&b'=') => (Tok::Le, 2),
            b'<' => (Tok::Lt, 1),
            b'>' if s.get(i + 1) == Some(&b'=') => (Tok::Ge, 2),
            b'>' => (Tok::Gt, 1),
            b'!' if s.get(i + 1) == Some(&b'=') => (Tok::Ne, 2),
            b'(' => (Tok::LParen, 1),
            b',' => (Tok::Comma, 1),
            b')' => (Tok::RParen, 1),
            b'+' => (Tok::Plus, 1),
            b'-' => (Tok::Minus, 1),
            b'"' => {
                return Err(SqlError::at(
                    src,
                    start,
                    "unexpected `\"`: strings are written in single quotes ('text', '' for a quote)",
                ));
            }
            _ => {
                let c = src.get(i..).and_then(|r| r.chars().next()).unwrap_or('?');
                let hint = if c.is_alphabetic() || c.is_numeric() {
                    " (property names are ASCII letters, digits, _ and $, starting with a letter, _ or $)"
                } else {
                    ""
                };
                return Err(SqlError::at(src, start, format!("unexpected character `{c}`{hint}")));
            }
        };
        i += len;
        out.push(Token { tok, start, end: i });
    }
    out.push(Token { tok: Tok::Eof, start: s.len(), end: s.len() });
    Ok(out)
}
