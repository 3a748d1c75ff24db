'use strict';
// FIFO, delay/timer, recall and transaction modes (integration-tests/sdk/MESSAGE_TYPES.md).
//
// What rocketmq-client-nodejs 1.0.8 offers and how the modes use it:
// - FIFO: `messageGroup`; a PushConsumer of an orderly group consumes through the SDK's
//   FifoConsumeService (a batch one message after the other; a FAILURE is retried locally
//   with deliveryAttempt + 1 while the retry policy allows, else the message goes to the DLQ).
//   The SDK builds that policy only from an *exponential* server backoff; with a customized one
//   (Apache's default) it has none and sends a failed FIFO message straight to the DLQ.
// - Delay: `deliveryTimestamp` (a Date, millisecond precision).
// - Recall: producer.recallMessage(topic, handle); the handle is SendReceipt.recallHandle.
// - Transactions: Producer({ checker }) with checker.check(messageView) -> TransactionResolution;
//   TRANSACTION_RESOLUTION_UNSPECIFIED is "unknown": the SDK then sends no EndTransaction.
// - A received MessageView does not tell its message type: timed-consume has no message_type.

const { sdk, proto, describe, sleep, nowMs, withTimeout, shutdownBounded, clientOptions } =
  require('./common');

const { Producer, SimpleConsumer, PushConsumer, ConsumeResult, FilterExpression } = sdk;
const { TransactionResolution } = proto;

const INVISIBLE_MS = 30000;
// Long polling of timed-consume: short, so that --linger-ms and the timeout are not overshot much.
const TIMED_AWAIT_MS = 5000;
const BATCH = 16;
const MAX_ERRORS = 20;
const SUBSCRIBE_ALL = '*';

/** The mode-specific options, from the parsed `--name value` pairs (all modes read all). */
function modeArgs(opts, count) {
  const num = (name, dflt) => Number(opts[name] ?? dflt);
  const resolution = opts.resolution ?? 'commit';
  if (![ 'commit', 'rollback', 'orphan' ].includes(resolution)) {
    throw new Error(`bad --resolution ${resolution}`);
  }
  return {
    groups: num('groups', 4),
    consumers: num('consumers', 2),
    failEvery: num('fail-every', 0),
    poisonGroup: opts['poison-group'] ?? null,
    holdMs: num('hold-ms', 0),
    expect: num('expect', count),
    delaysMs: (opts['delays-ms'] ?? '0').split(',').filter(d => d.trim()).map(Number),
    lingerMs: num('linger-ms', 0),
    delayMs: num('delay-ms', 5000),
    resolution,
  };
}

const text = body => (Buffer.isBuffer(body) ? body.toString('utf8') : String(body));

/** A started Producer of --topic: [ producer, null ] or [ null, error string ]. */
async function startProducer(args, checker) {
  const producer = new Producer({ ...clientOptions(args), topics: [ args.topic ], checker });
  try {
    await withTimeout(producer.startup(), args.timeoutMs, 'producer.startup()');
    return [ producer, null ];
  } catch (err) {
    return [ null, `startup: ${describe(err)}` ];
  }
}

// --- fifo-produce ------------------------------------------------------------------------------

// Message i goes to group {prefix}-g{i % G} with per-group sequence i / G, sent one by one (each
// send returns before the next starts, so the send order is the group order).
async function fifoProduce(args) {
  const ids = [];
  const errors = [];
  const [ producer, error ] = await startProducer(args);
  if (error) return [ false, { sent: 0, ids, errors: [ error ] } ];
  const deadline = Date.now() + args.timeoutMs;
  for (let i = 0; i < args.count; i++) {
    if (Date.now() > deadline) {
      errors.push(`timed out after ${i} of ${args.count} sends`);
      break;
    }
    const group = `${args.prefix}-g${i % args.groups}`;
    const seq = Math.floor(i / args.groups);
    try {
      const receipt = await producer.send({ topic: args.topic, tag: args.tag, messageGroup: group,
        keys: [ `${args.prefix}-key-${i}` ], body: Buffer.from(`${args.prefix}|${group}|${seq}`) });
      ids.push(receipt.messageId);
    } catch (err) {
      errors.push(`send #${i} (${group}/${seq}): ${describe(err)}`);
    }
  }
  const report = { sent: ids.length, ids, groups: args.groups, errors: errors.slice(0, MAX_ERRORS),
    shutdown_error: await shutdownBounded(producer) };
  return [ ids.length === args.count, report ];
}

// --- fifo-consume ------------------------------------------------------------------------------

// The listener of every PushConsumer of the run: decides each call's answer (--fail-every,
// --poison-group), holds it --hold-ms, and records group, seq, attempt, start, end, result.
class FifoRecorder {
  constructor(args) {
    this.args = args;
    this.calls = []; // { group, seq, attempt, start, end, ok, id }
    this.callsPerKey = new Map(); // "group|seq" -> listener calls so far
    this.succeeded = new Set(); // non-poison "group|seq" answered SUCCESS
    this.failedOnPurpose = 0;
    this.unexpected = []; // bodies that are not "{prefix}|group|seq"
  }

  async consume(msg) {
    const start = nowMs();
    const parts = text(msg.body).split('|');
    if (parts.length !== 3 || parts[0] !== this.args.prefix || !/^\d+$/.test(parts[2])) {
      this.unexpected.push(text(msg.body).slice(0, 80));
      return ConsumeResult.SUCCESS;
    }
    const [ , group, seqText ] = parts;
    const seq = Number(seqText);
    const key = `${group}|${seq}`;
    const firstCall = !this.callsPerKey.has(key);
    this.callsPerKey.set(key, (this.callsPerKey.get(key) ?? 0) + 1);
    let ok = true;
    if (group === this.args.poisonGroup) {
      ok = false;
    } else if (this.args.failEvery && (seq + 1) % this.args.failEvery === 0 && firstCall) {
      ok = false;
      this.failedOnPurpose++;
    }
    if (this.args.holdMs) await sleep(this.args.holdMs);
    // The SDK counts its local FIFO retries in deliveryAttempt itself.
    const call = { group, seq, attempt: msg.deliveryAttempt ?? 1, start, end: nowMs(), ok,
      id: msg.messageId };
    this.calls.push(call);
    if (ok) this.succeeded.add(key);
    // one line per listener call on stderr (the harness keeps it), for diagnosing a run
    process.stderr.write(`CALL ${JSON.stringify(call)}\n`);
    return ok ? ConsumeResult.SUCCESS : ConsumeResult.FAILURE;
  }

  /** The RESULT figures of MESSAGE_TYPES.md, computed from the recorded calls. */
  report(startedMs) {
    const byGroup = new Map();
    for (const c of this.calls) {
      if (!byGroup.has(c.group)) byGroup.set(c.group, []);
      byGroup.get(c.group).push(c);
    }
    let reorderings = 0;
    let overlaps = 0;
    const duplicates = [];
    const groupDoneMs = {};
    for (const [ group, calls ] of byGroup) {
      // Two calls of one group overlap if one starts before the other ended.
      const spans = calls.map(c => [ c.start, c.end ]).sort((a, b) => a[0] - b[0]);
      for (let i = 0; i < spans.length; i++) {
        for (let j = i + 1; j < spans.length; j++) if (spans[j][0] < spans[i][1]) overlaps++;
      }
      if (group === this.args.poisonGroup) continue;
      const successes = calls.filter(c => c.ok).sort((a, b) => a.end - b.end);
      let previous = -1;
      const seen = new Map();
      for (const c of successes) {
        if (c.seq !== previous + 1) reorderings++;
        previous = c.seq;
        seen.set(c.seq, (seen.get(c.seq) ?? 0) + 1);
      }
      for (const [ seq, n ] of [ ...seen ].sort((a, b) => a[0] - b[0])) {
        if (n > 1) duplicates.push(`${group}|${seq}`);
      }
      if (successes.length) groupDoneMs[group] = Math.round(successes[successes.length - 1].end - startedMs);
    }
    return { succeeded: this.succeeded.size, reorderings, overlaps, duplicates, group_done_ms: groupDoneMs,
      poison_calls: this.calls.filter(c => c.group === this.args.poisonGroup).length,
      failed_on_purpose: this.failedOnPurpose,
      max_delivery_attempt: this.calls.reduce((m, c) => Math.max(m, c.attempt), 0),
      received: this.calls.length, unexpected: this.unexpected.slice(0, MAX_ERRORS) };
  }
}

// --consumers PushConsumers of the orderly group in this process, one shared listener.
async function fifoConsume(args) {
  const recorder = new FifoRecorder(args);
  const consumers = [];
  const errors = [];
  const startedMs = nowMs();
  for (let i = 0; i < args.consumers; i++) {
    const consumer = new PushConsumer({ ...clientOptions(args), consumerGroup: args.group,
      subscriptions: new Map([[ args.topic, new FilterExpression(SUBSCRIBE_ALL) ]]),
      messageListener: { consume: msg => recorder.consume(msg) } });
    try {
      await withTimeout(consumer.startup(), args.timeoutMs, `consumer ${i} startup()`);
      consumers.push(consumer);
    } catch (err) {
      errors.push(`startup of consumer ${i}: ${describe(err)}`);
    }
  }
  const deadline = Date.now() + args.timeoutMs;
  while (!errors.length && recorder.succeeded.size < args.expect && Date.now() < deadline) await sleep(100);
  // The PushConsumer shutdown waits for in-flight long polls (request timeout + long polling).
  // The figures include the calls made meanwhile (poison retries).
  const shutdownErrors = (await Promise.all(consumers.map(c => shutdownBounded(c, 40000)))).filter(e => e);
  const report = recorder.report(startedMs);
  if (report.succeeded < args.expect && !errors.length) {
    errors.push(`timed out with ${report.succeeded} of ${args.expect} consumed`);
  }
  Object.assign(report, { consumer_kind: 'push', consumers: args.consumers,
    errors: errors.slice(0, MAX_ERRORS), shutdown_errors: shutdownErrors });
  return [ report.succeeded >= args.expect && !errors.length, report ];
}

// --- delay-produce -----------------------------------------------------------------------------

// For each --delays-ms d and j < count: a message due now + d. A refused send (too far in the
// future, ...) is recorded in `rejected`; ok means every send got an answer.
async function delayProduce(args) {
  const ids = [];
  const deliverAt = {};
  const recallHandles = {};
  const rejected = {};
  const errors = [];
  const [ producer, error ] = await startProducer(args);
  if (error) return [ false, { sent: 0, ids, errors: [ error ] } ];
  const sends = args.delaysMs.flatMap(d => Array.from({ length: args.count }, (_, j) => [ d, j ]));
  const deadline = Date.now() + args.timeoutMs;
  let answered = 0;
  for (const [ d, j ] of sends) {
    if (Date.now() > deadline) {
      errors.push(`timed out after ${answered} of ${sends.length} sends`);
      break;
    }
    const at = Date.now() + d;
    try {
      const receipt = await producer.send({ topic: args.topic, tag: args.tag, keys: [ `${args.prefix}-key-${d}-${j}` ],
        deliveryTimestamp: new Date(at), body: Buffer.from(`${args.prefix}|${d}|${at}|${j}`) });
      ids.push(receipt.messageId);
      deliverAt[receipt.messageId] = at;
      if (receipt.recallHandle) recallHandles[receipt.messageId] = receipt.recallHandle;
    } catch (err) {
      rejected[String(d)] ??= describe(err);
    }
    answered++;
  }
  const report = { sent: ids.length, ids, deliver_at: deliverAt, recall_handles: recallHandles, rejected,
    delivery_precision_ms: 1, errors: errors.slice(0, MAX_ERRORS), shutdown_error: await shutdownBounded(producer) };
  return [ answered === sends.length, report ];
}

// --- timed-consume -----------------------------------------------------------------------------

// SimpleConsumer (`*`): receives and acks until --expect distinct ids, then --linger-ms more;
// records when each id first arrived and what it carried.
async function timedConsume(args) {
  const ids = [];
  const receivedAt = {};
  const bodies = {};
  const deliveryTimestamp = {};
  const duplicates = [];
  const errors = [];
  let received = 0;
  const consumer = new SimpleConsumer({ ...clientOptions(args), consumerGroup: args.group,
    subscriptions: new Map([[ args.topic, new FilterExpression(SUBSCRIBE_ALL) ]]), awaitDuration: TIMED_AWAIT_MS });
  try {
    await withTimeout(consumer.startup(), args.timeoutMs, 'consumer.startup()');
  } catch (err) {
    return [ false, { received, ids, errors: [ `startup: ${describe(err)}` ] } ];
  }
  const deadline = Date.now() + args.timeoutMs;
  let stopAt = deadline; // moves to "reached + linger" once expect distinct ids arrived
  while (Date.now() < stopAt) {
    let messages;
    try {
      messages = await consumer.receive(BATCH, INVISIBLE_MS);
    } catch (err) {
      errors.push(`receive: ${describe(err)}`);
      await sleep(500);
      continue;
    }
    const at = Math.round(nowMs());
    for (const msg of messages) {
      received++;
      if (msg.messageId in receivedAt) {
        duplicates.push(msg.messageId);
      } else {
        ids.push(msg.messageId);
        receivedAt[msg.messageId] = at;
        bodies[msg.messageId] = text(msg.body);
        if (msg.deliveryTimestamp) deliveryTimestamp[msg.messageId] = msg.deliveryTimestamp.getTime();
      }
      try {
        await consumer.ack(msg);
      } catch (err) {
        errors.push(`ack ${msg.messageId}: ${describe(err)}`);
      }
    }
    if (ids.length >= args.expect && stopAt === deadline) stopAt = Math.min(deadline, Date.now() + args.lingerMs);
  }
  if (ids.length < args.expect) errors.push(`timed out with ${ids.length} of ${args.expect} messages`);
  const report = { received, ids, received_at: receivedAt, bodies, delivery_timestamp: deliveryTimestamp,
    duplicates, errors: errors.slice(0, MAX_ERRORS), shutdown_error: await shutdownBounded(consumer) };
  return [ ids.length >= args.expect, report ];
}

// --- recall ------------------------------------------------------------------------------------

// Sends A and B due in --delay-ms, then recalls A with its receipt's recall handle.
async function recall(args) {
  const report = { recall_supported: true, recalled_id: null, kept_id: null, recall_ok: false, errors: [] };
  const [ producer, error ] = await startProducer(args);
  if (error) {
    report.errors.push(error);
    return [ false, report ];
  }
  const at = Date.now() + args.delayMs;
  const send = name => producer.send({ topic: args.topic, tag: args.tag, keys: [ `${args.prefix}-key-${name}` ],
    deliveryTimestamp: new Date(at), body: Buffer.from(`${args.prefix}|recall|${name}`) });
  try {
    const a = await send('A');
    report.recalled_id = a.messageId;
    const b = await send('B');
    report.kept_id = b.messageId;
    report.deliver_at = at;
    if (!a.recallHandle) {
      report.errors.push('the send receipt of A has no recall handle');
    } else {
      const answer = await producer.recallMessage(args.topic, a.recallHandle);
      report.recall_ok = true;
      report.recall_answer_id = answer.messageId;
    }
  } catch (err) {
    report.errors.push(describe(err));
  }
  report.shutdown_error = await shutdownBounded(producer);
  return [ report.recall_ok && !report.errors.length, report ];
}

// --- tx-produce / tx-check ---------------------------------------------------------------------

// Records every check; answers COMMIT for bodies starting with commitPrefix (if given),
// TRANSACTION_RESOLUTION_UNSPECIFIED ("unknown": no EndTransaction) otherwise.
class CheckRecorder {
  constructor(commitPrefix = null) {
    this.commitPrefix = commitPrefix;
    this.checkedAt = {}; // message id -> ms of its first check
    this.calls = 0;
  }

  async check(messageView) {
    this.calls++;
    this.checkedAt[messageView.messageId] ??= Math.round(nowMs());
    if (this.commitPrefix !== null && text(messageView.body).startsWith(this.commitPrefix)) {
      return TransactionResolution.COMMIT;
    }
    return TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED;
  }
}

// count transactional messages, each in its own transaction; after --hold-ms, commit or roll each
// back (ended_at = when that call returned), or (orphan) leave them open: main() prints the
// RESULT and leaves with process.exit, without shutting the producer down.
async function txProduce(args) {
  const checker = new CheckRecorder();
  const ids = [];
  const endedAt = {};
  const errors = [];
  const [ producer, error ] = await startProducer(args, checker);
  if (error) return [ false, { sent: 0, ids, ended_at: endedAt, errors: [ error ] } ];
  const transactions = [];
  for (let i = 0; i < args.count; i++) {
    try {
      const tx = producer.beginTransaction();
      const receipt = await producer.send({ topic: args.topic, tag: args.tag, keys: [ `${args.prefix}-key-${i}` ],
        body: Buffer.from(`${args.prefix}-${i}`) }, tx);
      ids.push(receipt.messageId);
      transactions.push([ receipt.messageId, tx ]);
    } catch (err) {
      errors.push(`send #${i}: ${describe(err)}`);
    }
  }
  await sleep(args.holdMs);
  const report = { sent: ids.length, ids, ended_at: endedAt, resolution: args.resolution };
  if (args.resolution === 'orphan') {
    Object.assign(report, { check_calls: checker.calls, errors: errors.slice(0, MAX_ERRORS) });
    return [ ids.length === args.count && !errors.length, report ];
  }
  for (const [ messageId, tx ] of transactions) {
    try {
      await (args.resolution === 'commit' ? tx.commit() : tx.rollback());
      endedAt[messageId] = Math.round(nowMs());
    } catch (err) {
      errors.push(`${args.resolution} ${messageId}: ${describe(err)}`);
    }
  }
  Object.assign(report, { check_calls: checker.calls, errors: errors.slice(0, MAX_ERRORS),
    shutdown_error: await shutdownBounded(producer) });
  return [ Object.keys(endedAt).length === args.count && !errors.length, report ];
}

// A transactional producer whose checker commits "{prefix}-" bodies; runs until --expect distinct
// ids were checked, then 3 s more (for the EndTransaction calls).
async function txCheck(args) {
  const checker = new CheckRecorder(`${args.prefix}-`);
  const [ producer, error ] = await startProducer(args, checker);
  if (error) return [ false, { checked: 0, checked_at: {}, check_calls: 0, errors: [ error ] } ];
  const checked = () => Object.keys(checker.checkedAt).length;
  const deadline = Date.now() + args.timeoutMs;
  while (checked() < args.expect && Date.now() < deadline) await sleep(100);
  const reached = checked() >= args.expect;
  const errors = [];
  if (reached) {
    await sleep(3000);
  } else {
    errors.push(`timed out with ${checked()} of ${args.expect} checked`);
  }
  const report = { checked: checked(), checked_at: { ...checker.checkedAt }, check_calls: checker.calls, errors,
    shutdown_error: await shutdownBounded(producer) };
  return [ reached, report ];
}

const MODES = {
  'fifo-produce': fifoProduce,
  'fifo-consume': fifoConsume,
  'delay-produce': delayProduce,
  'timed-consume': timedConsume,
  recall,
  'tx-produce': txProduce,
  'tx-check': txCheck,
};

module.exports = { MODES, modeArgs };
