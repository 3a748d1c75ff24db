//! The scenario harness shared by the end-to-end test files: one gateway process and temp
//! dir per test ([`Ctx`]), SDK driver runs with a per-scenario time budget, and the checks a
//! consumer's report must pass ([`Expect`]): N sent, N distinct bodies received and acked,
//! message ids equal to the producer's, no digest mismatch, no duplicate unless the scenario
//! provokes one. Also the scenarios several SDKs' tests share: produce then consume, a gateway
//! restart between sending and consuming, a consumer that keeps running across a gateway
//! SIGKILL ([`Ctx::consume_across_kill`]), and a PushConsumer whose listener fails some
//! messages once ([`Ctx::push_consume_failing_listener`], [`push_problems`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::gateway_process::{Gateway, Stop, gateway_binary};
use crate::postgres::Postgres;
use crate::sdk::{self, Mode, Outcome, Report, Run, Running, Sdk};

/// A driver's budget for its main loop (sending, or receiving until all N arrived).
pub const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Hard limit for a whole scenario (all its drivers, restarts included): drivers still
/// running when it is reached are killed.
pub const SCENARIO_BUDGET: Duration = Duration::from_secs(115);
/// What a driver needs beyond its main loop (startup; PushConsumer shutdown waits for the
/// in-flight long polls, about 23 s).
pub const DRIVER_SLACK: Duration = Duration::from_secs(40);

/// In [`Ctx::push_consume_failing_listener`] the listener fails the first delivery of every
/// `FAIL_EVERY`th message (body index i with (i + 1) % FAIL_EVERY == 0).
pub const FAIL_EVERY: usize = 5;

/// Writes to the real stderr, bypassing the test harness capture, so a skip is visible.
pub fn shout(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n{}\n{text}\n{}\n", "!".repeat(78), "!".repeat(78));
}

pub fn count() -> usize {
    std::env::var("RMQ_E2E_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

/// A unique, valid topic/group name.
pub fn unique(kind: &str, test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("e2e_{kind}_{test}_{}_{nanos}", std::process::id())
}

/// Where a scenario's gateway keeps its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// The default: `sqlite://<dataDir>/meta.db`.
    Sqlite,
    /// A throwaway PostgreSQL started for the scenario (`services/postgres.sh`).
    Postgres,
}

impl Metadata {
    /// `RMQ_E2E_METADATA=postgres` runs every [`Ctx::start`] scenario on PostgreSQL; anything
    /// else (or unset) on SQLite.
    pub fn from_env() -> Metadata {
        match std::env::var("RMQ_E2E_METADATA") {
            Ok(v) if v.eq_ignore_ascii_case("postgres") || v.eq_ignore_ascii_case("postgresql") => Metadata::Postgres,
            _ => Metadata::Sqlite,
        }
    }
}

/// One test's gateway, its PostgreSQL (if any) and temp dir. Field order matters: the gateway
/// is killed before its database and the directory are removed. The directory is kept (and
/// its path printed) if the test fails.
pub struct Ctx {
    pub test: &'static str,
    pub deadline: Instant,
    pub gateway: Gateway,
    pub postgres: Option<Postgres>,
    dir: Option<tempfile::TempDir>,
}

impl Ctx {
    /// Starts a gateway with its metadata where `RMQ_E2E_METADATA` says ([`Metadata::from_env`]),
    /// or returns `None` (skip) if a prerequisite is missing.
    pub fn start(test: &'static str, sdks: &[Sdk]) -> Option<Ctx> {
        Ctx::start_on(test, sdks, Metadata::from_env())
    }

    /// [`Ctx::start`] with the metadata in `metadata`.
    pub fn start_on(test: &'static str, sdks: &[Sdk], metadata: Metadata) -> Option<Ctx> {
        Ctx::start_configured(test, sdks, metadata, &[])
    }

    /// [`Ctx::start_on`] with configuration overrides (`RMQ_GATEWAY_SECTION__KEY`, value).
    pub fn start_configured(
        test: &'static str,
        sdks: &[Sdk],
        metadata: Metadata,
        extra: &[(&str, &str)],
    ) -> Option<Ctx> {
        let mut missing: Vec<String> = sdks.iter().filter_map(|s| s.missing()).collect();
        missing.dedup();
        if let Err(e) = gateway_binary() {
            missing.push(e.to_string());
        }
        if !missing.is_empty() {
            let text = format!("SKIPPED {test}: {}", missing.join("; "));
            if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") {
                panic!("{text} (RMQ_E2E_REQUIRED=1)");
            }
            shout(&text);
            return None;
        }
        let postgres = match metadata {
            Metadata::Sqlite => None,
            Metadata::Postgres => Some(Postgres::start_or_skip(test)?),
        };
        let dir = tempfile::Builder::new().prefix(&format!("rmq-e2e-{test}-")).tempdir().unwrap();
        let mut overrides: Vec<(&str, &str)> =
            postgres.iter().map(|pg| ("RMQ_GATEWAY_METADATA__URL", pg.url())).collect();
        overrides.extend_from_slice(extra);
        let gateway = Gateway::start_with(dir.path(), &overrides).unwrap_or_else(|e| panic!("{test}: {e:#}"));
        if postgres.is_some() {
            let log = gateway.log_tail(200);
            assert!(log.contains("metadata store open url=postgres://"), "{test}: not on PostgreSQL:\n{log}");
        }
        Some(Ctx { test, deadline: Instant::now() + SCENARIO_BUDGET, gateway, postgres, dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap()
    }

    /// A fresh, unique topic and consumer group name for this test.
    pub fn topic_and_group(&self) -> (String, String) {
        (unique("topic", self.test), unique("group", self.test))
    }

    /// Runs a driver to completion with driver-specific arguments (e.g. `--tls`).
    pub fn run_with(&self, sdk: Sdk, mode: Mode, topic: &str, group: &str, prefix: &str, extra: &[&str]) -> Outcome {
        let running = self.spawn(sdk, mode, topic, group, prefix, extra);
        running.wait().unwrap_or_else(|e| panic!("{}: {e:#}", self.test))
    }

    /// Starts a driver without waiting for it (e.g. to restart the gateway while it runs),
    /// within what is left of the scenario's budget.
    pub fn spawn(&self, sdk: Sdk, mode: Mode, topic: &str, group: &str, prefix: &str, extra: &[&str]) -> Running {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let run = Run {
            sdk,
            mode,
            endpoint: self.gateway.endpoint(),
            topic: topic.to_string(),
            group: group.to_string(),
            count: count(),
            prefix: prefix.to_string(),
            tag: "e2e".to_string(),
            timeout: DRIVER_TIMEOUT.min(left.saturating_sub(DRIVER_SLACK)).max(Duration::from_secs(5)),
            kill_after: left.max(Duration::from_secs(5)),
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
        };
        sdk::spawn(&run, self.path()).unwrap_or_else(|e| panic!("{}: {e:#}", self.test))
    }

    /// Fails unless the driver ran the SDK release `sdk` stands for (where drivers report it).
    pub fn check_version(&self, outcome: &Outcome, report: &Report) {
        if let Some(want) = outcome.run.sdk.version()
            && report.sdk_version.as_deref() != Some(want)
        {
            self.fail(outcome, &format!("driver ran SDK version {:?}, expected {want}", report.sdk_version));
        }
    }

    pub fn fail(&self, outcome: &Outcome, what: &str) -> ! {
        panic!(
            "{}: {what}\n{}--- gateway log (tail):\n{}\n--- gateway data dir: {}",
            self.test,
            outcome.describe(),
            self.gateway.log_tail(40),
            self.gateway.data_dir_listing()
        )
    }

    /// Sends N messages with bodies `<prefix>-<i>`; returns their message ids.
    pub fn produce(&self, sdk: Sdk, topic: &str, prefix: &str) -> Vec<String> {
        self.produce_with(sdk, topic, prefix, &[])
    }

    /// [`Ctx::produce`] with driver-specific arguments.
    pub fn produce_with(&self, sdk: Sdk, topic: &str, prefix: &str, extra: &[&str]) -> Vec<String> {
        let outcome = self.run_with(sdk, Mode::Produce, topic, "", prefix, extra);
        let Some(report) = outcome.report() else { self.fail(&outcome, "producer printed no RESULT") };
        if !report.ok || report.sent != count() || report.ids.len() != count() {
            self.fail(&outcome, &format!("sent {} of {} messages", report.sent, count()));
        }
        self.check_version(&outcome, report);
        note_shutdown(self.test, report);
        report.ids.clone()
    }

    /// Consumes until all N bodies `<prefix>-<i>` arrived; checks none is lost, every one
    /// was acked, digests were right and the message ids match what the producer got.
    pub fn consume(&self, sdk: Sdk, mode: Mode, topic: &str, group: &str, expect: Expect) -> Report {
        self.consume_with(sdk, mode, topic, group, expect, &[])
    }

    /// [`Ctx::consume`] with driver-specific arguments.
    pub fn consume_with(
        &self,
        sdk: Sdk,
        mode: Mode,
        topic: &str,
        group: &str,
        expect: Expect,
        extra: &[&str],
    ) -> Report {
        let Expect { prefix, sent_ids, allow_unexpected, allow_duplicates } = expect;
        let outcome = self.run_with(sdk, mode, topic, group, prefix, extra);
        let Some(report) = outcome.report().cloned() else { self.fail(&outcome, "consumer printed no RESULT") };
        self.check_version(&outcome, &report);
        if report.received != count() || !report.missing.is_empty() {
            let lost = report.missing.len();
            self.fail(&outcome, &format!("received {} of {} ({lost} lost)", report.received, count()));
        }
        if report.ack_failed != 0 || report.corrupted != 0 {
            self.fail(&outcome, "acks failed or corrupted (digest mismatch) messages");
        }
        if mode == Mode::SimpleConsume && report.acked.unwrap_or(0) < count() {
            self.fail(&outcome, "fewer acks than messages");
        }
        if mode == Mode::SimpleConsume && sdk != Sdk::Rust && report.changed_invisible != Some(1) {
            self.fail(&outcome, "ChangeInvisibleDuration was not exercised successfully");
        }
        if !report.errors.is_empty() && mode == Mode::SimpleConsume {
            // Errors that did not cost a message (e.g. a failed receive retried later).
            shout(&format!("{}: {} {} reported errors: {:?}", self.test, sdk.name(), mode_name(mode), report.errors));
        }
        if !report.unexpected.is_empty() && !allow_unexpected {
            self.fail(&outcome, "received messages that were not expected (already acked or foreign)");
        }
        let got: BTreeSet<&str> = report.ids.iter().map(|s| s.as_str()).collect();
        let want: BTreeSet<&str> = sent_ids.iter().map(|s| s.as_str()).collect();
        if got != want {
            self.fail(&outcome, "received message ids differ from the ids the producer got");
        }
        if !report.duplicates.is_empty() && !allow_duplicates {
            self.fail(&outcome, "a message was delivered more than once in a scenario without a crash or redelivery");
        }
        if !report.duplicates.is_empty() || !report.unexpected.is_empty() {
            shout(&format!(
                "{}: {} {}: {} duplicate deliveries, {} unexpected (older) deliveries",
                self.test,
                sdk.name(),
                mode_name(mode),
                report.duplicates.len(),
                report.unexpected.len()
            ));
        }
        note_shutdown(self.test, &report);
        report
    }

    /// Starts `sdk`'s consumer (`mode`, `--progress` and `extra`, which must make it slow
    /// enough to be caught mid-run) for `expect`'s N messages; once it has consumed at least a
    /// quarter but not all of them, SIGKILLs the gateway and restarts it on the same data dir
    /// and ports. The same consumer process must then get every message: N received, ids
    /// equal to the producer's, none left unacked (where the driver sees acks), none corrupted
    /// or with another tag or keys than the producer set. Redeliveries (of messages whose ack
    /// the crash lost) and older bodies are failures unless `expect` allows them. Returns the
    /// consumer's outcome and report for an SDK's own further checks.
    pub fn consume_across_kill(
        &mut self,
        sdk: Sdk,
        mode: Mode,
        topic: &str,
        group: &str,
        expect: Expect,
        extra: &[&str],
    ) -> (Outcome, Report) {
        let Expect { prefix, sent_ids, allow_unexpected, allow_duplicates } = expect;
        let test = self.test;
        let args: Vec<&str> = ["--progress"].iter().chain(extra).copied().collect();
        let mut running = self.spawn(sdk, mode, topic, group, prefix, &args);
        let n = count();
        let wait_until = Instant::now() + Duration::from_secs(45);
        let mut exited = false;
        while running.progress() < n / 4 && Instant::now() < wait_until {
            if running.exited() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = running.progress();
        assert!(
            !exited && before >= n / 4 && before < n,
            "{test}: the consumer should be mid-run before the kill (got {before} of {n}, exited {exited}); stdout:\n{}",
            running.stdout()
        );
        let stopped = self.gateway.stop(Stop::Kill).unwrap_or_else(|e| panic!("{test}: stop: {e:#}"));
        shout(&format!("{test}: gateway SIGKILLed with the consumer at {before}/{n} ({})", stopped.status));
        self.gateway.restart().unwrap_or_else(|e| panic!("{test}: restart: {e:#}"));

        let outcome = running.wait().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let Some(report) = outcome.report().cloned() else { self.fail(&outcome, "consumer printed no RESULT") };
        self.check_version(&outcome, &report);
        let got: BTreeSet<&str> = report.ids.iter().map(|s| s.as_str()).collect();
        let want: BTreeSet<&str> = sent_ids.iter().map(|s| s.as_str()).collect();
        if report.received != n || !report.missing.is_empty() || got != want {
            self.fail(&outcome, &format!("received {} of {n} across the restart, or other ids", report.received));
        }
        if !report.unacked.is_empty() || report.corrupted != 0 || (!report.unexpected.is_empty() && !allow_unexpected) {
            self.fail(&outcome, "messages never acked, corrupted, or unexpected bodies after the restart");
        }
        if !report.duplicates.is_empty() && !allow_duplicates {
            self.fail(&outcome, "a message was delivered more than once although the scenario allows no redelivery");
        }
        if !report.property_mismatches.is_empty() {
            self.fail(&outcome, "tag or keys of a delivery differ from what the producer set");
        }
        shout(&format!(
            "{test}: {} messages after the restart; {} redeliveries (max attempt {}), {} receive errors, {} ack failures",
            report.received - before.min(report.received),
            report.duplicates.len(),
            report.max_delivery_attempt,
            report.receive_errors,
            report.ack_failed
        ));
        (outcome, report)
    }

    /// A PushConsumer of `sdk` whose listener returns FAILURE on the first delivery of every
    /// [`FAIL_EVERY`]th message (`--fail-every`) consumes the N bodies `<prefix>-<i>` sent as
    /// `ids` (in body order). Beyond [`Ctx::consume`]'s checks: exactly those messages fail,
    /// come back with attempt >= 2 and then succeed, every other one is delivered once with
    /// attempt 1 ([`push_problems`]; `acks_visible`: the driver sees the PushConsumer's acks,
    /// so each message must have been acked).
    pub fn push_consume_failing_listener(
        &self,
        sdk: Sdk,
        topic: &str,
        group: &str,
        prefix: &str,
        ids: &[String],
        acks_visible: bool,
    ) {
        let test = self.test;
        // Redeliveries of the failed messages are expected: duplicates are allowed here and
        // checked precisely by `push_problems`.
        let expect = Expect::at_least_once(prefix, ids);
        let fail_every = FAIL_EVERY.to_string();
        let report = self.consume_with(sdk, Mode::PushConsume, topic, group, expect, &["--fail-every", &fail_every]);

        let want_failed: BTreeSet<&str> =
            ids.iter().enumerate().filter(|(i, _)| (i + 1) % FAIL_EVERY == 0).map(|(_, id)| id.as_str()).collect();
        let failed: BTreeSet<&str> = report.failed_on_purpose.keys().map(|s| s.as_str()).collect();
        let mut problems = push_problems(&report, &want_failed, acks_visible);
        if failed != want_failed {
            problems.push(format!("failed on purpose {failed:?}, expected {want_failed:?}"));
        }
        if report.max_delivery_attempt < 2 {
            problems.push(format!("no redelivery seen: max delivery attempt {}", report.max_delivery_attempt));
        }
        assert!(
            problems.is_empty(),
            "{test}: {problems:#?}\nreport: {report:?}\n--- gateway log (tail):\n{}",
            self.gateway.log_tail(40)
        );
        shout(&format!(
            "{test}: {} of {} messages failed once and were redelivered (max attempt {}), {} deliveries in all",
            failed.len(),
            count(),
            report.max_delivery_attempt,
            report.attempts.values().map(Vec::len).sum::<usize>()
        ));
    }
}

/// Checks a SimpleConsumer report beyond [`Ctx::consume`] (drivers that report TLS and
/// attempts: Java, Go): TLS as asked, no message left unacked, each delivered exactly once
/// with attempt 1.
pub fn assert_once_each(test: &str, report: &Report, tls: bool) {
    assert_eq!(report.tls, Some(tls), "{test}: driver TLS setting: {report:?}");
    assert!(report.unacked.is_empty(), "{test}: never acked: {:?}", report.unacked);
    assert_eq!(report.attempts.len(), count(), "{test}: deliveries per id: {:?}", report.attempts);
    let odd: BTreeMap<&String, &Vec<i64>> = report.attempts.iter().filter(|(_, a)| a.as_slice() != [1]).collect();
    assert!(odd.is_empty(), "{test}: messages not delivered exactly once with attempt 1: {odd:?}");
}

/// What is wrong with a PushConsumer's deliveries when exactly `want_failed` were failed by
/// the listener once: those must have been delivered first with attempt 1, then again with a
/// higher attempt, and succeeded there; every other message must have been delivered exactly
/// once, with attempt 1; only a failed message may be delivered again; no delivery may carry
/// another tag or keys than the producer set (drivers that compare them: Go). With
/// `acks_visible` (drivers that see the PushConsumer's acks: Go, not Java) every message must
/// have been acked.
pub fn push_problems(report: &Report, want_failed: &BTreeSet<&str>, acks_visible: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if acks_visible && !report.unacked.is_empty() {
        problems.push(format!("never acked: {:?}", report.unacked));
    }
    if !report.property_mismatches.is_empty() {
        problems.push(format!("tag/keys differ: {:?}", report.property_mismatches));
    }
    if report.attempts.len() != count() {
        problems.push(format!("{} distinct ids delivered, expected {}", report.attempts.len(), count()));
    }
    for (id, attempts) in &report.attempts {
        if want_failed.contains(id.as_str()) {
            let first_then_higher = attempts.first() == Some(&1) && attempts.len() >= 2 && attempts[1] >= 2;
            let strictly_growing = attempts.windows(2).all(|w| w[1] > w[0]);
            if !first_then_higher || !strictly_growing {
                problems.push(format!("{id} (failed once): attempts {attempts:?}"));
            }
            match report.succeeded_after_failure.get(id) {
                Some(&a) if a >= 2 => {}
                other => problems.push(format!("{id} (failed once): succeeded at attempt {other:?}")),
            }
        } else if attempts.as_slice() != [1] {
            problems.push(format!("{id}: attempts {attempts:?}, expected one delivery with attempt 1"));
        }
    }
    for id in &report.duplicates {
        if !want_failed.contains(id.as_str()) {
            problems.push(format!("{id} delivered again although the listener never failed it"));
        }
    }
    problems
}

/// What a consumer must get.
pub struct Expect<'a> {
    /// bodies `<prefix>-0..N`
    pub prefix: &'a str,
    /// the ids the producer got back for them
    pub sent_ids: &'a [String],
    /// deliveries of other (older, already acked) messages are only reported, not failed
    /// (at-least-once after a crash)
    pub allow_unexpected: bool,
    /// a message delivered more than once is only reported, not failed (a crash or a
    /// redelivery the scenario provokes); otherwise each message must arrive exactly once
    pub allow_duplicates: bool,
}

impl<'a> Expect<'a> {
    pub fn exactly(prefix: &'a str, sent_ids: &'a [String]) -> Self {
        Expect { prefix, sent_ids, allow_unexpected: false, allow_duplicates: false }
    }

    /// Every message, some possibly more than once (redelivered), and nothing else.
    pub fn at_least_once(prefix: &'a str, sent_ids: &'a [String]) -> Self {
        Expect { prefix, sent_ids, allow_unexpected: false, allow_duplicates: true }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("RMQ_E2E_KEEP").is_some();
        if let (true, Some(dir)) = (keep, self.dir.take()) {
            shout(&format!("{}: logs kept in {}", self.test, dir.keep().display()));
        }
    }
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Produce => "producer",
        Mode::SimpleConsume => "SimpleConsumer",
        Mode::PushConsume => "PushConsumer",
        Mode::ProduceAndConsume => "producer and PushConsumer",
        Mode::Named(name) => name,
    }
}

pub fn note_shutdown(test: &str, report: &Report) {
    if let Some(e) = &report.shutdown_error {
        shout(&format!("{test}: {} {} shutdown error (not fatal): {e}", report.sdk, report.mode));
    }
}

/// `producer` (with driver arguments `producer_extra`) sends N messages on a fresh topic;
/// `consumer` consumes them in `mode` on a fresh group, each exactly once.
pub fn produce_then_consume(test: &'static str, producer: Sdk, producer_extra: &[&str], consumer: Sdk, mode: Mode) {
    produce_then_consume_on(test, Metadata::from_env(), producer, producer_extra, consumer, mode)
}

/// [`produce_then_consume`] on a gateway with its metadata in `metadata`.
pub fn produce_then_consume_on(
    test: &'static str,
    metadata: Metadata,
    producer: Sdk,
    producer_extra: &[&str],
    consumer: Sdk,
    mode: Mode,
) {
    let Some(ctx) = Ctx::start_on(test, &[producer, consumer], metadata) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce_with(producer, &topic, "m", producer_extra);
    ctx.consume(consumer, mode, &topic, &group, Expect::exactly("m", &ids));
}

/// Batch `a` is produced and consumed (acked) by `group`, batch `b` is produced; then the
/// gateway is stopped `how` and started again on the same data dir; `group` must then get
/// all of `b`. After SIGTERM, no message of the acked batch `a` may come back; after
/// SIGKILL such redeliveries are reported (at-least-once) but allowed.
pub fn restart_between_send_and_consume(test: &'static str, how: Stop, producer: Sdk, consumer: Sdk) {
    restart_between_send_and_consume_on(test, Metadata::from_env(), how, producer, consumer)
}

/// [`restart_between_send_and_consume`] on a gateway with its metadata in `metadata`.
pub fn restart_between_send_and_consume_on(
    test: &'static str,
    metadata: Metadata,
    how: Stop,
    producer: Sdk,
    consumer: Sdk,
) {
    let Some(mut ctx) = Ctx::start_on(test, &[producer, consumer], metadata) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids_a = ctx.produce(producer, &topic, "a");
    let expect = Expect::exactly("a", &ids_a);
    ctx.consume(consumer, Mode::SimpleConsume, &topic, &group, expect);
    let ids_b = ctx.produce(producer, &topic, "b");

    let stopped = ctx.gateway.stop(how).unwrap_or_else(|e| panic!("{test}: stop: {e:#}"));
    shout(&format!("{test}: gateway stopped ({how:?}) in {:?}, {}", stopped.took, stopped.status));
    ctx.gateway.restart().unwrap_or_else(|e| panic!("{test}: restart: {e:#}"));

    let crashed = how == Stop::Kill;
    let expect = Expect { prefix: "b", sent_ids: &ids_b, allow_unexpected: crashed, allow_duplicates: crashed };
    ctx.consume(consumer, Mode::SimpleConsume, &topic, &group, expect);
}
