//! SQL92 filter scenarios through the SDK drivers' `filter-produce` / `filter-consume` modes
//! (`sdk/MESSAGE_TYPES.md`): a known set of messages with typed-looking user properties
//! (integers, floats, strings, booleans as strings, some missing), tags and keys is sent; then
//! one SimpleConsumer per expression of a matrix (each with its own group) receives what its
//! SQL92 subscription lets through. Each received set is checked against an oracle evaluated
//! here: a small hand-written predicate per expression over the known property values (Apache
//! RocketMQ's semantics: three-valued logic, Java number conversions, a failed conversion
//! fails the whole expression), independent of the gateway's evaluator. Bad expressions must
//! reach the application as ILLEGAL_FILTER_EXPRESSION with the position, whether the
//! expression came with the client's Settings at start-up or first with ReceiveMessage (a
//! subscription changed after start): a SimpleConsumer meets it on `receive` (the gateway
//! accepts its Settings; the Java SDK's start-up failure would not carry the reason).
//!
//! Runs against the gateway, or Apache RocketMQ 5.5.0 with `RMQ_TYPES_TARGET=apache` (to hold
//! the oracle against the reference; Apache's own error texts for bad expressions are only
//! reported, not checked). Prints one `[filters]` figures line per run on stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apache::TopicType;
use crate::sdk::Sdk;
use crate::types::{Target, TypesCtx};

/// How many messages the producer sends.
const MESSAGES: usize = 40;
/// The consumers' budget for receiving (all messages are stored before they start).
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a consumer keeps receiving after it got what the oracle expects (to catch
/// messages that must not come).
const LINGER_MS: u64 = 2500;

/// One message of the data set.
#[derive(Debug, Clone)]
pub struct Msg {
    pub body: String,
    pub tag: Option<&'static str>,
    pub keys: Vec<&'static str>,
    pub props: BTreeMap<&'static str, &'static str>,
}

impl Msg {
    fn get(&self, name: &str) -> Option<&'static str> {
        self.props.get(name).copied()
    }
}

/// Cycles through `values` then "missing", so properties of different periods combine.
fn pick(values: &[&'static str], i: usize) -> Option<&'static str> {
    values.get(i % (values.len() + 1)).copied()
}

/// The messages: bodies `m00`..; user properties `n` (integers, and some that are not),
/// `price` (floats), `color`, `flag` (booleans as strings), `note`, `code` (7 written in
/// several ways); tags TagA/TagB/TagC or none; keys `k1`, `k1 k2` or none. Each property is
/// missing on some messages. Values are never blank (the Java SDK refuses blank values).
pub fn dataset() -> Vec<Msg> {
    let n = ["3", "12", "-4", "7", "0", "20", "x", "5", "+8", "2.5", "11", "007", "-1"];
    let price = ["9.99", "10", "1e2", "NaN", " 12.5 ", "0.5", "abc", "-3", "9.989"];
    let color = ["red", "green", "blue", "Red", "it's red"];
    let flag = ["true", "TRUE", "false", "yes"];
    let note = ["hello world", "it's here", "say hello", "hello", "x-hello-x", "foo"];
    let code = ["7", " 7", "07", "7.0", "+7", "8"];
    let tags = ["TagA", "TagB", "TagC"];
    (0..MESSAGES)
        .map(|i| {
            let props = [
                ("n", pick(&n, i)),
                ("price", pick(&price, i)),
                ("color", pick(&color, i)),
                ("flag", pick(&flag, i)),
                ("note", pick(&note, i)),
                ("code", pick(&code, i)),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            let keys = match i % 3 {
                0 => vec!["k1"],
                1 => vec!["k1", "k2"],
                _ => vec![],
            };
            Msg { body: format!("m{i:02}"), tag: pick(&tags, i), keys, props }
        })
        .collect()
}

// ----------------------------------------------------------------------------------- oracle

/// A truth value in SQL's three-valued logic, or `Err` when Apache's evaluation throws (a
/// string that does not convert to the number it is compared with): the message then does
/// not match whatever the rest says.
type Tri = Result<Option<bool>, ()>;

/// Java `Integer.valueOf` for the data set's values (sign, ASCII digits, nothing else).
fn java_int(s: &str) -> Result<i64, ()> {
    s.parse::<i32>().map(i64::from).map_err(|_| ())
}

/// Java `Double.valueOf` for the data set's values (surrounding spaces ignored, `NaN`).
fn java_double(s: &str) -> Result<f64, ()> {
    match s.trim() {
        "NaN" => Ok(f64::NAN),
        t => t.parse().map_err(|_| ()),
    }
}

/// `prop <op> <integer literal>`: unknown if missing, a failure if not an integer.
fn int_cmp(m: &Msg, prop: &str, test: impl Fn(i64) -> bool) -> Tri {
    m.get(prop).map(|v| java_int(v).map(&test)).transpose()
}

/// `prop <op> <float literal>` (Java compares NaN above every number).
fn float_cmp(m: &Msg, prop: &str, test: impl Fn(f64) -> bool) -> Tri {
    m.get(prop).map(|v| java_double(v).map(|d| if d.is_nan() { test(f64::INFINITY) } else { test(d) })).transpose()
}

/// `prop = 'text'` and other string tests: unknown if missing.
fn text(m: &Msg, prop: &str, test: impl Fn(&str) -> bool) -> Tri {
    Ok(m.get(prop).map(test))
}

fn not(t: Tri) -> Tri {
    t.map(|v| v.map(|b| !b))
}

/// SQL AND, left to right, stopping at the first FALSE.
fn and(a: Tri, b: impl FnOnce() -> Tri) -> Tri {
    match a? {
        Some(false) => Ok(Some(false)),
        x => Ok(match (x, b()?) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }),
    }
}

/// SQL OR, left to right, stopping at the first TRUE.
fn or(a: Tri, b: impl FnOnce() -> Tri) -> Tri {
    match a? {
        Some(true) => Ok(Some(true)),
        x => Ok(match (x, b()?) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }),
    }
}

/// One expression of the matrix and which messages it lets through.
pub struct Case {
    pub name: &'static str,
    pub expression: &'static str,
    pub oracle: fn(&Msg) -> Tri,
}

/// The matrix: comparisons of each kind, BETWEEN, IN, IS NULL, CONTAINS/STARTSWITH/ENDSWITH,
/// tags and keys, booleans, AND/OR/NOT with unknowns, conversions that fail.
pub fn cases() -> Vec<Case> {
    vec![
        Case { name: "int_gt", expression: "n > 10", oracle: |m| int_cmp(m, "n", |v| v > 10) },
        Case {
            name: "int_between",
            expression: "n BETWEEN 0 AND 7",
            oracle: |m| int_cmp(m, "n", |v| (0..=7).contains(&v)),
        },
        Case { name: "int_ne", expression: "n <> 5", oracle: |m| int_cmp(m, "n", |v| v != 5) },
        Case { name: "not_lt", expression: "NOT (n < 0)", oracle: |m| not(int_cmp(m, "n", |v| v < 0)) },
        Case { name: "float_ge", expression: "price >= 9.99", oracle: |m| float_cmp(m, "price", |v| v >= 9.99) },
        Case {
            name: "float_not_between",
            expression: "price NOT BETWEEN 0.5 AND 10",
            oracle: |m| {
                // Apache: price < 0.5 OR price > 10 (10 an integer: Integer.valueOf(price)).
                or(float_cmp(m, "price", |v| v < 0.5), || int_cmp(m, "price", |v| v > 10))
            },
        },
        Case {
            name: "in",
            expression: "color IN ('red', 'green')",
            oracle: |m| text(m, "color", |c| c == "red" || c == "green"),
        },
        Case { name: "not_in", expression: "color NOT IN ('red')", oracle: |m| text(m, "color", |c| c != "red") },
        Case { name: "is_null", expression: "color IS NULL", oracle: |m| Ok(Some(m.get("color").is_none())) },
        Case {
            name: "tags",
            expression: "TAGS = 'TagA' OR TAGS = 'TagC'",
            oracle: |m| Ok(m.tag.map(|t| t == "TagA" || t == "TagC")),
        },
        Case {
            name: "bool_true",
            expression: "flag = TRUE",
            oracle: |m| text(m, "flag", |f| f.eq_ignore_ascii_case("true")),
        },
        Case {
            name: "bool_false",
            expression: "flag = FALSE",
            oracle: |m| text(m, "flag", |f| !f.eq_ignore_ascii_case("true")),
        },
        Case {
            name: "contains",
            expression: "note CONTAINS 'hello' AND note NOT STARTSWITH 'hello'",
            // CONTAINS is FALSE (not unknown) on a missing property
            oracle: |m| Ok(Some(m.get("note").is_some_and(|t| t.contains("hello") && !t.starts_with("hello")))),
        },
        Case {
            name: "endswith_or_keys",
            expression: "note ENDSWITH 'here' OR KEYS CONTAINS 'k2'",
            oracle: |m| Ok(Some(m.get("note").is_some_and(|t| t.ends_with("here")) || m.keys.contains(&"k2"))),
        },
        Case { name: "code_int", expression: "code = 7", oracle: |m| int_cmp(m, "code", |v| v == 7) },
        Case { name: "code_float", expression: "code = 7.0", oracle: |m| float_cmp(m, "code", |v| v == 7.0) },
        Case {
            name: "mixed",
            expression: "(n > 5 AND color = 'red') OR flag = FALSE",
            oracle: |m| {
                let left = and(int_cmp(m, "n", |v| v > 5), || text(m, "color", |c| c == "red"));
                or(left, || text(m, "flag", |f| !f.eq_ignore_ascii_case("true")))
            },
        },
        Case {
            name: "failure_first",
            expression: "n = 5 OR TAGS = 'TagB'",
            oracle: |m| or(int_cmp(m, "n", |v| v == 5), || Ok(m.tag.map(|t| t == "TagB"))),
        },
        Case {
            name: "both_missing",
            // Apache: two missing properties are equal
            expression: "nosuch = alsonot",
            oracle: |_| Ok(Some(true)),
        },
        Case {
            name: "not_binds_tight",
            // (NOT color) = 'red': a boolean compared with a string fails, a missing color is unknown
            expression: "NOT color = 'red'",
            oracle: |m| if m.get("color").is_some() { Err(()) } else { Ok(None) },
        },
    ]
}

/// Expressions that must be refused: when the consumer subscribes with it (`start`: in its
/// Settings; `late`: after start, so the server first sees it in ReceiveMessage), the
/// expression, and what the error must say (gateway; always on receive).
pub const REFUSED: &[(&str, &str, &str, &str)] = &[
    ("bad_at_start", "start", "n > ", "at column 5: expected a value"),
    ("bad_null_at_start", "start", "color = NULL", "at column 9: NULL cannot be compared"),
    ("bad_on_receive", "late", "color = 'red' AND (n >", "at column 23: expected a value"),
];

/// Which bodies the oracle lets through for `case`.
fn expected(case: &Case, data: &[Msg]) -> BTreeSet<String> {
    data.iter().filter(|m| (case.oracle)(m) == Ok(Some(true))).map(|m| m.body.clone()).collect()
}

fn figures(target: Target, sdk: Sdk, text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[filters] {:<7} {:<6} {text}", target.name(), sdk.name());
}

/// The matrix for one SDK: produce the data set, consume with every expression, compare.
pub fn sql92_matrix(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else { return };
    let data = dataset();
    let cases = cases();
    let topic = ctx.topic(TopicType::Normal, 4);
    let dir = ctx.path().to_path_buf();

    let mut rows = String::new();
    for m in &data {
        let props: Vec<String> = m.props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push_str(&format!("{}\t{}\t{}\t{}\n", m.body, m.tag.unwrap_or(""), m.keys.join(" "), props.join("\t")));
    }
    let messages = dir.join("messages.tsv");
    std::fs::write(&messages, rows).unwrap();
    let t0 = Instant::now();
    let messages_arg = messages.to_string_lossy().into_owned();
    let producer = ctx.run(
        "filter-produce",
        &topic,
        "",
        "filters",
        data.len(),
        Duration::from_secs(60),
        &["--messages", &messages_arg],
    );
    let produce_ms = t0.elapsed().as_millis();
    if !producer.ok() || producer.num("sent") != data.len() as i64 {
        ctx.fail(&format!("the producer sent {} of {} messages", producer.num("sent"), data.len()), &[&producer]);
    }

    // One consumer group per expression (Apache needs them created).
    let names: Vec<&str> = cases.iter().map(|c| c.name).chain(REFUSED.iter().map(|r| r.0)).collect();
    let mut groups = ctx.plain_groups(&names).into_iter();
    let mut filters = String::new();
    let mut want: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (case, group) in cases.iter().zip(groups.by_ref()) {
        let expect = expected(case, &data);
        filters.push_str(&format!("{}\t{group}\tstart\t{}\t{}\n", case.name, expect.len(), case.expression));
        want.insert(case.name, expect);
    }
    for ((name, how, expression, _), group) in REFUSED.iter().zip(groups) {
        filters.push_str(&format!("{name}\t{group}\t{how}\t-1\t{expression}\n"));
    }
    let filters_file = dir.join("filters.tsv");
    std::fs::write(&filters_file, filters).unwrap();
    let filters_arg = filters_file.to_string_lossy().into_owned();
    let linger = LINGER_MS.to_string();
    let t1 = Instant::now();
    let consumer = ctx.run(
        "filter-consume",
        &topic,
        "",
        "filters",
        data.len(),
        CONSUME_TIMEOUT,
        &["--filters", &filters_arg, "--linger-ms", &linger, "--parallel", "8"],
    );
    let consume_ms = t1.elapsed().as_millis();

    let results = consumer.fields.get("filters").and_then(Value::as_object).cloned().unwrap_or_default();
    let field = |name: &str, key: &str| results.get(name).and_then(|r| r.get(key)).cloned().unwrap_or(Value::Null);
    let mut problems = Vec::new();
    for case in &cases {
        let expect = &want[case.name];
        let got: BTreeSet<String> = field(case.name, "bodies")
            .as_array()
            .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let missing: Vec<_> = expect.difference(&got).collect();
        let extra: Vec<_> = got.difference(expect).collect();
        if !missing.is_empty() || !extra.is_empty() {
            problems.push(format!(
                "{} `{}`: expected {} messages, got {}; missing {missing:?}, unexpected {extra:?}",
                case.name,
                case.expression,
                expect.len(),
                got.len()
            ));
        }
        for key in ["startup_error", "receive_error"] {
            if !field(case.name, key).is_null() {
                problems.push(format!("{} `{}`: {key} {}", case.name, case.expression, field(case.name, key)));
            }
        }
        if field(case.name, "duplicates").as_i64().unwrap_or(0) > 0 {
            problems.push(format!("{}: duplicates {}", case.name, field(case.name, "duplicates")));
        }
    }
    let mut refusals = Vec::new();
    for (name, how, expression, says) in REFUSED {
        let (startup, receive) = (field(name, "startup_error"), field(name, "receive_error"));
        let error = match (startup.as_str(), receive.as_str()) {
            (Some(e), _) => format!("at start-up: {e}"),
            (None, Some(e)) => format!("on receive: {e}"),
            _ => String::new(),
        };
        let outcome = if error.is_empty() { "accepted!" } else { &error };
        refusals.push(format!("{name} ({how}) `{expression}` -> {outcome}"));
        if ctx.target != Target::Gateway {
            continue;
        }
        // A SimpleConsumer meets the error on receive, however it subscribed.
        let want_where = "on receive";
        let code_named = error.contains("ILLEGAL_FILTER_EXPRESSION") || error.contains("40010");
        if !error.starts_with(want_where) || !code_named || !error.contains(says) {
            problems.push(format!(
                "{name} `{expression}`: expected ILLEGAL_FILTER_EXPRESSION {want_where} saying \"{says}\", got: {}",
                if error.is_empty() { "no error" } else { &error }
            ));
        }
    }
    let matched: usize = want.values().map(BTreeSet::len).sum();
    figures(
        ctx.target,
        sdk,
        &format!(
            "{} expressions x {} messages ({matched} deliveries expected) + {} refused; produce {produce_ms} ms, \
             consume {consume_ms} ms (driver {} ms)",
            cases.len(),
            data.len(),
            REFUSED.len(),
            consumer.num("elapsed_ms")
        ),
    );
    for r in &refusals {
        figures(ctx.target, sdk, r);
    }
    if !problems.is_empty() {
        ctx.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &[&consumer]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oracle covers every outcome: matches, non-matches, unknowns and failures.
    #[test]
    fn the_matrix_is_not_trivial() {
        let data = dataset();
        for case in cases() {
            let n = expected(&case, &data).len();
            if case.name != "both_missing" && case.name != "not_binds_tight" {
                assert!(n > 0 && n < data.len(), "{}: {n} of {} match", case.name, data.len());
            }
        }
        let outcomes: BTreeSet<String> =
            cases().iter().flat_map(|c| data.iter().map(move |m| format!("{:?}", (c.oracle)(m)))).collect();
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    }
}
