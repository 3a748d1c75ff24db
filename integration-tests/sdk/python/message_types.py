"""FIFO, delay/timer, recall and transaction modes (integration-tests/sdk/MESSAGE_TYPES.md).

What rocketmq-python-client 5.1.2 offers and how the modes use it:
- FIFO: Message.message_group; a PushConsumer of an orderly group consumes through the SDK's
  FifoConsumption (one task per message group and batch; a FAILURE is retried locally, on the
  same message object, up to the server's max attempts, then forwarded to the DLQ).
- Delay: Message.delivery_timestamp is in epoch *seconds* (the SDK sends whole seconds), so a
  deliver-at time is rounded up to the next second and reported as sent.
- Recall: Producer.recall_message(topic, handle); the handle is SendReceipt.recall_handle.
- Transactions: Producer(..., checker) with TransactionChecker.check(message) ->
  TransactionResolution. The SDK has no UNKNOWN answer: TRANSACTION_RESOLUTION_UNSPECIFIED is
  the "don't know", and the SDK still sends it in an EndTransaction (resolution 0).
"""

import collections
import json
import math
import sys
import threading
import time

from rocketmq import (ConsumeResult, FilterExpression, Message, MessageListener,
                      Producer, PushConsumer, SimpleConsumer, TransactionChecker,
                      TransactionResolution)

from common import config, describe, now_ms, shutdown_all, shutdown_bounded

INVISIBLE_SECS = 30
# Long polling of timed-consume: short, so that --linger-ms and the timeout are not overshot much.
TIMED_AWAIT_SECS = 5
BATCH = 16
SETTINGS_WAIT_SECS = 5
MAX_ERRORS = 20
SUBSCRIBE_ALL = "*"


def add_arguments(p):
    """The mode-specific options (all modes accept all of them; each reads its own)."""
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--poison-group", default=None)
    p.add_argument("--hold-ms", type=int, default=0)
    p.add_argument("--expect", type=int, default=None, help="default: --count")
    p.add_argument("--delays-ms", default="0")
    p.add_argument("--linger-ms", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=5000)
    p.add_argument("--resolution", choices=["commit", "rollback", "orphan"], default="commit")


def _expect(args):
    return args.count if args.expect is None else args.expect


def _text(body):
    return body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)


def _start_producer(args, checker=None):
    """A started Producer of --topic, or (None, error string)."""
    producer = Producer(config(args), (args.topic,), checker)
    try:
        producer.startup()
        return producer, None
    except Exception as e:
        return None, f"startup: {describe(e)}"


# --- fifo-produce ------------------------------------------------------------------------------

def fifo_produce(args):
    """Message i goes to group {prefix}-g{i % G} with per-group sequence i // G, sent one by one
    (each send returns before the next starts, so the send order is the group order)."""
    ids, errors = [], []
    producer, error = _start_producer(args)
    if error:
        return False, {"sent": 0, "ids": ids, "errors": [error]}
    deadline = time.monotonic() + args.timeout_secs
    for i in range(args.count):
        if time.monotonic() > deadline:
            errors.append(f"timed out after {i} of {args.count} sends")
            break
        group, seq = f"{args.prefix}-g{i % args.groups}", i // args.groups
        msg = Message()
        msg.topic = args.topic
        msg.body = f"{args.prefix}|{group}|{seq}".encode()
        msg.tag = args.tag
        msg.keys = f"{args.prefix}-key-{i}"
        msg.message_group = group
        try:
            ids.append(producer.send(msg).message_id)
        except Exception as e:
            errors.append(f"send #{i} ({group}/{seq}): {describe(e)}")
    report = {"sent": len(ids), "ids": ids, "groups": args.groups, "errors": errors[:MAX_ERRORS],
              "shutdown_error": shutdown_bounded(producer)}
    return len(ids) == args.count, report


# --- fifo-consume ------------------------------------------------------------------------------

class _FifoRecorder(MessageListener):
    """The listener of every PushConsumer of the run: decides each call's answer (--fail-every,
    --poison-group), holds it --hold-ms, and records group, seq, attempt, start, end, result."""

    def __init__(self, args):
        self.prefix, self.fail_every, self.poison = args.prefix, args.fail_every, args.poison_group
        self.hold_s = args.hold_ms / 1000.0
        self.lock = threading.Lock()
        self.calls = []  # dicts: group, seq, attempt, start, end, ok, id
        self.calls_per_key = collections.Counter()  # (group, seq) -> listener calls so far
        self.calls_per_handle = collections.Counter()  # receipt handle -> listener calls so far
        self.succeeded = set()  # non-poison (group, seq) answered SUCCESS
        self.failed_on_purpose = 0
        self.unexpected = []  # bodies that are not "{prefix}|group|seq"

    def consume(self, message):
        start = now_ms()
        parts = _text(message.body).split("|")
        if len(parts) != 3 or parts[0] != self.prefix or not parts[2].isdigit():
            with self.lock:
                self.unexpected.append(_text(message.body)[:80])
            return ConsumeResult.SUCCESS
        group, seq = parts[1], int(parts[2])
        with self.lock:
            first_call = self.calls_per_key[(group, seq)] == 0
            self.calls_per_key[(group, seq)] += 1
            # The SDK retries a FIFO failure locally on the same message (same receipt handle)
            # without counting it in delivery_attempt; count those retries as attempts too,
            # as the Java SDK does.
            local_retries = self.calls_per_handle[message.receipt_handle]
            self.calls_per_handle[message.receipt_handle] += 1
            if group == self.poison:
                ok = False
            elif self.fail_every and (seq + 1) % self.fail_every == 0 and first_call:
                ok = False
                self.failed_on_purpose += 1
            else:
                ok = True
        if self.hold_s:
            time.sleep(self.hold_s)
        end = now_ms()
        call = {"group": group, "seq": seq, "start": start, "end": end, "ok": ok,
                "attempt": (message.delivery_attempt or 1) + local_retries, "id": message.message_id}
        with self.lock:
            self.calls.append(call)
            if ok:
                self.succeeded.add((group, seq))
        # one line per listener call on stderr (the harness keeps it), for diagnosing a run
        sys.stderr.write("CALL " + json.dumps(call) + "\n")
        return ConsumeResult.SUCCESS if ok else ConsumeResult.FAILURE

    def report(self, started_ms):
        """The RESULT figures of MESSAGE_TYPES.md, computed from the recorded calls."""
        with self.lock:
            calls = list(self.calls)
        by_group = collections.defaultdict(list)
        for c in calls:
            by_group[c["group"]].append(c)
        reorderings, overlaps, duplicates, group_done_ms = 0, 0, [], {}
        for group, group_calls in by_group.items():
            # Two calls of one group overlap if one starts before the other ended.
            spans = sorted((c["start"], c["end"]) for c in group_calls)
            for i, (_, end_i) in enumerate(spans):
                overlaps += sum(1 for start_j, _ in spans[i + 1:] if start_j < end_i)
            if group == self.poison:
                continue
            successes = sorted((c for c in group_calls if c["ok"]), key=lambda c: c["end"])
            previous = -1
            for c in successes:
                reorderings += 1 if c["seq"] != previous + 1 else 0
                previous = c["seq"]
            counts = collections.Counter(c["seq"] for c in successes)
            duplicates += [f"{group}|{seq}" for seq, n in sorted(counts.items()) if n > 1]
            if successes:
                group_done_ms[group] = int(successes[-1]["end"] - started_ms)
        return {"succeeded": len(self.succeeded), "reorderings": reorderings, "overlaps": overlaps,
                "duplicates": duplicates, "group_done_ms": group_done_ms,
                "poison_calls": sum(1 for c in calls if c["group"] == self.poison),
                "failed_on_purpose": self.failed_on_purpose,
                "max_delivery_attempt": max((c["attempt"] for c in calls), default=0),
                "received": len(calls), "unexpected": self.unexpected[:MAX_ERRORS]}


def fifo_consume(args):
    """--consumers PushConsumers of the orderly group in this process, one shared listener."""
    expect = _expect(args)
    recorder = _FifoRecorder(args)
    consumers, errors = [], []
    started_ms = now_ms()
    for i in range(args.consumers):
        consumer = PushConsumer(config(args), args.group, recorder,
                                {args.topic: FilterExpression(SUBSCRIBE_ALL)})
        try:
            consumer.startup()
            consumers.append(consumer)
        except Exception as e:
            errors.append(f"startup of consumer {i}: {describe(e)}")
    deadline = time.monotonic() + args.timeout_secs
    while consumers and not errors and time.monotonic() < deadline:
        with recorder.lock:
            if len(recorder.succeeded) >= expect:
                break
        time.sleep(0.1)
    if consumers:
        time.sleep(2)  # let the SDK send the acks of the last consumed messages
    # The figures include the calls made while the consumers shut down (poison retries).
    shutdown_errors = [e for e in shutdown_all(consumers, 40.0) if e]
    report = recorder.report(started_ms)
    if report["succeeded"] < expect and not errors:
        errors.append(f"timed out with {report['succeeded']} of {expect} consumed")
    report.update(consumer_kind="push", consumers=args.consumers, errors=errors[:MAX_ERRORS],
                  shutdown_errors=shutdown_errors)
    return report["succeeded"] >= expect and not errors, report


# --- delay-produce -----------------------------------------------------------------------------

def _delayed_message(args, deliver_at_s, body, key):
    msg = Message()
    msg.topic = args.topic
    msg.body = body.encode()
    msg.tag = args.tag
    msg.keys = key
    msg.delivery_timestamp = deliver_at_s  # epoch seconds: the SDK's unit
    return msg


def _deliver_at_s(delay_ms):
    """now + delay in whole epoch seconds, rounded up (never earlier than asked)."""
    return math.ceil((now_ms() + delay_ms) / 1000.0)


def delay_produce(args):
    """For each --delays-ms d and j < count: a message due now + d. A refused send (too far in
    the future, ...) is recorded in `rejected`; ok means every send got an answer."""
    delays = [int(d) for d in args.delays_ms.split(",") if d.strip()]
    ids, deliver_at, recall_handles, rejected, errors = [], {}, {}, {}, []
    producer, error = _start_producer(args)
    if error:
        return False, {"sent": 0, "ids": ids, "errors": [error]}
    sends = [(d, j) for d in delays for j in range(args.count)]
    deadline = time.monotonic() + args.timeout_secs
    answered = 0
    for d, j in sends:
        if time.monotonic() > deadline:
            errors.append(f"timed out after {answered} of {len(sends)} sends")
            break
        at_ms = _deliver_at_s(d) * 1000
        msg = _delayed_message(args, at_ms // 1000, f"{args.prefix}|{d}|{at_ms}|{j}",
                               f"{args.prefix}-key-{d}-{j}")
        try:
            receipt = producer.send(msg)
            ids.append(receipt.message_id)
            deliver_at[receipt.message_id] = at_ms
            if receipt.recall_handle:
                recall_handles[receipt.message_id] = receipt.recall_handle
        except Exception as e:
            rejected.setdefault(str(d), describe(e))
        answered += 1
    report = {"sent": len(ids), "ids": ids, "deliver_at": deliver_at, "recall_handles": recall_handles,
              "rejected": rejected, "delivery_precision_ms": 1000, "errors": errors[:MAX_ERRORS],
              "shutdown_error": shutdown_bounded(producer)}
    return answered == len(sends), report


# --- timed-consume -----------------------------------------------------------------------------

def timed_consume(args):
    """SimpleConsumer (`*`): receives and acks until --expect distinct ids, then --linger-ms more;
    records when each id first arrived and what it carried."""
    expect = _expect(args)
    ids, received_at, bodies, delivery_ts, message_type = [], {}, {}, {}, {}
    duplicates, errors, received = [], [], 0
    consumer = SimpleConsumer(config(args), args.group, {args.topic: FilterExpression(SUBSCRIBE_ALL)},
                              await_duration=TIMED_AWAIT_SECS)
    try:
        consumer.startup()
    except Exception as e:
        return False, {"received": 0, "ids": [], "errors": [f"startup: {describe(e)}"]}
    # The SimpleConsumer does not wait for the server's answer to its Settings; a receive sent
    # before it can fail (Apache: "settings is null"). Wait for it as the SDK's PushConsumer does.
    consumer._init_settings_event.wait(SETTINGS_WAIT_SECS)
    deadline = time.monotonic() + args.timeout_secs
    stop_at = deadline  # moves to "reached + linger" once expect distinct ids arrived
    while time.monotonic() < stop_at:
        try:
            messages = consumer.receive(BATCH, INVISIBLE_SECS)
        except Exception as e:
            errors.append(f"receive: {describe(e)}")
            time.sleep(0.5)
            continue
        at = int(now_ms())
        for msg in messages:
            received += 1
            if msg.message_id in received_at:
                duplicates.append(msg.message_id)
            else:
                ids.append(msg.message_id)
                received_at[msg.message_id] = at
                bodies[msg.message_id] = _text(msg.body)
                if msg.delivery_timestamp:
                    delivery_ts[msg.message_id] = msg.delivery_timestamp
                message_type[msg.message_id] = Message.message_type_desc(msg.message_type)
            try:
                consumer.ack(msg)
            except Exception as e:
                errors.append(f"ack {msg.message_id}: {describe(e)}")
        if len(ids) >= expect and stop_at == deadline:
            stop_at = min(deadline, time.monotonic() + args.linger_ms / 1000.0)
    if len(ids) < expect:
        errors.append(f"timed out with {len(ids)} of {expect} messages")
    report = {"received": received, "ids": ids, "received_at": received_at, "bodies": bodies,
              "delivery_timestamp": delivery_ts, "message_type": message_type,
              "duplicates": duplicates, "errors": errors[:MAX_ERRORS],
              "shutdown_error": shutdown_bounded(consumer)}
    return len(ids) >= expect, report


# --- recall ------------------------------------------------------------------------------------

def recall(args):
    """Sends A and B due in --delay-ms, then recalls A with its receipt's recall handle."""
    report = {"recall_supported": True, "recalled_id": None, "kept_id": None, "recall_ok": False,
              "errors": []}
    producer, error = _start_producer(args)
    if error:
        report["errors"].append(error)
        return False, report
    try:
        at_s = _deliver_at_s(args.delay_ms)
        a = producer.send(_delayed_message(args, at_s, f"{args.prefix}|recall|A", f"{args.prefix}-key-A"))
        report["recalled_id"] = a.message_id
        b = producer.send(_delayed_message(args, at_s, f"{args.prefix}|recall|B", f"{args.prefix}-key-B"))
        report["kept_id"] = b.message_id
        report["deliver_at"] = at_s * 1000
        if not a.recall_handle:
            report["errors"].append("the send receipt of A has no recall handle")
        else:
            answered_id = producer.recall_message(args.topic, a.recall_handle)
            report["recall_ok"] = True
            report["recall_answer_id"] = answered_id
    except Exception as e:
        report["errors"].append(describe(e))
    report["shutdown_error"] = shutdown_bounded(producer)
    return report["recall_ok"] and not report["errors"], report


# --- tx-produce / tx-check ---------------------------------------------------------------------

class _CheckRecorder(TransactionChecker):
    """Records every check; answers COMMIT for bodies starting with commit_prefix (if given),
    TRANSACTION_RESOLUTION_UNSPECIFIED ("unknown") otherwise."""

    def __init__(self, commit_prefix=None):
        self.commit_prefix = commit_prefix
        self.lock = threading.Lock()
        self.checked_at = {}  # message id -> ms of its first check
        self.calls = 0

    def check(self, message):
        at = int(now_ms())
        with self.lock:
            self.calls += 1
            self.checked_at.setdefault(message.message_id, at)
        if self.commit_prefix is not None and _text(message.body).startswith(self.commit_prefix):
            return TransactionResolution.COMMIT
        return TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED


def tx_produce(args):
    """count transactional messages, each in its own transaction; after --hold-ms, commit or roll
    each back (ended_at = when that call returned), or (orphan) leave them open: main() prints the
    RESULT and leaves with os._exit, without shutting the producer down."""
    checker = _CheckRecorder()
    ids, ended_at, errors = [], {}, []
    producer, error = _start_producer(args, checker)
    if error:
        return False, {"sent": 0, "ids": ids, "ended_at": ended_at, "errors": [error]}
    transactions = []
    for i in range(args.count):
        msg = Message()
        msg.topic = args.topic
        msg.body = f"{args.prefix}-{i}".encode()
        msg.tag = args.tag
        msg.keys = f"{args.prefix}-key-{i}"
        try:
            tx = producer.begin_transaction()
            receipt = producer.send(msg, tx)
            ids.append(receipt.message_id)
            transactions.append((receipt.message_id, tx))
        except Exception as e:
            errors.append(f"send #{i}: {describe(e)}")
    time.sleep(args.hold_ms / 1000.0)
    report = {"sent": len(ids), "ids": ids, "ended_at": ended_at, "resolution": args.resolution}
    if args.resolution == "orphan":
        report.update(check_calls=checker.calls, errors=errors[:MAX_ERRORS])
        return len(ids) == args.count and not errors, report
    for message_id, tx in transactions:
        try:
            if args.resolution == "commit":
                tx.commit()
            else:
                tx.rollback()
            ended_at[message_id] = int(now_ms())
        except Exception as e:
            errors.append(f"{args.resolution} {message_id}: {describe(e)}")
    report.update(check_calls=checker.calls, errors=errors[:MAX_ERRORS],
                  shutdown_error=shutdown_bounded(producer))
    return len(ended_at) == args.count and not errors, report


def tx_check(args):
    """A transactional producer whose checker commits "{prefix}-" bodies; runs until --expect
    distinct ids were checked, then 3 s more (for the EndTransaction calls)."""
    expect = _expect(args)
    checker = _CheckRecorder(commit_prefix=f"{args.prefix}-")
    producer, error = _start_producer(args, checker)
    if error:
        return False, {"checked": 0, "checked_at": {}, "check_calls": 0, "errors": [error]}
    deadline = time.monotonic() + args.timeout_secs
    while time.monotonic() < deadline:
        with checker.lock:
            if len(checker.checked_at) >= expect:
                break
        time.sleep(0.1)
    errors = []
    with checker.lock:
        reached = len(checker.checked_at) >= expect
    if reached:
        time.sleep(3)
    else:
        errors.append(f"timed out with {len(checker.checked_at)} of {expect} checked")
    with checker.lock:
        report = {"checked": len(checker.checked_at), "checked_at": dict(checker.checked_at),
                  "check_calls": checker.calls, "errors": errors}
    report["shutdown_error"] = shutdown_bounded(producer)
    return reached, report


MODES = {
    "fifo-produce": fifo_produce,
    "fifo-consume": fifo_consume,
    "delay-produce": delay_produce,
    "timed-consume": timed_consume,
    "recall": recall,
    "tx-produce": tx_produce,
    "tx-check": tx_check,
}
