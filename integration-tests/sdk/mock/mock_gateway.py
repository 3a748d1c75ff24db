"""A tiny stand-in for rmq-gateway, to test the e2e harness and SDK drivers themselves.

NOT a RocketMQ implementation: one process, NORMAL messages only, 8 queues per topic, a
JSON-lines journal (fsync per record) in dataDir so restarts keep messages and acks, no
validation. It answers exactly what the three official SDKs need (clients.md section 6), so
a scenario that passes here and fails against rmq-gateway points at the gateway.

    RMQ_GATEWAY_BIN=integration-tests/sdk/mock/mock-gateway cargo test -p integration-tests

Same CLI contract as the gateway: `serve --config FILE` (reads grpcServerPort,
httpServerPort, dataDir), GET /readyz, SIGTERM = graceful exit 0. Knob: MOCK_NO_DELIVERY_TS=1
omits the trailing delivery_timestamp frame of ReceiveMessage (the Python PushConsumer then
fails every batch with "unsupported operand type(s) for -: 'int' and 'NoneType'").
Uses the gRPC stubs shipped inside rocketmq-python-client (run with the sdk/.work venv)."""

import hashlib
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures

# Importing the SDK package configures a log file under ~/logs; keep it out of the real HOME.
os.environ["HOME"] = os.environ.get("RMQ_E2E_HOME") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".work", "home")
os.makedirs(os.environ["HOME"], exist_ok=True)

import grpc  # noqa: E402
from rocketmq.grpc_protocol import definition_pb2 as d  # noqa: E402
from rocketmq.grpc_protocol import service_pb2 as s  # noqa: E402
from rocketmq.grpc_protocol import service_pb2_grpc as sg  # noqa: E402

QUEUES = 8


def ok(code=d.Code.OK, msg="OK"):
    return d.Status(code=code, message=msg)


class Store:
    def __init__(self, data_dir):
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "journal.jsonl")
        self.lock = threading.Condition()
        self.msgs = {}  # (topic, q) -> list of dict
        self.acked = set()  # (group, topic, q, off)
        self.inflight = {}  # (group, topic, q, off) -> (until, attempt)
        self.attempts = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if r["t"] == "m":
                        self.msgs.setdefault((r["topic"], r["q"]), []).append(r)
                    else:
                        self.acked.add((r["g"], r["topic"], r["q"], r["off"]))
        self.f = open(self.path, "a")

    def _log(self, rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def append(self, topic, q, m):
        with self.lock:
            lst = self.msgs.setdefault((topic, q), [])
            rec = dict(t="m", topic=topic, q=q, off=len(lst), **m)
            self._log(rec)
            lst.append(rec)
            self.lock.notify_all()
            return rec["off"]

    def pop(self, group, topic, batch, invisible, wait):
        deadline = time.time() + wait
        with self.lock:
            while True:
                out, now = [], time.time()
                for q in range(QUEUES):
                    for rec in self.msgs.get((topic, q), []):
                        k = (group, topic, q, rec["off"])
                        if k in self.acked:
                            continue
                        inf = self.inflight.get(k)
                        if inf and inf[0] > now:
                            continue
                        attempt = (inf[1] if inf else 0) + 1
                        self.inflight[k] = (now + invisible, attempt)
                        out.append((rec, attempt))
                        if len(out) >= batch:
                            return out
                if out or time.time() >= deadline:
                    return out
                self.lock.wait(min(0.5, max(0.0, deadline - time.time())))

    def ack(self, group, topic, q, off):
        with self.lock:
            k = (group, topic, q, off)
            if k not in self.acked:
                self.acked.add(k)
                self._log(dict(t="a", g=group, topic=topic, q=q, off=off))
            self.inflight.pop(k, None)

    def change(self, group, topic, q, off, secs):
        with self.lock:
            k = (group, topic, q, off)
            inf = self.inflight.get(k, (0, 1))
            self.inflight[k] = (time.time() + secs, inf[1])


class Service(sg.MessagingServiceServicer):
    def __init__(self, store, port):
        self.store, self.port, self.rr = store, port, 0

    def endpoints(self):
        return d.Endpoints(scheme=d.AddressScheme.IPv4, addresses=[d.Address(host="127.0.0.1", port=self.port)])

    def mq(self, topic, q):
        return d.MessageQueue(topic=d.Resource(name=topic), id=q, permission=d.Permission.READ_WRITE,
                              broker=d.Broker(name="mock", id=0, endpoints=self.endpoints()),
                              accept_message_types=[d.MessageType.NORMAL])

    def QueryRoute(self, req, ctx):
        return s.QueryRouteResponse(status=ok(), message_queues=[self.mq(req.topic.name, q) for q in range(QUEUES)])

    def Heartbeat(self, req, ctx):
        return s.HeartbeatResponse(status=ok())

    def NotifyClientTermination(self, req, ctx):
        return s.NotifyClientTerminationResponse(status=ok())

    def QueryAssignment(self, req, ctx):
        return s.QueryAssignmentResponse(status=ok(), assignments=[d.Assignment(message_queue=self.mq(req.topic.name, 0))])

    def SendMessage(self, req, ctx):
        entries = []
        for m in req.messages:
            self.rr += 1
            q = self.rr % QUEUES
            sp = m.system_properties
            off = self.store.append(m.topic.name, q, dict(
                id=sp.message_id, body=m.body.hex(), tag=sp.tag, keys=list(sp.keys),
                born=sp.born_timestamp.seconds, host=sp.born_host))
            entries.append(s.SendResultEntry(status=ok(), message_id=sp.message_id, transaction_id="", offset=off))
        return s.SendMessageResponse(status=ok(), entries=entries)

    def ReceiveMessage(self, req, ctx):
        lpt = req.long_polling_timeout.seconds if req.HasField("long_polling_timeout") else 20
        remaining = ctx.time_remaining() or 30
        wait = max(0.0, min(lpt, remaining - 1.0))
        inv = req.invisible_duration.seconds if req.HasField("invisible_duration") else 60
        batch = req.batch_size or 32
        tag = req.filter_expression.expression or "*"
        got = self.store.pop(req.group.name, req.message_queue.topic.name, batch, inv, wait)
        got = [(r, a) for r, a in got if tag == "*" or r["tag"] in tag.split("||")]
        if not got:
            yield s.ReceiveMessageResponse(status=ok(d.Code.MESSAGE_NOT_FOUND, "no new message"))
            return
        yield s.ReceiveMessageResponse(status=ok())
        for r, attempt in got:
            body = bytes.fromhex(r["body"])
            sp = d.SystemProperties(
                tag=r["tag"], keys=r["keys"], message_id=r["id"],
                body_digest=d.Digest(type=d.DigestType.MD5, checksum=hashlib.md5(body).hexdigest().upper()),
                body_encoding=d.Encoding.IDENTITY, message_type=d.MessageType.NORMAL,
                born_host=r["host"] or "127.0.0.1", queue_id=r["q"], queue_offset=r["off"],
                delivery_attempt=attempt, receipt_handle=f"{r['topic']}|{r['q']}|{r['off']}|{time.time_ns()}")
            sp.born_timestamp.seconds = r["born"]
            yield s.ReceiveMessageResponse(message=d.Message(topic=d.Resource(name=r["topic"]), system_properties=sp, body=body))
        if os.environ.get("MOCK_NO_DELIVERY_TS") != "1":
            dt = s.ReceiveMessageResponse()
            dt.delivery_timestamp.GetCurrentTime()
            yield dt

    def AckMessage(self, req, ctx):
        res = []
        for e in req.entries:
            t, q, off, _ = e.receipt_handle.split("|")
            self.store.ack(req.group.name, t, int(q), int(off))
            res.append(s.AckMessageResultEntry(message_id=e.message_id, receipt_handle=e.receipt_handle, status=ok()))
        return s.AckMessageResponse(status=ok(), entries=res)

    def ChangeInvisibleDuration(self, req, ctx):
        t, q, off, _ = req.receipt_handle.split("|")
        self.store.change(req.group.name, t, int(q), int(off), req.invisible_duration.seconds)
        return s.ChangeInvisibleDurationResponse(status=ok(), receipt_handle=f"{t}|{q}|{off}|{time.time_ns()}")

    def Telemetry(self, it, ctx):
        ctx.send_initial_metadata(())
        for cmd in it:
            if not cmd.HasField("settings"):
                continue
            st = d.Settings()
            st.CopyFrom(cmd.settings)
            st.backoff_policy.max_attempts = 3 if st.client_type == d.ClientType.PRODUCER else 17
            eb = st.backoff_policy.exponential_backoff
            eb.initial.nanos, eb.max.seconds, eb.multiplier = 10_000_000, 1, 2.0
            if st.client_type == d.ClientType.PRODUCER:
                st.publishing.max_body_size = 4 * 1024 * 1024
            else:
                st.subscription.receive_batch_size = 32
                st.subscription.long_polling_timeout.seconds = 20
            st.metric.on = False
            yield s.TelemetryCommand(status=ok(), settings=st)


def main():
    cfg = open(sys.argv[sys.argv.index("--config") + 1]).read()
    val = lambda k: re.search(rf"{k}:\s*(\S+)", cfg).group(1)  # noqa: E731
    grpc_port, http_port, data = int(val("grpcServerPort")), int(val("httpServerPort")), val("dataDir")
    store = Store(data)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    sg.add_MessagingServiceServicer_to_server(Service(store, grpc_port), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"mock gateway ready grpc={grpc_port} http={http_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    server.stop(2).wait()
    print("mock gateway stopped", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
