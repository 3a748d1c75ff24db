"""End-to-end driver for the official RocketMQ Python SDK (rocketmq-python-client 5.1.2).

Usage: e2e.py MODE --endpoint HOST:PORT --topic T
              [--group G] [--count N] [--prefix P] [--tag TAG] [--timeout-secs S] [MODE OPTIONS]
MODE: produce, simple-consume, push-consume (below), or one of the FIFO, delay, recall and
transaction modes of sdk/MESSAGE_TYPES.md (message_types.py, with their options).

Options fall back to RMQ_E2E_<NAME> environment variables. Prints exactly one line
"RESULT <json>" on stdout; exit code 0 means the mode's goal was met.

The SDK writes its log to ~/logs/rocketmq_python/ at import time, so HOME is pointed at
$RMQ_E2E_HOME (default: sdk/.work/home) *before* the SDK is imported.
"""

import argparse
import importlib.metadata
import json
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean (no __pycache__ next to tally.py)
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["HOME"] = os.environ.get("RMQ_E2E_HOME") or os.path.join(HERE, "..", ".work", "home")
os.makedirs(os.environ["HOME"], exist_ok=True)

from rocketmq import (ConsumeResult, FilterExpression, Message,  # noqa: E402
                      MessageListener, Producer, PushConsumer, SimpleConsumer)

import message_types  # noqa: E402
from common import config, shutdown_bounded  # noqa: E402
from tally import Tally  # noqa: E402

INVISIBLE_SECS = 30
AWAIT_SECS = 10
BATCH = 16


def parse_args():
    env = lambda name, default=None: os.environ.get(f"RMQ_E2E_{name}", default)  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["produce", "simple-consume", "push-consume", *message_types.MODES])
    p.add_argument("--endpoint", default=env("ENDPOINT"))
    p.add_argument("--topic", default=env("TOPIC"))
    p.add_argument("--group", default=env("GROUP", "python-e2e-group"))
    p.add_argument("--count", type=int, default=int(env("COUNT", "50")))
    p.add_argument("--prefix", default=env("PREFIX", "python"))
    p.add_argument("--tag", default=env("TAG", "e2e"))
    p.add_argument("--timeout-secs", type=float, default=float(env("TIMEOUT_SECS", "60")))
    p.add_argument("--namespace", default=env("NAMESPACE", ""), help="namespace of every client")
    message_types.add_arguments(p)
    # argparse takes "-5000,1000" for an option: glue values that start with "-<digit>" to their
    # option ("--delays-ms=-5000,1000"). A repeated option: the last one wins.
    argv, glued = sys.argv[1:], []
    for arg in argv:
        if glued and glued[-1].startswith("--") and "=" not in glued[-1] and re.match(r"-\d", arg):
            glued[-1] += "=" + arg
        else:
            glued.append(arg)
    args = p.parse_args(glued)
    if not args.endpoint or not args.topic:
        p.error("--endpoint and --topic are required")
    return args


def produce(args):
    ids, errors = [], []
    producer = Producer(config(args), (args.topic,))
    try:
        producer.startup()
    except Exception as e:
        return False, {"sent": 0, "failed": args.count, "ids": [], "errors": [f"startup: {e}"]}
    deadline = time.monotonic() + args.timeout_secs
    failed = 0
    for i in range(args.count):
        if time.monotonic() > deadline:
            failed += args.count - i
            errors.append(f"timed out after {i} of {args.count} sends")
            break
        msg = Message()
        msg.topic = args.topic
        msg.body = f"{args.prefix}-{i}".encode()
        msg.tag = args.tag
        msg.keys = f"{args.prefix}-key-{i}"
        try:
            ids.append(producer.send(msg).message_id)
        except Exception as e:
            failed += 1
            errors.append(f"send #{i}: {type(e).__name__}: {e}")
    report = {"sent": len(ids), "failed": failed, "ids": ids, "errors": errors[:20],
              "shutdown_error": shutdown_bounded(producer)}
    return len(ids) == args.count, report


def simple_consume(args):
    """Receives and acks until all bodies arrived. The first message is first given a new
    invisible duration (ChangeInvisibleDuration) and then acked with the new handle."""
    tally, errors = Tally(args.prefix, args.count), []
    stats = {"acked": 0, "ack_failed": 0, "receive_calls": 0, "receive_errors": 0,
             "changed_invisible": 0, "corrupted": 0, "max_delivery_attempt": 0}
    consumer = SimpleConsumer(config(args), args.group,
                              {args.topic: FilterExpression(args.tag)}, await_duration=AWAIT_SECS)
    try:
        consumer.startup()
    except Exception as e:
        return False, dict(tally.report(), errors=[f"startup: {e}"], **stats)
    deadline = time.monotonic() + args.timeout_secs
    while not tally.complete() and time.monotonic() < deadline:
        stats["receive_calls"] += 1
        try:
            messages = consumer.receive(BATCH, INVISIBLE_SECS)
        except Exception as e:
            stats["receive_errors"] += 1
            errors.append(f"receive: {type(e).__name__}: {e}")
            time.sleep(0.5)
            continue
        for msg in messages:
            stats["max_delivery_attempt"] = max(stats["max_delivery_attempt"], msg.delivery_attempt or 0)
            stats["corrupted"] += 1 if msg.corrupted else 0
            tally.record(msg.message_id, msg.body)
            try:
                if stats["changed_invisible"] == 0:
                    old = msg.receipt_handle
                    consumer.change_invisible_duration(msg, INVISIBLE_SECS)
                    if msg.receipt_handle == old:
                        errors.append("change_invisible_duration returned the same receipt handle")
                    stats["changed_invisible"] += 1
                consumer.ack(msg)
                stats["acked"] += 1
            except Exception as e:
                stats["ack_failed"] += 1
                errors.append(f"ack/change-invisible {msg.message_id}: {type(e).__name__}: {e}")
    stats["shutdown_error"] = shutdown_bounded(consumer)
    ok = tally.complete() and stats["ack_failed"] == 0 and stats["corrupted"] == 0
    return ok, dict(tally.report(), errors=errors[:20], **stats)


class _Listener(MessageListener):
    def __init__(self, tally):
        self.tally, self.lock, self.corrupted, self.calls = tally, threading.Lock(), 0, 0
        self.max_attempt = 0

    def consume(self, message):
        with self.lock:
            self.calls += 1
            self.corrupted += 1 if message.corrupted else 0
            self.max_attempt = max(self.max_attempt, message.delivery_attempt or 0)
            self.tally.record(message.message_id, message.body)
        return ConsumeResult.SUCCESS


def push_consume(args):
    tally = Tally(args.prefix, args.count)
    listener = _Listener(tally)
    consumer = PushConsumer(config(args), args.group, listener, {args.topic: FilterExpression(args.tag)})
    try:
        consumer.startup()
    except Exception as e:
        return False, dict(tally.report(), errors=[f"startup: {type(e).__name__}: {e}"])
    deadline = time.monotonic() + args.timeout_secs
    while time.monotonic() < deadline:
        with listener.lock:
            if tally.complete():
                break
        time.sleep(0.2)
    time.sleep(2)  # let the SDK send the acks for the last consumed messages
    report = dict(tally.report(), consume_calls=listener.calls, corrupted=listener.corrupted,
                  max_delivery_attempt=listener.max_attempt, errors=[],
                  shutdown_error=shutdown_bounded(consumer, 40.0))
    return tally.complete() and listener.corrupted == 0, report


def main():
    args = parse_args()
    started = time.monotonic()
    modes = {"produce": produce, "simple-consume": simple_consume, "push-consume": push_consume,
             **message_types.MODES}
    run = modes[args.mode]
    try:
        ok, report = run(args)
    except Exception as e:  # a crash is a result too
        ok, report = False, {"errors": [f"unhandled: {type(e).__name__}: {e}"]}
    head = {"sdk": "python", "sdk_version": importlib.metadata.version("rocketmq-python-client"),
            "mode": args.mode, "ok": ok, "topic": args.topic,
            "group": args.group, "count": args.count,
            "elapsed_ms": int((time.monotonic() - started) * 1000)}
    print("RESULT " + json.dumps({**head, **report}), flush=True)
    # SDK threads are not all daemons; do not let them keep the process alive. This is also
    # how tx-produce --resolution orphan leaves: no clean shutdown, transactions left open.
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
