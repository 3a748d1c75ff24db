//! Offset-reset scenarios with the official SDKs (gateway only): a consumer that is running has
//! consumed everything; the test resets its group to a point in time through the admin API
//! (`POST /api/v1/groups/{g}/reset-offset`); the same consumer process, not restarted, must get
//! exactly the messages stored at or after that time once more, and nothing else. A second
//! scenario SIGKILLs the gateway right after the reset: a consumer started after the restart
//! must still see the reset.
//!
//! The drivers' modes `reset-simple-consume` / `reset-push-consume` (`sdk/MESSAGE_TYPES.md`)
//! record every delivery in order and print `PROGRESS received=K` after each. Figures go to
//! stderr as one `[offsets]` line per run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::gateway_process::Stop;
use crate::scenario::{Ctx, unique};
use crate::sdk::{self, Mode, Outcome, Run, Running, Sdk};

/// Messages stored before the reset's time, and after it.
const BEFORE: usize = 20;
const AFTER: usize = 12;
/// The topic's queues (the reset searches each one for its time).
const QUEUES: u32 = 4;
/// Pause on each side of the reset's time, so no message is stored near it.
const GAP: Duration = Duration::from_millis(1500);
/// The consumer keeps receiving this long after its goal, to catch deliveries that must not come.
const LINGER_MS: u64 = 4000;
/// The consumer's own budget, and the hard limit of any driver.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(90);
const KILL_AFTER: Duration = Duration::from_secs(150);

/// Which consumer the driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Simple,
    Push,
}

impl Consumer {
    fn mode(self) -> &'static str {
        match self {
            Consumer::Simple => "reset-simple-consume",
            Consumer::Push => "reset-push-consume",
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One admin API call; the status and the body as JSON (`Null` if it is not JSON).
fn admin(ctx: &Ctx, method: &str, path: &str, body: Option<&str>) -> (u16, Value, String) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.gateway.http_port));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let (status, text) = rt.block_on(crate::client::http(addr, method, path, body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

/// Per-scenario state: the gateway, topic and group, and the drivers' outcomes for failure
/// messages.
struct Scenario {
    ctx: Ctx,
    sdk: Sdk,
    topic: String,
    group: String,
}

impl Scenario {
    fn start(test: &'static str, sdk: Sdk) -> Option<Scenario> {
        let mut ctx = Ctx::start(test, &[sdk])?;
        // The whole scenario, JVM starts and PushConsumer shutdowns included.
        ctx.deadline = Instant::now() + Duration::from_secs(240);
        let (topic, group) = (unique("topic", test), unique("group", test));
        let body = format!(r#"{{"queueNums":{QUEUES},"messageType":"NORMAL"}}"#);
        let (status, _, text) = admin(&ctx, "PUT", &format!("/api/v1/topics/{topic}"), Some(&body));
        assert_eq!(status, 200, "{test}: creating the topic: {text}");
        let (status, _, text) = admin(&ctx, "PUT", &format!("/api/v1/groups/{group}"), Some("{}"));
        assert_eq!(status, 200, "{test}: creating the group: {text}");
        Some(Scenario { ctx, sdk, topic, group })
    }

    /// A driver run of this scenario's SDK on its topic.
    fn run(&self, mode: Mode, group: &str, prefix: &str, count: usize, extra: Vec<String>) -> Run {
        let left = self.ctx.deadline.saturating_duration_since(Instant::now());
        Run {
            sdk: self.sdk,
            mode,
            endpoint: self.ctx.gateway.endpoint(),
            topic: self.topic.clone(),
            group: group.to_string(),
            count,
            prefix: prefix.to_string(),
            tag: "e2e".to_string(),
            timeout: DRIVER_TIMEOUT,
            kill_after: KILL_AFTER.min(left + Duration::from_secs(60)),
            extra_args: extra,
        }
    }

    fn fail(&self, what: &str, outcomes: &[&Outcome]) -> ! {
        let outputs: String = outcomes.iter().map(|o| o.describe()).collect();
        panic!(
            "{} [{}]: {what}\n{outputs}--- gateway log (tail):\n{}",
            self.ctx.test,
            self.sdk.name(),
            self.ctx.gateway.log_tail(60)
        )
    }

    /// Sends `count` messages `<prefix>-<i>`; their ids.
    fn produce(&self, prefix: &str, count: usize) -> Vec<String> {
        let r = self.run(Mode::Produce, "", prefix, count, Vec::new());
        let outcome = sdk::spawn(&r, self.ctx.path()).and_then(Running::wait).unwrap_or_else(|e| panic!("{e:#}"));
        match outcome.report() {
            Some(rep) if rep.ok && rep.ids.len() == count => rep.ids.clone(),
            _ => self.fail(&format!("the producer did not send {count} messages"), &[&outcome]),
        }
    }

    fn consumer(&self, kind: Consumer, expect: usize) -> Running {
        let extra = ["--expect", &expect.to_string(), "--linger-ms", &LINGER_MS.to_string(), "--progress"]
            .map(String::from)
            .to_vec();
        let r = self.run(Mode::Named(kind.mode()), &self.group, "r", expect, extra);
        sdk::spawn(&r, self.ctx.path()).unwrap_or_else(|e| panic!("{}: {e:#}", self.ctx.test))
    }

    /// Waits for the consumer to report `n` deliveries, then for the gateway to show every
    /// queue consumed and nothing in flight (the acks arrived).
    fn wait_consumed(&self, consumer: &mut Running, n: usize) {
        let until = Instant::now() + Duration::from_secs(60);
        while consumer.progress() < n {
            if consumer.exited() || Instant::now() > until {
                panic!(
                    "{}: the consumer got {} of {n} deliveries before the reset (exited: {}); stdout:\n{}",
                    self.ctx.test,
                    consumer.progress(),
                    consumer.exited(),
                    consumer.stdout()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut last = Value::Null;
        while Instant::now() < until {
            last = self.offsets();
            let queues = last["topics"][0]["queues"].as_array().cloned().unwrap_or_default();
            let settled = queues.len() == QUEUES as usize
                && queues.iter().all(|q| q["lag"].as_i64() == Some(0) && q["inFlight"].as_i64() == Some(0));
            if settled {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{}: the group's progress never showed everything acked: {last}", self.ctx.test);
    }

    /// `GET /api/v1/groups/{g}/offsets?topic=T`.
    fn offsets(&self) -> Value {
        let path = format!("/api/v1/groups/{}/offsets?topic={}", self.group, self.topic);
        let (status, v, text) = admin(&self.ctx, "GET", &path, None);
        assert_eq!(status, 200, "{}: GET {path}: {text}", self.ctx.test);
        v
    }

    /// Resets the group to `at_ms`; checks the answer (every queue was at its end and moves to
    /// its first message after the time: `AFTER` messages in all) and returns the offsets.
    fn reset(&self, at_ms: i64) -> BTreeMap<i64, i64> {
        let path = format!("/api/v1/groups/{}/reset-offset", self.group);
        let body = format!(r#"{{"topic":"{}","timestamp":{at_ms}}}"#, self.topic);
        let (status, v, text) = admin(&self.ctx, "POST", &path, Some(&body));
        assert_eq!(status, 200, "{}: POST {path} {body}: {text}", self.ctx.test);
        let queues = v["queues"].as_array().cloned().unwrap_or_default();
        assert_eq!(queues.len(), QUEUES as usize, "{}: {text}", self.ctx.test);
        let mut again = 0;
        let mut offsets = BTreeMap::new();
        for q in &queues {
            let (prev, offset, max) = (q["previousOffset"].as_i64(), q["offset"].as_i64(), q["maxOffset"].as_i64());
            assert_eq!(prev, max, "{}: every queue was consumed to its end: {text}", self.ctx.test);
            again += max.unwrap_or(0) - offset.unwrap_or(0);
            offsets.insert(q["queueId"].as_i64().unwrap_or(-1), offset.unwrap_or(-1));
        }
        assert_eq!(
            again, AFTER as i64,
            "{}: the reset must go back over exactly the later messages: {text}",
            self.ctx.test
        );
        offsets
    }
}

/// What a consumer's deliveries from `from` on got wrong, compared with `want` (each exactly
/// once, nothing else).
fn replay_problems(deliveries: &[String], from: usize, want: &[String]) -> Vec<String> {
    let tail = deliveries.get(from..).unwrap_or_default();
    let mut problems = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in tail {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let want_set: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = want_set.iter().filter(|id| !counts.contains_key(**id)).collect();
    let extra: Vec<&&str> = counts.keys().filter(|id| !want_set.contains(**id)).collect();
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if !missing.is_empty() {
        problems.push(format!("{} message(s) stored after the time did not come again: {missing:?}", missing.len()));
    }
    if !extra.is_empty() {
        problems.push(format!("{} message(s) stored before the time came again: {extra:?}", extra.len()));
    }
    if !twice.is_empty() {
        problems.push(format!("delivered more than once after the reset: {twice:?}"));
    }
    problems
}

fn strings(outcome: &Outcome, key: &str) -> Vec<String> {
    let list = outcome.report().and_then(|r| r.extra.get(key)).and_then(Value::as_array).cloned().unwrap_or_default();
    list.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
}

/// The consumer keeps running across the reset: it consumed the `BEFORE` + `AFTER` messages,
/// the group is reset to a time between them, and the same process gets the `AFTER` ones again,
/// each once, and nothing else.
pub fn reset_while_consuming(test: &'static str, sdk: Sdk, kind: Consumer) {
    let Some(s) = Scenario::start(test, sdk) else { return };
    let first = BEFORE + AFTER;
    let mut consumer = s.consumer(kind, first + AFTER);
    let old = s.produce("a", BEFORE);
    std::thread::sleep(GAP);
    let at = now_ms();
    std::thread::sleep(GAP);
    let new = s.produce("b", AFTER);
    s.wait_consumed(&mut consumer, first);
    let reset_at = now_ms();
    s.reset(at);
    let outcome = consumer.wait().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let Some(report) = outcome.report() else { s.fail("the consumer printed no RESULT", &[&outcome]) };
    if report.sdk_version.as_deref() != sdk.version() {
        s.fail(&format!("driver ran SDK {:?}, expected {:?}", report.sdk_version, sdk.version()), &[&outcome]);
    }
    let deliveries = strings(&outcome, "deliveries");
    let mut problems = Vec::new();
    if !report.ok {
        problems.push(format!("the consumer did not reach {} deliveries (got {})", first + AFTER, deliveries.len()));
    }
    let all: Vec<String> = old.iter().chain(&new).cloned().collect();
    problems.extend(
        replay_problems(&deliveries[..first.min(deliveries.len())], 0, &all)
            .into_iter()
            .map(|p| format!("before the reset: {p}")),
    );
    problems.extend(replay_problems(&deliveries, first, &new));
    if !problems.is_empty() {
        s.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &[&outcome]);
    }
    let at_ms = report.extra.get("delivered_at").and_then(Value::as_array).cloned().unwrap_or_default();
    let last = at_ms.last().and_then(Value::as_i64).unwrap_or(reset_at);
    let first_again = at_ms.get(first).and_then(Value::as_i64).unwrap_or(reset_at);
    eprintln!(
        "[offsets] {} {:?}: {BEFORE}+{AFTER} consumed, reset to the time between them over {QUEUES} queues; \
         the running consumer got the {AFTER} later ones again, first {} ms and last {} ms after the reset call",
        sdk.name(),
        kind,
        first_again - reset_at,
        last - reset_at
    );
    let after = s.offsets();
    assert_eq!(after["topics"][0]["lag"].as_i64(), Some(0), "{test}: consumed to the end again: {after}");
}

/// A reset survives a gateway crash right after it: the consumer stopped after consuming
/// everything, the group is reset to a time, the gateway is SIGKILLed at once and restarted,
/// and a new consumer gets exactly the messages stored after the time.
pub fn reset_survives_a_crash(test: &'static str, sdk: Sdk, kind: Consumer) {
    let Some(mut s) = Scenario::start(test, sdk) else { return };
    let first = BEFORE + AFTER;
    let mut consumer = s.consumer(kind, first);
    s.produce("a", BEFORE);
    std::thread::sleep(GAP);
    let at = now_ms();
    std::thread::sleep(GAP);
    let new = s.produce("b", AFTER);
    s.wait_consumed(&mut consumer, first);
    let outcome = consumer.wait().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    if !outcome.report().is_some_and(|r| r.ok) {
        s.fail("the first consumer did not finish", &[&outcome]);
    }
    let offsets = s.reset(at);
    s.ctx.gateway.stop(Stop::Kill).unwrap_or_else(|e| panic!("{test}: SIGKILL: {e:#}"));
    s.ctx.gateway.restart().unwrap_or_else(|e| panic!("{test}: restart: {e:#}"));
    let after_restart = s.offsets();
    for q in after_restart["topics"][0]["queues"].as_array().cloned().unwrap_or_default() {
        let id = q["queueId"].as_i64().unwrap_or(-1);
        assert_eq!(
            q["consumerOffset"].as_i64(),
            offsets.get(&id).copied(),
            "{test}: queue {id} after the restart: {after_restart}"
        );
    }
    let consumer = s.consumer(kind, AFTER);
    let outcome = consumer.wait().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let deliveries = strings(&outcome, "deliveries");
    let mut problems = replay_problems(&deliveries, 0, &new);
    if !outcome.report().is_some_and(|r| r.ok) {
        problems.push("the consumer after the restart did not reach its goal".into());
    }
    if !problems.is_empty() {
        s.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &[&outcome]);
    }
    eprintln!(
        "[offsets] {} {:?}: reset, SIGKILL, restart: the group's offsets were kept and a new consumer got the {AFTER} later messages",
        sdk.name(),
        kind
    );
}
