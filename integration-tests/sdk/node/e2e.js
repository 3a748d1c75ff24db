'use strict';
// End-to-end driver for the official RocketMQ Node.js SDK (rocketmq-client-nodejs 1.0.8).
//
// Usage: node e2e.js MODE --endpoint HOST:PORT --topic T
//          [--group G] [--count N] [--prefix P] [--tag TAG] [--timeout-secs S] [MODE OPTIONS]
// MODE: produce, simple-consume, push-consume (below), or one of the FIFO, delay, recall and
// transaction modes of sdk/MESSAGE_TYPES.md (message_types.js, with their options).
// Options fall back to RMQ_E2E_<NAME> environment variables. Prints exactly one line
// "RESULT <json>" on stdout (SDK logs go to stderr); exit code 0 means the goal was met.
//
// The SDK is loaded from $RMQ_E2E_NODE_DIR (default: sdk/.work/node), installed by setup.sh;
// HOME is redirected to $RMQ_E2E_HOME (common.js).

const { sdk, sdkVersion, describe, withTimeout, shutdownBounded, clientOptions } = require('./common');
const { MODES, modeArgs } = require('./message_types');
const { Tally } = require('./tally');

const { Producer, SimpleConsumer, PushConsumer, ConsumeResult, FilterExpression } = sdk;

const INVISIBLE_MS = 30000;
const AWAIT_MS = 10000;
const BATCH = 16;

function parseArgs(argv) {
  const env = (name, dflt) => process.env[`RMQ_E2E_${name}`] ?? dflt;
  const [ mode, ...rest ] = argv;
  if (![ 'produce', 'simple-consume', 'push-consume', ...Object.keys(MODES) ].includes(mode)) {
    throw new Error(`unknown mode ${JSON.stringify(mode)}`);
  }
  const opts = {}; // a repeated option: the last one wins
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith('--') || rest[i + 1] === undefined) throw new Error(`bad argument ${rest[i]}`);
    opts[rest[i].slice(2)] = rest[i + 1];
  }
  const args = {
    mode,
    endpoint: opts.endpoint ?? env('ENDPOINT'),
    topic: opts.topic ?? env('TOPIC'),
    group: opts.group ?? env('GROUP', 'node-e2e-group'),
    count: Number(opts.count ?? env('COUNT', '50')),
    prefix: opts.prefix ?? env('PREFIX', 'node'),
    tag: opts.tag ?? env('TAG', 'e2e'),
    timeoutMs: 1000 * Number(opts['timeout-secs'] ?? env('TIMEOUT_SECS', '60')),
    namespace: opts.namespace ?? env('NAMESPACE', ''),
  };
  Object.assign(args, modeArgs(opts, args.count));
  if (!args.endpoint || !args.topic) throw new Error('--endpoint and --topic are required');
  return args;
}

async function produce(args) {
  const ids = [];
  const errors = [];
  const producer = new Producer({ ...clientOptions(args), topics: [ args.topic ] });
  try {
    await withTimeout(producer.startup(), args.timeoutMs, 'producer.startup()');
  } catch (err) {
    return [ false, { sent: 0, failed: args.count, ids, errors: [ `startup: ${describe(err)}` ] } ];
  }
  const deadline = Date.now() + args.timeoutMs;
  let failed = 0;
  for (let i = 0; i < args.count; i++) {
    if (Date.now() > deadline) {
      failed += args.count - i;
      errors.push(`timed out after ${i} of ${args.count} sends`);
      break;
    }
    try {
      const receipt = await producer.send({ topic: args.topic, tag: args.tag,
        keys: [ `${args.prefix}-key-${i}` ], body: Buffer.from(`${args.prefix}-${i}`) });
      ids.push(receipt.messageId);
    } catch (err) {
      failed++;
      errors.push(`send #${i}: ${describe(err)}`);
    }
  }
  const report = { sent: ids.length, failed, ids, errors: errors.slice(0, 20),
    shutdown_error: await shutdownBounded(producer) };
  return [ ids.length === args.count, report ];
}

// Receives and acks until all bodies arrived. The first message first gets a new invisible
// duration (ChangeInvisibleDuration) and is then acked with the new receipt handle.
async function simpleConsume(args) {
  const tally = new Tally(args.prefix, args.count);
  const errors = [];
  const stats = { acked: 0, ack_failed: 0, receive_calls: 0, receive_errors: 0,
    changed_invisible: 0, corrupted: 0, max_delivery_attempt: 0 };
  const consumer = new SimpleConsumer({ ...clientOptions(args), consumerGroup: args.group,
    subscriptions: new Map([[ args.topic, new FilterExpression(args.tag) ]]), awaitDuration: AWAIT_MS });
  try {
    await withTimeout(consumer.startup(), args.timeoutMs, 'consumer.startup()');
  } catch (err) {
    return [ false, { ...tally.report(), ...stats, errors: [ `startup: ${describe(err)}` ] } ];
  }
  const deadline = Date.now() + args.timeoutMs;
  while (!tally.complete() && Date.now() < deadline) {
    stats.receive_calls++;
    let messages;
    try {
      messages = await consumer.receive(BATCH, INVISIBLE_MS);
    } catch (err) {
      stats.receive_errors++;
      errors.push(`receive: ${describe(err)}`);
      await new Promise(r => setTimeout(r, 500));
      continue;
    }
    for (const msg of messages) {
      stats.max_delivery_attempt = Math.max(stats.max_delivery_attempt, msg.deliveryAttempt ?? 0);
      if (msg.corrupted) stats.corrupted++;
      tally.record(msg.messageId, msg.body);
      try {
        if (stats.changed_invisible === 0) {
          const old = msg.receiptHandle;
          await consumer.changeInvisibleDuration(msg, INVISIBLE_MS);
          if (msg.receiptHandle === old) errors.push('changeInvisibleDuration returned the same receipt handle');
          stats.changed_invisible++;
        }
        await consumer.ack(msg);
        stats.acked++;
      } catch (err) {
        stats.ack_failed++;
        errors.push(`ack/change-invisible ${msg.messageId}: ${describe(err)}`);
      }
    }
  }
  stats.shutdown_error = await shutdownBounded(consumer);
  const ok = tally.complete() && stats.ack_failed === 0 && stats.corrupted === 0;
  return [ ok, { ...tally.report(), ...stats, errors: errors.slice(0, 20) } ];
}

async function pushConsume(args) {
  const tally = new Tally(args.prefix, args.count);
  const stats = { consume_calls: 0, corrupted: 0, max_delivery_attempt: 0 };
  const consumer = new PushConsumer({ ...clientOptions(args), consumerGroup: args.group,
    subscriptions: new Map([[ args.topic, new FilterExpression(args.tag) ]]),
    messageListener: {
      consume(msg) {
        stats.consume_calls++;
        if (msg.corrupted) stats.corrupted++;
        stats.max_delivery_attempt = Math.max(stats.max_delivery_attempt, msg.deliveryAttempt ?? 0);
        tally.record(msg.messageId, msg.body);
        return ConsumeResult.SUCCESS;
      },
    } });
  try {
    await withTimeout(consumer.startup(), args.timeoutMs, 'consumer.startup()');
  } catch (err) {
    return [ false, { ...tally.report(), ...stats, errors: [ `startup: ${describe(err)}` ] } ];
  }
  const deadline = Date.now() + args.timeoutMs;
  while (!tally.complete() && Date.now() < deadline) await new Promise(r => setTimeout(r, 200));
  // The PushConsumer shutdown waits for in-flight long polls (request timeout + long polling).
  stats.shutdown_error = await shutdownBounded(consumer, 40000);
  return [ tally.complete() && stats.corrupted === 0, { ...tally.report(), ...stats, errors: [] } ];
}

async function main() {
  const started = Date.now();
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`e2e.js: ${err.message}`);
    process.exit(2);
  }
  const run = { produce, 'simple-consume': simpleConsume, 'push-consume': pushConsume, ...MODES }[args.mode];
  let ok;
  let report;
  try {
    [ ok, report ] = await run(args);
  } catch (err) {
    [ ok, report ] = [ false, { errors: [ `unhandled: ${describe(err)}` ] } ];
  }
  const head = { sdk: 'node', sdk_version: sdkVersion, mode: args.mode, ok, topic: args.topic, group: args.group,
    count: args.count, elapsed_ms: Date.now() - started };
  // process.exit: also how tx-produce --resolution orphan leaves (no shutdown, transactions open).
  process.stdout.write(`RESULT ${JSON.stringify({ ...head, ...report })}\n`, () => process.exit(ok ? 0 : 1));
}

main();
