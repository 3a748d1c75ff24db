//! Tests of the SQL92 filter: a table of expression × properties → match (Apache's
//! semantics, worked out from its `filter` module), refused expressions with their
//! positions, the limits, and property tests (no panic on any input; generated well-formed
//! expressions parse and obey three-valued logic).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::eval::{Val, eval};
use super::{MAX_DEPTH, MAX_LEN, SqlFilter, compile, parse};

fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn filter(expr: &str) -> SqlFilter {
    parse(expr).unwrap_or_else(|e| panic!("`{expr}` refused: {e}"))
}

/// expression, properties, match?
type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

const CASES: &[Case] = &[
    // integer literal: Integer.valueOf(property); a failed conversion fails everything
    ("a = 1", &[("a", "1")], true),
    ("a = 1", &[("a", "2")], false),
    ("a = 1", &[], false),
    ("a = 1", &[("a", "+1")], true),
    ("a = 1", &[("a", "01")], true),
    ("a = 1", &[("a", "1.0")], false),
    ("a = 1", &[("a", " 1")], false),
    ("a = 1", &[("a", "x")], false),
    ("a = -1", &[("a", "-1")], true),
    ("a = 5", &[("a", "5000000000")], false),
    ("a = 5000000000", &[("a", "5000000000")], true),
    ("a = 5L", &[("a", "5")], true),
    ("a > 5", &[("a", "6")], true),
    ("a > 5", &[("a", "5")], false),
    ("a > 5", &[("a", "5.5")], false),
    ("a > 5", &[("a", "-10")], false),
    ("a > 5", &[], false),
    ("a >= 5", &[("a", "5")], true),
    ("a < 5", &[("a", "4")], true),
    ("a <= 5", &[("a", "6")], false),
    ("5 < a", &[("a", "6")], true),
    // float literal: Double.valueOf(property) (trims, takes exponents, NaN, Infinity, d/f)
    ("a = 1.0", &[("a", "1")], true),
    ("a = 1.0", &[("a", " 1 ")], true),
    ("a = 1.0", &[("a", "1e0")], true),
    ("a = 1.0", &[("a", "1d")], true),
    ("a = 1.0", &[("a", "0x1p0")], false),
    ("a > 5.0", &[("a", "5.5")], true),
    ("a > 1e1", &[("a", "11")], true),
    ("a > -1.5", &[("a", "0")], true),
    ("a > 1.5", &[("a", "NaN")], true),
    ("a < 1.5", &[("a", "NaN")], false),
    ("a = 1.5", &[("a", "NaN")], false),
    ("a < 1.5", &[("a", "-Infinity")], true),
    ("a > 1.5", &[("a", "infinity")], false),
    // not-equal and three-valued logic
    ("a <> 1", &[("a", "2")], true),
    ("a <> 1", &[("a", "1")], false),
    ("a <> 1", &[], false),
    ("a != 1", &[("a", "2")], true),
    ("NOT (a = 1)", &[("a", "2")], true),
    ("NOT (a = 1)", &[], false),
    ("NOT (a <> 1)", &[], false),
    ("a = 'x' OR b = 'y'", &[("b", "y")], true),
    ("a = 'x' OR b = 'y'", &[("a", "x")], true),
    ("a = 'x' OR b = 'y'", &[("a", "z")], false),
    ("a = 'x' AND b = 'y'", &[("a", "x")], false),
    ("NOT (a = 'x' AND b = 'y')", &[("a", "z")], true),
    ("NOT (a = 'x' AND b = 'y')", &[("a", "x")], false),
    ("NOT (a = 'x' OR b = 'y')", &[("a", "z")], false),
    ("NOT (a = 'x' OR b = 'y')", &[("a", "z"), ("b", "z")], true),
    // strings
    ("a = 'x'", &[("a", "x")], true),
    ("a = 'x'", &[("a", "X")], false),
    ("a = 'x'", &[], false),
    ("a = 'it''s'", &[("a", "it's")], true),
    ("a = ''", &[("a", "")], true),
    ("a = 'caf\u{e9}'", &[("a", "caf\u{e9}")], true),
    // IS [NOT] NULL
    ("a IS NULL", &[], true),
    ("a IS NULL", &[("a", "")], false),
    ("a IS NOT NULL", &[("a", "1")], true),
    ("a IS NOT NULL", &[], false),
    ("a = 'x' AND b IS NULL", &[("a", "x")], true),
    ("NULL IS NULL", &[], true),
    ("1 IS NULL", &[], false),
    // BETWEEN
    ("a BETWEEN 1 AND 5", &[("a", "3")], true),
    ("a BETWEEN 1 AND 5", &[("a", "1")], true),
    ("a BETWEEN 1 AND 5", &[("a", "5")], true),
    ("a BETWEEN 1 AND 5", &[("a", "6")], false),
    ("a BETWEEN 1 AND 5", &[], false),
    ("a BETWEEN 1 AND 5", &[("a", "3.5")], false),
    ("a BETWEEN 1.0 AND 5", &[("a", "3.5")], false),
    ("a BETWEEN 1.0 AND 5.0", &[("a", "3.5")], true),
    ("a BETWEEN -5 AND -1", &[("a", "-3")], true),
    ("a NOT BETWEEN 1 AND 5", &[("a", "6")], true),
    ("a NOT BETWEEN 1 AND 5", &[("a", "3")], false),
    ("a NOT BETWEEN 1 AND 5", &[], false),
    ("a NOT BETWEEN 5 AND 1", &[("a", "3")], true),
    // IN
    ("a IN ('x', 'y')", &[("a", "x")], true),
    ("a IN ('x', 'y')", &[("a", "z")], false),
    ("a IN ('x', 'y')", &[], false),
    ("a IN ('1', '2', '3', '4', '5', '6')", &[("a", "6")], true),
    ("a NOT IN ('x')", &[("a", "z")], true),
    ("a NOT IN ('x')", &[("a", "x")], false),
    ("a NOT IN ('x')", &[], false),
    ("(a) IN ('x')", &[("a", "x")], true),
    // CONTAINS / STARTSWITH / ENDSWITH: FALSE (not unknown) when missing
    ("a CONTAINS 'ell'", &[("a", "hello")], true),
    ("a CONTAINS 'ell'", &[], false),
    ("a NOT CONTAINS 'ell'", &[("a", "hello")], false),
    ("a NOT CONTAINS 'ell'", &[("a", "abc")], true),
    ("a NOT CONTAINS 'ell'", &[], false),
    ("NOT (a CONTAINS 'ell')", &[], true),
    ("a CONTAINS ''", &[("a", "x")], false),
    ("a NOT CONTAINS ''", &[("a", "x")], false),
    ("a STARTSWITH 'he'", &[("a", "hello")], true),
    ("a STARTSWITH 'lo'", &[("a", "hello")], false),
    ("a NOT STARTSWITH 'lo'", &[("a", "hello")], true),
    ("a ENDSWITH 'lo'", &[("a", "hello")], true),
    ("a NOT ENDSWITH 'lo'", &[("a", "hello")], false),
    ("(a = 1) CONTAINS 'x'", &[("a", "1")], false),
    // booleans: Boolean.valueOf(property) against TRUE/FALSE; the reverse order fails
    ("a = TRUE", &[("a", "true")], true),
    ("a = TRUE", &[("a", "TRUE")], true),
    ("a = TRUE", &[("a", "yes")], false),
    ("a = TRUE", &[], false),
    ("a = FALSE", &[("a", "false")], true),
    ("a = FALSE", &[("a", "no")], true),
    ("a <> FALSE", &[("a", "true")], true),
    ("TRUE = a", &[("a", "true")], false),
    ("a", &[("a", "true")], false),
    ("a", &[], false),
    ("NOT a", &[("a", "x")], true),
    ("NOT a", &[], false),
    ("TRUE", &[], true),
    ("FALSE", &[], false),
    ("NULL", &[], false),
    ("NOT NULL", &[], false),
    ("NOT FALSE", &[], true),
    ("TRUE = TRUE", &[], true),
    ("1 = TRUE", &[], false),
    // NOT binds to the operand right after it: (NOT a) = 1 is never TRUE
    ("NOT a = 1", &[("a", "1")], false),
    ("NOT a = 1", &[("a", "2")], false),
    ("NOT a = 1", &[], false),
    ("NOT a = TRUE", &[("a", "x")], true),
    // two properties: = compares strings, > compares doubles
    ("a = b", &[], true),
    ("a = b", &[("a", "1"), ("b", "1")], true),
    ("a = b", &[("a", "1"), ("b", "1.0")], false),
    ("a = b", &[("a", "1")], false),
    ("a = b", &[("b", "1")], false),
    ("a <> b", &[], false),
    ("a > b", &[("a", "10"), ("b", "9")], true),
    ("a >= b", &[("a", "1e3"), ("b", "999.5")], true),
    ("a > b", &[("a", "x"), ("b", "1")], false),
    // a failed conversion fails the whole expression; AND/OR stop at the deciding operand
    ("a = 1 OR b = 'y'", &[("a", "x"), ("b", "y")], false),
    ("b = 'y' OR a = 1", &[("a", "x"), ("b", "y")], true),
    ("a = 1 AND b = 2", &[("a", "2"), ("b", "x")], false),
    ("b = 2 AND a = 1", &[("a", "1"), ("b", "x")], false),
    ("NOT (a > 1)", &[("a", "x")], false),
    // negation of a property is unknown
    ("-a = -1", &[("a", "1")], false),
    ("-a IS NULL", &[("a", "1")], true),
    // precedence and chains
    ("(a = 1 OR b = 2) AND c = 3", &[("a", "1"), ("b", "0"), ("c", "0")], false),
    ("a = 1 OR b = 2 AND c = 3", &[("a", "1"), ("b", "0"), ("c", "0")], true),
    ("a = 1 = TRUE", &[("a", "1")], true),
    ("a = 1 = TRUE", &[("a", "2")], false),
    ("a > 1 = FALSE", &[("a", "0")], true),
    ("a IS NULL = TRUE", &[], true),
    // keywords in any case, comments, spacing
    ("a is not null and b in ('x') or c between 1 and 2", &[("a", "1"), ("b", "x")], true),
    ("a = 1 /* note */ AND b = 2 -- trailing note", &[("a", "1"), ("b", "2")], true),
    ("a = 1 -- first\nAND b = 2", &[("a", "1"), ("b", "3")], false),
    ("\ta\n=\r\n1\x0c", &[("a", "1")], true),
    ("a=1AND b=2", &[("a", "1"), ("b", "2")], true),
    // system properties
    ("TAGS = 'TagA'", &[("TAGS", "TagA")], true),
    ("TAGS IN ('TagA', 'TagB') AND KEYS CONTAINS 'k2'", &[("TAGS", "TagB"), ("KEYS", "k1 k2")], true),
    ("KEYS = 'k1'", &[("KEYS", "k1 k2")], false),
    ("$x_1 = 'v'", &[("$x_1", "v")], true),
    ("Color = 'red'", &[("color", "red")], false),
];

#[test]
fn semantics_table() {
    let mut wrong = Vec::new();
    for &(expr, pairs, want) in CASES {
        let got = filter(expr).matches(&props(pairs));
        if got != want {
            wrong.push(format!("`{expr}` with {pairs:?}: got {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), CASES.len(), wrong.join("\n"));
}

/// expression, line, column, part of the message
const REFUSED: &[(&str, usize, usize, &str)] = &[
    ("", 1, 1, "empty"),
    ("   ", 1, 1, "empty"),
    ("/* only a comment */", 1, 1, "empty"),
    ("a >", 1, 4, "expected a value, a property or `(`, found the end"),
    ("a = NULL", 1, 5, "use IS NULL"),
    ("NULL = a", 1, 1, "use IS NULL"),
    ("a > 'x'", 1, 5, "cannot be compared with >"),
    ("a >= TRUE", 1, 6, "cannot be compared with >="),
    ("a < NULL", 1, 5, "cannot be compared with <"),
    ("a > 1 > 2", 1, 1, "`a > 1` cannot be compared with >"),
    ("TRUE = 'x'", 1, 1, "`TRUE` cannot be compared with `'x'`"),
    ("a BETWEEN 5 AND 1", 1, 11, "lower bound of BETWEEN (5) is greater than the upper one (1)"),
    ("a BETWEEN 'a' AND 'b'", 1, 11, "cannot be compared with BETWEEN"),
    ("a BETWEEN NULL AND 1", 1, 11, "cannot be compared with BETWEEN"),
    ("a BETWEEN 1 OR 2", 1, 13, "expected AND between the bounds of BETWEEN"),
    ("1 IN ('x')", 1, 1, "IN needs a property on its left, found `1`"),
    ("NOT a IN ('x')", 1, 1, "NOT applies to the property alone"),
    ("a IN (1)", 1, 7, "expected a string in single quotes"),
    ("a IN ()", 1, 7, "expected a string in single quotes"),
    ("a IN ('x' 'y')", 1, 11, "expected `,` or `)` in the IN list"),
    ("a IN 'x'", 1, 6, "expected `(` after IN"),
    ("a CONTAINS b", 1, 12, "expected a string in single quotes after `CONTAINS`"),
    ("a = 1 b = 2", 1, 7, "unexpected property b after a complete condition"),
    ("a = 1)", 1, 6, "unexpected `)`"),
    ("a == 1", 1, 4, "expected a value, a property or `(`, found `=`"),
    ("a = 'x", 1, 5, "never closed"),
    ("a = 'x''", 1, 5, "never closed"),
    ("a = 1 /* open", 1, 7, "never closed"),
    ("1", 1, 1, "`1` is a value, not a condition"),
    ("'x'", 1, 1, "is a value, not a condition"),
    ("a AND 1", 1, 7, "`1` is a value, not a condition"),
    ("NOT 'x'", 1, 5, "is a value, not a condition"),
    ("-a", 1, 1, "is a value, not a condition"),
    ("a = 0.0", 1, 5, "float literals must be at least 4.9E-324"),
    ("a = 1e-400", 1, 5, "float literals must be at least"),
    ("a = 1e400", 1, 5, "out of range"),
    ("a = 99999999999999999999", 1, 5, "out of range"),
    ("a = 007", 1, 6, "unexpected number 0"),
    ("a = 1.5L", 1, 8, "unexpected property L"),
    ("a = #", 1, 5, "unexpected character `#`"),
    ("a = \"x\"", 1, 5, "single quotes"),
    ("caf\u{e9} = 1", 1, 4, "property names are ASCII"),
    ("a = . ", 1, 5, "unexpected `.`"),
    ("a NOT b", 1, 7, "expected CONTAINS, STARTSWITH, ENDSWITH, BETWEEN or IN after NOT"),
    ("a IS 5", 1, 6, "expected NULL or NOT NULL after IS"),
    ("a IS NOT 5", 1, 10, "expected NULL after IS NOT"),
    ("(a = 1", 1, 7, "expected `)`"),
    ("a = 1\nAND b >", 2, 8, "expected a value"),
    ("a = 1\r\nAND\rb >", 3, 4, "expected a value"),
    ("\u{e9}\u{e9} = 1 AND", 1, 1, "unexpected character"),
    ("a = '\u{e9}' AND", 1, 12, "expected a value"),
];

#[test]
fn refused_with_position() {
    let mut wrong = Vec::new();
    for &(expr, line, column, part) in REFUSED {
        match parse(expr) {
            Ok(_) => wrong.push(format!("`{expr}` accepted")),
            Err(e) if e.line != line || e.column != column || !e.message.contains(part) => wrong.push(format!(
                "`{expr}`: got \"{e}\" (line {}), want line {line} column {column} with \"{part}\"",
                e.line
            )),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{} of {} wrong:\n{}", wrong.len(), REFUSED.len(), wrong.join("\n"));
}

#[test]
fn error_display_gives_the_position() {
    let e = parse("a = 1 AND b >").unwrap_err();
    assert_eq!(e.to_string(), "at column 14: expected a value, a property or `(`, found the end of the expression");
    let e = parse("a = 1\nAND b >").unwrap_err();
    assert!(e.to_string().starts_with("at line 2, column 8: "), "{e}");
}

#[test]
fn limits() {
    // length
    let long = format!("a IN ({})", vec!["'x'"; 2000].join(","));
    assert!(long.len() > MAX_LEN);
    let e = parse(&long).unwrap_err();
    assert!(e.message.contains("more than the limit of 4096"), "{e}");
    let fits = format!("a IN ({})", vec!["'x'"; 1000].join(","));
    assert!(fits.len() <= MAX_LEN);
    assert!(filter(&fits).matches(&props(&[("a", "x")])));
    // long AND/OR chains are flat, not deep
    let chain = vec!["a = 1"; 400].join(" OR ");
    assert!(chain.len() <= MAX_LEN);
    assert!(filter(&chain).matches(&props(&[("a", "1")])));
    // parentheses
    let nested = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(filter(&nested(MAX_DEPTH)).matches(&props(&[("a", "1")])));
    let e = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert!(e.message.contains("nested deeper than 64"), "{e}");
    assert_eq!(e.column, MAX_DEPTH + 1);
    // unary operators: NOT x 62 over BoolCast(Prop) is 64 levels
    let nots = |n: usize| format!("{}a", "NOT ".repeat(n));
    assert!(parse(&nots(MAX_DEPTH - 2)).is_ok());
    assert!(parse(&nots(MAX_DEPTH - 1)).unwrap_err().message.contains("nested deeper"));
    assert!(parse(&format!("{}1", "- ".repeat(100))).unwrap_err().message.contains("nested deeper"));
    // operators applied to operators
    let contains = format!("a{}", " CONTAINS 'x'".repeat(MAX_DEPTH + 1));
    assert!(parse(&contains).unwrap_err().message.contains("nested deeper"));
    let eqs = format!("a{}", " = TRUE".repeat(MAX_DEPTH + 1));
    assert!(parse(&eqs).unwrap_err().message.contains("nested deeper"));
}

#[test]
fn pathological_inputs_are_quick() {
    let inputs = [
        "(".repeat(MAX_LEN),
        ")".repeat(MAX_LEN),
        "NOT ".repeat(MAX_LEN / 4),
        "-".repeat(MAX_LEN),
        "'".repeat(MAX_LEN),
        "''".repeat(MAX_LEN / 2),
        "/*".repeat(MAX_LEN / 2),
        "--".repeat(MAX_LEN / 2),
        "a = 1 OR ".repeat(MAX_LEN / 9),
        format!("a IN ({}", "'x', ".repeat(MAX_LEN / 5)),
        "1".repeat(MAX_LEN),
        "9.".repeat(MAX_LEN / 2),
        "\u{e9}".repeat(MAX_LEN / 2),
    ];
    let started = Instant::now();
    for input in &inputs {
        let _ = parse(input);
    }
    // generous: each is linear in its 4 KiB
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn compile_caches_by_text() {
    let a = compile("cache_probe = 1").unwrap();
    let b = compile("cache_probe = 1").unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.text(), "cache_probe = 1");
    assert_eq!(compile("cache_probe >").unwrap_err(), compile("cache_probe >").unwrap_err());
}

// ------------------------------------------------------------------------------ properties

/// A generated well-formed condition over properties `p0`..`p3` and its source text.
fn condition() -> impl Strategy<Value = String> {
    let prop = prop_oneof![Just("p0"), Just("p1"), Just("p2"), Just("p3")].prop_map(str::to_string);
    let number = prop_oneof![
        (-20i64..20).prop_map(|n| if n < 0 { format!("-{}", -n) } else { n.to_string() }),
        (1u32..400).prop_map(|n| format!("{}.5", n / 10)),
        Just("5000000000".to_string()),
    ];
    let text = "[a-c' ]{0,3}".prop_map(|s| format!("'{}'", s.replace('\'', "''")));
    let operand = prop_oneof![prop.clone(), number.clone()];
    let leaf =
        prop_oneof![
            (
                prop.clone(),
                prop_oneof![Just("="), Just("<>"), Just("!=")],
                prop_oneof![number.clone(), text.clone(), prop.clone()]
            )
                .prop_map(|(p, op, v)| format!("{p} {op} {v}")),
            (operand.clone(), prop_oneof![Just(">"), Just(">="), Just("<"), Just("<=")], operand.clone())
                .prop_map(|(l, op, r)| format!("{l} {op} {r}")),
            (prop.clone(), any::<bool>(), number.clone(), number.clone())
                .prop_map(|(p, not, a, b)| { format!("{p} {}BETWEEN {a} AND {b}", if not { "NOT " } else { "" }) }),
            (prop.clone(), any::<bool>(), proptest::collection::vec(text.clone(), 1..4))
                .prop_map(|(p, not, v)| format!("{p} {}IN ({})", if not { "NOT " } else { "" }, v.join(", "))),
            (prop.clone(), any::<bool>()).prop_map(|(p, not)| format!("{p} IS {}NULL", if not { "NOT " } else { "" })),
            (prop.clone(), any::<bool>(), prop_oneof![Just("CONTAINS"), Just("STARTSWITH"), Just("ENDSWITH")], text)
                .prop_map(|(p, not, op, t)| format!("{p} {}{op} {t}", if not { "NOT " } else { "" })),
            (prop.clone(), any::<bool>()).prop_map(|(p, b)| format!("{p} = {}", if b { "TRUE" } else { "FALSE" })),
            prop,
            Just("TRUE".to_string()),
            Just("NULL".to_string()),
        ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("NOT ({c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) OR ({b})")),
        ]
    })
    // BETWEEN with generated constant bounds may be in the wrong order: keep the valid ones.
    .prop_filter("valid", |c| parse(c).is_ok())
}

fn values() -> impl Strategy<Value = HashMap<String, String>> {
    let value = prop_oneof![
        (-25i64..25).prop_map(|n| n.to_string()),
        (0u32..300).prop_map(|n| format!("{}.{}", n / 10, n % 10)),
        prop_oneof![Just("NaN"), Just(" 7 "), Just("1e1"), Just("true"), Just("TRUE"), Just("x"), Just("")]
            .prop_map(str::to_string),
        "[a-c' ]{0,3}",
    ];
    proptest::collection::hash_map(prop_oneof![Just("p0"), Just("p1"), Just("p2"), Just("p3")], value, 0..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Three-valued truth of a condition (None: unknown), or Err for a failed evaluation.
fn truth(expr: &str, p: &HashMap<String, String>) -> Result<Option<bool>, ()> {
    let f = filter(expr);
    match eval(&f.expr, p) {
        Ok(Val::Bool(b)) => Ok(Some(b)),
        Ok(Val::Null) => Ok(None),
        Ok(other) => panic!("`{expr}` gave {other:?}, not a truth value"),
        Err(_) => Err(()),
    }
}

/// Pieces of SQL92 (and some not) for [`token_soup_never_panics`].
const WORDS: &[&str] = &[
    "a",
    "b",
    "NOT",
    "AND",
    "OR",
    "(",
    ")",
    "=",
    "<>",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "BETWEEN",
    "IN",
    "IS",
    "NULL",
    "TRUE",
    "FALSE",
    "CONTAINS",
    "STARTSWITH",
    "ENDSWITH",
    ",",
    "'x'",
    "'",
    "1",
    "1.5",
    "-",
    "+",
    "/*",
    "*/",
    "--",
    "\n",
    "0.0",
    "9999999999999999999999",
    "1e999",
    ".",
    "#",
    "\u{e9}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_never_panics(text in ".{0,120}", p in values()) {
        if let Ok(f) = parse(&text) {
            let _ = f.matches(&p);
        }
    }

    #[test]
    fn token_soup_never_panics(
        words in proptest::collection::vec(proptest::sample::select(WORDS), 0..40),
        p in values(),
    ) {
        let text = words.join(" ");
        if let Ok(f) = parse(&text) {
            let _ = f.matches(&p);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn generated_conditions_obey_three_valued_logic(a in condition(), b in condition(), p in values()) {
        let (ta, tb) = (truth(&a, &p), truth(&b, &p));
        // NOT flips TRUE/FALSE, keeps unknown and failures
        prop_assert_eq!(truth(&format!("NOT ({a})"), &p), ta.map(|t| t.map(|v| !v)));
        // AND/OR: left to right, the first deciding operand wins; a failure before it fails all
        let and = match ta {
            Err(()) => Err(()),
            Ok(Some(false)) => Ok(Some(false)),
            Ok(x) => tb.map(|y| match (x, y) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }),
        };
        prop_assert_eq!(truth(&format!("({a}) AND ({b})"), &p), and);
        let or = match ta {
            Err(()) => Err(()),
            Ok(Some(true)) => Ok(Some(true)),
            Ok(x) => tb.map(|y| match (x, y) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }),
        };
        prop_assert_eq!(truth(&format!("({a}) OR ({b})"), &p), or);
        // De Morgan holds, failures included
        prop_assert_eq!(
            truth(&format!("NOT (({a}) AND ({b}))"), &p),
            truth(&format!("(NOT ({a})) OR (NOT ({b}))"), &p)
        );
        // matching is "TRUE"
        prop_assert_eq!(filter(&a).matches(&p), ta == Ok(Some(true)));
    }

    #[test]
    fn missing_properties_never_match_comparisons(
        op in prop_oneof![Just("="), Just("<>"), Just(">"), Just(">="), Just("<"), Just("<=")],
        n in -100i64..100,
        not in any::<bool>(),
    ) {
        let expr = format!("{}(q {op} {n})", if not { "NOT " } else { "" });
        prop_assert!(!filter(&expr).matches(&props(&[])));
    }

    #[test]
    fn integers_compare_as_numbers(x in any::<i32>(), y in any::<i32>()) {
        let p = props(&[("a", &x.to_string())]);
        let lit = if y < 0 { format!("-{}", i64::from(y).abs()) } else { y.to_string() };
        prop_assert_eq!(filter(&format!("a > {lit}")).matches(&p), x > y);
        prop_assert_eq!(filter(&format!("a = {lit}")).matches(&p), x == y);
        prop_assert_eq!(filter(&format!("a <= {lit}")).matches(&p), x <= y);
    }
}
